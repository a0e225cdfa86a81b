// The signed-in user, kept in this tab's sessionStorage: readable only by this origin's
// pages (another site cannot read it), gone when the tab closes, forgotten and revoked
// at the gateway on sign-out.

const KEY = "serial-console-lab.session";

/** The current session {user, token, expiresAt}, or null when signed out or expired. */
export function session() {
  let s = null;
  try {
    s = JSON.parse(sessionStorage.getItem(KEY));
  } catch {
    s = null;
  }
  if (!s || typeof s.token !== "string" || s.expiresAt <= Date.now()) {
    sessionStorage.removeItem(KEY);
    return null;
  }
  return s;
}

/** Sign in with the lab's token endpoint (password grant). Throws Error(Entra's text). */
export async function signIn(username, password) {
  const body = new URLSearchParams({ grant_type: "password", username, password });
  let response;
  try {
    response = await fetch("/oauth2/token", { method: "POST", body });
  } catch {
    throw new Error("The gateway cannot be reached. Is the lab running?");
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(answer.error_description || `Sign-in failed (HTTP ${response.status}).`);
  }
  const s = {
    user: username,
    token: answer.access_token,
    expiresAt: Date.now() + answer.expires_in * 1000,
  };
  sessionStorage.setItem(KEY, JSON.stringify(s));
  return s;
}

/** Forget the token here and revoke it at the gateway. False when the gateway could not
 * be told (the token then stays valid until it expires). */
export async function signOut() {
  const s = session();
  sessionStorage.removeItem(KEY);
  if (!s) return true;
  const body = new URLSearchParams({ token: s.token });
  try {
    return (await fetch("/oauth2/revoke", { method: "POST", body })).ok;
  } catch {
    return false;
  }
}

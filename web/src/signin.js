// The sign-in page: the lab's users, as Entra's sign-in would ask for them.
import { signIn } from "./auth.js";
import { h, statusLine } from "./dom.js";

export function renderSignIn(main, onSignedIn, notice) {
  const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
  const pass = h("input", {
    id: "password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  const status = statusLine("sign-in-status");
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "sign-in", "aria-label": "Sign in" },
    h("h1", {}, "Sign in"),
    h("p", { class: "hint" }, "Sign in with a user of the lab (the lab file's [[users]])."),
    h("label", { for: "username" }, "Username"),
    user,
    h("label", { for: "password" }, "Password"),
    pass,
    button,
    status,
  );
  if (notice) status.say(notice, "error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    status.say("Signing in…");
    try {
      await signIn(user.value.trim(), pass.value);
      pass.value = "";
      onSignedIn();
    } catch (err) {
      status.say(err.message, "error");
      pass.select();
    } finally {
      button.disabled = false;
    }
  });
  main.append(form);
  user.focus();
  return { dispose() {} };
}

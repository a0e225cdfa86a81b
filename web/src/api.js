// Azure Resource Manager's REST paths, as the portal calls them: a bearer token, the
// api-version each provider publishes, ARM's error shape turned into an Error whose
// message is the text Azure shows.
import { session } from "./auth.js";

const VERSIONS = {
  "microsoft.compute": "2026-04-01",
  "microsoft.serialconsole": "2024-07-01",
  "microsoft.authorization": "2022-04-01",
};
const RESOURCES_VERSION = "2022-12-01";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function apiVersion(path) {
  const providers = [...path.matchAll(/\/providers\/([^/]+)/gi)];
  if (!providers.length) return RESOURCES_VERSION;
  return VERSIONS[providers.at(-1)[1].toLowerCase()] || RESOURCES_VERSION;
}

/** Call ARM: ``arm("GET", "/subscriptions")``. Returns the parsed body and the response. */
export async function arm(method, path, body, query = {}) {
  const s = session();
  if (!s) {
    const message = "Your sign-in expired.";
    window.dispatchEvent(new CustomEvent("signed-out", { detail: message }));
    throw new ApiError(401, "NotSignedIn", message);
  }
  if (!path.startsWith("/") || /[?#\\]|%2f|%5c|\/\.\.?(\/|$)/i.test(path)) {
    throw new ApiError(400, "InvalidPath", `The page refused to call ${path}: not a resource path.`);
  }
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries({ ...query, "api-version": apiVersion(path) })) {
    url.searchParams.set(key, value);
  }
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: {
        Authorization: `Bearer ${s.token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "Unreachable", "The gateway cannot be reached: it may be restarting.");
  }
  const text = await response.text();
  let answer = {};
  try {
    answer = text ? JSON.parse(text) : {};
  } catch {
    answer = {};
  }
  if (!response.ok) {
    const err = answer.error || {};
    const message = err.message || `The request failed (HTTP ${response.status}).`;
    const failure = new ApiError(response.status, err.code || String(response.status), message);
    if (response.status === 401) window.dispatchEvent(new CustomEvent("signed-out", { detail: message }));
    throw failure;
  }
  return { body: answer, response };
}

/** Follow a long-running operation (202 + Azure-AsyncOperation) until it ends. */
export async function waitForOperation(response, { signal } = {}) {
  const status = response.headers.get("Azure-AsyncOperation");
  if (!status) return;
  const url = new URL(status, location.href);
  for (;;) {
    const after = Number(response.headers.get("Retry-After") || 1);
    await new Promise((resolve) => setTimeout(resolve, Math.min(after, 1) * 1000));
    if (signal?.aborted) return;
    const path = url.pathname;
    const { body } = await arm("GET", path);
    if (body.status === "Succeeded") return;
    if (body.status === "Failed" || body.status === "Canceled") {
      throw new ApiError(500, body.error?.code || body.status, body.error?.message || body.status);
    }
  }
}

/** What the caller's roles allow on ``resourceId``: a test of one action. */
export async function permissions(resourceId) {
  const { body } = await arm("GET", `${resourceId}/providers/Microsoft.Authorization/permissions`);
  const rules = body.value || [];
  return (action) =>
    rules.some(
      (r) => r.actions.some((p) => matches(p, action)) && !r.notActions.some((p) => matches(p, action)),
    );
}

function matches(pattern, action) {
  const re = new RegExp(
    "^" + pattern.split("*").map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$",
    "i",
  );
  return re.test(action);
}

const NAME = /^[A-Za-z0-9._()-]{1,90}$/;
const ID =
  /^\/subscriptions\/([^/]+)\/resourceGroups\/([^/]+)\/providers\/Microsoft\.Compute\/(?:virtualMachines\/([^/]+)|virtualMachineScaleSets\/([^/]+)\/virtualMachines\/([^/]+))$/i;

/** A VM's or scale-set instance's id -> {subscription, group, name | scaleSet + instance,
 * label, id}, or null. Every name must be a plain Azure name (letters, digits, ``._()-``;
 * no ``..``), and ``id`` is rebuilt from the names, so a crafted link can never make the
 * page call another path (``linux-1%2FpowerOff?...``). */
export function parseResourceId(text) {
  const m = ID.exec(text);
  if (!m) return null;
  const [, subscription, group, vm, scaleSet, instance] = m;
  const names = [subscription, group, vm ?? scaleSet, ...(vm ? [] : [instance])];
  if (!names.every((n) => NAME.test(n) && !n.includes(".."))) return null;
  if (!vm && !/^\d{1,9}$/.test(instance)) return null;
  const base = `/subscriptions/${subscription}/resourceGroups/${group}/providers/Microsoft.Compute`;
  return vm
    ? { subscription, group, name: vm, kind: "vm", label: vm, id: `${base}/virtualMachines/${vm}` }
    : {
        subscription,
        group,
        scaleSet,
        instance,
        kind: "instance",
        label: `${scaleSet} / ${instance}`,
        id: `${base}/virtualMachineScaleSets/${scaleSet}/virtualMachines/${instance}`,
      };
}

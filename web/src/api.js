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
  if (!s) throw new ApiError(401, "NotSignedIn", "You are signed out. Sign in again.");
  const params = new URLSearchParams({ ...query, "api-version": apiVersion(path) });
  let response;
  try {
    response = await fetch(`${path}?${params}`, {
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

/** "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v" -> parts. */
export function parseResourceId(id) {
  const m =
    /^\/subscriptions\/([^/]+)\/resourceGroups\/([^/]+)\/providers\/Microsoft\.Compute\/(?:virtualMachines\/([^/]+)|virtualMachineScaleSets\/([^/]+)\/virtualMachines\/([^/]+))$/i.exec(
      id,
    );
  if (!m) return null;
  const [, subscription, group, vm, scaleSet, instance] = m;
  return vm
    ? { subscription, group, name: vm, kind: "vm", label: vm }
    : { subscription, group, scaleSet, instance, kind: "instance", label: `${scaleSet} / ${instance}` };
}

// The resource list: the subscription's VMs and scale-set instances, with what the
// portal's "Virtual machines" blade shows (group, OS, status, boot diagnostics) and the
// power actions the caller's roles allow. Each row opens its serial console.
import { arm, permissions, waitForOperation } from "./api.js";
import { confirmDialog } from "./dialogs.js";
import { h, statusLine } from "./dom.js";

const ACTIONS = [
  { verb: "start", label: "Start", when: ["stopped", "deallocated", "panicked"] },
  {
    verb: "restart",
    label: "Restart",
    when: ["running", "panicked"],
    warning: (name) => `Restart ${name}? Its guest is asked to shut down, then it starts again.`,
  },
  {
    verb: "powerOff",
    label: "Stop",
    when: ["running", "starting", "panicked"],
    warning: (name) => `Stop ${name}? Its guest is asked to shut down; its serial console closes until it is started again.`,
  },
  {
    verb: "deallocate",
    label: "Deallocate",
    when: ["running", "stopped", "panicked", "starting"],
    warning: (name) => `Deallocate ${name}? It stops and its serial port goes away: every open console of it closes.`,
  },
];

function powerState(vm) {
  const status = vm.properties.instanceView?.statuses?.find((s) => s.code.startsWith("PowerState/"));
  return status ? { code: status.code.split("/")[1], text: status.displayStatus } : { code: "unknown", text: "Unknown" };
}

function action(vm) {
  const type = vm.instanceId === undefined ? "virtualMachines" : "virtualMachineScaleSets/virtualMachines";
  return (verb) => `Microsoft.Compute/${type}/${verb}/action`;
}

async function listAll(subscription) {
  const base = `/subscriptions/${subscription}/providers/Microsoft.Compute`;
  const [{ body: vms }, { body: sets }] = await Promise.all([
    arm("GET", `${base}/virtualMachines`, undefined, { $expand: "instanceView" }),
    arm("GET", `${base}/virtualMachineScaleSets`),
  ]);
  const problems = [];
  const instances = await Promise.all(
    sets.value.map((set) =>
      arm("GET", `${set.id}/virtualMachines`, undefined, { $expand: "instanceView" })
        .then(({ body }) => body.value.map((vm) => ({ ...vm, scaleSet: set.name })))
        .catch((err) => {
          problems.push(`The instances of ${set.name} could not be listed: ${err.message}`);
          return [];
        }),
    ),
  );
  return { vms: [...vms.value, ...instances.flat()], problems };
}

export function renderResources(main, subscription) {
  const status = statusLine("resources-status");
  const table = h("table", { class: "resources", "aria-label": "Virtual machines" });
  const refresh = h("button", { type: "button", onclick: () => load() }, "Refresh");
  main.append(h("section", { class: "page" }, h("h1", {}, "Virtual machines"), h("div", { class: "bar" }, refresh), status, table));
  const controller = new AbortController();

  /** Show the list again; ``outcome`` ({text, kind}) stays in the status line. */
  async function load(outcome) {
    if (!outcome) status.say("Loading…");
    let vms;
    let problems;
    try {
      ({ vms, problems } = await listAll(subscription));
    } catch (err) {
      status.say(err.message, "error");
      return;
    }
    const rows = await Promise.all(vms.map((vm) => row(vm)));
    table.replaceChildren(
      h(
        "thead",
        {},
        h("tr", {}, ["Name", "Resource group", "Type", "Operating system", "Status", "Boot diagnostics", "Serial console", "Power"].map((t) => h("th", { scope: "col" }, t))),
      ),
      h("tbody", {}, rows),
    );
    if (outcome) status.say(outcome.text, outcome.kind);
    else if (problems.length) status.say(problems.join(" "), "error");
    else status.say(`${vms.length} virtual machines`);
  }

  async function row(vm) {
    const parts = vm.id.split("/");
    const group = parts[4];
    const state = powerState(vm);
    let may = () => false;
    let mayProblem = null;
    try {
      may = await permissions(vm.id);
    } catch (err) {
      mayProblem = `Your permissions could not be read: ${err.message}`;
    }
    const actionOf = action(vm);
    const name = vm.scaleSet ? `${vm.scaleSet} / ${vm.instanceId}` : vm.name;
    const diag = vm.properties.diagnosticsProfile?.bootDiagnostics?.enabled;
    const buttons = ACTIONS.filter((a) => may(actionOf(a.verb))).map((a) =>
      h(
        "button",
        {
          type: "button",
          disabled: !a.when.includes(state.code),
          "aria-label": `${a.label} ${name}`,
          onclick: (event) => power(vm, name, a, event.currentTarget),
        },
        a.label,
      ),
    );
    return h(
      "tr",
      { dataset: { vm: name } },
      h("th", { scope: "row" }, name),
      h("td", {}, group),
      h("td", {}, vm.scaleSet ? "Scale set instance" : "Virtual machine"),
      h("td", {}, vm.properties.storageProfile.osDisk.osType),
      h("td", { class: `state ${state.code}` }, state.text),
      h("td", {}, diag ? "Enabled" : "Disabled"),
      h("td", {}, h("a", { href: `#/resource${vm.id}/serialConsole`, "aria-label": `Serial console of ${name}` }, "Serial console")),
      h("td", { class: "actions" }, buttons.length ? buttons : h("span", { class: "hint" }, mayProblem ?? "Your role allows no power actions")),
    );
  }

  async function power(vm, name, a, button) {
    if (a.warning && !(await confirmDialog(`${a.label} VM`, a.warning(name), a.label))) return;
    button.disabled = true;
    status.say(`${a.label}: ${name}…`);
    let outcome;
    try {
      const { response } = await arm("POST", `${vm.id}/${a.verb}`);
      await waitForOperation(response, { signal: controller.signal });
      outcome = { text: `${a.label}: ${name} done.`, kind: "info" };
    } catch (err) {
      outcome = { text: `${a.label} ${name} failed: ${err.message}`, kind: "error" };
    }
    if (!controller.signal.aborted) await load(outcome);
  }

  load();
  return { dispose: () => controller.abort() };
}

// Boot diagnostics: the VM's serial log (the blob retrieveBootDiagnosticsData points to),
// shown as text and downloadable, as the portal's "Boot diagnostics" blade.
import { arm, parseResourceId } from "./api.js";
import { h, statusLine } from "./dom.js";

export function renderBootLog(main, resourceId) {
  const target = parseResourceId(resourceId);
  const status = statusLine("boot-log-status");
  const log = h("pre", { class: "boot-log", id: "boot-log", tabindex: 0, "aria-label": "Serial log" });
  const download = h("a", { class: "button", id: "boot-log-download", hidden: true }, "Download serial log");
  const refresh = h("button", { type: "button", onclick: () => load() }, "Refresh");
  main.append(
    h(
      "section",
      { class: "page" },
      h("h1", {}, `${target.label} | Boot diagnostics`),
      h("div", { class: "bar" }, refresh, download, h("a", { href: `#/resource${resourceId}/serialConsole` }, "Serial console")),
      status,
      log,
    ),
  );
  let objectUrl = null;

  async function load() {
    status.say("Loading the serial log…");
    try {
      const { body } = await arm("POST", `${resourceId}/retrieveBootDiagnosticsData`);
      const response = await fetch(body.serialConsoleLogBlobUri);
      if (!response.ok) throw new Error(`The serial log could not be read (HTTP ${response.status}).`);
      const blob = await response.blob();
      log.textContent = await blob.text();
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(blob);
      download.href = objectUrl;
      download.download = `${target.label.replace(/[^A-Za-z0-9._-]+/g, "-")}.serialconsole.log`;
      download.hidden = false;
      status.say(`${blob.size} bytes of serial log.`);
      log.scrollTop = log.scrollHeight;
    } catch (err) {
      status.say(err.message, "error");
    }
  }

  load();
  return { dispose: () => objectUrl && URL.revokeObjectURL(objectUrl) };
}

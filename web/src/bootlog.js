// Boot diagnostics: the VM's serial log (the blob retrieveBootDiagnosticsData points to),
// shown as text and downloadable, and, for a QEMU VM, a screenshot of its display
// (consoleScreenshotBlobUri) beside it, as the portal's "Boot diagnostics" blade.
import { arm, parseResourceId } from "./api.js";
import { h, statusLine } from "./dom.js";

export function renderBootLog(main, resourceId) {
  const target = parseResourceId(resourceId);
  const status = statusLine("boot-log-status");
  const log = h("pre", { class: "boot-log", id: "boot-log", tabindex: 0, "aria-label": "Serial log" });
  const download = h("a", { class: "button", id: "boot-log-download", hidden: true }, "Download serial log");
  const refresh = h("button", { type: "button", onclick: () => load() }, "Refresh");
  const screenshot = h("img", { class: "boot-screenshot", id: "boot-screenshot", alt: `Screenshot of ${target.label}'s display`, hidden: true });
  main.append(
    h(
      "section",
      { class: "page" },
      h("h1", {}, `${target.label} | Boot diagnostics`),
      h("div", { class: "bar" }, refresh, download, h("a", { href: `#/resource${resourceId}/serialConsole` }, "Serial console")),
      status,
      h("div", { class: "boot-diagnostics" }, screenshot, log),
    ),
  );
  let objectUrl = null;
  let shotUrl = null;

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
      await showScreenshot(body.consoleScreenshotBlobUri);
      status.say(`${blob.size} bytes of serial log${screenshot.hidden ? "" : " and a screenshot"}.`);
      log.scrollTop = log.scrollHeight;
    } catch (err) {
      status.say(err.message, "error");
    }
  }

  // Emulated guests have no display: Azure's field is null and no picture is shown.
  async function showScreenshot(uri) {
    screenshot.hidden = true;
    if (!uri) return;
    const response = await fetch(uri);
    if (!response.ok) return; // a VM that is deallocated has no display to take
    if (shotUrl) URL.revokeObjectURL(shotUrl);
    shotUrl = URL.createObjectURL(await response.blob());
    screenshot.src = shotUrl;
    screenshot.hidden = false;
  }

  load();
  return {
    dispose: () => {
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      if (shotUrl) URL.revokeObjectURL(shotUrl);
    },
  };
}

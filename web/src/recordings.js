// Recorded sessions of a VM's console: the list (GET .../serialPorts/0/sessions), and
// each recording played in the page by asciinema-player or downloaded as a .cast file.
import { ApiError, arm, parseResourceId } from "./api.js";
import { session } from "./auth.js";
import { h, statusLine } from "./dom.js";

function duration(start, end) {
  if (!end) return "active";
  const seconds = Math.max(0, (Date.parse(end) - Date.parse(start)) / 1000);
  return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

async function fetchRecording(id) {
  const url = `${id}/recording?api-version=2024-07-01`;
  const response = await fetch(url, { headers: { Authorization: `Bearer ${session()?.token ?? ""}` } });
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    throw new ApiError(response.status, answer.error?.code, answer.error?.message || `HTTP ${response.status}`);
  }
  return response.blob();
}

export function renderRecordings(main, resourceId) {
  const target = parseResourceId(resourceId);
  const status = statusLine("recordings-status");
  const table = h("table", { class: "sessions", "aria-label": "Recorded sessions" });
  const stage = h("div", { class: "player", id: "player" });
  main.append(
    h(
      "section",
      { class: "page" },
      h("h1", {}, `${target.label} | Recorded sessions`),
      h("div", { class: "bar" }, h("button", { type: "button", onclick: () => load() }, "Refresh"), h("a", { href: `#/resource${resourceId}/serialConsole` }, "Serial console")),
      status,
      table,
      stage,
    ),
  );
  let player = null;
  let objectUrl = null;

  async function load() {
    status.say("Loading…");
    let sessions;
    try {
      ({ body: { value: sessions } } = await arm("GET", `${resourceId}/providers/Microsoft.SerialConsole/serialPorts/0/sessions`));
    } catch (err) {
      status.say(err.message, "error");
      return;
    }
    const rows = sessions.reverse().map((s) => {
      const p = s.properties;
      const play = h("button", { type: "button", "aria-label": `Play the session of ${p.user} at ${p.startTime}`, onclick: () => show(s, row) }, "Play");
      const save = h("button", { type: "button", "aria-label": `Download the session of ${p.user} at ${p.startTime}`, onclick: () => download(s) }, "Download");
      const row = h(
        "tr",
        { dataset: { session: s.name } },
        h("td", {}, new Date(p.startTime).toLocaleString()),
        h("td", {}, p.user),
        h("td", {}, p.door),
        h("td", {}, p.role),
        h("td", {}, duration(p.startTime, p.endTime)),
        h("td", {}, String(p.bytes)),
        h("td", {}, p.endReason || (p.state === "active" ? "still open" : "")),
        h("td", {}, play, " ", save),
      );
      return row;
    });
    table.replaceChildren(
      h("thead", {}, h("tr", {}, ["Start", "User", "Door", "Role", "Length", "Bytes", "How it ended", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    );
    status.say(sessions.length ? `${sessions.length} recorded sessions, newest first.` : "No recorded session yet.");
  }

  async function show(s, row) {
    status.say("Loading the recording…");
    for (const other of table.querySelectorAll("tr[aria-current]")) other.removeAttribute("aria-current");
    row.setAttribute("aria-current", "true");
    try {
      const [blob, { create }] = await Promise.all([fetchRecording(s.id), import("asciinema-player")]);
      player?.dispose();
      stage.replaceChildren();
      player = create({ data: await blob.text() }, stage, { fit: "width", idleTimeLimit: 2, autoPlay: true, controls: true });
      status.say(`Playing the session of ${s.properties.user} (${s.properties.door}).`);
    } catch (err) {
      status.say(err.message, "error");
    }
  }

  async function download(s) {
    try {
      const blob = await fetchRecording(s.id);
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(blob);
      const link = h("a", { href: objectUrl, download: `${target.label.replace(/[^A-Za-z0-9._-]+/g, "-")}-${s.name}.cast` });
      document.body.append(link);
      link.click();
      link.remove();
    } catch (err) {
      status.say(err.message, "error");
    }
  }

  load();
  return {
    dispose() {
      player?.dispose();
      if (objectUrl) URL.revokeObjectURL(objectUrl);
    },
  };
}

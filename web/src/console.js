// The Serial Console pane: xterm.js on the gateway's framed websocket protocol
// (subprotocol serial-console.v1, docs/protocol.md), with Azure's toolbar.
//
// Every byte of the console has an absolute offset. The pane counts the offset of the
// next byte it expects (``pos``); when the connection drops or the gateway restarts it
// calls ``connect`` again and opens the new session at ``?offset=pos``, so the bytes go
// on where they stopped: nothing lost, nothing shown twice.
import { FitAddon } from "@xterm/addon-fit";
import { SearchAddon } from "@xterm/addon-search";
import { Terminal } from "@xterm/xterm";

import { ApiError, arm, parseResourceId } from "./api.js";
import { session } from "./auth.js";
import { confirmDialog, sysrqDialog } from "./dialogs.js";
import { h, messageLog } from "./dom.js";

export const PASTE_LIMIT = 2048; // characters, as Azure's portal
const SUBPROTOCOL = "serial-console.v1";
const RETRY_DELAYS = [250, 500, 1000, 2000]; // then every 2 s
const RETRY_FOR = 120_000; // ms of trying before the pane asks the user
const STABLE_AFTER = 10_000; // ms a session stays up before the retry budget starts again

// What to do after each close code (docs/protocol.md).
const AFTER_CLOSE = {
  1001: "The gateway is restarting. Reconnecting…",
  1006: "The connection dropped. Reconnecting…",
  1011: "The connection stopped answering. Reconnecting…",
  4002: "This page fell behind the console. Reconnecting from where it stopped…",
  4005: "The console session expired. Reconnecting…",
};
const ADVICE = {
  4003: "The VM was deallocated: its serial port is gone. Start the VM, then select Reconnect.",
  4004: "The console was idle for the lab's idle timeout. Select Reconnect to go on.",
  4007: "The gateway refused a message from this page. Reload the page.",
  4008: "The gateway does not allow this page's origin. Open the portal from the gateway's own address.",
  4009: "The VM's serial port went away (its process ended). Start the VM, then select Reconnect.",
  4010: "You have too many consoles open. Close one, then select Reconnect.",
};
// Refusals of connect that pass by themselves while a VM restarts.
const TRANSIENT = /requires a virtual machine to be running/i;

// What to do next after a refused connect, by Azure's text (or the status).
const REFUSAL_ADVICE = [
  [/requires a virtual machine to be running/i, "Start the VM (Virtual machines → Start), then select Reconnect."],
  [/requires boot diagnostics/i, "Turn boot diagnostics on for this VM (boot_diagnostics = true in the lab file), then select Reconnect."],
  [/not enabled for this subscription/i, "An Owner or Contributor enables it: serial-console enable, or POST .../consoleServices/default/enableConsole."],
  [/serial port of this virtual machine is disabled/i, "Enable the port (the message says how), then select Reconnect."],
  [/Provisioning for this VM has not yet succeeded/i, "Wait until the VM is deployed, then select Reconnect."],
  [/required permissions/i, "Ask the VM's owner for the Virtual Machine Contributor role, then select Reconnect."],
  [/too many|4010/i, "Close another console, then select Reconnect."],
];

function adviceFor(err) {
  for (const [pattern, advice] of REFUSAL_ADVICE) if (pattern.test(err.message)) return advice;
  if (err.status === 404) return "Check the link: this VM is not in the lab. Virtual machines lists those that are.";
  if (err.status === 0) return "Start the lab (make run-lab), then select Reconnect.";
  return "Fix what the message says, then select Reconnect.";
}

const SUCCESS_LABEL = {
  sysrq: "SysRq",
  nmi: "NMI",
  reset: "Reset VM",
  restart: "Restart VM",
};

export class ConsolePage {
  constructor(main, resourceId) {
    this.id = resourceId;
    this.target = parseResourceId(resourceId);
    this.pos = null; // offset of the next console byte this page expects
    this.role = "writer";
    this.socket = null;
    this.generation = 0;
    this.disposed = false;
    this.commandId = 0;
    this.pending = new Map();
    this.os = null;
    this.state = "connecting";
    this.metrics = { openedAt: performance.now(), firstByteMs: null, roundTrips: [], lostBytes: 0 };
    this.lastInputAt = null;
    this.encoder = new TextEncoder();
    this.build(main);
    window.portal = { console: this };
    this.connect();
  }

  // -- the page ------------------------------------------------------------------------------

  build(main) {
    const t = this.target;
    // A menu is a disclosure (<details>): its items are plain buttons, Tab reaches them,
    // Escape or a click elsewhere closes it.
    const menu = (label, items) =>
      h(
        "details",
        { class: "menu", onkeydown: (e) => { if (e.key === "Escape") { e.currentTarget.open = false; e.currentTarget.querySelector("summary").focus(); } } },
        h("summary", {}, label),
        h(
          "div",
          { class: "items" },
          items.map(([text, action]) =>
            h("button", { type: "button", onclick: (e) => { e.target.closest("details").open = false; action(); } }, text),
          ),
        ),
      );
    this.onDocumentClick = (e) => {
      for (const open of document.querySelectorAll("details.menu[open]")) {
        if (!open.contains(e.target)) open.open = false;
      }
    };
    document.addEventListener("click", this.onDocumentClick);
    this.takeButton = h("button", { type: "button", onclick: () => this.switchRole() }, "Watch only");
    this.reconnectButton = h("button", { type: "button", hidden: true, onclick: () => this.connect() }, "Reconnect");
    this.syncButton = h(
      "button",
      { type: "button", onclick: () => this.syncSize(), title: "Types stty rows R cols C: a serial line carries no window size" },
      "Sync size",
    );
    this.readerBox = h("input", { type: "checkbox", id: "screen-reader", onchange: (e) => { this.term.options.screenReaderMode = e.target.checked; } });
    this.findInput = h("input", { type: "search", id: "find", placeholder: "Find in scrollback", "aria-label": "Find in scrollback", onkeydown: (e) => { if (e.key === "Enter") this.find(e.shiftKey ? -1 : 1); } });
    this.stateBadge = h("span", { class: "badge", id: "power-state" }, "…");
    this.roleBadge = h("span", { class: "badge", id: "console-role" }, "");
    this.sizeBadge = h("span", { class: "badge", id: "console-size" }, "");
    this.status = messageLog("console-status");
    this.notice = h("div", { class: "notice", id: "console-notice", role: "alert", hidden: true });
    this.screen = h("div", { class: "screen", id: "terminal", "aria-describedby": "terminal-keys" });
    const keys = h("p", { class: "hint", id: "terminal-keys" }, "Keys go to the VM (Tab too). Alt+F10 moves to the toolbar; Ctrl+Shift+C copies, Ctrl+Shift+V pastes.");
    const toolbar = h(
      "div",
      { class: "toolbar", role: "toolbar", "aria-label": "Serial console" },
      menu("Keyboard", [
        ["Send Non-Maskable Interrupt (NMI)", () => this.nmi()],
        ["Send SysRq Command", () => this.sysrq()],
      ]),
      menu("Power", [
        ["Restart VM", () => this.power("restart")],
        ["Reset VM", () => this.power("reset")],
      ]),
      this.takeButton,
      this.reconnectButton,
      this.syncButton,
      h("span", { class: "find" }, this.findInput, h("button", { type: "button", "aria-label": "Previous match", onclick: () => this.find(-1) }, "↑"), h("button", { type: "button", "aria-label": "Next match", onclick: () => this.find(1) }, "↓")),
      h("button", { type: "button", "aria-label": "Smaller font", onclick: () => this.fontSize(-1) }, "A−"),
      h("button", { type: "button", "aria-label": "Larger font", onclick: () => this.fontSize(1) }, "A+"),
      h("label", { class: "check" }, this.readerBox, " Screen reader mode"),
      h("a", { href: `#/resource${this.id}/bootDiagnostics` }, "Boot diagnostics"),
      h("a", { href: `#/resource${this.id}/recordings` }, "Recorded sessions"),
    );
    main.append(
      h(
        "section",
        { class: "console-page" },
        h("div", { class: "title" }, h("h1", {}, `${t.label} | Serial console`), this.stateBadge, this.roleBadge, this.sizeBadge),
        toolbar,
        this.notice,
        this.screen,
        keys,
        this.status,
      ),
    );

    this.term = new Terminal({
      convertEol: false,
      cursorBlink: false, // a blinking cursor redraws on every key: +4 ms per keystroke (make bench)
      fontSize: 14,
      scrollback: 10000,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', 'Liberation Mono', monospace",
      theme: { background: "#0c0c0c" },
    });
    this.fit = new FitAddon();
    this.search = new SearchAddon();
    this.term.loadAddon(this.fit);
    this.term.loadAddon(this.search);
    this.term.open(this.screen);
    this.term.onData((data) => this.type(data));
    this.term.onResize(({ cols, rows }) => { this.sizeBadge.textContent = `${cols}×${rows}`; });
    this.term.attachCustomKeyEventHandler((e) => this.key(e));
    // A paste goes through the cap first, whichever way it comes.
    this.screen.addEventListener("paste", (e) => {
      e.preventDefault();
      e.stopImmediatePropagation();
      this.paste(e.clipboardData?.getData("text/plain") || "");
    }, true);
    this.toolbar = toolbar;
    this.onWindowResize = () => this.fitScreen();
    window.addEventListener("resize", this.onWindowResize);
    this.fitScreen();
    this.term.focus();
  }

  fitScreen() {
    try {
      this.fit.fit();
    } catch {
      // not laid out yet
    }
    this.sizeBadge.textContent = `${this.term.cols}×${this.term.rows}`;
  }

  dispose() {
    this.disposed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.stableTimer);
    window.removeEventListener("resize", this.onWindowResize);
    document.removeEventListener("click", this.onDocumentClick);
    if (this.socket) this.socket.close(1000, "page closed");
    this.term.dispose();
    if (window.portal?.console === this) delete window.portal;
  }

  /** The terminal's whole buffer (scrollback included) as text: one line per line the
   * guest wrote, rows that only wrap a long line joined back to it. */
  text() {
    const buffer = this.term.buffer.active;
    let text = "";
    for (let i = 0; i < buffer.length; i++) {
      const line = buffer.getLine(i);
      if (!line) continue;
      if (i > 0 && !line.isWrapped) text += "\n";
      text += line.translateToString(!buffer.getLine(i + 1)?.isWrapped);
    }
    return text.replace(/\n+$/, "");
  }

  say(text, kind = "info") {
    this.status.say(text, kind);
  }

  showNotice(text, buttons = []) {
    this.notice.replaceChildren(h("p", {}, text), ...buttons);
    this.notice.hidden = false;
  }

  hideNotice() {
    this.notice.hidden = true;
    this.notice.replaceChildren();
  }

  /** The role the next session asks for (``writer`` or ``watcher``). */
  setRole(role) {
    this.role = role;
    this.takeButton.textContent = role === "watcher" ? "Take over" : "Watch only";
  }

  /** The badge says what the console is now, not what was asked for: a key typed while it
   * says "Connecting…" is not sent. */
  showLink(link) {
    this.roleBadge.textContent = {
      connecting: "Connecting…",
      open: this.role === "watcher" ? "Watching (read only)" : "Connected",
      closed: "Not connected",
    }[link];
    this.roleBadge.dataset.link = link;
  }

  setPowerState(state) {
    this.state = state;
    this.stateBadge.textContent = `VM ${state}`;
    this.stateBadge.dataset.state = state;
  }

  // -- the connection ------------------------------------------------------------------------

  /** Open a new console session: ``connect`` (a new one-time URL), then the websocket at
   * ``?offset=pos``. Only the newest call wins: an older one still waiting for its URL
   * gives up, and only the current socket's frames are heard. */
  async connect({ retrying = false } = {}) {
    clearTimeout(this.retryTimer);
    if (this.disposed) return;
    const generation = ++this.generation;
    if (!retrying) this.retryStarted = null;
    this.awaitingEnter = false;
    this.reconnectButton.hidden = true;
    this.hangUp();
    this.showLink("connecting");
    let url;
    try {
      const { body } = await arm("POST", `${this.id}/providers/Microsoft.SerialConsole/serialPorts/0/connect`);
      if (typeof body.connectionString !== "string") {
        throw new ApiError(502, "NoConnectionString", "The gateway's answer to connect had no console URL. Reload the page.");
      }
      url = new URL(body.connectionString, location.href);
    } catch (err) {
      if (this.disposed || generation !== this.generation) return;
      this.connectFailed(err);
      return;
    }
    if (this.disposed || generation !== this.generation) return;
    if (this.role === "watcher") url.searchParams.set("watch", "1");
    if (this.pos !== null) url.searchParams.set("offset", String(this.pos));
    const socket = new WebSocket(url, SUBPROTOCOL);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    this.closing = null;
    this.takenOverBy = null;
    socket.onopen = () => socket.send(JSON.stringify({ type: "authorize", token: session()?.token ?? "" }));
    socket.onmessage = (event) => { if (socket === this.socket) this.receive(event.data); };
    socket.onclose = (event) => { if (socket === this.socket) this.closed(event); };
  }

  /** Close the current socket, if any, without reacting to its close. */
  hangUp() {
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onmessage = null;
      socket.onclose = null;
      socket.close(1000, "reconnecting");
    }
    this.unanswered("the page opened a new connection");
  }

  /** Commands sent on a connection that ended before their result: say so. */
  unanswered(why) {
    for (const label of this.pending.values()) {
      this.say(`${label}: no result came (${why}). Look at the console to see whether it happened.`, "error");
    }
    this.pending.clear();
  }

  connectFailed(err) {
    const retryable = err instanceof ApiError && (err.status === 0 || err.status >= 500 || err.status === 429 || (this.pos !== null && TRANSIENT.test(err.message)));
    if (retryable && this.retry(err.status === 0 ? "The gateway cannot be reached. Reconnecting…" : `${err.message} Reconnecting…`)) return;
    this.showLink("closed");
    if (err.status === 401) {
      window.dispatchEvent(new CustomEvent("signed-out", { detail: err.message }));
      return;
    }
    const next = adviceFor(err);
    this.showNotice(err.message, [h("p", { class: "hint" }, next)]);
    this.say(err.message, "error");
    this.reconnectButton.hidden = false;
  }

  /** Try again later; false once the pane has tried for RETRY_FOR. */
  retry(text) {
    const now = performance.now();
    this.retryStarted ??= now;
    if (now - this.retryStarted > RETRY_FOR) return false;
    this.attempt = (this.attempt ?? 0) + 1;
    const delay = RETRY_DELAYS[Math.min(this.attempt - 1, RETRY_DELAYS.length - 1)];
    this.say(text);
    this.retryTimer = setTimeout(() => this.connect({ retrying: true }), delay);
    return true;
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) {
      const binary = message instanceof Uint8Array;
      this.socket.send(binary || typeof message === "string" ? message : JSON.stringify(message));
      return true;
    }
    return false;
  }

  receive(data) {
    if (typeof data !== "string") {
      const bytes = new Uint8Array(data);
      if (this.metrics.firstByteMs === null) {
        this.term.write(bytes, () => {
          // on screen: since the pane opened, and since the page's navigation began
          this.metrics.firstByteMs ??= performance.now() - this.metrics.openedAt;
          this.metrics.firstByteSinceNavigation ??= performance.now();
        });
      } else {
        this.term.write(bytes);
      }
      if (this.lastInputAt !== null) {
        this.metrics.roundTrips.push(performance.now() - this.lastInputAt);
        this.lastInputAt = null;
      }
      this.pos += bytes.length;
      return;
    }
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    const handler = this[`on_${event.type}`];
    if (handler) handler.call(this, event);
  }

  on_connected(event) {
    // The retry budget starts again only once a session has stayed up for a while, so a
    // connect-then-close loop still ends with the pane asking the user.
    clearTimeout(this.stableTimer);
    this.stableTimer = setTimeout(() => {
      this.attempt = 0;
      this.retryStarted = null;
    }, STABLE_AFTER);
    this.os = event.os;
    this.setRole(event.role);
    this.showLink("open");
    this.setPowerState(event.power_state);
    this.syncButton.disabled = event.os !== "linux" || event.role !== "writer";
    this.syncButton.title = event.os === "linux"
      ? "Types stty rows R cols C: a serial line carries no window size"
      : "Windows' SAC has a fixed 80×24 screen";
    const resumed = this.pos !== null;
    if (!resumed) {
      this.term.write(event.banner.replace(/\r?\n/g, "\r\n") + "\r\n");
    } else if (event.replay_from > this.pos) {
      this.metrics.lostBytes += event.replay_from - this.pos;
      this.say(`Reconnected. ${event.replay_from - this.pos} bytes were rotated out of the boot log meanwhile.`);
    } else {
      this.say("Reconnected: the console goes on where it stopped.");
    }
    this.pos = event.replay_from;
    this.hideNotice();
    if (!resumed) this.say(event.role === "watcher" ? "Watching: read only." : "Connected.");
  }

  on_power(event) {
    this.setPowerState(event.state);
    const what = { reset: "The VM was reset", panicked: "The VM panicked" }[event.event];
    const detail = event.detail ? ` (${event.detail})` : "";
    this.say(what ? `${what}${detail}.` : `The VM is ${event.state}.`, event.event === "panicked" ? "error" : "info");
  }

  on_taken_over(event) {
    this.takenOverBy = event.by;
  }

  on_idle_warning(event) {
    this.say(`This console closes in ${event.seconds} seconds without input. Type to stay.`);
  }

  on_result(event) {
    const label = this.pending.get(event.id) ?? SUCCESS_LABEL[event.command] ?? event.command;
    this.pending.delete(event.id);
    this.say(event.ok ? event.message : `${label}: ${event.message}`, event.ok ? "info" : "error");
  }

  on_resumed(event) {
    this.pos = event.start;
  }

  on_lost(event) {
    this.metrics.lostBytes += event.end - event.start;
    this.pos = event.end;
    this.say(event.message);
  }

  on_message(event) {
    this.say(event.text);
  }

  on_closing(event) {
    this.closing = event;
  }

  closed(event) {
    if (this.disposed || event.target !== this.socket) return;
    this.socket = null;
    clearTimeout(this.stableTimer);
    this.showLink("closed");
    const code = this.closing?.code ?? event.code;
    const message = this.closing?.message || event.reason;
    // The pane's own count is exact; the gateway's resume offset only stands in for it
    // when the pane never had a session.
    this.pos ??= this.closing?.resume_offset ?? null;
    this.unanswered("the connection closed first");
    if (code === 4001) {
      this.tookOver(message);
      return;
    }
    if (code === 4006) {
      window.dispatchEvent(new CustomEvent("signed-out", { detail: message }));
      return;
    }
    const again = AFTER_CLOSE[code] ?? (code >= 4000 ? null : AFTER_CLOSE[1006]);
    if (again && this.retry(again)) return;
    const advice = ADVICE[code] ?? "Select Reconnect to connect again.";
    this.showNotice(message || "The console connection closed.", [h("p", { class: "hint" }, advice)]);
    this.say(advice, "error");
    this.reconnectButton.hidden = false;
  }

  tookOver(message) {
    const by = this.takenOverBy ? ` (${this.takenOverBy})` : "";
    const back = h("button", { type: "button", onclick: () => { this.setRole("writer"); this.connect(); } }, "Take it back");
    const watch = h("button", { type: "button", onclick: () => { this.setRole("watcher"); this.connect(); } }, "Watch");
    this.showNotice(`${message}${by}`, [back, watch]);
    this.say("Another user took this console over.", "error");
    this.awaitingEnter = true;
  }

  switchRole() {
    this.setRole(this.role === "watcher" ? "writer" : "watcher");
    this.connect();
  }

  // -- typing ---------------------------------------------------------------------------------

  type(data) {
    if (this.awaitingEnter && data === "\r" && !this.socket) {
      // Azure's text says: to reconnect, press "Enter".
      this.setRole("writer");
      this.connect();
      return;
    }
    if (this.role === "watcher") {
      this.say("You are watching: read only. Select Take over to type.", "error");
      return;
    }
    if (this.send(this.encoder.encode(data))) {
      this.lastInputAt ??= performance.now();
    } else if (this.awaitingEnter) {
      this.say("Not connected: another user has this console. Press Enter or select Take it back.", "error");
    } else if (!this.reconnectButton.hidden) {
      this.say("Not connected: what you type is not sent. Select Reconnect.", "error");
    } else {
      this.say("Not connected yet: what you type is not sent. Reconnecting…", "error");
    }
  }

  paste(text) {
    if (!text) return;
    const characters = Array.from(text); // code points: a cut never splits a character
    if (characters.length > PASTE_LIMIT) {
      text = characters.slice(0, PASTE_LIMIT).join("");
      this.say(`Only the first ${PASTE_LIMIT} characters were pasted: a paste is limited to ${PASTE_LIMIT} characters, as in Azure's portal.`, "error");
    }
    this.term.paste(text);
  }

  /** Alt+F10 moves to the toolbar (Tab is a key for the VM); Ctrl+Shift+C copies the
   * selection; Ctrl+Shift+V pastes (the browser's own paste event, which goes through the
   * cap). None of them reaches the guest as a key. */
  key(e) {
    if (e.type === "keydown" && e.altKey && e.key === "F10") {
      e.preventDefault();
      this.toolbar.querySelector("summary, button:not([hidden])")?.focus();
      return false;
    }
    if (e.type !== "keydown" || !e.ctrlKey || !e.shiftKey) return true;
    if (e.code === "KeyC") {
      e.preventDefault(); // not the browser's inspector
      const selection = this.term.getSelection();
      if (!selection) this.say("Nothing is selected: select text with the mouse first, then Ctrl+Shift+C.", "error");
      if (selection) {
        navigator.clipboard.writeText(selection).then(
          () => this.say("Copied."),
          () => this.say("The browser refused the clipboard: use its Copy instead.", "error"),
        );
      }
      return false;
    }
    return e.code !== "KeyV";
  }

  syncSize() {
    if (this.os !== "linux") {
      this.say("Sync size types a Linux command; Windows' SAC has a fixed 80×24 screen.", "error");
      return;
    }
    this.type(`stty rows ${this.term.rows} cols ${this.term.cols}\r`);
    this.term.focus();
  }

  find(direction) {
    const term = this.findInput.value;
    if (!term) return;
    const found = direction > 0 ? this.search.findNext(term) : this.search.findPrevious(term);
    this.say(found ? `Found "${term}".` : `"${term}" is not in the scrollback.`, found ? "info" : "error");
  }

  fontSize(step) {
    const size = Math.max(8, Math.min(32, this.term.options.fontSize + step));
    this.term.options.fontSize = size;
    this.fitScreen();
    this.say(`Font size ${size}.`);
  }

  // -- commands -------------------------------------------------------------------------------

  command(type, fields = {}, label = SUCCESS_LABEL[type]) {
    const id = ++this.commandId;
    this.pending.set(id, label);
    if (!this.send({ type, id, ...fields })) {
      this.pending.delete(id);
      this.say(`${label}: not connected. Select Reconnect, then try again.`, "error");
      return;
    }
    this.say(`${label}: sending…`);
  }

  nmi() {
    this.command("nmi");
  }

  async sysrq() {
    const keys = await sysrqDialog();
    if (keys) this.command("sysrq", { keys }, `SysRq ${keys}`);
    this.term.focus();
  }

  async power(kind) {
    const name = this.target.label;
    const ok = kind === "restart"
      ? await confirmDialog(
          "Restart VM",
          `Restart ${name}? The guest is asked to shut down, then the VM starts again; its workloads stop for a moment. The serial console stays open and shows the new boot.`,
          "Restart",
        )
      : await confirmDialog(
          "Reset VM",
          `Hard reset ${name}? A reset is a forceful power cycle, like pulling the power cord: what the guest has not written to disk is lost. The serial console stays open and shows the new boot.`,
          "Reset",
        );
    if (ok) this.command(kind);
    this.term.focus();
  }
}

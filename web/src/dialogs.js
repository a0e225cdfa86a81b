// Modal dialogs on the platform's <dialog>: a confirmation with Azure's warning, and the
// SysRq dialog that takes a key or a sequence.
import { h } from "./dom.js";

/** Ask ``question``; resolves true when the user confirms with ``confirmLabel``. */
export function confirmDialog(title, text, confirmLabel) {
  return new Promise((resolve) => {
    const ok = h("button", { type: "submit", value: "ok", class: "danger" }, confirmLabel);
    const cancel = h("button", { type: "submit", value: "cancel", formnovalidate: true }, "Cancel");
    const dialog = h(
      "dialog",
      { "aria-labelledby": "confirm-title" },
      h("form", { method: "dialog" }, h("h2", { id: "confirm-title" }, title), h("p", {}, text), h("div", { class: "buttons" }, ok, cancel)),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "ok");
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

const SYSRQ_KEYS = /^[0-9a-z]+$/i;

/** Ask for SysRq keys: one key (``h``) or a sequence (``REISUB``). Resolves null on cancel. */
export function sysrqDialog() {
  return new Promise((resolve) => {
    const input = h("input", {
      id: "sysrq-keys",
      name: "keys",
      required: true,
      maxlength: 32,
      autocomplete: "off",
      pattern: "[0-9A-Za-z]+",
      title: "Keys 0-9 and a-z: one key, or a sequence such as REISUB",
    });
    const send = h("button", { type: "submit", value: "send" }, "Send");
    const cancel = h("button", { type: "button", onclick: () => dialog.close("cancel") }, "Cancel");
    const dialog = h(
      "dialog",
      { "aria-labelledby": "sysrq-title" },
      h(
        "form",
        { method: "dialog" },
        h("h2", { id: "sysrq-title" }, "Send SysRq Command"),
        h("p", {}, "A serial BREAK, then each key: h prints the help, REISUB reboots safely. The guest needs kernel.sysrq enabled."),
        h("label", { for: "sysrq-keys" }, "SysRq keys"),
        input,
        h("div", { class: "buttons" }, send, cancel),
      ),
    );
    dialog.addEventListener("close", () => {
      const keys = input.value.trim();
      dialog.remove();
      resolve(dialog.returnValue === "send" && SYSRQ_KEYS.test(keys) ? keys : null);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

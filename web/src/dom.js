// Small DOM helpers: elements built from data, never from HTML strings, so no text the
// gateway or a guest sends is ever parsed as markup.

/** h("button", {type: "button", onclick}, "Text", child...) */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A status line (role=status) whose text can be set; ``error`` makes it an alert. */
export function statusLine(id) {
  const el = h("p", { id, class: "status", role: "status", "aria-live": "polite" });
  el.say = (text, kind = "info") => {
    el.textContent = text;
    el.dataset.kind = kind;
    el.setAttribute("role", kind === "error" ? "alert" : "status");
  };
  return el;
}

/** A log of the newest ``keep`` messages (role=log), newest last; errors marked. */
export function messageLog(id, keep = 4) {
  const el = h("div", { id, class: "log", role: "log", "aria-live": "polite" });
  el.say = (text, kind = "info") => {
    el.append(h("p", { dataset: { kind } }, text));
    while (el.childElementCount > keep) el.firstElementChild.remove();
  };
  return el;
}

// The portal's routes, in the shape of Azure's portal so that a link can be shared and
// reloaded:
//   #/                                        the subscription's virtual machines
//   #/resource{vm or instance id}/serialConsole
//   #/resource{vm or instance id}/bootDiagnostics
//   #/resource{vm or instance id}/recordings
import { arm, parseResourceId } from "./api.js";
import { session, signOut } from "./auth.js";
import { renderBootLog } from "./bootlog.js";
import { ConsolePage } from "./console.js";
import { h } from "./dom.js";
import { renderRecordings } from "./recordings.js";
import { renderResources } from "./resources.js";
import { renderSignIn } from "./signin.js";

const RESOURCE_ROUTE = /^#\/resource(\/subscriptions\/.+)\/(serialConsole|bootDiagnostics|recordings)$/i;
const PAGES = {
  serialconsole: ["Serial console", (main, id) => new ConsolePage(main, id)],
  bootdiagnostics: ["Boot diagnostics", renderBootLog],
  recordings: ["Recorded sessions", renderRecordings],
};
let page = null;
let signedOutNotice = null;

async function route() {
  page?.dispose?.();
  page = null;
  const main = document.getElementById("main");
  main.replaceChildren();
  const s = session();
  document.getElementById("who").textContent = s ? s.user : "";
  document.getElementById("sign-out").hidden = !s;
  const crumbs = document.getElementById("crumbs");
  crumbs.replaceChildren();
  if (!s) {
    document.title = "Sign in | Serial Console Lab";
    page = renderSignIn(main, route, signedOutNotice);
    signedOutNotice = null;
    return;
  }
  let hash = location.hash;
  try {
    hash = decodeURI(hash);
  } catch {
    // a malformed escape: no route matches it, and the page says so below
  }
  const match = RESOURCE_ROUTE.exec(hash);
  const target = match && parseResourceId(match[1]);
  if (target) {
    crumbs.append(h("a", { href: "#/" }, "Virtual machines"), " / ", target.label);
    const [title, render] = PAGES[match[2].toLowerCase()];
    document.title = `${target.label} | ${title}`;
    page = render(main, target.id);
    return;
  }
  if (hash.startsWith("#/resource")) {
    document.title = "Not found | Serial Console Lab";
    main.append(
      h(
        "section",
        { class: "page" },
        h("h1", {}, "This link names no VM"),
        h("p", { role: "alert" }, "A console link names a VM or scale-set instance by its resource id, with plain Azure names (letters, digits, . _ ( ) -)."),
        h("a", { href: "#/" }, "Virtual machines"),
      ),
    );
    return;
  }
  document.title = "Virtual machines | Serial Console Lab";
  const routed = location.hash;
  try {
    const { body } = await arm("GET", "/subscriptions");
    if (location.hash !== routed || page) return; // the person went elsewhere meanwhile
    const subscription = body.value?.[0]?.subscriptionId;
    if (!subscription) {
      main.append(h("p", { role: "alert" }, "You can see no subscription of this lab."));
      return;
    }
    page = renderResources(main, subscription);
  } catch (err) {
    main.append(h("p", { role: "alert" }, err.message));
  }
}

window.addEventListener("hashchange", route);
let signingOut = false;
window.addEventListener("signed-out", async (event) => {
  // Every call in flight may fail at once: the first one signs out, keeping the route so
  // that signing in again goes back to it.
  if (signingOut) return;
  signingOut = true;
  signedOutNotice = `${event.detail} Sign in again.`;
  await signOut();
  signingOut = false;
  route();
});
document.getElementById("sign-out").addEventListener("click", async () => {
  const revoked = await signOut();
  if (!revoked) {
    signedOutNotice =
      "Signed out here, but the gateway could not be told: the token stays valid until it expires.";
  }
  location.hash = "#/";
  route();
});
route();

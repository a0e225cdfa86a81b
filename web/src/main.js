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
  const match = RESOURCE_ROUTE.exec(decodeURI(location.hash));
  const target = match && parseResourceId(match[1]);
  if (target) {
    crumbs.append(h("a", { href: "#/" }, "Virtual machines"), " / ", target.label);
    const [title, render] = PAGES[match[2].toLowerCase()];
    document.title = `${target.label} | ${title}`;
    page = render(main, match[1]);
    return;
  }
  document.title = "Virtual machines | Serial Console Lab";
  try {
    const { body } = await arm("GET", "/subscriptions");
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
window.addEventListener("signed-out", (event) => {
  signedOutNotice = `${event.detail} Sign in again.`;
  signOut().then(route);
});
document.getElementById("sign-out").addEventListener("click", async () => {
  await signOut();
  location.hash = "#/";
  route();
});
route();

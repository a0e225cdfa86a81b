// Builds the portal into gateway/portal/dist: one script and one stylesheet bundled by
// esbuild from src/ and the pinned npm packages (xterm.js and its addons), and the page.
// Nothing is fetched at run time. Prints what the page loads.
import { build } from "esbuild";
import { copyFile, mkdir, readdir, rm, stat } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const out = fileURLToPath(new URL("../gateway/portal/dist/", import.meta.url));
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });

const common = { bundle: true, minify: true, legalComments: "linked", logLevel: "warning" };
// The console pane loads with the page; the recording player (asciinema-player) is a
// chunk of its own, loaded when a recording is played.
await build({
  ...common,
  entryPoints: { app: "src/main.js" },
  outdir: out,
  splitting: true,
  chunkNames: "chunk-[hash]",
  format: "esm",
  target: "es2022",
  sourcemap: "linked",
});
await build({ ...common, entryPoints: ["src/style.css"], outfile: out + "app.css" });
await copyFile("src/index.html", out + "index.html");

let total = 0;
for (const name of (await readdir(out)).sort()) {
  const { size } = await stat(out + name);
  if (/^(app\.js|app\.css|index\.html)$/.test(name)) total += size;
  console.log(`${name.padEnd(24)} ${(size / 1024).toFixed(1).padStart(8)} KiB`);
}
console.log(`${"page loads".padEnd(24)} ${(total / 1024).toFixed(1).padStart(8)} KiB (chunks on demand)`);

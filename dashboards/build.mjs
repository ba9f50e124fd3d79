// Vendors uPlot into vendor/: copies the files the page loads (and uPlot's
// licence) from node_modules, exactly as the lockfile's release ships them.
//
// vendor/ is committed so that `cargo build` alone embeds a working dashboard; CI
// runs `npm ci && npm run build` and fails if vendor/ then differs from what is
// committed. No bundling, no minifying, no dependencies: a plain byte copy.
// A file whose bytes are already right is left untouched (not even its mtime), so
// this check does not make cargo rebuild the hub that embeds vendor/.

import { copyFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const uplot = join(here, "node_modules", "uplot");
const vendor = join(here, "vendor");

const files = [
  ["dist/uPlot.iife.min.js", "uPlot.iife.min.js"],
  ["dist/uPlot.min.css", "uPlot.min.css"],
  ["LICENSE", "uPlot.LICENSE.txt"],
];

const { version } = JSON.parse(readFileSync(join(uplot, "package.json"), "utf8"));
mkdirSync(vendor, { recursive: true });
for (const [from, to] of files) {
  const source = join(uplot, from);
  const target = join(vendor, to);
  if (existsSync(target) && readFileSync(target).equals(readFileSync(source))) {
    console.log(`vendor/${to} = uplot@${version}/${from}`);
    continue;
  }
  copyFileSync(source, target);
  console.log(`vendor/${to} <- uplot@${version}/${from}`);
}

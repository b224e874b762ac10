// Copy the three onnxruntime-web files the page needs (wasm backend only) into vendor/.
// Runs after `npm ci` (postinstall) or as `npm run copy-runtime`; vendor/ is git-ignored.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "node_modules", "onnxruntime-web", "dist");
const vendor = join(here, "vendor");
const files = [
  "ort.wasm.min.mjs", // the wasm-only entry (the default one pulls the 28 MB WebGPU build)
  "ort-wasm-simd-threaded.mjs",
  "ort-wasm-simd-threaded.wasm",
];

mkdirSync(vendor, { recursive: true });
for (const name of files) {
  copyFileSync(join(dist, name), join(vendor, name));
}
console.log(`copied ${files.length} onnxruntime-web files into ${vendor}`);

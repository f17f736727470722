// Builds app.wasm with componentize-js's library API (its `jco componentize` command path did
// not work in our probe; the library does).
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";

const { component } = await componentize({
  sourcePath: "app.js",
  witPath: "wit",
  worldName: "hello",
});
await writeFile("app.wasm", component);
console.log(`wrote app.wasm (${(component.byteLength / 1048576).toFixed(1)} MiB)`);

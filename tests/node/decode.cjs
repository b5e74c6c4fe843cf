// Reference decoder for Moira's tokenizer tests: Hugging Face's tokenizers.js (@huggingface/tokenizers)
// on a model directory's tokenizer.json and tokenizer_config.json.
//
//   NODE_PATH=.deps/npm/node_modules node tests/node/decode.cjs MODEL_DIR < ids.jsonl
//
// Each input line is a JSON array of ids; each output line is `t.decode(ids)` as one JSON string
// ("" for an empty array, which tokenizers.js itself refuses). Characters that some line readers take
// for line ends or a BOM (C1 controls, DEL, U+2028, U+2029, U+FEFF) are written as \u escapes, as in
// tests/data/tokenizer/corpus.jsonl, so decoding encode.cjs's output reproduces the corpus byte for byte.
"use strict";
const fs = require("fs");
const path = require("path");

const dir = process.argv[2];
if (!dir || process.argv.length !== 3) {
  process.stderr.write("usage: node decode.cjs MODEL_DIR < ids.jsonl\n");
  process.exit(2);
}
const { Tokenizer } = require("@huggingface/tokenizers");
const readJSON = (name) => JSON.parse(fs.readFileSync(path.join(dir, name), "utf8"));
const t = new Tokenizer(readJSON("tokenizer.json"), readJSON("tokenizer_config.json"));

const escapeLineBreakers = (json) =>
  json.replace(/[\u007f-\u009f\u2028\u2029\ufeff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));

const lines = fs.readFileSync(0, "utf8").split("\n");
if (lines[lines.length - 1] === "") lines.pop();
const out = [];
lines.forEach((line, i) => {
  let ids;
  try {
    ids = JSON.parse(line);
  } catch (e) {
    process.stderr.write(`decode.cjs: line ${i + 1}: not JSON: ${e.message}\n`);
    process.exit(1);
  }
  if (!Array.isArray(ids) || !ids.every((x) => Number.isInteger(x) && x >= 0)) {
    process.stderr.write(`decode.cjs: line ${i + 1}: not a JSON array of non-negative integers\n`);
    process.exit(1);
  }
  out.push(escapeLineBreakers(JSON.stringify(ids.length ? t.decode(ids) : "")));
});
process.stdout.write(out.length ? out.join("\n") + "\n" : "");

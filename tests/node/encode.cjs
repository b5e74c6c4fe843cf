// Reference encoder for Moira's tokenizer tests: Hugging Face's tokenizers.js (@huggingface/tokenizers)
// on a model directory's tokenizer.json and tokenizer_config.json.
//
//   NODE_PATH=.deps/npm/node_modules node tests/node/encode.cjs MODEL_DIR < tests/data/tokenizer/corpus.jsonl
//
// Each input line is one JSON string; each output line is the JSON array of its ids, `t.encode(s).ids`,
// written compactly (JSON.stringify). tokenizers.js adds no BOS for the DeepSeek tokenizers (their
// post-processor is ByteLevel): a test comparing with a runtime that honours add_bos_token prepends it.
"use strict";
const fs = require("fs");
const path = require("path");

const dir = process.argv[2];
if (!dir || process.argv.length !== 3) {
  process.stderr.write("usage: node encode.cjs MODEL_DIR < strings.jsonl\n");
  process.exit(2);
}
const { Tokenizer } = require("@huggingface/tokenizers");
const readJSON = (name) => JSON.parse(fs.readFileSync(path.join(dir, name), "utf8"));
const t = new Tokenizer(readJSON("tokenizer.json"), readJSON("tokenizer_config.json"));

// Lines are split on "\n" only: a JSON string literal holds no raw line break, and readline would also
// break on a lone "\r".
const lines = fs.readFileSync(0, "utf8").split("\n");
if (lines[lines.length - 1] === "") lines.pop();
const out = [];
lines.forEach((line, i) => {
  let s;
  try {
    s = JSON.parse(line);
  } catch (e) {
    process.stderr.write(`encode.cjs: line ${i + 1}: not JSON: ${e.message}\n`);
    process.exit(1);
  }
  if (typeof s !== "string") {
    process.stderr.write(`encode.cjs: line ${i + 1}: not a JSON string\n`);
    process.exit(1);
  }
  out.push(JSON.stringify(t.encode(s).ids));
});
process.stdout.write(out.length ? out.join("\n") + "\n" : "");

// Seeded random id sequences for decode tests: runs of single-byte tokens (so UTF-8 characters are
// cut, misordered and left incomplete), whole vocabulary tokens and added tokens, mixed.
//
//   NODE_PATH=... node random_ids.cjs MODEL_DIR COUNT SEED > ids.jsonl
"use strict";
const fs = require("fs");
const path = require("path");
const { Tokenizer } = require("@huggingface/tokenizers");

const [dir, countText, seedText] = process.argv.slice(2);
if (!dir || !countText || !seedText) {
  process.stderr.write("usage: node random_ids.cjs MODEL_DIR COUNT SEED\n");
  process.exit(2);
}
const readJSON = (name) => JSON.parse(fs.readFileSync(path.join(dir, name), "utf8"));
const json = readJSON("tokenizer.json");
const t = new Tokenizer(json, readJSON("tokenizer_config.json"));

// xorshift32: the same sequences on every machine and Node.js version.
let state = Number(seedText) >>> 0 || 1;
const next = () => {
  state ^= state << 13;
  state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5;
  state >>>= 0;
  return state;
};
const pick = (n) => next() % n;

// GPT-2's byte-level alphabet, to find the one-byte tokens.
const byteChar = [];
let shifted = 0;
for (let b = 0; b < 256; b++) {
  const keep = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  byteChar.push(keep ? String.fromCharCode(b) : String.fromCharCode(256 + shifted++));
}
const byteIds = byteChar.map((c) => t.token_to_id(c)).filter((id) => id !== undefined);
const vocabIds = Object.values(json.model.vocab);
const addedIds = json.added_tokens.map((a) => a.id);

const out = [];
for (let line = 0; line < Number(countText); line++) {
  const ids = [];
  const length = 1 + pick(40);
  while (ids.length < length) {
    const kind = pick(10);
    if (kind < 6) ids.push(byteIds[pick(byteIds.length)]);
    else if (kind < 9) ids.push(vocabIds[pick(vocabIds.length)]);
    else ids.push(addedIds[pick(addedIds.length)]);
  }
  out.push(JSON.stringify(ids));
}
process.stdout.write(out.join("\n") + "\n");

// The peer of `moira bench tokenize`: Hugging Face's tokenizers.js loading the same model
// directory and encoding the same text, best of N rounds, as one JSON line (the fields of
// `moira bench tokenize --json`). The JSON parse of tokenizer.json is part of the load, as it is
// for Moira. Run by bench/tokenize.sh:
//   NODE_PATH=.deps/npm/node_modules node bench/tokenize_peer.cjs MODEL_DIR TEXT_FILE ROUNDS
"use strict";
const fs = require("fs");
const path = require("path");
const { Tokenizer } = require("@huggingface/tokenizers");

const [dir, textFile, roundsText] = process.argv.slice(2);
const rounds = Number(roundsText || 5);
const text = fs.readFileSync(textFile, "utf8");
let bestLoad = Infinity;
let bestEncode = Infinity;
let tokens = 0;
for (let r = 0; r < rounds; r++) {
  const start = process.hrtime.bigint();
  const t = new Tokenizer(
    JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
    JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")),
  );
  const loaded = process.hrtime.bigint();
  tokens = t.encode(text).ids.length;
  const encoded = process.hrtime.bigint();
  bestLoad = Math.min(bestLoad, Number(loaded - start) / 1e6);
  bestEncode = Math.min(bestEncode, Number(encoded - loaded) / 1e6);
}
process.stdout.write(JSON.stringify({
  bench: "tokenize-peer", peer: "@huggingface/tokenizers", tokens,
  load_ms: Number(bestLoad.toFixed(3)), encode_ms: Number(bestEncode.toFixed(3)),
  tokens_per_s: Math.round(tokens / (bestEncode / 1e3)),
}) + "\n");

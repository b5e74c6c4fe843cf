#!/usr/bin/env bash
# Tokenizer speed, Moira against Hugging Face's tokenizers.js in the same run, on the real
# DeepSeek-V3 tokenizer (make deps puts it in .deps/deepseek-v3) and a text of 10,000+ words made
# from tests/data/tokenizer/corpus.jsonl (every script, code, numbers, emoji), repeated until long
# enough. Prints load and encode times, both ratios, and checks that both gave the same ids.
#   bench/tokenize.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${1:-$root/build}"
rounds="${2:-5}"
model="$root/.deps/deepseek-v3"
export NODE_PATH="$root/.deps/npm/node_modules"
[ -f "$model/tokenizer.json" ] || { echo "bench/tokenize.sh: run make deps first" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The corpus's strings joined by newlines, repeated until the text has 10,000 words.
node -e '
    const fs = require("fs");
    const lines = fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map(JSON.parse);
    let out = [], words = 0;
    for (let i = 0; words < 10000; i = (i + 1) % lines.length) {
        out.push(lines[i]);
        words += lines[i].split(/[ \t\n\r]+/).filter(Boolean).length;
    }
    fs.writeFileSync(process.argv[2], out.join("\n"));' "$root/tests/data/tokenizer/corpus.jsonl" "$work/text.txt"

"$build/moira" bench tokenize --model "$model" --text "$work/text.txt" --iters "$rounds" --json >"$work/moira.json"
node "$root/bench/tokenize_peer.cjs" "$model" "$work/text.txt" "$rounds" >"$work/peer.json"
"$build/moira" tokenize --model "$model" --no-special --json <"$work/text.txt" >"$work/moira_ids.json"
node -e '
    const fs = require("fs");
    const { Tokenizer } = require("@huggingface/tokenizers");
    const [dir, textFile, moiraFile, mFile, pFile] = process.argv.slice(1);
    const t = new Tokenizer(JSON.parse(fs.readFileSync(dir + "/tokenizer.json", "utf8")),
                            JSON.parse(fs.readFileSync(dir + "/tokenizer_config.json", "utf8")));
    const ref = t.encode(fs.readFileSync(textFile, "utf8")).ids;
    const ours = JSON.parse(fs.readFileSync(moiraFile, "utf8")).ids;
    const same = ref.length === ours.length && ref.every((id, i) => id === ours[i]);
    const m = JSON.parse(fs.readFileSync(mFile, "utf8")), p = JSON.parse(fs.readFileSync(pFile, "utf8"));
    const row = (name, a, b) => console.log(`${name.padEnd(8)} ${a.toFixed(2).padStart(10)} ${b.toFixed(2).padStart(10)} ${(b / a).toFixed(2).padStart(8)}x`);
    console.log(`text: ${m.bytes} bytes, ${m.words} words, ${m.tokens} tokens; best of rounds; ids equal: ${same}`);
    console.log(`${"".padEnd(8)} ${"moira ms".padStart(10)} ${"peer ms".padStart(10)} ${"peer/moira".padStart(9)}`);
    row("load", m.load_ms, p.load_ms);
    row("encode", m.encode_ms, p.encode_ms);
    console.log(`moira ${m.tokens_per_s} tokens/s, tokenizers.js ${p.tokens_per_s} tokens/s (Node.js ${process.version})`);
    if (!same) process.exit(1);' "$model" "$work/text.txt" "$work/moira_ids.json" "$work/moira.json" "$work/peer.json"

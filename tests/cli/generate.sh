#!/usr/bin/env bash
# `moira generate` and `moira chat` end to end, on DeepSeek-V3-shaped checkpoints written in the
# Hugging Face layout (two shards and their index, an MTP layer the engine must skip, bf16 and
# fp8 with 128x128 block scales, vocabulary 129280) with the real DeepSeek-V3 tokenizer files:
# - greedy continuations on cpu:0, opencl:0 and npu:0 equal an independent fp64 reference of the
#   whole model (moira-test-reference: ops/reference.c composed without the engine or any device
#   code) at every step whose top-2 gap the device's precision cannot flip;
# - a bf16 latent cache (--cache-dtype bf16) keeps the f32 cache's ids and logits within bf16's
#   limit, and a device without one refuses it;
# - --messages renders the chat template as `moira tokenize --messages` does (that one is held to
#   Hugging Face's Jinja and tokenizers.js by tokenizer_hf.sh);
# - `moira chat` through stdin answers each turn as `generate --messages` answers the same
#   conversation (the second turn reuses the first's cache);
# - bad input (a missing shard, a truncated tokenizer.json, a vocabulary that disagrees with
#   config.json, a prompt longer than the context, models Moira does not implement) is exit 2
#   naming the file, with nothing on stdout.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
source "$(dirname "$0")/lib/expect.bash"
source "$(dirname "$0")/lib/model_refs.bash"
for tool in moira-test-checkpoint moira-test-reference; do
    [ -x "$bin/$tool" ] || { echo "FAIL: $bin/$tool was not built"; exit 1; }
done
steps=16

"$bin/moira-test-checkpoint" --out "$work/bf16" --dtype bf16 --shards 2 --mtp --seed 3 \
    --tokenizer "$tokenizer" >/dev/null || { echo "FAIL: writing the bf16 checkpoint"; exit 1; }
"$bin/moira-test-checkpoint" --out "$work/fp8" --dtype fp8 --shards 2 --seed 3 \
    --tokenizer "$tokenizer" >/dev/null || { echo "FAIL: writing the fp8 checkpoint"; exit 1; }
printf 'The first law of thermodynamics says that' >"$work/prompt.txt"
cat >"$work/messages.json" <<'JSON'
[{"role": "system", "content": "You are terse."},
 {"role": "user", "content": "Name three prime numbers."}]
JSON

# agree NAME MOIRA_LOGITS REFERENCE_JSON REFERENCE_LOGITS LIMIT MIN_STEPS
# - At every step while both chose the same tokens so far, the logits' NMSE against the reference
#   is within the device's limit.
# - The ids are equal up to the first step whose top-2 gap a device within that limit could close
#   (errors of NMSE `limit` spread over the vocabulary are sqrt(limit * sum_sq / vocab) per logit;
#   a gap under 6 of those is where a correct engine may pick the other token), and at least
#   MIN_STEPS steps are compared so.
agree() {
    if python3 - "$2" "$3" "$4" "$5" "$6" >"$work/agree" 2>&1 <<'PY'
import array, json, struct, sys
def read(path):  # safetensors by hand: an 8-byte header length, a JSON header, the data
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header, base, out = json.loads(raw[8:8 + n]), 8 + n, {}
    for name, t in header.items():
        if name == "__metadata__": continue
        begin, end = t["data_offsets"]
        out[name] = (t["shape"], array.array("f" if t["dtype"] == "F32" else "i", raw[base + begin:base + end]))
    return out
got, ref_json, ref = read(sys.argv[1]), json.load(open(sys.argv[2])), read(sys.argv[3])
limit, min_steps = float(sys.argv[4]), int(sys.argv[5])
ids, ref_ids = list(got["ids"][1]), list(ref["ids"][1])
vocab = ref["logits"][0][1]
worst = 0.0
for i in range(min(len(ids), len(ref_ids))):
    a = ref["logits"][1][i * vocab:(i + 1) * vocab]; b = got["logits"][1][i * vocab:(i + 1) * vocab]
    num = sum((x - y) ** 2 for x, y in zip(a, b)); den = sum(x * x for x in a)
    worst = max(worst, num / den)
    if num / den > limit:
        sys.exit("step %d: logits NMSE %.3g above %.3g" % (i, num / den, limit))
    if ids[i] != ref_ids[i]:
        break
compared = 0
for i, rid in enumerate(ref_json["ids"]):
    if ref_json["gaps"][i] <= 6 * (limit * ref_json["sum_sq"][i] / vocab) ** 0.5:
        break
    if i >= len(ids) or ids[i] != rid:
        sys.exit("step %d: moira %s, reference %d (gap %.3g)" % (
            i, ids[i] if i < len(ids) else "nothing", rid, ref_json["gaps"][i]))
    compared += 1
if compared < min(min_steps, len(ref_ids)):
    sys.exit("only %d decidable steps of %d" % (compared, len(ref_ids)))
print("%d of %d steps equal, logits NMSE at most %.2g" % (compared, len(ref_ids), worst))
PY
    then
        passed=$((passed + 1))
        echo "ok: $1 ($(cat "$work/agree"))"
    else
        fail "$1"
        sed 's/^/  | /' "$work/agree"
    fi
}

prompt_ids() { # prompt_ids GENERATE_JSON -> comma-separated ids
    python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["prompt_ids"])))' "$1"
}

# generate_vs_reference NAME MODEL LIMIT MIN_STEPS [moira options...]
generate_vs_reference() {
    local name="$1" model="$2" limit="$3" min_steps="$4"
    shift 4
    rm -f "$work/gen.st" "$work/ref.st"
    expect 0 "$name: generate" -- "$moira" generate --model "$model" --temperature 0 \
        --max-tokens $steps --json --logits-out "$work/gen.st" "$@"
    cp "$work/out" "$work/gen.json"
    [ -s "$work/gen.json" ] || return
    expect 0 "$name: reference" -- "$bin/moira-test-reference" --model "$model" \
        --ids "$(prompt_ids "$work/gen.json")" --max-tokens $steps --json \
        --logits-out "$work/ref.st"
    cp "$work/out" "$work/ref.json"
    agree "$name" "$work/gen.st" "$work/ref.json" "$work/ref.st" "$limit" "$min_steps"
}

generate_vs_reference "bf16 on cpu:0" "$work/bf16" 1e-6 8 --prompt-file "$work/prompt.txt"
generate_vs_reference "fp8 on cpu:0" "$work/fp8" 1e-6 8 --prompt-file "$work/prompt.txt"
generate_vs_reference "fp8 on cpu:0, --messages" "$work/fp8" 1e-6 8 --messages "$work/messages.json"
generate_vs_reference "bf16 on cpu:0, --messages" "$work/bf16" 1e-6 8 --messages "$work/messages.json"
expect 0 "tokenize --messages" -- "$moira" tokenize --model "$work/bf16" \
    --messages "$work/messages.json" --json
python3 -c 'import json,sys; a=json.load(open(sys.argv[1]))["prompt_ids"]; b=json.load(open(sys.argv[2]))["ids"]; sys.exit(a!=b)' \
    "$work/gen.json" "$work/out" && passed=$((passed + 1)) ||
    fail "generate --messages prompt ids differ from tokenize --messages"
# A bf16 latent cache (--cache-dtype bf16, decode attention at bf16's precision): against the
# fp64 reference at bf16's limit, and the same ids as with the f32 cache, every step's logits
# within bf16's limit of the f32 cache's (moira compare holds the ids exact).
generate_vs_reference "bf16 on cpu:0, bf16 latent cache" "$work/bf16" 2e-3 0 \
    --prompt-file "$work/prompt.txt" --cache-dtype bf16
for cache in f32 bf16; do
    expect 0 "generate with a $cache latent cache" -- "$moira" generate --model "$work/bf16" \
        --temperature 0 --max-tokens $steps --json --prompt-file "$work/prompt.txt" \
        --cache-dtype $cache --logits-out "$work/cache_$cache.st"
done
expect 0 "a bf16 cache's logits within bf16's limit of an f32 cache's" -- \
    "$moira" compare "$work/cache_f32.st" "$work/cache_bf16.st" --limit 2e-3
if "$moira" devices 2>/dev/null | grep -q '^opencl:0'; then
    generate_vs_reference "bf16 on opencl:0" "$work/bf16" 1e-6 8 --prompt-file "$work/prompt.txt" \
        --backend opencl:0
fi
generate_vs_reference "bf16 on npu:0 (bf16 cube)" "$work/bf16" 2e-3 0 \
    --prompt-file "$work/prompt.txt" --backend npu:0
# A mixed plan: routed experts over CPU memory, opencl:0 (expert 0 twice) and npu:0, attention
# and its caches on cpu:0; held to the npu's bf16 limit, the least precise device in it.
if "$moira" devices 2>/dev/null | grep -q '^opencl:0'; then
    cat >"$work/mixed.yaml" <<'YAML'
moira_plan: 1
topology: exec-box
model: bf16
experts: 16
expert_bytes: 12288
layers:
  - layer: 1
    devices:
      box/numa0: {experts: [0, 1, 2, 3, 4, 5]}
      gpu0: {experts: [6, 7, 8, 9, 10, 11, 0]}
      npu0: {experts: [12, 13, 14, 15]}
  - layer: 2
    devices:
      box/numa0: {experts: [8, 9, 10, 11, 12, 13, 14, 15]}
      gpu0: {experts: [0, 1, 2, 3]}
      npu0: {experts: [4, 5, 6, 7]}
YAML
    generate_vs_reference "bf16, a plan over cpu, opencl:0 and npu:0" "$work/bf16" 2e-3 0 \
        --prompt-file "$work/prompt.txt" --topology "$data/exec/topology.yaml" \
        --plan "$work/mixed.yaml"
fi

# Plain text streams to stdout and equals the JSON's text.
expect 0 "generate streams" -- "$moira" generate --model "$work/bf16" --temperature 0 \
    --max-tokens 8 --prompt "Hello"
cp "$work/out" "$work/streamed"
expect 0 "generate --json" -- "$moira" generate --model "$work/bf16" --temperature 0 \
    --max-tokens 8 --prompt "Hello" --json
python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["text"]; s=open(sys.argv[2],encoding="utf-8").read(); sys.exit(s != t + "\n")' \
    "$work/out" "$work/streamed" && passed=$((passed + 1)) ||
    fail "streamed text differs from --json text"
# A stop string ends the text just before it, finish_reason stop; streamed text stops there too.
expect 0 "generate 16 tokens" -- "$moira" generate --model "$work/bf16" --temperature 0 \
    --max-tokens 16 --prompt "Hello" --json
stop=$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["text"]; print(t[len(t)//2:len(t)//2+3])' "$work/out")
cp "$work/out" "$work/full.json"
expect 0 "generate --stop" -- "$moira" generate --model "$work/bf16" --temperature 0 \
    --max-tokens 16 --prompt "Hello" --json --stop "$stop"
python3 -c '
import json, sys
full = json.load(open(sys.argv[1]))["text"]; got = json.load(open(sys.argv[2])); stop = sys.argv[3]
want = full[:full.index(stop)]
sys.exit(0 if got["text"] == want and got["finish_reason"] == "stop" else "got %r (%s), want %r" % (got["text"], got["finish_reason"], want))' \
    "$work/full.json" "$work/out" "$stop" && passed=$((passed + 1)) || fail "--stop \"$stop\""
expect 0 "generate --stop, streamed" -- "$moira" generate --model "$work/bf16" --temperature 0 \
    --max-tokens 16 --prompt "Hello" --stop "$stop"
python3 -c '
import json, sys
full = json.load(open(sys.argv[1]))["text"]; got = open(sys.argv[2], encoding="utf-8").read(); stop = sys.argv[3]
sys.exit(0 if got == full[:full.index(stop)] + "\n" else "streamed %r" % got)' \
    "$work/full.json" "$work/out" "$stop" && passed=$((passed + 1)) || fail "streamed --stop"

# The embedding has 129280 rows, the tokenizer 128815 tokens (as DeepSeek-V3 ships them): a
# generated padding id has no text, as Hugging Face decodes it, and generation goes on.
expect 0 "generate past a padding id" -- "$moira" generate --model "$work/bf16" --temperature 0 \
    --max-tokens 200 --prompt "hi" --json
python3 -c 'import json,sys; ids=json.load(open(sys.argv[1]))["ids"]; sys.exit(not (len(ids) == 200 and any(i >= 128815 for i in ids)))' \
    "$work/out" && passed=$((passed + 1)) || fail "200 tokens through a padding id"

# Sampling is reproducible from its seed.
for run in 1 2; do
    "$moira" generate --model "$work/bf16" --temperature 0.8 --top-p 0.9 --top-k 40 --seed 11 \
        --max-tokens 8 --prompt "Hello" --json >"$work/sampled$run" 2>/dev/null
done
python3 -c 'import json,sys; a,b=[json.load(open(p))["ids"] for p in sys.argv[1:]]; sys.exit(a!=b or len(a)!=8)' \
    "$work/sampled1" "$work/sampled2" && passed=$((passed + 1)) ||
    fail "the same seed gave different tokens"

# Chat through stdin: each turn answers as generate --messages does for that conversation.
printf 'Name three prime numbers.\nAnd two more?\n/exit\n' |
    "$moira" chat --model "$work/bf16" --system "You are terse." --temperature 0 \
        --max-tokens 6 >"$work/chat" 2>"$work/chat.err"
[ $? -eq 0 ] && passed=$((passed + 1)) || fail "chat exit status"
python3 - "$moira" "$work" <<'PY' >"$work/chat.check" 2>&1 && passed=$((passed + 1)) || { fail "chat turns differ from generate --messages"; sed 's/^/  | /' "$work/chat.check"; }
import json, subprocess, sys
moira, work = sys.argv[1], sys.argv[2]
replies = open(work + "/chat", encoding="utf-8").read().split("\n")
conv = [{"role": "system", "content": "You are terse."}]
for turn, user in enumerate(["Name three prime numbers.", "And two more?"]):
    conv.append({"role": "user", "content": user})
    path = "%s/conv%d.json" % (work, turn)
    json.dump(conv, open(path, "w"))
    out = subprocess.run([moira, "generate", "--model", work + "/bf16", "--temperature", "0",
                          "--max-tokens", "6", "--messages", path, "--json"],
                         capture_output=True, check=True, text=True).stdout
    text = json.loads(out)["text"]
    if replies[turn] != text:
        sys.exit("turn %d: chat %r, generate %r" % (turn, replies[turn], text))
    conv.append({"role": "assistant", "content": text})
print("both turns equal")
PY

# moira run takes input_ids too: the checkpoint's embedding rows (widened from bf16 here by hand)
# fed as hidden_states give the same output, and run's own check holds every layer to the fp64
# reference.
python3 - "$work" <<'PY'
import json, struct, sys
work = sys.argv[1]
index = json.load(open(work + "/bf16/model.safetensors.index.json"))
shard = work + "/bf16/" + index["weight_map"]["model.embed_tokens.weight"]
raw = open(shard, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
meta = header["model.embed_tokens.weight"]
assert meta["dtype"] == "BF16"
d = meta["shape"][1]
ids = [0, 19923, 14, 2058, 7]
rows = []
for i in ids:
    start = 8 + n + meta["data_offsets"][0] + i * d * 2
    halves = struct.unpack("<%dH" % d, raw[start:start + 2 * d])
    rows += [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
def write(path, name, dtype, shape, data):
    h = json.dumps({name: {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}).encode()
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)
write(work + "/ids.safetensors", "input_ids", "I64", [len(ids)], struct.pack("<%dq" % len(ids), *ids))
write(work + "/embedded.safetensors", "hidden_states", "F32", [len(ids), d], struct.pack("<%df" % len(rows), *rows))
PY
expect 0 "run --inputs input_ids" -- "$moira" run --model "$work/bf16" --weights "$work/bf16" \
    --backend cpu:0 --inputs "$work/ids.safetensors" -o "$work/from_ids.safetensors"
check "run --inputs input_ids agrees with the reference" "agreed" "$work/out"
expect 0 "run --inputs hidden_states" -- "$moira" run --model "$work/bf16" --weights "$work/bf16" \
    --backend cpu:0 --inputs "$work/embedded.safetensors" -o "$work/from_rows.safetensors"
expect 0 "input_ids and their embedding rows give the same output" -- \
    "$moira" compare "$work/from_rows.safetensors" "$work/from_ids.safetensors" --limit 0
expect 2 "input_ids without --weights" -- "$moira" run --model "$work/bf16" \
    --inputs "$work/ids.safetensors" -o "$work/never.safetensors"
[ ! -e "$work/never.safetensors" ] && passed=$((passed + 1)) || fail "an output was written"

# Bad input: exit 2, the file named, nothing on stdout.
bad() { # bad DESCRIPTION PATTERN -- command...
    local what="$1" pattern="$2"
    shift 2
    expect 2 "$what" "$@"
    expect_stderr "$pattern" "$what"
    [ ! -s "$work/out" ] && passed=$((passed + 1)) || fail "$what: printed to stdout"
}
copy() { rm -rf "$work/$2"; cp -r "$work/$1" "$work/$2"; }
copy bf16 noshard
rm "$work/noshard/model-00002-of-00002.safetensors"
bad "missing shard" "model-00002-of-00002" -- "$moira" generate --model "$work/noshard" --prompt hi
copy bf16 badtok
head -c 100000 "$work/bf16/tokenizer.json" >"$work/badtok/tokenizer.json"
bad "truncated tokenizer.json" "tokenizer.json" -- "$moira" generate --model "$work/badtok" --prompt hi
copy bf16 badvocab
sed -i 's/"vocab_size": 129280/"vocab_size": 129281/' "$work/badvocab/config.json"
bad "vocabulary disagreeing with config.json" "vocab_size" -- \
    "$moira" generate --model "$work/badvocab" --prompt hi
bad "prompt longer than the context" "context" -- \
    "$moira" generate --model "$work/bf16" --ctx 8 --prompt-file "$work/prompt.txt"
for type in deepseek_v32 deepseek_v4 qwen3_moe; do
    copy bf16 "arch_$type"
    sed -i "s/\"model_type\": \"deepseek_v3\"/\"model_type\": \"$type\"/" "$work/arch_$type/config.json"
    bad "model_type $type" "config.json.*$type" -- \
        "$moira" generate --model "$work/arch_$type" --prompt hi
done
bad "not a model directory" "not a model directory" -- \
    "$moira" generate --model "$work/nothing-here" --prompt hi
expect 2 "unknown option" -- "$moira" generate --model "$work/bf16" --frobnicate
expect 2 "bad temperature" -- "$moira" generate --model "$work/bf16" --temperature -1
bad "an unknown cache dtype" "cache-dtype" -- \
    "$moira" generate --model "$work/bf16" --cache-dtype f16 --prompt hi
bad "a bf16 cache on a device that keeps f32 caches" "npu:0 keeps no BF16 latent cache" -- \
    "$moira" generate --model "$work/bf16" --cache-dtype bf16 --backend npu:0 --prompt hi

echo "generate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# `moira quantize` end to end: random DeepSeek-V3-shaped checkpoints (bf16, and fp8 in two shards
# with an MTP layer) quantised to mxfp4 and int8, the experts alone or with the dense projections, are read back by Moira and generate greedily the
# tokens an independent fp64 reference (moira-test-reference: ops/reference.c without the engine
# or any device code) computes on the dequantised weights, at every step whose top-2 gap the
# device's precision cannot flip. Bad input is exit 2 naming the file, with no
# output directory left behind.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
source "$(dirname "$0")/lib/expect.bash"
source "$(dirname "$0")/lib/model_refs.bash"
"$bin/moira-test-checkpoint" --out "$work/bf16" --dtype bf16 --seed 3 --tokenizer "$tokenizer" \
    >/dev/null || { echo "FAIL: writing the bf16 checkpoint"; exit 1; }
"$bin/moira-test-checkpoint" --out "$work/fp8" --dtype fp8 --shards 2 --mtp --seed 3 \
    --tokenizer "$tokenizer" >/dev/null || { echo "FAIL: writing the fp8 checkpoint"; exit 1; }
printf 'The first law of thermodynamics says that' >"$work/prompt.txt"
# fp8 as mxfp4 with projections has no decidable first step on that prompt; this one has seven.
printf 'Once upon a time' >"$work/prompt2.txt"

# same_tokens NAME MODEL [OPTIONS]: greedy ids equal the reference's up to the first step whose top-2 gap
# logit errors of NMSE 1e-4 could close (at least 4 steps compared). 1e-4, not int8's 5e-3: at
# that limit no step of a random model is decidable, and the cpu's quantised experts compute
# well inside 1e-4 (test_conformance holds them to the NMSE).
same_tokens() { # [prompt=FILE] same_tokens NAME MODEL [generate options...]
    expect 0 "$1: generate" -- "$moira" generate --model "$2" --temperature 0 --max-tokens 12 \
        --json --prompt-file "${prompt:-$work/prompt.txt}" "${@:3}"
    cp "$work/out" "$work/gen.json"
    local ids
    ids=$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["prompt_ids"])))' "$work/gen.json") || return
    expect 0 "$1: reference" -- "$bin/moira-test-reference" --model "$2" --ids "$ids" \
        --max-tokens 12 --json
    if python3 - "$work/gen.json" "$work/out" >"$work/agree" 2>&1 <<'PY'
import json, sys
got, ref = json.load(open(sys.argv[1]))["ids"], json.load(open(sys.argv[2]))
vocab, compared = 129280, 0
for i, rid in enumerate(ref["ids"]):
    if ref["gaps"][i] <= 6 * (1e-4 * ref["sum_sq"][i] / vocab) ** 0.5:
        break
    if i >= len(got) or got[i] != rid:
        sys.exit("step %d: moira %s, reference %d" % (i, got[i] if i < len(got) else "-", rid))
    compared += 1
if compared < 4:
    sys.exit("only %d decidable steps" % compared)
print("%d of %d steps equal" % (compared, len(ref["ids"])))
PY
    then
        passed=$((passed + 1))
        echo "ok: $1 ($(cat "$work/agree"))"
    else
        fail "$1"
        sed 's/^/  | /' "$work/agree"
    fi
}

for src in bf16 fp8; do
    for dtype in mxfp4 int8; do
        out="$work/$src-$dtype"
        expect 0 "quantize $src to $dtype" -- "$moira" quantize --model "$work/$src" \
            --dtype $dtype --experts-only -o "$out"
        check "$src to $dtype: per-layer error printed" "layer +1: +[0-9]+ matrices +weight NMSE" \
            "$work/out"
        check "$src to $dtype: quantization_config" "\"quant_method\": \"$dtype\"" \
            "$out/config.json"
        [ -f "$out/tokenizer.json" ] && [ -f "$out/tokenizer_config.json" ] &&
            passed=$((passed + 1)) || fail "$src to $dtype: tokenizer files not copied"
        same_tokens "$src as $dtype on cpu:0" "$out"
    done
done
# Without --experts-only the dense projections are quantised too (attention but kv_b_proj, the
# shared experts, layer 0's dense MLP); the router, norms, embeddings and lm_head are not.
for src in bf16 fp8; do
    for dtype in mxfp4 int8; do
        out="$work/$src-$dtype-all"
        expect 0 "quantize $src to $dtype, projections too" -- "$moira" quantize \
            --model "$work/$src" --dtype $dtype -o "$out"
        check "$src to $dtype: projections counted" "and [1-9][0-9]* projection matrices" \
            "$work/out"
        prompt=$work/prompt$([ $src-$dtype = fp8-mxfp4 ] && echo 2).txt \
            same_tokens "$src as $dtype with projections on cpu:0" "$out"
    done
done
# q_b_proj's 48 inputs are no MXFP4 rows: it is kept and said so.
expect 0 "quantize bf16 to mxfp4 again" -- "$moira" quantize --model "$work/bf16" --dtype mxfp4 \
    -o "$work/bf16-mxfp4-again"
check "a projection MXFP4 cannot store is kept" "3 projection\(s\) kept as they were" "$work/out"
# OpenCL reads both formats in its grouped FFN kernels (f32 on the dequantised weights); the npu
# expands MXFP4 to bf16 on its way into the Cube and runs INT8 in the Cube's int8 mode on
# activations quantised per token (both within the 1e-4 rule here).
if "$moira" devices 2>/dev/null | grep -q '^opencl:0'; then
    same_tokens "bf16 as mxfp4 on opencl:0" "$work/bf16-mxfp4" --backend opencl:0
    same_tokens "bf16 as int8 on opencl:0" "$work/bf16-int8" --backend opencl:0
fi
same_tokens "bf16 as mxfp4 on npu:0" "$work/bf16-mxfp4" --backend npu:0
# Through a placement (the executor uploads each target's experts as stored).
same_tokens "bf16 as mxfp4 placed on the local topology" "$work/bf16-mxfp4" \
    --topology "$root/configs/topologies/local-cpu.yaml"
same_tokens "bf16 as int8 on npu:0" "$work/bf16-int8" --backend npu:0
# Quantised projections: opencl decodes them in f32; the npu expands MXFP4 to bf16 and runs INT8
# in the Cube's int8 mode on activations quantised per token (W8A8).
if "$moira" devices 2>/dev/null | grep -q '^opencl:0'; then
    same_tokens "bf16 as mxfp4 with projections on opencl:0" "$work/bf16-mxfp4-all" \
        --backend opencl:0
    same_tokens "fp8 as int8 with projections on opencl:0" "$work/fp8-int8-all" --backend opencl:0
fi
same_tokens "bf16 as int8 with projections on npu:0" "$work/bf16-int8-all" --backend npu:0
prompt=$work/prompt2.txt same_tokens "fp8 as mxfp4 with projections on npu:0" \
    "$work/fp8-mxfp4-all" --backend npu:0

# The stored layout is DeepSeek-V4's: U8 [out, in/2] with F8_E8M0 [out, in/32] scales; int8 is
# I8 with F32 [out] scales.
python3 - "$work/bf16-mxfp4/model.safetensors" "$work/bf16-int8/model.safetensors" <<'PY' &&
import json, struct, sys
def header(path):
    raw = open(path, "rb").read(1 << 20)
    return json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
mx, i8 = header(sys.argv[1]), header(sys.argv[2])
w, s = mx["model.layers.1.mlp.experts.0.gate_proj.weight"], mx["model.layers.1.mlp.experts.0.gate_proj.scale"]
assert w["dtype"] == "U8" and s["dtype"] == "F8_E8M0", (w, s)
assert s["shape"] == [w["shape"][0], w["shape"][1] * 2 // 32], (w, s)
w, s = i8["model.layers.1.mlp.experts.0.down_proj.weight"], i8["model.layers.1.mlp.experts.0.down_proj.weight_scale"]
assert w["dtype"] == "I8" and s["dtype"] == "F32" and s["shape"] == [w["shape"][0]], (w, s)
assert "model.layers.1.mlp.shared_experts.gate_proj.weight" in mx
assert mx["model.layers.1.mlp.shared_experts.gate_proj.weight"]["dtype"] == "BF16"
PY
    passed=$((passed + 1)) || fail "quantised tensors' stored layout"
# With projections: shared experts, dense MLP and attention in the format (MXFP4's q_b_proj of 48
# inputs kept); the router, kv_b_proj, norms, embeddings and lm_head as they were.
python3 - "$work/bf16-mxfp4-all/model.safetensors" "$work/fp8-int8-all" <<'PY' &&
import glob, json, struct, sys
def header(path):
    raw = open(path, "rb").read(1 << 20)
    return json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
mx = header(sys.argv[1])
i8 = {}
for f in glob.glob(sys.argv[2] + "/*.safetensors"):
    i8.update(header(f))
for name in ["model.layers.1.mlp.shared_experts.down_proj", "model.layers.0.mlp.gate_proj",
             "model.layers.1.self_attn.o_proj", "model.layers.1.self_attn.kv_a_proj_with_mqa"]:
    assert mx[name + ".weight"]["dtype"] == "U8" and name + ".scale" in mx, name
    assert i8[name + ".weight"]["dtype"] == "I8" and name + ".weight_scale" in i8, name
    assert name + ".weight_scale_inv" not in i8, name
for name in ["model.layers.1.mlp.gate.weight", "model.layers.1.self_attn.kv_b_proj.weight",
             "model.layers.1.self_attn.q_b_proj.weight", "model.embed_tokens.weight",
             "lm_head.weight", "model.norm.weight"]:
    assert mx[name]["dtype"] == "BF16", (name, mx[name])
assert i8["model.layers.1.self_attn.kv_b_proj.weight"]["dtype"] == "F8_E4M3"
assert i8["model.layers.1.self_attn.q_b_proj.weight"]["dtype"] == "I8"
PY
    passed=$((passed + 1)) || fail "quantised tensors' stored layout, projections too"

# Past --max-shard-bytes (4 GiB unless given) the output is Hugging Face shards with their index,
# each written as its tensors are quantised; it reads back and generates like one file.
expect 0 "quantize fp8 to int8 in shards" -- "$moira" quantize --model "$work/fp8" --dtype int8 \
    --max-shard-bytes 10000000 -o "$work/fp8-int8-shards"
shards=$(ls "$work/fp8-int8-shards" | grep -c '^model-0000[0-9]-of-0000[0-9]\.safetensors$')
[ "$shards" -ge 3 ] && [ -f "$work/fp8-int8-shards/model.safetensors.index.json" ] &&
    [ ! -e "$work/fp8-int8-shards/model.safetensors" ] && passed=$((passed + 1)) ||
    fail "sharded output: $shards shards, index $(ls "$work/fp8-int8-shards")"
same_tokens "fp8 as int8 in shards on cpu:0" "$work/fp8-int8-shards"
expect 2 "--max-shard-bytes 0" -- "$moira" quantize --model "$work/bf16" --dtype int8 \
    --max-shard-bytes 0 -o "$work/x"

# SIGTERM (and Ctrl-C, the same handler) while shards are written: the OUTDIR.tmp.* folder goes
# with everything in it, and OUTDIR never appears. 1 MB shards of a 257 MB checkpoint, each
# synced, take long enough to be caught after the first; a run that finishes first is retried.
"$bin/moira-test-checkpoint" --out "$work/big" --dtype bf16 --hidden 512 --seed 1 >/dev/null
stopped=
for attempt in 1 2 3 4 5; do
    "$moira" quantize --model "$work/big" --dtype mxfp4 --max-shard-bytes 1000000 \
        -o "$work/int" >/dev/null 2>&1 &
    pid=$!
    for i in $(seq 400); do
        compgen -G "$work/int.tmp.*/model-*" >/dev/null && break
        sleep 0.005
    done
    kill -TERM $pid 2>/dev/null
    wait $pid
    rc=$?
    [ $rc -eq 143 ] && stopped=1 && break
    rm -rf "$work/int"
done
[ -n "$stopped" ] && [ ! -e "$work/int" ] && ! compgen -G "$work/int.tmp.*" >/dev/null &&
    passed=$((passed + 1)) ||
    fail "SIGTERM while writing shards (stopped: ${stopped:-never}): $(ls -d "$work"/int* 2>&1)"
rm -rf "$work/big"

# Bad usage and input: exit 2, the file or option named, no output directory left.
expect 2 "--dtype int4" -- "$moira" quantize --model "$work/bf16" --dtype int4 --experts-only \
    -o "$work/x"
expect_stderr "mxfp4 or int8" "--dtype int4 names the choices"
expect 2 "into a directory that is not empty" -- "$moira" quantize --model "$work/bf16" \
    --dtype int8 --experts-only -o "$work/bf16-mxfp4"
expect 2 "a quantised checkpoint as the source" -- "$moira" quantize --model "$work/bf16-int8" \
    --dtype mxfp4 --experts-only -o "$work/x"
expect_stderr "bf16-int8.*do(es)? not quantise from" "the source is named"
"$bin/moira-test-checkpoint" --out "$work/d48" --dtype bf16 --hidden 48 --seed 1 >/dev/null
expect 2 "mxfp4 rows of 48 inputs" -- "$moira" quantize --model "$work/d48" --dtype mxfp4 \
    --experts-only -o "$work/x"
expect_stderr "d48.*multiple of 32" "the tensor and file are named"
[ ! -e "$work/x" ] && ! ls -d "$work"/x.tmp.* >/dev/null 2>&1 && passed=$((passed + 1)) ||
    fail "a failed quantize left an output behind"
# A hostile quantised checkpoint: one expert's scales transposed (same bytes, wrong shape), and
# a quantization_config Moira does not read.
cp -r "$work/bf16-mxfp4" "$work/bad"
python3 - "$work/bad/model.safetensors" <<'PY'
import json, struct, sys
raw = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
s = h["model.layers.1.mlp.experts.0.up_proj.scale"]
s["shape"] = s["shape"][::-1]
text = json.dumps(h, separators=(",", ":")).encode()
text += b" " * (n - len(text))
assert len(text) == n
open(sys.argv[1], "wb").write(raw[:8] + text + raw[8 + n:])
PY
expect 2 "scales of the wrong shape" -- "$moira" generate --model "$work/bad" --max-tokens 1 \
    --prompt "x"
expect_stderr "bad/model.safetensors.*up_proj.scale.*do not match" "the file and tensor are named"
[ -s "$work/out" ] && fail "scales of the wrong shape: output on stdout" || passed=$((passed + 1))
cp -r "$work/bf16-int8" "$work/awq"
sed -i 's/"quant_method": "int8"/"quant_method": "awq"/' "$work/awq/config.json"
expect 2 "a quantization_config Moira does not read" -- "$moira" generate --model "$work/awq" \
    --max-tokens 1 --prompt "x"
expect_stderr "awq/config.json:[0-9]+:[0-9]+: .*awq" "config.json named with line and column"

echo "quantize: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

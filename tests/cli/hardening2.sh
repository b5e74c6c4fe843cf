#!/usr/bin/env bash
# Regression checks of issue 20 (hardening, round 2) that are answers rather than refusals (the
# refusals are in tests/data/hostile/MANIFEST): each failed on the main before the fix.
# - a config.json re-saved by transformers, with rope_scaling under both `type` and `rope_type`,
#   loads (it was refused as a duplicate key; two spellings that disagree are still refused);
# - rms_norm_eps 1e-320, a subnormal number, loads (it was refused as not finite);
# - a model without MoE layers can be planned and run;
# - a --json plan whose names hold U+2028 reads back;
# - a safetensors file with an unused F64 or BOOL tensor loads;
# - MOIRA_* variables with garbage values are reported once;
# - an index naming more shards than the process may map is refused with the reason;
# - the gate's capacity limit is one function for devices and reference (a run disagreed with
#   itself at capacity_factor 1.00000005);
# - `moira check` with an empty --backends or --ops list is a usage error, not a pass;
# - the plan picture escapes names in <title> elements (a&b<c> made invalid XML);
# - a FIFO where an input file is expected (--inputs, --weights, a checkpoint index, a model
#   config, a topology) is refused at once instead of hanging in open(2) for ever.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
source "$(dirname "$0")/lib/expect.bash"
hardening="$data/hardening"

expect 0 "config with rope_scaling type and rope_type agreeing" -- \
    "$moira" plan --model "$hardening/config-rope-type-both.json"

expect 0 "rms_norm_eps 1e-320 (a subnormal) loads" -- \
    "$moira" plan --model "$hardening/config-eps-subnormal.yaml"

# capacity_factor 1.00000005 at T*k/E = 1: the reference held a double capacity (2), the devices an
# f32 one (1), and the run reported its own cpu device DISAGREED.
expect 0 "run with capacity_factor 1.00000005 at T*k/E = 1 agrees" -- "$moira" run \
    --model "$hardening/config-capacity-near-one.yaml" --backend cpu:0 --tokens 8

# A model whose every layer is dense: planned (no layers), checked, and run from its plan and on
# one device. All three were refused.
dense="$hardening/config-all-dense.yaml"
expect 0 "plan an all-dense model" -- "$moira" plan --model "$dense" -o "$work/dense-plan.yaml"
expect 0 "check its plan" -- "$moira" plan --model "$dense" --check "$work/dense-plan.yaml"
expect 0 "run it from its plan" -- "$moira" run --model "$dense" --plan "$work/dense-plan.yaml"
expect 0 "run it on cpu:0" -- "$moira" run --model "$dense" --backend cpu:0
expect 2 "its plan does not fit a model with MoE layers" -- "$moira" run \
    --plan "$work/dense-plan.yaml"

# A --json plan naming a device whose name holds U+2028 reads back (libyaml took the raw character
# for a line break; JSON writers now escape it).
u2028="$hardening/topology-u2028-name.yaml"
expect 0 "plan --json with a U+2028 name" -- "$moira" plan --topology "$u2028" \
    --model "$placement/eplb-model.yaml" --json -o "$work/u2028.json"
expect 0 "that plan reads back" -- "$moira" plan --topology "$u2028" \
    --model "$placement/eplb-model.yaml" --check "$work/u2028.json"

# Unused tensors of dtypes Moira does not compute with (F64, BOOL) no longer make a file
# unreadable; the gate reads its own tensors from the same file.
expect 0 "op gate with unused F64 and BOOL tensors beside the inputs" -- "$moira" op gate \
    --model "$data/golden/gate_v3.json" --inputs "$hardening/inputs-with-unused-f64.safetensors" \
    -o "$work/gate.safetensors"

# MOIRA_* variables with values they do not take are reported (once), not silently ignored.
expect 0 "MOIRA_CPU_THREADS=abc" -- env MOIRA_CPU_THREADS=abc "$moira" devices
expect_stderr "MOIRA_CPU_THREADS=abc is not an integer in \[1, 1024\]" "MOIRA_CPU_THREADS=abc"
expect 0 "MOIRA_CPU_ISA=sse9000" -- env MOIRA_CPU_ISA=sse9000 "$moira" run --backend cpu:0 \
    --tokens 4 --iters 1
expect_stderr "MOIRA_CPU_ISA=sse9000 is not one of portable, avx2, avx512, avx512_bf16" \
    "MOIRA_CPU_ISA=sse9000"
[ "$(grep -c 'MOIRA_CPU_ISA=sse9000' "$work/err")" -eq 1 ] && passed=$((passed + 1)) ||
    fail "MOIRA_CPU_ISA warned more than once"

# A checkpoint index naming more shards than the process may map is refused up front (70000
# shards exhausted the mappings); the shard files need not exist for the refusal.
max_maps=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 65530)
if [ "$max_maps" -le 400000 ]; then
    many=$((max_maps / 2 + 1))
    mkdir "$work/many"
    awk -v n="$many" 'BEGIN { printf "{\"metadata\": {}, \"weight_map\": {"
        for (i = 0; i < n; i++) printf "%s\"t%d\": \"s%d.safetensors\"", i ? ", " : "", i, i
        print "}}" }' >"$work/many/model.safetensors.index.json"
    expect 2 "an index of $many shards" -- "$moira" op gate --model "$data/golden/gate_v3.json" \
        --inputs "$data/golden/gate_v3.inputs.safetensors" --weights "$work/many" \
        -o "$work/out.safetensors"
    expect_stderr "names $many shards; Moira maps every shard" "an index of $many shards"
fi

expect 2 "check --backends ''" -- "$moira" check --backends ''
expect_stderr "must name at least one device" "check --backends ''"
expect 2 "check --ops ','" -- "$moira" check --ops ','
expect_stderr "must name at least one op" "check --ops ','"

expect 0 "plan --svg with a device named a&b<c>" -- "$moira" plan \
    --topology "$hardening/topology-xml-name.yaml" --model "$placement/eplb-model.yaml" \
    -o "$work/plan.yaml" --svg "$work/plan.svg"
check "the name is escaped in the picture" 'a&amp;b&lt;c&gt;' "$work/plan.svg"
if grep -q 'a&b<c>' "$work/plan.svg"; then
    failed=$((failed + 1))
    echo "FAIL: the picture holds the raw name a&b<c>"
else
    passed=$((passed + 1))
fi
if command -v xmllint >/dev/null; then
    expect 0 "the picture is well-formed XML" -- xmllint --noout "$work/plan.svg"
fi

# FIFOs that nobody writes to: every reader must give up at once (timeout 20 reports 124).
mkfifo "$work/fifo.safetensors" "$work/fifo.yaml"
mkdir "$work/ckpt"
mkfifo "$work/ckpt/model.safetensors.index.json"
golden="$data/golden"
expect 2 "--inputs FIFO" -- timeout 20 "$moira" op gate --model "$golden/gate_v3.json" \
    --inputs "$work/fifo.safetensors" -o "$work/out.safetensors"
expect_stderr "not a regular file" "--inputs FIFO"
expect 2 "--weights FIFO" -- timeout 20 "$moira" op gate --model "$golden/gate_v3.json" \
    --inputs "$golden/gate_v3.inputs.safetensors" --weights "$work/fifo.safetensors" \
    -o "$work/out.safetensors"
expect 2 "index FIFO" -- timeout 20 "$moira" op gate --model "$golden/gate_v3.json" \
    --inputs "$golden/gate_v3.inputs.safetensors" --weights "$work/ckpt" -o "$work/out.safetensors"
expect 2 "model config FIFO" -- timeout 20 "$moira" plan --model "$work/fifo.yaml"
expect 2 "topology FIFO" -- timeout 20 "$moira" plan --topology "$work/fifo.yaml" \
    --model "$placement/eplb-model.yaml"
[ ! -e "$work/out.safetensors" ] && passed=$((passed + 1)) || fail "an output was written"

echo "hardening2: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

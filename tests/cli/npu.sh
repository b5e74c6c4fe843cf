#!/usr/bin/env bash
# The npu backend as a user meets it: `moira devices --json` describes its DaVinci shape and
# modelled peaks, `moira op --verbose` prints each kernel's modelled device time, `moira run`
# sums it, MOIRA_NPU_DEVICES shapes the devices and a malformed value says what it expects.
set -u
moira="$1"
data="$2"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/lib/expect.bash"

run() { # run DESCRIPTION -- command...: must exit 0
    local what="$1"
    shift 2
    if "$@" >"$work/out" 2>"$work/err"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $what: exit $?"
        sed 's/^/  | /' "$work/err" | head -5
    fi
}

golden="$data/golden"
run "devices --json" -- "$moira" devices --json
check "npu device listed" '"name": "npu:0", "backend": "npu", "kind": "npu"' "$work/out"
check "AI cores" '"ai_cores": 24' "$work/out"
check "buffer sizes" '"l1_bytes": 524288, "l0a_bytes": 65536, "l0b_bytes": 65536, "l0c_bytes": 131072, "ub_bytes": 196608' "$work/out"
check "modelled peak" '"peak_cube_tflops": 353.9' "$work/out"
check "bf16 precision" '"compute_precision": "BF16"' "$work/out"

run "op moe --verbose" -- "$moira" op moe --model "$golden/moe_v3.json" \
    --inputs "$golden/moe_v3.inputs.safetensors" --backend npu:0 --verbose -o "$work/moe.safetensors"
for kernel in gate moe_dispatch moe_ffn moe_combine swiglu; do
    check "modelled time of $kernel" "npu:0: $kernel: modelled [0-9.]+ us \(.*-bound, [0-9]+ cores\)" "$work/err"
done
check "cube counts" "moe_ffn: .* [1-9][0-9]* cube fractals" "$work/err"

run "run on npu:0" -- "$moira" run --backend npu:0 --tokens 4 --iters 1
check "run sums modelled time" "npu:0 cost model: [0-9.]+ ms device time per batch" "$work/out"
check "run agrees" "-> agreed" "$work/out"

# The emulator is honest (issue 15): its memory is host memory, and plans for this machine leave
# it out unless asked for (--with-emulated or MOIRA_NPU_DEVICES); it used to be costed as a real
# 910B (64 GiB at 1600 GB/s) and take 93 of the default model's 96 experts, 4-9x slower than cpu:0.
"$moira" devices --json >"$work/out" 2>"$work/err"
host=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) * 1024))
npu_memory=$(grep -o '"name": "npu:0".*' "$work/out" | grep -o '"memory_bytes": [0-9]*' | head -1 | awk '{print $2}')
[ -n "$npu_memory" ] && [ "$npu_memory" -le "$host" ] && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: npu:0 reports $npu_memory bytes, the host has $host"; }
check "emulated in devices --json" '"emulated": true' "$work/out"
run "plan for this machine" -- "$moira" plan -o "$work/local-plan.yaml"
grep -q "npu:0" "$work/local-plan.yaml" && { failed=$((failed + 1)); echo "FAIL: the default plan uses the emulator"; } ||
    passed=$((passed + 1))
run "plan --with-emulated" -- "$moira" plan --with-emulated -o "$work/emulated-plan.yaml"
check "asked for, the emulator is a target" "^npu:0 " "$work/out"
MOIRA_NPU_DEVICES=1 "$moira" plan -o "$work/emulated-plan.yaml" >"$work/out" 2>"$work/err"
check "MOIRA_NPU_DEVICES asks for it" "^npu:0 " "$work/out"

MOIRA_NPU_DEVICES=2:8:4:800 "$moira" devices --json >"$work/out" 2>"$work/err"
check "two devices" '"name": "npu:1"' "$work/out"
check "configured cores" '"compute_units": 8' "$work/out"
MOIRA_NPU_DEVICES=many "$moira" devices >"$work/out" 2>"$work/err"
check "bad MOIRA_NPU_DEVICES" 'npu: unavailable \(ACL error 100000 \(ACL_ERROR_INVALID_PARAM\): MOIRA_NPU_DEVICES="many"' "$work/out"

# The default model at 64 tokens on the npu: one token's reference routing is a near tie that
# the npu's bf16 attention tips to the other expert (layer 2 NMSE 3.4e-3 with it, 8e-6 without).
# run's layer check sets such a token aside as check does, instead of failing the run.
"$moira" run --backend npu:0 --tokens 64 --iters 1 >"$work/out" 2>"$work/err"
[ $? -eq 0 ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: run on npu:0 at 64 tokens"; tail -3 "$work/out"; }
check "a near tie set aside" "token\(s\) routed apart at a near tie .* set aside" "$work/out"
check "the rest agreed" "-> agreed" "$work/out"

echo "cli npu: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

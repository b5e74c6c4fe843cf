#!/usr/bin/env bash
# Device faults, injected through MOIRA_FAULT (runtime/fault.h): every device allocation of an op,
# a single-device run and a run over a plan (the executor) failing in turn, an OpenCL program that
# fails to build, a device that is gone between planning and running, and a device that does not
# exist. Each must end in a clear error with the right exit code (1 for a failed run, 2 for bad
# usage), no output file, and no crash, hang or sanitizer report; the same command with one fault
# fewer must then succeed and write its output.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
show_on_fail="$work/err"

# run_command DESCRIPTION -- command...: runs it with a fresh, empty output folder; $got is its exit
# code, 124 when it hung (killed after 300 s, reported as a failure).
run_command() {
    local what="$1"
    shift 2
    rm -rf "$work/out"
    mkdir "$work/out"
    timeout 300 "$@" >"$work/stdout" 2>"$work/err"
    got=$?
    [ "$got" -ne 124 ] || fail "$what: hung (killed after 300 s)"
}

# expect EXIT PATTERN DESCRIPTION: the last command's exit code, a stderr line matching PATTERN
# (extended regex; "" for none), a clean report (no sanitizer, no abort) and, on failure, no output
# written.
expect() {
    local want="$1" pattern="$2" what="$3"
    [ "$got" -ne 124 ] || return
    [ "$got" -eq "$want" ] && passed=$((passed + 1)) || fail "$what: exit $got, expected $want"
    if [ -n "$pattern" ]; then
        grep -qE -- "$pattern" "$work/err" && passed=$((passed + 1)) ||
            fail "$what: stderr lacks /$pattern/"
    fi
    ! grep -qE 'Sanitizer|runtime error|Segmentation|Aborted|corrupted' "$work/err" &&
        passed=$((passed + 1)) || fail "$what: crash or sanitizer report"
    if [ "$want" -ne 0 ]; then
        [ -z "$(ls -A "$work/out")" ] && passed=$((passed + 1)) ||
            fail "$what: output left behind: $(ls -A "$work/out")"
    fi
}

# run_case EXIT PATTERN DESCRIPTION -- command...: run_command, then expect.
run_case() {
    local want="$1" pattern="$2" what="$3"
    shift 3
    run_command "$what" "$@"
    expect "$want" "$pattern" "$what"
}

devices=$("$moira" devices --json | grep -oE '"name": "(cpu|npu|opencl):[0-9]+"' |
    sed -E 's/.*"([a-z]+:[0-9]+)"/\1/' | grep -E '^(cpu:0|npu:0|opencl:0)$')
echo "devices under test: $(echo $devices)"

op_moe=(op moe --model "$golden/moe_v3.json" --inputs "$golden/moe_v3.inputs.safetensors")
op_layer=(op layer --decode --model "$golden/layer_v3.json" --inputs "$golden/layer_v3.inputs.safetensors")

# Every allocation fails in turn, until the command needs fewer than N and succeeds (with its
# output written, when it writes one).
sweep() { # sweep WHERE DESCRIPTION OUTPUT -- command...
    local device="$1" what="$2" output="$3"
    shift 4
    local n
    for n in $(seq 1 100); do
        MOIRA_FAULT=alloc:$n run_command "$what on $device, allocation $n fails" -- "$@"
        [ "$got" -ne 0 ] || break
        expect 1 "out of device memory .*injected" "$what on $device, allocation $n fails"
        [ "$got" -eq 1 ] || return
    done
    if [ "$got" -eq 0 ] && [ "$n" -gt 1 ]; then
        expect 0 "" "$what on $device, $((n - 1)) allocations"
        [ -z "$output" ] || [ -s "$work/out/$output" ] && passed=$((passed + 1)) ||
            fail "$what on $device: no $output after success"
        echo "  $what on $device: allocations 1..$((n - 1)) failed cleanly, then it succeeded"
    else
        fail "$what on $device: no clean success after $n allocation faults"
    fi
}

for device in $devices; do
    sweep "$device" "op moe" moe.safetensors -- \
        "$moira" "${op_moe[@]}" -o "$work/out/moe.safetensors" --backend "$device"
    sweep "$device" "op layer --decode" layer.safetensors -- \
        "$moira" "${op_layer[@]}" -o "$work/out/layer.safetensors" --backend "$device"
    sweep "$device" "run" "" -- "$moira" run --tokens 4 --iters 1 --backend "$device"
done
# From one allocation on, all fail: the first failure is reported, the rest never reached.
MOIRA_FAULT=alloc:1+ run_case 1 "alloc:1\+, allocation 1\)" "every allocation fails" -- \
    "$moira" "${op_moe[@]}" --backend cpu:0 -o "$work/out/moe.safetensors"

# A device that is gone after enumeration: a clear error on it, the others unaffected.
for device in $devices; do
    MOIRA_FAULT=lost:$device run_case 1 "$device: the device is gone" "op on lost $device" -- \
        "$moira" "${op_moe[@]}" --backend "$device" -o "$work/out/moe.safetensors"
    MOIRA_FAULT=lost:$device run_case 1 "$device: the device is gone" "run on lost $device" -- \
        "$moira" run --tokens 4 --iters 1 --backend "$device"
    MOIRA_FAULT=lost:$device run_case 1 "$device: the device is gone" "run -o on lost $device" -- \
        "$moira" run --model "$golden/layer_v3.json" --inputs "$golden/layer_v3.inputs.safetensors" \
        --iters 1 --backend "$device" -o "$work/out/run.safetensors"
    MOIRA_FAULT=lost:$device run_case 1 "$device: the device is gone" "check on lost $device" -- \
        "$moira" check --backends "$device" --ops gate
done
MOIRA_FAULT=lost:npu:0 run_case 0 "" "op on cpu:0 with npu:0 lost" -- \
    "$moira" "${op_moe[@]}" --backend cpu:0 -o "$work/out/moe.safetensors"
# A plan over opencl:0, npu:0 and CPU memory (tests/data/exec): every allocation of the executor
# fails in turn, and each device of the plan is gone between planning and running, with the
# recorded profile never written.
exec_data="$data/exec"
run_plan=(run --topology "$exec_data/topology.yaml" --model "$exec_data/model.yaml"
    --plan "$exec_data/plan.yaml" --tokens 4 --iters 1 --record-profile "$work/out/profile.yaml")
if echo "$devices" | grep -q opencl:0; then
    sweep "the exec-box plan" "run --plan" profile.yaml -- "$moira" "${run_plan[@]}"
    for device in opencl:0 npu:0; do
        MOIRA_FAULT=lost:$device run_case 1 "$device: the device is gone" \
            "run --plan with $device lost" -- "$moira" "${run_plan[@]}"
    done
else
    echo "no opencl:0: the exec-box plan is not run here"
fi

# A device that does not exist at all is bad usage.
run_case 2 'no device named "opencl:9"' "op on a missing device" -- \
    "$moira" "${op_moe[@]}" --backend opencl:9 -o "$work/out/moe.safetensors"
# An entry the hooks do not know is ignored with a warning, not a failure.
MOIRA_FAULT=bogus run_case 0 'MOIRA_FAULT entry "bogus"' "unknown fault entry" -- \
    "$moira" "${op_moe[@]}" --backend cpu:0 -o "$work/out/moe.safetensors"

# An OpenCL program that fails to build: the CL error and the driver's log, exit 1, nothing
# written; other backends are unaffected.
if echo "$devices" | grep -q opencl:0; then
    MOIRA_FAULT=kernel-build run_case 1 "CL_BUILD_PROGRAM_FAILURE" "opencl build failure (op)" -- \
        "$moira" "${op_moe[@]}" --backend opencl:0 -o "$work/out/moe.safetensors"
    grep -q "a deliberate build failure" "$work/err" && passed=$((passed + 1)) ||
        fail "the build log does not reach the user"
    MOIRA_FAULT=kernel-build run_case 1 "CL_BUILD_PROGRAM_FAILURE" "opencl build failure (check)" -- \
        "$moira" check --backends opencl:0 --ops gate
    MOIRA_FAULT=kernel-build run_case 1 "CL_BUILD_PROGRAM_FAILURE" "opencl build failure (run)" -- \
        "$moira" run --tokens 4 --iters 1 --backend opencl:0
    MOIRA_FAULT=kernel-build run_case 0 "" "cpu:0 unaffected by an opencl build failure" -- \
        "$moira" "${op_moe[@]}" --backend cpu:0 -o "$work/out/moe.safetensors"
else
    echo "no opencl:0: the OpenCL build fault is not tested here"
fi

echo "device_faults: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

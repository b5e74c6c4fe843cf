#!/usr/bin/env bash
# `moira calibrate` as a user meets it (issue 15): on this machine it times CPU memory (and a
# topology's opencl:0 where PoCL is here) on moira-tiny in seconds, prints the fitted figures and
# writes a topology with `measured:` entries that plan and run then read; run --record-profile
# records each device's speed and plan --profile costs the device by it; a topology with bad
# measured figures exits 2 at its file:line:col; a failed write leaves nothing behind. How close
# the calibrated predictions come to measured times is tests/cli/calibrate_predicts.sh.
set -u
moira="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/lib/expect.bash"

expect 0 "calibrate --help" -- "$moira" calibrate --help
check "help names -o" "-o FILE" "$work/out"
check "help names --topology" "--topology FILE" "$work/out"
expect 0 "moira --help lists calibrate" -- "$moira" --help
check "verb listed" "^  calibrate " "$work/out"

start=$SECONDS
expect 0 "calibrate this machine" -- "$moira" calibrate -o "$work/local.yaml"
elapsed=$((SECONDS - start))
[ "$elapsed" -lt 60 ] && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: calibrate took ${elapsed}s"; }
check "figures printed" "/numa0 +cpu:0 +launch [0-9.]+ us, [0-9.e+]+ GB/s, [0-9.e+-]+ TFLOP/s" "$work/out"
check "measured written" "measured: \{bandwidth_gbs: [0-9.e+]+" "$work/local.yaml"
check "launch written" "launch_us: [0-9.e+-]+" "$work/local.yaml"
check "home written" "home_launch_us: [0-9.e+-]+" "$work/local.yaml"
check "discovered host written out" "numa_nodes:" "$work/local.yaml"
expect 0 "plan reads the calibrated topology" -- "$moira" plan --topology "$work/local.yaml" --tokens 32
expect 0 "run over the calibrated topology" -- "$moira" run --topology "$work/local.yaml" --tokens 4 --iters 1
expect 0 "calibrate --json" -- "$moira" calibrate --topology "$work/local.yaml" --json --iters 1
check "json figures" '"launch_us": [0-9.e+-]+, "bandwidth_gbs": [0-9.e+]+' "$work/out"
check "json points" '"points": \[\{"tokens": 1, ' "$work/out"

# The loop closes on speed: a recorded profile says how fast each device ran, and planning with
# it says how it costs them.
expect 0 "run --record-profile" -- "$moira" run --topology "$work/local.yaml" --tokens 8 --iters 1 \
    --record-profile "$work/profile.yaml"
check "speeds recorded" "^- \{device: [^,]+/numa0, busy_us: [0-9.e+]+, predicted_us: [0-9.e+]+\}" "$work/profile.yaml"
expect 0 "plan --profile with speeds" -- "$moira" plan --topology "$work/local.yaml" --profile "$work/profile.yaml"
expect_stderr "note: [^ ]+/numa0 ran [0-9.e+]+ x its predicted time in the recorded run; planned so" "speed applied"
rm -f "$work/profile.yaml"

# A bad measured figure: exit 2 at its line and column, nothing written.
sed 's/measured: {bandwidth_gbs: [0-9.e+]*/measured: {bandwidth_gbs: -4/' "$work/local.yaml" >"$work/bad.yaml"
line=$(grep -n "bandwidth_gbs: -4" "$work/bad.yaml" | cut -d: -f1)
expect 2 "negative measured bandwidth" -- "$moira" calibrate --topology "$work/bad.yaml" -o "$work/never.yaml"
expect_stderr "bad.yaml:$line:[0-9]+: measured.bandwidth_gbs must be >= 0" "located error"
[ ! -e "$work/never.yaml" ] && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: a refused calibration wrote its output"; }
expect 2 "plan refuses it too" -- "$moira" plan --topology "$work/bad.yaml"
expect_stderr "bad.yaml:$line:[0-9]+: " "plan's located error"

# A write that cannot happen leaves no file and no temporary.
expect 1 "-o in a missing folder" -- "$moira" calibrate -o "$work/missing/t.yaml" --iters 1
[ -z "$(ls "$work" | grep -v -e '^local.yaml$' -e '^bad.yaml$' -e '^out$' -e '^err$')" ] &&
    passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: files left: $(ls "$work")"; }

# opencl:0 (PoCL) named in a topology is timed with its link.
if "$moira" devices | grep -q "^opencl:0 "; then
    printf '%s\n' 'name: pocl-box' 'hosts:' '  - name: box' \
        '    numa_nodes:' \
        '      - {id: 0, memory_gib: 8, bandwidth_gbs: 20, cores: 2, peak_tflops: {f32: 0.1}}' \
        '    devices:' \
        '      - {name: gpu0, kind: gpu, backend: opencl, select: "opencl:0", memory_gib: 4,' \
        '         bandwidth_gbs: 50, peak_tflops: {f32: 0.5}, link_gbs: 16}' >"$work/pocl.yaml"
    expect 0 "calibrate opencl:0" -- "$moira" calibrate --topology "$work/pocl.yaml" -o "$work/pocl-cal.yaml" --iters 1
    check "gpu0 timed" "^  gpu0 +opencl:0 +launch [0-9.]+ us" "$work/out"
    tr -d '\n' <"$work/pocl-cal.yaml" | tr -s ' ' >"$work/pocl-flat.yaml"
    check "gpu0 link" "name: gpu0.*measured: \{bandwidth_gbs: [0-9.e+]+.*link_gbs: [0-9.e+]+" "$work/pocl-flat.yaml"
else
    echo "no opencl:0 here: its calibration is not checked"
fi

echo "calibrate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

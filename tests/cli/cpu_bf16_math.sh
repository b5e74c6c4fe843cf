#!/usr/bin/env bash
# The cpu device's math modes as a user meets them: `moira devices --json` names the instruction
# set in use and the bf16 math mode, as JSON strings; by default the device computes in f32, and
# with MOIRA_CPU_BF16_MATH=bf16 (on a CPU with AVX512_BF16) it reports bf16 precision and
# `moira check` still passes every cpu case against the bf16 limit. Skipped (77) where the CPU
# has no AVX512_BF16, since the mode then does not exist.
set -u
moira="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/lib/expect.bash"

expect 0 "devices --json" -- "$moira" devices --json
check "isa is a JSON string" '"isa": "(portable|avx2|avx512|avx512_bf16)"' "$work/out"
check "bf16_math off by default" '"bf16_math": "f32"' "$work/out"
check "f32 precision by default" '"name": "cpu:0".*"compute_precision": "F32"' "$work/out"
if ! grep -q '"isa": "avx512_bf16"' "$work/out"; then
    echo "cpu_bf16_math: this CPU has no AVX512_BF16, skipped"
    exit 77
fi

MOIRA_CPU_BF16_MATH=bf16 expect 0 "devices --json, bf16 math" -- "$moira" devices --json
check "bf16_math on" '"bf16_math": "bf16"' "$work/out"
check "bf16 precision" '"name": "cpu:0".*"compute_precision": "BF16"' "$work/out"
MOIRA_CPU_BF16_MATH=bf16 expect 0 "check cpu:0 moe, bf16 math" -- \
    "$moira" check --backends cpu:0 --ops moe,layer
check "held to the bf16 limit" "cpu:0 +moe .* 0\.002 +ok" "$work/out"

echo "cpu_bf16_math: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

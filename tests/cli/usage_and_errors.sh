#!/usr/bin/env bash
# The CLI as a user meets it: help on every verb, exit codes of DESIGN.md §6 (0 ok, 1 failed,
# 2 bad usage or bad input), errors that name file:line:col, and outputs written whole or not at all.
set -u
moira="$1"
data="$2"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/lib/expect.bash"

golden="$data/golden"
for verb in devices op check run plan bench; do
    expect 0 "$verb --help" -- "$moira" "$verb" --help
    grep -q "usage: moira $verb" "$work/out" && passed=$((passed + 1)) ||
        { failed=$((failed + 1)); echo "FAIL: $verb --help prints no usage"; }
done
expect 2 "no verb" -- "$moira"
expect 2 "unknown verb" -- "$moira" frobnicate
expect 2 "unknown option" -- "$moira" devices --bogus
expect 0 "devices" -- "$moira" devices
expect 0 "--version" -- "$moira" --version
check "--version names the version and commit" '^moira [0-9]+\.[0-9]+\.[0-9]+ \(git [0-9a-f]+' "$work/out"
check "--version lists the cpu backend" '^backends:.* cpu' "$work/out"
expect 0 "devices --json" -- "$moira" devices --json
grep -q '"name": "cpu:0"' "$work/out" && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: devices --json lacks cpu:0"; }

# Bad usage.
expect 2 "op without an op" -- "$moira" op --model "$golden/moe_v3.json"
expect 2 "op unknown op" -- "$moira" op frob --model x --inputs y -o z
expect 2 "op without -o" -- "$moira" op moe --model "$golden/moe_v3.json" \
    --inputs "$golden/moe_v3.inputs.safetensors"
expect 2 "op --decode on gate" -- "$moira" op gate --decode --model "$golden/gate_v3.json" \
    --inputs "$golden/gate_v3.inputs.safetensors" -o "$work/o.safetensors"
expect 2 "op on a missing device" -- "$moira" op moe --backend nosuch:3 \
    --model "$golden/moe_v3.json" --inputs "$golden/moe_v3.inputs.safetensors" -o "$work/o.safetensors"
expect_stderr 'nosuch:3' "missing device named"
expect 2 "check unknown backend" -- "$moira" check --backends nosuch
expect 2 "check unknown op" -- "$moira" check --ops frob
expect 2 "run bad --tokens" -- "$moira" run --tokens zero

# Models that cannot run here are refused before anything is allocated.
configs="$data/../../configs/models"
expect 2 "GQA model" -- "$moira" run --model "$configs/qwen3-30b-a3b.yaml" --tokens 1
expect_stderr 'GQA' "GQA refusal says why"
expect 2 "model larger than memory" -- "$moira" run --model "$configs/deepseek-v3.yaml" --tokens 1
expect_stderr 'GiB' "memory refusal names the sizes"

# Bad input: a malformed model config is located at file:line:col.
printf 'hidden_size: 64\nn_routed_experts: [1, 2]\n' >"$work/bad.yaml"
expect 2 "malformed model config" -- "$moira" op moe --model "$work/bad.yaml" \
    --inputs "$golden/moe_v3.inputs.safetensors" -o "$work/o.safetensors"
expect_stderr 'bad\.yaml:[0-9]+:[0-9]+' "config error names file:line:col"
# Weights that do not match the config.
expect 2 "weights of another model" -- "$moira" op moe --model "$golden/moe_v3.json" \
    --inputs "$golden/moe_v2lite.inputs.safetensors" -o "$work/o.safetensors"
# A truncated safetensors file.
head -c 100 "$golden/moe_v3.inputs.safetensors" >"$work/trunc.safetensors"
expect 2 "truncated inputs" -- "$moira" op moe --model "$golden/moe_v3.json" \
    --inputs "$work/trunc.safetensors" -o "$work/o.safetensors"
# Nothing half-written: a failed op leaves an existing output untouched.
echo "previous" >"$work/keep.safetensors"
expect 2 "failed op" -- "$moira" op moe --model "$golden/moe_v3.json" \
    --inputs "$work/trunc.safetensors" -o "$work/keep.safetensors"
[ "$(cat "$work/keep.safetensors")" = "previous" ] && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: a failed op touched its output file"; }
[ -z "$(ls "$work" | grep -v -e '^out$' -e '^err$' -e '\.safetensors$' -e '\.yaml$')" ] &&
    passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: temp files left behind"; }

echo "usage_and_errors: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

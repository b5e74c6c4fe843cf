#!/usr/bin/env bash
# `moira plan` as a user meets it: every shipped topology plans, plans validate when loaded back
# (YAML and JSON), the SVG is written, malformed topology, profile and plan files exit 2 naming
# file:line:col, and a failed plan leaves an existing output file untouched.
set -u
moira="$1"
data="$2"
configs="$data/../../configs"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/lib/expect.bash"

expect 0 "plan --help" -- "$moira" plan --help
grep -q "usage: moira plan" "$work/out" && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: plan --help prints no usage"; }

# Every shipped topology, with the built-in model and a skewed profile; the plan loads back.
for topo in "$configs"/topologies/*.yaml; do
    name=$(basename "$topo" .yaml)
    expect 0 "plan $name" -- "$moira" plan --topology "$topo" --skew zipf:1.1 --redundant 8 \
        -o "$work/$name.yaml" --svg "$work/$name.svg"
    grep -q "^predicted: " "$work/out" && passed=$((passed + 1)) ||
        { failed=$((failed + 1)); echo "FAIL: plan $name prints no prediction"; }
    expect 0 "check $name" -- "$moira" plan --topology "$topo" --check "$work/$name.yaml"
    head -c 5 "$work/$name.svg" | grep -q "<?xml" && passed=$((passed + 1)) ||
        { failed=$((failed + 1)); echo "FAIL: $name.svg is not SVG"; }
    expect 0 "plan $name --json" -- "$moira" plan --topology "$topo" --json -o "$work/$name.json"
    expect 0 "check $name.json" -- "$moira" plan --topology "$topo" --check "$work/$name.json" \
        --model "$configs/models/moira-tiny.yaml"
done

# Real models on the machines that hold them.
for pair in mi300x-8:deepseek-v3 ascend-910b-8:deepseek-v3 two-host-mi300x:deepseek-v3 \
    intel-gpu-xeon:deepseek-v2-lite mixed-amd-ascend-ddr:qwen3-30b-a3b; do
    topo=${pair%%:*}
    model=${pair##*:}
    expect 0 "plan $model on $topo" -- "$moira" plan --topology "$configs/topologies/$topo.yaml" \
        --model "$configs/models/$model.yaml" --skew zipf:1 --redundant 32 -o "$work/big.yaml"
    expect 0 "check $model on $topo" -- "$moira" plan \
        --topology "$configs/topologies/$topo.yaml" --check "$work/big.yaml"
done

# The discovered local machine, by default and to stdout.
expect 0 "plan on the local machine" -- "$moira" plan
grep -q "^moira_plan: 1" "$work/out" && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: plan to stdout is not a plan"; }
expect 0 "plan --json on the local machine" -- "$moira" plan --json
grep -q '"moira_plan": 1' "$work/out" && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: plan --json to stdout is not JSON"; }

# The EPLB example through the CLI.
placement="$data/placement"
expect 0 "EPLB example" -- "$moira" plan --topology "$placement/eplb-topology.yaml" \
    --model "$placement/eplb-model.yaml" --profile "$placement/eplb-profile.yaml" \
    --redundant 4 --slots 2 -o "$work/eplb.yaml"

# Bad usage.
expect 2 "plan --profile and --skew" -- "$moira" plan --profile x --skew uniform
expect 2 "plan --skew bogus" -- "$moira" plan --skew pareto
expect 2 "plan --slots 0" -- "$moira" plan --slots 0
expect 2 "plan --bogus" -- "$moira" plan --bogus
expect 2 "plan missing topology" -- "$moira" plan --topology "$work/none.yaml"

# Malformed files name file:line:col.
sed 's/backend: opencl, select: "opencl:3"/backend: cuda, select: "opencl:3"/' \
    "$configs/topologies/mi300x-8.yaml" >"$work/bad-topo.yaml"
expect 2 "unknown backend" -- "$moira" plan --topology "$work/bad-topo.yaml"
expect_stderr 'bad-topo.yaml:[0-9]+:[0-9]+: unknown backend "cuda"' "unknown backend located"
sed 's/numa: 1,/numa: 7,/' "$configs/topologies/mi300x-8.yaml" >"$work/bad-numa.yaml"
expect 2 "NUMA out of range" -- "$moira" plan --topology "$work/bad-numa.yaml"
expect_stderr 'bad-numa.yaml:[0-9]+:[0-9]+: numa 7 is out of range' "NUMA located"
printf 'moira_profile: 1\nexperts: 32\nlayers:\n  - {layer: 1, load: [1, 2]}\n' \
    >"$work/bad-profile.yaml"
expect 2 "short profile" -- "$moira" plan --profile "$work/bad-profile.yaml"
expect_stderr 'bad-profile.yaml:4:22: load has 2 counts' "profile located"
sed 's/^topology: mi300x-8/topology: mi300x-9/' "$work/mi300x-8.yaml" >"$work/bad-plan.yaml"
expect 2 "plan for another topology" -- "$moira" plan \
    --topology "$configs/topologies/mi300x-8.yaml" --check "$work/bad-plan.yaml"
expect_stderr 'bad-plan.yaml:2:11: ' "plan located"

expect 2 "plan for another model" -- "$moira" plan --topology "$configs/topologies/mi300x-8.yaml" \
    --check "$work/mi300x-8.yaml" --model "$configs/models/deepseek-v3.yaml"
expect_stderr 'places 32 experts' "model mismatch named"

# plan --check (issue 15): without --model it prints no prediction it did not compute (it used
# to echo the file's and divide link bytes by no tokens); with --model it recomputes them, from
# the plan's loads or from --profile / --skew (scoring the plan against another load).
v3="$configs/models/deepseek-v3.yaml"
mi300x="$configs/topologies/mi300x-8.yaml"
expect 0 "plan V3 for checking" -- "$moira" plan --topology "$mi300x" --model "$v3" \
    --skew zipf:1 -o "$work/v3.yaml"
planned=$(grep '^predicted:' "$work/out" | awk '{print $2}')
planned_link=$(grep '^mean max/mean' "$work/out" | awk '{print $5}')
sed 's/predicted_us: .*/predicted_us: 1/' "$work/v3.yaml" >"$work/v3-stale.yaml"
expect 0 "check without --model" -- "$moira" plan --topology "$mi300x" --check "$work/v3-stale.yaml"
grep -q '^predicted:\|link bytes' "$work/out" &&
    { failed=$((failed + 1)); echo "FAIL: check without --model printed predictions"; cat "$work/out"; } ||
    passed=$((passed + 1))
check "check without --model says so" 'predictions: not computed' "$work/out"
expect 0 "check with --model" -- "$moira" plan --topology "$mi300x" --check "$work/v3-stale.yaml" \
    --model "$v3"
[ "$(grep '^predicted:' "$work/out" | awk '{print $2}')" = "$planned" ] &&
    [ "$(grep '^mean max/mean' "$work/out" | awk '{print $5}')" = "$planned_link" ] &&
    passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: check --model did not recompute $planned us, $planned_link link bytes"; cat "$work/out"; }
expect 0 "check scored against another load" -- "$moira" plan --topology "$mi300x" \
    --check "$work/v3.yaml" --model "$v3" --skew uniform
rescored=$(grep '^predicted:' "$work/out" | awk '{print $2}')
[ -n "$rescored" ] && [ "$rescored" != "$planned" ] && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: --check --skew uniform kept $planned us"; }
expect 2 "check --skew without --model" -- "$moira" plan --topology "$mi300x" \
    --check "$work/v3.yaml" --skew uniform

# A hand-written plan needs only DESIGN §5's keys: the expert count and size come from --model.
cat >"$work/by-hand.yaml" <<'YAML'
moira_plan: 1
topology: docs-box
model: docs-tiny
home: npu0
devices: [{name: gpu0, host: box, backend: opencl, memory_bytes: 4294967296, used_bytes: 0}]
layers:
  - layer: 1
    devices:
      npu0: {experts: [0, 1, 2, 3], load: [40.5, 12, 7, 3]}
      box/numa0: {experts: [0, 4, 5, 6, 7], load: [10, 9, 8, 7, 6]}
    max_over_mean: 1.04
    predicted_us: 812
summary: {max_over_mean: 1.06, predicted_us_per_layer: 790, link_bytes_per_token: 0}
YAML
docs="$data/../../docs/examples"
expect 0 "hand-written plan with --model" -- "$moira" plan --topology "$docs/topology.yaml" \
    --model "$docs/model.yaml" --check "$work/by-hand.yaml"
grep -q '^predicted: 790\|^predicted: 812' "$work/out" &&
    { failed=$((failed + 1)); echo "FAIL: hand-written plan echoed its predictions"; } ||
    passed=$((passed + 1))
expect 2 "hand-written plan without --model" -- "$moira" plan \
    --topology "$docs/topology.yaml" --check "$work/by-hand.yaml"
expect_stderr 'by-hand.yaml:1:1: .*give --model' "missing expert count explained"

# Plans keep a reserve on every device (issue 15: V3 on 8x 910B filled each NPU to 59.49 of 59.60
# GiB, and a plan that passed --check failed in run with an allocation error): 3% of each
# device's memory, plus --reserve GiB.
ascend="$configs/topologies/ascend-910b-8.yaml"
for reserve in 0 8; do
    expect 0 "V3 on 910B, --reserve $reserve" -- "$moira" plan --topology "$ascend" --model "$v3" \
        --reserve "$reserve" -o "$work/ascend.yaml"
    awk -v r="$reserve" '$2 == "npu" { n++; if ($5 > $6 * 0.97 - r + 1e-9) bad++ }
                         END { exit (n == 8 && !bad) ? 0 : 1 }' "$work/out" &&
        passed=$((passed + 1)) ||
        { failed=$((failed + 1)); echo "FAIL: --reserve $reserve: an NPU is filled past its reserve"; cat "$work/out"; }
done
expect 2 "--reserve -1" -- "$moira" plan --reserve -1

# The home device is chosen and predicted (issue 15): on 8x MI300X a GPU, written as home:, and
# --check recomputes the prediction with it; on this CPU-only machine, CPU memory.
expect 0 "V3 on mi300x-8 names its home" -- "$moira" plan --topology "$mi300x" --model "$v3" \
    -o "$work/home.yaml"
check "the home is a GPU" '^home: gpu[0-7]$' "$work/home.yaml"
home_predicted=$(grep '^predicted:' "$work/out" | awk '{print $2}')
expect 0 "check the plan with its home" -- "$moira" plan --topology "$mi300x" --model "$v3" \
    --check "$work/home.yaml"
[ "$(grep '^predicted:' "$work/out" | awk '{print $2}')" = "$home_predicted" ] &&
    passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: --check lost the home's time"; }
expect 0 "plan this machine" -- "$moira" plan -o "$work/local-home.yaml"
check "CPU memory is the home here" '^home: .*/numa[0-9]+$' "$work/local-home.yaml"

# A plan that cannot be made leaves an existing output untouched.
cat >"$work/tiny.yaml" <<'YAML'
name: tiny
hosts:
  - name: h
    numa_nodes: [{id: 0, memory_gib: 0.001, bandwidth_gbs: 10, cores: 1, peak_tflops: {f32: 1}}]
YAML
echo keep >"$work/keep.yaml"
expect 2 "model does not fit" -- "$moira" plan --topology "$work/tiny.yaml" -o "$work/keep.yaml"
expect_stderr 'does not fit' "fit message"
[ "$(cat "$work/keep.yaml")" = keep ] && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: failed plan clobbered its output"; }
ls "$work" | grep -q '\.tmp\.' && { failed=$((failed + 1)); echo "FAIL: temporary file left"; } ||
    passed=$((passed + 1))

# The plan bench: Moira's plans are at least as balanced as the EPLB peer's on every skew.
expect 0 "bench plan" -- "$moira" bench plan --tokens 16384
if awk '/^zipf/ { n++; if ($3 > $4) bad++ } END { exit (n == 3 && !bad) ? 0 : 1 }' "$work/out"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
    echo "FAIL: bench plan: Moira less balanced than EPLB"
    cat "$work/out"
fi
expect 0 "bench plan --json" -- "$moira" bench plan --json --tokens 4096
grep -q '"eplb_max_over_mean"' "$work/out" && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: bench plan --json"; }
expect 0 "bench --help" -- "$moira" bench --help
expect 2 "bench unknown" -- "$moira" bench nosuch
expect 2 "bench without a name" -- "$moira" bench

echo "cli plan: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

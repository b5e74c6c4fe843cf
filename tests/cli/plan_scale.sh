#!/usr/bin/env bash
# Issue 20: planning and loading stay near n log n in experts. A 4096-expert model used to take
# tens of seconds to plan under the sanitizers (the local search scanned every replica for each
# replica of the busiest target), and a plan listing 400000 experts on one device took minutes to
# load (each expert was compared with every earlier one on its device; each layer with every
# earlier layer). Both must now finish well within the time limits below. So must 16384 experts
# (the GPUs fill up, so the search swaps) and 65536: while the search scanned every replica for
# each swap, 16384 took 33 s under the sanitizers (150 s on a busy machine) and 65536 took 50 s in
# a Release build; both now plan in under a second either way, as the search finds the replicas
# worth trying in per-target load orders (placement/replica_order.c).
set -u
moira="$1"
data="$2"
configs="$data/../../configs"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/lib/expect.bash"

sed -e "s/^name: .*/name: scale-4096/" -e "s/^n_routed_experts: .*/n_routed_experts: 4096/" \
    -e "s/^n_group: .*/n_group: 1/" -e "s/^topk_group: .*/topk_group: 1/" \
    "$data/placement/eplb-model.yaml" >"$work/model.yaml"
topo="$configs/topologies/mi300x-8.yaml"

expect 0 "plan 4096 experts" -- timeout 60 "$moira" plan --topology "$topo" \
    --model "$work/model.yaml" --skew zipf:1 -o "$work/plan.yaml"
expect 0 "check the 4096-expert plan" -- timeout 60 "$moira" plan --topology "$topo" \
    --model "$work/model.yaml" --check "$work/plan.yaml"

# The model with 16384 and (experts half the size, so that they fit) 65536 experts.
scale_model() { # experts intermediate-size
    sed -e "s/^name: .*/name: scale-$1/" -e "s/^n_routed_experts: .*/n_routed_experts: $1/" \
        -e "s/^moe_intermediate_size: .*/moe_intermediate_size: $2/" \
        -e "s/^n_group: .*/n_group: 1/" -e "s/^topk_group: .*/topk_group: 1/" \
        "$data/placement/eplb-model.yaml" >"$work/model-$1.yaml"
}
for case in 16384:2048 65536:1024; do
    experts=${case%%:*}
    scale_model "$experts" "${case##*:}"
    expect 0 "plan $experts experts" -- timeout 10 "$moira" plan --topology "$topo" \
        --model "$work/model-$experts.yaml" --skew zipf:1 -o "$work/plan-$experts.yaml"
    # The plan beats filling the fastest device first, as the summary shows.
    awk '/^predicted:/ { gsub(/[(:]/, " "); for (i = 1; i < NF; i++) if ($i == "first") f = $(i + 1)
                         ok = f != "" && $2 < f } END { exit !ok }' "$work/out" &&
        passed=$((passed + 1)) ||
        { failed=$((failed + 1)); echo "FAIL: $experts experts: no better than fastest first"; }
    expect 0 "check the $experts-expert plan" -- timeout 10 "$moira" plan --topology "$topo" \
        --model "$work/model-$experts.yaml" --check "$work/plan-$experts.yaml"
done

# Plans written by hand (or by another tool) as one long list per device, or as many layers.
plan_text() { # experts layers
    awk -v N="$1" -v L="$2" 'BEGIN {
        print "moira_plan: 1\ntopology: mi300x-8\nmodel: gen\nexperts: " N "\nexpert_bytes: 1"
        print "layers:"
        for (l = 0; l < L; l++) {
            printf "  - layer: %d\n    devices:\n      mi300x-node/numa0: {experts: [", l
            for (e = 0; e < N; e++) printf(e ? ",%d" : "%d", e)
            printf "]}\n"
        }
    }'
}
plan_text 400000 1 >"$work/wide.yaml"
plan_text 1 100000 >"$work/deep.yaml"
expect 0 "check a plan of 400000 experts" -- timeout 30 "$moira" plan --topology "$topo" \
    --check "$work/wide.yaml"
expect 0 "check a plan of 100000 layers" -- timeout 60 "$moira" plan --topology "$topo" \
    --check "$work/deep.yaml"

# The duplicate checks still catch duplicates.
printf 'moira_plan: 1\ntopology: mi300x-8\nmodel: gen\nexperts: 3\nexpert_bytes: 1\nlayers:\n  - layer: 0\n    devices:\n      gpu0: {experts: [0, 1, 2, 1]}\n' >"$work/dup.yaml"
expect 2 "an expert twice on a device" -- "$moira" plan --topology "$topo" --check "$work/dup.yaml"
expect_stderr "dup.yaml:9:.*expert 1 appears twice" "duplicate expert not located"
printf 'moira_plan: 1\ntopology: mi300x-8\nmodel: gen\nexperts: 1\nexpert_bytes: 1\nlayers:\n  - {layer: 3, devices: {gpu0: {experts: [0]}}}\n  - {layer: 3, devices: {gpu1: {experts: [0]}}}\n' >"$work/dup2.yaml"
expect 2 "a layer twice" -- "$moira" plan --topology "$topo" --check "$work/dup2.yaml"
expect_stderr "layer 3 given twice" "duplicate layer not caught"
printf 'moira_plan: 1\ntopology: mi300x-8\nmodel: gen\nexperts: 2\nexpert_bytes: 1\nlayers:\n  - {layer: 0, devices: {gpu0: {experts: [0]}, gpu0: {experts: [1]}}}\n' >"$work/dup3.yaml"
expect 2 "a device twice in a layer" -- "$moira" plan --topology "$topo" --check "$work/dup3.yaml"
expect_stderr 'device "gpu0" given twice in layer 0' "duplicate device not caught"

echo "cli plan_scale: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

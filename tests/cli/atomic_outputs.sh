#!/usr/bin/env bash
# Every output is written whole or not at all (DESIGN.md §6): a write that cannot happen (a missing
# folder, a path through a file) fails without leaving the output or a temporary behind, a plan
# and its picture (and a run's output and its recorded profile) are written together or not at
# all, and written files get the usual mode.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
umask 022

check() { # check DESCRIPTION -- test-command...
    local what="$1"
    shift 2
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $what"; fi
}

run() { # run EXPECTED-EXIT DESCRIPTION -- command...
    local want="$1" what="$2"
    shift 3
    "$@" >"$work/out" 2>"$work/err"
    local got=$?
    check "$what: exit $got, expected $want" -- [ "$got" -eq "$want" ]
    [ "$got" -eq "$want" ] || sed 's/^/  | /' "$work/err" | head -5
}

no_temporaries() { ! find "$work" -name '*.tmp.*' | grep -q .; }

op_args=(op gate --model "$golden/gate_v3.json" --inputs "$golden/gate_v3.inputs.safetensors")
plan_args=(plan --topology "$placement/eplb-topology.yaml" --model "$placement/eplb-model.yaml"
    --profile "$placement/eplb-profile.yaml" --slots 2 --redundant 4)

# A missing folder: IO error (exit 1), named, nothing written.
run 1 "op into a missing folder" -- "$moira" "${op_args[@]}" -o "$work/missing/out.safetensors"
check "op names the folder problem" -- grep -q 'missing/out.safetensors: cannot create' "$work/err"
check "op left no folder or file" -- [ ! -e "$work/missing" ]
touch "$work/afile"
run 1 "op through a regular file" -- "$moira" "${op_args[@]}" -o "$work/afile/out.safetensors"
run 1 "plan into a missing folder" -- "$moira" "${plan_args[@]}" -o "$work/missing/plan.yaml"

# The plan and its picture together: a bad --svg path leaves no plan file either.
run 1 "plan with an unwritable --svg" -- "$moira" "${plan_args[@]}" -o "$work/plan.yaml" \
    --svg "$work/missing/plan.svg"
check "no plan without its picture" -- [ ! -e "$work/plan.yaml" ]
echo previous >"$work/keep.yaml"
run 1 "replan with an unwritable --svg" -- "$moira" "${plan_args[@]}" -o "$work/keep.yaml" \
    --svg "$work/afile/plan.svg"
check "an existing plan is left as it was" -- [ "$(cat "$work/keep.yaml")" = previous ]
# A run's output and its recorded load profile together: a bad --record-profile path leaves no
# output either.
run_args=(run --model "$golden/layer_v3.json" --inputs "$golden/layer_v3.inputs.safetensors"
    --iters 1)
run 1 "run with an unwritable --record-profile" -- "$moira" "${run_args[@]}" \
    -o "$work/run.safetensors" --record-profile "$work/missing/profile.yaml"
check "no run output without its profile" -- [ ! -e "$work/run.safetensors" ]
run 2 "plan --check of a bad plan" -- "$moira" plan \
    --topology "$placement/eplb-topology.yaml" --check "$work/keep.yaml" --svg "$work/x.svg"
check "no picture of a bad plan" -- [ ! -e "$work/x.svg" ]

# Successful writes: whole files with the mode a new file gets under umask 022.
run 0 "op" -- "$moira" "${op_args[@]}" -o "$work/gate.safetensors"
run 0 "plan with picture" -- "$moira" "${plan_args[@]}" -o "$work/plan.yaml" --svg "$work/plan.svg"
run 0 "run with profile" -- "$moira" "${run_args[@]}" -o "$work/run.safetensors" \
    --record-profile "$work/profile.yaml"
for f in gate.safetensors plan.yaml plan.svg run.safetensors profile.yaml; do
    check "$f has mode 644" -- [ "$(stat -c %a "$work/$f")" = 644 ]
done
check "plan.svg is a whole picture" -- grep -q '</svg>' "$work/plan.svg"
run 0 "the recorded profile plans" -- "$moira" plan --model "$golden/layer_v3.json" \
    --profile "$work/profile.yaml" -o "$work/replan.yaml"
run 0 "plan --check reads the plan back" -- "$moira" plan \
    --topology "$placement/eplb-topology.yaml" --check "$work/plan.yaml"
check "no temporaries left anywhere" -- no_temporaries

echo "atomic_outputs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

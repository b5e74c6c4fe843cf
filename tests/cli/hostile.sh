#!/usr/bin/env bash
# The hostile-input set (tests/data/hostile, listed in its MANIFEST): truncated and overflowing
# safetensors files, offsets past the end, wrong dtypes, duplicate names, NaN loads and inputs,
# deep YAML nesting, tabs, misspelt keys answered with "did you mean", plans naming devices that
# are gone. Each file is fed to the command that reads it, which must exit 2 with the message the
# manifest gives and leave no output file (nor a temporary) behind. Every file in the folder must
# be in the manifest, so none goes untested.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
hostile="$data/hostile"

# The command line that makes VERB read FILE, writing to the outputs under $work/out.
command_for() { # command_for VERB FILE
    local verb="$1" file="$2"
    case "$verb" in
    inputs) echo op gate --model "$golden/gate_v3.json" --inputs "$file" -o "$work/out/out.safetensors" ;;
    weights) echo op gate --model "$golden/gate_v3.json" --inputs "$golden/gate_v3.inputs.safetensors" \
        --weights "$file" -o "$work/out/out.safetensors" ;;
    model) echo plan --model "$file" -o "$work/out/plan.yaml" --svg "$work/out/plan.svg" ;;
    run) echo run --model "$file" --inputs "$golden/layer_v3.inputs.safetensors" \
        -o "$work/out/out.safetensors" ;;
    topology) echo plan --topology "$file" --model "$placement/eplb-model.yaml" \
        -o "$work/out/plan.yaml" --svg "$work/out/plan.svg" ;;
    profile) echo plan --topology "$placement/eplb-topology.yaml" --model "$placement/eplb-model.yaml" \
        --profile "$file" -o "$work/out/plan.yaml" ;;
    plan) echo plan --topology "$placement/eplb-topology.yaml" --model "$placement/eplb-model.yaml" \
        --check "$file" --svg "$work/out/plan.svg" ;;
    tokenizer) echo tokenize --model "$file" --text hello ;;
    chat) echo tokenize --model "$file" --messages "$data/chat/conversations/system_user.json" ;;
    messages) echo tokenize --model "$data/tokenizer/tiny" --messages "$file" ;;
    *) return 1 ;;
    esac
}

trim() { sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' <<<"$1"; }

declare -A listed
cases=0
while IFS='|' read -r file verb expected; do
    file=$(trim "$file")
    verb=$(trim "$verb")
    expected=$(trim "$expected")
    [ -z "$file" ] || [ "${file:0:1}" = "#" ] && continue
    listed[$file]=1
    cases=$((cases + 1))
    what="$file ($verb)"
    if [ ! -e "$hostile/$file" ]; then
        fail "$what: no such file in $hostile"
        continue
    fi
    if ! args=$(command_for "$verb" "$hostile/$file"); then
        fail "$what: unknown verb"
        continue
    fi
    rm -rf "$work/out"
    mkdir "$work/out"
    # Paths hold no spaces (mktemp and the source tree), so word splitting rebuilds the command.
    # shellcheck disable=SC2086
    timeout 60 "$moira" $args >"$work/stdout" 2>"$work/stderr"
    code=$?
    if [ "$code" -ne 2 ]; then
        fail "$what: exit $code, expected 2"
        sed 's/^/  | /' "$work/stderr" | head -5
    else
        passed=$((passed + 1))
    fi
    if grep -qF -- "$expected" "$work/stderr"; then
        passed=$((passed + 1))
    else
        fail "$what: stderr lacks \"$expected\""
        sed 's/^/  | /' "$work/stderr" | head -5
    fi
    # One error line, starting "moira:", and no crash report from a sanitizer or the shell.
    if [ "$(grep -c '^moira: ' "$work/stderr")" -ge 1 ] &&
        ! grep -qE 'Sanitizer|runtime error|Segmentation|Aborted' "$work/stderr"; then
        passed=$((passed + 1))
    else
        fail "$what: not one clean error message"
        sed 's/^/  | /' "$work/stderr" | head -5
    fi
    if [ -z "$(ls -A "$work/out")" ]; then
        passed=$((passed + 1))
    else
        fail "$what: left output behind: $(ls -A "$work/out" | tr '\n' ' ')"
    fi
done <"$hostile/MANIFEST"

# Every member of the set is exercised.
for path in "$hostile"/*; do
    name=${path##*/}
    case "$name" in MANIFEST | *.py | README.md) continue ;; esac
    [ -n "${listed[$name]:-}" ] && passed=$((passed + 1)) || fail "$name is not in the MANIFEST"
done
members=$(find "$hostile" -mindepth 1 -maxdepth 1 ! -name MANIFEST ! -name '*.py' | wc -l)
[ "$members" -ge 30 ] && passed=$((passed + 1)) || fail "only $members hostile files (want 30+)"

echo "hostile: $cases cases over $members files: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# The user documentation (docs/, README.md) against the program it describes:
# - every relative link (and #anchor) in README.md and docs/*.md leads somewhere that exists;
# - nothing a user reads points at DESIGN.md, a file a clone does not have: not the pages, not a
#   string in the binary;
# - every verb `moira --help` lists is named in docs/cli.md, and every option of a verb that has
#   its own section there (## moira VERB) appears in that section;
# - the example files of docs/examples plan, check and run as docs/formats.md shows.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
source "$(dirname "$0")/lib/expect.bash"
root="$data/../.."
docs="$root/docs"
examples="$docs/examples"

pass() { passed=$((passed + 1)); }

# GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped, spaces to -.
slug() {
    printf '%s' "$1" | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9 _-]//g' -e 's/ /-/g'
}

# The anchors of a Markdown file, one per line.
anchors() {
    grep -E '^#{1,6} ' "$1" | sed -E 's/^#+ //' | while IFS= read -r heading; do
        slug "$heading"
        echo
    done
}

for page in "$root/README.md" "$docs"/*.md; do
    name=${page#"$root/"}
    # Inline links [text](target), minus web addresses.
    grep -oE '\]\([^)]+\)' "$page" | sed -E 's/^\]\((.*)\)$/\1/' | grep -vE '^[a-z]+://' |
        while IFS= read -r target; do
            file=${target%%#*}
            anchor=""
            [ "$file" != "$target" ] && anchor=${target#*#}
            dest="$page"
            [ -n "$file" ] && dest="$(dirname "$page")/$file"
            if [ ! -e "$dest" ]; then
                echo "FAIL: $name links to $target, which does not exist"
                echo x >>"$work/link-failures"
            elif [ -n "$anchor" ] && ! anchors "$dest" | grep -qxF -- "$anchor"; then
                echo "FAIL: $name links to $target, which has no heading #$anchor"
                echo x >>"$work/link-failures"
            else
                echo x >>"$work/link-passes"
            fi
        done
done
[ -f "$work/link-failures" ] && failed=$((failed + $(wc -l <"$work/link-failures")))
[ -f "$work/link-passes" ] && passed=$((passed + $(wc -l <"$work/link-passes")))

# DESIGN.md lives outside the repository: users must never be sent there.
if grep -n 'DESIGN\.md' "$root/README.md" "$docs"/*.md; then
    fail "the user documentation cites DESIGN.md"
else
    pass
fi
if grep -a -o '[^[:cntrl:]]*DESIGN\.md[^[:cntrl:]]*' "$moira"; then
    fail "a string in the moira binary cites DESIGN.md"
else
    pass
fi

# Every verb is documented; every option of a documented verb is in its section.
"$moira" --help >"$work/help"
verbs=$(sed -n '/^verbs:/,/^$/p' "$work/help" | sed -nE 's/^  ([a-z]+) .*/\1/p')
[ -n "$verbs" ] && pass || fail "moira --help lists no verbs"
for verb in $verbs; do
    if ! grep -q "moira $verb" "$docs/cli.md"; then
        fail "docs/cli.md does not mention moira $verb"
        continue
    fi
    pass
    grep -q "^## moira $verb\$" "$docs/cli.md" || continue
    awk -v h="## moira $verb" '$0 == h {on = 1; next} /^## / {on = 0} on' "$docs/cli.md" \
        >"$work/section"
    "$moira" "$verb" --help >"$work/verb-help" 2>&1
    for option in $(grep -oE -- '--[a-z][a-z-]*' "$work/verb-help" | sort -u); do
        [ "$option" = "--help" ] && continue
        if grep -qF -- "$option" "$work/section"; then
            pass
        else
            fail "docs/cli.md, section moira $verb, does not mention $option"
        fi
    done
done

# The examples of docs/formats.md, as it shows them.
expect 0 "plan the example topology for the example profile" -- "$moira" plan \
    --topology "$examples/topology.yaml" --model "$examples/model.yaml" \
    --profile "$examples/profile.yaml" --redundant 2
check "the example plan is a plan" "^moira_plan: 1" "$work/out"
expect 0 "check the hand-written example plan" -- "$moira" plan \
    --topology "$examples/topology.yaml" --model "$examples/model.yaml" \
    --check "$examples/plan.yaml"
check "the example plan is valid" "valid plan for topology docs-box" "$work/out"
expect 0 "the example plan against the config.json folder" -- "$moira" plan \
    --topology "$examples/topology.yaml" --model "$examples/hf-model" \
    --check "$examples/plan.yaml"
expect 0 "run the example plan" -- "$moira" run --topology "$examples/topology.yaml" \
    --model "$examples/model.yaml" --plan "$examples/plan.yaml" --tokens 16 --iters 1
check "the example run agrees" "^check .* -> agreed" "$work/out"
check "the example run uses the NPU" "^npu0 +npu:0 " "$work/out"
expect 0 "run the config.json folder" -- "$moira" run --model "$examples/hf-model" --tokens 8 \
    --iters 1
check "config.json folder named after its folder, bf16 from torch_dtype" \
    "^weights seeded random \(BF16\)" "$work/out"
check "config.json folder model" "^model +hf-model: 2 layers \(1 MoE\)" "$work/out"

echo "docs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

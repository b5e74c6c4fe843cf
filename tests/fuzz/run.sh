#!/usr/bin/env bash
# Runs each libFuzzer target of a MOIRA_FUZZ build for a set time, one after the other:
#   tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET...]      (make fuzz FUZZ_SECONDS=600)
# Each target starts from its seeds (tests/fuzz/seeds.txt) and its regression inputs, keeps its
# growing corpus in BUILD_DIR/fuzz-corpus/TARGET, and writes crashers to
# BUILD_DIR/fuzz-artifacts/TARGET/. The last lines of each log are printed (libFuzzer's "Done N
# runs in S second(s)"); the script fails when any target found something.
set -u
build="$1"
seconds="$2"
shift 2
root=$(cd "$(dirname "$0")/../.." && pwd)
targets="$*"
[ -n "$targets" ] || targets="safetensors_header safetensors_index model_config topology profile plan tokenizer_json jinja program_cache openai_request"
status=0
for target in $targets; do
    corpus="$build/fuzz-corpus/$target"
    artifacts="$build/fuzz-artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    # Seeds and regressions join the corpus (copied: libFuzzer writes into its first directory).
    while read -r name pattern; do
        [ "$name" = "$target" ] || continue
        for f in $root/$pattern; do
            # Named by their path: several seeds share a file name (tok-*/tokenizer.json).
            rel=${f#"$root"/}
            [ -f "$f" ] && [ "${f##*/}" != README.md ] && cp "$f" "$corpus/seed-${rel//\//_}"
        done
    done < <(grep -v '^#' "$root/tests/fuzz/seeds.txt")
    for f in "$root/tests/fuzz/regressions/$target"/*; do
        [ -f "$f" ] && [ "${f##*/}" != README.md ] && cp "$f" "$corpus/regression-${f##*/}"
    done
    log="$build/fuzz-$target.log"
    echo "fuzz: $target for ${seconds}s (log: $log)"
    # A copy runs, so rebuilding the tree meanwhile cannot swap the binary under the fuzzer.
    binary="$build/fuzz-run-$target"
    cp "$build/tests/fuzz/fuzz_$target" "$binary" || exit 1
    "$binary" "$corpus" -max_total_time="$seconds" -max_len=65536 \
        -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1
    rc=$?
    grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|artifact_prefix)' "$log" \
        | sed "s/^/  $target: /"
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: $target FOUND A PROBLEM (exit $rc); crasher in $artifacts" >&2
        status=1
    fi
done
exit $status

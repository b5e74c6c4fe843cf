#!/usr/bin/env bash
# The OpenCL program cache ($XDG_CACHE_HOME/moira/opencl-KEY.bin, runtime/program_cache.h) under
# damage: truncated to half and to nothing, a flipped payload byte, a directory, a FIFO or a
# symlink to /dev/zero in its place, a valid file of another key, a file of the old headerless
# format, and a valid file whose program lacks a kernel (CL_INVALID_KERNEL_NAME). Each time the
# next op on opencl:0 must warn, rebuild from source and succeed with correct results (no crash,
# hang or sanitizer report), and leave a regular cache file that the run after it loads without
# compiling (healed). Skipped (77) without an OpenCL device.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
show_on_fail="$work/err"

"$moira" devices | grep -q '^opencl:0 ' || {
    echo "no opencl:0 device; skipped"
    exit 77
}

# A private cache, so the damage never reaches the suite's shared one (build/cache).
export XDG_CACHE_HOME="$work/cache"
unset MOIRA_OPENCL_BUILD_OPTIONS MOIRA_FAULT MOIRA_LOG
# (The sanitizer build compiles the kernels in-process a dozen times here; tests/CMakeLists.txt
# sets ASAN_OPTIONS=intercept_tls_get_addr=0 for every test, which keeps LeakSanitizer's tracer
# from crashing at exit on PoCL's dynamic TLS.)

# run_check [VAR=VALUE...]: the gate ops of `moira check` on opencl:0 (small, and compared against
# the reference); $got is the exit code, 124 when it hung.
run_check() {
    timeout 120 env "$@" "$moira" check --backends opencl:0 --ops gate >"$work/out" 2>"$work/err"
    got=$?
}

# clean DESCRIPTION: the last run passed every gate check without a crash or sanitizer report.
clean() {
    [ "$got" -ne 124 ] || fail "$1: hung (killed after 120 s)"
    [ "$got" -eq 0 ] && passed=$((passed + 1)) || fail "$1: exit $got, expected 0"
    grep -qE '^check: [1-9][0-9]* passed, 0 failed' "$work/out" && passed=$((passed + 1)) ||
        fail "$1: stdout lacks a passing check line"
    ! grep -qE 'Sanitizer|runtime error|Segmentation|Aborted|Assertion|corrupted' "$work/err" &&
        passed=$((passed + 1)) || fail "$1: crash or sanitizer report"
}

run_check
clean "first run (compiles)"
grep -q 'compiling OpenCL kernels' "$work/err" && passed=$((passed + 1)) ||
    fail "first run did not compile"
cache=$(ls "$XDG_CACHE_HOME"/moira/opencl-*.bin 2>/dev/null)
[ -f "$cache" ] || {
    fail "no cache file written in $XDG_CACHE_HOME/moira"
    exit 1
}
key=$(basename "$cache" .bin)
key=${key#opencl-}
good="$work/good.bin"
cp "$cache" "$good"
size=$(stat -c %s "$good")

run_check
clean "second run (cached)"
! grep -q 'compiling OpenCL kernels' "$work/err" && passed=$((passed + 1)) ||
    fail "second run compiled again instead of loading the cache"

# put_key FILE HEX: writes the 16-digit key into the header (offset 16, little-endian).
put_key() {
    local bytes="" i
    for i in 14 12 10 8 6 4 2 0; do bytes+="\\x${2:$i:2}"; done
    printf "$bytes" | dd of="$1" bs=1 seek=16 conv=notrunc status=none
}

# damaged DESCRIPTION WARNING: the cache file was just damaged; the next run warns (WARNING, an
# extended regex), rebuilds and passes; the one after loads the healed file without compiling.
damaged() {
    local what="$1" warning="$2"
    run_check
    clean "$what"
    grep -qE -- "$warning" "$work/err" && passed=$((passed + 1)) ||
        fail "$what: stderr lacks /$warning/"
    [ -f "$cache" ] && [ ! -L "$cache" ] && passed=$((passed + 1)) ||
        fail "$what: the cache is not a regular file afterwards"
    run_check
    clean "$what, run after"
    ! grep -qE 'compiling OpenCL kernels|rebuilding' "$work/err" && passed=$((passed + 1)) ||
        fail "$what: the cache did not heal (the next run rebuilt again)"
}

reset_cache() {
    rm -rf "$cache"
    cp "$good" "$cache"
}

reset_cache
truncate -s $((size / 2)) "$cache"
damaged "truncated to half" "ignoring the cached OpenCL program.*truncated"

reset_cache
: >"$cache"
damaged "truncated to 0 bytes" "ignoring the cached OpenCL program.*shorter than"

reset_cache
offset=$((size / 2))
byte=$(od -An -tu1 -j "$offset" -N1 "$cache" | tr -d ' ')
printf "\\x$(printf %02x $((byte ^ 0x5a)))" | dd of="$cache" bs=1 seek="$offset" conv=notrunc \
    status=none
damaged "a flipped payload byte" "ignoring the cached OpenCL program.*checksum"

rm -rf "$cache"
mkdir "$cache"
damaged "a directory in its place" "ignoring the cached OpenCL program.*not a regular file"

rm -rf "$cache"
mkfifo "$cache"
damaged "a FIFO in its place" "ignoring the cached OpenCL program.*not a regular file"

rm -rf "$cache"
ln -s /dev/zero "$cache"
damaged "a symlink to /dev/zero in its place" "ignoring the cached OpenCL program.*symlink"

# The file the old code wrote: the driver's binary without a header.
rm -rf "$cache"
tail -c +41 "$good" >"$cache"
damaged "the old headerless format" "ignoring the cached OpenCL program.*bad magic"

# A valid file of another key: the same program built with one more define.
run_check MOIRA_OPENCL_BUILD_OPTIONS=-DMOIRA_CACHE_TEST_OTHER_KEY
clean "a run with another cache key"
other=$(ls "$XDG_CACHE_HOME"/moira/opencl-*.bin | grep -v "$key")
rm -rf "$cache"
cp "$other" "$cache"
damaged "a valid file of another key" "ignoring the cached OpenCL program.*cache key"
rm -f "$other"

# A valid file (right key, right checksum) whose program the driver loads but which lacks the
# kernel moira_silu_mul: renamed by a define when it was built.
run_check MOIRA_OPENCL_BUILD_OPTIONS=-Dmoira_silu_mul=moira_silu_mul_renamed
[ "$got" -eq 1 ] && grep -q 'CL_INVALID_KERNEL_NAME' "$work/err" && passed=$((passed + 1)) ||
    fail "a program without moira_silu_mul: exit $got, expected 1 with CL_INVALID_KERNEL_NAME"
renamed=$(ls "$XDG_CACHE_HOME"/moira/opencl-*.bin | grep -v "$key")
rm -rf "$cache"
mv "$renamed" "$cache"
put_key "$cache" "$key"
damaged "a valid file lacking a kernel" "cached OpenCL program .* is unusable.*CL_INVALID_KERNEL_NAME"

# Bandwidth and peak (issue 15): drivers report neither, so opencl:0 measures them once and caches
# them beside the program (opencl-speed-KEY.txt); the next process reads them back.
"$moira" devices --json >"$work/out" 2>"$work/err"
speed=$(ls "$XDG_CACHE_HOME"/moira/opencl-speed-*.txt 2>/dev/null | head -1)
[ -n "$speed" ] && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: no opencl-speed file beside the program cache"; }
grep -o '"name": "opencl:0".*' "$work/out" >"$work/opencl0"
check "opencl:0 reports a measured bandwidth" '"bandwidth_gbs": [0-9]*[1-9]' "$work/opencl0"
check "opencl:0 says it was measured" '"speed": "measured"' "$work/opencl0"
if [ -n "$speed" ]; then
    echo "bandwidth_gbs 123.000 tflops_f32 4.50000" >"$speed"
    "$moira" devices --json >"$work/out" 2>"$work/err"
    grep -o '"name": "opencl:0".*' "$work/out" >"$work/opencl0"
    check "the cached bandwidth is used" '"bandwidth_gbs": 123[,.}]' "$work/opencl0"
    check "the cached peak is used" '"F32": 4.5[,}]' "$work/opencl0"
fi

echo "opencl_cache: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

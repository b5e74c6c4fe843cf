# Shared opening of the CLI test scripts (sourced; not itself a test, as tests/CMakeLists.txt runs
# only tests/cli/*.sh; lib/expect.bash holds the other shared helpers): the arguments every script
# gets (the moira binary and tests/data), a scratch folder removed on exit, and pass/fail counting.
#   source "$(dirname "$0")/lib/harness.bash" "$@"
# After sourcing: $moira, $data, $golden, $placement, $work; fail MESSAGE counts a failure and
# prints it (with the last lines of the file named by $show_on_fail, when that is set).
moira="$1"
data="$2"
golden="$data/golden"
placement="$data/placement"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
show_on_fail=""

fail() {
    failed=$((failed + 1))
    echo "FAIL: $*"
    [ -z "$show_on_fail" ] || sed 's/^/  | /' "$show_on_fail" | tail -5
}

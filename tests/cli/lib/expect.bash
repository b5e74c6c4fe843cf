# Shared by CLI tests (sourced, not run: CTest runs tests/cli/*.sh only). Counts checks in
# `passed` / `failed`, keeps each command's output in $work/out and $work/err, and shows the
# first lines of whatever failed. The sourcing script sets `work` (a temporary folder).
passed=0
failed=0

expect() { # expect CODE DESCRIPTION -- command...
    local want="$1" what="$2"
    shift 3
    "$@" >"$work/out" 2>"$work/err"
    local got=$?
    if [ "$got" -eq "$want" ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $what: exit $got, expected $want"
        sed 's/^/  | /' "$work/err" | head -5
    fi
}

check() { # check DESCRIPTION PATTERN FILE
    if grep -qE -- "$2" "$3"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $1: $3 lacks /$2/"
        sed 's/^/  | /' "$3" | head -8
    fi
}

expect_stderr() { # expect_stderr PATTERN DESCRIPTION
    if grep -qE -- "$1" "$work/err"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $2: stderr lacks /$1/"
        sed 's/^/  | /' "$work/err" | head -5
    fi
}

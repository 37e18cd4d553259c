#!/usr/bin/env bash
# tests/run-parallel.sh -- runs test programs, up to JOBS at a time, and
# reports like the serial loops of "make check-unit" / "check-integration".
#
#   tests/run-parallel.sh [-j JOBS] [-t TIMEOUT] [-s] [-l LABEL] [-n NAME] PROG...
#
# Each PROG runs as "timeout TIMEOUT PROG" in the caller's environment and
# working directory (stdin from /dev/null).  With JOBS=1 its output streams
# as it runs; with more, each program's output goes to a temporary log that
# is printed, whole, when the program ends (so outputs never interleave).
# Programs start in the order given: put the long ones first.
#
# Exit status of a program: 0 passes; 77 is a skip with -s (integration
# scripts), a failure without it; anything else fails.  Output per program:
#   "  LABEL   PROG" when it starts (JOBS=1) or ends (JOBS>1), then its
#   output, then "  FAIL    PROG (exit N)" / "  SKIP    PROG" if so, and
#   "          PROG: N s" (its wall time).
# At the end: "NAME: failed: PROG..." if any failed, then
# "NAME: N passed, N failed[, N skipped]".  Exit 0 iff nothing failed (and
# 1 if no PROG was given: an empty run must not pass).
#
# The programs must be independent: their own temporary directories, ports
# picked at run time, no fixed device or path shared with another test.
set -uo pipefail

jobs=1 tmo=900 skip_ok=0 label=TEST name=tests
while getopts 'j:t:sl:n:' opt; do
    case $opt in
    j) jobs=$OPTARG ;;
    t) tmo=$OPTARG ;;
    s) skip_ok=1 ;;
    l) label=$OPTARG ;;
    n) name=$OPTARG ;;
    *) echo "usage: $0 [-j JOBS] [-t TIMEOUT] [-s] [-l LABEL] [-n NAME] PROG..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "$0: -j needs a positive number, not '$jobs'" >&2; exit 2; }
if [ $# -eq 0 ]; then
    echo "$name: no test to run"
    exit 1
fi

logdir=$(mktemp -d "${TMPDIR:-/tmp}/bg-run-parallel.XXXXXX") || exit 1
declare -A PID_PROG=() PID_START=() PID_LOG=()
pass=0 fail=0 skip=0 failed=

cleanup() {
    local p
    for p in "${!PID_PROG[@]}"; do kill -TERM "$p" 2>/dev/null; done
    rm -rf "$logdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# result PROG RC SECONDS [LOG]: prints the program's report and counts it.
result() {
    local prog=$1 rc=$2 secs=$3 log=${4:-}
    if [ -n "$log" ]; then
        printf '  %-7s %s\n' "$label" "$prog"
        cat "$log"
    fi
    case $rc in
    0) pass=$((pass + 1)) ;;
    77)
        if [ "$skip_ok" = 1 ]; then
            echo "  SKIP    $prog"
            skip=$((skip + 1))
        else
            echo "  FAIL    $prog (exit $rc)"
            fail=$((fail + 1))
            failed="$failed $prog"
        fi
        ;;
    *)
        echo "  FAIL    $prog (exit $rc)"
        fail=$((fail + 1))
        failed="$failed $prog"
        ;;
    esac
    echo "          $prog: $secs s"
}

# Waits for any running program and reports it.
reap() {
    local p= rc=0
    wait -n -p p || rc=$?
    [ -n "$p" ] || return 0
    result "${PID_PROG[$p]}" "$rc" $((SECONDS - PID_START[$p])) "${PID_LOG[$p]}"
    unset "PID_PROG[$p]" "PID_START[$p]" "PID_LOG[$p]"
}

n=0
for prog in "$@"; do
    if [ "$jobs" = 1 ]; then
        printf '  %-7s %s\n' "$label" "$prog"
        start=$SECONDS
        rc=0
        timeout "$tmo" "$prog" </dev/null || rc=$?
        result "$prog" "$rc" $((SECONDS - start))
        continue
    fi
    while [ "${#PID_PROG[@]}" -ge "$jobs" ]; do reap; done
    n=$((n + 1))
    timeout "$tmo" "$prog" </dev/null >"$logdir/$n.log" 2>&1 &
    PID_PROG[$!]=$prog
    PID_START[$!]=$SECONDS
    PID_LOG[$!]=$logdir/$n.log
done
while [ "${#PID_PROG[@]}" -gt 0 ]; do reap; done

[ -z "$failed" ] || echo "$name: failed:$failed"
summary="$pass passed, $fail failed"
[ "$skip" -eq 0 ] || summary="$summary, $skip skipped"
echo "$name: $summary"
[ "$fail" -eq 0 ]

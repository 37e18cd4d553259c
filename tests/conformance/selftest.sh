#!/bin/bash
# tests/conformance/selftest.sh -- the conformance suite must fail on drivers
# that break the contract: runs it on tests/conformance/selftest-stacks.txt
# (a raw window declared resizable, a null-co returning garbage) and checks
# that it exits 1, marks exactly those cells FAIL and counts no skip as a
# pass. Run by "make check-conformance".
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CONFORMANCE=${CONFORMANCE:-$HERE/../../build/tests/conformance/conformance}
out=$("$CONFORMANCE" --stacks "$HERE/selftest-stacks.txt" --filter-stacks 'lying-resize,garbage-reads' \
    --filter-cases 'truncate_grow,truncate_no_perm,read_initial,rw_reopen' 2>&1)
rc=$?
fail=0
expect() { # DESC CONDITION...
    local d=$1
    shift
    if "$@"; then echo "  ok    $d"; else echo "  FAIL  $d"; fail=1; fi
}
row() { grep -E "^$1 " <<<"$out" | tr -s ' '; }
expect "exit status 1 (got $rc)" [ "$rc" = 1 ]
expect "lying-resize: trunc FAIL, read pass" [ "$(row lying-resize | cut -d' ' -f2,9)" = "pass FAIL" ]
expect "garbage-reads: read FAIL" [ "$(row garbage-reads | cut -d' ' -f2)" = "FAIL" ]
expect "truncate_grow reported with ENOTSUP" grep -q "lying-resize/trunc:truncate_grow:.*Operation not supported" <<<"$out"
expect "null-co's missing persistence is a skip, not a pass" \
    grep -q "garbage-reads.*" <<<"$(grep -A2 'needs persistent' <<<"$out")"
expect "summary counts 2 failures, 1 skip" \
    grep -q "conformance: 2 stacks, 7 cases run, 5 passed, 2 failed, 1 skipped" <<<"$out"
if [ $fail != 0 ]; then
    echo "selftest.sh: the suite did not fail as it must; its output:"
    sed 's/^/    /' <<<"$out"
    exit 1
fi
echo "selftest.sh: the suite reports broken drivers"

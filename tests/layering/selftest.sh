#!/usr/bin/env bash
# tests/layering/selftest.sh -- shows that scripts/check-layering.py passes a
# clean tree and fails, naming FILE:LINE and the rule, on each kind of bad
# include. Run by "make check-layering" before the real check.
#
# A small clean fixture tree is written to a temporary directory; each case
# adds one bad include to a copy of it. A last case copies the real tree's
# sources and injects two bad includes, which must be reported whatever
# else is reported there.
set -euo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHECK=$SRCDIR/scripts/check-layering.py
WORK=$(mktemp -d "${TMPDIR:-/tmp}/layering-selftest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "  ok      $1"; }
bad() { fail=$((fail + 1)); echo "  FAIL    $1"; }

# put DIR FILE LINE...: writes FILE under DIR with the given lines.
put() {
    local dir=$1 file=$2
    shift 2
    mkdir -p "$dir/$(dirname "$file")"
    printf '%s\n' "$@" >"$dir/$file"
}

# A tree that follows every rule: each kind of file includes what it may.
clean_fixture() {
    local d=$1
    put "$d" util/coroutine.h '#pragma once' '#include <cstdint>'
    put "$d" util/aio.h '#pragma once' '#include "util/coroutine.h"'
    put "$d" qapi/block-options.h '#pragma once' '#include "util/aio.h"'
    put "$d" block/block-common.h '#pragma once'
    put "$d" block/block.h '#pragma once' '#include "block/block-common.h"' '#include "qapi/block-options.h"' \
        '#include "util/aio.h"'
    put "$d" block/copy.h '#pragma once' '#include "block/block.h"'
    put "$d" block/image-mgmt.h '#pragma once'
    put "$d" block/driver-hooks.h '#pragma once' '#include "block/block-common.h"'
    put "$d" block/block-driver.h '#pragma once' '#include "block/block.h"'
    put "$d" block/drivers.h '#pragma once' '#include "block/block-driver.h"'
    put "$d" block/drivers.cc '#include "block/drivers.h"'
    put "$d" block/io.cc '#include "block/block-driver.h"' '#include "util/aio.h"'
    put "$d" block/raw-format.h '#pragma once' '#include "block/block-driver.h"'
    put "$d" block/raw-format.cc '#include "block/raw-format.h"' '#include "block/block.h"' '#include "util/aio.h"'
    put "$d" block/null.cc '#include "block/block-driver.h"'
    put "$d" block/file-posix.cc '#include "block/block-driver.h"' '#include "util/aio.h"'
    put "$d" block/qcow2/qcow2.h '#pragma once' '#include "block/block-driver.h"'
    put "$d" block/qcow2/qcow2.cc '#include "block/qcow2/qcow2.h"' '#include "block/image-mgmt.h"'
    put "$d" export/export.h '#pragma once' '#include "block/block.h"' '#include "qapi/block-options.h"'
    put "$d" export/fuse.cc '#include "export/export.h"' '#include "util/aio.h"' '#include <fuse.h>'
    put "$d" monitor/qmp.h '#pragma once' '#include "block/block.h"' '#include "export/export.h"'
    put "$d" tools/img.h '#pragma once' '#include "block/block.h"' '#include "monitor/qmp.h"'
    put "$d" tools/io.cc '#include "tools/img.h"' '#include "block/copy.h"' '#include "block/block-common.h"' \
        '#include "export/export.h"' '// #include "block/raw-format.h" is not an include'
}

# expect_violation NAME FILE INCLUDE RULE: a copy of the clean fixture with
# INCLUDE appended to FILE must fail with exactly one violation, reported as
# FILE:LINE: [RULE].
expect_violation() {
    local name=$1 file=$2 inc=$3 rule=$4
    local d=$WORK/$name
    cp -a "$WORK/clean" "$d"
    mkdir -p "$d/$(dirname "$file")"
    echo "#include \"$inc\"" >>"$d/$file"
    local line rc=0 out
    line=$(wc -l <"$d/$file")
    out=$("$CHECK" "$d" 2>&1) || rc=$?
    if [ "$rc" -ne 1 ]; then
        bad "$name: exit status $rc, expected 1"
        printf '%s\n' "$out" | sed 's/^/          /'
    elif ! grep -qF "$file:$line: [$rule] " <<<"$out"; then
        bad "$name: no '$file:$line: [$rule]' in the output"
        printf '%s\n' "$out" | sed 's/^/          /'
    elif [ "$(grep -c ': \[' <<<"$out")" -ne 1 ]; then
        bad "$name: more than one violation reported"
        printf '%s\n' "$out" | sed 's/^/          /'
    else
        ok "$name: $(grep -F "$file:$line:" <<<"$out" | cut -c1-100)"
    fi
}

clean_fixture "$WORK/clean"
rc=0
out=$("$CHECK" "$WORK/clean" 2>&1) || rc=$?
if [ "$rc" -eq 0 ]; then ok "clean fixture passes"; else bad "clean fixture: exit $rc"; printf '%s\n' "$out"; fi

expect_violation util-includes-block util/aio.h block/block.h util
expect_violation util-includes-qapi util/new.cc qapi/block-options.h util
expect_violation util-includes-export util/coroutine.h export/export.h util
expect_violation util-includes-tools util/aio.h tools/img.h util
expect_violation block-includes-export block/io.cc export/export.h block
expect_violation block-includes-tools block/copy.h tools/img.h block
expect_violation driver-includes-driver block/qcow2/qcow2.cc block/raw-format.h driver
expect_violation driver-includes-qcow2 block/null.cc block/qcow2/qcow2.h driver
expect_violation driver-includes-registry block/qcow2/qcow2-create.cc block/drivers.h driver
expect_violation new-driver-file block/qcow2/qcow2-new.h block/raw-format.h driver
expect_violation unlisted-new-driver block/nbd.cc block/qcow2/qcow2.h driver
expect_violation tools-includes-raw tools/io.cc block/raw-format.h consumer
expect_violation tools-includes-contract tools/img.h block/block-driver.h consumer
expect_violation export-includes-registry export/fuse.cc block/drivers.h consumer
expect_violation export-includes-qcow2 export/export.h block/qcow2/qcow2.h consumer
expect_violation export-includes-hooks export/fuse.cc block/driver-hooks.h consumer
expect_violation export-includes-monitor export/fuse.cc monitor/qmp.h monitor
expect_violation monitor-includes-tools monitor/qmp.h tools/img.h monitor
expect_violation monitor-includes-qcow2 monitor/qmp.h block/qcow2/qcow2.h consumer
expect_violation block-includes-monitor block/io.cc monitor/qmp.h block

# The real tree, with two bad includes injected: both must be named.
real=$WORK/real
mkdir -p "$real"
(cd "$SRCDIR" && find util block export monitor tools qapi \( -name '*.h' -o -name '*.cc' \) -print0 |
    xargs -0 cp --parents -t "$real")
uhdr=$(cd "$real" && ls util/*.h | head -1)
tsrc=$(cd "$real" && ls tools/*.cc | head -1)
echo '#include "block/block.h"' >>"$real/$uhdr"
echo '#include "block/raw-format.h"' >>"$real/$tsrc"
rc=0
out=$("$CHECK" "$real" 2>&1) || rc=$?
uline=$(wc -l <"$real/$uhdr")
tline=$(wc -l <"$real/$tsrc")
if [ "$rc" -eq 1 ] && grep -qF "$uhdr:$uline: [util] " <<<"$out" && grep -qF "$tsrc:$tline: [consumer] " <<<"$out"; then
    ok "real tree + injected includes: $uhdr:$uline and $tsrc:$tline reported"
else
    bad "real tree + injected includes: exit $rc, $uhdr:$uline [util] / $tsrc:$tline [consumer] not both reported"
    printf '%s\n' "$out" | sed 's/^/          /'
fi

echo "layering selftest: $pass passed, $fail failed"
[ "$fail" -eq 0 ]

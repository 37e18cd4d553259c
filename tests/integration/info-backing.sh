#!/bin/bash
# tests/integration/info-backing.sh -- img info opens the image without its
# backing file, as qemu-img info does: a missing or looping backing file
# does not stop it; --backing-chain walks the chain image by image (each
# opened alone) and fails on a missing one or a loop with qemu-img's text.
# Judged by qemu-img: the same output (after the program name) and status.
set -u
BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not installed"; exit 77; }
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-info-backing.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
BLOCKGRAPH=$(cd "$(dirname "$BLOCKGRAPH")" && pwd -P)/$(basename "$BLOCKGRAPH")
cd "$WORK" || exit 1
failures=0

mkdir sub
qemu-img create -q -f qcow2 -b nonexist.qcow2 -F qcow2 -u miss.qcow2 1M
qemu-img create -q -f qcow2 -b loop2.qcow2 -F qcow2 -u loop1.qcow2 1M
qemu-img create -q -f qcow2 -b loop1.qcow2 -F qcow2 -u loop2.qcow2 1M
qemu-img create -q -f qcow2 sub/base.qcow2 1M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 sub/mid.qcow2
qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 top.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F raw -u sub/wrongfmt.qcow2 1M
printf 'odd' >odd.raw

for img in miss.qcow2 loop1.qcow2 top.qcow2 sub/wrongfmt.qcow2 odd.raw \
           "$WORK/top.qcow2" 'json:{"driver":"qcow2","file":{"driver":"file","filename":"sub/mid.qcow2"}}'; do
    for opts in "" "--output=json" "--backing-chain" "--backing-chain --output=json"; do
        want=$(qemu-img info $opts "$img" 2>&1; echo "status $?")
        got=$("$BLOCKGRAPH" img info $opts "$img" 2>&1 | sed 's/^blockgraph img: /qemu-img: /'; echo "status ${PIPESTATUS[0]}")
        if [ "$got" = "$want" ]; then
            echo "  ok    info $opts $img: $(echo "$got" | head -1)"
        else
            echo "  FAIL  info $opts $img:"; diff <(echo "$want") <(echo "$got") | head -10
            failures=$((failures + 1))
        fi
    done
done
if [ $failures -ne 0 ]; then
    echo "FAIL: $failures check(s) failed"
    exit 1
fi
echo "PASS"

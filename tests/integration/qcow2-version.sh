#!/bin/bash
# tests/integration/qcow2-version.sh -- images with the qcow2 magic and a
# version other than 2 or 3: probed as qcow2 from version 2 up and refused
# with qemu-img's "Unsupported qcow2 version N" (img info/check/map, io);
# -f qcow2 refuses versions 0 and 1 alike; version 0 probes as raw. Judged
# by qemu-img/qemu-io: same text after the program name, same status.
# Version 1 is the older qcow format, which QEMU opens with a driver we do
# not have: ours names it (checked on its own).
set -u
BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || { echo "SKIP: qemu-img/qemu-io not installed"; exit 77; }
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-qcow2-version.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
BLOCKGRAPH=$(cd "$(dirname "$BLOCKGRAPH")" && pwd -P)/$(basename "$BLOCKGRAPH")
cd "$WORK" || exit 1
failures=0
ok() { echo "  ok    $*"; }
bad() { echo "  FAIL  $*"; failures=$((failures + 1)); }

for v in 0 1 4 5 255; do
    qemu-img create -q -f qcow2 v$v.qcow2 1M
    printf "\\x00\\x00\\x00\\x$(printf %02x $v)" | dd of=v$v.qcow2 bs=1 seek=4 conv=notrunc status=none
done
qemu-img create -q -f qcow v1.qcow 1M

for img in v0.qcow2 v1.qcow2 v4.qcow2 v5.qcow2 v255.qcow2 v1.qcow; do
    for cmd in "info" "info -f qcow2" "info --output=json" "check" "map" "info -f raw"; do
        # Version 1 probed: QEMU's qcow driver takes it (below).
        case "$img:$cmd" in v1.qcow*:info | v1.qcow*:"info --output=json" | v1.qcow*:check | v1.qcow*:map) continue;; esac
        want=$(qemu-img $cmd $img 2>&1; echo "status $?")
        got=$("$BLOCKGRAPH" img $cmd $img 2>&1 | sed 's/^blockgraph img: /qemu-img: /'; echo "status ${PIPESTATUS[0]}")
        [ "$got" = "$want" ] && ok "img $cmd $img: $(echo "$got" | head -1)" || bad "img $cmd $img: '$got', qemu-img '$want'"
    done
    case $img in v1.qcow*) continue;; esac
    # The first line and the status (whole outputs are taken: no SIGPIPE).
    want=$(out=$(qemu-io -c 'read 0 512' $img 2>&1); st=$?; echo "${out%%$'\n'*}"; echo "status $st")
    got=$(out=$("$BLOCKGRAPH" io -c 'read 0 512' $img 2>&1); st=$?; out=${out%%$'\n'*}
          echo "${out/#blockgraph io: /qemu-io: }"; echo "status $st")
    [ "$got" = "$want" ] && ok "io $img: $(echo "$got" | head -1)" || bad "io $img: '$got', qemu-io '$want'"
done
# A qcow (version 1) image probed: named, for every command (QEMU opens it).
for img in v1.qcow v1.qcow2; do
    want="Could not open '$img': Unsupported image format 'qcow' (qcow version 1): only qcow2 (versions 2 and 3) is supported"
    for cmd in info check map; do
        got=$("$BLOCKGRAPH" img $cmd $img 2>&1)
        [ $? = 1 ] && [ "$got" = "blockgraph img: $want" ] && ok "img $cmd $img: $got" || bad "img $cmd $img: '$got'"
    done
done

if [ $failures -ne 0 ]; then
    echo "FAIL: $failures check(s) failed"
    exit 1
fi
echo "PASS"

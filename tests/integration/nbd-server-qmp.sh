#!/bin/bash
# tests/integration/nbd-server-qmp.sh -- runs nbd-server-qmp.py (the NBD
# server over QMP, compared with qemu-storage-daemon; see there) with the
# QMP test client (qmp.py), as lib-qmp.sh runs the qmp-*.py scripts.
set -u
here=$(cd "$(dirname "$0")" && pwd)
for t in python3 qemu-img qemu-io nbdinfo timeout; do
    if ! command -v "$t" >/dev/null; then
        [ -n "${CI:-}" ] && { echo "FAIL: $t is not installed (CI is set)"; exit 1; }
        echo "SKIP: $t is not installed"
        exit 77
    fi
done
export QMP_TARGET=${QMP_TARGET:-blockgraph}
if [ "$QMP_TARGET" != qsd ]; then
    BLOCKGRAPH=${BLOCKGRAPH:-$here/../../build/blockgraph}
    if [ ! -x "$BLOCKGRAPH" ]; then
        echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
        exit 1
    fi
    BLOCKGRAPH=$(cd "$(dirname "$BLOCKGRAPH")" && pwd -P)/$(basename "$BLOCKGRAPH")
    export BLOCKGRAPH
fi
QMP_WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-nbd-server-qmp.XXXXXX")
export QMP_WORK
# qmp.py stops the daemons it started (also on the timeout's SIGTERM).
cleanup() { rm -rf "$QMP_WORK"; }
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
timeout -k 15 "${QMP_BUDGET:-120}" python3 "$here/nbd-server-qmp.py"

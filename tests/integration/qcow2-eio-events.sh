#!/bin/bash
# tests/integration/qcow2-eio-events.sh -- EIO injected on every qcow2
# metadata event, through a running daemon, with qemu-storage-daemon as the
# oracle (the cases and the table of expectations are in
# qcow2-eio-events.py).
#
# For each event, a daemon runs
#   file <- blkdebug(inject-error: event E, errno 5, once) <- qcow2
#        <- writable FUSE export (+ a QMP monitor)
# on a prepared image, and the test drives the request that reaches E:
# writes through the mount at the right offsets (fresh clusters, an L1
# table that must grow, refcount blocks that must be allocated, partial
# writes over backing or snapshot data for COW), truncate through the mount,
# QMP commands (block_resize, internal snapshot create and delete), or the
# daemon's own close (a persistent dirty bitmap is stored then). Where QEMU
# has no event for a write (the snapshot table), a rule on event "none" with
# the "sector" of that write (found by a dry run) fails it. Checks, per
# case:
#   - the request fails with the errno QEMU gives (EIO, through the mount;
#     the QMP error; an error message at close), or nothing fails where
#     QEMU never raises the event on that path;
#   - the FUSE export returns the error (no hang: every request runs in a
#     child with a timeout), the daemon stays alive and mounted, and later
#     writes and reads through the same mount work and read back exactly;
#   - the daemon exits 0 on quit; qemu-img check exits as with QEMU (0, or
#     3 for leaks; never corruption); the corrupt bit is set only where
#     QEMU sets it;
#   - every write that reported success reads back (qemu-img compare
#     against an expected raw image the test builds; the sectors of a
#     failed write may hold the old or the new data).
#
# QMP_TARGET=qsd runs the same cases against qemu-storage-daemon: the table
# of expectations holds for both. EIO_CASES=name1,name2 runs only those
# cases; EIO_BUDGET is the time budget in seconds (default 150; the run
# takes about 40 s on an idle machine, 100 s on a loaded 2-core one). Exit 0 pass, 1 fail, 77 skip (a tool is missing; with CI set that
# is a failure).
set -u
here=$(cd "$(dirname "$0")" && pwd)

missing() {
    if [ -n "${CI:-}" ]; then
        echo "FAIL: $* (CI is set: the test must not skip)"
        exit 1
    fi
    echo "SKIP: $*"
    exit 77
}
for t in python3 qemu-img qemu-io timeout fusermount3; do
    command -v "$t" >/dev/null || missing "$t is not installed"
done
[ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ] || missing "/dev/fuse is not accessible"
export QMP_TARGET=${QMP_TARGET:-blockgraph}
if [ "$QMP_TARGET" = qsd ]; then
    command -v qemu-storage-daemon >/dev/null || missing "qemu-storage-daemon is not installed"
else
    BLOCKGRAPH=${BLOCKGRAPH:-$here/../../build/blockgraph}
    if [ ! -x "$BLOCKGRAPH" ]; then
        echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
        exit 1
    fi
    BLOCKGRAPH=$(cd "$(dirname "$BLOCKGRAPH")" && pwd -P)/$(basename "$BLOCKGRAPH")
    export BLOCKGRAPH
fi

# Every daemon and mount lives under QMP_WORK; the Python side cleans up
# itself, this trap covers a script killed outright (the daemons run in
# sessions of their own; their pids are in QMP_WORK/daemon.pids).
QMP_WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-qcow2-eio.XXXXXX")
export QMP_WORK
cleanup() {
    local pid
    if [ -f "$QMP_WORK/daemon.pids" ]; then
        while read -r pid; do kill -KILL "$pid" 2>/dev/null; done <"$QMP_WORK/daemon.pids"
        sleep 0.2
    fi
    awk -v w="$QMP_WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo |
        while read -r mp; do fusermount3 -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null; done
    rm -rf "$QMP_WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

timeout -k 15 "${EIO_BUDGET:-150}" python3 "$here/qcow2-eio-events.py"

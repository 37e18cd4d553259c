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
QMP_BUDGET=${EIO_BUDGET:-150} QMP_NEEDS_FUSE=1
. "$(dirname "$0")/lib-qmp.sh" qcow2-eio qcow2-eio-events.py

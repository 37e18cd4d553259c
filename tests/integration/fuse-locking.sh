#!/bin/bash
# tests/integration/fuse-locking.sh -- image locking between FUSE export
# daemons that share one image, readers first. (A writer first and a second
# writer or reader refused: daemon-locking.sh.)
#
# For each format:
#  (a) two daemons export the image read-only (nodes read-only=on): both
#      mount and read the same data;
#  (b) a third daemon exporting it writable joins them: for raw (no
#      metadata) the read-only exports share writes, as in QEMU, so it
#      mounts, and what it writes is read through the readers' mounts; a
#      format with metadata (qcow2) never shares write on its file, so the
#      writer is refused with QEMU's message (Failed to get "write" lock /
#      Is another process using the image [img]?) and mounts nothing;
#  (c) once all stopped (SIGTERM, exit 0, unmounted), no lock is left:
#      qemu-io writes the image.
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools qemu-io

M=$((1 << 20))

for fmt in $FUSE_FORMATS; do
    echo "format $fmt"
    rm -f img mp1 mp2 mpw
    head -c $((4 * M)) /dev/urandom >data
    timeout 60 qemu-img convert -f raw -O "$fmt" data img
    touch mp1 mp2 mpw

    # (a)
    fuse_blockdevs "$fmt" img read-only=on read-only=on
    if fuse_start r1 "${BLOCKDEVS[@]}" --export type=fuse,id=r1,node-name=fmt0,mountpoint=mp1 &&
        fuse_start r2 "${BLOCKDEVS[@]}" --export type=fuse,id=r2,node-name=fmt0,mountpoint=mp2; then
        ok "(a) $fmt: two read-only exports of one image"
        check "(a) $fmt: both read the data" eval 'cmp mp1 data && cmp mp2 data'
    else
        bad "(a) $fmt: a second read-only export was refused"
    fi

    # (b)
    head -c $M /dev/urandom >new
    fuse_blockdevs "$fmt" img
    if [ "$fmt" = raw ]; then
        if fuse_start w "${BLOCKDEVS[@]}" --export type=fuse,id=w,node-name=fmt0,mountpoint=mpw,writable=on; then
            ok "(b) $fmt: a writer joins the read-only exports"
            fill mpw $M $M new
            fill data $M $M new
            tio sync mpw
            check "(b) $fmt: the readers read what it wrote" eval 'cmp mp1 data && cmp mp2 data'
            fuse_stop_check w "(b) $fmt writer"
        else
            bad "(b) $fmt: the writer was refused"
        fi
    else
        rc=0
        timeout -k 5 30 "$BLOCKGRAPH" daemon "${BLOCKDEVS[@]}" \
            --export type=fuse,id=w,node-name=fmt0,mountpoint=mpw,writable=on </dev/null >w.out 2>w.err || rc=$?
        FUSE_ALL_MPS+=("$WORK/mpw")
        if [ $rc = 1 ] && grep -qF 'Failed to get "write" lock' w.err &&
            grep -qF 'Is another process using the image [' w.err; then
            ok "(b) $fmt: the writer is refused with the locking message"
        else
            bad "(b) $fmt: writer: exit $rc, stderr: $(cat w.err)"
        fi
        if fuse_mounted "$WORK/mpw"; then bad "(b) $fmt: mpw is mounted"; else ok "(b) $fmt: nothing mounted"; fi
    fi

    # (c)
    [ -n "${FUSE_TPID[r1]:-}" ] && fuse_stop_check r1 "(c) $fmt reader 1"
    [ -n "${FUSE_TPID[r2]:-}" ] && fuse_stop_check r2 "(c) $fmt reader 2"
    out=$(timeout 30 qemu-io -f "$fmt" -c 'write -P 7 0 4k' img 2>&1) && rc=0 || rc=$?
    [ $rc = 0 ] && ok "(c) $fmt: no lock left: qemu-io writes" || bad "(c) $fmt: qemu-io: exit $rc: $out"
    img_check "(c) $fmt" img "$fmt"
done
finish

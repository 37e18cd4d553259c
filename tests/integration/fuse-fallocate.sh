#!/bin/bash
# tests/integration/fuse-fallocate.sh -- fallocate(1) on a FUSE export.
#
# For each format, both nodes (file and format) opened with discard=unmap --
# as in QEMU, a node without it drops the may-unmap flag of write-zeroes
# requests passing through it -- 16 MiB with 8 MiB of random data at 1 MiB:
#  - fallocate -p (punch hole, keeps the size), aligned and unaligned: the
#    range reads as zeros, the rest is intact, and the image file's
#    st_blocks shrinks (raw: by at least the punched size), as does the
#    mount's;
#  - fallocate -z (zero range): inside the image (unaligned) reads zeros;
#    past EOF grows the image; with -n (keep size) past EOF does not;
#  - fallocate -l past EOF (mode 0) grows the image with preallocation: the
#    new area reads as zeros and the image file's st_blocks grows; so do
#    mode 0 straddling EOF and beyond EOF with a gap; mode 0
#    inside the image, collapse-range (-c) and insert-range (-i) fail with
#    "Operation not supported";
#  - after SIGTERM: qemu-img compare against the reference, qemu-img check.
# Without discard=unmap (on either node), a punch either zeroes the range or fails with
# "Operation not supported" leaving the data as it was.
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools fallocate

M=$((1 << 20))
size_is() { [ "$(stat -c %s "$1")" = "$2" ]; }
blocks_below() { [ "$(stat -c %b "$1")" -le "$2" ]; }
blocks_above() { [ "$(stat -c %b "$1")" -ge "$2" ]; }
zero_ref() { tio dd if=/dev/zero of=ref bs=65536 seek="$1" count="$2" oflag=seek_bytes iflag=count_bytes \
    conv=notrunc status=none; }

for fmt in $FUSE_FORMATS; do
    echo "format $fmt"
    rm -f img ref mp
    fuse_image "$fmt" img $((16 * M))
    truncate -s $((16 * M)) ref
    touch mp
    head -c $((8 * M)) /dev/urandom >data
    fuse_blockdevs "$fmt" img discard=unmap discard=unmap
    if ! fuse_start d "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on; then
        bad "$fmt: daemon did not start"
        continue
    fi
    fill mp $M $((8 * M)) data
    fill ref $M $((8 * M)) data
    tio sync mp

    # Punch holes.
    b_img=$(stat -c %b img)
    b_mp=$(stat -c %b mp)
    if tio fallocate -p -o $((2 * M)) -l $M mp; then
        ok "$fmt: fallocate -p of 1M"
    else
        bad "$fmt: fallocate -p of 1M failed"
    fi
    zero_ref $((2 * M)) $M
    check "$fmt: punched range reads as zeros, the rest intact" cmp mp ref
    check "$fmt: size unchanged by the punch" size_is mp $((16 * M))
    want=$((b_img - 1))
    [ "$fmt" = raw ] && want=$((b_img - M / 512))
    if blocks_below img $want; then
        ok "$fmt: image file's st_blocks shrank ($b_img -> $(stat -c %b img))"
    else
        bad "$fmt: image file's st_blocks $b_img -> $(stat -c %b img), want <= $want"
    fi
    if eventually blocks_below mp $((b_mp - 1)); then
        ok "$fmt: mount's st_blocks shrank ($b_mp -> $(stat -c %b mp))"
    else
        bad "$fmt: mount's st_blocks $b_mp -> $(stat -c %b mp)"
    fi
    if tio fallocate -p -o $((5 * M + 100)) -l 200000 mp; then
        ok "$fmt: unaligned fallocate -p"
    else
        bad "$fmt: unaligned fallocate -p failed"
    fi
    zero_ref $((5 * M + 100)) 200000
    check "$fmt: unaligned punched range reads as zeros, the rest intact" cmp mp ref

    # Zero ranges.
    if tio fallocate -z -o $((7 * M + 3)) -l 100001 mp; then
        ok "$fmt: unaligned fallocate -z"
    else
        bad "$fmt: unaligned fallocate -z failed"
    fi
    zero_ref $((7 * M + 3)) 100001
    check "$fmt: zeroed range reads as zeros, the rest intact" cmp mp ref
    if tio fallocate -z -o $((15 * M)) -l $((2 * M)) mp && eventually size_is mp $((17 * M)); then
        ok "$fmt: fallocate -z past EOF grows to 17M"
    else
        bad "$fmt: fallocate -z past EOF: size $(stat -c %s mp)"
    fi
    truncate -s $((17 * M)) ref
    if tio fallocate -n -z -o $((16 * M)) -l $((4 * M)) mp; then
        ok "$fmt: fallocate -n -z past EOF"
    else
        bad "$fmt: fallocate -n -z past EOF failed"
    fi
    sleep 1.1   # let a cached size expire before asserting it did not change
    check "$fmt: keep-size zero range did not grow" size_is mp $((17 * M))
    check "$fmt: contents after zero ranges" cmp mp ref

    # Mode 0.
    b_img=$(stat -c %b img)
    if tio fallocate -o $((17 * M)) -l $((3 * M)) mp && eventually size_is mp $((20 * M)); then
        ok "$fmt: fallocate -l past EOF grows to 20M"
    else
        bad "$fmt: fallocate -l past EOF: size $(stat -c %s mp)"
    fi
    truncate -s $((20 * M)) ref
    want=$((b_img + 1))
    [ "$fmt" = raw ] && want=$((b_img + 3 * M / 512))
    if blocks_above img $want; then
        ok "$fmt: preallocation: image file's st_blocks grew ($b_img -> $(stat -c %b img))"
    else
        bad "$fmt: preallocation: image file's st_blocks $b_img -> $(stat -c %b img), want >= $want"
    fi
    if tio fallocate -o $((20 * M - 4096)) -l $M mp && eventually size_is mp $((21 * M - 4096)); then
        ok "$fmt: fallocate (mode 0) straddling EOF grows"
    else
        bad "$fmt: fallocate (mode 0) straddling EOF: size $(stat -c %s mp), want $((21 * M - 4096))"
    fi
    if tio fallocate -o $((22 * M)) -l $M mp && eventually size_is mp $((23 * M)); then
        ok "$fmt: fallocate (mode 0) beyond EOF, leaving a gap, grows"
    else
        bad "$fmt: fallocate (mode 0) beyond EOF: size $(stat -c %s mp), want $((23 * M))"
    fi
    truncate -s $((23 * M)) ref
    out=$(tio fallocate -o 0 -l $M mp 2>&1) && rc=0 || rc=$?
    if [ $rc != 0 ] && [[ $out == *"Operation not supported"* ]]; then
        ok "$fmt: fallocate (mode 0) inside the image: Operation not supported"
    else
        bad "$fmt: fallocate (mode 0) inside the image: exit $rc: $out"
    fi
    for m in -c -i; do
        out=$(tio fallocate $m -o 0 -l $M mp 2>&1) && rc=0 || rc=$?
        if [ $rc != 0 ] && [[ $out == *"Operation not supported"* ]]; then
            ok "$fmt: fallocate $m: Operation not supported"
        else
            bad "$fmt: fallocate $m: exit $rc: $out"
        fi
    done
    check "$fmt: contents at the end" cmp mp ref
    fuse_stop_check d "$fmt"
    img_compare "$fmt" img "$fmt" ref
    img_check "$fmt" img "$fmt"

    # Without discard=unmap.
    fuse_blockdevs "$fmt" img
    if fuse_start n "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on; then
        out=$(tio fallocate -p -o $((8 * M)) -l $M mp 2>&1) && rc=0 || rc=$?
        if [ $rc = 0 ]; then
            zero_ref $((8 * M)) $M
            check "$fmt: no discard=unmap: punch zeroes the range" cmp mp ref
        elif [[ $out == *"Operation not supported"* ]]; then
            check "$fmt: no discard=unmap: punch not supported, data unchanged" cmp mp ref
        else
            bad "$fmt: no discard=unmap: punch: exit $rc: $out"
        fi
        fuse_stop_check n "$fmt (no discard=unmap)"
        img_compare "$fmt (no discard=unmap)" img "$fmt" ref
    else
        bad "$fmt: daemon without discard=unmap did not start"
    fi
done
finish

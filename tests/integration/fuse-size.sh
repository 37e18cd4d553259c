#!/bin/bash
# tests/integration/fuse-size.sh -- the size of a FUSE export: truncate,
# growable and non-growable writes past EOF, read-only exports, modes.
#
# For each format:
#  (a) writable, not growable: "truncate -s" on the mountpoint grows (new
#      area reads as zeros) and shrinks the image; a write at EOF fails with
#      "No space left on device" and changes nothing; a write straddling EOF
#      writes what fits, then fails with ENOSPC (also a 4 MiB write, which
#      the kernel splits into 1 MiB requests); chmod changes the permission
#      bits shown by stat; after SIGTERM qemu-img compare against the
#      reference and the virtual size;
#  (b) growable=on: dd past EOF grows the image to exactly the end of the
#      write (the gap reads as zeros), O_APPEND appends; eight concurrent
#      growing writes leave the image ending at the furthest one and holding
#      all of them; after SIGTERM qemu-img compare and virtual size;
#  (c) read-only (writable=off): mode 0400; a write, "truncate -s" and
#      "chmod +w" fail with "Read-only file system"; reads work and equal
#      the image; the image is unchanged.
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools

M=$((1 << 20))
size_is() { [ "$(stat -c %s "$1")" = "$2" ]; }
# The image's size: a raw file's own size (qemu-img rounds it up to 512).
vsize() {
    if [ "$1" = raw ]; then
        stat -c %s "$2"
    else
        qemu-img info -f "$1" --output=json "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'
    fi
}
# expect_fail DESC ERRTEXT CMD...: CMD fails and its stderr contains ERRTEXT.
expect_fail() {
    local d=$1 text=$2 out rc=0
    shift 2
    out=$(tio "$@" 2>&1) || rc=$?
    if [ $rc != 0 ] && [[ $out == *"$text"* ]]; then
        ok "$d: fails with \"$text\""
    else
        bad "$d: exit $rc, output: $out (want failure with \"$text\")"
    fi
}

for fmt in $FUSE_FORMATS; do
    echo "format $fmt"

    # ---- (a) writable, not growable
    rm -f img ref mp
    fuse_image "$fmt" img $((16 * M))
    truncate -s $((16 * M)) ref
    touch mp
    head -c $((2 * M)) /dev/urandom >data
    fuse_blockdevs "$fmt" img
    if fuse_start a "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on; then
        fill mp $((15 * M)) $M data && fill ref $((15 * M)) $M data
        check "(a) $fmt: mode 0600" [ "$(stat -c %a mp)" = 600 ]
        if tio truncate -s $((24 * M)) mp && eventually size_is mp $((24 * M)); then
            ok "(a) $fmt: truncate -s 24M grows"
        else
            bad "(a) $fmt: truncate -s 24M: size $(stat -c %s mp)"
        fi
        truncate -s $((24 * M)) ref
        check "(a) $fmt: grown area reads as zeros, data kept" cmp mp ref
        if tio truncate -s $((12 * M)) mp && eventually size_is mp $((12 * M)); then
            ok "(a) $fmt: truncate -s 12M shrinks"
        else
            bad "(a) $fmt: truncate -s 12M: size $(stat -c %s mp)"
        fi
        truncate -s $((12 * M)) ref
        fill ref $((12 * M - 4096)) 4096 data
        expect_fail "(a) $fmt: dd 4k at EOF" "No space left on device" \
            dd if=data of=mp bs=4096 count=1 seek=$((12 * M / 4096)) conv=notrunc status=none
        expect_fail "(a) $fmt: dd 8k at EOF-4k" "No space left on device" \
            dd if=data of=mp bs=8192 count=1 seek=$((12 * M - 4096)) oflag=seek_bytes conv=notrunc status=none
        # Larger than one request: the kernel sends 1 MiB pieces.
        head -c $((4 * M)) /dev/urandom >big
        expect_fail "(a) $fmt: dd 4M at EOF-1M" "No space left on device" \
            dd if=big of=mp bs=$((4 * M)) count=1 seek=$((11 * M)) oflag=seek_bytes conv=notrunc status=none
        fill ref $((11 * M)) $M big
        check "(a) $fmt: size still 12M" size_is mp $((12 * M))
        check "(a) $fmt: the part before EOF was written" cmp mp ref
        tio chmod 0644 mp
        check "(a) $fmt: chmod 0644 shows in stat" eventually [ "$(stat -c %a mp)" = 644 ]
        tio chmod 0600 mp
        fuse_stop_check a "(a) $fmt"
        img_compare "(a) $fmt" img "$fmt" ref
        check "(a) $fmt: virtual size 12M" [ "$(vsize "$fmt" img)" = $((12 * M)) ]
    else
        bad "(a) $fmt: daemon did not start"
    fi

    # ---- (b) growable
    rm -f img ref mp
    fuse_image "$fmt" img $M
    truncate -s $M ref
    touch mp
    fuse_blockdevs "$fmt" img
    if fuse_start b "${BLOCKDEVS[@]}" \
        --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on,growable=on; then
        end=$((3 * M + 512 + 65536))
        if fill mp $((3 * M + 512)) 65536 data && eventually size_is mp $end; then
            ok "(b) $fmt: dd past EOF grows to the end of the write"
        else
            bad "(b) $fmt: dd past EOF: size $(stat -c %s mp), want $end"
        fi
        fill ref $((3 * M + 512)) 65536 data
        check "(b) $fmt: gap reads as zeros, data read back" cmp mp ref
        if tio dd if=data of=mp bs=1024 count=3 oflag=append conv=notrunc status=none &&
            eventually size_is mp $((end + 3072)); then
            ok "(b) $fmt: O_APPEND write appends"
        else
            bad "(b) $fmt: O_APPEND: size $(stat -c %s mp), want $((end + 3072))"
        fi
        head -c 3072 data >>ref
        end=$((end + 3072))
        if [ "$fmt" = raw ]; then
            # An end that is not a multiple of 512 (qcow2 cannot have one).
            if fill mp $((end + 1000)) 3 data && eventually size_is mp $((end + 1003)); then
                ok "(b) $fmt: unaligned growing write"
            else
                bad "(b) $fmt: unaligned growing write: size $(stat -c %s mp), want $((end + 1003))"
            fi
            fill ref $((end + 1000)) 3 data
            end=$((end + 1003))
        fi
        check "(b) $fmt: contents after appends" cmp mp ref
        # Eight growing writes at once, in no particular order: the image
        # must end at the furthest one and hold all of them.
        base=$(((end + 65535) / 65536 * 65536 + 65536))
        pids=()
        for i in 5 2 7 0 3 6 1 4; do
            head -c 65536 /dev/urandom >data.$i
            tio dd if=data.$i of=mp bs=65536 seek=$((base + i * 131072)) oflag=seek_bytes conv=notrunc \
                status=none &
            pids+=($!)
        done
        failed=0
        for p in "${pids[@]}"; do wait "$p" || failed=1; done
        [ $failed = 0 ] && ok "(b) $fmt: 8 concurrent growing writes" || bad "(b) $fmt: a concurrent growing write failed"
        for i in 0 1 2 3 4 5 6 7; do fill ref $((base + i * 131072)) 65536 data.$i; done
        end=$((base + 7 * 131072 + 65536))
        if eventually size_is mp $end; then
            ok "(b) $fmt: size is the end of the furthest write"
        else
            bad "(b) $fmt: size $(stat -c %s mp) after concurrent growing writes, want $end"
        fi
        check "(b) $fmt: contents after concurrent growing writes" cmp mp ref
        fuse_stop_check b "(b) $fmt"
        img_compare "(b) $fmt" img "$fmt" ref
        check "(b) $fmt: virtual size $end" [ "$(vsize "$fmt" img)" = $end ]
    else
        bad "(b) $fmt: daemon did not start"
    fi

    # ---- (c) read-only
    rm -f img mp
    head -c $((4 * M)) /dev/urandom >rnd
    timeout 60 qemu-img convert -f raw -O "$fmt" rnd img
    sum=$(md5sum <img)
    touch mp
    fuse_blockdevs "$fmt" img
    if fuse_start c "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=off; then
        check "(c) $fmt: mode 0400" [ "$(stat -c %a mp)" = 400 ]
        expect_fail "(c) $fmt: dd into the mount" "Read-only file system" \
            dd if=data of=mp bs=4096 count=1 conv=notrunc status=none
        expect_fail "(c) $fmt: truncate -s" "Read-only file system" truncate -s $((8 * M)) mp
        expect_fail "(c) $fmt: chmod +w" "Read-only file system" chmod +w mp
        check "(c) $fmt: mode still 0400" [ "$(stat -c %a mp)" = 400 ]
        check "(c) $fmt: size 4M" size_is mp $((4 * M))
        img_compare "(c) $fmt: reads" img "$fmt" mp
        fuse_stop_check c "(c) $fmt"
        check "(c) $fmt: image unchanged" [ "$(md5sum <img)" = "$sum" ]
    else
        bad "(c) $fmt: daemon did not start"
    fi
done
finish

#!/bin/bash
# tests/integration/fuse-dd.sh -- data written through a FUSE export with dd
# reads back right, judged against a reference file with the real qemu-img.
#
# For each format: a 64 MiB image exported writable; dd (conv=notrunc) writes
# random data at offsets and lengths that are aligned, unaligned, one byte,
# crossing the 1 MiB request limit, crossing a 32 MiB boundary and ending at
# EOF; the same bytes go into a raw reference file. Asserts:
#  - stat of the mountpoint: size = image size; st_blocks grows with the
#    writes and equals the image file's st_blocks (raw);
#  - reads through the mount with odd block sizes (777, 4097, 100003) and
#    odd start offsets equal the reference; qemu-img compare of the mounted
#    file against the reference (qemu-img's own I/O through the mount);
#  - after SIGTERM: exit 0, unmounted, qemu-img compare -f FMT of the image
#    against the reference, qemu-img check, virtual size unchanged;
#  - mounted over the image file itself (as iotest 308 does): the file shows
#    the image's data, writes read back, and after SIGTERM the image file is
#    back and qemu-img compare agrees;
#  - cp of a whole disk onto the mount (O_TRUNC, like ': >mp') keeps the
#    size and writes the data, as with qemu-storage-daemon.
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools

SIZE=$((64 << 20))
# offset length
WRITES=(
    "0 512"
    "1 1"
    "4095 2"
    "65537 300000"
    "1048576 1048576"
    "3145725 3145731"
    "7 12293"
    "$(((32 << 20) - 100)) 200"
    "$((40 << 20)) 4096"
    "$((SIZE - 10)) 10"
    "$((SIZE - 1048576 - 3)) 1048576"
)

for fmt in $FUSE_FORMATS; do
    echo "format $fmt"
    rm -f img ref mp
    fuse_image "$fmt" img $SIZE
    truncate -s $SIZE ref
    touch mp
    fuse_blockdevs "$fmt" img
    if ! fuse_start d "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on; then
        bad "$fmt: daemon did not start"
        continue
    fi
    ok "$fmt: mounted"
    sz=$(stat -c %s mp)
    [ "$sz" = $SIZE ] && ok "$fmt: stat size = image size" || bad "$fmt: stat size $sz, want $SIZE"
    blocks0=$(stat -c %b mp)

    failed=0
    for w in "${WRITES[@]}"; do
        read -r off len <<<"$w"
        head -c "$len" /dev/urandom >chunk
        if ! fill mp "$off" "$len" chunk; then
            bad "$fmt: dd of $len bytes at $off through the mount failed"
            failed=1
        fi
        fill ref "$off" "$len" chunk
    done
    [ $failed = 0 ] && ok "$fmt: ${#WRITES[@]} dd writes (aligned, unaligned, 1 byte, >1 MiB, at EOF)"
    sz=$(stat -c %s mp)
    [ "$sz" = $SIZE ] && ok "$fmt: size unchanged by writes" || bad "$fmt: size $sz after writes"

    blocks_grew() { [ "$(stat -c %b mp)" -gt "$blocks0" ]; }
    if eventually blocks_grew; then
        ok "$fmt: st_blocks grew ($blocks0 -> $(stat -c %b mp))"
    else
        bad "$fmt: st_blocks did not grow ($blocks0 -> $(stat -c %b mp))"
    fi
    if [ "$fmt" = raw ]; then
        blocks_match() { [ "$(stat -c %b mp)" = "$(stat -c %b img)" ]; }
        if eventually blocks_match; then
            ok "$fmt: st_blocks = the image file's ($(stat -c %b img))"
        else
            bad "$fmt: st_blocks $(stat -c %b mp), image file $(stat -c %b img)"
        fi
    fi

    for bs in 777 4097 100003; do
        if tio dd if=mp bs=$bs status=none | cmp -s - ref; then
            ok "$fmt: whole image read back with bs=$bs"
        else
            bad "$fmt: read back with bs=$bs differs from the reference"
        fi
    done
    for r in "3 5000" "1048570 2000000" "$(((32 << 20) - 4097)) 8193" "$((SIZE - 5)) 5"; do
        read -r off len <<<"$r"
        a=$(tio dd if=mp bs=65536 skip="$off" count="$len" iflag=skip_bytes,count_bytes status=none | md5sum)
        b=$(dd if=ref bs=65536 skip="$off" count="$len" iflag=skip_bytes,count_bytes status=none | md5sum)
        [ "$a" = "$b" ] && ok "$fmt: read of $len bytes at $off" || bad "$fmt: read of $len bytes at $off differs"
    done
    n=$(tio dd if=mp bs=4096 skip=$((SIZE - 5)) iflag=skip_bytes status=none | wc -c)
    [ "$n" = 5 ] && ok "$fmt: short read at EOF" || bad "$fmt: read at EOF-5 returned $n bytes"
    n=$(tio dd if=mp bs=4096 skip=$SIZE iflag=skip_bytes status=none | wc -c)
    [ "$n" = 0 ] && ok "$fmt: read at EOF returns 0 bytes" || bad "$fmt: read at EOF returned $n bytes"
    img_compare "$fmt: mounted file" mp raw ref

    fuse_stop_check d "$fmt"
    img_compare "$fmt: image" img "$fmt" ref
    img_check "$fmt" img "$fmt"
    vs=$(qemu-img info -f "$fmt" --output=json img | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    [ "$vs" = $SIZE ] && ok "$fmt: virtual size unchanged" || bad "$fmt: virtual size $vs"

    # Mounted over the image file itself (QEMU opens the image first).
    fuse_blockdevs "$fmt" img
    if fuse_start o "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=img,writable=on; then
        check "$fmt over itself: the image file shows the image's data" cmp img ref
        head -c 300000 /dev/urandom >chunk
        fill img 12345 300000 chunk
        fill ref 12345 300000 chunk
        check "$fmt over itself: write read back" cmp img ref
        fuse_stop_check o "$fmt over itself"
        img_compare "$fmt over itself: image" img "$fmt" ref
    else
        bad "$fmt: mounting over the image file failed"
    fi

    # cp and a shell's ">" open the mount with O_TRUNC: like
    # qemu-storage-daemon, the export keeps its size, so cp overwrites the
    # disk (a SETATTR to size 0 would have shrunk it and failed the copy).
    fuse_blockdevs "$fmt" img
    head -c $SIZE /dev/urandom >whole
    if fuse_start c "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on; then
        check "$fmt: cp of a whole disk onto the mount" tio cp whole mp
        check "$fmt: size kept after cp (O_TRUNC)" [ "$(stat -c %s mp)" = $SIZE ]
        check "$fmt: the mount holds what cp wrote" cmp mp whole
        tio bash -c ': >mp'
        check "$fmt: size kept after ': >mp'" [ "$(stat -c %s mp)" = $SIZE ]
        fuse_stop_check c "$fmt cp"
        img_compare "$fmt cp: image" img "$fmt" whole
        img_check "$fmt cp" img "$fmt"
    else
        bad "$fmt: daemon for cp did not start"
    fi
done
finish

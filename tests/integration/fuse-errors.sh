#!/bin/bash
# tests/integration/fuse-errors.sh -- I/O errors of the graph reach the
# programs using a FUSE export, with their errno, and nothing else breaks.
#
# For each format, in the main loop and with two iothreads: a blkdebug node
# on top of the format node (so sectors are guest offsets) fails reads of
# sector 2048 with EIO, writes to sector 4096 with ENOSPC, writes to sector
# 6144 with EDQUOT and the first flush with EIO; the export serves the
# blkdebug node. Asserts: after a write, fsync fails with EIO once, then
# works (a flush with nothing written since the last one does not reach
# the node, as in QEMU); reading
# the bad sector fails with "Input/output error" while the 4 KiB before it
# reads right; the writes fail with "No space left on device" and "Disk
# quota exceeded" while a write elsewhere works; after the errors the whole
# image except the bad sector still reads right; SIGTERM: exit 0, --stats
# counts exactly the 4 failed requests (errors=4); qemu-img compare of the
# image with the reference (the failed writes changed nothing).
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools

M=$((1 << 20))
# fsync.py FILE OFFSET CHUNK: writes CHUNK at OFFSET, then fsyncs twice;
# prints each fsync's result.
cat >fsync.py <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, open(sys.argv[3], "rb").read(), int(sys.argv[2]))
for _ in range(2):
    try:
        os.fsync(fd)
        print("ok")
    except OSError as e:
        print(os.strerror(e.errno))
EOF
RULES=inject-error.0.event=none,inject-error.0.iotype=read,inject-error.0.sector=2048,inject-error.0.errno=5
RULES+=,inject-error.1.event=none,inject-error.1.iotype=write,inject-error.1.sector=4096,inject-error.1.errno=28
RULES+=,inject-error.2.event=none,inject-error.2.iotype=write,inject-error.2.sector=6144,inject-error.2.errno=122
RULES+=,inject-error.3.event=none,inject-error.3.iotype=flush,inject-error.3.errno=5,inject-error.3.once=on

# expect_fail DESC ERRTEXT CMD...
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
    for mode in main iothreads; do
        d="$fmt $mode"
        echo "$d"
        rm -f img ref mp
        head -c $((8 * M)) /dev/urandom >ref
        timeout 60 qemu-img convert -f raw -O "$fmt" ref img
        touch mp
        fuse_blockdevs "$fmt" img
        objs=()
        expopts=
        if [ $mode = iothreads ]; then
            objs=(--object iothread,id=t0 --object iothread,id=t1)
            expopts=,iothread.0=t0,iothread.1=t1
        fi
        if ! fuse_start d "${objs[@]}" "${BLOCKDEVS[@]}" --stats \
            --blockdev "driver=blkdebug,node-name=dbg,image=fmt0,$RULES" \
            --export "type=fuse,id=e,node-name=dbg,mountpoint=mp,writable=on$expopts"; then
            bad "$d: daemon did not start"
            continue
        fi
        # A flush with nothing written since the last one does not reach the
        # node (as in QEMU): write first.
        head -c 4096 /dev/urandom >chunk
        got=$(tio python3 fsync.py mp $((5 * M)) chunk | paste -sd,)
        fill ref $((5 * M)) 4096 chunk
        [ "$got" = "Input/output error,ok" ] && ok "$d: write, fsync fails with EIO, fsync again works" ||
            bad "$d: write, fsync, fsync: $got, want Input/output error,ok"
        expect_fail "$d: read of sector 2048" "Input/output error" dd if=mp of=/dev/null bs=4096 skip=256 count=1
        a=$(tio dd if=mp bs=4096 skip=255 count=1 status=none | md5sum)
        b=$(dd if=ref bs=4096 skip=255 count=1 status=none | md5sum)
        [ "$a" = "$b" ] && ok "$d: the 4 KiB before it read right" || bad "$d: the 4 KiB before it differ"
        expect_fail "$d: write to sector 4096" "No space left on device" \
            dd if=chunk of=mp bs=4096 seek=512 count=1 conv=notrunc
        expect_fail "$d: write to sector 6144" "Disk quota exceeded" \
            dd if=chunk of=mp bs=4096 seek=768 count=1 conv=notrunc
        head -c 4096 /dev/urandom >chunk
        if fill mp $((6 * M)) 4096 chunk; then ok "$d: a write elsewhere works"; else bad "$d: a write elsewhere failed"; fi
        fill ref $((6 * M)) 4096 chunk
        for r in "0 $M" "$((M + 4096)) $((7 * M - 4096))"; do
            read -r off len <<<"$r"
            a=$(tio dd if=mp bs=65536 skip="$off" count="$len" iflag=skip_bytes,count_bytes status=none | md5sum)
            b=$(dd if=ref bs=65536 skip="$off" count="$len" iflag=skip_bytes,count_bytes status=none | md5sum)
            [ "$a" = "$b" ] && ok "$d: [$off, +$len) reads right" || bad "$d: [$off, +$len) differs"
        done
        fuse_stop_check d "$d"
        errs=$(grep -oE 'errors=[0-9]+' d.err | head -1)
        [ "$errs" = errors=4 ] && ok "$d: --stats: errors=4" || bad "$d: --stats: ${errs:-no errors= counter}, want errors=4"
        img_compare "$d" img "$fmt" ref
        img_check "$d" img "$fmt"
    done
done
finish

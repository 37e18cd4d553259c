#!/bin/bash
# tests/integration/fuse-sigterm.sh -- SIGTERM while fio writes through the
# mount.
#
# For each format, in the main loop and with two iothreads: 8 MiB of random
# data written with dd conv=fsync at the start of a 64 MiB image; then fio
# (randwrite, O_DIRECT, iodepth 64, time-based) writes to [16M, 48M) through
# the mount and the daemon gets SIGTERM while it runs. fio reopens its file
# at every pass over it, so it is given /proc/self/fd/N, an fd this shell
# opened through the mount: a reopen after the unmount then reaches the
# dead connection (ENOTCONN) rather than the plain file underneath, which
# fio would happily keep writing. Asserts: fio was
# running at the signal; the daemon exits 0 within 20 s, with --stats showing
# the writes it served, and the mount is gone; fio ends (with I/O errors)
# instead of hanging; qemu-img check where the format has checks; on a
# qemu-img convert -O raw copy: the fsynced data is intact, everything
# outside fio's range still reads as zeros (no stray writes), and every
# write whose completion fio saw holds its data (fio's verify state saved at
# exit, then --verify_only --verify_state_load: the daemon drained and
# flushed what it acknowledged).
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools fio

ENGINE=io_uring
truncate -s 1M probe
if ! timeout 20 fio --name=probe --filename=probe --size=1M --rw=write --bs=4k --ioengine=io_uring \
    --direct=1 >/dev/null 2>&1; then
    ENGINE=libaio
    echo "  note: fio's io_uring engine does not work here; using libaio"
fi
rm -f probe

M=$((1 << 20))
# Two jobs, 16 MiB each in [16M, 48M), rewriting their blocks in loops; on
# exit fio saves which writes completed (verify_state_save), so that
# --verify_only --verify_state_load checks exactly those later.
FIO_JOB=(--name=load --offset=$((16 * M)) --size=$((16 * M)) --offset_increment=$((16 * M)) --numjobs=2
    --rw=randwrite --bs=4k --verify=crc32c --verify_state_save=1)
FIO_PID=
stop_fio() {
    [ -n "$FIO_PID" ] || return 0
    local i
    for i in $(seq 100); do kill -0 "$FIO_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$FIO_PID" 2>/dev/null; then
        bad "$1: fio still running 10 s after the daemon exited"
        kill -KILL "$FIO_PID" 2>/dev/null || true
    else
        ok "$1: fio ended"
    fi
    wait "$FIO_PID" 2>/dev/null || true
    FIO_PID=
    FUSE_BG_PIDS=()
}
# same_range DESC FILE REF OFF LEN
same_range() {
    local a b
    a=$(dd if="$2" bs=$M skip="$4" count="$5" iflag=skip_bytes,count_bytes status=none | md5sum)
    b=$(dd if="$3" bs=$M skip="$4" count="$5" iflag=skip_bytes,count_bytes status=none | md5sum)
    [ "$a" = "$b" ] && ok "$1" || bad "$1"
}

for fmt in $FUSE_FORMATS; do
    for mode in main iothreads; do
        d="$fmt $mode"
        echo "$d"
        rm -f img img.raw ref mp
        fuse_image "$fmt" img $((64 * M))
        truncate -s $((64 * M)) ref
        touch mp
        head -c $((8 * M)) /dev/urandom >data
        fill ref 0 $((8 * M)) data
        fuse_blockdevs "$fmt" img
        objs=()
        expopts=
        if [ $mode = iothreads ]; then
            objs=(--object iothread,id=t0 --object iothread,id=t1)
            expopts=,iothread.0=t0,iothread.1=t1
        fi
        if ! fuse_start d "${objs[@]}" "${BLOCKDEVS[@]}" --stats \
            --export "type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on$expopts"; then
            bad "$d: daemon did not start"
            continue
        fi
        if tio dd if=data of=mp bs=$M conv=notrunc,fsync status=none; then
            ok "$d: 8M written with conv=fsync"
        else
            bad "$d: dd conv=fsync failed"
        fi
        rm -f ./*verify.state
        exec {MPFD}<>mp
        timeout -k 5 40 fio "${FIO_JOB[@]}" --filename=/proc/self/fd/$MPFD --ioengine=$ENGINE --iodepth=64 --direct=1 \
            --do_verify=0 --loops=100000 --runtime=30 >fio.log 2>&1 &
        FIO_PID=$!
        FUSE_BG_PIDS+=("$FIO_PID")
        sleep 1.5
        if kill -0 "$FIO_PID" 2>/dev/null; then
            ok "$d: fio running"
        else
            bad "$d: fio ended before the signal: $(tail -3 fio.log)"
        fi
        t0=$(date +%s)
        fuse_stop_check d "$d"
        t1=$(date +%s)
        echo "    (daemon stopped in $((t1 - t0)) s)"
        stop_fio "$d"
        exec {MPFD}>&-
        if grep -Eq "requests: read=[0-9]+ write=[1-9]" d.err; then
            ok "$d: --stats at exit shows the writes served"
        else
            bad "$d: --stats at exit: $(grep requests d.err || cat d.err)"
        fi
        img_check "$d" img "$fmt"
        timeout 60 qemu-img convert -U -f "$fmt" -O raw img img.raw
        same_range "$d: fsynced data intact" img.raw ref 0 $((8 * M))
        if timeout -k 5 40 fio "${FIO_JOB[@]}" --filename=img.raw --ioengine=psync --verify_only \
            --verify_state_load=1 >fio-verify.log 2>&1 && grep -q 'READ:.* io=[1-9]' fio-verify.log; then
            ok "$d: every write fio saw completed is in the image (fio --verify_only --verify_state_load)"
        else
            bad "$d: acknowledged writes missing from the image:"
            grep -iE 'verify|err' fio-verify.log | head -5 | sed 's/^/    /'
        fi
        same_range "$d: [8M, 16M) still zeros" img.raw ref $((8 * M)) $((8 * M))
        same_range "$d: [48M, 64M) still zeros" img.raw ref $((48 * M)) $((16 * M))
        check "$d: image size unchanged" [ "$(stat -c %s img.raw)" = $((64 * M)) ]
    done
done
finish

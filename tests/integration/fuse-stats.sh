#!/bin/bash
# tests/integration/fuse-stats.sh -- the export's counters printed by
# "blockgraph daemon --stats" at exit, after a known sequence of requests.
#
# For each format, in the main loop and with two iothreads (the counters of
# all queues are summed): 10 dd writes of 4 KiB, 5 dd reads of 8 KiB (the
# export is direct I/O, so each is exactly one request), one fallocate -z,
# two lseek (SEEK_DATA, SEEK_HOLE), truncate to the same size and chmod (two
# setattr), one write at EOF (ENOSPC). Then SIGTERM; stderr must hold the
# block: header "export 'e' (fuse, MOUNTPOINT, N queue(s)", "requests:
# read=5 write=11 flush=F getattr=G setattr=2 fallocate=1 lseek=2 other=O"
# (the failed write counts; F, G >= 1), "bytes read=40960 written=40960 errors=E" (E >= 1), and
# the "fuse reads= wakeups= coroutine switches= io_uring submissions=
# io_uring enters=" line with fuse reads >= the requests counted, and the
# serving threads' line (inline page-cache I/O for the writes on local
# filesystems, loop polling and sleeps).
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools fallocate

M=$((1 << 20))
cat >seek.py <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.lseek(fd, 0, os.SEEK_DATA)
os.lseek(fd, 0, os.SEEK_HOLE)
EOF

# counter NAME: the value of "NAME=" in the stats block.
counter() { grep -oE "(^| )$1=[0-9]+" stats | head -1 | sed 's/.*=//'; }

for fmt in $FUSE_FORMATS; do
    for mode in main iothreads; do
        d="$fmt $mode"
        echo "$d"
        rm -f img mp
        fuse_image "$fmt" img $((16 * M))
        touch mp
        head -c $M /dev/urandom >data
        fuse_blockdevs "$fmt" img
        objs=()
        expopts=
        queues="1 queue"
        if [ $mode = iothreads ]; then
            objs=(--object iothread,id=t0 --object iothread,id=t1)
            expopts=,iothread.0=t0,iothread.1=t1
            queues="2 queues"
        fi
        if ! fuse_start d "${objs[@]}" "${BLOCKDEVS[@]}" --stats \
            --export "type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on$expopts"; then
            bad "$d: daemon did not start"
            continue
        fi
        tio dd if=data of=mp bs=4096 count=10 conv=notrunc status=none
        tio dd if=mp of=/dev/null bs=8192 count=5 status=none
        tio fallocate -z -o 0 -l 4096 mp
        tio python3 seek.py mp
        tio truncate -s $((16 * M)) mp
        tio chmod 0600 mp
        tio dd if=data of=mp bs=4096 count=1 seek=$((16 * M / 4096)) conv=notrunc status=none 2>/dev/null &&
            bad "$d: write at EOF succeeded"
        fuse_stop_check d "$d"
        sed -n "/^export 'e' (fuse/,\$p" d.err >stats
        if grep -qF "export 'e' (fuse, mp, $queues" stats; then
            ok "$d: --stats header names the export, mountpoint and $queues"
        else
            bad "$d: no --stats header for $queues: $(cat d.err)"
            continue
        fi
        for want in read=5 write=11 setattr=2 fallocate=1 lseek=2; do
            got=$(counter "${want%=*}")
            [ "${want%=*}=$got" = "$want" ] && ok "$d: requests $want" || bad "$d: requests ${want%=*}=$got, want $want"
        done
        for c in flush getattr errors; do
            got=$(counter $c)
            [ "${got:-0}" -ge 1 ] && ok "$d: $c=$got" || bad "$d: $c=${got:-missing}, want >= 1"
        done
        check "$d: bytes read=40960 written=40960" grep -q "bytes read=40960 written=40960 errors=" stats
        if grep -qE "fuse reads=[0-9]+ wakeups=[0-9]+ coroutine switches=[0-9]+ io_uring submissions=[0-9]+ io_uring enters=[0-9]+" stats; then
            ok "$d: transport counters present"
        else
            bad "$d: transport counters missing: $(cat stats)"
        fi
        # dd's writes come one at a time: on the filesystems whose buffered
        # writes io_uring cannot start without a worker thread, the daemon
        # does them in its own thread (docs/performance.md).
        inl=$(grep -oE "inline page-cache I/O=[0-9]+" stats | sed 's/.*=//')
        if [ -z "$inl" ] || ! grep -qE "loop waits ended by polling=[0-9]+ loop sleeps=[1-9][0-9]*" stats; then
            bad "$d: serving-thread counters missing: $(cat stats)"
        else
            case $(stat -f -c %T .) in
                ext2/ext3 | tmpfs | xfs | btrfs)
                    [ "$inl" -ge 10 ] && ok "$d: inline page-cache I/O=$inl" ||
                        bad "$d: inline page-cache I/O=$inl, want >= 10 on $(stat -f -c %T .)" ;;
                *) ok "$d: serving-thread counters present (inline I/O=$inl)" ;;
            esac
        fi
        total=0
        for c in read write flush getattr setattr fallocate lseek other; do
            total=$((total + $(counter $c)))
        done
        reads=$(grep -oE "fuse reads=[0-9]+" stats | sed 's/.*=//')
        [ "${reads:-0}" -ge $total ] && ok "$d: fuse reads ($reads) >= requests counted ($total)" ||
            bad "$d: fuse reads ${reads:-missing} < requests counted $total"
    done
done
finish

#!/bin/bash
# tests/integration/daemon-io.sh -- "blockgraph daemon" serving FUSE exports,
# judged with qemu-img:
#  (a) the qemu-storage-daemon command line, unchanged (keyval): mount,
#      write with dd through the mountpoint, read back, SIGUSR1 prints the
#      counters, SIGTERM exits 0 and unmounts, --stats prints at exit, the
#      pidfile names the daemon and is removed; qemu-img compare against a
#      reference written the same way;
#  (b) the JSON forms of --blockdev/--export, read-only: writes fail, SIGINT
#      stops it;
#  (c) two iothreads (--object iothread, iothread.0/iothread.1), parallel
#      writers, SIGHUP stops it.
# Formats: FORMATS (default raw; add qcow2 once its driver exists).
# Every daemon runs under timeout; the EXIT trap stops daemons and unmounts.
set -u

DAEMON_CLEANUP_WAIT=100   # the trap gives a daemon 10 s after SIGTERM

. "$(dirname "$0")/lib-daemon.sh"
dd if=/dev/urandom of=data.bin bs=1M count=5 status=none

for fmt in $FORMATS; do
    echo "format $fmt"

    # ---------------------------------------------------------------- (a)
    rm -f img ref mp err pf
    qemu-img create -q -f "$fmt" img 64M
    qemu-img create -q -f raw ref 64M
    touch mp
    timeout -k 5 120 "$BLOCKGRAPH" daemon --pidfile pf --stats \
        --blockdev driver=file,node-name=f,filename=img \
        --blockdev driver="$fmt",node-name=q,file=f \
        --export type=fuse,id=e,node-name=q,mountpoint=mp,writable=on 2>err &
    job=$!
    if wait_mounted "$WORK/mp" && wait_pidfile pf; then
        ok "(a) mounted"
        pid=$(cat pf)
        DAEMON_PIDS+=("$pid")
        alive "$pid" && [ "$(readlink "/proc/$pid/exe")" = "$BLOCKGRAPH" ] && ok "(a) pidfile names the daemon" ||
            bad "(a) pidfile holds '$pid'"
        [ "$(stat -c %s mp)" = $((64 << 20)) ] && ok "(a) size 64M" || bad "(a) size $(stat -c %s mp)"
        for f in mp ref; do
            dd if=data.bin of=$f bs=64k seek=16 conv=notrunc,fsync status=none &&
                dd if=data.bin of=$f bs=4k count=3 seek=0 conv=notrunc,fsync status=none &&
                dd if=data.bin of=$f bs=512 count=7 skip=3 seek=131065 conv=notrunc status=none ||
                bad "(a) dd into $f failed"
        done
        cmp mp ref && ok "(a) read back what was written" || bad "(a) read back differs"
        kill -USR1 "$pid"
        for _ in $(seq 50); do grep -q "^export 'e' (fuse" err && break; sleep 0.1; done
        grep -q "^export 'e' (fuse" err && ok "(a) SIGUSR1 prints stats" || bad "(a) no stats after SIGUSR1"
        kill -TERM "$pid"
        wait "$job"
        rc=$?
        [ $rc = 0 ] && ok "(a) SIGTERM: exit 0" || bad "(a) SIGTERM: exit $rc"
        is_mounted "$WORK/mp" && bad "(a) still mounted" || ok "(a) unmounted"
        [ -e pf ] && bad "(a) pidfile left behind" || ok "(a) pidfile removed"
        [ "$(grep -c "^export 'e' (fuse" err)" = 2 ] && grep -q 'write=[1-9]' err &&
            ok "(a) --stats at exit" || bad "(a) --stats output: $(cat err)"
        out=$(qemu-img compare -f "$fmt" -F raw img ref 2>&1) && ok "(a) qemu-img compare: identical" ||
            bad "(a) qemu-img compare: $out"
    else
        bad "(a) not mounted: $(cat err)"
        kill "$job" 2>/dev/null
        wait "$job"
    fi

    # ---------------------------------------------------------------- (b)
    rm -f err pf
    sum=$(md5sum <img)
    timeout -k 5 120 "$BLOCKGRAPH" daemon --pidfile pf \
        --blockdev '{"driver": "file", "node-name": "f", "filename": "img"}' \
        --blockdev "{\"driver\": \"$fmt\", \"node-name\": \"q\", \"file\": \"f\", \"read-only\": true}" \
        --export '{"type": "fuse", "id": "ro", "node-name": "q", "mountpoint": "mp", "writable": false}' 2>err &
    job=$!
    if wait_mounted "$WORK/mp" && wait_pidfile pf; then
        pid=$(cat pf)
        DAEMON_PIDS+=("$pid")
        ok "(b) JSON options: mounted"
        cmp mp ref && ok "(b) contents" || bad "(b) contents differ"
        if dd if=data.bin of=mp bs=4k count=1 conv=notrunc status=none 2>/dev/null; then
            bad "(b) a write to a read-only export succeeded"
        else
            ok "(b) read-only: write refused"
        fi
        kill -INT "$pid"
        wait "$job"
        rc=$?
        [ $rc = 0 ] && ok "(b) SIGINT: exit 0" || bad "(b) SIGINT: exit $rc"
        is_mounted "$WORK/mp" && bad "(b) still mounted" || ok "(b) unmounted"
        [ "$(md5sum <img)" = "$sum" ] && ok "(b) image unchanged" || bad "(b) image changed"
    else
        bad "(b) not mounted: $(cat err)"
        kill "$job" 2>/dev/null
        wait "$job"
    fi

    # ---------------------------------------------------------------- (c)
    rm -f err pf
    timeout -k 5 120 "$BLOCKGRAPH" daemon --pidfile pf \
        --object iothread,id=io0 --object iothread,id=io1,poll-max-ns=0 \
        --blockdev driver=file,node-name=f,filename=img \
        --blockdev driver="$fmt",node-name=q,file=f \
        --export type=fuse,id=mq,node-name=q,mountpoint=mp,writable=on,iothread.0=io0,iothread.1=io1 2>err &
    job=$!
    if wait_mounted "$WORK/mp" && wait_pidfile pf; then
        pid=$(cat pf)
        DAEMON_PIDS+=("$pid")
        ok "(c) two iothreads: mounted"
        [ "$(ls /proc/"$pid"/task | wc -l)" -ge 3 ] && ok "(c) threads started" || bad "(c) no threads"
        for i in 0 1 2 3; do
            for f in mp ref; do
                dd if=data.bin of=$f bs=64k count=16 seek=$((512 + i * 32)) conv=notrunc,fsync status=none &
            done
        done
        wait_ok=0
        for p in $(jobs -p); do [ "$p" = "$job" ] && continue; wait "$p" || wait_ok=1; done
        [ $wait_ok = 0 ] && ok "(c) parallel writes" || bad "(c) a parallel write failed"
        cmp mp ref && ok "(c) read back" || bad "(c) read back differs"
        kill -HUP "$pid"
        wait "$job"
        rc=$?
        [ $rc = 0 ] && ok "(c) SIGHUP: exit 0" || bad "(c) SIGHUP: exit $rc"
        is_mounted "$WORK/mp" && bad "(c) still mounted" || ok "(c) unmounted"
        out=$(qemu-img compare -f "$fmt" -F raw img ref 2>&1) && ok "(c) qemu-img compare: identical" ||
            bad "(c) qemu-img compare: $out"
    else
        bad "(c) not mounted: $(cat err)"
        kill "$job" 2>/dev/null
        wait "$job"
    fi
done

if [ $failures -gt 0 ]; then
    echo "daemon-io: $failures failure(s)"
    exit 1
fi
echo "daemon-io: all passed"
exit 0

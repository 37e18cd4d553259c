#!/bin/bash
# tests/integration/daemon-daemonize.sh -- background operation and exports
# going away on their own:
#  (a) --daemonize returns 0 only once the export is mounted (checked at
#      once, no waiting), does not keep the caller's stdout/stderr pipes open,
#      writes the pidfile; SIGTERM to that pid unmounts and removes it;
#  (b) a second daemon with the same --pidfile is refused;
#  (c) an external "fusermount3 -u" of the only export makes the daemon exit
#      0 (foreground, to see the status) and remove its pidfile;
#  (d) two exports: unmounting one externally leaves the other served;
#      unmounting the second ends the daemon (daemonized);
#  (e) --daemonize with a failing second export: the parent prints the
#      child's one error line and exits 1; the first export's mount is gone
#      by then, no pidfile is left.
# Formats: FORMATS (default raw; add qcow2 once its driver exists).
set -u

. "$(dirname "$0")/lib-daemon.sh"

for fmt in $FORMATS; do
    echo "format $fmt"
    rm -f img img2 mp mp2 err pf
    qemu-img create -q -f "$fmt" img 16M
    qemu-img create -q -f "$fmt" img2 16M
    touch mp mp2
    BD="--blockdev driver=file,node-name=f,filename=img --blockdev driver=$fmt,node-name=q,file=f"

    # ---------------------------------------------------------------- (a)
    # $(...) returns only when every holder of the pipe is gone: a daemon
    # that kept stdout or stderr would make timeout fire (124).
    out=$(timeout -k 5 30 "$BLOCKGRAPH" daemon --daemonize --pidfile "$WORK/pf" $BD \
        --export type=fuse,id=e,node-name=q,mountpoint=mp,writable=on 2>&1)
    rc=$?
    if is_mounted "$WORK/mp"; then ok "(a) mounted when --daemonize returns"; else bad "(a) not mounted on return"; fi
    [ $rc = 0 ] && ok "(a) exit 0" || bad "(a) exit $rc: $out"
    [ -z "$out" ] && ok "(a) no output" || bad "(a) output: $out"
    pid=$(cat pf 2>/dev/null)
    [ -n "$pid" ] && DAEMON_PIDS+=("$pid")
    if [ -n "$pid" ] && alive "$pid"; then ok "(a) pidfile names a live process"; else bad "(a) pidfile: '$pid'"; fi
    dd if=/dev/urandom of=data bs=64k count=4 status=none
    dd if=data of=mp conv=notrunc,fsync status=none && cmp -n 262144 data mp && ok "(a) I/O" || bad "(a) I/O"

    # ---------------------------------------------------------------- (b)
    out=$(timeout -k 5 30 "$BLOCKGRAPH" daemon --pidfile "$WORK/pf" \
        --blockdev driver=file,node-name=f,filename=img2 \
        --export type=fuse,id=e2,node-name=f,mountpoint=mp2 2>&1)
    rc=$?
    exp="blockgraph daemon: pidfile '$WORK/pf' is in use by process $pid"
    [ $rc = 1 ] && [ "$out" = "$exp" ] && ok "(b) same pidfile refused" || bad "(b) exit $rc: $out"
    is_mounted "$WORK/mp2" && bad "(b) mp2 mounted" || ok "(b) nothing mounted"

    kill -TERM "$pid"
    wait_dead "$pid" && ok "(a) SIGTERM: daemon gone" || bad "(a) daemon still running"
    is_mounted "$WORK/mp" && bad "(a) still mounted" || ok "(a) unmounted"
    [ -e pf ] && bad "(a) pidfile left" || ok "(a) pidfile removed"
    rm -f ref
    qemu-img create -q -f raw ref 16M && dd if=data of=ref conv=notrunc status=none
    out=$(qemu-img compare -f "$fmt" -F raw img ref 2>&1) && ok "(a) qemu-img compare: identical" ||
        bad "(a) qemu-img compare: $out"

    # ---------------------------------------------------------------- (c)
    rm -f pf
    timeout -k 5 60 "$BLOCKGRAPH" daemon --pidfile pf $BD \
        --export type=fuse,id=e,node-name=q,mountpoint=mp,writable=on 2>err &
    job=$!
    if wait_mounted "$WORK/mp" && wait_pidfile pf; then
        DAEMON_PIDS+=("$(cat pf)")
        fusermount3 -u "$WORK/mp"
        wait "$job"
        rc=$?
        [ $rc = 0 ] && ok "(c) external unmount: exit 0" || bad "(c) external unmount: exit $rc ($(cat err))"
        [ -s err ] && bad "(c) stderr: $(cat err)" || ok "(c) quietly"
        [ -e pf ] && bad "(c) pidfile left" || ok "(c) pidfile removed"
    else
        bad "(c) not mounted: $(cat err)"
        kill "$job" 2>/dev/null
        wait "$job"
    fi

    # ---------------------------------------------------------------- (d)
    rm -f pf
    out=$(timeout -k 5 30 "$BLOCKGRAPH" daemon --daemonize --pidfile "$WORK/pf" $BD \
        --blockdev driver=file,node-name=f2,filename=img2 \
        --export type=fuse,id=a,node-name=q,mountpoint=mp,writable=on \
        --export type=fuse,id=b,node-name=f2,mountpoint=mp2 2>&1)
    rc=$?
    pid=$(cat pf 2>/dev/null)
    [ -n "$pid" ] && DAEMON_PIDS+=("$pid")
    if [ $rc = 0 ] && is_mounted "$WORK/mp" && is_mounted "$WORK/mp2"; then
        ok "(d) two exports mounted"
        fusermount3 -u "$WORK/mp"
        sleep 0.5
        alive "$pid" && ok "(d) one export left: still running" || bad "(d) daemon exited with one export left"
        cmp -n 1048576 mp2 img2 && ok "(d) the other export serves" || bad "(d) the other export does not serve"
        fusermount3 -u "$WORK/mp2"
        wait_dead "$pid" && ok "(d) last export gone: daemon exited" || bad "(d) daemon still running"
        [ -e pf ] && bad "(d) pidfile left" || ok "(d) pidfile removed"
    else
        bad "(d) exit $rc: $out"
    fi

    # ---------------------------------------------------------------- (e)
    rm -f pf
    out=$(timeout -k 5 30 "$BLOCKGRAPH" daemon --daemonize --pidfile "$WORK/pf" $BD \
        --export type=fuse,id=a,node-name=q,mountpoint=mp,writable=on \
        --export type=fuse,id=b,node-name=q,mountpoint=missing 2>&1)
    rc=$?
    exp="blockgraph daemon: export 'b': mountpoint 'missing': No such file or directory"
    [ $rc = 1 ] && ok "(e) exit 1" || bad "(e) exit $rc"
    [ "$out" = "$exp" ] && ok "(e) the child's error line" || bad "(e) output: $out"
    [ "$(mounts_under_work)" = 0 ] && ok "(e) no mount left" || bad "(e) mount left behind"
    [ -e pf ] && bad "(e) pidfile left" || ok "(e) no pidfile"
done

if [ $failures -gt 0 ]; then
    echo "daemon-daemonize: $failures failure(s)"
    exit 1
fi
echo "daemon-daemonize: all passed"
exit 0

#!/bin/bash
# tests/integration/daemon-locking.sh -- two daemons on one image: the file
# driver's image locks (QEMU's OFD scheme) keep a second writer out.
#  (a) daemon A exports the image writable; daemon B exporting it writable
#      too is refused with one line, mounts nothing and changes nothing;
#      qemu-io cannot write it either; a read-only export of it by a third
#      daemon is allowed (A shares reads; a writable qcow2 node does not
#      share writes on its file, so there the reader uses force-share);
#  (b) the same with "blockgraph mount --rw" twice on one image;
#  (c) once A is gone, B's command line works.
# Formats: FORMATS (default raw; add qcow2 once its driver exists).
set -u

DAEMON_NEED_QEMU_IO=1

. "$(dirname "$0")/lib-daemon.sh"

# lock_refused RC OUTPUT PREFIX: exit 1 and one line, the file driver's
# lock error. For raw the export is the first to want write, so the line is
# exactly PREFIX + the message; a writable format node (qcow2) takes write
# on its file at open, so its line names the node instead.
lock_refused() {
    local msg='Failed to get "write" lock: Is another process using the image [img]?'
    [ "$1" = 1 ] || return 1
    [ "$(printf '%s\n' "$2" | wc -l)" = 1 ] || return 1
    if [ "$fmt" = raw ]; then
        [ "$2" = "$3$msg" ]
    else
        [[ "$2" == "${3%%: *}: "*"$msg" ]]
    fi
}

for fmt in $FORMATS; do
    echo "format $fmt"
    rm -f img mpa mpb mpc pfa pfc
    qemu-img create -q -f "$fmt" img 16M
    touch mpa mpb mpc
    BD="--blockdev driver=file,node-name=f,filename=img --blockdev driver=$fmt,node-name=q,file=f"

    # ---------------------------------------------------------------- (a)
    timeout -k 5 120 "$BLOCKGRAPH" daemon --daemonize --pidfile "$WORK/pfa" $BD \
        --export type=fuse,id=a,node-name=q,mountpoint=mpa,writable=on
    rc=$?
    pida=$(cat pfa 2>/dev/null)
    [ -n "$pida" ] && DAEMON_PIDS+=("$pida")
    if [ $rc = 0 ] && is_mounted "$WORK/mpa"; then
        ok "(a) daemon A serves the image writable"
        before=$(md5sum <img)
        out=$(timeout -k 5 30 "$BLOCKGRAPH" daemon $BD --export type=fuse,id=b,node-name=q,mountpoint=mpb,writable=on 2>&1)
        rc=$?
        lock_refused "$rc" "$out" "blockgraph daemon: export 'b': " && ok "(a) daemon B (writable) refused" ||
            bad "(a) daemon B: exit $rc: $out"
        is_mounted "$WORK/mpb" && bad "(a) mpb mounted" || ok "(a) nothing mounted for B"
        [ "$(md5sum <img)" = "$before" ] && ok "(a) image unchanged" || bad "(a) image changed"
        out=$(timeout 30 qemu-io -f "$fmt" -c 'write 0 512' img 2>&1)
        echo "$out" | grep -q 'Failed to get "write" lock' && ok "(a) qemu-io cannot write" ||
            bad "(a) qemu-io: $out"

        # A reader: raw shares reads with A's export. A format node that is
        # writable (qcow2) shares no writes on its file, as in QEMU, so the
        # reader needs force-share there.
        dd if=/dev/urandom of=data bs=4k count=4 status=none
        dd if=data of=mpa conv=notrunc,fsync status=none
        fs=
        [ "$fmt" = raw ] || fs=,force-share=on
        timeout -k 5 120 "$BLOCKGRAPH" daemon --daemonize --pidfile "$WORK/pfc" \
            --blockdev driver=file,node-name=f,filename=img,read-only=on$fs \
            --blockdev driver="$fmt",node-name=q,file=f,read-only=on$fs \
            --export type=fuse,id=c,node-name=q,mountpoint=mpc 2>err
        rc=$?
        pidc=$(cat pfc 2>/dev/null)
        [ -n "$pidc" ] && DAEMON_PIDS+=("$pidc")
        [ $rc = 0 ] && is_mounted "$WORK/mpc" && ok "(a) a read-only export alongside" ||
            bad "(a) read-only export: exit $rc: $(cat err)"
        cmp -n 16384 data mpc && ok "(a) the reader sees the writer's data" || bad "(a) reader sees other data"
        [ -n "$pidc" ] && kill -TERM "$pidc" && wait_dead "$pidc"
        # ------------------------------------------------------------ (c)
        kill -TERM "$pida"
        wait_dead "$pida" && ok "(c) daemon A stopped" || bad "(c) daemon A still running"
        timeout -k 5 120 "$BLOCKGRAPH" daemon --daemonize --pidfile "$WORK/pfa" $BD \
            --export type=fuse,id=b,node-name=q,mountpoint=mpb,writable=on 2>err
        rc=$?
        pidb=$(cat pfa 2>/dev/null)
        [ -n "$pidb" ] && DAEMON_PIDS+=("$pidb")
        [ $rc = 0 ] && is_mounted "$WORK/mpb" && ok "(c) then daemon B works" || bad "(c) daemon B: $(cat err)"
        [ -n "$pidb" ] && kill -TERM "$pidb" && wait_dead "$pidb"
    else
        bad "(a) daemon A failed (exit $rc)"
    fi

    # ---------------------------------------------------------------- (b)
    rm -f mpa mpb
    out=$(timeout -k 5 30 "$BLOCKGRAPH" mount -f "$fmt" --rw img mpa 2>&1)
    rc=$?
    if [ $rc = 0 ] && is_mounted "$WORK/mpa"; then
        ok "(b) mount --rw"
        before=$(md5sum <img)
        out=$(timeout -k 5 30 "$BLOCKGRAPH" mount -f "$fmt" --rw img mpb 2>&1)
        rc=$?
        lock_refused "$rc" "$out" "blockgraph mount: " && ok "(b) second mount --rw refused" ||
            bad "(b) second mount: exit $rc: $out"
        is_mounted "$WORK/mpb" && bad "(b) mpb mounted" || ok "(b) nothing mounted"
        [ -e mpb ] && bad "(b) mountpoint mpb left behind" || ok "(b) no mountpoint file left"
        [ "$(md5sum <img)" = "$before" ] && ok "(b) image unchanged" || bad "(b) image changed"
        timeout 40 "$BLOCKGRAPH" umount mpa && ok "(b) umount" || bad "(b) umount failed"
        is_mounted "$WORK/mpa" && bad "(b) still mounted" || ok "(b) unmounted"
    else
        bad "(b) mount --rw: exit $rc: $out"
    fi
done

if [ $failures -gt 0 ]; then
    echo "daemon-locking: $failures failure(s)"
    exit 1
fi
echo "daemon-locking: all passed"
exit 0

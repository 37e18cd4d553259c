#!/bin/bash
# tests/integration/daemon-errors.sh -- bad input to "blockgraph daemon":
# each case must exit 1 with exactly one line "blockgraph daemon: <message>"
# on stderr, nothing on stdout, leave no mount behind (also when it fails
# after mounting a first export) and leave the image unchanged. Cases run in
# the foreground and, where it matters, with --daemonize (the parent prints
# the child's line). FUSE being unavailable is simulated with a private
# /dev (unshare) and with an unprivileged user (setpriv), when possible.
# Formats: FORMATS (default raw; add qcow2 once its driver exists).
set -u

. "$(dirname "$0")/lib-daemon.sh"

# expect NAME 'expected stderr line' [runner...] -- daemon arguments...
# Runs "blockgraph daemon" (under timeout), then checks status, output,
# mounts and the image.
expect() {
    local name=$1 want=$2 rc
    shift 2
    local runner=()
    while [ "$1" != -- ]; do runner+=("$1"); shift; done
    shift
    local before
    before=$(md5sum <img)
    "${runner[@]}" timeout -k 5 30 "$BLOCKGRAPH" daemon "$@" >out 2>err
    rc=$?
    local why=
    [ $rc = 1 ] || why="$why exit $rc;"
    [ "$(cat err)" = "$want" ] || why="$why stderr '$(cat err)';"
    [ -s out ] && why="$why stdout '$(cat out)';"
    [ "$(mounts_under_work)" = 0 ] || why="$why mount left behind;"
    [ "$(md5sum <img)" = "$before" ] || why="$why image changed;"
    if [ -z "$why" ]; then ok "$name"; else bad "$name:$why"; fi
}

P="blockgraph daemon"
for fmt in $FORMATS; do
    echo "format $fmt"
    rm -rf img img2 mp mp2 dir pf
    qemu-img create -q -f "$fmt" img 16M
    qemu-io -c 'write -P 0x5a 0 1M' -f "$fmt" img >/dev/null 2>&1 || true
    qemu-img create -q -f raw img2 1M
    touch mp mp2
    mkdir dir
    BD="--blockdev driver=file,node-name=f,filename=img --blockdev driver=$fmt,node-name=q,file=f"
    EXP="type=fuse,id=e,node-name=q,mountpoint=mp,writable=on"

    # Command line.
    expect "unknown option" "$P: unknown option '--foo'" -- $BD --export $EXP --foo
    expect "unknown option with a value" "$P: unknown option '--foo'" -- --foo=bar $BD --export $EXP
    expect "--nbd-server without addr.host" "$P: nbd-server: Parameter 'addr.host' is missing" -- $BD --nbd-server addr.type=inet --export $EXP
    expect "--chardev without a way to connect" "$P: chardev 'c': give either path or host and port" -- --chardev socket,id=c $BD --export $EXP
    expect "--monitor on an unknown chardev" "$P: chardev \"c\" not found" -- --monitor chardev=c $BD --export $EXP
    expect "--monitor mode=readline" "$P: monitor: Only QMP is supported" -- --monitor chardev=c,mode=readline $BD --export $EXP
    expect "--trace" "$P: option '--trace' is not supported" -- --trace 'fuse*' $BD --export $EXP
    expect "a stray argument" "$P: unexpected argument 'img'" -- $BD --export $EXP img
    expect "a missing value" "$P: option '--export' requires an argument" -- $BD --export
    expect "no export" "$P: no --export or --monitor given (nothing to serve)" -- $BD

    # Malformed options (before anything is opened).
    expect "malformed --export" "$P: keyval: expected '=' after 'node-name'" -- $BD --export fuse,id=e,node-name
    expect "bad boolean" \
        "$P: export 'e': writable: 'maybe' is not a valid boolean (on, off, true, false, yes, no)" \
        -- $BD --export fuse,id=e,node-name=q,mountpoint=mp,writable=maybe
    expect "unknown export key" "$P: export 'e': unknown key 'size'" -- $BD --export $EXP,size=1M
    expect "bad io-uring value" "$P: export 'e': io-uring: 'maybe' is not one of: on, off, auto" \
        -- $BD --export $EXP,io-uring=maybe
    expect "bad passthrough value" "$P: export 'e': passthrough: 'yes please' is not one of: on, off, auto" \
        -- $BD --export "$EXP,passthrough=yes please"
    # passthrough=on where it cannot be used: a format node (not raw), or a
    # writable raw export that is not growable.
    if [ "$fmt" = raw ]; then why="a writable export that is not growable must refuse writes past its end"
    else why="the node is not a raw node"; fi
    expect "passthrough=on where it cannot be used" "$P: export 'e': passthrough=on: $why" \
        -- $BD --export $EXP,passthrough=on
    expect "missing mountpoint key" "$P: export 'e': missing required key 'mountpoint'" \
        -- $BD --export fuse,id=e,node-name=q
    expect "nbd export without a server" "$P: NBD server not running" \
        -- $BD --export type=nbd,id=e,node-name=q
    expect "unknown export type (JSON)" "$P: export 'e': unknown export type 'vhost-user-blk'" \
        -- $BD --export '{"type": "vhost-user-blk", "id": "e", "node-name": "q"}'
    expect "malformed JSON" "$P: export 'e': writable: expected a boolean" \
        -- $BD --export '{"type": "fuse", "id": "e", "node-name": "q", "mountpoint": "mp", "writable": "on"}'
    expect "unsupported object" "$P: object type 'main-loop' is not supported" \
        -- --object main-loop,id=m $BD --export $EXP
    expect "unknown object type" "$P: Parameter 'qom-type' does not accept value 'nope'" \
        -- --object nope,id=m $BD --export $EXP
    # As QEMU's visitor: a required member missing is reported before keys
    # nobody knows.
    expect "malformed blockdev" "$P: blockdev 'f': missing required key 'filename'" \
        -- --blockdev driver=file,node-name=f,filenme=img --export $EXP
    expect "unknown blockdev key" "$P: blockdev 'f': unknown key 'filenme'" \
        -- --blockdev driver=file,node-name=f,filename=img,filenme=img --export $EXP

    # Graph and export errors (the daemon has started).
    expect "missing image" "$P: blockdev 'f': Could not open 'nope': No such file or directory" \
        -- --blockdev driver=file,node-name=f,filename=nope --export $EXP
    expect "export of an unknown node" "$P: export 'e': no node named 'nope'" \
        -- $BD --export type=fuse,id=e,node-name=nope,mountpoint=mp
    expect "missing mountpoint" "$P: export 'e': mountpoint 'nope': No such file or directory" \
        -- $BD --export type=fuse,id=e,node-name=q,mountpoint=nope
    expect "mountpoint is a directory" "$P: export 'e': mountpoint 'dir' is not a regular file" \
        -- $BD --export type=fuse,id=e,node-name=q,mountpoint=dir
    expect "unknown iothread" "$P: export 'e': iothread 'io9' does not exist" \
        -- --object iothread,id=io0 $BD --export $EXP,iothread=io9
    expect "iothread defined after the export" "$P: export 'e': iothread 'io0' does not exist" \
        -- $BD --export $EXP,iothread=io0 --object iothread,id=io0
    expect "duplicate object id" "$P: attempt to add duplicate property 'io0' to object (type 'container')" \
        -- --object iothread,id=io0 --object iothread,id=io0 $BD --export $EXP

    # Failing after a first export is mounted: it must be unmounted again.
    expect "two exports on one mountpoint" "$P: mountpoint 'mp' is used by export 'e' already" \
        -- $BD --export $EXP --export type=fuse,id=e2,node-name=q,mountpoint=mp
    expect "same mountpoint, other spelling" "$P: mountpoint './mp' is used by export 'e' already" \
        -- $BD --export $EXP --export type=fuse,id=e2,node-name=q,mountpoint=./mp
    expect "duplicate export id" "$P: Block export id 'e' is already in use" \
        -- $BD --export $EXP --export type=fuse,id=e,node-name=q,mountpoint=mp2
    expect "second export fails" "$P: export 'e2': mountpoint 'dir' is not a regular file" \
        -- $BD --export $EXP --export type=fuse,id=e2,node-name=q,mountpoint=dir
    expect "--daemonize: second export fails" "$P: export 'e2': no node named 'x'" \
        -- --daemonize $BD --export $EXP --export type=fuse,id=e2,node-name=x,mountpoint=mp2
    expect "--daemonize: missing mountpoint" "$P: export 'e': mountpoint 'nope': No such file or directory" \
        -- --daemonize $BD --export type=fuse,id=e,node-name=q,mountpoint=nope
    expect "--daemonize: bad pidfile" "$P: pidfile 'nodir/pf': No such file or directory" \
        -- --daemonize --pidfile nodir/pf $BD --export $EXP

    # Mountpoint already mounted (by another daemon).
    timeout -k 5 60 "$BLOCKGRAPH" daemon --pidfile pf --blockdev driver=file,node-name=f,filename=img2 \
        --export type=fuse,id=other,node-name=f,mountpoint=mp2 2>/dev/null &
    job=$!
    if wait_mounted "$WORK/mp2"; then
        DAEMON_PIDS+=("$(cat pf)")
        before=$(md5sum <img)
        timeout -k 5 30 "$BLOCKGRAPH" daemon $BD --export type=fuse,id=e,node-name=q,mountpoint=mp2 2>err
        rc=$?
        [ $rc = 1 ] && [ "$(cat err)" = "$P: export 'e': mountpoint 'mp2' is already mounted" ] &&
            [ "$(md5sum <img)" = "$before" ] && ok "mountpoint already mounted" ||
            bad "mountpoint already mounted: exit $rc, $(cat err)"
        kill -TERM "$(cat pf)"
        wait "$job"
        is_mounted "$WORK/mp2" && bad "other daemon did not unmount" || ok "other daemon unmounted"
    else
        bad "could not start the other daemon"
        kill "$job"
        wait "$job"
    fi

    # FUSE unavailable.
    if [ "$(id -u)" = 0 ] && unshare -m --propagation private true 2>/dev/null; then
        expect "no /dev/fuse" \
            "$P: export 'e': FUSE is unavailable: /dev/fuse: No such file or directory (is the fuse module loaded and the device accessible?)" \
            unshare -m --propagation private sh -c 'mount -t tmpfs tmpfs /dev && exec "$@"' sh -- $BD --export $EXP
    else
        echo "  skip  no /dev/fuse (needs root and unshare)"
    fi
    if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && [ "$(stat -c %a /dev/fuse)" = 600 ]; then
        chmod 755 "$WORK"
        chmod 644 img
        expect "/dev/fuse not permitted" \
            "$P: export 'e': FUSE is unavailable: /dev/fuse: Permission denied (is the fuse module loaded and the device accessible?)" \
            setpriv --reuid=65534 --regid=65534 --clear-groups -- \
            --blockdev driver=file,node-name=f,filename=img,read-only=on \
            --blockdev driver=$fmt,node-name=q,file=f,read-only=on \
            --export type=fuse,id=e,node-name=q,mountpoint=mp
    else
        echo "  skip  /dev/fuse not permitted (needs root, setpriv and /dev/fuse mode 600)"
    fi
done

if [ $failures -gt 0 ]; then
    echo "daemon-errors: $failures failure(s)"
    exit 1
fi
echo "daemon-errors: all passed"
exit 0

#!/bin/bash
# tests/integration/mount-errors.sh -- bad input to "blockgraph mount": each
# case exits 1 with exactly one line "blockgraph mount: <message>" on
# stderr, prints nothing on stdout, leaves no mount, no mountpoint file it
# created, no pidfile, and the image unchanged. Background (default) and
# --foreground runs alike. FUSE being unavailable is simulated with a
# private /dev (unshare), when possible.
# Formats: FORMATS (default raw; add qcow2 once its driver exists).
set -u

DAEMON_CLEANUP_UMOUNT=1

. "$(dirname "$0")/lib-daemon.sh"

# expect NAME 'expected stderr line' [runner...] -- mount arguments...
expect() {
    local name=$1 want=$2 rc
    shift 2
    local runner=()
    while [ "$1" != -- ]; do runner+=("$1"); shift; done
    shift
    local files_before sum_before
    files_before=$(ls -A | grep -v '^out$\|^err$')
    sum_before=$(md5sum <img)
    "${runner[@]}" timeout -k 5 30 "$BLOCKGRAPH" mount "$@" >out 2>err
    rc=$?
    local why=
    [ $rc = 1 ] || why="$why exit $rc;"
    [ "$(cat err)" = "$want" ] || why="$why stderr '$(cat err)';"
    [ -s out ] && why="$why stdout '$(cat out)';"
    [ "$(mounts_under_work)" = 0 ] || why="$why mount left behind;"
    [ "$(md5sum <img)" = "$sum_before" ] || why="$why image changed;"
    [ "$(ls -A | grep -v '^out$\|^err$')" = "$files_before" ] || why="$why files changed;"
    if [ -z "$why" ]; then ok "$name"; else bad "$name:$why"; fi
}

P="blockgraph mount"
for fmt in $FORMATS; do
    echo "format $fmt"
    rm -rf ./*
    qemu-img create -q -f "$fmt" img 8M
    echo data >full
    cp img img.raw
    mkdir dir
    for mode in "" --foreground; do
        m=${mode:-background}
        expect "$m: missing image" "$P: image 'nope.img': No such file or directory" -- $mode nope.img
        expect "$m: image is a directory" "$P: image 'dir' is a directory" -- $mode dir x.raw
        expect "$m: mountpoint exists and is not empty" "$P: mountpoint 'full' exists and is not empty" \
            -- $mode -f "$fmt" img full
        expect "$m: default mountpoint is the image" "$P: mountpoint 'img.raw' exists and is not empty" \
            -- $mode -f "$fmt" img.raw
        expect "$m: mountpoint is a directory" "$P: mountpoint 'dir' is not a regular file" -- $mode img dir
        expect "$m: mountpoint's directory missing" "$P: mountpoint 'nodir/x.raw': No such file or directory" \
            -- $mode -f "$fmt" img nodir/x.raw
        expect "$m: unknown format" "$P: unknown format 'vmdk' (raw or qcow2)" -- $mode -f vmdk img
        expect "$m: bad --allow-other" "$P: --allow-other: 'yes' is not one of: on, off, auto" \
            -- $mode --allow-other yes img
        expect "$m: bad --iothreads" "$P: --iothreads: 'x' is not a number from 0 to 64" \
            -- $mode --iothreads x img
        expect "$m: unknown option" "$P: unknown option '--bogus'" -- $mode --bogus=1 img
        expect "$m: no image" "$P: missing IMAGE (see 'blockgraph mount --help')" -- $mode
        expect "$m: too many arguments" "$P: unexpected argument 'c'" -- $mode img b c
        if [ "$(id -u)" = 0 ] && unshare -m --propagation private true 2>/dev/null; then
            expect "$m: no /dev/fuse" \
                "$P: FUSE is unavailable: /dev/fuse: No such file or directory (is the fuse module loaded and the device accessible?)" \
                unshare -m --propagation private sh -c 'mount -t tmpfs tmpfs /dev && exec "$@"' sh \
                -- $mode -f "$fmt" img fuse.raw
        else
            echo "  skip  no /dev/fuse (needs root and unshare)"
        fi
    done

    # Already mounted (by another blockgraph mount).
    out=$(timeout -k 5 30 "$BLOCKGRAPH" mount -f "$fmt" img m.raw 2>&1)
    if [ "$out" = m.raw ] && is_mounted "$WORK/m.raw"; then
        sum_before=$(md5sum <img)
        out=$(timeout -k 5 30 "$BLOCKGRAPH" mount -f "$fmt" img m.raw 2>&1)
        rc=$?
        [ $rc = 1 ] && [ "$out" = "$P: mountpoint 'm.raw' is already mounted" ] && ok "mountpoint already mounted" ||
            bad "mountpoint already mounted: exit $rc: $out"
        [ "$(md5sum <img)" = "$sum_before" ] && ok "image unchanged" || bad "image changed"
        timeout 40 "$BLOCKGRAPH" umount m.raw && ! is_mounted "$WORK/m.raw" && ok "first mount unmounted" ||
            bad "first mount: umount failed"
    else
        bad "mount for the already-mounted case: $out"
    fi
done

if [ $failures -gt 0 ]; then
    echo "mount-errors: $failures failure(s)"
    exit 1
fi
echo "mount-errors: all passed"
exit 0

#!/bin/bash
# tests/integration/mount-roundtrip.sh -- "blockgraph mount" / "umount":
#  (a) default mountpoint (IMAGE's extension replaced by .raw), created and
#      printed; read-only by default (writes fail); contents match; umount
#      stops the daemon, unmounts and removes the file it created;
#  (b) --rw with an existing empty mountpoint file (kept afterwards): dd
#      through it, umount, qemu-img compare with a reference;
#  (c) IMAGE without extension -> IMAGE.raw; --iothreads 2 --rw;
#  (d) --foreground: prints the mountpoint once mounted, serves until
#      umount (which signals it), exits 0;
#  (e) probed raw (no -f): a warning with --rw; once qcow2 can be opened,
#      writing a qcow2 header into the first sector is refused and the image
#      keeps its data; with -f raw it is allowed, without a warning;
#  (f) umount of a "blockgraph daemon" mount (no pidfile known) falls back
#      to fusermount3 -u, and the daemon exits 0;
#  (g) umount of something that is not mounted: one line, exit 1.
# Formats: FORMATS (default raw; add qcow2 once its driver exists).
set -u

DAEMON_CLEANUP_UMOUNT=1

. "$(dirname "$0")/lib-daemon.sh"

# Pids of blockgraph processes whose command line contains " $1" (for the
# trap, and to look at a mount's daemon).
daemon_of() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$BLOCKGRAPH" ] || continue
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- " $1" && echo "${p#/proc/}"
    done
}

dd if=/dev/urandom of=data bs=1M count=2 status=none

for fmt in $FORMATS; do
    echo "format $fmt"
    img=disk-$fmt.img
    rm -f "$img" ref
    qemu-img create -q -f "$fmt" "$img" 32M
    qemu-img create -q -f raw ref 32M
    dd if=data of=ref bs=64k seek=3 conv=notrunc status=none
    qemu-img convert -n -f raw -O "$fmt" ref "$img"   # same contents as ref

    # ---------------------------------------------------------------- (a)
    out=$(timeout -k 5 30 "$BLOCKGRAPH" mount -f "$fmt" "$img" 2>err)
    rc=$?
    mp=disk-$fmt.raw
    if [ $rc = 0 ] && [ "$out" = "$mp" ] && is_mounted "$WORK/$mp"; then
        ok "(a) mounted at the default mountpoint, printed it"
        DAEMON_PIDS+=($(daemon_of "$img"))
        [ "$(stat -c %s "$mp")" = $((32 << 20)) ] && ok "(a) size" || bad "(a) size $(stat -c %s "$mp")"
        cmp "$mp" ref && ok "(a) contents" || bad "(a) contents differ"
        if dd if=data of="$mp" bs=4k count=1 conv=notrunc status=none 2>/dev/null; then
            bad "(a) read-only mount accepted a write"
        else
            ok "(a) read-only by default"
        fi
        out=$(timeout 40 "$BLOCKGRAPH" umount "$mp" 2>&1)
        rc=$?
        [ $rc = 0 ] && [ -z "$out" ] && ok "(a) umount" || bad "(a) umount: exit $rc: $out"
        is_mounted "$WORK/$mp" && bad "(a) still mounted" || ok "(a) unmounted"
        [ -e "$mp" ] && bad "(a) created mountpoint left behind" || ok "(a) created mountpoint removed"
    else
        bad "(a) mount: exit $rc, stdout '$out', stderr '$(cat err)'"
    fi

    # ---------------------------------------------------------------- (b)
    rm -f mp.b
    touch mp.b
    out=$(timeout -k 5 30 "$BLOCKGRAPH" mount -f "$fmt" --rw "$img" mp.b 2>err)
    rc=$?
    if [ $rc = 0 ] && [ "$out" = mp.b ] && is_mounted "$WORK/mp.b"; then
        ok "(b) --rw on an existing empty file"
        for f in mp.b ref; do
            dd if=data of=$f bs=4k count=100 seek=1000 conv=notrunc,fsync status=none || bad "(b) dd into $f"
            dd if=data of=$f bs=512 count=1 skip=9 seek=0 conv=notrunc status=none || bad "(b) dd sector 0 into $f"
        done
        cmp mp.b ref && ok "(b) read back" || bad "(b) read back differs"
        timeout 40 "$BLOCKGRAPH" umount mp.b && ok "(b) umount" || bad "(b) umount failed"
        is_mounted "$WORK/mp.b" && bad "(b) still mounted" || ok "(b) unmounted"
        [ -f mp.b ] && ok "(b) the user's mountpoint file is kept" || bad "(b) mountpoint file removed"
        out=$(qemu-img compare -f "$fmt" -F raw "$img" ref 2>&1) && ok "(b) qemu-img compare: identical" ||
            bad "(b) qemu-img compare: $out"
    else
        bad "(b) mount: exit $rc, stdout '$out', stderr '$(cat err)'"
    fi

    # ---------------------------------------------------------------- (c)
    rm -f noext noext.raw
    cp "$img" noext
    out=$(timeout -k 5 30 "$BLOCKGRAPH" mount -f "$fmt" --rw --iothreads 2 noext 2>err)
    rc=$?
    if [ $rc = 0 ] && [ "$out" = noext.raw ] && is_mounted "$WORK/noext.raw"; then
        ok "(c) IMAGE without extension: IMAGE.raw"
        pid=$(daemon_of noext)
        DAEMON_PIDS+=($pid)
        [ -n "$pid" ] && [ "$(ls /proc/"$pid"/task | wc -l)" -ge 3 ] && ok "(c) iothreads running" ||
            bad "(c) no iothreads"
        for i in 0 1 2 3; do
            dd if=data of=noext.raw bs=64k count=8 seek=$((100 + i * 8)) conv=notrunc,fsync status=none &
        done
        wait_ok=0
        for p in $(jobs -p); do wait "$p" || wait_ok=1; done
        for i in 0 1 2 3; do dd if=data of=ref bs=64k count=8 seek=$((100 + i * 8)) conv=notrunc status=none; done
        [ $wait_ok = 0 ] && cmp noext.raw ref && ok "(c) parallel writes read back" || bad "(c) parallel writes"
        timeout 40 "$BLOCKGRAPH" umount noext.raw && ok "(c) umount" || bad "(c) umount failed"
        out=$(qemu-img compare -f "$fmt" -F raw noext ref 2>&1) && ok "(c) qemu-img compare: identical" ||
            bad "(c) qemu-img compare: $out"
    else
        bad "(c) mount: exit $rc, stdout '$out', stderr '$(cat err)'"
    fi

    # ---------------------------------------------------------------- (d)
    rm -f fg.raw fg.out
    timeout -k 5 60 "$BLOCKGRAPH" mount -f "$fmt" --foreground "$img" fg.raw >fg.out 2>err &
    job=$!
    for _ in $(seq 100); do [ -s fg.out ] && break; sleep 0.1; done
    if [ "$(cat fg.out)" = fg.raw ] && is_mounted "$WORK/fg.raw"; then
        ok "(d) --foreground prints the mountpoint once mounted"
        alive "$job" && ok "(d) still serving" || bad "(d) not running"
        timeout 40 "$BLOCKGRAPH" umount fg.raw && ok "(d) umount" || bad "(d) umount failed"
        wait "$job"
        rc=$?
        [ $rc = 0 ] && ok "(d) exit 0" || bad "(d) exit $rc: $(cat err)"
        is_mounted "$WORK/fg.raw" && bad "(d) still mounted" || ok "(d) unmounted"
    else
        bad "(d) stdout '$(cat fg.out)', stderr '$(cat err)'"
        kill "$job" 2>/dev/null
        wait "$job"
    fi

    # ---------------------------------------------------------------- (f)
    rm -f qsd.raw
    touch qsd.raw
    timeout -k 5 60 "$BLOCKGRAPH" daemon --blockdev driver=file,node-name=f,filename="$img" \
        --blockdev driver="$fmt",node-name=q,file=f \
        --export type=fuse,id=e,node-name=q,mountpoint=qsd.raw 2>err &
    job=$!
    if wait_mounted "$WORK/qsd.raw"; then
        out=$(timeout 40 "$BLOCKGRAPH" umount qsd.raw 2>&1)
        rc=$?
        [ $rc = 0 ] && ok "(f) umount of a daemon's mount (fusermount3 -u)" || bad "(f) umount: exit $rc: $out"
        wait "$job"
        rc=$?
        [ $rc = 0 ] && ok "(f) the daemon exits 0" || bad "(f) daemon exit $rc: $(cat err)"
        is_mounted "$WORK/qsd.raw" && bad "(f) still mounted" || ok "(f) unmounted"
    else
        bad "(f) daemon did not mount: $(cat err)"
        kill "$job" 2>/dev/null
        wait "$job"
    fi
done

# -------------------------------------------------------------------- (e)
echo "probed raw"
have_qcow2=0
qcow2_supported && have_qcow2=1
rm -f probe.img probe.raw hdr
qemu-img create -q -f raw probe.img 4M
dd if=data of=probe.img bs=512 count=1 conv=notrunc status=none
before=$(md5sum <probe.img)
printf 'QFI\373\0\0\0\3' >hdr
out=$(timeout -k 5 30 "$BLOCKGRAPH" mount --rw probe.img 2>err)
if [ "$out" = probe.raw ] && is_mounted "$WORK/probe.raw"; then
    grep -q "probing guessed raw" err && ok "(e) probed-raw warning" || bad "(e) no warning: $(cat err)"
    # Only a format the build can open is refused (block/raw-format.h).
    if [ "$have_qcow2" = 1 ]; then
        if dd if=hdr of=probe.raw bs=512 count=1 conv=notrunc,sync status=none 2>/dev/null; then
            bad "(e) a qcow2 header was written into a probed raw image"
        else
            ok "(e) writing a qcow2 header to sector 0 refused"
        fi
    fi
    dd if=data of=probe.raw bs=4k seek=1 count=1 conv=notrunc status=none && ok "(e) other writes work" ||
        bad "(e) a plain write failed"
    timeout 40 "$BLOCKGRAPH" umount probe.raw
    if [ "$have_qcow2" = 1 ]; then
        cmp -n 512 data probe.img && ok "(e) sector 0 unchanged" || bad "(e) sector 0 changed"
    fi
else
    bad "(e) mount: '$out' $(cat err)"
fi
out=$(timeout -k 5 30 "$BLOCKGRAPH" mount -f raw --rw probe.img 2>err)
if [ "$out" = probe.raw ] && is_mounted "$WORK/probe.raw"; then
    [ -s err ] && bad "(e) -f raw: stderr $(cat err)" || ok "(e) -f raw: no warning"
    dd if=hdr of=probe.raw bs=512 count=1 conv=notrunc,sync status=none && ok "(e) -f raw: sector 0 writable" ||
        bad "(e) -f raw: sector 0 write refused"
    timeout 40 "$BLOCKGRAPH" umount probe.raw
    cmp -n 4 hdr probe.img && ok "(e) -f raw: written" || bad "(e) -f raw: not written"
else
    bad "(e) mount -f raw: '$out' $(cat err)"
fi

# -------------------------------------------------------------------- (g)
echo "umount errors"
touch plain
out=$(timeout 40 "$BLOCKGRAPH" umount plain 2>&1)
rc=$?
[ $rc = 1 ] && [ "$out" = "blockgraph umount: 'plain' is not a blockgraph mount" ] && ok "(g) not a mount" ||
    bad "(g) exit $rc: $out"
out=$(timeout 40 "$BLOCKGRAPH" umount nothere 2>&1)
rc=$?
[ $rc = 1 ] && [ "$out" = "blockgraph umount: 'nothere' is not a blockgraph mount" ] && ok "(g) missing path" ||
    bad "(g) exit $rc: $out"
out=$(timeout 40 "$BLOCKGRAPH" umount 2>&1)
rc=$?
[ $rc = 1 ] && [ "$out" = "blockgraph umount: missing MOUNTPOINT (see 'blockgraph umount --help')" ] &&
    ok "(g) no argument" || bad "(g) exit $rc: $out"

if [ $failures -gt 0 ]; then
    echo "mount-roundtrip: $failures failure(s)"
    exit 1
fi
echo "mount-roundtrip: all passed"
exit 0

#!/bin/bash
# tests/integration/fuse-uring.sh -- the FUSE export over FUSE-over-io_uring,
# and its fallback to /dev/fuse reads.
#
# The kernel offers FUSE-over-io_uring only while the fuse module parameter
# enable_uring is Y (off by default); it is read when a mount sends INIT, so
# the test sets it just for the mounts that want it and restores it at once.
# With it on, for raw and qcow2, in the main loop and with two iothreads:
#  - --stats says "transport io_uring", "fuse-over-io_uring: on" and counts
#    requests that came through the ring (fuse ring fetches > 0);
#  - dd writes read back equal through the mount and, after SIGTERM (exit 0,
#    unmounted), qemu-img compare of the image with what was written;
#  - fio randwrite --verify=crc32c at iodepth 64, O_DIRECT (many requests in
#    flight on the ring) and buffered, verified through the mount and then
#    in the image with fio --verify_only (converted to raw for qcow2);
#  - an external fusermount3 -u ends the daemon cleanly (exit 0).
# Fallbacks, the same I/O served through /dev/fuse, reason in --stats:
#  - BLOCKGRAPH_FUSE_URING=0 with the kernel offering it;
#  - the kernel not offering it (enable_uring=N).
# Skips (77) only where the kernel has no FUSE-over-io_uring (no
# enable_uring parameter) or the test cannot set it (not root).
set -euo pipefail
# More fio runs than most FUSE tests: a larger time budget under load.
export FUSE_TEST_BUDGET=${FUSE_TEST_BUDGET:-180}
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools fio

PARAM=/sys/module/fuse/parameters/enable_uring
if [ ! -e $PARAM ]; then
    echo "  SKIP  the kernel has no FUSE-over-io_uring ($PARAM missing; needs Linux >= 6.14 with CONFIG_FUSE_IO_URING)"
    exit 77
fi
if [ ! -w $PARAM ]; then
    echo "  SKIP  cannot enable FUSE-over-io_uring: $PARAM is not writable (needs root)"
    exit 77
fi
SAVED=$(cat $PARAM)

# start_with URING(Y|N) NAME DAEMON-ARGS...: the kernel param is URING while
# the export mounts, then back to what it was.
start_with() {
    local u=$1 rc=0
    shift
    echo "$u" >$PARAM
    fuse_start "$@" || rc=$?
    echo "$SAVED" >$PARAM
    return $rc
}

M=$((1 << 20))
SIZE=$((64 * M))
JOB=(--name=v --size=$((24 * M)) --offset_increment=$((24 * M + 4096)) --rw=randwrite --verify=crc32c
    --verify_fatal=1 --verify_state_save=0 --group_reporting)
head -c $((4 * M)) /dev/urandom >data

counter() { grep -oE "(^| )$2=[0-9]+" "$WORK/$1.err" | head -1 | sed 's/.*=//'; }

for fmt in raw qcow2; do
    for mode in main iothreads; do
        d="$fmt $mode"
        echo "$d"
        rm -f img img.raw mp ref
        fuse_image "$fmt" img $SIZE
        qemu-img create -q -f raw ref $SIZE
        touch mp
        fuse_blockdevs "$fmt" img
        objs=()
        expopts=
        if [ $mode = iothreads ]; then
            objs=(--object iothread,id=t0 --object iothread,id=t1)
            expopts=,iothread.0=t0,iothread.1=t1
        fi
        if ! start_with Y d "${objs[@]}" "${BLOCKDEVS[@]}" --stats \
            --export "type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on$expopts"; then
            bad "$d: daemon did not start"
            continue
        fi
        tio dd if=data of=mp bs=64k seek=48 conv=notrunc status=none
        tio dd if=data of=mp bs=1M seek=$((SIZE / M - 4)) oflag=direct conv=notrunc status=none
        fill ref $((3 * M)) $((4 * M)) data
        fill ref $((SIZE - 4 * M)) $((4 * M)) data
        check "$d: reads through the ring equal what was written" cmp <(tio cat mp) ref
        # fio O_DIRECT over [0, 48M + 4K), buffered over the next 4M; the dd
        # data at the end lies past both.
        if timeout -k 5 40 fio "${JOB[@]}" --filename=mp --numjobs=2 --ioengine=io_uring --iodepth=64 --bs=4k \
            --direct=1 >fio.log 2>&1; then
            ok "$d: fio O_DIRECT iodepth 64 randwrite + verify through the ring"
        else
            bad "$d: fio O_DIRECT through the ring failed: $(grep -iE 'verify|err' fio.log | head -3)"
        fi
        if timeout -k 5 40 fio --name=b --filename=mp --offset=$((48 * M + 4096)) --size=$((4 * M)) \
            --rw=randwrite --verify=crc32c --verify_fatal=1 --verify_state_save=0 --ioengine=io_uring \
            --iodepth=64 --bsrange=512-256k --direct=0 >fio-b.log 2>&1; then
            ok "$d: fio buffered randwrite + verify through the ring"
        else
            bad "$d: fio buffered through the ring failed: $(grep -iE 'verify|err' fio-b.log | head -3)"
        fi
        fuse_stop_check d "$d"
        check "$d: --stats: transport io_uring" grep -q "^export 'e' (fuse, .*, transport io_uring" "$WORK/d.err"
        check "$d: --stats: fuse-over-io_uring on" grep -q '^  fuse-over-io_uring: on' "$WORK/d.err"
        fetches=$(counter d fetches)
        check "$d: requests came through the ring (fetches=$fetches)" [ "${fetches:-0}" -gt 100 ]
        img_check "$d" img "$fmt"
        target=img
        if [ "$fmt" != raw ]; then
            timeout 60 qemu-img convert -f "$fmt" -O raw img img.raw
            target=img.raw
        fi
        check "$d: the image past fio's ranges equals what dd wrote" \
            cmp <(tail -c +$((56 * M + 1)) $target) <(tail -c +$((56 * M + 1)) ref)
        if timeout -k 5 40 fio "${JOB[@]}" --filename=$target --numjobs=2 --bs=4k --ioengine=psync \
            --verify_only >fio-verify.log 2>&1; then
            ok "$d: the image holds what fio wrote"
        else
            bad "$d: fio --verify_only of the image failed: $(grep -iE 'verify|err' fio-verify.log | head -3)"
        fi
    done
done

# External unmount while the ring is in use.
echo "external unmount"
rm -f img mp
fuse_image raw img $SIZE
touch mp
fuse_blockdevs raw img
start_with Y x "${BLOCKDEVS[@]}" --stats --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on
tio dd if=data of=mp bs=64k conv=notrunc status=none
tio fusermount3 -u mp
pid=$(fuse_pid x)
for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
check "external unmount: the daemon exits by itself" sh -c "! kill -0 $pid 2>/dev/null"
fuse_stop x
check "external unmount: exit status 0" [ "$FUSE_RC" = 0 ]
check "external unmount: nothing left mounted" [ "$FUSE_LEFT_MOUNTED" = 0 ]

# Fallbacks: same I/O, served through /dev/fuse.
fallback() { # NAME URING REASON-REGEX [ENV=VALUE] [EXPORT-SUFFIX]
    local name=$1 u=$2 why=$3 envs=${4:-} suffix=${5:-}
    echo "fallback $name"
    rm -f img mp
    fuse_image raw img $SIZE
    touch mp
    fuse_blockdevs raw img
    if [ -n "$envs" ]; then export "${envs?}"; fi
    start_with "$u" "$name" "${BLOCKDEVS[@]}" --stats --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on$suffix
    if [ -n "$envs" ]; then unset "${envs%%=*}"; fi
    if timeout -k 5 40 fio "${JOB[@]}" --filename=mp --numjobs=2 --ioengine=io_uring --iodepth=64 --bs=4k \
        --direct=1 >fio.log 2>&1; then
        ok "$name: fio O_DIRECT iodepth 64 randwrite + verify through /dev/fuse"
    else
        bad "$name: fio failed: $(grep -iE 'verify|err' fio.log | head -3)"
    fi
    fuse_stop_check "$name" "$name"
    check "$name: --stats: transport /dev/fuse" grep -q "^export 'e' (fuse, .*, transport /dev/fuse" "$WORK/$name.err"
    check "$name: --stats gives the reason ($(grep -m1 fuse-over-io_uring "$WORK/$name.err"))" \
        grep -qE "^  fuse-over-io_uring: off \\($why" "$WORK/$name.err"
    check "$name: no request through a ring" grep -q 'fuse ring fetches=0 ' "$WORK/$name.err"
}
fallback envoff Y 'disabled by BLOCKGRAPH_FUSE_URING=0' BLOCKGRAPH_FUSE_URING=0
fallback kerneloff N 'disabled in the kernel: fuse.enable_uring=N'
fallback optoff Y 'io-uring=off' "" ,io-uring=off
# io-uring=on where the kernel does not offer it: the export (and the
# daemon) fails, naming why, and nothing stays mounted.
echo "io-uring=on, kernel off"
rm -f img mp
fuse_image raw img $SIZE
touch mp
fuse_blockdevs raw img
if start_with N on "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on,io-uring=on \
    >/dev/null; then
    bad "io-uring=on with the kernel's off: the daemon started"
    fuse_stop on
else
    check "io-uring=on with the kernel's off: refused, naming why ($(cat "$WORK/on.err"))" \
        grep -qx "blockgraph daemon: export 'e': io-uring=on: disabled in the kernel: fuse.enable_uring=N" "$WORK/on.err"
    check "io-uring=on refused: nothing mounted" sh -c "! grep -q ' $WORK/mp ' /proc/mounts"
fi
finish

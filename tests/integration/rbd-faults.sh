#!/bin/bash
# tests/integration/rbd-faults.sh -- the rbd driver when the cluster fails
# under it, on a cluster of the test's own (bluestore, so the OSD keeps its
# data across a restart; lib-rbd.sh, lib-fuse.sh):
#
# - OSD killed and restarted during fio: an rbd image exported through FUSE
#   by "blockgraph daemon --blockdev driver=rbd,..."; fio (randwrite,
#   --verify=crc32c, O_DIRECT, iodepth 16) runs on the mount while osd.0 is
#   SIGKILLed and, 3 s later, started again: fio stalls (it is still running
#   while the OSD is down), then completes with no error and verifies every
#   block; the daemon exits 0 on SIGTERM; "rbd export" of the image passes
#   fio --verify_only (what the mount acknowledged is stored).
# - monitor stopped: an image already open keeps working (I/O through the
#   mount of a second daemon); opening an image fails with "error
#   connecting: Connection timed out" within the bound
#   (:client_mount_timeout=3: 3..12 s); after mon-start opening works again.
# - cluster full (the full ratios lowered until the pool is flagged full):
#   a write that needs new space fails with ENOSPC ("No space left on
#   device") within 20 s, through our io and through the FUSE mount of an
#   image opened before; data written before stays intact and, once the
#   ratios are back, writes work again.
set -euo pipefail
FUSE_TEST_BUDGET=${FUSE_TEST_BUDGET:-180}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib-fuse.sh"
RBD_OWN_CLUSTER=bluestore
RBD_NEED_TOOLS="fio fusermount3"
source "$HERE/lib-rbd.sh"
fuse_require_tools fio

quiet() { "$@" >/dev/null; }
IMG=$RBD_PFX-f1
rbdc create -s 64M "rbd/$IMG"
touch mp
fuse_start d --blockdev "driver=rbd,node-name=r,pool=rbd,image=$IMG" \
    --export "type=fuse,id=e,node-name=r,mountpoint=$WORK/mp,writable=on"

echo "OSD killed and restarted during fio through the mount"
JOB=(--name=v --size=8M --rw=randwrite --bsrange=4k-64k --verify=crc32c --verify_fatal=1
    --verify_state_save=0 --randseed=1234 --ioengine=libaio --direct=1 --iodepth=16)
timeout -k 5 90 fio "${JOB[@]}" --rate_iops=150 --filename="$WORK/mp" >fio.log 2>&1 &
fio_pid=$!
FUSE_BG_PIDS+=("$fio_pid")
sleep 1
kill -0 "$fio_pid" 2>/dev/null || bad "fio finished before the OSD was stopped (make it slower)"
cluster osd-stop --kill >/dev/null 2>&1
t_stop=$(date +%s)
sleep 3
if kill -0 "$fio_pid" 2>/dev/null; then ok "fio stalls while the OSD is down"; else bad "fio ended while the OSD was down: $(tail -3 fio.log)"; fi
cluster osd-start >osd-start.log 2>&1 || bad "osd-start failed: $(tail -3 osd-start.log)"
rc=0
wait "$fio_pid" || rc=$?
FUSE_BG_PIDS=()
if [ $rc = 0 ] && ! grep -qi 'err=[^0 ]\|verify.*fail\|bad' fio.log; then
    ok "fio completed after the restart ($(($(date +%s) - t_stop)) s after the stop), every block verified"
else
    bad "fio exit $rc: $(grep -iE 'err|verify|bad' fio.log | head -5)"
fi
check "a read through the mount after the restart" tio dd if=mp of=/dev/null bs=1M count=8 iflag=direct status=none

echo "monitor stopped"
cluster mon-stop >/dev/null 2>&1
head -c 65536 /dev/urandom >chunk
if tio dd if=chunk of=mp bs=64k seek=256 oflag=direct conv=notrunc status=none &&
    tio dd if=mp of=back bs=64k count=1 skip=256 iflag=direct status=none && cmp -s chunk back; then
    ok "an open image keeps working with the monitor down"
else
    bad "I/O through the mount with the monitor down failed"
fi
t0=$(date +%s%N)
rc=0
timeout -k 5 60 "$B" io -f raw -c 'read 0 512' "rbd:rbd/$IMG:client_mount_timeout=3" >/dev/null 2>mon.err || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
if [ $rc = 1 ] && [ $ms -ge 2500 ] && [ $ms -le 12000 ]; then
    ok "open with the monitor down failed after $ms ms"
else
    bad "open with the monitor down: exit $rc after $ms ms, want 1 after 3..12 s"
fi
one_line "monitor down" mon.err "error connecting: Connection timed out"
cluster mon-start >mon-start.log 2>&1 || bad "mon-start failed: $(tail -3 mon-start.log)"
check "open works again after mon-start" quiet timeout -k 5 60 "$B" io -f raw -r -c 'read 0 512' "rbd:rbd/$IMG"

echo "cluster full"
FULL=$RBD_PFX-full
rbdc create -s 16M "rbd/$FULL"
timeout -k 5 60 qemu-io -f raw -c 'write -P 0x42 0 1M' "rbd:rbd/$FULL" >/dev/null
touch mp2
fuse_start d2 --blockdev "driver=rbd,node-name=r,pool=rbd,image=$FULL" \
    --export "type=fuse,id=e,node-name=r,mountpoint=$WORK/mp2,writable=on"
ratios() {
    cephc osd set-nearfull-ratio "$1" >/dev/null 2>&1
    cephc osd set-backfillfull-ratio "$2" >/dev/null 2>&1
    cephc osd set-full-ratio "$3" >/dev/null 2>&1
}
pool_full() { cephc osd dump 2>/dev/null | grep -q "^pool .* 'rbd' .*flags [^ ]*full"; }
ratios 0.0005 0.0008 0.001
for _ in $(seq 100); do pool_full && break; sleep 0.2; done
if pool_full; then
    ok "pool rbd flagged full"
    rc=0
    t0=$(date +%s%N)
    timeout -k 5 20 "$B" io -f raw -c 'write -P 0x43 8M 1M' "rbd:rbd/$FULL" >full-io.out 2>&1 || rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    if [ $rc -lt 124 ] && grep -q 'No space left on device' full-io.out; then
        ok "io: a write to new space fails with ENOSPC after $ms ms"
    else
        bad "io on a full pool: exit $rc after $ms ms: $(head -3 full-io.out)"
    fi
    rc=0
    head -c 1048576 /dev/urandom >full-chunk
    tio dd if=full-chunk of=mp2 bs=1M seek=12 oflag=direct conv=notrunc status=none 2>full-dd.err || rc=$?
    if [ $rc != 0 ] && [ $rc -lt 124 ] && grep -q 'No space left on device' full-dd.err; then
        ok "mount: a write to new space fails with ENOSPC"
    else
        bad "mount on a full pool: dd exit $rc: $(cat full-dd.err)"
    fi
else
    bad "the pool did not get the full flag: $(cephc health 2>&1)"
fi
ratios 0.85 0.9 0.95
for _ in $(seq 100); do pool_full || break; sleep 0.2; done
if pool_full; then bad "pool still full after the ratios were restored"; else ok "pool no longer full"; fi
check "data written before the pool filled is intact (qemu-io)" \
    quiet timeout -k 5 60 qemu-io -f raw -r -U -c 'read -P 0x42 0 1M' "rbd:rbd/$FULL"
if tio dd if=full-chunk of=mp2 bs=1M seek=12 oflag=direct conv=notrunc status=none &&
    tio dd if=mp2 of=full-back bs=1M skip=12 count=1 iflag=direct status=none && cmp -s full-chunk full-back; then
    ok "writes through the mount work again"
else
    bad "writing through the mount after the pool emptied failed"
fi
fuse_stop_check d2 "full-pool daemon"

echo "after the faults"
fuse_stop_check d "fio daemon"
rbdc export --no-progress "rbd/$IMG" export.raw
if timeout -k 5 60 fio "${JOB[@]}" --verify_only --filename="$WORK/export.raw" >verify.log 2>&1; then
    ok "rbd export of the image passes fio --verify_only"
else
    bad "fio --verify_only on the exported image: $(grep -iE 'err|verify|bad' verify.log | head -5)"
fi
finish

#!/bin/bash
# tests/integration/qcow2-write-fuse.sh -- qcow2 writes through the FUSE
# export, concurrently, judged by fio and the real qemu-img.
#
# 1. Concurrency stress: on a fresh sparse qcow2 image, without and with a
#    backing file (and extended L2 with a backing file), fio randwrite
#    --verify=crc32c, io_uring, iodepth 64, O_DIRECT, 2 jobs with block
#    sizes from 4 KiB to 192 KiB (so requests share clusters and need
#    allocations in parallel) through the mount, reading back everything.
#    After SIGTERM: qemu-img check exit 0 (no leaks), fio --verify_only on
#    the image converted to raw, and the part fio did not touch still shows
#    the backing file.
# 2. Random pwrites (aligned and byte-granular, overlapping, from 4 threads)
#    through the mount mirrored into a reference raw file, then
#    qemu-img compare of the image with the reference and qemu-img check.
set -euo pipefail
export FUSE_TEST_BUDGET=${FUSE_TEST_BUDGET:-200}
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools fio python3

ENGINE=io_uring
truncate -s 1M probe
if ! timeout 20 fio --name=probe --filename=probe --size=1M --rw=write --bs=4k --ioengine=io_uring \
    --direct=1 >/dev/null 2>&1; then
    ENGINE=libaio
    echo "  note: fio's io_uring engine does not work here; using libaio"
fi
rm -f probe

SIZE=$((64 << 20))
JOB=$((24 << 20))
start_export() {
    touch mp
    fuse_start d --blockdev "driver=file,node-name=f0,filename=img.qcow2" \
        --blockdev "driver=qcow2,node-name=q0,file=f0" \
        --export "type=fuse,id=e,node-name=q0,mountpoint=mp,writable=on"
}

# name | qemu-img create options | backing?
for c in "sparse|-o cluster_size=64k|" "backing|-o cluster_size=64k|b" "extl2-backing|-o extended_l2=on,cluster_size=128k|b"; do
    IFS='|' read -r name opts backing <<<"$c"
    rm -f img.qcow2 base.qcow2 raw mp fio.log
    if [ -n "$backing" ]; then
        qemu-img create -q -f qcow2 base.qcow2 $SIZE
        qemu-io -c "write -P 0x5a 0 $SIZE" base.qcow2 >/dev/null
        # shellcheck disable=SC2086
        qemu-img create -q -f qcow2 $opts -b base.qcow2 -F qcow2 img.qcow2 $SIZE
    else
        # shellcheck disable=SC2086
        qemu-img create -q -f qcow2 $opts img.qcow2 $SIZE
    fi
    start_export || { bad "$name: daemon did not start"; continue; }
    fioargs=(--name=v --size=$JOB --offset_increment=$((JOB + 8192)) --rw=randwrite --verify=crc32c
        --verify_fatal=1 --verify_state_save=0 --group_reporting --direct=1 --ioengine=$ENGINE
        --iodepth=64 --bsrange=4k-192k --numjobs=2)
    if timeout -k 5 90 fio --filename=mp "${fioargs[@]}" >fio.log 2>&1; then
        ok "$name: fio randwrite iodepth 64 + verify through the mount"
    else
        bad "$name: fio through the mount: $(grep -iE 'verify|err|bad' fio.log | head -5)"
    fi
    fuse_stop_check d "$name"
    img_check "$name" img.qcow2 qcow2
    qemu-img convert -O raw img.qcow2 raw
    if timeout -k 5 90 fio --filename=raw "${fioargs[@]}" --verify_only >fio.log 2>&1; then
        ok "$name: fio --verify_only of the image"
    else
        bad "$name: fio --verify_only of the image: $(grep -iE 'verify|err|bad' fio.log | head -5)"
    fi
    if [ -n "$backing" ]; then
        # Beyond the jobs' regions: the backing file's data.
        tail_off=$((2 * JOB + 8192 + 65536))
        if qemu-io -f raw -c "read -P 0x5a $tail_off $((SIZE - tail_off))" raw | grep -q "verification failed"; then
            bad "$name: untouched part does not show the backing file"
        else
            ok "$name: untouched part shows the backing file"
        fi
    fi
done

# 2. Random pwrites mirrored into a reference file.
cat >rw.py <<'EOF'
import os, random, sys, threading
mp, ref, size, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fd = os.open(mp, os.O_RDWR)
rfd = os.open(ref, os.O_RDWR)
def worker(t):
    rng = random.Random(seed * 10 + t)
    # Each thread owns a quarter of the image: concurrent, never the same byte.
    lo, hi = t * size // 4, (t + 1) * size // 4
    for i in range(300):
        if rng.random() < 0.5:
            off = rng.randrange(lo, hi - 1)
            ln = rng.randrange(1, min(200000, hi - off))
        else:
            off = rng.randrange(lo // 512, hi // 512 - 1) * 512
            ln = min(rng.randrange(1, 300) * 512, hi - off)
        data = bytes([rng.randrange(256)]) * ln if rng.random() < 0.7 else os.urandom(ln)
        os.pwrite(fd, data, off)
        os.pwrite(rfd, data, off)
        if i % 50 == 0:
            os.fsync(fd)
ts = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
os.fsync(fd)
EOF
for c in "plain|" "backing|b"; do
    IFS='|' read -r name backing <<<"$c"
    rm -f img.qcow2 base.qcow2 ref.raw mp
    if [ -n "$backing" ]; then
        qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 $((16 << 20))
        qemu-io -c "write -P 0x21 0 12M" base.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -o cluster_size=16k -b base.qcow2 -F qcow2 img.qcow2 $((16 << 20))
    else
        qemu-img create -q -f qcow2 -o cluster_size=16k img.qcow2 $((16 << 20))
    fi
    qemu-img convert -O raw img.qcow2 ref.raw
    start_export || { bad "pwrite $name: daemon did not start"; continue; }
    if timeout -k 5 90 python3 rw.py mp ref.raw $((16 << 20)) $RANDOM; then
        ok "pwrite $name: 1200 random writes through the mount"
    else
        bad "pwrite $name: writer failed"
    fi
    fuse_stop_check d "pwrite $name"
    img_check "pwrite $name" img.qcow2 qcow2
    img_compare "pwrite $name" img.qcow2 qcow2 ref.raw
done
finish

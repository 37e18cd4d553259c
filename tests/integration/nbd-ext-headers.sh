#!/bin/bash
# tests/integration/nbd-ext-headers.sh -- our client against our server,
# the one pair on this machine that negotiates extended headers (64-bit
# requests and replies; QEMU 7.2 and libnbd 1.14 lack them):
#  (a) a mount of the daemon's NBD export through "blockgraph mount": the
#      daemon's counters (SIGUSR1) say the client negotiated extended
#      headers;
#  (b) fio randwrite with --verify=crc32c through that mount, then, with
#      the mount and the server gone, qemu-img compare of the image with
#      the mount's own read-back: the bytes travelled the 64-bit paths
#      intact, and qemu-img check calls the qcow2 clean;
#  (c) block status over the 64-bit path: SEEK_DATA/SEEK_HOLE on the mount
#      list the extents qemu-img map finds in the image.
set -u
. "$(dirname "$0")/lib-nbd-client.sh"
nbd_need fio fusermount3 qemu-img
[ -c /dev/fuse ] || { echo "SKIP: /dev/fuse missing"; exit 77; }

q qemu-img create -q -f qcow2 img.qcow2 64M
q qemu-io -c "write -P 0x41 0 1M" -c "write -P 0x42 10M 3M" img.qcow2
rm -f "$WORK/bg.sock"
"$B" daemon --blockdev driver=file,filename="$WORK/img.qcow2",node-name=f \
    --blockdev driver=qcow2,file=f,node-name=q \
    --nbd-server addr.type=unix,addr.path="$WORK/bg.sock" \
    --export type=nbd,id=e0,node-name=q,name=ex,writable=on >"$WORK/bg.log" 2>&1 3>&- &
NBD_SRV_PID[bg]=$!
srv_wait_socket bg || finish
U=$(uri bg ex)
touch mp
if ! timeout 30 "$B" mount -f raw --rw "$U" "$WORK/mp" >/dev/null 2>mount.err; then
    bad "mount of $U: $(cat mount.err)"
    finish
fi
NBD_MOUNTS+=("$WORK/mp")

# (c) first, while the image holds just the two written ranges.
seek_extents mp >seek.txt 2>&1
map_extents -U img.qcow2 >map.txt
if [ -s map.txt ] && cmp -s seek.txt map.txt; then
    ok "(c) SEEK_DATA/SEEK_HOLE on the mount = qemu-img map ($(wc -l <map.txt) extents)"
else
    bad "(c) extents differ: mount $(tr '\n' ' ' <seek.txt) / qemu-img $(tr '\n' ' ' <map.txt)"
fi

# (a) the daemon's counters name the client's mode.
kill -USR1 "$(srv_pid bg)"
sleep 0.5
if grep -q "1 client: 1 with extended headers" bg.log; then
    ok "(a) our client negotiated extended headers with our server"
else
    bad "(a) no extended headers: $(grep "export 'e0'" bg.log)"
fi

# (b) verified random writes over the 64-bit paths.
if timeout 120 fio --name=ext --filename="$WORK/mp" --direct=1 --rw=randwrite --bs=4k --iodepth=16 \
    --ioengine=io_uring --size=64M --io_size=16M --verify=crc32c --verify_fatal=1 >fio.log 2>&1; then
    ok "(b) fio randwrite --verify=crc32c through the mount"
else
    bad "(b) fio: $(tail -5 fio.log)"
fi
cp --sparse=always mp readback.raw
"$B" umount "$WORK/mp" >/dev/null 2>&1 || fusermount3 -u "$WORK/mp"
NBD_MOUNTS=()
srv_stop bg
if qemu-img compare -f raw -F qcow2 readback.raw img.qcow2 >cmp.log 2>&1; then
    ok "(b) the image holds what the mount read back"
else
    bad "(b) compare: $(cat cmp.log)"
fi
if qemu-img check img.qcow2 >check.log 2>&1; then
    ok "(b) qemu-img check: clean"
else
    bad "(b) check: $(cat check.log)"
fi
finish

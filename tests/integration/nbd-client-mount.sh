#!/bin/bash
# tests/integration/nbd-client-mount.sh -- "blockgraph mount" of an
# nbd+unix:// export served by qemu-nbd (an image of another machine shown
# as a raw file here):
#  (a) SEEK_DATA / SEEK_HOLE on the mount list the same data extents as
#      qemu-img map over the same server (block status reaches the mount);
#  (b) fio randwrite with --verify=crc32c through the mount (O_DIRECT,
#      iodepth 16), then, after umount and the server stopped, fio
#      --verify_only on the served image file itself: what the mount
#      acknowledged is what the image holds; the same with --iothreads 2
#      (requests from iothreads move to the connection's context);
#  (c) without a MOUNTPOINT the command says one is needed;
#  (d) "blockgraph daemon --blockdev driver=nbd,server.type=unix,..." with a
#      FUSE export on the node: the mount reads as the served image.
set -u
. "$(dirname "$0")/lib-nbd-client.sh"
nbd_need qemu-nbd fio fusermount3
[ -c /dev/fuse ] || { echo "SKIP: /dev/fuse missing"; exit 77; }

M=$((1 << 20))
q qemu-img create -q -f raw m.raw 64M
q qemu-io -f raw -c "write -P 0x41 0 1M" -c "write -P 0x42 10M 3M" -c "write -P 0x43 63M 1M" m.raw
qnbd_start m -f raw -x ex m.raw || finish
U=$(uri m ex)
touch mp
out=$(timeout 30 "$B" mount -f raw --rw "$U" "$WORK/mp" 2>mount.err)
rc=$?
NBD_MOUNTS+=("$WORK/mp")
if [ $rc != 0 ]; then
    bad "mount: exit $rc: $(cat mount.err)"
    finish
fi
ok "mounted $U at $out"

seek_extents mp >seek.txt 2>&1
map_extents -f raw "$U" >map.txt
if cmp -s seek.txt map.txt && [ -s seek.txt ]; then
    ok "(a) SEEK_DATA/SEEK_HOLE on the mount match qemu-img map: $(tr '\n' ' ' <seek.txt)"
else
    bad "(a) seek: $(tr '\n' ' ' <seek.txt) vs map: $(tr '\n' ' ' <map.txt)"
fi

JOB=(--name=nbd --offset=16m --size=16m --rw=randwrite --bsrange=4k-256k --verify=crc32c --verify_fatal=1
    --verify_state_save=0 --randseed=1515)
if timeout -k 5 90 fio "${JOB[@]}" --filename="$WORK/mp" --ioengine=libaio --direct=1 --iodepth=16 >fio.log 2>&1; then
    ok "(b) fio randwrite + verify through the mount"
else
    bad "(b) fio through the mount: $(grep -iE 'verify|err' fio.log | head -5)"
fi
if timeout 40 "$B" umount "$WORK/mp" >umount.out 2>&1; then
    ok "(b) umount"
else
    bad "(b) umount: $(cat umount.out)"
fi
# Again with two iothreads: requests come from their coroutines and move
# to the connection's context for the time of the request.
JOB2=(--name=nbd2 --offset=40m --size=16m --rw=randwrite --bsrange=4k-128k --verify=crc32c --verify_fatal=1
    --verify_state_save=0 --randseed=2626)
if out=$(timeout 30 "$B" mount --iothreads 2 -f raw --rw "$U" "$WORK/mp" 2>&1) &&
    timeout -k 5 90 fio "${JOB2[@]}" --filename="$WORK/mp" --ioengine=libaio --direct=1 --iodepth=32 --numjobs=1 \
        >fio2.log 2>&1; then
    ok "(b) fio randwrite + verify through a mount served by two iothreads"
else
    bad "(b) iothreads: $out $(grep -iE 'verify|err' fio2.log | head -5)"
fi
timeout 40 "$B" umount "$WORK/mp" >umount.out 2>&1 || bad "(b) umount (iothreads): $(cat umount.out)"
srv_stop m
if timeout 60 fio "${JOB[@]}" --filename="$WORK/m.raw" --verify_only --ioengine=psync >fio-verify.log 2>&1 &&
    timeout 60 fio "${JOB2[@]}" --filename="$WORK/m.raw" --verify_only --ioengine=psync >>fio-verify.log 2>&1; then
    ok "(b) the served image holds what fio wrote"
else
    bad "(b) fio --verify_only on the image: $(grep -iE 'verify|err' fio-verify.log | head -5)"
fi
expect_rc "(b) data outside the fio region intact" 0 qemu-io -f raw -c "read -P 0x41 0 1M" -c "read -P 0x42 10M 3M" \
    -c "read -P 0x43 63M 1M" m.raw

# (d) the daemon: --blockdev driver=nbd (server.* options) under a FUSE export.
qnbd_start m -f raw -x ex m.raw || finish
touch mp2
timeout 60 "$B" daemon --blockdev "driver=nbd,node-name=n0,server.type=unix,server.path=$WORK/m.sock,export=ex" \
    --export "type=fuse,id=e0,node-name=n0,mountpoint=$WORK/mp2" >daemon.log 2>&1 &
dpid=$!
NBD_MOUNTS+=("$WORK/mp2")
for _ in $(seq 100); do grep -q " $WORK/mp2 " /proc/self/mountinfo && break; sleep 0.1; done
if grep -q " $WORK/mp2 " /proc/self/mountinfo; then
    if cmp mp2 m.raw; then ok "(d) daemon --blockdev driver=nbd: the export reads as the image"; else bad "(d) contents differ"; fi
else
    bad "(d) daemon did not mount: $(cat daemon.log)"
fi
kill -TERM $dpid 2>/dev/null
wait $dpid
rc=$?
[ $rc = 0 ] && ok "(d) daemon exited 0 on SIGTERM" || bad "(d) daemon exit $rc: $(cat daemon.log)"
srv_stop m

"$B" mount -f raw "$U" >c.out 2>&1
grep -q "MOUNTPOINT is needed" c.out && ok "(c) protocol name without MOUNTPOINT refused" || bad "(c) $(cat c.out)"
finish

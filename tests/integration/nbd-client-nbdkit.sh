#!/bin/bash
# tests/integration/nbd-client-nbdkit.sh -- our nbd driver against nbdkit:
#
#  (a) memory plugin: writes, zeroes, trims read back by qemu-io over the
#      same server; block status (img map) after writes equals qemu-img's;
#  (b) error filter: reads and writes that fail on the server fail with
#      the server's errno (EIO, ENOSPC) and a clear message, and the
#      connection stays usable (errors switched on and off with error-file
#      within one io session);
#  (c) delay filter: 64 reads in flight on one connection complete in a
#      fraction of the time one-at-a-time would take;
#  (d) no structured replies (--no-sr): reads and writes still work, img map
#      says all data;
#  (e) reconnect: nbdkit (file plugin, so the data survives it) killed and
#      restarted while an io session writes with reconnect-delay=15: every
#      write before, during (in flight when the server died) and after is
#      in the file; without reconnect-delay the request fails with EIO; with
#      a delay that passes, the request fails after it;
#  (f) open-timeout: a server started 1 s after the client is reached.
set -u
. "$(dirname "$0")/lib-nbd-client.sh"
nbd_need nbdkit qemu-io

M=$((1 << 20))

# ------------------------------------------------------------------ (a)
echo "(a) memory plugin"
kit_start mem memory 64M || finish
U=$(uri mem)
expect_rc "(a) writes" 0 "$B" io -f raw -c "write -P 0x61 0 1M" -c "write -P 0x62 5M 64k" -c "write -z 0 64k" \
    -c "write -P 0x63 20M 3M" -c "discard 21M 1M" "$U"
expect_rc "(a) qemu-io reads them" 0 qemu-io -f raw -c "read -P 0 0 64k" -c "read -P 0x61 64k 960k" \
    -c "read -P 0x62 5M 64k" -c "read -P 0x63 20M 1M" -c "read -P 0x63 22M 1M" "$U"
"$B" img map --output=json -f raw "$U" >ours.json 2>ours.err || bad "(a) img map: $(cat ours.err)"
qemu-img map --output=json -f raw "$U" >qemu.json 2>&1
json_same "(a) img map equals qemu-img map" map ours.json qemu.json
srv_stop mem

# ------------------------------------------------------------------ (b)
echo "(b) error filter"
kit_start err --filter=error memory 16M error-pread=EIO error-pread-rate=100% error-pread-file="$WORK/rerr" \
    error-pwrite=ENOSPC error-pwrite-rate=100% error-pwrite-file="$WORK/werr" || finish
U=$(uri err)
touch rerr
"$B" io -f raw -c "read 0 4k" "$U" >b.out 2>&1
grep -q "read failed: Input/output error" b.out && ok "(b) server EIO on read: $(head -1 b.out)" || bad "(b) read error: $(cat b.out)"
rm -f rerr
touch werr
"$B" io -f raw -c "write -P 1 0 4k" "$U" >b.out 2>&1
grep -q "write failed: No space left on device" b.out && ok "(b) server ENOSPC on write" || bad "(b) write error: $(cat b.out)"
rm -f werr
mkfifo bcmd
"$B" io -f raw "$U" <bcmd >b.out 2>&1 &
iopid=$!
exec 3>bcmd
echo "write -P 0x44 0 64k" >&3
sleep 0.5
touch rerr
echo "read -P 0x44 0 64k" >&3
sleep 0.5
rm -f rerr
echo "read -P 0x44 0 64k" >&3
exec 3>&-
wait $iopid
n_fail=$(grep -c "read failed: Input/output error" b.out)
n_ok=$(grep -c "^read 65536/65536" b.out)
[ "$n_fail" = 1 ] && [ "$n_ok" = 1 ] && ok "(b) the connection survives a failed request" ||
    bad "(b) error then recovery: $(cat b.out)"
srv_stop err

# ------------------------------------------------------------------ (c)
echo "(c) many requests in flight"
kit_start slow --filter=delay memory 64M rdelay=200ms || finish
start=$(date +%s%N)
expect_rc "(c) img bench depth 64" 0 "$B" img bench -f raw -c 128 -d 64 -s 4k "$(uri slow)"
ms=$((($(date +%s%N) - start) / 1000000))
# One at a time: 128 x 200 ms = 25.6 s. nbdkit serves 16 requests at once: ~1.6 s.
[ $ms -lt 8000 ] && ok "(c) 128 delayed reads in $ms ms" || bad "(c) 128 delayed reads took $ms ms"
srv_stop slow

# ------------------------------------------------------------------ (d)
echo "(d) no structured replies"
kit_start nosr --no-sr memory 8M || finish
U=$(uri nosr)
expect_rc "(d) write and read back" 0 "$B" io -f raw -c "write -P 0x71 4k 8k" -c "read -P 0x71 4k 8k" -c "read -P 0 0 4k" "$U"
"$B" img map --output=json -f raw "$U" >ours.json 2>&1
python3 -c '
import json, sys
m = json.load(open("ours.json"))
sys.exit(0 if len(m) == 1 and m[0]["data"] and m[0]["length"] == 8 << 20 else 1)' &&
    ok "(d) map is all data without block status" || bad "(d) map: $(cat ours.json)"
srv_stop nosr

# ------------------------------------------------------------------ (e)
echo "(e) reconnect"
q qemu-img create -q -f raw r.raw 16M
kit_start rec --filter=delay file "$WORK/r.raw" wdelay=300ms || finish
U=$(uri rec)
mkfifo ecmd
"$B" io --image-opts "driver=raw,file.driver=nbd,file.filename=$U,file.reconnect-delay=15" <ecmd >e.out 2>&1 &
iopid=$!
exec 3>ecmd
echo "write -P 0x11 0 1M" >&3
sleep 1
# Writes in flight (each takes 300 ms on the server) when it dies.
echo "aio_write -P 0x22 1M 1M" >&3
echo "aio_write -P 0x23 2M 1M" >&3
echo "aio_write -P 0x24 3M 1M" >&3
sleep 0.1
srv_stop rec KILL
sleep 1
kit_start rec file "$WORK/r.raw" || finish
echo "aio_flush" >&3
echo "write -P 0x33 4M 1M" >&3
echo "read -P 0x11 0 1M" >&3
echo "read -P 0x22 1M 1M" >&3
echo "read -P 0x24 3M 1M" >&3
exec 3>&-
wait $iopid
rc=$?
if [ $rc = 0 ] && ! grep -q "failed" e.out && [ "$(grep -c '^read 1048576/1048576' e.out)" = 3 ]; then
    ok "(e) io session survived the restart"
else
    bad "(e) io session: exit $rc: $(cat e.out)"
fi
srv_stop rec
expect_rc "(e) file holds every write" 0 qemu-io -f raw -c "read -P 0x11 0 1M" -c "read -P 0x22 1M 1M" \
    -c "read -P 0x23 2M 1M" -c "read -P 0x24 3M 1M" -c "read -P 0x33 4M 1M" -c "read -P 0 5M 11M" r.raw

kit_start rec file "$WORK/r.raw" || finish
mkfifo ecmd2
"$B" io -f raw "$U" <ecmd2 >e2.out 2>&1 &
iopid=$!
exec 3>ecmd2
echo "read -P 0x11 0 4k" >&3
sleep 0.5
srv_stop rec KILL
echo "read -P 0x11 0 4k" >&3
exec 3>&-
wait $iopid
grep -q "read failed: Input/output error" e2.out && ok "(e) without reconnect-delay a lost server fails the request" ||
    bad "(e) no reconnect: $(cat e2.out)"

kit_start rec file "$WORK/r.raw" || finish
mkfifo ecmd3
"$B" io --image-opts "driver=raw,file.driver=nbd,file.filename=$U,file.reconnect-delay=1" <ecmd3 >e3.out 2>&1 &
iopid=$!
exec 3>ecmd3
echo "read -P 0x11 0 4k" >&3
sleep 0.5
srv_stop rec KILL
start=$(date +%s%N)
echo "read -P 0x11 0 4k" >&3
exec 3>&-
wait $iopid
ms=$((($(date +%s%N) - start) / 1000000))
grep -q "read failed: Input/output error" e3.out && [ $ms -ge 950 ] && [ $ms -lt 6000 ] &&
    ok "(e) reconnect-delay=1 with no server: the request fails after $ms ms" || bad "(e) delay passed: $ms ms: $(cat e3.out)"

# ------------------------------------------------------------------ (f)
echo "(f) open-timeout"
(sleep 1; exec nbdkit -f -U "$WORK/late.sock" memory 1M >late.log 2>&1) &
NBD_SRV_PID[late]=$!   # the subshell becomes nbdkit (exec)
expect_rc "(f) open-timeout=10 waits for a server that starts late" 0 "$B" io -c "read -P 0 0 4k" --image-opts \
    "driver=raw,file.driver=nbd,file.filename=$(uri late),file.open-timeout=10"
srv_stop late
expect_rc "(f) without open-timeout a missing server fails at once" 1 "$B" io -c "read 0 4k" -f raw "$(uri none)"

finish

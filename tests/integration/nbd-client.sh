#!/bin/bash
# tests/integration/nbd-client.sh -- our nbd driver against qemu-nbd,
# judged by qemu-img / qemu-io over the same server.
#
#  (a) raw image served by qemu-nbd (unix socket): img info size; data
#      written by qemu-io read back by "blockgraph io" (read -P) and data
#      written by "blockgraph io" read back by qemu-io; write -z, discard;
#  (b) img map --output=json of nbd+unix:// equals qemu-img map of the
#      same URL (block status from base:allocation);
#  (c) img convert nbd:// -> raw and -> qcow2: qemu-img compare with the
#      served image; the qcow2 output keeps the source's holes unallocated;
#      convert into an nbd:// target (no -n) overwrites its old contents,
#      and a source larger than the export is refused;
#  (d) qcow2 image served with -f qcow2: map equal to qemu-img's, read
#      patterns, convert + compare;
#  (e) TCP: nbd://127.0.0.1:PORT/ex, and the legacy nbd:HOST:PORT:exportname=
#      and nbd:unix:PATH:exportname= forms;
#  (f) errors: unknown export (the server's message), read-only export
#      (writable open refused with QEMU's text; -r works; a write refused),
#      malformed names ("No valid URL specified"), nbds:// without
#      tls-creds, no server listening;
#  (g) x-dirty-bitmap=qemu:dirty-bitmap:b0 (qemu-nbd -B b0): img map equals
#      qemu-img map with the same option; a bitmap the server lacks fails
#      the open, and the handshake ends with ABORT (qemu-nbd logs no error).
set -u
. "$(dirname "$0")/lib-nbd-client.sh"
nbd_need qemu-nbd qemu-io

M=$((1 << 20))

# ------------------------------------------------------------------ (a)
echo "(a) raw over qemu-nbd"
q qemu-img create -q -f raw a.raw 64M
q qemu-io -f raw -c "write -P 0xab 0 1M" -c "write -P 0x5c 3M 512k" -c "write -P 0x11 63M 1M" a.raw
qnbd_start a -f raw -x ex a.raw || finish
U=$(uri a ex)

out=$("$B" img info --output=json "$U" 2>&1)
size=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])' 2>/dev/null)
[ "$size" = $((64 * M)) ] && ok "(a) img info virtual-size" || bad "(a) img info: $out"

expect_rc "(a) read patterns written by qemu-io" 0 \
    "$B" io -f raw -c "read -P 0xab 0 1M" -c "read -P 0x5c 3M 512k" -c "read -P 0 1M 2M" -c "read -P 0x11 63M 1M" "$U"
expect_rc "(a) write patterns" 0 \
    "$B" io -f raw -c "write -P 0xcd 8M 1M" -c "write -P 0xce 9M 4k" -c "write -P 0xcf 12345k 3k" "$U"
expect_rc "(a) qemu-io reads our writes" 0 \
    qemu-io -f raw -c "read -P 0xcd 8M 1M" -c "read -P 0xce 9M 4k" -c "read -P 0xcf 12345k 3k" "$U"
expect_rc "(a) write -z and discard" 0 \
    "$B" io -f raw -c "write -z 8M 512k" -c "discard 3M 512k" -c "write -P 0x77 40M 64k" "$U"
expect_rc "(a) qemu-io sees the zeroes" 0 qemu-io -f raw -c "read -P 0 8M 512k" -c "read -P 0xcd 8704k 512k" \
    -c "read -P 0x77 40M 64k" "$U"
expect_rc "(a) unaligned read across a boundary" 0 "$B" io -f raw -c "read -P 0xce 9M 4k" -c "read -v 9M 16" "$U"

# ------------------------------------------------------------------ (b)
echo "(b) map"
"$B" img map --output=json -f raw "$U" >ours.json 2>ours.err || bad "(b) img map failed: $(cat ours.err)"
qemu-img map --output=json -f raw "$U" >qemu.json 2>&1
json_same "(b) img map of nbd+unix:// equals qemu-img map" map ours.json qemu.json

# ------------------------------------------------------------------ (c)
echo "(c) convert"
expect_rc "(c) convert nbd -> raw" 0 "$B" img convert -f raw -O raw "$U" c.raw
same_data "(c) raw copy" c.raw "$U" raw raw
expect_rc "(c) convert nbd -> qcow2" 0 "$B" img convert -f raw -O qcow2 "$U" c.qcow2
same_data "(c) qcow2 copy" c.qcow2 "$U" qcow2 raw
alloc=$(qemu-img map --output=json c.qcow2 | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
# Data in the image: 1M + 512k(discarded: may stay) + 1M + 1M + 4k + 3k + 64k; far below 64M.
if [ -n "$alloc" ] && [ "$alloc" -lt $((8 * M)) ]; then
    ok "(c) holes skipped: $alloc bytes allocated in the qcow2 copy"
else
    bad "(c) holes not skipped: $alloc bytes allocated"
fi
srv_stop a
# Into an export: "creating" the target opens it (it must be big enough) and
# every byte is written, zeros included (the old contents are not zero).
q qemu-img create -q -f raw t.raw 64M
q qemu-io -f raw -c "write -P 0x99 0 64M" t.raw
qnbd_start t -f raw t.raw || finish
expect_rc "(c) convert raw -> nbd:// target without -n" 0 "$B" img convert -f raw -O raw c.raw "$(uri t)"
same_data "(c) the export holds the source, holes as zeros" c.raw "$(uri t)" raw raw
q qemu-img create -q -f raw big.raw 65M
"$B" img convert -f raw -O raw big.raw "$(uri t)" >c.out 2>&1
rc=$?
[ $rc != 0 ] && grep -q "Cannot grow NBD exports" c.out && ok "(c) a source larger than the export is refused" ||
    bad "(c) larger source: exit $rc: $(cat c.out)"
srv_stop t

# ------------------------------------------------------------------ (d)
echo "(d) qcow2 over qemu-nbd"
q qemu-img create -q -f qcow2 d.qcow2 32M
q qemu-io -f qcow2 -c "write -P 0x21 0 64k" -c "write -P 0x22 1M 200k" -c "write -z 4M 1M" -c "write -P 0x23 31M 1M" d.qcow2
qnbd_start d -f qcow2 -x "" d.qcow2 || finish
U=$(uri d)
"$B" img map --output=json -f raw "$U" >ours.json 2>ours.err || bad "(d) img map failed: $(cat ours.err)"
qemu-img map --output=json -f raw "$U" >qemu.json 2>&1
json_same "(d) img map of a qcow2 export equals qemu-img map" map ours.json qemu.json
expect_rc "(d) read patterns" 0 "$B" io -f raw -c "read -P 0x21 0 64k" -c "read -P 0x22 1M 200k" \
    -c "read -P 0 4M 1M" -c "read -P 0x23 31M 1M" "$U"
expect_rc "(d) writes" 0 "$B" io -f raw -c "write -P 0x31 2M 1M" -c "write -P 0x32 100k 8k" "$U"
expect_rc "(d) convert nbd -> raw" 0 "$B" img convert -f raw -O raw "$U" d.raw
same_data "(d) copy of the qcow2 export" d.raw "$U" raw raw
expect_rc "(d) qemu-io reads our writes" 0 qemu-io -f raw -c "read -P 0x31 2M 1M" -c "read -P 0x32 100k 8k" "$U"
srv_stop d
qemu_accepts "(d) image after our writes" d.qcow2

# ------------------------------------------------------------------ (e)
echo "(e) TCP and legacy names"
q qemu-img create -q -f raw e.raw 4M
q qemu-io -f raw -c "write -P 0x42 0 4M" e.raw
port=$(free_port)
qemu-nbd -b 127.0.0.1 -p "$port" -t -e 8 -f raw -x tcpex e.raw >e.log 2>&1 &
NBD_SRV_PID[e]=$!
for i in $(seq 100); do
    qemu-img info "nbd://127.0.0.1:$port/tcpex" >/dev/null 2>&1 && break
    sleep 0.1
done
expect_rc "(e) nbd://127.0.0.1:PORT/ex" 0 "$B" io -f raw -c "read -P 0x42 0 4M" "nbd://127.0.0.1:$port/tcpex"
expect_rc "(e) nbd:127.0.0.1:PORT:exportname=ex" 0 "$B" io -f raw -c "read -P 0x42 1M 4k" "nbd:127.0.0.1:$port:exportname=tcpex"
expect_rc "(e) --blockdev driver=nbd,server.type=inet" 0 "$B" io -c "read -P 0x42 0 64k" --image-opts \
    "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port=$port,file.export=tcpex"
srv_stop e
qnbd_start e2 -f raw -x lex e.raw || finish
expect_rc "(e) nbd:unix:PATH:exportname=ex" 0 "$B" io -f raw -c "read -P 0x42 0 4k" "nbd:unix:$WORK/e2.sock:exportname=lex"
"$B" img info "$(uri e2 lex)" >info.out 2>&1
grep -q "^image: nbd+unix:///lex?socket=$WORK/e2.sock\$" info.out && ok "(e) img info names the export as QEMU does" ||
    bad "(e) img info image line: $(head -2 info.out)"

# ------------------------------------------------------------------ (f)
echo "(f) errors"
"$B" img info "$(uri e2 nope)" >f.out 2>&1
rc=$?
if [ $rc != 0 ] && grep -q "Requested export not available" f.out && grep -q "nope" f.out; then
    ok "(f) unknown export: $(head -1 f.out)"
else
    bad "(f) unknown export: exit $rc: $(cat f.out)"
fi
srv_stop e2
qnbd_start ro -r -f raw -x ro e.raw || finish
"$B" io -f raw -c "read -P 0x42 0 4k" "$(uri ro ro)" >f.out 2>&1
rc=$?
[ $rc != 0 ] && grep -q "NBD export is read-only" f.out && ok "(f) writable open of a read-only export refused" ||
    bad "(f) read-only export: exit $rc: $(cat f.out)"
expect_rc "(f) -r opens a read-only export" 0 "$B" io -r -f raw -c "read -P 0x42 0 4k" "$(uri ro ro)"
srv_stop ro
for name in "nbd+unix:///ex" "nbd+unix://host/ex?socket=/x" "nbd://" "nbd://h:port/x" "nbd://h/x?foo=bar" "nbd:unix:"; do
    "$B" img info "$name" >f.out 2>&1
    rc=$?
    [ $rc != 0 ] && grep -q "No valid URL specified" f.out && ok "(f) '$name' refused" || bad "(f) '$name': exit $rc: $(cat f.out)"
done
"$B" img info "nbds+unix:///ex?socket=$WORK/none.sock" >f.out 2>&1
rc=$?
[ $rc != 0 ] && grep -q "tls-creds" f.out && ok "(f) nbds:// without tls-creds says what is needed" ||
    bad "(f) nbds://: exit $rc: $(cat f.out)"
"$B" img info "$(uri none)" >f.out 2>&1
rc=$?
[ $rc != 0 ] && grep -q "Failed to connect" f.out && ok "(f) no server: $(head -1 f.out)" || bad "(f) no server: exit $rc: $(cat f.out)"

# ------------------------------------------------------------------ (g)
echo "(g) x-dirty-bitmap"
q qemu-img create -q -f qcow2 g.qcow2 16M
q qemu-io -c "write -P 1 0 1M" g.qcow2
q qemu-img bitmap --add g.qcow2 b0
q qemu-io -c "write -P 2 4M 1M" -c "write -P 3 9M 64k" g.qcow2
qnbd_start g -r -f qcow2 -B b0 g.qcow2 || finish
O="driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$WORK/g.sock,file.x-dirty-bitmap=qemu:dirty-bitmap:b0"
"$B" img map --output=json --image-opts "$O" >ours.json 2>ours.err || bad "(g) img map: $(cat ours.err)"
qemu-img map --output=json --image-opts "$O" >qemu.json 2>&1
json_same "(g) img map with x-dirty-bitmap equals qemu-img's (dirty areas as data=false)" map ours.json qemu.json
"$B" img map --output=json --image-opts "${O/b0/nope}" >g.out 2>&1
rc=$?
[ $rc != 0 ] && grep -q "requested x-dirty-bitmap qemu:dirty-bitmap:nope not found" g.out &&
    ok "(g) a bitmap the server lacks is refused" || bad "(g) missing bitmap: exit $rc: $(cat g.out)"
grep -q "negotiation failed" "$WORK/g.log" && bad "(g) qemu-nbd saw a rude disconnect: $(cat "$WORK/g.log")" ||
    ok "(g) the refused handshake ended with ABORT"
srv_stop g

finish

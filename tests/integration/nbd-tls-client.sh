#!/bin/bash
# tests/integration/nbd-tls-client.sh -- our nbd driver (blockgraph img /
# io with --object tls-creds-*,endpoint=client and tls-creds=) against TLS
# servers: qemu-nbd --tls-creds (x509 and PSK, TCP and unix socket) and
# nbdkit --tls=require (x509 and PSK). The data read is the servers' data,
# writes land in the servers' image; a wrong CA, a wrong hostname, a wrong
# key and a missing tls-creds fail.
# NBD_TLS_ORACLE=1 runs qemu-img/qemu-io in place of ours: a self-test of
# the checks (they all pass with QEMU's client).
set -u
. "$(dirname "$0")/lib-tls.sh"
for tool in nbdkit qemu-io; do
    command -v $tool >/dev/null || { echo "SKIP: $tool not installed"; exit 77; }
done
if [ -n "${NBD_TLS_ORACLE:-}" ]; then
    IMG=(qemu-img)
    IO=(qemu-io)
else
    IMG=("$BLOCKGRAPH" img)
    IO=("$BLOCKGRAPH" io)
    if "$BLOCKGRAPH" img info --image-opts driver=nbd,server.type=unix,server.path=/nonexistent,export=x 2>&1 |
        grep -q "unknown driver 'nbd'"; then
        echo "SKIP: this blockgraph has no nbd driver"
        exit 77
    fi
fi

make_x509 x
make_x509_other other
mkdir onlyca && cp x/ca-cert.pem onlyca/
make_psk p alice
make_psk pbad alice
qemu-img create -q -f raw img 4M
qemu-io -f raw -c 'write -P 0x5a 0 4M' img >/dev/null

check() { local d=$1; shift; if "$@" >out 2>&1; then ok "$d"; else bad "$d: $(head -3 out)"; fi; }
refuse() { local d=$1; shift; if "$@" >out 2>&1; then bad "$d: succeeded: $(head -3 out)"; else ok "$d"; fi; }
# qemu_nbd NAME ARGS...: a persistent qemu-nbd on img with TLS; SRV_PID
qemu_nbd() {
    local name=$1
    shift
    start_bg "$name" qemu-nbd "$@" -t -f raw -x ex "$WORK/img"
    SRV_PID=$LAST_PID
}

# ---- qemu-nbd, x509, TCP
echo "qemu-nbd, x509"
P=$(free_port)
qemu_nbd qnbd --object "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server" --tls-creds t -b 127.0.0.1 -p "$P"
wait_port "$P" || bad "qemu-nbd does not listen: $(cat qnbd.log)"
OBJ="tls-creds-x509,id=c,dir=$WORK/x,endpoint=client"
OPTS="driver=nbd,server.type=inet,server.host=localhost,server.port=$P,export=ex,tls-creds=c"
"${IMG[@]}" info --object "$OBJ" --image-opts "$OPTS" >info 2>&1
grep -q "virtual size: 4 MiB" info && ok "img info over TLS" || bad "img info: $(cat info)"
check "io reads the pattern over TLS" "${IO[@]}" --object "$OBJ" --image-opts "$OPTS" -c 'read -P 0x5a 0 4M'
check "img convert copies the export" "${IMG[@]}" convert --object "$OBJ" --image-opts "$OPTS" -O raw copy.raw
cmp -s copy.raw img && ok "the copy is the image" || bad "the copy differs"
check "io writes over TLS" "${IO[@]}" --object "$OBJ" --image-opts "$OPTS" -c 'write -P 0x33 1M 64k'
check "the write is in qemu-nbd's image (read back with nbdcopy)" \
    nbdcopy "nbds://localhost:$P/ex?tls-certificates=$WORK/x" back.raw
qemu-io -f raw -r -c 'read -P 0x33 1M 64k' back.raw >/dev/null 2>&1 && ok "the pattern is there" \
    || bad "the write did not reach qemu-nbd's image"
check "io restores the pattern" "${IO[@]}" --object "$OBJ" --image-opts "$OPTS" -c 'write -P 0x5a 1M 64k'
check "the address as hostname (the certificate carries 127.0.0.1)" "${IMG[@]}" info --object "$OBJ" \
    --image-opts "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$P,export=ex,tls-creds=c"
refuse "without tls-creds: no export" "${IMG[@]}" info \
    --image-opts "driver=nbd,server.type=inet,server.host=localhost,server.port=$P,export=ex"
refuse "a client trusting another CA" "${IMG[@]}" info --object "tls-creds-x509,id=c,dir=$WORK/other,endpoint=client" \
    --image-opts "$OPTS"
grep -q "The certificate hasn't got a known issuer" out && ok "...says the issuer is unknown" \
    || bad "wrong CA message: $(cat out)"
refuse "tls-hostname=otherhost" "${IMG[@]}" info --object "$OBJ" --image-opts "$OPTS,tls-hostname=otherhost"
grep -q "Certificate does not match the hostname otherhost" out && ok "...says the hostname does not match" \
    || bad "hostname message: $(cat out)"
refuse "server credentials on the client side" "${IMG[@]}" info \
    --object "tls-creds-x509,id=c,dir=$WORK/x,endpoint=server" --image-opts "$OPTS"
stop_bg "$SRV_PID"

# ---- qemu-nbd demanding a client certificate (verify-peer is on by default)
echo "qemu-nbd, client certificate"
P=$(free_port)
qemu_nbd qnbd-verify --object "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server,verify-peer=on" --tls-creds t \
    -b 127.0.0.1 -p "$P"
wait_port "$P" || bad "qemu-nbd does not listen: $(cat qnbd-verify.log)"
OPTS="driver=nbd,server.type=inet,server.host=localhost,server.port=$P,export=ex,tls-creds=c"
check "with our client certificate" "${IO[@]}" --object "$OBJ" --image-opts "$OPTS" -c 'read -P 0x5a 0 64k'
refuse "without a client certificate" "${IO[@]}" --object "tls-creds-x509,id=c,dir=$WORK/onlyca,endpoint=client" \
    --image-opts "$OPTS" -c 'read 0 64k'
stop_bg "$SRV_PID"

# ---- qemu-nbd, x509, unix socket (tls-hostname names the certificate)
echo "qemu-nbd, unix socket"
S=$WORK/q.sock
qemu_nbd qnbd-unix --object "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server" --tls-creds t -k "$S"
wait_socket "$S" || bad "no socket: $(cat qnbd-unix.log)"
check "io reads over unix with TLS" "${IO[@]}" --object "$OBJ" \
    --image-opts "driver=nbd,server.type=unix,server.path=$S,export=ex,tls-creds=c,tls-hostname=localhost" \
    -c 'read -P 0x5a 0 4M'
stop_bg "$SRV_PID"

# ---- qemu-nbd, PSK
echo "qemu-nbd, PSK"
P=$(free_port)
qemu_nbd qnbd-psk --object "tls-creds-psk,id=t,dir=$WORK/p,endpoint=server" --tls-creds t -b 127.0.0.1 -p "$P"
wait_port "$P" || bad "qemu-nbd does not listen: $(cat qnbd-psk.log)"
OPTS="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$P,export=ex,tls-creds=c"
check "io reads with alice's key" "${IO[@]}" --object "tls-creds-psk,id=c,dir=$WORK/p,username=alice" \
    --image-opts "$OPTS" -c 'read -P 0x5a 0 4M'
refuse "a wrong key" "${IO[@]}" --object "tls-creds-psk,id=c,dir=$WORK/pbad,username=alice" \
    --image-opts "$OPTS" -c 'read 0 64k'
stop_bg "$SRV_PID"

# ---- nbdkit --tls=require
echo "nbdkit, x509"
P=$(free_port)
start_bg nbdkit nbdkit -f -i 127.0.0.1 -p "$P" --tls=require --tls-certificates="$WORK/x" \
    pattern size=4M
SRV_PID=$LAST_PID
wait_port "$P" || bad "nbdkit does not listen: $(cat nbdkit.log)"
OPTS="driver=nbd,server.type=inet,server.host=localhost,server.port=$P,tls-creds=c"
"${IMG[@]}" convert --object "$OBJ" --image-opts "$OPTS" -O raw kit.raw >out 2>&1 || bad "convert from nbdkit: $(cat out)"
nbdcopy "nbds://localhost:$P/?tls-certificates=$WORK/x" kit-ref.raw 2>/dev/null
[ -s kit.raw ] && cmp -s kit.raw kit-ref.raw && ok "nbdkit's pattern, as libnbd reads it" \
    || bad "the pattern from nbdkit differs from libnbd's copy"
refuse "nbdkit: without tls-creds" "${IMG[@]}" info --image-opts "driver=nbd,server.type=inet,server.host=localhost,server.port=$P"
stop_bg "$SRV_PID"

echo "nbdkit, PSK"
P=$(free_port)
start_bg nbdkit-psk nbdkit -f -i 127.0.0.1 -p "$P" --tls=require --tls-psk="$WORK/p/keys.psk" memory 4M
SRV_PID=$LAST_PID
wait_port "$P" || bad "nbdkit does not listen: $(cat nbdkit-psk.log)"
OPTS="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$P,tls-creds=c"
POBJ="tls-creds-psk,id=c,dir=$WORK/p,username=alice"
check "write to nbdkit's memory with PSK" "${IO[@]}" --object "$POBJ" --image-opts "$OPTS" -c 'write -P 0x77 64k 128k'
check "read it back" "${IO[@]}" --object "$POBJ" --image-opts "$OPTS" -c 'read -P 0x77 64k 128k' -c 'read -P 0 0 64k'
refuse "a wrong key" "${IO[@]}" --object "tls-creds-psk,id=c,dir=$WORK/pbad,username=alice" --image-opts "$OPTS" \
    -c 'read 0 64k'
stop_bg "$SRV_PID"

if [ $failures -ne 0 ]; then
    echo "nbd-tls-client: $failures failed"
    exit 1
fi
echo "nbd-tls-client: passed"

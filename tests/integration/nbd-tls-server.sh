#!/bin/bash
# tests/integration/nbd-tls-server.sh -- our NBD server (blockgraph daemon
# --nbd-server ...,tls-creds=) with TLS, judged by libnbd (nbdinfo,
# nbdcopy, nbdsh) and QEMU's client (qemu-img, qemu-io with --object
# tls-creds-x509,endpoint=client): x509 over TCP and a unix socket, a
# client without TLS gets no data, verify-peer wants a client certificate
# from our CA, tls-authz admits one distinguished name only, PSK with the
# right and a wrong key.
# NBD_TLS_ORACLE=1 runs qemu-storage-daemon in place of our daemon: a
# self-test of the checks (they all pass against QEMU's server).
set -u
. "$(dirname "$0")/lib-tls.sh"
for tool in nbdcopy nbdsh qemu-io; do
    command -v $tool >/dev/null || { echo "SKIP: $tool not installed"; exit 77; }
done
if [ -n "${NBD_TLS_ORACLE:-}" ]; then
    SERVER=(qemu-storage-daemon)
else
    SERVER=("$BLOCKGRAPH" daemon)
    if ! "$BLOCKGRAPH" daemon --help 2>/dev/null | grep -q -- --nbd-server; then
        echo "SKIP: this blockgraph daemon has no --nbd-server"
        exit 77
    fi
fi

make_x509 x                  # CA 1: server, client certificates
make_x509_other other        # CA 2
mkdir onlyca && cp x/ca-cert.pem onlyca/
mkdir foreign && cp x/ca-cert.pem foreign/ && cp other/client-cert.pem other/client-key.pem foreign/
make_psk p alice
make_psk pbad alice          # alice with another key
qemu-img create -q -f raw img 4M
qemu-io -f raw -c 'write -P 0x5a 0 4M' img >/dev/null
DN="O=Test,CN=Test Client"   # the client certificate's DN as GnuTLS prints it

# serve NAME ADDR OBJECTS... -- starts the server with tls-creds=t (and
# tls-authz=a when an object has id=a) on ADDR (nbd-server addr keys);
# sets SRV_PID. The export: "ex", writable, of img.
serve() {
    local name=$1 addr=$2 extra=
    shift 2
    local objs=()
    for o in "$@"; do
        objs+=(--object "$o")
        case "$o" in *,id=a,*) extra=,tls-authz=a;; esac
    done
    start_bg "$name" "${SERVER[@]}" "${objs[@]}" \
        --blockdev driver=file,node-name=f,filename="$WORK/img" \
        --nbd-server "$addr,tls-creds=t$extra" \
        --export type=nbd,id=e,node-name=f,name=ex,writable=on
    SRV_PID=$LAST_PID
}
# check DESC CMD...: CMD must succeed
check() { local d=$1; shift; if "$@" >out 2>&1; then ok "$d"; else bad "$d: $(head -3 out)"; fi; }
# refuse DESC CMD...: CMD must fail
refuse() { local d=$1; shift; if "$@" >out 2>&1; then bad "$d: succeeded: $(head -3 out)"; else ok "$d"; fi; }

# ---- x509 over TCP
echo "x509, TCP"
P=$(free_port)
serve x509 "addr.type=inet,addr.host=127.0.0.1,addr.port=$P" "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server"
wait_port "$P" || bad "server does not listen: $(cat x509.log)"
URI="nbds://localhost:$P/ex?tls-certificates=$WORK/x"
nbdinfo "$URI" >info 2>&1
grep -q "with TLS" info && grep -q "export-size: 4194304" info && ok "nbdinfo over TLS" || bad "nbdinfo: $(cat info)"
nbdinfo --is tls "$URI" >/dev/null 2>&1 && ok "nbdinfo --is tls" || bad "nbdinfo --is tls is false"
check "nbdcopy reads the image over TLS" nbdcopy "$URI" copy.raw
cmp -s copy.raw img && ok "the copy is the image" || bad "the copy differs from the image"
# A client without TLS: no export, no data.
refuse "nbdinfo without TLS gets no export" nbdinfo "nbd://localhost:$P/ex"
refuse "nbdcopy without TLS gets no data" nbdcopy "nbd://localhost:$P/ex" plain.raw
[ ! -s plain.raw ] && ok "no data without TLS" || bad "plain client got $(stat -c %s plain.raw) bytes"
# libnbd with tls=allow falls back to plain: it gets refused too.
cat >plain.py <<'PY'
import nbd, sys
h = nbd.NBD()
h.set_export_name("ex")
h.set_tls(nbd.TLS_DISABLE)
try:
    h.connect_tcp("127.0.0.1", sys.argv[1])
except nbd.Error as e:
    print("refused:", e)
    sys.exit(0)
print("connected, size", h.get_size())
sys.exit(1)
PY
check "a plain handshake is refused before any export" /usr/bin/python3 plain.py "$P"
# QEMU's client.
QOBJ="tls-creds-x509,id=c,dir=$WORK/x,endpoint=client"
QOPTS="driver=nbd,server.type=inet,server.host=localhost,server.port=$P,export=ex,tls-creds=c"
qemu-img info --object "$QOBJ" --image-opts "$QOPTS" >qinfo 2>&1
grep -q "virtual size: 4 MiB" qinfo && ok "qemu-img info over TLS" || bad "qemu-img info: $(cat qinfo)"
check "qemu-io reads the pattern" qemu-io --object "$QOBJ" --image-opts "$QOPTS" -c 'read -P 0x5a 0 4M'
check "qemu-io writes over TLS" qemu-io --object "$QOBJ" --image-opts "$QOPTS" -c 'write -P 0x33 1M 64k'
check "nbdcopy sees the write" nbdcopy "$URI" copy2.raw
qemu-io -f raw -r -c 'read -P 0x33 1M 64k' copy2.raw >/dev/null 2>&1 && ok "the write reached the image" \
    || bad "the write is not in the image"
qemu-io -f raw -c 'write -P 0x5a 1M 64k' img >/dev/null 2>&1 || true
# Certificates.
refuse "a client trusting another CA refuses the server" \
    nbdinfo "nbds://localhost:$P/ex?tls-certificates=$WORK/other"
refuse "verify-peer: a client without a certificate is refused" \
    nbdinfo "nbds://localhost:$P/ex?tls-certificates=$WORK/onlyca"
refuse "verify-peer: a client certificate of another CA is refused" \
    nbdinfo "nbds://localhost:$P/ex?tls-certificates=$WORK/foreign"
refuse "qemu-img with tls-hostname=otherhost refuses the server" \
    qemu-img info --object "$QOBJ" --image-opts "$QOPTS,tls-hostname=otherhost"
check "the server still serves after the failures" nbdinfo "$URI"

# Our own client (the peer that also speaks extended headers); with
# NBD_TLS_ORACLE=1, qemu-io.
if [ -n "${NBD_TLS_ORACLE:-}" ]; then OUR_IO=(qemu-io); else OUR_IO=("$BLOCKGRAPH" io); fi
if "${OUR_IO[@]}" -c quit --image-opts "driver=nbd,server.type=unix,server.path=/nonexistent" 2>&1 |
    grep -q "unknown driver 'nbd'"; then
    echo "  (no nbd driver in this build: our client is not tried)"
else
    check "our client writes over TLS" "${OUR_IO[@]}" --object "$QOBJ" --image-opts "$QOPTS" -c 'write -P 0x44 2M 1M'
    check "our client reads it back" "${OUR_IO[@]}" --object "$QOBJ" --image-opts "$QOPTS" \
        -c 'read -P 0x44 2M 1M' -c 'read -P 0x5a 0 1M'
    check "and so does libnbd" nbdcopy "$URI" copy3.raw
    qemu-io -f raw -r -c 'read -P 0x44 2M 1M' copy3.raw >/dev/null 2>&1 && ok "the write is in the image" \
        || bad "our client's write is not in the image"
    check "our client restores the pattern" "${OUR_IO[@]}" --object "$QOBJ" --image-opts "$QOPTS" -c 'write -P 0x5a 2M 1M'
    refuse "our client without tls-creds" "${OUR_IO[@]}" --image-opts "${QOPTS%,tls-creds=c}" -c 'read 0 4k'
    grep -q "Option 0x7 not permitted before TLS" out && ok "...is told TLS is required" || bad "no TLS: $(cat out)"
fi
stop_bg "$SRV_PID"

# ---- verify-peer=off: a client without a certificate is served
echo "x509, verify-peer=off"
P=$(free_port)
serve x509-noverify "addr.type=inet,addr.host=127.0.0.1,addr.port=$P" \
    "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server,verify-peer=off"
wait_port "$P" || bad "server does not listen: $(cat x509-noverify.log)"
check "a client without a certificate" nbdinfo "nbds://localhost:$P/ex?tls-certificates=$WORK/onlyca"
# fio's nbd engine (libnbd; the URI may not name files, so the CA comes
# from libnbd's default directory under HOME): random writes of 4k-256k,
# 16 in flight, then every block read back and verified, all over TLS.
if command -v fio >/dev/null; then
    mkdir -p home/.pki && ln -s "$WORK/x" home/.pki/libnbd
    if HOME=$WORK/home fio --name=tls --ioengine=nbd --uri="nbds://localhost:$P/ex" --rw=randwrite \
        --bsrange=4k-256k --size=4M --iodepth=16 --verify=crc32c --do_verify=1 >fio.out 2>&1 &&
        grep -q "err= 0" fio.out && grep -q "READ:" fio.out; then
        ok "fio: random writes verified over TLS"
    else
        bad "fio over TLS: $(grep -E 'err|verify' fio.out | head -3)"
    fi
fi
stop_bg "$SRV_PID"

# ---- unix socket
echo "x509, unix socket"
S=$WORK/nbd.sock
serve x509-unix "addr.type=unix,addr.path=$S" "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server"
wait_socket "$S" || bad "no socket: $(cat x509-unix.log)"
check "nbdcopy over a unix socket with TLS" nbdcopy "nbds+unix:///ex?socket=$S&tls-certificates=$WORK/x" ucopy.raw
cmp -s ucopy.raw img && ok "the copy is the image" || bad "the unix copy differs"
refuse "plain over unix gets no export" nbdinfo "nbd+unix:///ex?socket=$S"
check "qemu-img over unix with tls-hostname" qemu-img info --object "$QOBJ" \
    --image-opts "driver=nbd,server.type=unix,server.path=$S,export=ex,tls-creds=c,tls-hostname=localhost"
stop_bg "$SRV_PID"

# ---- tls-authz
echo "tls-authz"
P=$(free_port)
serve authz-ok "addr.type=inet,addr.host=127.0.0.1,addr.port=$P" "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server" \
    "authz-simple,id=a,identity=${DN//,/,,}"
wait_port "$P" || bad "server does not listen: $(cat authz-ok.log)"
check "authz-simple admits $DN" nbdinfo "nbds://localhost:$P/ex?tls-certificates=$WORK/x"
stop_bg "$SRV_PID"
P=$(free_port)
serve authz-no "addr.type=inet,addr.host=127.0.0.1,addr.port=$P" "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server" \
    "authz-simple,id=a,identity=O=Test,,CN=Somebody Else"
wait_port "$P" || bad "server does not listen: $(cat authz-no.log)"
refuse "authz-simple refuses $DN" nbdinfo "nbds://localhost:$P/ex?tls-certificates=$WORK/x"
refuse "...and nbdcopy gets no data" nbdcopy "nbds://localhost:$P/ex?tls-certificates=$WORK/x" denied.raw
[ ! -s denied.raw ] && ok "no data for a refused DN" || bad "a refused DN got data"
grep -q "TLS x509 authz check for $DN is denied" authz-no.log && ok "the server says why (QEMU's text)" \
    || bad "no authz message in the server's log: $(cat authz-no.log)"
stop_bg "$SRV_PID"

# ---- object-del of the credentials while the server runs (QMP): the
# server keeps the credentials it started with, as QEMU does
echo "object-del while serving"
P=$(free_port)
M=$WORK/qmp.sock
start_bg objdel "${SERVER[@]}" --object "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server" \
    --blockdev driver=file,node-name=f,filename="$WORK/img" \
    --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$P,tls-creds=t" \
    --export type=nbd,id=e,node-name=f,name=ex --chardev "socket,id=m,path=$M,server=on,wait=off" --monitor m
SRV_PID=$LAST_PID
wait_port "$P" || bad "server does not listen: $(cat objdel.log)"
cat >objdel.py <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
def q(cmd, **a):
    f.write(json.dumps({"execute": cmd, "arguments": a}) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" not in r:
            return r.get("error", {}).get("desc", "ok")
q("qmp_capabilities")
print(q("object-del", id="t"))
# The same id again, now client credentials: the server must not take them.
print(q("object-add", **{"qom-type": "tls-creds-x509", "id": "t", "dir": sys.argv[2], "endpoint": "client"}))
PY
out=$(/usr/bin/python3 objdel.py "$M" "$WORK/x" 2>&1)
[ "$out" = "$(printf 'ok\nok')" ] && ok "object-del and object-add of the id in use" || bad "QMP: $out"
check "the server still serves with its credentials" nbdinfo "nbds://localhost:$P/ex?tls-certificates=$WORK/x"
refuse "and still without plain clients" nbdinfo "nbd://localhost:$P/ex"
stop_bg "$SRV_PID"

# ---- PSK
echo "PSK"
P=$(free_port)
serve psk "addr.type=inet,addr.host=127.0.0.1,addr.port=$P" "tls-creds-psk,id=t,dir=$WORK/p,endpoint=server"
wait_port "$P" || bad "server does not listen: $(cat psk.log)"
check "nbdcopy with alice's key" nbdcopy "nbds://alice@localhost:$P/ex?tls-psk-file=$WORK/p/keys.psk" pcopy.raw
cmp -s pcopy.raw img && ok "the copy is the image" || bad "the PSK copy differs"
refuse "a wrong key is refused" nbdinfo "nbds://alice@localhost:$P/ex?tls-psk-file=$WORK/pbad/keys.psk"
refuse "an unknown user is refused" nbdinfo "nbds://mallory@localhost:$P/ex?tls-psk-file=$WORK/pbad/keys.psk"
refuse "plain is refused" nbdinfo "nbd://localhost:$P/ex"
check "qemu-img with tls-creds-psk" qemu-img info --object "tls-creds-psk,id=c,dir=$WORK/p,username=alice" \
    --image-opts "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$P,export=ex,tls-creds=c"
stop_bg "$SRV_PID"

if [ $failures -ne 0 ]; then
    echo "nbd-tls-server: $failures failed"
    exit 1
fi
echo "nbd-tls-server: passed"

#!/bin/bash
# tests/integration/nbd-client-tls.sh -- our nbd driver with TLS against
# qemu-nbd --tls-creds (certificates and keys made here with certtool and
# psktool):
#  (a) x509 over TCP: nbds://127.0.0.1:PORT/ex with tls-creds (a client
#      tls-creds-x509 object) reads what qemu-io wrote and writes what
#      qemu-io (itself over TLS) reads back; the same with
#      driver=nbd,server.*,tls-creds options;
#  (b) no tls-creds against the TLS server: the open fails naming TLS;
#  (c) tls-hostname that the certificate does not carry: the handshake
#      fails; a CA that did not sign the server's certificate: fails;
#  (d) PSK over a unix socket: nbds+unix:// with a tls-creds-psk object.
set -u
. "$(dirname "$0")/lib-tls.sh"
command -v qemu-io >/dev/null || { echo "SKIP: qemu-io not installed"; exit 77; }

make_x509 "$WORK/pki"
make_x509_other "$WORK/other"
qemu-img create -q -f raw img.raw 8M
qemu-io -f raw -c "write -P 0x5a 0 1M" img.raw >/dev/null

port=$(free_port)
SOBJ="tls-creds-x509,id=s0,dir=$WORK/pki,endpoint=server"
start_bg qnbd qemu-nbd --object "$SOBJ" --tls-creds s0 -b 127.0.0.1 -p "$port" -t -e 8 -f raw -x ex img.raw
wait_port "$port" || bad "qemu-nbd did not start: $(cat qnbd.log)"
COBJ="tls-creds-x509,id=c0,dir=$WORK/pki,endpoint=client"
QOBJ="tls-creds-x509,id=q0,dir=$WORK/pki,endpoint=client"

# ------------------------------------------------------------------ (a)
if "$BLOCKGRAPH" io --object "$COBJ" -c "read -P 0x5a 0 1M" -c "write -P 0x6b 2M 1M" --image-opts \
    "driver=raw,file.driver=nbd,file.filename=nbds://127.0.0.1:$port/ex,file.tls-creds=c0" >a.out 2>&1; then
    ok "(a) nbds:// with tls-creds: read and write"
else
    bad "(a) nbds://: $(cat a.out)"
fi
if qemu-io --object "$QOBJ" --image-opts -c "read -P 0x6b 2M 1M" \
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$port,export=ex,tls-creds=q0" >a2.out 2>&1; then
    ok "(a) qemu-io over TLS reads our write"
else
    bad "(a) qemu-io: $(cat a2.out)"
fi
if "$BLOCKGRAPH" io --object "$COBJ" -c "read -P 0x6b 2M 1M" --image-opts \
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$port,export=ex,tls-creds=c0" >a3.out 2>&1; then
    ok "(a) driver=nbd with server.* and tls-creds"
else
    bad "(a) server.* form: $(cat a3.out)"
fi

# ------------------------------------------------------------------ (b)
"$BLOCKGRAPH" img info "nbd://127.0.0.1:$port/ex" >b.out 2>&1
rc=$?
[ $rc != 0 ] && grep -q "TLS negotiation required" b.out && ok "(b) plain client refused: $(head -1 b.out)" ||
    bad "(b) plain client: exit $rc: $(cat b.out)"

# ------------------------------------------------------------------ (c)
"$BLOCKGRAPH" img info --object "$COBJ" --image-opts \
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$port,export=ex,tls-creds=c0,tls-hostname=wrong.example" \
    >c.out 2>&1
rc=$?
[ $rc != 0 ] && grep -qi "tls\|certificate" c.out && ok "(c) wrong tls-hostname refused: $(head -1 c.out)" ||
    bad "(c) wrong hostname: exit $rc: $(cat c.out)"
"$BLOCKGRAPH" img info --object "tls-creds-x509,id=o0,dir=$WORK/other,endpoint=client" --image-opts \
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$port,export=ex,tls-creds=o0" >c2.out 2>&1
rc=$?
[ $rc != 0 ] && grep -qi "tls\|certificate" c2.out && ok "(c) foreign CA refused: $(head -1 c2.out)" ||
    bad "(c) foreign CA: exit $rc: $(cat c2.out)"
stop_bg "$LAST_PID"

# ------------------------------------------------------------------ (d)
make_psk "$WORK/psk" alice
start_bg qpsk qemu-nbd --object "tls-creds-psk,id=s1,dir=$WORK/psk,endpoint=server" --tls-creds s1 \
    -k "$WORK/psk.sock" -t -e 8 -f raw -x ex img.raw
wait_socket "$WORK/psk.sock" || bad "qemu-nbd (psk) did not start: $(cat qpsk.log)"
if "$BLOCKGRAPH" io --object "tls-creds-psk,id=p0,dir=$WORK/psk,endpoint=client,username=alice" \
    -c "read -P 0x5a 0 1M" --image-opts \
    "driver=raw,file.driver=nbd,file.filename=nbds+unix:///ex?socket=$WORK/psk.sock,file.tls-creds=p0" >d.out 2>&1; then
    ok "(d) PSK over a unix socket"
else
    bad "(d) PSK: $(cat d.out)"
fi

if [ "$failures" -ne 0 ]; then
    echo "nbd-client-tls.sh: $failures check(s) failed"
    exit 1
fi
echo "nbd-client-tls.sh: all checks passed"

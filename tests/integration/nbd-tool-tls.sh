#!/bin/bash
# tests/integration/nbd-tool-tls.sh -- "blockgraph nbd --tls-creds" (x509
# with client certificates, --tls-authz, PSK): TLS clients (nbdinfo
# nbds+unix://, qemu-io with tls-creds) get the data, plain ones get
# nothing; --list over TLS prints what qemu-nbd --list prints against
# qemu-nbd with the same arguments.
set -u
. "$(dirname "$0")/lib-tls.sh"
command -v qemu-io >/dev/null || { echo "SKIP: qemu-io not installed"; exit 77; }

S=$WORK/s.sock
make_x509 "$WORK/x509"
make_psk "$WORK/psk" alice
qemu-img create -q -f qcow2 img.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' img.qcow2 >/dev/null

SRV_X509=(--object "tls-creds-x509,id=tls0,dir=$WORK/x509,endpoint=server" --tls-creds tls0)
# Over a unix socket QEMU's clients need the name to check the certificate for.
CLI_X509=(--object "tls-creds-x509,id=tls0,dir=$WORK/x509,endpoint=client" --tls-creds tls0 --tls-hostname localhost)
X509_URI="nbds+unix:///ex?socket=$S&tls-certificates=$WORK/x509"

serve() { # ARGS...: blockgraph nbd -t -k $S ARGS, waits for the socket
    rm -f "$S"
    start_bg server "$BLOCKGRAPH" nbd -t -k "$S" "$@"
    wait_socket "$S"
}
nbdinfo_size() { nbdinfo --size "$1" 2>&1; }

echo "== x509"
if serve "${SRV_X509[@]}" -x ex img.qcow2; then
    got=$(nbdinfo_size "$X509_URI")
    [ "$got" = 4194304 ] && ok "nbdinfo over TLS: size $got" || bad "nbdinfo over TLS: $got"
    got=$(nbdinfo_size "nbd+unix:///ex?socket=$S")
    [ "$got" != 4194304 ] && ok "a plain client gets nothing: $(echo "$got" | head -1)" || bad "plain client got the size"
    out=$(qemu-io --object "tls-creds-x509,id=c0,dir=$WORK/x509,endpoint=client" \
        --image-opts "driver=nbd,server.type=unix,server.path=$S,export=ex,tls-creds=c0,tls-hostname=localhost" \
        -c 'read -P 0x5a 0 64k' 2>&1)
    [[ $out == *"read 65536/65536"* ]] && ok "qemu-io over TLS reads the data" || bad "qemu-io over TLS: $out"
    ours=$("$BLOCKGRAPH" nbd -L -k "$S" "${CLI_X509[@]}" 2>&1)
    # Without --tls-hostname a unix socket gives no name to check: refused.
    no_host=(--object "tls-creds-x509,id=tls0,dir=$WORK/x509,endpoint=client" --tls-creds tls0)
    want=$(qemu-nbd -L -k "$S" "${no_host[@]}" 2>&1)
    got=$("$BLOCKGRAPH" nbd -L -k "$S" "${no_host[@]}" 2>&1)
    [ "${want//qemu-nbd/blockgraph nbd}" = "$got" ] && ok "no --tls-hostname: $got" ||
        bad "no --tls-hostname: $got (want $want)"
    theirs=$(qemu-nbd -L -k "$S" "${CLI_X509[@]}" 2>&1)
    stop_bg "$LAST_PID"
    rm -f "$S"
    start_bg qemu-nbd qemu-nbd -t -k "$S" "${SRV_X509[@]}" -x ex img.qcow2
    wait_socket "$S" || bad "qemu-nbd with TLS did not start"
    want=$(qemu-nbd -L -k "$S" "${CLI_X509[@]}" 2>&1)
    stop_bg "$LAST_PID"
    [[ $want == "exports available: 1"* ]] || bad "qemu-nbd -L against qemu-nbd over TLS: $want"
    [ "$theirs" = "$want" ] && ok "qemu-nbd -L over TLS sees qemu-nbd's listing" || bad "qemu-nbd -L: $theirs (want $want)"
    [ "$ours" = "$want" ] && ok "blockgraph nbd -L over TLS prints it too" || bad "blockgraph nbd -L: $ours (want $want)"
else
    bad "x509 server did not start: $(tail -2 "$WORK/server.log")"
fi

echo "== --tls-authz"
# The DN as GnuTLS (and so QEMU) spells it for the authz check.
for identity in "O=Test,CN=Test Client" "CN=Someone Else"; do
    # keyval: a comma in a value is written twice
    if serve "${SRV_X509[@]}" --object "authz-simple,id=auth0,identity=${identity//,/,,}" --tls-authz auth0 \
        -x ex img.qcow2; then
        got=$(nbdinfo_size "$X509_URI")
        if [ "$identity" = "O=Test,CN=Test Client" ]; then
            [ "$got" = 4194304 ] && ok "allowed identity: size $got" || bad "allowed identity: $got"
        else
            [ "$got" != 4194304 ] && ok "other identity refused: $(echo "$got" | head -1)" ||
                bad "other identity got the size"
        fi
        stop_bg "$LAST_PID"
    else
        bad "authz server did not start: $(tail -2 "$WORK/server.log")"
    fi
done

echo "== PSK"
if serve --object "tls-creds-psk,id=tls0,dir=$WORK/psk,endpoint=server" --tls-creds tls0 -x ex img.qcow2; then
    got=$(nbdinfo_size "nbds+unix://alice@/ex?socket=$S&tls-psk-file=$WORK/psk/keys.psk")
    [ "$got" = 4194304 ] && ok "nbdinfo with PSK: size $got" || bad "nbdinfo with PSK: $got"
    got=$(nbdinfo_size "nbd+unix:///ex?socket=$S")
    [ "$got" != 4194304 ] && ok "a plain client gets nothing" || bad "plain client got the size"
    stop_bg "$LAST_PID"
else
    bad "PSK server did not start: $(tail -2 "$WORK/server.log")"
fi

if [ $failures -ne 0 ]; then
    echo "FAIL: $failures check(s) failed"
    exit 1
fi
echo "PASS"

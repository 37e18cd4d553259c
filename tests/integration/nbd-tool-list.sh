#!/bin/bash
# tests/integration/nbd-tool-list.sh -- "blockgraph nbd --list" prints what
# qemu-nbd --list prints, line for line: against qemu-nbd (name,
# description, bitmaps, allocation depth, multi-conn, read-only), against
# qemu-storage-daemon with several exports, over TCP (-b/-p); and the
# connection errors. (Our server through qemu-nbd --list:
# nbd-tool-listed.sh.)
set -u
. "$(dirname "$0")/lib-nbd-tool.sh"
command -v qemu-storage-daemon >/dev/null || { echo "SKIP: qemu-storage-daemon not installed"; exit 77; }

S=$WORK/s.sock
make_list_image

echo "== blockgraph nbd --list against qemu-nbd"
for args in "-x ex -D hello" "-r" "-e 2 -B b0 -A" "-e 0 -B b1 -B b0 -x multi" "-r -A -D a,description"; do
    # shellcheck disable=SC2086
    if start_qemu_nbd "$S" -t $args img.qcow2; then
        same_text "against qemu-nbd $args" "$(qemu-nbd -L -k "$S" 2>&1)" "$("$BLOCKGRAPH" nbd -L -k "$S" 2>&1)"
        stop "$LAST_PID"
    else
        bad "qemu-nbd $args did not start"
    fi
done

echo "== against qemu-storage-daemon, three exports"
qemu-img create -q -f raw r.raw 1M
qemu-storage-daemon --blockdev driver=file,node-name=f,filename=img.qcow2 \
    --blockdev driver=qcow2,node-name=q,file=f \
    --blockdev driver=file,node-name=r,filename=r.raw \
    --nbd-server addr.type=unix,addr.path="$S" \
    --export type=nbd,id=e1,node-name=q,name=first,description=desc1,writable=on,bitmaps.0=b0 \
    --export type=nbd,id=e2,node-name=r,name=second \
    --export type=nbd,id=e3,node-name=q,name=third,allocation-depth=on 2>>"$WORK/server.err" &
LAST_PID=$!
PIDS+=("$LAST_PID")
if wait_socket "$S"; then
    same_text "against qemu-storage-daemon" "$(qemu-nbd -L -k "$S" 2>&1)" "$("$BLOCKGRAPH" nbd -L -k "$S" 2>&1)"
else
    bad "qemu-storage-daemon did not start: $(tail -1 "$WORK/server.err")"
fi
stop "$LAST_PID"

echo "== over TCP"
port=$(free_port)
qemu-nbd -t -b 127.0.0.1 -p "$port" -x tcp img.qcow2 2>>"$WORK/server.err" &
LAST_PID=$!
PIDS+=("$LAST_PID")
for _ in $(seq 100); do qemu-nbd -L -b 127.0.0.1 -p "$port" >/dev/null 2>&1 && break; sleep 0.1; done
same_text "TCP -b/-p" "$(qemu-nbd -L -b 127.0.0.1 -p "$port" 2>&1)" "$("$BLOCKGRAPH" nbd -L -b 127.0.0.1 -p "$port" 2>&1)"
stop "$LAST_PID"

echo "== TLS (PSK)"
mkdir -p psk
if psktool -u alice -p psk/keys.psk >/dev/null 2>&1 &&
    start_qemu_nbd "$S" -t --object tls-creds-psk,id=t,dir="$WORK/psk",endpoint=server --tls-creds t -x tls img.qcow2; then
    creds=(--object "tls-creds-psk,id=t,dir=$WORK/psk,endpoint=client,username=alice" --tls-creds t)
    want=$(qemu-nbd -L -k "$S" "${creds[@]}" 2>&1)
    [[ $want == "exports available: 1"* ]] || bad "qemu-nbd -L over TLS: $want"
    same_text "over TLS" "$want" "$("$BLOCKGRAPH" nbd -L -k "$S" "${creds[@]}" 2>&1)"
    out=$("$BLOCKGRAPH" nbd -L -k "$S" 2>&1)
    st=$?
    [ $st = 1 ] && [[ $out == *"TLS negotiation required"* ]] && ok "without creds: $out" ||
        bad "without creds: status $st: $out"
    stop "$LAST_PID"
else
    bad "qemu-nbd with TLS did not start: $(tail -1 "$WORK/server.err")"
fi

echo "== connection errors"
want=$(qemu-nbd -L -k "$WORK/nonexistent.sock" 2>&1)
wst=$?
got=$("$BLOCKGRAPH" nbd -L -k "$WORK/nonexistent.sock" 2>&1)
gst=$?
[ $wst = $gst ] && [ "${want//qemu-nbd/blockgraph nbd}" = "$got" ] && ok "missing socket: $got" ||
    bad "missing socket: status $gst (want $wst): $got (want $want)"
port=$(free_port)
want=$(qemu-nbd -L -b 127.0.0.1 -p "$port" 2>&1)
got=$("$BLOCKGRAPH" nbd -L -b 127.0.0.1 -p "$port" 2>&1)
[ "${want//qemu-nbd/blockgraph nbd}" = "$got" ] && ok "refused: $got" || bad "refused: $got (want $want)"

if [ $failures -ne 0 ]; then
    echo "FAIL: $failures check(s) failed"
    exit 1
fi
echo "PASS"

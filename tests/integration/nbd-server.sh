#!/bin/bash
# tests/integration/nbd-server.sh -- our NBD server (blockgraph daemon
# --nbd-server / --export type=nbd) judged by the real peers, side by side
# with qemu-storage-daemon serving copies of the same images:
#   - nbdinfo --json / --map (base:allocation, qemu:allocation-depth,
#     qemu:dirty-bitmap:b0), qemu-nbd --list, qemu-img map: identical to QSD's;
#   - nbd-server-edge.py (libnbd: structured reads with holes, DF, invalid
#     requests, block status with REQ_ONE, option LIST/INFO, writes with
#     flags): the same transcript as against QSD;
#   - qemu-io patterns, qemu-img compare, nbdcopy in and out over nbd://
#     and nbd+unix://, and the written image passes qemu-img check;
#   - the TCP warning without tls-creds, max-connections=1 (no multi-conn);
#   - bad raw clients (nbd-server-bad.py): the server survives, other
#     clients are served, the image stays intact.
set -u
BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
if [ ! -x "$BLOCKGRAPH" ]; then
    echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
    exit 1
fi
BLOCKGRAPH=$(cd "$(dirname "$BLOCKGRAPH")" && pwd -P)/$(basename "$BLOCKGRAPH")
HERE=$(cd "$(dirname "$0")" && pwd -P)
for t in qemu-img qemu-io qemu-nbd qemu-storage-daemon nbdinfo nbdcopy; do
    if ! command -v $t >/dev/null; then
        echo "SKIP: $t not installed"
        exit 77
    fi
done
if ! /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
    echo "SKIP: the python3 nbd module is not installed (python3-libnbd)"
    exit 77
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-nbd-server.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
cd "$WORK" || exit 1
failures=0
ok() { echo "  ok    $*"; }
bad() { echo "  FAIL  $*"; failures=$((failures + 1)); }
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; return 1; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- images: base (data at 1M), top over it (data at 0, a zero cluster
# at 512k, a disabled persistent bitmap b0 with the first 64k dirty)
mkdir ours qsd
(
    cd ours || exit 1
    qemu-img create -q -f qcow2 base.qcow2 4M
    qemu-io -c 'write -P 0x33 1M 1M' base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    qemu-img bitmap --add top.qcow2 b0
    qemu-io -c 'write -P 0x11 0 64k' -c 'write -z 512k 64k' top.qcow2 >/dev/null
    qemu-img bitmap --disable top.qcow2 b0
    qemu-img create -q -f qcow2 rw.qcow2 4M
) || exit 1
cp ours/*.qcow2 qsd/

start_ours() {   # start_ours LOG ARGS...: our daemon in the background
    local log=$1; shift
    "$BLOCKGRAPH" daemon "$@" 2>"$log" &
    PIDS+=($!)
}
blockdevs() {   # blockdevs DIR: the nodes of both daemons
    echo --blockdev "driver=file,filename=$1/top.qcow2,node-name=tf,read-only=on"
    echo --blockdev "driver=qcow2,file=tf,node-name=top,read-only=on"
    echo --blockdev "driver=file,filename=$1/rw.qcow2,node-name=rf"
    echo --blockdev "driver=qcow2,file=rf,node-name=rw"
}
EXPORTS=(--export type=nbd,id=e1,node-name=top,name=ro,description=test-image,allocation-depth=on,bitmaps.0=b0
         --export type=nbd,id=e2,node-name=rw,writable=on)

# shellcheck disable=SC2046
start_ours ours.log $(blockdevs "$WORK/ours") --nbd-server "addr.type=unix,addr.path=$WORK/ours.sock" "${EXPORTS[@]}"
# shellcheck disable=SC2046
qemu-storage-daemon $(blockdevs "$WORK/qsd") --nbd-server "addr.type=unix,addr.path=$WORK/qsd.sock" \
    "${EXPORTS[@]}" 2>qsd.log &
PIDS+=($!)
wait_sock ours.sock || { bad "our daemon did not start: $(cat ours.log)"; exit 1; }
wait_sock qsd.sock || { bad "qemu-storage-daemon did not start: $(cat qsd.log)"; exit 1; }
O="nbd+unix:///ro?socket=$WORK/ours.sock"
Q="nbd+unix:///ro?socket=$WORK/qsd.sock"
OW="nbd+unix:///rw?socket=$WORK/ours.sock"
QW="nbd+unix:///rw?socket=$WORK/qsd.sock"

echo "== metadata, as QSD shows it"
same() {   # same DESC CMD...: CMD with @S@ = our socket vs QSD's prints the same
    local d=$1; shift
    local a b
    a=$("${@//@S@/$WORK/ours.sock}" 2>&1 | sed "s|$WORK/ours.sock|SOCK|g")
    b=$("${@//@S@/$WORK/qsd.sock}" 2>&1 | sed "s|$WORK/qsd.sock|SOCK|g")
    if [ "$a" = "$b" ] && [ -n "$a" ]; then ok "$d"; else
        bad "$d"; diff <(echo "$b") <(echo "$a") | head -20 | sed 's/^/        /'
    fi
}
same "nbdinfo --json" nbdinfo --json "nbd+unix:///ro?socket=@S@"
same "nbdinfo --map" nbdinfo --map "nbd+unix:///ro?socket=@S@"
same "nbdinfo --map=qemu:allocation-depth" nbdinfo --map=qemu:allocation-depth "nbd+unix:///ro?socket=@S@"
same "nbdinfo --map=qemu:dirty-bitmap:b0" nbdinfo --map=qemu:dirty-bitmap:b0 "nbd+unix:///ro?socket=@S@"
same "nbdinfo --list --json" nbdinfo --list --json "nbd+unix:///?socket=@S@"
same "nbdinfo --can/--is" bash -c 'for c in read write flush fua trim zero fast-zero df cache multi-conn structured-reply; do nbdinfo --can $c "$1"; echo "$c $?"; done; nbdinfo --is read-only "$1"; echo ro $?' - "nbd+unix:///ro?socket=@S@"
same "qemu-nbd --list" qemu-nbd --list -k @S@
same "qemu-img map (json)" qemu-img map --output=json "nbd+unix:///ro?socket=@S@"
same "qemu-img info" qemu-img info "nbd+unix:///rw?socket=@S@"

echo "== edge cases through libnbd, as QSD answers them"
/usr/bin/python3 "$HERE/nbd-server-edge.py" "$Q" "$QW" >edge-qsd.txt 2>&1
/usr/bin/python3 "$HERE/nbd-server-edge.py" "$O" "$OW" >edge-ours.txt 2>&1
if cmp -s edge-qsd.txt edge-ours.txt && grep -q '^readback ok' edge-ours.txt; then
    ok "nbd-server-edge.py: $(wc -l <edge-ours.txt) results as QSD's"
else
    bad "nbd-server-edge.py differs from QSD's"
    diff edge-qsd.txt edge-ours.txt | head -30 | sed 's/^/        /'
fi

echo "== bad clients"
if /usr/bin/python3 "$HERE/nbd-server-bad.py" "$WORK/ours.sock" rw >bad.txt 2>&1; then
    ok "nbd-server-bad.py: $(grep -c '^ok' bad.txt) cases"
else
    bad "nbd-server-bad.py"; sed 's/^/        /' bad.txt | tail -20
fi
check "server still serves after bad clients" qemu-img compare -q "$O" ours/top.qcow2

echo "== data"
check "qemu-img compare ours vs QSD (read-only export)" qemu-img compare -q "$O" "$Q"
check "qemu-img compare with the image" qemu-img compare -q "$O" ours/top.qcow2
check "qemu-io patterns" bash -c "qemu-io -r -f raw -c 'read -P 0x11 0 64k' -c 'read -P 0 512k 64k' -c 'read -P 0x33 1M 1M' '$O' | grep -q 'read 1048576/1048576'"
check "qemu-io write + read back (rw)" bash -c "qemu-io -f raw -c 'write -P 0x5a 1M 256k' -c 'read -P 0x5a 1M 256k' -c 'write -z 2M 64k' '$OW' | grep -q 'read 262144/262144'"
# nbd-server-bad.py wrote 0x77 over our first 4k
qemu-io -f raw -c 'write -P 0x77 0 4k' -c 'write -P 0x5a 1M 256k' -c 'write -z 2M 64k' "$QW" >/dev/null
check "qemu-img compare ours vs QSD (after the same writes)" qemu-img compare -q "$OW" "$QW"
check "nbdcopy out" nbdcopy "$O" out.raw
check "qemu-img compare copy" qemu-img compare -q -f raw -F qcow2 out.raw ours/top.qcow2
head -c 4M /dev/urandom >in.raw
check "nbdcopy in" nbdcopy in.raw "$OW"
check "qemu-img compare after nbdcopy in" qemu-img compare -q -f raw in.raw "$OW"
check "nbdcopy between our two exports" bash -c "nbdcopy '$O' '$OW' && qemu-img compare -q '$O' '$OW'"

kill "${PIDS[0]}"
for _ in $(seq 100); do kill -0 "${PIDS[0]}" 2>/dev/null || break; sleep 0.1; done
check "our daemon stopped on SIGTERM" bash -c "! kill -0 ${PIDS[0]} 2>/dev/null"
check "qemu-img check of the written image" qemu-img check -q ours/rw.qcow2
check "written image holds what nbdcopy wrote" qemu-img compare -q -f raw -F qcow2 out.raw ours/rw.qcow2

echo "== TCP, max-connections=1"
PORT=$(free_port)
start_ours tcp.log --blockdev "driver=file,filename=$WORK/ours/rw.qcow2,node-name=rf" \
    --blockdev driver=qcow2,file=rf,node-name=rw \
    --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$PORT,max-connections=1" \
    --export type=nbd,id=e,node-name=rw
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$PORT/rw" >/dev/null 2>&1 && break; sleep 0.1; done
check "warning about TCP without TLS" grep -q "without TLS" tcp.log
check "qemu-img info over nbd://" bash -c "qemu-img info 'nbd://127.0.0.1:$PORT/rw' | grep -q 'virtual size: 4 MiB'"
nbdinfo --can multi-conn "nbd://127.0.0.1:$PORT/rw"
check "no multi-conn with max-connections=1" test $? = 2
check "qemu-img compare over nbd://" qemu-img compare -q -f raw "nbd://127.0.0.1:$PORT/rw" out.raw

[ $failures = 0 ] && echo "PASS" && exit 0
echo "FAIL: $failures check(s)"
exit 1

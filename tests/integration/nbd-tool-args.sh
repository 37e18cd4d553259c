#!/bin/bash
# tests/integration/nbd-tool-args.sh -- "blockgraph nbd" refuses what
# qemu-nbd refuses, with qemu-nbd's message (our program name in place of
# "qemu-nbd") and status 1; --help, --version; -c/-d without the kernel's
# nbd module give one clear line; with it, -c attaches the image to a free
# /dev/nbdN (read and written through the device, judged by qemu-img) and -d
# detaches it.
#
# Every case runs the real qemu-nbd and ours with the same arguments and
# compares status and stderr. Cases that would make qemu-nbd serve use -k
# with a path in WORK (never a TCP port).
set -u
. "$(dirname "$0")/lib-nbd-tool.sh"

qemu-img create -q -f qcow2 a.qcow2 4M
qemu-img snapshot -c sn1 a.qcow2
qemu-img create -q -f raw r.raw 1M
LONG=$(printf 'a%.0s' $(seq 4097))

# same ARGS...: both programs, same status and the same stderr.
n=0
same() {
    n=$((n + 1))
    local want got wst gst
    want=$(timeout 10 qemu-nbd "$@" 2>&1 >/dev/null)
    wst=$?
    got=$(timeout 10 "$BLOCKGRAPH" nbd "$@" 2>&1 >/dev/null)
    gst=$?
    # Program names: qemu-nbd's in its messages and its "Try" hint.
    want=${want//qemu-nbd/blockgraph nbd}
    if [ "$wst" = 124 ] || [ "$gst" = 124 ]; then
        bad "case $n ($*): timed out (qemu-nbd $wst, ours $gst)"
    elif [ "$wst" != "$gst" ] || [ "$want" != "$got" ]; then
        bad "case $n ($(echo "$*" | cut -c1-80)): status $gst, want $wst"
        echo "        want: $(echo "$want" | cut -c1-300)"
        echo "        got:  $(echo "$got" | cut -c1-300)"
    else
        ok "case $n ($(echo "$*" | cut -c1-60)): $(echo "$got" | head -1 | cut -c1-100)"
    fi
}

echo "== command-line mistakes"
same
same a.qcow2 r.raw
same -e -1 a.qcow2
same -e abc a.qcow2
same --shared=1x a.qcow2
same -o abc a.qcow2
same -k relative/sock a.qcow2
same --cache=bogus a.qcow2
same -n --cache=none a.qcow2
same --aio=bogus a.qcow2
same --aio=threads --aio=threads a.qcow2
same --discard=bogus a.qcow2
same --discard=unmap --discard=unmap a.qcow2
same --detect-zeroes=bogus a.qcow2
same --detect-zeroes=unmap a.qcow2
same --detect-zeroes=unmap --discard=unmap -k "$WORK/never" nonexistent.img
same -x "$LONG" a.qcow2
same -D "$LONG" a.qcow2
same -L a.qcow2
same -L -x name -k "$WORK/none"
same -L -D desc -k "$WORK/none"
same -L -B bm -k "$WORK/none"
same -L -A -k "$WORK/none"
same -L -o 512 -k "$WORK/none"
same -L -f raw -k "$WORK/none"
same -L -l sn1 -k "$WORK/none"
same -L --cache=none -k "$WORK/none"
same -L --fork -k "$WORK/none"
same --tls-hostname h a.qcow2
same --tls-authz a a.qcow2
same -L --tls-authz a -k "$WORK/none"
same --bogus
same --persistent=yes a.qcow2
same -Z a.qcow2
same -p
same --port
same -l 'snapshot.foo=1' a.qcow2
same a.qcow2 extra

echo "== image errors"
same -k "$WORK/s1" nonexistent.img
same -k "$WORK/s2" -f bogus a.qcow2
same -k "$WORK/s3" --image-opts -f raw a.qcow2
same -k "$WORK/s4" -l snapshot.id=7 a.qcow2
same -k "$WORK/s5" -l snapshot.id=1,snapshot.name=other a.qcow2
same -k "$WORK/s6" -l nosuch a.qcow2
same -k "$WORK/s7" -f raw -l sn1 r.raw
same -k "$WORK/s8" -o 5000000 a.qcow2

echo "== listening errors"
same -p abc -f raw r.raw
same -k "$WORK/missing-dir/s" -f raw r.raw
same --fork -k "$WORK/missing-dir/s" -f raw r.raw

echo "== --object and --tls-creds"
mkdir -p psk
psktool -u alice -p psk/keys.psk >/dev/null 2>&1 || bad "psktool failed"
same --object tls-creds-x509,id=t,dir="$WORK/nonexistent",endpoint=server --tls-creds t a.qcow2
same --tls-creds t a.qcow2
same --object tls-creds-psk,id=t,dir=psk,endpoint=client --tls-creds t a.qcow2
same -L --object tls-creds-psk,id=t,dir=psk,endpoint=server --tls-creds t -k "$WORK/none"
same --object tls-creds-psk,id=t,dir=psk,endpoint=server --tls-creds t --tls-hostname h a.qcow2
same -L --object tls-creds-psk,id=t,dir=psk,endpoint=client,username=alice --tls-creds t --tls-authz a -k "$WORK/none"
same -c /dev/nbd0 --object tls-creds-psk,id=t,dir=psk,endpoint=server --tls-creds t a.qcow2

echo "== --help, --version"
out=$("$BLOCKGRAPH" nbd --help)
st=$?
if [ $st = 0 ] && echo "$out" | grep -q '^Usage: blockgraph nbd \[OPTIONS\] FILE' &&
    echo "$out" | grep -q -- '--tls-creds=ID' && echo "$out" | grep -q -- '-L, --list'; then
    ok "--help prints the usage (status 0)"
else
    bad "--help: status $st, output: $(echo "$out" | head -3)"
fi
# Every long option qemu-nbd's help lists is in ours, but the SELinux one.
for opt in $(qemu-nbd --help | grep -o -- '--[a-z-]*' | sort -u); do
    case $opt in --selinux-label) continue ;; esac
    echo "$out" | grep -q -- "$opt" || bad "--help does not mention $opt"
done
out=$("$BLOCKGRAPH" nbd -V)
[ $? = 0 ] && [[ $out == "blockgraph nbd version "* ]] && ok "-V: $out" || bad "-V: $out"

echo "== -c / -d: the kernel's nbd module"
# A free device: no client attached (no pid file in sysfs).
free_nbd() {
    local d
    for d in /sys/block/nbd*; do
        [ -e "$d/pid" ] || { echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}
if [ -e /sys/module/nbd ] && dev=$(free_nbd) && [ -b "$dev" ]; then
    # With the module: attach, read and write through the device, detach;
    # qemu-img judges the image.
    cp a.qcow2 k.qcow2
    qemu-io -f qcow2 -c "write -P 0x5a 0 1M" k.qcow2 >/dev/null
    trap '"$BLOCKGRAPH" nbd -d "$dev" >/dev/null 2>&1; cleanup' EXIT
    if out=$(timeout 30 "$BLOCKGRAPH" nbd -f qcow2 --pid-file "$WORK/k.pid" -c "$dev" k.qcow2 2>&1); then
        ok "-c $dev: returned once connected"
        qemu-img convert -O raw k.qcow2 want.raw
        timeout 30 dd if="$dev" of=got.raw bs=1M iflag=direct status=none
        cmp -s want.raw got.raw && ok "-c: the device reads as the image" || bad "-c: the device differs from the image"
        head -c 65536 /dev/urandom > chunk
        timeout 30 dd if=chunk of="$dev" bs=64k seek=3 oflag=direct conv=fsync status=none
        out=$(timeout 30 "$BLOCKGRAPH" nbd -d "$dev" 2>&1)
        [ "$out" = "$dev disconnected" ] && ok "-d: $out" || bad "-d: $out"
        trap cleanup EXIT
        # The server exits once the kernel has hung up.
        for _ in $(seq 100); do kill -0 "$(cat k.pid 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
        qemu-img check -q k.qcow2 && ok "-c: qemu-img check clean after the writes" || bad "-c: qemu-img check failed"
        qemu-img convert -O raw k.qcow2 after.raw
        cmp -s <(dd if=after.raw bs=64k skip=3 count=1 status=none) chunk &&
            ok "-c: the write through the device is in the image" || bad "-c: the written data is not in the image"
    else
        bad "-c $dev: $out"
    fi
else
    for args in "-c /dev/nbd0 a.qcow2" "-d /dev/nbd0"; do
        out=$("$BLOCKGRAPH" nbd $args 2>&1)
        st=$?
        if [ $st = 1 ] && [ "$(echo "$out" | wc -l)" = 1 ] && echo "$out" | grep -q "nbd module is not loaded"; then
            ok "$args without the module: $out"
        else
            bad "$args without the module: status $st: $out"
        fi
    done
fi

if [ $failures -ne 0 ]; then
    echo "FAIL: $failures check(s) failed"
    exit 1
fi
echo "PASS"

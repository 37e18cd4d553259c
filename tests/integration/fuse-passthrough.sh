#!/bin/bash
# tests/integration/fuse-passthrough.sh -- kernel FUSE passthrough for raw
# exports over a file node, and every case that must fall back to requests
# served by the daemon.
#
# Passthrough cases (raw over file, growable or read-only; a plain file
# node, growable):
#  - growable export: buffered writes go to the image without reaching the
#    daemon (--stats: "passthrough: on", write=0), read back equal through
#    the mount, through an O_DIRECT open (served by the daemon, so both paths
#    see the same bytes) and in the image (qemu-img compare after unmount);
#    a write past EOF grows the export and stat on the mount shows the new
#    size; fio randwrite --verify=crc32c at iodepth 64 through the mount;
#  - read-only export: reads equal the image, writes fail (read-only mount).
# Fallbacks, each with its reason in --stats and the export's semantics
# intact: writable non-growable (write past EOF is ENOSPC), writethrough=on,
# raw with an offset, qcow2, blkdebug, detect-zeroes=on, cache.direct=on,
# BLOCKGRAPH_FUSE_PASSTHROUGH=0, passthrough=off.
# Skips (77) only where the kernel has no FUSE passthrough (before 6.9) or
# refuses it (no CAP_SYS_ADMIN): the daemon then logs why and serves the
# requests itself, which the other FUSE tests cover.
set -euo pipefail
# More fio runs than most FUSE tests: a larger time budget under load.
export FUSE_TEST_BUDGET=${FUSE_TEST_BUDGET:-120}
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools fio

M=$((1 << 20))
SIZE=$((32 * M))
head -c $((4 * M)) /dev/urandom >data

# stats NAME: the daemon's --stats block (after fuse_stop).
passthrough_line() { grep -m1 '^  passthrough:' "$WORK/$1.err" || true; }
counter() { grep -oE "(^| )$2=[0-9]+" "$WORK/$1.err" | head -1 | sed 's/.*=//'; }

# ---- growable raw export: passthrough
rm -f img mp ref
fuse_image raw img $SIZE
cp img ref
touch mp
fuse_blockdevs raw img
# (passthrough=on: required, and allowed here.)
fuse_start g "${BLOCKDEVS[@]}" --stats \
    --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on,growable=on,passthrough=on
# Buffered writes (passthrough) at 1 MiB, read back through the mount.
tio dd if=data of=mp bs=64k seek=16 conv=notrunc status=none
fill ref $M $((4 * M)) data
check "growable: buffered read back equals what was written" cmp <(tio dd if=mp bs=1M count=8 status=none) \
    <(head -c $((8 * M)) ref)
check "growable: O_DIRECT read (served by the daemon) sees the passthrough writes" \
    cmp <(tio dd if=mp bs=1M count=8 iflag=direct status=none) <(head -c $((8 * M)) ref)
# O_DIRECT write (daemon), buffered read (passthrough).
tio dd if=data of=mp bs=1M count=1 seek=20 oflag=direct conv=notrunc status=none
fill ref $((20 * M)) $M data
check "growable: passthrough read sees an O_DIRECT (daemon) write" \
    cmp <(tio dd if=mp bs=1M skip=20 count=1 status=none) <(head -c $M data)
# Past EOF: the export grows.
tio dd if=data of=mp bs=1M count=1 seek=$((SIZE / M)) conv=notrunc status=none
fill ref $SIZE $M data
eventually [ "$(stat -c %s mp)" = $((SIZE + M)) ]
check "growable: a write past EOF grows the export (stat on the mount)" [ "$(stat -c %s mp)" = $((SIZE + M)) ]
check "growable: the image grew" [ "$(stat -c %s img)" = $((SIZE + M)) ]
if timeout -k 5 40 fio --name=v --filename=mp --size=$((16 * M)) --rw=randwrite --bs=4k --ioengine=io_uring \
    --iodepth=64 --verify=crc32c --verify_fatal=1 --verify_state_save=0 >fio.log 2>&1; then
    ok "growable: fio randwrite --verify=crc32c iodepth 64 through passthrough"
else
    bad "growable: fio through passthrough failed: $(grep -iE 'verify|err' fio.log | head -3)"
fi
fuse_stop_check g "growable"
pt=$(passthrough_line g)
if [[ $pt == *"not offered by the kernel"* || $pt == *"refused"* ]] ||
    grep -q 'passthrough: registering' "$WORK/g.err"; then
    echo "  SKIP  the kernel does not provide FUSE passthrough here: $pt $(grep -m1 'passthrough:' "$WORK/g.err")"
    exit 77
fi
check "growable: --stats says passthrough is on ($pt)" grep -q '^  passthrough: on' "$WORK/g.err"
check "growable: header names the passthrough transport" grep -q "^export 'e' (fuse, .*, passthrough):" "$WORK/g.err"
check "growable: buffered writes did not reach the daemon (write=$(counter g write) = the O_DIRECT one)" \
    [ "$(counter g write)" -le 1 ]
# fio wrote its pattern over [0, 16M): take it into the reference from the image
# itself only after checking the rest of the image is what we wrote.
check "growable: image beyond fio's range equals the reference" \
    cmp <(tail -c +$((16 * M + 1)) img) <(tail -c +$((16 * M + 1)) ref)
if timeout -k 5 40 fio --name=v --filename=img --size=$((16 * M)) --rw=randwrite --bs=4k --ioengine=psync \
    --verify=crc32c --verify_fatal=1 --verify_state_save=0 --verify_only >fio-verify.log 2>&1; then
    ok "growable: the image holds what fio wrote through passthrough"
else
    bad "growable: fio --verify_only of the image failed: $(grep -iE 'verify|err' fio-verify.log | head -3)"
fi

# ---- a plain file node (no format node above it): passthrough as well
rm -f img mp ref
fuse_image raw img $SIZE
cp img ref
touch mp
fuse_start f --blockdev driver=file,node-name=file0,filename=img --stats \
    --export type=fuse,id=e,node-name=file0,mountpoint=mp,writable=on,growable=on,passthrough=on
tio dd if=data of=mp bs=64k seek=8 conv=notrunc status=none
fill ref $((M / 2)) $((4 * M)) data
check "file node: buffered read back equals what was written" cmp <(tio dd if=mp bs=1M count=8 status=none) \
    <(head -c $((8 * M)) ref)
tio dd if=data of=mp bs=1M count=1 seek=24 oflag=direct conv=notrunc status=none
fill ref $((24 * M)) $M data
check "file node: passthrough read sees an O_DIRECT (daemon) write" \
    cmp <(tio dd if=mp bs=1M skip=24 count=1 status=none) <(head -c $M data)
fuse_stop_check f "file node"
check "file node: --stats says passthrough is on ($(passthrough_line f))" grep -q '^  passthrough: on' "$WORK/f.err"
check "file node: buffered writes did not reach the daemon (write=$(counter f write))" [ "$(counter f write)" -le 1 ]
img_compare "file node: the image holds what was written through the mount" img raw ref

# ---- read-only raw export: passthrough for reads
rm -f mp
touch mp
fuse_start r "${BLOCKDEVS[@]}" --stats --export type=fuse,id=e,node-name=fmt0,mountpoint=mp
check "read-only: reads equal the image" cmp mp img
if tio dd if=data of=mp bs=4k count=1 conv=notrunc status=none 2>/dev/null; then
    bad "read-only: a write succeeded"
else
    ok "read-only: writes fail"
fi
fuse_stop_check r "read-only"
check "read-only: passthrough on" grep -q '^  passthrough: on' "$WORK/r.err"
check "read-only: the reads did not reach the daemon" [ "$(counter r read)" = 0 ]

# ---- fallbacks: the daemon serves every request, the reason is in --stats
fallback() { # NAME REASON-REGEX BLOCKDEV-ARGS... -- EXPORT-SUFFIX
    local name=$1 why=$2
    shift 2
    local args=()
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    rm -f mp
    touch mp
    fuse_start "$name" "${args[@]}" --stats --export "type=fuse,id=e,node-name=fmt0,mountpoint=mp$1"
    tio dd if=data of=mp bs=64k count=4 conv=notrunc status=none 2>/dev/null || true
    tio dd if=mp of=/dev/null bs=64k count=4 status=none
    fuse_stop_check "$name" "$name"
    check "$name: falls back ($(passthrough_line "$name"))" grep -qE "^  passthrough: off \\($why" "$WORK/$name.err"
    check "$name: requests reached the daemon" [ "$(counter "$name" read)" -gt 0 ]
}
rm -f img
fuse_image raw img $SIZE
fuse_blockdevs raw img
fallback nongrowable 'a writable export that is not growable' "${BLOCKDEVS[@]}" -- ,writable=on
# ... and keeps ENOSPC past the end.
rm -f mp
touch mp
fuse_start n2 "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on
if tio dd if=data of=mp bs=4k count=1 seek=$((SIZE / 4096)) conv=notrunc status=none 2>dd.err; then
    bad "nongrowable: a write past EOF succeeded"
else
    check "nongrowable: a write past EOF fails with ENOSPC" grep -q 'No space left' dd.err
fi
fuse_stop_check n2 "nongrowable ENOSPC"
check "nongrowable: the image did not grow" [ "$(stat -c %s img)" = $SIZE ]
fallback writethrough 'writethrough' "${BLOCKDEVS[@]}" -- ,writable=on,growable=on,writethrough=on
fuse_blockdevs raw img "" offset=$M
fallback offset 'the raw node has an offset' "${BLOCKDEVS[@]}" -- ,writable=on,growable=on
fuse_blockdevs raw img cache.direct=on
fallback direct 'cache.direct=on' "${BLOCKDEVS[@]}" -- ,writable=on,growable=on
fuse_blockdevs raw img
BLOCKGRAPH_FUSE_PASSTHROUGH=0 fallback envoff 'disabled by BLOCKGRAPH_FUSE_PASSTHROUGH=0' "${BLOCKDEVS[@]}" -- \
    ,writable=on,growable=on
fallback optoff 'passthrough=off' "${BLOCKDEVS[@]}" -- ,writable=on,growable=on,passthrough=off
rm -f q.qcow2
fuse_image qcow2 q.qcow2 $SIZE
fuse_blockdevs qcow2 q.qcow2
fallback qcow2 "node 'fmt0' \\(qcow2\\) stores its data in a layout of its own" "${BLOCKDEVS[@]}" -- \
    ,writable=on,growable=on
rm -f img
fuse_image raw img $SIZE
BLOCKDEVS=(--blockdev "driver=file,node-name=file0,filename=img"
    --blockdev "driver=blkdebug,node-name=fmt0,image=file0")
fallback blkdebug "node 'fmt0' \\(blkdebug\\) injects errors" "${BLOCKDEVS[@]}" -- ,writable=on,growable=on
BLOCKDEVS=(--blockdev "driver=file,node-name=file0,filename=img"
    --blockdev "driver=raw,node-name=fmt0,file=file0,detect-zeroes=on")
fallback detectzeroes "detect-zeroes is on \\(node 'fmt0'\\)" "${BLOCKDEVS[@]}" -- ,writable=on,growable=on
finish

#!/bin/bash
# tests/integration/qcow2-read.sh -- the qcow2 driver reads every image the
# real QEMU tools write, byte for byte, and reports the same allocation.
#
# A matrix of images is made with qemu-img / qemu-io: cluster sizes 512 B,
# 4 KiB, 64 KiB and 2 MiB; refcount widths 1, 16 and 64; v2 (compat=0.10)
# and v3; compressed clusters (zlib and zstd, from convert -c and write -c);
# extended L2 with subcluster writes; zero clusters (write -z, with and
# without -u); preallocation metadata/falloc/full; backing chains of 2 and 3
# levels mixing qcow2 and raw, overlays larger and smaller than their
# backing file, a backing file without a recorded format; external data
# files (plain and data_file_raw); internal snapshots (read through
# snapshot.name / snapshot.id); a dirty image (lazy refcounts, qemu-io
# abort); small caches with 4 KiB L2 slices; virtual sizes that are not
# multiples of the cluster size.
#
# For each image:
#   data:  `blockgraph io -c 'read -v OFF LEN'` in chunks, compared with
#          `qemu-io -c 'read -v OFF LEN'` on `qemu-img convert -O raw` of the
#          image (the hex dump lines only);
#   map:   `blockgraph io -c map` compared with `qemu-io -c map` (allocation
#          in the top layer).
#
# Needs BLOCKGRAPH (set by "make check-integration"), qemu-img, qemu-io and
# python3 (to patch one header).
# Exit 77 (skip) if the QEMU tools are missing.
set -u

if ! command -v qemu-io >/dev/null || ! command -v qemu-img >/dev/null; then
    echo "SKIP: qemu-io / qemu-img not installed (Debian package qemu-utils)"
    exit 77
fi
BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
if [ ! -x "$BLOCKGRAPH" ]; then
    echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
    exit 1
fi
if ! "$BLOCKGRAPH" io --help >/dev/null 2>&1; then
    echo "FAIL: '$BLOCKGRAPH io' is not available"
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-qcow2-read.XXXXXX")
# BG_KEEP_WORK=1 keeps the images for debugging.
trap '[ "${BG_KEEP_WORK:-0}" = 1 ] && echo "images kept in $WORK" || rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1

CHUNK=$((8 << 20))   # bytes per read -v comparison
failures=0
checks=0

fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# Runs a QEMU tool quietly; a failure to build the matrix is a test failure.
q() {
    local out
    if ! out=$("$@" 2>&1); then
        fail "setup: $*: $out"
        return 1
    fi
}

# Only the hex dump lines of read -v output (byte-wise matching: several
# times faster than in a UTF-8 locale on these 400k-line dumps).
hexlines() { LC_ALL=C grep -E '^[0-9a-f]{8}:  '; }

# compare NAME IMAGE [CONVERT_ARGS] [IMAGE_OPTS]
#   IMAGE_OPTS empty: blockgraph opens IMAGE with -f qcow2; otherwise with
#   --image-opts IMAGE_OPTS (then no map comparison: the view is not what
#   qemu-io would open).
compare() {
    local name=$1 img=$2 convert_args=${3:-} image_opts=${4:-}
    checks=$((checks + 1))
    # shellcheck disable=SC2086
    if ! qemu-img convert $convert_args -O raw "$img" "$WORK/ref.raw" 2>"$WORK/err"; then
        fail "$name: qemu-img convert: $(cat "$WORK/err")"
        return
    fi
    local len
    len=$(stat -c %s "$WORK/ref.raw")
    local bg_open=(-f qcow2 "$img")
    [ -n "$image_opts" ] && bg_open=(--image-opts "$image_opts")
    local off=0 n ok=1
    while [ "$off" -lt "$len" ]; do
        n=$((len - off))
        [ "$n" -gt "$CHUNK" ] && n=$CHUNK
        "$BLOCKGRAPH" io -r -c "read -v $off $n" "${bg_open[@]}" >"$WORK/bg.out" 2>"$WORK/bg.err"
        local rc=$?
        if [ $rc -ne 0 ] || ! LC_ALL=C grep -q "^read $n/$n bytes at offset $off" "$WORK/bg.out"; then
            fail "$name: blockgraph read $off+$n failed (exit $rc): $(head -c 600 "$WORK/bg.err") $(grep -v -E '^[0-9a-f]{8}:  ' "$WORK/bg.out" | head -3)"
            ok=0
            break
        fi
        qemu-io -r -f raw -c "read -v $off $n" "$WORK/ref.raw" | hexlines >"$WORK/ref.hex"
        hexlines <"$WORK/bg.out" >"$WORK/bg.hex"
        if [ "$(wc -l <"$WORK/ref.hex")" -ne $(((n + 15) / 16)) ]; then
            fail "$name: qemu-io did not dump [$off, $((off + n))) of the reference"
            ok=0
            break
        fi
        if ! cmp -s "$WORK/ref.hex" "$WORK/bg.hex"; then
            fail "$name: data differs in [$off, $((off + n))): first difference:"
            diff "$WORK/ref.hex" "$WORK/bg.hex" | head -6
            ok=0
            break
        fi
        off=$((off + n))
    done
    if [ -z "$image_opts" ]; then
        "$BLOCKGRAPH" io -r -f qcow2 -c map "$img" >"$WORK/bg.map" 2>"$WORK/bg.err"
        qemu-io -r -f qcow2 -c map "$img" >"$WORK/ref.map" 2>&1
        if ! cmp -s "$WORK/ref.map" "$WORK/bg.map"; then
            fail "$name: map differs from qemu-io's:"
            diff "$WORK/ref.map" "$WORK/bg.map" | head -8
            ok=0
        fi
    fi
    [ "$ok" = 1 ] && echo "  ok    $name"
}

# A raw file of SIZE bytes with random, patterned, text and zero regions
# (compressible and incompressible clusters).
make_source() {
    local out=$1 size=$2
    truncate -s "$size" "$out"
    local step=$((size / 16)) i=0
    [ "$step" -lt 4096 ] && step=4096
    for ((o = 0; o + 3000 <= size; o += step)); do
        case $((i % 4)) in
        0) head -c 3000 /dev/urandom | dd of="$out" bs=1 seek=$o conv=notrunc status=none ;;
        1) yes "qcow2 line $i" | head -c 20000 | dd of="$out" bs=1 seek=$o conv=notrunc status=none 2>/dev/null ;;
        2) ;;
        3) head -c 70000 /dev/urandom | dd of="$out" bs=1 seek=$o conv=notrunc status=none 2>/dev/null ;;
        esac
        i=$((i + 1))
    done
    truncate -s "$size" "$out"
}

# Writes a spread of patterned, unaligned and zero writes into a qcow2 image
# of SIZE bytes.
fill() {
    local img=$1 size=$2
    q qemu-io -f qcow2 \
        -c "write -P 0x11 0 100k" \
        -c "write -P 0x22 $((size / 3 + 777)) 5000" \
        -c "write -P 0x33 $((size / 2)) 300k" \
        -c "write -z $((size / 2 + 64 * 1024)) 64k" \
        -c "write -P 0x44 $((size - 9000)) 9000" \
        "$img"
}

echo "== cluster sizes (v3, size not a multiple of the cluster size)"
for cs in 512 4k 64k 2M; do
    size=$(((5 << 20) + 3 * 1024))
    q qemu-img create -f qcow2 -o cluster_size=$cs "c$cs.qcow2" $size && fill "c$cs.qcow2" $size
    compare "cluster_size=$cs" "c$cs.qcow2"
done

echo "== refcount widths"
for rb in 1 16 64; do
    q qemu-img create -f qcow2 -o cluster_size=4k,refcount_bits=$rb "r$rb.qcow2" 3M && fill "r$rb.qcow2" $((3 << 20))
    compare "refcount_bits=$rb" "r$rb.qcow2"
done

echo "== version 2"
q qemu-img create -f qcow2 -o compat=0.10 v2.qcow2 4M && fill v2.qcow2 $((4 << 20))
q qemu-io -f qcow2 -c "write -z -u 0 64k" v2.qcow2
compare "compat=0.10" v2.qcow2

echo "== compressed clusters"
make_source src.raw $((6 << 20))
q qemu-img convert -c -O qcow2 src.raw zlib.qcow2
compare "convert -c (zlib)" zlib.qcow2
q qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw zstd.qcow2
compare "convert -c (zstd)" zstd.qcow2
q qemu-img convert -c -O qcow2 -o cluster_size=4k src.raw zlib4k.qcow2
compare "convert -c (zlib, 4k clusters)" zlib4k.qcow2
q qemu-img convert -c -O qcow2 -o cluster_size=2M,compression_type=zstd src.raw zstd2m.qcow2
compare "convert -c (zstd, 2M clusters)" zstd2m.qcow2
q qemu-img create -f qcow2 -o compression_type=zstd wc.qcow2 2M &&
    q qemu-io -f qcow2 -c "write -c -P 0x5a 0 64k" -c "write -c -P 0x5b 128k 64k" -c "write -P 0x5c 160k 4k" wc.qcow2
compare "write -c (zstd) + partial overwrite" wc.qcow2

echo "== zero clusters"
q qemu-img create -f qcow2 z.qcow2 4M &&
    q qemu-io -f qcow2 -c "write -P 0x66 0 1M" -c "write -z 64k 128k" -c "write -z -u 256k 64k" \
        -c "write -z 2M 64k" -c "write -z 3000 1000" z.qcow2
compare "write -z / -z -u" z.qcow2

echo "== extended L2"
q qemu-img create -f qcow2 -o extended_l2=on,cluster_size=64k el2base.qcow2 2M &&
    q qemu-io -f qcow2 -c "write -P 0x77 0 2M" el2base.qcow2
q qemu-img create -f qcow2 -o extended_l2=on -b el2base.qcow2 -F qcow2 el2.qcow2 &&
    q qemu-io -f qcow2 -c "write -P 0x78 2k 2k" -c "write -P 0x79 10k 7k" -c "write -z 32k 4k" \
        -c "write -P 0x7a 70k 64k" -c "write -z 200k 2k" -c "write -z -u 300k 64k" el2.qcow2
compare "extended_l2 over backing" el2.qcow2
q qemu-img create -f qcow2 -o extended_l2=on,cluster_size=32k el2n.qcow2 1M &&
    q qemu-io -f qcow2 -c "write -P 0x7b 1k 1k" -c "write -z 5k 2k" -c "write -P 0x7c 33k 40k" el2n.qcow2
compare "extended_l2 without backing" el2n.qcow2

echo "== preallocation"
for p in metadata falloc full; do
    q qemu-img create -f qcow2 -o preallocation=$p "p$p.qcow2" 3M &&
        q qemu-io -f qcow2 -c "write -P 0x21 64k 64k" "p$p.qcow2"
    compare "preallocation=$p" "p$p.qcow2"
done

echo "== backing chains"
make_source base.raw $((4 << 20))
q qemu-img create -f qcow2 -b base.raw -F raw mid.qcow2 4M &&
    q qemu-io -f qcow2 -c "write -P 0x31 1M 64k" -c "write -z 2M 64k" mid.qcow2
q qemu-img create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 6M &&
    q qemu-io -f qcow2 -c "write -P 0x32 1M 4k" -c "write -P 0x33 5M 4k" top.qcow2
compare "raw <- qcow2 <- qcow2 (larger overlay)" top.qcow2
compare "raw <- qcow2" mid.qcow2
q qemu-img create -f qcow2 -b base.raw -F raw small.qcow2 1M &&
    q qemu-io -f qcow2 -c "write -P 0x34 4k 4k" small.qcow2
compare "overlay smaller than its backing file" small.qcow2
mkdir -p sub && q qemu-img create -f qcow2 -o cluster_size=4k sub/b.qcow2 2M &&
    q qemu-io -f qcow2 -c "write -P 0x35 0 2M" sub/b.qcow2
# A relative backing name resolves against the overlay's directory.
(cd sub && q qemu-img create -f qcow2 -b b.qcow2 -F qcow2 o.qcow2 2M) &&
    q qemu-io -f qcow2 -c "write -P 0x36 64k 4k" sub/o.qcow2
compare "relative backing name" sub/o.qcow2
# QEMU no longer writes images without a backing format: rename the backing
# format extension to an unknown type (which must be skipped, and kept).
q qemu-img create -f qcow2 -b sub/b.qcow2 -F qcow2 nofmt.qcow2 2M &&
    q qemu-io -f qcow2 -c "write -P 0x37 0 64k" nofmt.qcow2 &&
    python3 -c '
import sys
f = open(sys.argv[1], "r+b"); b = f.read(4096)
i = b.find(bytes.fromhex("e2792aca"), 104)
assert i > 0
f.seek(i); f.write(bytes.fromhex("7e57e470"))
' nofmt.qcow2 || fail "setup: cannot patch nofmt.qcow2"
if qemu-img info nofmt.qcow2 2>/dev/null | grep -q 'backing file format'; then
    fail "setup: nofmt.qcow2 still records a backing format"
fi
compare "backing file without a recorded format (probed)" nofmt.qcow2

echo "== external data file"
q qemu-img create -f qcow2 -o data_file=ext.data ext.qcow2 3M &&
    q qemu-io -f qcow2 -c "write -P 0x41 0 100k" -c "write -z 1M 64k" -c "write -P 0x42 2M 4k" ext.qcow2
compare "data_file" ext.qcow2
q qemu-img create -f qcow2 -o data_file=extraw.data,data_file_raw=on extraw.qcow2 3M &&
    q qemu-io -f qcow2 -c "write -P 0x43 4k 100k" extraw.qcow2
compare "data_file_raw" extraw.qcow2

echo "== internal snapshots"
q qemu-img create -f qcow2 snap.qcow2 4M &&
    q qemu-io -f qcow2 -c "write -P 0x51 0 1M" snap.qcow2 &&
    q qemu-img snapshot -c sn1 snap.qcow2 &&
    q qemu-io -f qcow2 -c "write -P 0x52 512k 1M" -c "write -z 0 64k" snap.qcow2 &&
    q qemu-img snapshot -c sn2 snap.qcow2 &&
    q qemu-io -f qcow2 -c "write -P 0x53 3M 64k" snap.qcow2
compare "active layer with snapshots" snap.qcow2
compare "snapshot.name=sn1" snap.qcow2 "-l snapshot.name=sn1" \
    "driver=qcow2,read-only=on,file.driver=file,file.filename=snap.qcow2,snapshot.name=sn1"
compare "snapshot.id=2" snap.qcow2 "-l snapshot.id=2" \
    "driver=qcow2,read-only=on,file.driver=file,file.filename=snap.qcow2,snapshot.id=2"

echo "== dirty image (lazy refcounts)"
q qemu-img create -f qcow2 -o lazy_refcounts=on dirty.qcow2 2M
# qemu-io's abort leaves the dirty bit set (incompatible feature bit 0).
sh -c 'qemu-io -f qcow2 -c "write -P 0x61 0 128k" -c abort dirty.qcow2' >/dev/null 2>&1
if [ "$(od -An -tx1 -j79 -N1 dirty.qcow2 | tr -d ' ')" = 01 ]; then
    compare "dirty bit set" dirty.qcow2
else
    fail "setup: dirty.qcow2 does not have the dirty bit"
fi

echo "== small caches"
compare "l2-cache-entry-size=4k, cache-size=8k" c64k.qcow2 "" \
    "driver=qcow2,read-only=on,file.driver=file,file.filename=c64k.qcow2,l2-cache-entry-size=4k,cache-size=8k"
compare "cache-size=1 (minimum caches), 512 B clusters" c512.qcow2 "" \
    "driver=qcow2,read-only=on,file.driver=file,file.filename=c512.qcow2,cache-size=1"

echo "$checks images compared, $failures failures"
[ "$failures" -eq 0 ]

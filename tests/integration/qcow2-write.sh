#!/bin/bash
# tests/integration/qcow2-write.sh -- the qcow2 write path, judged by the
# real QEMU tools.
#
# For each image of a matrix (cluster sizes 512 B .. 2 MiB; refcount widths
# 1, 16, 64 (512-byte clusters with 64-bit refcounts make the refcount table
# grow); v2 and v3; extended L2 (64 KiB and 16 KiB clusters); images full of
# zlib / zstd compressed clusters being overwritten; backing chains (v2 and
# v3, backing file shorter than the image); external data files (plain and
# data_file_raw); lazy refcounts; an image with an internal snapshot (its
# content must stay intact: shared clusters are copied on write); a virtual size that is not a multiple of
# the cluster size), a random sequence of operations (qcow2-write-gen.py:
# writes aligned and byte-granular, batches of concurrent aio_writes sharing
# clusters, write -z with and without -u, whole-cluster discards,
# compressed writes, shrink + regrow, flushes), run through
# "blockgraph io" in two sessions (a clean close and reopen between them),
# and the same sequence through "qemu-io -f raw" on a reference raw file.
# Then:
#   qemu-img check IMG           exit 0: no corruption and no leaks
#   qemu-img compare IMG REF     identical guest contents
# The dirty bit must be clear after the clean close of a lazy-refcounts image.
set -u
. "$(dirname "$0")/io-lib.sh"
io_require_tools python3
GEN=$(cd "$(dirname "$0")" && pwd)/qcow2-write-gen.py
SEEDS=${BG_QCOW2_WRITE_SEEDS:-2}
cd "$WORK" || exit 1
failures=0 checks=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# run_case NAME SIZE CLUSTER FLAGS SETUP...: SETUP (a shell snippet) makes
# img.qcow2 (and its backing / data files) in the current directory.
run_case() {
    local name=$1 size=$2 cs=$3 flags=$4 setup=$5 seed out rc
    for seed in $(seq 1 "$SEEDS"); do
        # BG_QCOW2_WRITE_SEED=N replays one sequence.
        checks=$((checks + 1))
        rm -rf "$WORK/c" && mkdir "$WORK/c" && cd "$WORK/c" || return
        if ! out=$(eval "$setup" 2>&1); then
            fail "$name: setup: $out"
            cd "$WORK" && continue
        fi
        qemu-img convert -O raw img.qcow2 ref.raw || { fail "$name: convert"; cd "$WORK"; continue; }
        # The generator's seed is in every failure message ("seed N").
        seed=${BG_QCOW2_WRITE_SEED:-$seed$RANDOM}
        python3 "$GEN" "$seed" "$size" "$cs" "$flags" bg.cmds ref.cmds
        local half=$(( $(wc -l <bg.cmds) / 2 ))
        # Two sessions on our side (clean close + reopen in between); the
        # reference in one.
        head -n "$half" bg.cmds >bg1.cmds
        tail -n +"$((half + 1))" bg.cmds >bg2.cmds
        local open=(-f qcow2 img.qcow2)
        [ -n "${IMAGE_OPTS:-}" ] && open=(--image-opts "driver=qcow2,file.driver=file,file.filename=img.qcow2,$IMAGE_OPTS")
        if ! out=$("$BLOCKGRAPH" io "${open[@]}" <bg1.cmds 2>&1) ||
            ! out=$("$BLOCKGRAPH" io "${open[@]}" <bg2.cmds 2>&1); then
            fail "$name (seed $seed): blockgraph io failed: $(echo "$out" | grep -iv '^wrote\|^read\|^discard\|ops;' | head -5)"
        fi
        if echo "$out" | grep -qiE "error|failed|corrupt"; then
            fail "$name (seed $seed): blockgraph io reported: $(echo "$out" | grep -iE 'error|failed|corrupt' | head -3)"
        fi
        qemu-io -f raw ref.raw <ref.cmds >/dev/null 2>&1 || fail "$name (seed $seed): qemu-io on the reference failed"
        rc=0
        out=$(qemu-img check img.qcow2 2>&1) || rc=$?
        [ $rc = 0 ] || fail "$name (seed $seed): qemu-img check exit $rc: $(echo "$out" | head -8)"
        if ! out=$(qemu-img compare -f qcow2 -F raw img.qcow2 ref.raw 2>&1); then
            fail "$name (seed $seed): qemu-img compare: $out"
            [ "${BG_KEEP_WORK:-0}" = 1 ] && cp -r "$WORK/c" "$WORK/failed-$name-$seed"
        fi
        # An internal snapshot taken before must be intact.
        if [ -f snap.raw ]; then
            qemu-img convert -l s1 -O raw img.qcow2 snapnow.raw && cmp -s snap.raw snapnow.raw ||
                fail "$name (seed $seed): the internal snapshot changed"
        fi
        if qemu-img info --output=json img.qcow2 | grep -q '"corrupt": true'; then
            fail "$name (seed $seed): corrupt bit set"
        fi
        # Dirty bit (incompatible bit 0: byte 79 of a v3 header) clear.
        local ver dirty
        ver=$(od -An -tu1 -j7 -N1 img.qcow2 | tr -d ' ')
        dirty=$(od -An -tu1 -j79 -N1 img.qcow2 | tr -d ' ')
        if [ "$ver" = 3 ] && [ $((dirty & 1)) != 0 ]; then
            fail "$name (seed $seed): dirty bit set after a clean close"
        fi
        cd "$WORK" || return
    done
}

M=$((1 << 20))
mkimg() { qemu-img create -q -f qcow2 "$@"; }
run_case c512-r1 $((4 * M)) 512 "" "mkimg -o cluster_size=512,refcount_bits=1 img.qcow2 4M"
run_case c512-r64 $((4 * M)) 512 "" "mkimg -o cluster_size=512,refcount_bits=64 img.qcow2 4M"
run_case c4k-v2 $((8 * M)) 4096 "v2" "mkimg -o cluster_size=4k,compat=0.10 img.qcow2 8M"
run_case c64k $((16 * M + 3584)) 65536 "" "mkimg img.qcow2 $((16 * M + 3584))"
run_case c2m $((16 * M)) $((2 * M)) "" "mkimg -o cluster_size=2M img.qcow2 16M"
run_case extl2-64k $((16 * M)) 65536 "" "mkimg -o extended_l2=on img.qcow2 16M"
run_case zlib $((8 * M)) 65536 "" \
    "head -c $((8 * M)) /dev/urandom | tr '\\200-\\377' '\\000' >src.raw && qemu-img convert -q -c -O qcow2 -f raw src.raw img.qcow2"
run_case zstd $((8 * M)) 4096 "" \
    "head -c $((8 * M)) /dev/urandom | tr '\\200-\\377' '\\000' >src.raw && qemu-img convert -q -c -O qcow2 -o compression_type=zstd,cluster_size=4k -f raw src.raw img.qcow2"
run_case backing $((12 * M)) 65536 "backing" \
    "mkimg base.qcow2 8M && qemu-io -c 'write -P 0x5a 0 8M' -c 'write -z 1M 64k' base.qcow2 >/dev/null && mkimg -b base.qcow2 -F qcow2 img.qcow2 12M"
run_case backing-extl2 $((8 * M)) 16384 "backing" \
    "mkimg base.qcow2 8M && qemu-io -c 'write -P 0x5a 0 7M' base.qcow2 >/dev/null && mkimg -o extended_l2=on,cluster_size=16k -b base.qcow2 -F qcow2 img.qcow2 8M"
run_case backing-v2 $((8 * M)) 65536 "v2,backing" \
    "mkimg -o compat=0.10 base.qcow2 8M && qemu-io -c 'write -P 0x5a 0 8M' base.qcow2 >/dev/null && mkimg -o compat=0.10 -b base.qcow2 -F qcow2 img.qcow2 8M"
run_case datafile $((8 * M)) 65536 "nocompress" "mkimg -o data_file=img.data img.qcow2 8M"
run_case datafile-raw $((8 * M)) 65536 "nocompress" "mkimg -o data_file=img.data,data_file_raw=on img.qcow2 8M"
run_case snapshot $((8 * M)) 65536 "notruncate" \
    "mkimg img.qcow2 8M && qemu-io -c 'write -c -P 2 1M 128k' -c 'write -P 1 0 1M' -c 'write -P 3 2M 5M' -c 'write -z 3M 64k' img.qcow2 >/dev/null && qemu-img snapshot -c s1 img.qcow2 && qemu-img convert -O raw img.qcow2 snap.raw"
# Tiny caches: dirty L2 slices and refcount blocks are evicted (written back
# after their dependencies) all the time.
IMAGE_OPTS=l2-cache-size=1024,l2-cache-entry-size=512,refcount-cache-size=2048 \
    run_case c512-smallcache $((4 * M)) 512 "" "mkimg -o cluster_size=512,refcount_bits=16 img.qcow2 4M"
IMAGE_OPTS=l2-cache-size=2048,l2-cache-entry-size=1024,refcount-cache-size=16384 \
    run_case extl2-smallcache $((8 * M)) 16384 "backing" \
    "mkimg base.qcow2 8M && qemu-io -c 'write -P 0x5a 0 7M' base.qcow2 >/dev/null && mkimg -o extended_l2=on,cluster_size=16k -b base.qcow2 -F qcow2 img.qcow2 8M"
run_case lazy $((8 * M)) 65536 "" "mkimg -o lazy_refcounts=on img.qcow2 8M"

echo "qcow2-write: $checks cases, $failures failures"
[ "$failures" = 0 ]

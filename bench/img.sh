#!/bin/bash
# bench/img.sh -- "blockgraph img" against qemu-img in the same run
# ("make bench-img").
#
# 1. convert: a 2 GiB raw image with mixed content (random data,
#    compressible text, zero-filled blocks written as data, and holes), and
#    the same as qcow2; qcow2 -> raw, raw -> qcow2 and raw -> qcow2 -c, each
#    run with blockgraph and qemu-img alternately, RUNS times; the medians
#    and the ratio qemu-img time / blockgraph time (> 1: we are faster).
#    The target's page cache is dropped between runs where possible
#    (/proc/sys/vm/drop_caches, root only). Each case runs with -t writeback
#    (both flush the target at the end) and -t unsafe (no flush).
# 2. bench: `img bench` and `qemu-img bench` with the same arguments.
#
# Environment: BLOCKGRAPH (binary), BENCH_DIR (work directory, default
# /var/tmp; needs ~6 GiB), RUNS (default 3), BENCH_SIZE (default 2G).
set -u

B=${BLOCKGRAPH:-$(dirname "$0")/../build/blockgraph}
case $B in /*) ;; *) B=$PWD/$B ;; esac
RUNS=${RUNS:-3}
SIZE=${BENCH_SIZE:-2G}
command -v qemu-img >/dev/null || { echo "qemu-img not installed"; exit 1; }
[ -x "$B" ] || { echo "BLOCKGRAPH=$B is not executable"; exit 1; }

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bg-bench-img.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1

drop_caches() {
    sync
    [ -w /proc/sys/vm/drop_caches ] && echo 1 >/proc/sys/vm/drop_caches 2>/dev/null
    return 0
}

echo "== building the $SIZE source image (mixed data and holes)"
python3 - "$SIZE" <<'EOF'
import os, random, sys
s = sys.argv[1]
mult = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
size = int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)
random.seed(42)
chunk = 1 << 20
text = (b"The quick brown fox jumps over the lazy dog. 0123456789\n" * 20000)[:chunk]
with open("src.raw", "wb") as f:
    f.truncate(size)
    for i in range(size // chunk):
        kind = random.random()
        if kind < 0.25:
            f.seek(i * chunk); f.write(os.urandom(chunk))          # incompressible
        elif kind < 0.50:
            f.seek(i * chunk); f.write(text)                       # compressible
        elif kind < 0.60:
            f.seek(i * chunk); f.write(bytes(chunk))               # zeros written as data
        elif kind < 0.70:
            f.seek(i * chunk + 65536); f.write(os.urandom(8192))   # mostly hole, some data
        # else: a hole
EOF
qemu-img convert -f raw -O qcow2 src.raw src.qcow2

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

time_cmd() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; echo 0; return; }
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}

printf '\n%-28s %12s %12s %8s\n' "convert" "blockgraph s" "qemu-img s" "ratio"
# Each with -t writeback (the target is flushed at the end by both tools:
# what is timed includes writing the data to the disk) and -t unsafe
# (qemu-img's default: no flush, the copy pipeline itself).
for case in "qcow2->raw|-t writeback -f qcow2 -O raw src.qcow2" "raw->qcow2|-t writeback -f raw -O qcow2 src.raw" \
    "raw->qcow2 -c|-t writeback -f raw -O qcow2 -c src.raw" "qcow2->raw -t unsafe|-t unsafe -f qcow2 -O raw src.qcow2" \
    "raw->qcow2 -t unsafe|-t unsafe -f raw -O qcow2 src.raw" "raw->qcow2 -c -t unsafe|-t unsafe -f raw -O qcow2 -c src.raw"; do
    name=${case%%|*}
    args=${case#*|}
    ours=() theirs=()
    for ((i = 0; i < RUNS; i++)); do
        rm -f dst.img; drop_caches
        # shellcheck disable=SC2086
        ours+=("$(time_cmd "$B" img convert $args dst.img)")
        rm -f dst.img; drop_caches
        # shellcheck disable=SC2086
        theirs+=("$(time_cmd qemu-img convert $args dst.img)")
    done
    # shellcheck disable=SC2086
    qemu-img compare $(echo "$args" | sed -E 's/-t [a-z]+//; s/-O [a-z0-9]+//; s/-c//') dst.img >/dev/null || echo "  (qemu-img's output differs from the source!)"
    mo=$(printf '%s\n' "${ours[@]}" | median)
    mt=$(printf '%s\n' "${theirs[@]}" | median)
    printf '%-28s %12.3f %12.3f %8.2f\n' "$name" "$mo" "$mt" "$(echo "$mt / $mo" | bc -l)"
done
rm -f dst.img

qemu-img create -q -f raw bench.raw 1G
qemu-io -f raw -c 'write -P 1 0 1G' bench.raw >/dev/null
qemu-img convert -f raw -O qcow2 bench.raw bench.qcow2
printf '\n%-52s %12s %12s %8s\n' "bench (same arguments)" "blockgraph s" "qemu-img s" "ratio"
for args in "-f raw -c 200000 -d 32 bench.raw" "-f raw -c 100000 -d 1 bench.raw" \
    "-f raw -w -c 100000 -d 32 -t none -i io_uring bench.raw" "-f raw -c 20000 -d 16 -s 64k -t none bench.raw" \
    "-f qcow2 -c 200000 -d 32 bench.qcow2" "-f qcow2 -w -c 50000 -d 16 --flush-interval=1000 bench.qcow2"; do
    ours=() theirs=()
    for ((i = 0; i < RUNS; i++)); do
        # shellcheck disable=SC2086
        ours+=("$("$B" img bench $args | sed -n 's/^Run completed in \([0-9.]*\) seconds./\1/p')")
        # shellcheck disable=SC2086
        theirs+=("$(qemu-img bench $args | sed -n 's/^Run completed in \([0-9.]*\) seconds./\1/p')")
    done
    mo=$(printf '%s\n' "${ours[@]}" | median)
    mt=$(printf '%s\n' "${theirs[@]}" | median)
    printf '%-52s %12.3f %12.3f %8.2f\n' "$args" "$mo" "$mt" "$(echo "$mt / $mo" | bc -l)"
done
echo
echo "ratio = qemu-img time / blockgraph time (> 1: blockgraph is faster); medians of $RUNS runs"

#!/bin/bash
# bench/img.sh -- "blockgraph img" against qemu-img in the same run
# ("make bench-img").
#
# 1. convert: a 2 GiB raw image with mixed content (random data,
#    compressible text, zero-filled blocks written as data, and holes), and
#    the same as qcow2; qcow2 -> raw, raw -> qcow2 and raw -> qcow2 -c,
#    qcow2 -> raw with -m 16, raw -> qcow2 with -W, and a backing chain
#    (a qcow2 overlay rewriting 1/8 of its qcow2 base) flattened to raw and
#    to qcow2 and converted with -B (the target on the same base); each run
#    with blockgraph and qemu-img alternately, RUNS times; the medians and
#    the ratio qemu-img time / blockgraph time (> 1: we are faster). Both
#    tools' outputs are checked: qemu-img compare against the source, and
#    qemu-img check for qcow2 targets.
#    The target's page cache is dropped between runs where possible
#    (/proc/sys/vm/drop_caches, root only). Each case runs with -t writeback
#    (both flush the target at the end) and -t unsafe (no flush).
# 2. bench: `img bench` and `qemu-img bench` with the same arguments.
#
# Environment: BLOCKGRAPH (binary), BENCH_DIR (work directory, default
# /var/tmp; needs ~8 GiB), RUNS (default 3), BENCH_SIZE (default 2G).
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

# A backing chain: base.qcow2 holds the whole source, overlay.qcow2 (on it)
# rewrites 2 MiB of every 16 MiB with other data.
qemu-img convert -f raw -O qcow2 src.raw base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
python3 -c '
import sys
size = int(sys.argv[1])
for off in range(0, size - (6 << 20) + 1, 16 << 20):
    print("write -P %d %d 2M" % (1 + (off >> 24) % 250, off + (4 << 20)))
' "$(stat -c %s src.raw)" | qemu-io -f qcow2 overlay.qcow2 >/dev/null

# The output is correct: what the target reads equals the source (its
# chain), and a qcow2 target is consistent. Prints what is wrong.
check_output() {   # TOOL SRC-ARGS TARGET TARGET-FMT
    local tool=$1 src=$2 dst=$3 fmt=$4
    # shellcheck disable=SC2086
    qemu-img compare $src -F "$fmt" "$dst" >/dev/null || echo "  ($tool's output differs from the source!)"
    if [ "$fmt" = qcow2 ]; then
        qemu-img check -q -f qcow2 "$dst" >/dev/null 2>&1 || echo "  ($tool's output fails qemu-img check!)"
    fi
}

printf '\n%-32s %12s %12s %8s\n' "convert" "blockgraph s" "qemu-img s" "ratio"
# Each with -t writeback (the target is flushed at the end by both tools:
# what is timed includes writing the data to the disk) and -t unsafe
# (qemu-img's default: no flush, the copy pipeline itself). A case is
# NAME|CONVERT-ARGUMENTS (without -t and the target)|the source's
# arguments for qemu-img compare.
cases=(
    "qcow2->raw|-f qcow2 -O raw src.qcow2|-f qcow2 src.qcow2"
    "raw->qcow2|-f raw -O qcow2 src.raw|-f raw src.raw"
    "raw->qcow2 -c|-f raw -O qcow2 -c src.raw|-f raw src.raw"
    "qcow2->raw -m 16|-m 16 -f qcow2 -O raw src.qcow2|-f qcow2 src.qcow2"
    "raw->qcow2 -W|-W -f raw -O qcow2 src.raw|-f raw src.raw"
    "chain->raw (flatten)|-f qcow2 -O raw overlay.qcow2|-f qcow2 overlay.qcow2"
    "chain->qcow2 (flatten)|-f qcow2 -O qcow2 overlay.qcow2|-f qcow2 overlay.qcow2"
    "chain->qcow2 -B base|-f qcow2 -O qcow2 -B base.qcow2 -F qcow2 overlay.qcow2|-f qcow2 overlay.qcow2"
)
for cache in writeback unsafe; do
    for case in "${cases[@]}"; do
        name=${case%%|*}
        rest=${case#*|}
        args="-t $cache ${rest%%|*}"
        src=${rest#*|}
        fmt=$(echo "$args" | sed -E 's/.*-O ([a-z0-9]+).*/\1/')
        [ "$cache" = unsafe ] && name="$name -t unsafe"
        ours=() theirs=()
        for ((i = 0; i < RUNS; i++)); do
            rm -f dst-bg.img; drop_caches
            # shellcheck disable=SC2086
            ours+=("$(time_cmd "$B" img convert $args dst-bg.img)")
            rm -f dst-qemu.img; drop_caches
            # shellcheck disable=SC2086
            theirs+=("$(time_cmd qemu-img convert $args dst-qemu.img)")
        done
        check_output blockgraph "$src" dst-bg.img "$fmt"
        check_output qemu-img "$src" dst-qemu.img "$fmt"
        mo=$(printf '%s\n' "${ours[@]}" | median)
        mt=$(printf '%s\n' "${theirs[@]}" | median)
        printf '%-32s %12.3f %12.3f %8.2f\n' "$name" "$mo" "$mt" "$(echo "$mt / $mo" | bc -l)"
    done
done
rm -f dst-bg.img dst-qemu.img base.qcow2 overlay.qcow2

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

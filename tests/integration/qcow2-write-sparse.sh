#!/bin/bash
# tests/integration/qcow2-write-sparse.sh -- a small write into a new cluster
# in never-written host space writes the data only: the zero head and tail
# are left as holes (they read as zeros), while a host cluster that held data
# before (freed and reused) still gets its zeros written. Judged by the real
# qemu-io (contents) and qemu-img check, and by the file's allocated blocks.
set -u
. "$(dirname "$0")/io-lib.sh"
io_require_tools
cd "$WORK" || exit 1
bgio() { "$BLOCKGRAPH" io -f qcow2 "$@" >/dev/null; }
K=1024 M=$((1024 * 1024))

# verify IMG DESC "PATTERN OFFSET LEN"...: qemu-io reads every range with -P.
verify() {
    local img=$1 desc=$2 r args=() out
    shift 2
    for r in "$@"; do args+=(-c "read -P $r"); done
    out=$(qemu-io -f qcow2 "${args[@]}" "$img" 2>&1)
    if [ $? -ne 0 ] || grep -q "verification failed\|error" <<<"$out"; then
        bad "$desc: contents: $out"
    else
        ok "$desc: contents (qemu-io)"
    fi
    if out=$(qemu-img check "$img" 2>&1); then ok "$desc: qemu-img check"; else bad "$desc: qemu-img check: $out"; fi
}
blocks_kib() { echo $(($(stat -c '%b * %B' "$1") / K)); }

# 1. A 4 KiB write in the middle of a fresh 1 MiB cluster: about 4 KiB of
# data reaches the file, not the whole cluster.
for cache in writeback none; do
    rm -f a.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=1M a.qcow2 16M
    before=$(blocks_kib a.qcow2)
    bgio -t "$cache" -c "write -P 0x11 $((512 * K)) 4k" -c "write -P 0x22 $((3 * M + 100)) 300" a.qcow2
    grown=$(($(blocks_kib a.qcow2) - before))
    # The new L2 table is a whole 1 MiB cluster; the data is 4 KiB plus one
    # aligned block: far below the two more 1 MiB clusters a full
    # copy-on-write writes.
    if [ "$grown" -le 1536 ]; then ok "cache=$cache: the file grew by $grown KiB"
    else bad "cache=$cache: the file grew by $grown KiB for two small writes"; fi
    verify a.qcow2 "cache=$cache fresh" "0 0 512k" "0x11 512k 4k" "0 516k $((3 * M + 100 - 516 * K))" \
        "0x22 $((3 * M + 100)) 300" "0 $((3 * M + 400)) $((13 * M - 400))"
done

# 2. Host clusters that held data: freed by a discard and allocated again
# (in the same session and after a reopen), a small write into them must
# not let the old data show through the head or the tail.
for reopen in no yes; do
    rm -f b.qcow2
    qemu-img create -q -f qcow2 b.qcow2 4M
    qemu-io -f qcow2 -c "write -P 0xaa 0 1M" b.qcow2 >/dev/null
    if [ "$reopen" = yes ]; then
        bgio -c "discard 0 1M" b.qcow2
        bgio -c "write -P 0x33 $((2 * M + 4 * K)) 4k" -c "write -P 0x44 $((3 * M + 1000)) 100" b.qcow2
    else
        bgio -c "discard 0 1M" -c "write -P 0x33 $((2 * M + 4 * K)) 4k" -c "write -P 0x44 $((3 * M + 1000)) 100" b.qcow2
    fi
    verify b.qcow2 "reuse (reopen=$reopen)" "0 0 $((2 * M + 4 * K))" "0x33 $((2 * M + 4 * K)) 4k" \
        "0 $((2 * M + 8 * K)) $((M - 8 * K + 1000))" "0x44 $((3 * M + 1000)) 100" "0 $((3 * M + 1100)) $((M - 1100))"
    # The new clusters really reused the old host space (else this case
    # proves nothing): the image did not grow past its 1 MiB of old data.
    size=$(stat -c %s b.qcow2)
    if [ "$size" -le $((M + 512 * K)) ]; then ok "reuse (reopen=$reopen): old host clusters reused"
    else bad "reuse (reopen=$reopen): the file grew to $size bytes; clusters not reused"; fi
done

finish

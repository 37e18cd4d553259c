#!/bin/bash
# tests/integration/cor-vmstate.sh -- qemu-io's "read -b" / "write -b" (the
# VM state stored with the image) against the real qemu-io: the same
# commands on two copies of an image must print the same and leave images
# that qemu-img compare calls identical and check calls clean; then each
# tool reads the VM state the other wrote (-P), on qcow2 with 64 KiB and
# 512 B clusters and with extended L2 entries (the VM state offset depends
# on the L2 geometry), through filters (blkdebug), on an overlay (reads
# zeros: nothing of the backing file's disk lies there), read-only (refused
# as qemu-io does) and on raw (refused with qemu-io's message). Takes about
# a second.
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "cor-vmstate: $BLOCKGRAPH against $(qemu-io --version | head -1)"

# check_both DESC: qemu-img check of both copies is clean and counts the
# same allocated clusters (where a write grows the L1 table, clusters are
# placed differently from QEMU's, so fragmentation and the image end may
# differ: docs/qcow2.md).
check_both() {
    local desc=$1 cq cb
    cq=$(qemu-img check "$WORK/q/img.qcow2" 2>&1 | sed -E 's/ allocated, .*/ allocated/; /^Image end offset/d')
    cb=$(qemu-img check "$WORK/b/img.qcow2" 2>&1 | sed -E 's/ allocated, .*/ allocated/; /^Image end offset/d')
    if [ "$cq" = "$cb" ] && echo "$cb" | grep -q 'No errors were found'; then
        ok "$desc: qemu-img check clean and the same for both"
    else
        bad "$desc: qemu-img check differs or is not clean:
        qemu-io's: $cq
        ours:      $cb"
    fi
}

# cross_read DESC CMD...: qemu-io runs CMD on our image, we on qemu-io's.
cross_read() {
    local desc=$1 args=() c out
    shift
    for c in "$@"; do args+=(-c "$c"); done
    if ! out=$(qemu-io "${args[@]}" "$WORK/b/img.qcow2" 2>&1) || echo "$out" | grep -q 'failed'; then
        bad "$desc: qemu-io reading our image: $out"
    else
        ok "$desc: qemu-io reads the VM state we wrote"
    fi
    if ! out=$("$BLOCKGRAPH" io "${args[@]}" "$WORK/q/img.qcow2" 2>&1) || echo "$out" | grep -q 'failed'; then
        bad "$desc: we reading qemu-io's image: $out"
    else
        ok "$desc: we read the VM state qemu-io wrote"
    fi
}

for geo in "64k:cluster_size=65536" "512:cluster_size=512" "extl2:cluster_size=16384,extended_l2=on"; do
    name=${geo%%:*}
    fresh_images qcow2 3M -o "${geo#*:}"
    compare "qcow2 $name: write -b / read -b" \
        'write -b -P 0x5 0 4k' 'read -b -P 0x5 0 4k' 'write -b -P 7 64k 128k' 'read -b -P 7 64k 128k' \
        'read -b -P 0 4k 60k' 'read -b -v 65536 16' 'read -P 0 0 3M' 'map' 'info'
    check_both "qcow2 $name"
    cross_read "qcow2 $name" 'read -b -P 0x5 0 4k' 'read -b -P 7 64k 128k' 'read -b -P 0 4k 60k' 'read -P 0 0 3M'
done

fresh_images qcow2 1M
compare "qcow2: unaligned, -z, -f and read-past-anything" \
    'write -b -P 6 100 3' 'read -b 96 12' 'write -b -z 0 4k' 'write -b -f 0 4k' 'read -b -P 0 1G 4k'
OPTS=(-r)
compare "qcow2 -r: write -b refused" 'write -b -P 1 0 4k' 'read -b -P 0 0 4k'
OPTS=()
IMAGE_ARG='json:{"driver":"blkdebug","image":{"driver":"qcow2","file":{"driver":"file","filename":"img.qcow2"}}}'
compare "through blkdebug" 'write -b -P 9 512 1k' 'read -b -P 9 512 1k'
IMAGE_ARG=
check_both "through blkdebug"
for d in q b; do
    (cd "$WORK/$d" && mv img.qcow2 base.qcow2 && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2)
done
compare "overlay: the backing file's VM state is not read" 'read -b -P 0 512 1k' 'write -b -P 3 0 4k' 'read -b -P 3 0 4k'
check_both "overlay"

fresh_images raw 1M
compare "raw: refused" 'write -b -P 5 0 4k' 'read -b 0 4k' 'read -P 0 0 4k'

finish

#!/bin/bash
# tests/integration/cor-io.sh -- copy-on-read: "blockgraph io -C", "open -C"
# and the copy-on-read driver (--image-opts driver=copy-on-read, bottom=)
# against the real qemu-io on two copies of one overlay over a backing
# image. Each case requires the same output and exit status, and
# afterwards the same guest data (qemu-img compare), the same allocation
# (qemu-img map --output=json of the two overlays: what was copied into
# the top, zero clusters included) and a clean qemu-img check of ours.
# Cases: plain reads of data, zero and unallocated backing ranges and of
# ranges that straddle clusters; open -C; -C -r; overlapping aio reads
# (each cluster copied once, byte-exact) and an aio write racing a copy;
# the driver's bottom option and its errors. Takes about a second.
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "cor-io: $BLOCKGRAPH against $(qemu-io --version | head -1)"

# A base with data (0x11 in the first MiB, 0x22 at 3968k..4M), a zero
# cluster at 2M and nothing elsewhere; the overlay img.qcow2 over it in
# both directories (the backing file name is relative).
fresh_chain() {
    local d
    for d in q b; do
        rm -f "$WORK/$d/base.qcow2" "$WORK/$d/img.qcow2"
    done
    qemu-img create -q -f qcow2 "$WORK/q/base.qcow2" 4M
    qemu-io -c 'write -q -P 0x11 0 1M' -c 'write -q -z 2M 64k' -c 'write -q -P 0x22 3968k 128k' \
        "$WORK/q/base.qcow2" >/dev/null
    cp "$WORK/q/base.qcow2" "$WORK/b/base.qcow2"
    for d in q b; do
        (cd "$WORK/$d" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2)
    done
    IMG_FMT=qcow2
}

# chain_same DESC: the overlays' maps agree and ours checks clean.
chain_same() {
    local desc=$1 mq mb out
    mq=$(qemu-img map --output=json "$WORK/q/img.qcow2" 2>&1)
    mb=$(qemu-img map --output=json "$WORK/b/img.qcow2" 2>&1)
    if [ "$mq" != "$mb" ]; then
        bad "$desc: overlay maps differ:
$(diff <(echo "$mq") <(echo "$mb") | head -20 | sed 's/^/        /')"
        return
    fi
    if ! echo "$mb" | grep -q '"depth": 0'; then
        bad "$desc: nothing was copied into the overlay: $mb"
        return
    fi
    if ! out=$(qemu-img check "$WORK/b/img.qcow2" 2>&1); then
        bad "$desc: qemu-img check of ours: $out"
        return
    fi
    ok "$desc: same overlay map, check clean"
}

IMAGE_ARG=img.qcow2

fresh_chain
OPTS=(-C)
compare "-C: reads of data, zero and unallocated backing ranges" \
    'read -P 0x11 512 1k' 'read -P 0 2M 4k' 'read -P 0 3M 4k' 'read -P 0x11 960k 128k' \
    'read -v 4032k 16' 'map' 'alloc 0 4M'
chain_same "-C reads"
compare "-C: reading it all again copies nothing more" 'read -P 0x11 0 1M' 'map'
chain_same "-C second pass"

fresh_chain
OPTS=(--copy-on-read)
compare "--copy-on-read: one read over the whole disk" 'read 0 4M' 'read -P 0x22 3968k 128k' 'map'
chain_same "--copy-on-read whole disk"

fresh_chain
OPTS=()
IMAGE_ARG=none
compare "open -C" 'open -C img.qcow2' 'read -P 0x11 64k 64k' 'read -P 0 1536k 4k' 'map'
chain_same "open -C"
IMAGE_ARG=img.qcow2

fresh_chain
OPTS=(-C -r)
compare "-C -r is refused" 'read 0 4k'
OPTS=(-C)
COMPARE_SORT=1
compare "-C: overlapping aio reads of the same clusters" \
    'aio_read -P 0x11 0 192k' 'aio_read -P 0x11 64k 192k' 'aio_read -P 0x11 100k 4k' 'aio_flush'
COMPARE_SORT=0
chain_same "-C overlapping aio reads"
COMPARE_SORT=1
compare "-C: a write racing a copy of the same cluster wins" \
    'aio_read 512k 256k' 'aio_write -P 0x99 600k 4k' 'aio_flush'
COMPARE_SORT=0
compare "-C: after the race" 'read -P 0x99 600k 4k' 'read -P 0x11 512k 88k' 'read -P 0x11 604k 164k'
chain_same "-C racing write"

# The driver itself, through --image-opts.
fresh_chain
OPTS=(--image-opts)
IMAGE_ARG='driver=copy-on-read,file.driver=qcow2,file.node-name=fmt,file.file.filename=img.qcow2'
compare "driver=copy-on-read" 'read -P 0x11 0 64k' 'read -P 0 2M 64k' 'write -P 0x33 64k 4k' 'read -P 0x33 64k 4k'
chain_same "driver=copy-on-read"
fresh_chain
IMAGE_ARG='driver=copy-on-read,file.driver=qcow2,file.node-name=fmt,file.file.filename=img.qcow2,bottom=fmt'
compare "driver=copy-on-read,bottom=(the top itself)" 'read -P 0x11 128k 64k'
chain_same "bottom=top"
IMAGE_ARG='driver=copy-on-read,file.driver=qcow2,file.file.filename=img.qcow2,bottom=nosuch'
compare "bottom naming no node" 'read 0 4k'
IMAGE_ARG='driver=copy-on-read,file.driver=qcow2,file.file.filename=img.qcow2,file.read-only=on'
compare "read-only child" 'read 0 4k'
OPTS=(-r --image-opts)
IMAGE_ARG='driver=copy-on-read,file.driver=qcow2,file.file.filename=img.qcow2'
compare "read-only filter" 'read 0 4k'

# bottom: data below the bottom node is read but not copied (three layers:
# base <- mid <- img; with bottom=mid only what mid holds is copied).
for d in q b; do
    (cd "$WORK/$d" && rm -f img.qcow2 mid.qcow2 &&
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 &&
        qemu-io -c 'write -q -P 0x44 256k 64k' mid.qcow2 >/dev/null &&
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 img.qcow2)
done
OPTS=(--image-opts)
IMAGE_ARG='driver=copy-on-read,bottom=mid,file.driver=qcow2,file.file.filename=img.qcow2,file.backing.node-name=mid,file.backing.driver=qcow2,file.backing.file.filename=mid.qcow2'
compare "bottom=mid: only mid's data is copied" 'read -P 0x11 0 256k' 'read -P 0x44 256k 64k' 'read -P 0 2M 4k'
chain_same "bottom=mid"
if qemu-img map --output=json "$WORK/b/img.qcow2" | grep '"depth": 0' | grep -q '"start": 262144, "length": 65536'; then
    ok "bottom=mid: exactly mid's cluster is in the top"
else
    bad "bottom=mid: top map $(qemu-img map --output=json "$WORK/b/img.qcow2")"
fi

finish

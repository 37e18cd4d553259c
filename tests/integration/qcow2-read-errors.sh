#!/bin/bash
# tests/integration/qcow2-read-errors.sh -- injected read errors on the qcow2
# read paths and metadata loads, judged by the real qemu-io.
#
# Each case puts a blkdebug node under the qcow2 node with one rule: the
# next read of the image file after EVENT fails with EIO (once). The same
# commands then run through "blockgraph io" and qemu-io on two copies of
# the image (a json: pseudo file name, so both parse the same options): the
# outputs (which command failed, and that the next one succeeded), the exit
# statuses and the images must be equal. This holds the qcow2 driver to
# QEMU's event points: l2_load when an L2 slice is read from the file (not
# on a cache hit), refblock_load on each refcount update (cached or not),
# read_aio / read_backing_aio / read_compressed before a data read,
# reftable_load when the image opens (the one case where the messages
# differ: both must fail to open, naming the refcount table and EIO).
set -u
. "$(dirname "$0")/io-lib.sh"
io_require_tools
cd "$WORK" || exit 1
echo "qcow2-read-errors: $BLOCKGRAPH"

# setup CMDS: runs CMDS (a shell line that makes img.qcow2, maybe
# base.qcow2) in q/, then copies what it made to b/.
setup() {
    rm -rf q b
    mkdir q b
    (cd q && eval "$1") >/dev/null
    cp --sparse=always q/* b/
    IMG_FMT=qcow2
}

# inject EVENT: the image argument with the rule.
inject() {
    IMAGE_ARG="json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"blkdebug\",\"image\":{\"driver\":\"file\",\"filename\":\"img.qcow2\"},"
    IMAGE_ARG+="\"inject-error\":[{\"event\":\"$1\",\"iotype\":\"read\",\"errno\":5,\"once\":true}]}}"
}

fresh="qemu-img create -q -f qcow2 img.qcow2 16M"
filled="$fresh && qemu-io -c 'write -P 0x22 0 2M' img.qcow2"
back="qemu-img create -q -f qcow2 base.qcow2 16M && qemu-io -c 'write -P 0x11 0 16M' base.qcow2 && \
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2 16M && qemu-io -c 'write -P 0x33 1M 64k' img.qcow2"
comp="$fresh && qemu-io -c 'write -c -P 0x44 0 64k' -c 'write -P 0x55 64k 64k' img.qcow2"

setup "$filled"
inject l2_load
compare "l2_load: the first read of the table fails, the retry reads the data" \
    "read -P 0x22 0 4k" "read -P 0x22 0 4k" "read -P 0x22 1M 4k"
compare "l2_load: a write needing the table fails, the retry writes" \
    "write -P 0x66 0 4k" "write -P 0x66 0 4k" "read -P 0x66 0 4k" "read -P 0x22 4k 4k"
compare "l2_load: an unallocated range (no table) reads zeros, no load" \
    "read -P 0 4M 64k" "read -P 0x22 0 4k"

setup "$filled"
inject read_aio
compare "read_aio: the data read fails once" \
    "read -P 0x22 0 64k" "read -P 0x22 0 64k" "read -P 0 4M 4k"
compare "read_aio: a read spanning data and zeros" "read -v 2M-512 1k" "read -P 0x22 0 4k"

setup "$back"
inject read_backing_aio
compare "read_backing_aio: a read from the backing file fails once" \
    "read -P 0x33 1M 64k" "read -P 0x11 0 4k" "read -P 0x11 0 4k" "read -P 0x33 1M 64k"

setup "$comp"
inject read_compressed
compare "read_compressed: the compressed cluster's read fails once" \
    "read -P 0x55 64k 4k" "read -P 0x44 0 4k" "read -P 0x44 0 64k"

setup "$fresh"
inject refblock_load
compare "refblock_load: the read after the first refcount update fails once" \
    "write -P 0x77 0 64k" "write -P 0x77 0 64k" "read -P 0x77 0 64k" "write -P 0x78 1M 64k" "read -P 0x78 1M 64k"

setup "$filled"
inject reftable_load
io_run_pair /dev/null "read -P 0x22 0 4k"
if [ "$(cat q.rc)" = 1 ] && [ "$(cat b.rc)" = 1 ] && [ ! -s b.out ] && [ "$(wc -l <b.err)" = 1 ] &&
    grep -q "refcount.*: Input/output error$" q.err && grep -q "refcount table: Input/output error$" b.err; then
    ok "reftable_load: opening the image fails (exit 1, one line naming the refcount table), as in qemu-io"
else
    bad "reftable_load: exit $(cat b.rc) (qemu-io $(cat q.rc)): $(cat b.out b.err) / qemu-io: $(cat q.err)"
fi

finish

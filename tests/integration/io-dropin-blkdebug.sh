#!/bin/bash
# tests/integration/io-dropin-blkdebug.sh -- blkdebug as QEMU's iotests use
# it through qemu-io, against the real qemu-io: rules on the read_aio and
# write_aio events that the raw format raises; breakpoints (break, resume,
# remove_break, wait_break with aio requests, as iotests 046-like scripts
# use them) and their errors, also on an image without blkdebug. Outputs, exit statuses and
# images must match qemu-io's (see io-lib.sh).
#
# Needs BLOCKGRAPH, qemu-io and qemu-img (exit 77 without them, unless CI).
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "io-dropin-blkdebug: $BLOCKGRAPH against $(qemu-io --version | head -1)"

# Rules limited to reads and writes (a flush at close would hit a rule for
# every request type, and we warn about a failed flush at close).
for d in q b; do
    printf '[inject-error]\nevent = "read_aio"\nerrno = "5"\niotype = "read"\n' >"$WORK/$d/read.cfg"
    printf '[inject-error]\nevent = "write_aio"\nerrno = "28"\niotype = "write"\nonce = "on"\n' >"$WORK/$d/write.cfg"
done

fresh_images raw 1M
echo "raw: read_aio, write_aio"
OPTS=(-f raw)
IMAGE_ARG=blkdebug:read.cfg:img.raw
compare "raw raises read_aio: the read after it fails" 'write -P 1 0 4k' 'read -P 1 0 4k' 'read 0 512'
IMAGE_ARG=blkdebug:write.cfg:img.raw
compare "raw raises write_aio: a once rule fails the first write" \
    'write -P 2 0 4k' 'write -P 3 4k 4k' 'read -P 3 4k 4k' 'read -P 1 0 4k'
IMAGE_ARG=

echo "breakpoints"
fresh_images qcow2 1M
(cd "$WORK/q" && qemu-io -f qcow2 -c 'write -P 1 0 128k' img.qcow2 >/dev/null)
cp "$WORK/q/img.qcow2" "$WORK/b/img.qcow2"
OPTS=()
IMAGE_ARG=blkdebug::img.qcow2
# Completions of requests that run at the same time come in any order.
COMPARE_SORT=1
compare "break write_aio: suspended, a second write passes, resume" \
    'break write_aio A' 'aio_write -P 2 0 4k' 'wait_break A' 'aio_write -P 3 64k 4k' 'resume A' 'aio_flush' \
    'read -P 2 0 4k' 'read -P 3 64k 4k'
compare "two breakpoints on one event; remove_break resumes" \
    'break read_aio A' 'break read_aio B' 'aio_read -P 2 0 4k' 'wait_break A' 'resume A' 'wait_break B' \
    'remove_break B' 'aio_flush' 'remove_break B'
compare "a breakpoint on l2_load; resume twice" \
    'break l2_load X' 'aio_read -P 1 64k 512' 'wait_break X' 'resume X' 'resume X' 'aio_flush'
compare "cluster allocation: break on cluster_alloc, overlapping writes wait" \
    'break cluster_alloc C' 'aio_write -P 4 256k 512' 'wait_break C' 'aio_write -P 5 256k 4k' 'resume C' 'aio_flush' \
    'read -P 5 256k 4k' 'map'
COMPARE_SORT=0
compare "errors: unknown event, unknown tags, set breakpoints removed" \
    'break nosuch A' 'remove_break A' 'resume A' 'break read_aio A' 'break read_aio A' 'remove_break A' \
    'remove_break A' 'read -P 2 0 4k'
IMAGE_ARG=
OPTS=(-f qcow2)
compare "no blkdebug node: Operation not supported" 'break read_aio A' 'remove_break A' 'resume A'
OPTS=()

finish

#!/bin/bash
# tests/integration/io-dropin-blkdebug.sh -- blkdebug as QEMU's iotests use
# it through qemu-io, against the real qemu-io: rules on the read_aio and
# write_aio events that the raw format raises. Outputs, exit statuses and
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

finish

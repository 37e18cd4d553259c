#!/bin/bash
# tests/integration/io-forms.sh -- the ways of naming an image, against the
# real qemu-io: --image-opts keyval (with a raw window, a protocol node as
# the top node, a probed format), json:{...} pseudo file names (nested and
# dotted), format probing and its warning, the in-shell open/close commands
# (with -o options and with --image-opts), and the probed-raw protection of
# block 0 (when a format with a probe of its own is registered). Outputs,
# exit statuses and images must match qemu-io's (see io-lib.sh). Also the
# forms qemu-io lacks: --image-opts JSON and "open -f".
#
# Needs BLOCKGRAPH, qemu-io and qemu-img (exit 77 without them, unless CI).
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "io-forms: $BLOCKGRAPH against $(qemu-io --version | head -1)"

fresh_images raw 1M
echo "--image-opts"
OPTS=(--image-opts)
IMAGE_ARG=driver=raw,file.filename=img.raw
compare "keyval: driver=raw,file.filename=..." 'write -P 1 0 4k' 'read -P 1 0 4k' 'length' 'map'
IMAGE_ARG=driver=raw,file.driver=file,file.filename=img.raw,offset=64k,size=128k
compare "keyval: raw window (offset, size)" \
    'length' 'write -P 2 0 128k' 'read -P 2 0 128k' 'write 128k 512' 'read 127k 2k' 'map'
IMAGE_ARG=driver=file,filename=img.raw
compare "keyval: a protocol node as the image" 'write -P 3 512k 4k' 'read -P 3 512k 4k' 'length'
IMAGE_ARG=file.filename=img.raw
compare "keyval: no driver, the format is probed (warning)" 'read -P 2 64k 128k' 'write -P 4 0 512'
IMAGE_ARG=driver=raw,file.filename=img.raw,read-only=on
compare "keyval: read-only=on without -r fails to open" 'read -P 4 0 512'
OPTS=(--image-opts -r)
compare "keyval: read-only=on with -r" 'read -P 4 0 512' 'write 0 1'
OPTS=(--image-opts)

echo "json:"
OPTS=()
IMAGE_ARG='json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"}}'
compare "json: nested" 'write -P 5 1k 1k' 'read -P 5 1k 1k' 'length'
IMAGE_ARG='json:{"driver":"raw","file.filename":"img.raw"}'
compare "json: dotted keys" 'write -P 6 2k 1k' 'read -P 6 2k 1k'
IMAGE_ARG='json:{"driver":"raw","offset":4096,"size":8192,"file":{"driver":"file","filename":"img.raw"}}'
compare "json: raw window" 'length' 'write -P 7 0 8k' 'write 8k 1' 'read -v 8190 2'
IMAGE_ARG='json:{"file":{"driver":"file","filename":"img.raw"}}'
compare "json: no driver, probed" 'read -P 7 4k 8k'

echo "probing"
IMAGE_ARG=
compare "file name without -f: probed raw, with the warning" 'write -P 8 512 512' 'read -P 8 512 512' 'length'
OPTS=(-f file)
compare "-f file: the protocol node alone" 'write -P 9 0 4k' 'read -P 9 0 4k' 'length'
OPTS=(-r)
compare "-r without -f" 'read -P 9 0 4k'

echo "open / close"
OPTS=()
IMAGE_ARG=none
compare "open -o driver=raw, close, reopen read-only" \
    'length' 'open -o driver=raw img.raw' 'length' 'write -P 10 0 4k' 'close' 'length' 'close' \
    'open -r -o driver=raw img.raw' 'read -P 10 0 4k' 'write 0 1' 'open img.raw' 'close'
# (Not "open -Z" or "open a b": they print the usage line, whose option
# list differs: see docs/io.md.)
compare "open: bad options, missing file" \
    'open' 'open -t bogus img.raw' 'open -o driver=raw nonexistent.raw' \
    'open -U -o driver=raw img.raw' 'open -r -U -o driver=raw img.raw' 'read -P 10 0 1'
compare "open without -f probes" 'open img.raw' 'read -P 10 0 4k'
compare "open -n / -t / -d" 'open -n -o driver=raw img.raw' 'write -P 11 0 4k' 'close' \
    'open -t unsafe -d ignore -o driver=raw img.raw' 'discard 0 4k' 'read -P 11 0 4k' 'close' \
    'open -t writethrough -o driver=raw img.raw' 'discard 0 4k' 'read -P 0 0 4k'
OPTS=(--image-opts)
compare "open with --image-opts" 'open driver=raw,file.filename=img.raw' 'write -P 12 0 512' 'close' \
    'open -o driver=raw img.raw' 'open -r driver=raw,file.filename=img.raw' 'read -P 12 0 512'
IMAGE_ARG=

echo "blockgraph io only"
out_kv=$(cd "$WORK/b" && "$BLOCKGRAPH" io --image-opts -c 'read -v 0 16' -c length \
    driver=raw,file.driver=file,file.filename=img.raw 2>&1)
out_json=$(cd "$WORK/b" && "$BLOCKGRAPH" io --image-opts -c 'read -v 0 16' -c length \
    '{"driver":"raw","file":{"driver":"file","filename":"img.raw"}}' 2>&1)
if [ "$(io_filter <<<"$out_kv")" = "$(io_filter <<<"$out_json")" ] && grep -q '^1 MiB$' <<<"$out_json"; then
    ok "--image-opts takes JSON as well as keyval"
else
    bad "--image-opts JSON: '$out_json' vs keyval '$out_kv'"
fi
expect_lines "open -f raw (qemu-io's open has no -f)" 0 "1 MiB" -- \
    "$BLOCKGRAPH" io -c "open -f raw $WORK/b/img.raw" -c length
expect_lines "open -f with a bad driver" 1 \
    "blockgraph io: can't open device $WORK/b/img.raw: Unknown driver 'nosuch'" -- \
    "$BLOCKGRAPH" io -c "open -f nosuch $WORK/b/img.raw"
expect_lines "aio_discard (newer qemu-io)" 0 "discarded  4096/4096 bytes at offset 0
4 KiB, 1 ops; TIME" -- \
    bash -c '"$@" 2>&1 | sed -E "s/^([^,]*, [0-9]+ ops); .*/\1; TIME/"' _ \
    "$BLOCKGRAPH" io -f raw -c 'aio_discard 0 4k' -c aio_flush "$WORK/b/img.raw"

# Probed raw: a write that would make block 0 look like another format's
# header fails with EPERM (qemu-io too). Needs such a format registered.
echo "probed raw protection"
qemu-img create -q -f qcow2 "$WORK/h.qcow2" 1M
head -c 512 "$WORK/h.qcow2" >"$WORK/hdr"
if "$BLOCKGRAPH" io -f qcow2 -r -c length "$WORK/h.qcow2" >/dev/null 2>&1; then
    fresh_images raw 1M
    OPTS=()
    compare "probed raw: writing a qcow2 header into block 0 is refused" \
        "write -s $WORK/hdr 0 512" "write -s $WORK/hdr 512 512" 'read -P 0 0 512' "write -s $WORK/hdr 1 511" \
        'aio_write -P 0x51 0 1' 'aio_flush' 'write -P 0x51 0 1' 'write -z 0 4k'
    OPTS=(-f raw)
    compare "explicit raw: the same writes are allowed" "write -s $WORK/hdr 0 512" 'read -v 0 4'
else
    echo "  (not run: no format besides raw is registered yet)"
fi

finish

#!/bin/bash
# tests/integration/io-dropin-opts.sh -- qemu-io command-line options that
# drop-in scripts use, against the real qemu-io: -s/--snapshot and "open -s"
# (writes go to a temporary overlay: the image is unchanged, no file is left
# in $TMPDIR, even after a kill); -T/--trace (accepted and checked as
# qemu-io does; we have no trace events). Outputs, exit statuses
# and images must match qemu-io's (see io-lib.sh).
#
# Needs BLOCKGRAPH, qemu-io and qemu-img (exit 77 without them, unless CI).
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "io-dropin-opts: $BLOCKGRAPH against $(qemu-io --version | head -1)"

# events=FILE errors are "qemu-io:FILE: ..." (no space after the colon).
io_filter_orig=$(declare -f io_filter | tail -n +2)
eval "io_filter_base() $io_filter_orig"
io_filter() { io_filter_base | sed -E 's/^qemu-io:([^ ])/blockgraph io:\1/'; }

fresh_images raw 1M
echo "ev*" >"$WORK/q/events"
cp "$WORK/q/events" "$WORK/b/events"

echo "-T / --trace"
for spec in 'nosuch_*' 'enable=nosuch_*,file=trace.log' 'events=events' 'x,y' 'x,noy' 'x,bogus=1' \
    'file=' 'file=nodir/trace.log' 'events=missing'; do
    OPTS=(-f raw -T "$spec")
    compare "-T '$spec'" 'write -P 1 0 4k' 'read -P 1 0 4k'
done
OPTS=(-f raw --trace 'nosuch_*')
compare "--trace" 'read -P 1 0 4k'
if [ -f "$WORK/b/trace.log" ] && [ ! -s "$WORK/b/trace.log" ]; then
    ok "-T file=trace.log creates the log (empty: no events)"
else
    bad "-T file=trace.log: no empty trace.log"
fi
# "help" lists the trace events (we have none) and exits 0 without running anything.
rc=0
out=$(cd "$WORK/b" && "$BLOCKGRAPH" io -T help -f raw -c 'write -P 9 0 4k' img.raw 2>&1) || rc=$?
if [ $rc = 0 ] && [ -z "$out" ] && (cd "$WORK/q" && qemu-io -T help -f raw -c 'write -P 9 0 4k' img.raw >/dev/null) &&
    images_equal; then
    ok "-T help: exit status 0, no command run (as qemu-io; its event list is empty here)"
else
    bad "-T help: status $rc, output '$out'"
fi
OPTS=()

echo "-s / --snapshot"
export TMPDIR=$WORK/tmp
mkdir -p "$TMPDIR"
tmp_empty() {
    if [ -z "$(ls -A "$TMPDIR")" ]; then ok "$1: nothing left in \$TMPDIR"; else bad "$1: left $(ls -A "$TMPDIR")"; fi
}
for fmt in raw qcow2; do
    fresh_images $fmt 1M
    (cd "$WORK/q" && qemu-io -f $fmt -c 'write -P 1 0 64k' -c 'write -P 2 192k 4k' img.$fmt >/dev/null)
    cp "$WORK/q/img.$fmt" "$WORK/b/img.$fmt"
    before=$(md5sum <"$WORK/b/img.$fmt")
    OPTS=(-f $fmt -s)
    compare "$fmt -s: writes and reads through the overlay, info, map" \
        'write -P 3 4k 4k' 'read -P 3 4k 4k' 'read -P 1 0 4k' 'read -P 1 8k 56k' 'read -P 2 192k 4k' \
        'write -z 192k 4k' 'read -P 0 192k 4k' 'info' 'map' 'length' 'discard 0 64k' 'read -P 1 0 4k'
    OPTS=(-f $fmt --snapshot -r)
    compare "$fmt --snapshot -r: the overlay is read-only" 'read -P 1 0 4k' 'write 0 4k'
    OPTS=(-f $fmt -s)
    compare "$fmt -s, killed" 'write -P 4 0 4k' 'sigraise 9'
    [ "$(md5sum <"$WORK/b/img.$fmt")" = "$before" ] && ok "$fmt -s: the image is unchanged" ||
        bad "$fmt -s: the image changed"
    tmp_empty "$fmt -s"
done
OPTS=()
IMAGE_ARG=none
compare "open -s, close, open: the writes are gone" \
    'open -s -o driver=qcow2 img.qcow2' 'write -P 5 0 4k' 'read -P 5 0 4k' 'close' \
    'open -o driver=qcow2 img.qcow2' 'read -P 1 0 4k' 'close' 'open -s -r -o driver=qcow2 img.qcow2' 'write 0 1'
IMAGE_ARG=
tmp_empty "open -s"
unset TMPDIR

finish

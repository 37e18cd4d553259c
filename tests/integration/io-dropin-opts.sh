#!/bin/bash
# tests/integration/io-dropin-opts.sh -- qemu-io command-line options that
# drop-in scripts use, against the real qemu-io: -T/--trace (accepted and
# checked as qemu-io does; we have no trace events). Outputs, exit statuses
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

finish

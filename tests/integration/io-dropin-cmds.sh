#!/bin/bash
# tests/integration/io-dropin-cmds.sh -- qemu-io commands and options that
# drop-in scripts use, against the real qemu-io: -k/--native-aio and
# "open -k"; reopen (-r, -w, -c, -o and their errors); sigraise and abort (the process kills itself: nothing after
# the command runs, the exit status is the signal's, and what was written
# before stays written). Outputs, exit statuses and images must match
# qemu-io's (see io-lib.sh).
#
# Needs BLOCKGRAPH, qemu-io and qemu-img (exit 77 without them, unless CI).
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "io-dropin-cmds: $BLOCKGRAPH against $(qemu-io --version | head -1)"

fresh_images raw 1M
echo "-k / --native-aio"
OPTS=(-f raw -k)
compare "-k without -n: native AIO needs O_DIRECT" 'read 0 512'
OPTS=(-f raw -k -n)
compare "-k -n" 'write -P 1 0 4k' 'read -P 1 0 4k'
OPTS=(-f raw --native-aio -t none)
compare "--native-aio -t none" 'read -P 1 0 4k'
OPTS=()
IMAGE_ARG=none
compare "open -k (refused without -n), open -k -n" \
    'open -k -o driver=raw img.raw' 'open -k -n -o driver=raw img.raw' 'write -P 2 4k 4k' 'read -P 2 4k 4k'
IMAGE_ARG=

echo "sigraise / abort"
OPTS=(-f raw)
compare "sigraise 9 after a write: killed, the write stays, later commands do not run" \
    'write -P 3 0 64k' 'sigraise 9' 'write -P 4 0 64k'
compare "sigraise 15" 'write -P 5 64k 4k' 'sigraise 15' 'write -P 6 64k 4k'
compare "sigraise errors; 0 and an ignored signal return" \
    'sigraise x' 'sigraise 99999999999' 'sigraise 0' 'sigraise 28' 'sigraise' 'read -P 5 64k 4k'
# -q: qemu-io's buffered stdout is lost at abort, ours was flushed after
# every command (docs/io.md).
compare "abort" 'write -q -P 7 128k 4k' 'abort' 'write -P 8 128k 4k'
IMAGE_ARG=none
OPTS=()
compare "sigraise and abort without an image" 'sigraise 0' 'abort'
compare "help abort" 'help abort'
IMAGE_ARG=
want=$(qemu-io -c 'help sigraise' | head -1)
got=$("$BLOCKGRAPH" io -c 'help sigraise' | head -1)
if [ "$want" = "$got" ]; then ok "help sigraise: the usage line"; else bad "help sigraise: '$got', qemu-io: '$want'"; fi

echo "reopen"
# Automatic node names differ ("#block195" there): compared as "#blockN".
io_filter_orig=$(declare -f io_filter | tail -n +2)
eval "io_filter_base() $io_filter_orig"
io_filter() { io_filter_base | sed -E "s/'#block[0-9]+'/'#blockN'/g"; }
for fmt in raw qcow2; do
    fresh_images $fmt 1M
    OPTS=(-f $fmt)
    compare "$fmt: reopen -r, -w, none (keeps the state)" \
        'write -P 1 0 4k' 'reopen -r' 'read -P 1 0 4k' 'write 0 4k' 'reopen' 'write 0 4k' 'reopen -w' \
        'write -P 2 0 4k' 'reopen' 'write -P 3 4k 4k' 'read -P 3 4k 4k'
    OPTS=(-f $fmt -r)
    compare "$fmt -r: reopen -w" 'write 0 4k' 'reopen -w' 'write -P 4 8k 4k' 'read -P 4 8k 4k'
    OPTS=(-f $fmt)
    compare "$fmt: reopen -c" 'reopen -c none' 'write -P 5 0 4k' 'reopen -c writeback' 'read -P 5 0 4k' \
        'reopen -c unsafe' 'write -P 6 0 4k' 'reopen -c directsync' 'read -P 6 0 4k' 'reopen -c bogus'
    compare "$fmt: reopen errors" 'reopen -o bogus=1' 'reopen -o file.bogus=1' \
        'reopen -o driver=null-co' 'reopen -c none -o cache.direct=on' \
        'reopen -o read-only=on' 'reopen x' 'write -P 7 0 4k'
    compare "$fmt: reopen errors with -r" 'reopen -r -w' 'reopen -r -o read-only=off' 'read -P 0 0 4k'
    compare "$fmt: reopen -o cache.direct=on, read-only=on after -r" 'reopen -o cache.direct=on' \
        'write -P 8 0 4k' 'reopen -r' 'reopen -o read-only=on' 'read -P 8 0 4k'
done
compare "qcow2: reopen -o lazy-refcounts=on" 'reopen -o lazy-refcounts=on' 'write -P 9 0 64k' 'read -P 9 0 64k'
OPTS=()

finish

#!/bin/bash
# tests/integration/io-dropin-cmds.sh -- qemu-io commands and options that
# drop-in scripts use, against the real qemu-io: -k/--native-aio and
# "open -k"; sigraise and abort (the process kills itself: nothing after
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

finish

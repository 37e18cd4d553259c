#!/bin/bash
# tests/integration/qcow2-write-errors.sh -- injected I/O errors on every
# metadata write path of the qcow2 write path (blkdebug, QEMU's event
# names; after QEMU iotests 026 / 305).
#
# For each event, a blkdebug rule under the qcow2 node fails the next write
# of the image file after the event with ENOSPC (once). A session of
# "blockgraph io" then runs commands that reach that path. Checks:
#   - the event fires: some command fails with "No space left on device";
#   - later commands of the same session (new writes, reads) work;
#   - qemu-img check: no corruption (exit 0, or 3: leaked clusters are
#     allowed after an error, as in QEMU);
#   - a later session without errors writes and reads back, and every write
#     that reported success reads back (qemu-io as the reader).
set -u
. "$(dirname "$0")/io-lib.sh"
io_require_tools
cd "$WORK" || exit 1
failures=0 checks=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# case EVENT SETUP COMMANDS... : SETUP makes img.qcow2; COMMANDS run in a
# session with the rule. The last two commands of every session (a write
# of 0x77 at 7M and its read-back) must succeed.
run() {
    local ev=$1 setup=$2 out rc opts
    shift 2
    checks=$((checks + 1))
    rm -f img.qcow2 base.qcow2
    if ! out=$(eval "$setup" 2>&1); then
        fail "$ev: setup: $out"
        return
    fi
    opts="{\"driver\":\"qcow2\",\"file\":{\"driver\":\"blkdebug\",\"image\":{\"driver\":\"file\",\"filename\":\"img.qcow2\"},"
    opts+="\"inject-error\":[{\"event\":\"$ev\",\"iotype\":\"write\",\"errno\":28,\"once\":true}]}}"
    local args=() c
    for c in "$@" "write -P 0x77 7M 64k" "read -P 0x77 7M 64k"; do args+=(-c "$c"); done
    out=$("$BLOCKGRAPH" io --image-opts "$opts" "${args[@]}" 2>&1)
    if ! echo "$out" | grep -q "No space left on device"; then
        fail "$ev: the injected error never surfaced: $(echo "$out" | head -6)"
    fi
    if echo "$out" | tail -4 | grep -qi "failed\|error"; then
        fail "$ev: I/O after the error failed: $(echo "$out" | tail -4)"
    fi
    rc=0
    out=$(qemu-img check img.qcow2 2>&1) || rc=$?
    if [ $rc != 0 ] && [ $rc != 3 ]; then
        fail "$ev: qemu-img check exit $rc: $(echo "$out" | head -6)"
        return
    fi
    if qemu-img info --output=json img.qcow2 | grep -q '"corrupt": true'; then
        fail "$ev: image marked corrupt"
    fi
    out=$("$BLOCKGRAPH" io -f qcow2 -c "write -P 0x66 5M 192k" -c "read -P 0x66 5M 192k" img.qcow2 2>&1)
    echo "$out" | grep -qi "failed\|error" && fail "$ev: a later session failed: $(echo "$out" | head -4)"
    out=$(qemu-io -f qcow2 -c "read -P 0x77 7M 64k" -c "read -P 0x66 5M 192k" img.qcow2 2>&1)
    echo "$out" | grep -qi "failed\|error\|mismatch" && fail "$ev: qemu-io reads other data: $(echo "$out" | head -4)"
    rc=0
    out=$(qemu-img check img.qcow2 2>&1) || rc=$?
    if [ $rc != 0 ] && [ $rc != 3 ]; then fail "$ev: qemu-img check after the later session: exit $rc: $(echo "$out" | head -6)"; fi
}

fresh="qemu-img create -q -f qcow2 img.qcow2 16M"
small="qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 img.qcow2 16M"
back="qemu-img create -q -f qcow2 base.qcow2 16M && qemu-io -c 'write -P 0x11 0 16M' base.qcow2 >/dev/null && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2 16M"
filled="$fresh && qemu-io -c 'write -P 0x22 0 2M' img.qcow2 >/dev/null"
comp="$fresh && qemu-io -c 'write -c -P 0x22 0 64k' img.qcow2 >/dev/null"

run cluster_alloc "$fresh" "write -P 1 0 64k" "write -P 2 64k 64k"
run l2_alloc_write "$fresh" "write -P 1 0 64k"
run l1_update "$fresh" "write -P 1 0 64k"
run l2_update "$fresh" "write -P 1 0 64k" "flush"
run refblock_update_part "$fresh" "write -P 1 0 64k" "flush"
run cow_write "$back" "write -P 1 1000 3000"
run write_aio "$filled" "write -P 1 0 4k"
run write_compressed "$fresh" "write -c -P 1 0 64k"
run l2_update "$comp" "write -P 3 0 4k" "flush"
run refblock_alloc_write "$small" "write -P 1 0 256k"
run refblock_alloc_hookup "$small" "write -P 1 0 256k"
run reftable_grow "$small" "write -P 1 0 3M"
run refblock_alloc_write_blocks "$small" "write -P 1 0 3M"
run refblock_alloc_write_table "$small" "write -P 1 0 3M"
run refblock_alloc_switch_table "$small" "write -P 1 0 3M"
run l1_grow_write_table "qemu-img create -q -f qcow2 -o cluster_size=512 img.qcow2 1M" "truncate 4M" "truncate 16M"
run l1_grow_activate_table "qemu-img create -q -f qcow2 -o cluster_size=512 img.qcow2 1M" "truncate 4M" "truncate 16M"
run cluster_free "$filled" "discard 0 1M" "write -z -u 1M 1M" "flush"

echo "qcow2-write-errors: $checks cases, $failures failures"
[ "$failures" = 0 ]

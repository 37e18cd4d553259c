#!/bin/bash
# tests/integration/qcow2-crash.sh -- SIGKILL a qcow2 writer under load; the
# image must stay consistent and keep every write a completed fsync
# acknowledged.
#
# Each iteration: a fresh small qcow2 image (variants below) is exported by
# "blockgraph daemon" through FUSE; qcow2-crash-writer.py writes 4 KiB
# blocks from 4 threads (rewrites, fsync every few writes, a log of what
# was issued and what an fsync made durable); after a random 0.2..0.7 s the
# daemon gets SIGKILL. Then:
#   non-lazy refcounts: qemu-img check exits 0 or 3 (leaks are allowed
#     after a crash, as in QEMU; corruption is not);
#   lazy refcounts: the image is dirty; a writable open by blockgraph
#     repairs it (refcount rebuild), and then qemu-img check exits 0;
#   every block holds its last durable value (or a later issued one).
# BG_CRASH_ITERATIONS (default 25: 5 per variant) sets the number of
# iterations, spread round-robin over the variants; "make check-crash
# N=1000" runs a long campaign. The time budget grows with it (10 s each).
set -euo pipefail
ITER=${BG_CRASH_ITERATIONS:-25}
export FUSE_TEST_BUDGET=${FUSE_TEST_BUDGET:-$((60 + 10 * ITER))}
WRITER=$(cd "$(dirname "$0")" && pwd)/qcow2-crash-writer.py
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools python3
BS=4096
BLOCKS=1024   # 4 MiB of the 8 MiB image

# name | qemu-img create options | lazy | initial block value | backing?
VARIANTS=(
    "v3-64k|-o cluster_size=64k|0|0|"
    "lazy-64k|-o lazy_refcounts=on|1|0|"
    "v3-4k-backing|-o cluster_size=4k|0|17|backing"
    "extl2-lazy-backing|-o extended_l2=on,cluster_size=32k,lazy_refcounts=on|1|17|backing"
    "v2-512|-o compat=0.10,cluster_size=512|0|0|"
)

leaks=0
for i in $(seq 1 "$ITER"); do
    IFS='|' read -r vname opts lazy initial backing <<<"${VARIANTS[$((i % ${#VARIANTS[@]}))]}"
    d="crash $i ($vname)"
    rm -f img.qcow2 base.qcow2 log raw mp writer.err
    if [ -n "$backing" ]; then
        qemu-img create -q -f qcow2 base.qcow2 8M
        qemu-io -c "write -P $initial 0 8M" base.qcow2 >/dev/null
        # shellcheck disable=SC2086
        qemu-img create -q -f qcow2 $opts -b base.qcow2 -F qcow2 img.qcow2 8M
    else
        # shellcheck disable=SC2086
        qemu-img create -q -f qcow2 $opts img.qcow2 8M
    fi
    touch mp
    if ! fuse_start d --blockdev "driver=file,node-name=f0,filename=img.qcow2" \
        --blockdev "driver=qcow2,node-name=q0,file=f0" \
        --export "type=fuse,id=e,node-name=q0,mountpoint=mp,writable=on"; then
        bad "$d: daemon did not start"
        continue
    fi
    python3 "$WRITER" write mp log $BLOCKS $BS 4 "$i" 2>writer.err &
    wpid=$!
    # Load starts once the writer has the export open.
    for _ in $(seq 100); do
        [ -s log ] && break
        kill -0 "$wpid" 2>/dev/null || break
        sleep 0.05
    done
    if [ ! -s log ]; then
        bad "$d: the writer did not start: $(cat writer.err)"
        fuse_stop d KILL
        wait "$wpid" 2>/dev/null || true
        continue
    fi
    sleep "0.$((2 + RANDOM % 6))"
    fuse_stop d KILL
    wait "$wpid" 2>/dev/null || true
    if [ "$lazy" = 1 ]; then
        # The next writable open repairs the refcounts.
        if ! out=$(timeout 60 "$BLOCKGRAPH" io -f qcow2 -c flush img.qcow2 2>&1); then
            bad "$d: writable open to repair failed: $out"
            continue
        fi
    fi
    rc=0
    out=$(timeout 60 qemu-img check img.qcow2 2>&1) || rc=$?
    if [ $rc = 0 ]; then
        :
    elif [ $rc = 3 ] && [ "$lazy" = 0 ]; then
        leaks=$((leaks + 1))
    else
        bad "$d: qemu-img check exit $rc: $(echo "$out" | head -6)"
        continue
    fi
    qemu-img convert -O raw img.qcow2 raw
    if out=$(python3 "$WRITER" verify raw log $BS "$initial" 2>&1); then
        ok "$d: consistent (check exit $rc); $(echo "$out" | tail -1)"
    else
        bad "$d: $(echo "$out" | tail -4)"
    fi
done
echo "  ($leaks of $ITER iterations leaked clusters, allowed without lazy refcounts)"
finish

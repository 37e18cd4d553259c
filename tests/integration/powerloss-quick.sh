#!/bin/bash
# tests/integration/powerloss-quick.sh -- the fast subset of the power-loss
# replay harness (tests/powerloss/powerloss.py; the full campaign is "make
# check-powerloss", docs/reliability.md "Power loss").
#
# 1. Two workloads (random rewrites, and writes mixed with zero-range) run
#    through blockgraph's qcow2
#    over blklogwrites; the log is replayed to every flush point and to
#    random crash states between flushes; every state must pass qemu-img
#    check (leaks allowed), open in blockgraph (and in qemu-io on a sample)
#    and hold every fsync-acknowledged write: 0 bad states.
# 2. The same with BLOCKGRAPH_TEST_QCOW2_MISORDER=l2-before-refcount (the
#    qcow2 driver's test-only switch that drops the refcount-before-L2
#    ordering): the harness must report bad states (--expect-bad).
# Exit 0 pass, 1 fail, 77 skip (qemu-img/qemu-io/fusermount3 missing).
set -u
here=$(cd "$(dirname "$0")" && pwd)
BLOCKGRAPH=${BLOCKGRAPH:-$here/../../build/blockgraph}
export BLOCKGRAPH
H=$here/../powerloss/powerloss.py
rc=0
timeout -k 10 100 python3 "$H" --workloads rewrite,discard-zero --ops 12 \
    --states-per-flush 1 --jobs 1 --seed "${BG_POWERLOSS_SEED:-1}"
r=$?
[ $r = 77 ] && exit 77
[ $r = 0 ] || rc=1
timeout -k 10 50 python3 "$H" --workloads alloc-seq --ops 12 --states-per-flush 1 --jobs 1 \
    --misorder l2-before-refcount --expect-bad --details 1
r=$?
if [ $r = 0 ]; then
    echo "  ok    the misordered driver was caught (bad states > 0)"
else
    echo "  FAIL  the harness did not report bad states for the misordered driver (exit $r)"
    rc=1
fi
[ $rc = 0 ] && echo "powerloss-quick.sh: passed" || echo "powerloss-quick.sh: FAILED"
exit $rc

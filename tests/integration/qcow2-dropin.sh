#!/bin/bash
# tests/integration/qcow2-dropin.sh -- qcow2 behaviour that QEMU's own
# iotests rely on, judged by the real qemu-img/qemu-io (issue 20,
# "Behaviour"): the same steps run with the real tools on one copy and with
# "blockgraph img"/"blockgraph io" on another; "qemu-img map --output=json",
# the file size, "qemu-img check" and our own outputs (program name
# stripped) must be the same.
#
#   1. discard of a range ending at an unaligned image end drops the
#      partial last cluster;
#   2. writes over preallocated zero clusters reuse them; write-zeroes
#      (aligned, unaligned, unallocated, already zero) as QEMU maps them;
#      commit (copies allocated data as data, empties the top image as
#      QEMU does) and rebase allocate what QEMU allocates;
#   3. a compressed descriptor whose sectors run past the end of the file
#      reads back; check -r all after a refcount rebuild of an image whose
#      compressed data spans host clusters;
#   4. closing a corrupt image without bitmaps prints nothing about them;
#   5. check (human and JSON, leaks, repairs) and snapshot listings (img
#      snapshot -l, info, info --output=json) print what qemu-img prints.
. "$(dirname "$0")/img-lib.sh"

# Wrappers so that one script runs with either tool pair.
cat >bgimg <<EOF
#!/bin/sh
exec "$B" img "\$@"
EOF
cat >bgio <<EOF
#!/bin/sh
exec "$B" io "\$@"
EOF
chmod +x bgimg bgio
OURS_IMG=$WORK/bgimg
OURS_IO=$WORK/bgio

# Strips the program names and timings, so texts can be compared.
norm() {
    sed -e 's/^blockgraph img: //; s/^blockgraph io: //; s/^qemu-img: //; s/^qemu-io: //' \
        -e 's/^\([0-9.]* [KMGT]*i*B\), \([0-9]*\) ops; .*/\1, \2 ops/'
}

# state IMG: what is compared after the steps: map, file size, check.
state() {
    qemu-img map --output=json "$1"
    echo "file size $(stat -c %s "$1")"
    qemu-img check "$1" 2>&1
    echo "check exit $?"
}

# run_both DESC FUNC: FUNC IMG IO runs the steps in the current directory
# (printing what it wants compared); it runs in q/ with qemu-img/qemu-io
# and in o/ with ours, and the two outputs must be equal.
run_both() {
    local desc=$1 fn=$2
    rm -rf q o
    mkdir q o
    (cd q && "$fn" qemu-img qemu-io 2>&1 | norm) >q.out
    (cd o && "$fn" "$OURS_IMG" "$OURS_IO" 2>&1 | norm) >o.out
    if diff -u q.out o.out >diff.out; then
        ok "$desc"
    else
        bad "$desc: differs from qemu-img/qemu-io:"
        head -40 diff.out | sed 's/^/        /'
    fi
}

# ---- 1. discard at an unaligned image end
discard_end() {
    local IMG=$1 IO=$2
    qemu-img create -f qcow2 a.qcow2 100k >/dev/null
    qemu-io -c 'write -P 1 0 100k' a.qcow2 >/dev/null
    $IO -c 'discard 64k 36k' a.qcow2
    $IO -c 'read -P 0 64k 36k' -c 'read -P 1 0 64k' a.qcow2
    state a.qcow2
    $IO -c 'discard 0 100k' a.qcow2
    state a.qcow2
    # v2 without a backing file: the clusters become unallocated
    qemu-img create -f qcow2 -o compat=0.10,cluster_size=4k b.qcow2 10k >/dev/null
    qemu-io -c 'write -P 1 0 10k' b.qcow2 >/dev/null
    $IO -c 'discard 4k 6k' b.qcow2
    state b.qcow2
}
run_both "1: discard of a partial last cluster" discard_end

# ---- 2. preallocated zero clusters, write-zeroes, rebase, commit
prealloc_zero() {
    local IMG=$1 IO=$2
    qemu-img create -f qcow2 a.qcow2 1M >/dev/null
    qemu-io -c 'write -P 1 0 1M' a.qcow2 >/dev/null
    $IO -c 'write -z 0 512k' a.qcow2 >/dev/null
    $IO -c 'write -P 2 0 64k' -c 'write -P 3 200k 4k' a.qcow2 >/dev/null
    state a.qcow2
    qemu-img create -f qcow2 -o preallocation=metadata p.qcow2 1M >/dev/null
    $IO -c 'write -P 2 0 64k' -c 'write -P 3 200k 4k' p.qcow2 >/dev/null
    state p.qcow2
}
run_both "2: writes over preallocated zero clusters reuse them" prealloc_zero

write_zeroes() {
    local IMG=$1 IO=$2
    qemu-img create -f qcow2 -o cluster_size=4k z.qcow2 1M >/dev/null
    $IO -c 'write -z -u 64k 64k' -c 'write -z 192k 64k' z.qcow2
    $IO -c 'write -z -u 327681 65534' -c 'write -z 458753 65534' z.qcow2
    $IO -c 'write 600k 100k' -c 'write -z -u 612k 8k' -c 'write -z 640k 24k' z.qcow2
    $IO -c 'write -z 601k 2k' z.qcow2
    state z.qcow2
    # zeros over zeros write no L2 table (an L2 write would fail here)
    local j='{"driver":"qcow2","file":{"driver":"blkdebug","inject-error":[{"event":"l2_update","errno":5,'
    j+='"immediately":true,"once":false}],"image":{"driver":"file","filename":"z.qcow2"}}}'
    $IO -c 'write -z -u 64k 64k' -c 'write -z 192k 64k' -c 'write -z 612k 8k' "json:$j"
    # the last partial cluster of an image
    qemu-img create -f qcow2 e.qcow2 100k >/dev/null
    qemu-io -c 'write -P 1 0 100k' e.qcow2 >/dev/null
    $IO -c 'write -z -u 64k 36k' e.qcow2
    state e.qcow2
    # over a backing file
    qemu-img create -f qcow2 -o cluster_size=4k bb.qcow2 1M >/dev/null
    qemu-io -c 'write -P 7 0 1M' bb.qcow2 >/dev/null
    qemu-img create -f qcow2 -o cluster_size=4k -b bb.qcow2 -F qcow2 bt.qcow2 >/dev/null
    $IO -c 'write -z -u 8k 8k' -c 'write -z 20481 4000' -c 'write -z 64k 4k' bt.qcow2
    $IO -c 'read -P 7 0 8k' -c 'read -P 0 8k 8k' -c 'read -P 7 16k 4k' -c 'read -P 0 20481 4000' bt.qcow2
    state bt.qcow2
}
run_both "2: write-zeroes (aligned, unaligned, unallocated, at the end, over a backing file)" write_zeroes

rebase_commit() {
    local IMG=$1 IO=$2
    qemu-img create -f qcow2 b1.qcow2 1M >/dev/null
    qemu-io -c 'write -P 1 0 512k' b1.qcow2 >/dev/null
    qemu-img create -f qcow2 b2.qcow2 1M >/dev/null
    qemu-io -c 'write -P 1 0 256k' -c 'write -P 5 768k 256k' b2.qcow2 >/dev/null
    qemu-img create -f qcow2 -b b1.qcow2 -F qcow2 t.qcow2 >/dev/null
    qemu-io -c 'write -P 7 64k 64k' -c 'write -z 300k 100k' t.qcow2 >/dev/null
    $IMG rebase -b b2.qcow2 -F qcow2 t.qcow2
    state t.qcow2
    qemu-img create -f qcow2 -b b1.qcow2 -F qcow2 t2.qcow2 >/dev/null
    qemu-io -c 'write -P 7 64k 64k' t2.qcow2 >/dev/null
    $IMG rebase -b '' t2.qcow2
    state t2.qcow2
    # commit into a preallocated base; the top is emptied
    qemu-img create -f qcow2 -o preallocation=metadata cb.qcow2 1M >/dev/null
    qemu-img create -f qcow2 -b cb.qcow2 -F qcow2 ct.qcow2 >/dev/null
    qemu-io -c 'write -P 7 64k 128k' -c 'write -z 512k 128k' ct.qcow2 >/dev/null
    $IMG commit ct.qcow2
    state cb.qcow2
    state ct.qcow2
    # commit of zero data into allocated zero clusters: copied as data
    qemu-img create -f qcow2 cz.qcow2 1M >/dev/null
    qemu-io -c 'write -P 1 0 1M' -c 'write -z 0 1M' cz.qcow2 >/dev/null
    qemu-img create -f qcow2 -b cz.qcow2 -F qcow2 czt.qcow2 >/dev/null
    qemu-io -c 'write -P 7 64k 128k' -c 'write -P 0 400k 64k' czt.qcow2 >/dev/null
    $IMG commit czt.qcow2
    state cz.qcow2
    state czt.qcow2
}
run_both "2: rebase and commit allocate what qemu-img allocates" rebase_commit

# ---- 3. compressed clusters
# cpatch IMG ADD: adds ADD sectors to the size field of the first L2 entry.
cpatch() {
    python3 - "$@" <<'EOF'
import struct, sys
img, add = sys.argv[1], int(sys.argv[2])
f = open(img, "r+b"); h = f.read(104)
cb = struct.unpack(">I", h[20:24])[0]; l1 = struct.unpack(">Q", h[40:48])[0]
f.seek(l1); l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2); e = struct.unpack(">Q", f.read(8))[0]
shift = 62 - (cb - 8); mask = (1 << (cb - 8)) - 1
n = min(mask, ((e >> shift) & mask) + add)
f.seek(l2); f.write(struct.pack(">Q", (e & ~(mask << shift)) | (n << shift)))
EOF
}
# rpatch IMG CLUSTER VALUE: sets a 16-bit refcount entry.
rpatch() {
    python3 - "$@" <<'EOF'
import struct, sys
img, c, v = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
f = open(img, "r+b"); h = f.read(104)
cs = 1 << struct.unpack(">I", h[20:24])[0]; rt = struct.unpack(">Q", h[48:56])[0]
f.seek(rt + (c // (cs // 2)) * 8); blk = struct.unpack(">Q", f.read(8))[0]
f.seek(blk + (c % (cs // 2)) * 2); f.write(struct.pack(">H", v))
EOF
}
python3 -c "
import random; random.seed(3)
open('src.raw','wb').write(bytes(random.choice(b'abcdefgh') for _ in range(65536)))"
compressed() {
    local IMG=$1 IO=$2
    qemu-img create -f qcow2 z.qcow2 1M >/dev/null
    qemu-io -c 'write -c -P 0x5a 0 64k' z.qcow2 >/dev/null
    cpatch z.qcow2 100
    $IO -c 'read -P 0x5a 0 64k' z.qcow2
    $IMG check z.qcow2
    qemu-img create -f qcow2 -o cluster_size=4k y.qcow2 1M >/dev/null
    qemu-io -c 'write -c -P 0x5a 0 4k' -c 'write -c -P 0x33 4k 4k' y.qcow2 >/dev/null
    cpatch y.qcow2 7
    $IO -c 'read -P 0x5a 0 4k' -c 'read -P 0x33 4k 4k' y.qcow2
    $IMG check y.qcow2
    # compressed data spanning host clusters (1k clusters), a refcount
    # that is 0, too low, too high
    qemu-img convert -c -O qcow2 -o cluster_size=1k ../src.raw x.qcow2
    # our convert -c leaves the same image (the file padded to a sector).
    # One coroutine (-m 1, both tools): with several, our compressed
    # clusters may be packed in another order and the file sometimes ends
    # on the last cluster's end (512 bytes longer; same data, check clean).
    $IMG convert -m 1 -c -O qcow2 -o cluster_size=1k ../src.raw cx.qcow2
    state cx.qcow2
    for p in "20 0" "21 1" "21 5"; do
        cp x.qcow2 w.qcow2
        rpatch w.qcow2 $p
        $IMG check w.qcow2
        echo "check exit $?"
        $IMG check -r all w.qcow2
        echo "check -r all exit $?"
        state w.qcow2
        $IO -c 'read -v 0 512' w.qcow2 | head -3
    done
}
run_both "3: compressed descriptors past the data; check -r all over spanning data" compressed

# ---- 4. no bitmap message when closing a corrupt image
corrupt_close() {
    local IMG=$1 IO=$2
    qemu-img create -f qcow2 c.qcow2 64M >/dev/null
    # L1 entry 0 points at the L1 table itself (QEMU iotest 060)
    printf '\x80\x00\x00\x00\x00\x03\x00\x00' | dd of=c.qcow2 bs=1 seek=196608 conv=notrunc 2>/dev/null
    $IO -c 'open -o overlap-check=all c.qcow2' -c 'write -P 0x2a 0 512' 2>&1 | grep -i bitmap
    echo "bitmap lines: done"
}
run_both "4: closing a corrupt image says nothing about bitmaps" corrupt_close

# ---- 5. check and snapshot listings
check_text() {
    local IMG=$1 IO=$2
    qemu-img create -f qcow2 k.qcow2 4M >/dev/null
    qemu-io -c 'write 0 1M' -c 'write -c 2M 64k' k.qcow2 >/dev/null
    $IMG check k.qcow2; echo "exit $?"
    $IMG check --output=json k.qcow2; echo "exit $?"
    rpatch k.qcow2 9 1      # leak a cluster past the data
    rpatch k.qcow2 10 1
    $IMG check k.qcow2; echo "exit $?"
    $IMG check --output=json k.qcow2; echo "exit $?"
    cp k.qcow2 k2.qcow2
    $IMG check -r leaks k.qcow2; echo "exit $?"
    $IMG check -r all --output=json k2.qcow2; echo "exit $?"
    rpatch k2.qcow2 5 0     # a data cluster's refcount too low
    $IMG check k2.qcow2; echo "exit $?"
    $IMG check --output=json k2.qcow2; echo "exit $?"
    $IMG check -r all k2.qcow2; echo "exit $?"
    $IMG check -q k2.qcow2; echo "exit $?"
}
run_both "5: check output (human, JSON, leaks, corruptions, repairs)" check_text

# A dirty image (lazy refcounts, writer killed), made once by qemu-io:
# check and info of copies with both tools.
qemu-img create -f qcow2 -o compat=1.1,lazy_refcounts=on dirty.qcow2 64M >/dev/null
(qemu-io -c "write -P 0x5a 0 512" -c "sigraise 9" dirty.qcow2; true) >/dev/null 2>&1
dirty() {
    local IMG=$1 IO=$2
    for c in "check" "check --output=json" "info" "check -r leaks" "check -r all" "info"; do
        cp ../dirty.qcow2 d.qcow2
        $IMG $c d.qcow2
        echo "exit $?"
    done
}
run_both "5: check and info of a dirty image" dirty

snapshots() {
    local IMG=$1 IO=$2
    qemu-img create -f qcow2 s.qcow2 1M >/dev/null
    qemu-io -c 'write 0 64k' s.qcow2 >/dev/null
    qemu-img snapshot -c first s.qcow2
    qemu-img snapshot -c second s.qcow2
    # dates differ from run to run: the listings are compared as a whole
    # below, on the same image
    :
}
# The snapshot listings of one image (dates are stored in it) from both tools.
mkdir -p snap && (cd snap && snapshots qemu-img qemu-io)
for cmd in "snapshot -l" "info" "info --output=json"; do
    qemu-img $cmd snap/s.qcow2 2>&1 | norm >q.out
    "$B" img $cmd snap/s.qcow2 2>&1 | norm >o.out
    if diff -u q.out o.out >diff.out; then ok "5: img $cmd of an image with snapshots"; else
        bad "5: img $cmd differs:"
        head -30 diff.out | sed 's/^/        /'
    fi
done
qemu-io -c info snap/s.qcow2 2>&1 | norm >q.out
"$B" io -c info snap/s.qcow2 2>&1 | norm >o.out
if diff -u q.out o.out >diff.out; then ok "5: io -c info"; else
    bad "5: io -c info differs:"
    head -30 diff.out | sed 's/^/        /'
fi

finish

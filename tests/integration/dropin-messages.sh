#!/bin/bash
# tests/integration/dropin-messages.sh -- our error messages are QEMU's: the
# real qemu-img / qemu-io and ours, run through links named qemu-img /
# qemu-io (tools/dropin.h), get the same bad input and must print the same
# stderr (exactly) and fail alike. Inputs: unknown incompatible qcow2
# feature bits (named from the image's feature name table), a backing loop, a
# missing backing file, a missing file, a directory, qcow2 cache option
# conflicts, qcow2 create limits. Fast: small images, one command each.
. "$(dirname "$0")/img-lib.sh"

LINKS=$WORK/bin
mkdir -p "$LINKS"
ln -s "$B" "$LINKS/qemu-img"
ln -s "$B" "$LINKS/qemu-io"

# same DESC TOOL ARGS...: QEMU's TOOL and ours print the same stderr and
# exit with the same status (which must not be 0).
same() {
    local desc=$1 tool=$2 q b qrc=0 brc=0
    shift 2
    rm -f x.qcow2
    q=$("$tool" "$@" 2>&1 >/dev/null) || qrc=$?
    rm -f x.qcow2
    b=$("$LINKS/$tool" "$@" 2>&1 >/dev/null) || brc=$?
    if [ "$qrc" = 0 ]; then
        bad "$desc: QEMU's $tool succeeded (the fixture is wrong)"
    elif [ "$q" = "$b" ] && [ "$qrc" = "$brc" ]; then
        ok "$desc"
    else
        bad "$desc"
        echo "        QEMU ($qrc): $q"
        echo "        ours ($brc): $b"
    fi
}

# set_features IMAGE BITS [BIT NAME]...: sets the incompatible feature bits
# of a qcow2 image to BITS (hex) and adds feature name table entries
# (type incompatible) naming BIT as NAME, after the ones the image has.
set_features() {
    python3 - "$@" <<'PY'
import struct, sys
path, bits = sys.argv[1], int(sys.argv[2], 16)
names = list(zip(sys.argv[3::2], sys.argv[4::2]))
with open(path, "r+b") as f:
    head = bytearray(f.read(65536))
    hdr_len = struct.unpack(">I", head[100:104])[0]
    struct.pack_into(">Q", head, 72, bits)
    exts, off = [], hdr_len
    while True:
        t, l = struct.unpack(">II", head[off:off + 8])
        if t == 0:
            break
        exts.append([t, bytes(head[off + 8:off + 8 + l])])
        off += 8 + ((l + 7) & ~7)
    for e in exts:
        if e[0] == 0x6803F857:
            for bit, name in names:
                e[1] += struct.pack(">BB46s", 0, int(bit), name.encode())
    out = b""
    for t, d in exts:
        out += struct.pack(">II", t, len(d)) + d + b"\0" * (((len(d) + 7) & ~7) - len(d))
    out += b"\0" * 8
    head[hdr_len:hdr_len + len(out)] = out
    f.seek(0)
    f.write(head)
PY
}

echo "== unknown incompatible features"
q qemu-img create -f qcow2 feat.qcow2 1M
set_features feat.qcow2 8000000000000000
same "one unknown bit: qemu-img info" qemu-img info feat.qcow2
same "one unknown bit: qemu-io" qemu-io -c "read 0 512" feat.qcow2
set_features feat.qcow2 e000000000000000 63 "Test feature"
same "named and unknown bits: qemu-img info" qemu-img info feat.qcow2
same "named and unknown bits: qemu-io -r" qemu-io -r -c "read 0 512" feat.qcow2
same "named and unknown bits: qemu-img check" qemu-img check feat.qcow2

echo "== broken qcow2 headers"
# poke OFFSET FORMAT VALUE: a fresh image with one big-endian header field
# changed, as hdr.qcow2.
poke() {
    cp pristine.qcow2 hdr.qcow2
    python3 -c 'import struct, sys
with open("hdr.qcow2", "r+b") as f:
    f.seek(int(sys.argv[1])); f.write(struct.pack(sys.argv[2], int(sys.argv[3], 0)))' "$@"
}
q qemu-img create -f qcow2 pristine.qcow2 1M
poke 72 '>Q' 2
same "corrupt bit: qemu-io writable" qemu-io -c "write 0 512" hdr.qcow2
for field in "20 >I 8 cluster_bits=8" "20 >I 22 cluster_bits=22" "96 >I 7 refcount_order=7" \
             "36 >I 0x7fffffff huge_l1_size" "40 >Q 0x12345 unaligned_l1_offset" \
             "48 >Q 0x12345 unaligned_refcount_table_offset" "100 >I 200000 header_length" \
             "24 >Q 0x7fffffffffffff size_beyond_l1"; do
    set -- $field
    poke "$1" "$2" "$3"
    same "$4: qemu-img info" qemu-img info hdr.qcow2
done

echo "== backing files"
q qemu-img create -f qcow2 base.qcow2 1M
q qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
q qemu-img rebase -u -b top.qcow2 -F qcow2 base.qcow2
same "backing loop: qemu-img info --backing-chain" qemu-img info --backing-chain top.qcow2
q qemu-img create -f qcow2 -u -b nonexist.qcow2 -F qcow2 orphan.qcow2 1M
same "missing backing file: qemu-io" qemu-io -c "read 0 512" orphan.qcow2
same "missing backing file: qemu-img check" qemu-img check orphan.qcow2
same "missing backing file: qemu-img convert" qemu-img convert -O raw orphan.qcow2 out.raw

echo "== files"
same "missing file: qemu-img info" qemu-img info missing.qcow2
same "missing file: qemu-img info -f qcow2" qemu-img info -f qcow2 missing.qcow2
same "missing file: qemu-img convert" qemu-img convert missing.qcow2 out.raw
same "missing file: --image-opts" qemu-img info --image-opts driver=qcow2,file.filename=missing.qcow2
same "missing file: json:" qemu-img info 'json:{"driver":"qcow2","file":{"driver":"file","filename":"missing.qcow2"}}'
same "missing file: qemu-io" qemu-io -c "read 0 512" missing.qcow2
mkdir dir
same "directory: qemu-io" qemu-io -c "read 0 512" dir
same "directory: qemu-img info" qemu-img info dir

echo "== qcow2 cache options"
q qemu-img create -f qcow2 c.qcow2 1M
for o in l2-cache-size=1M,refcount-cache-size=1M,cache-size=1M l2-cache-size=2M,cache-size=1M \
         refcount-cache-size=2M,cache-size=1M l2-cache-entry-size=1000 l2-cache-entry-size=256 \
         l2-cache-entry-size=128k; do
    same "$o: qemu-img info" qemu-img info --image-opts "driver=qcow2,file.filename=c.qcow2,$o"
    same "$o: qemu-io" qemu-io --image-opts -c "read 0 512" "driver=qcow2,file.filename=c.qcow2,$o"
done

echo "== qcow2 create limits"
for cs in 256 4M 1000; do
    same "cluster_size=$cs" qemu-img create -f qcow2 -o cluster_size=$cs x.qcow2 1M
done
same "too large for 512-byte clusters" qemu-img create -f qcow2 -o cluster_size=512 x.qcow2 10T
same "too large" qemu-img create -f qcow2 x.qcow2 1E
same "extended_l2 with small clusters" qemu-img create -f qcow2 -o cluster_size=2k,extended_l2=on x.qcow2 1M
same "refcount_bits=3" qemu-img create -f qcow2 -o refcount_bits=3 x.qcow2 1M
same "refcount_bits=8 with compat=0.10" qemu-img create -f qcow2 -o compat=0.10,refcount_bits=8 x.qcow2 1M
same "bad size suffix" qemu-img create -f qcow2 x.qcow2 1Q
same "bad size in -o" qemu-img create -f qcow2 -o size=foobar x.qcow2
same "bad cluster_size number" qemu-img create -f qcow2 -o cluster_size=foo x.qcow2 1M
q qemu-img create -f raw plain.raw 1M
same "backing without its format" qemu-img create -f qcow2 -b plain.raw x.qcow2
same "backing of the wrong format" qemu-img create -f qcow2 -b plain.raw -F qcow2 x.qcow2
same "convert: bad cluster_size" qemu-img convert -O qcow2 -o cluster_size=1000 pristine.qcow2 x.qcow2

echo "== snapshots and rebase"
same "snapshot -d of a missing snapshot" qemu-img snapshot -d nosuch pristine.qcow2
same "snapshot -a of a missing snapshot" qemu-img snapshot -a nosuch pristine.qcow2
same "rebase onto a missing file" qemu-img rebase -b missing.qcow2 -F qcow2 pristine.qcow2
same "bitmap --add with an empty name" qemu-img bitmap --add pristine.qcow2 ''

echo "== --image-opts"
same "unknown format option" qemu-img info --image-opts driver=qcow2,file.filename=pristine.qcow2,bogus=1
same "unknown protocol option" qemu-img info --image-opts driver=qcow2,file.filename=pristine.qcow2,file.bogus=1
same "unknown driver" qemu-img info --image-opts driver=foo,file.filename=pristine.qcow2

finish

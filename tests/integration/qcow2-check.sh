#!/bin/bash
# tests/integration/qcow2-check.sh -- "blockgraph img check" on qcow2 at the
# command line, with the real qemu-img as the oracle.
#
# Leaky and corrupt images are made with qemu-img / qemu-io plus byte
# patches (refcount entries, L2 entries, COPIED flags) computed from the
# header. On a copy each, "blockgraph img check --output=json" must print
# the same JSON as "qemu-img check --output=json" and exit with the same
# status (0 clean, 2 corruptions, 3 leaks); the same for repairs (-r leaks,
# -r all), after which the images must be equal in data and qemu-img check
# must call ours clean.
. "$(dirname "$0")/img-lib.sh"

# patch IMG WHAT ARGS: byte patches located from the image's own header.
#   refcount CLUSTER VALUE   the refcount entry of host cluster CLUSTER (16-bit refcounts)
#   l2 INDEX AND OR          the L2 entry INDEX of the first L2 table: (e & AND) | OR
#   l2off INDEX VALUE        the same entry set to VALUE
#   incompat BITS            incompatible feature bits ORed in (1 dirty, 2 corrupt)
patch() {
    python3 - "$@" <<'EOF'
import struct, sys
img, what = sys.argv[1], sys.argv[2]
args = [int(a, 0) for a in sys.argv[3:]]
f = open(img, "r+b")
h = f.read(104)
cb = struct.unpack(">I", h[20:24])[0]
cs = 1 << cb
l1_off = struct.unpack(">Q", h[40:48])[0]
rt_off = struct.unpack(">Q", h[48:56])[0]
if what == "incompat":
    f.seek(72)
    v = struct.unpack(">Q", f.read(8))[0]
    f.seek(72)
    f.write(struct.pack(">Q", v | args[0]))
elif what == "refcount":
    c, v = args
    per = cs // 2
    f.seek(rt_off + (c // per) * 8)
    blk = struct.unpack(">Q", f.read(8))[0]
    f.seek(blk + (c % per) * 2)
    f.write(struct.pack(">H", v))
else:
    f.seek(l1_off)
    l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    f.seek(l2 + args[0] * 8)
    e = struct.unpack(">Q", f.read(8))[0]
    e = (e & args[1]) | args[2] if what == "l2" else args[1]
    f.seek(l2 + args[0] * 8)
    f.write(struct.pack(">Q", e))
EOF
}

BITS='import json,sys; d=json.load(sys.stdin)["format-specific"]["data"]; print("corrupt=%s" % d.get("corrupt"))'
mkdir -p o t
n=0
# both DESC IMG [CHECK OPTS...]: check (or repair) copies with both tools.
both() {
    local desc=$1 img=$2
    shift 2
    n=$((n + 1))
    cp "$img" "o/c$n.qcow2"
    cp "$img" "t/c$n.qcow2"
    (cd o && "$B" img check --output=json "$@" "c$n.qcow2" >../ours.json 2>../ours.err)
    local rc=$?
    (cd t && qemu-img check --output=json "$@" "c$n.qcow2" >../theirs.json 2>../theirs.err)
    local trc=$?
    if [ $rc = $trc ]; then ok "$desc: exit $rc as qemu-img"; else bad "$desc: exit $rc, qemu-img $trc ($(head -c 200 ours.err))"; fi
    sed -i 's/^blockgraph img: //; s/^qemu-img: //; s/^Check failed: .*/Check failed/' ours.err theirs.err
    if diff -q ours.err theirs.err >/dev/null; then ok "$desc: messages as qemu-img's"; else bad "$desc: messages differ: $(diff ours.err theirs.err | head -6 | tr '\n' '|')"; fi
    if [ -s theirs.json ]; then
        json_same "$desc: JSON as qemu-img's" check ours.json theirs.json
    else
        # qemu-img prints no JSON when the check itself fails ("Check
        # failed: ..."); ours must fail the same way on stderr, and print
        # nothing on stdout either.
        if grep -q "Check failed" ours.err; then ok "$desc: 'Check failed' as qemu-img"; else bad "$desc: no 'Check failed': $(cat ours.err)"; fi
        if [ ! -s ours.json ]; then ok "$desc: no JSON, as qemu-img"; else bad "$desc: JSON printed although the check failed"; fi
    fi
    if [ $# -gt 0 ]; then
        # A repair: the results read the same, with the same dirty/corrupt
        # bits, and ours is clean now when qemu-img's is.
        local bo bt
        bo=$(qemu-img info -U --output=json "o/c$n.qcow2" | python3 -c "$BITS")
        bt=$(qemu-img info -U --output=json "t/c$n.qcow2" | python3 -c "$BITS")
        [ "$bo" = "$bt" ] && ok "$desc: header bits as qemu-img's ($bo)" || bad "$desc: header bits $bo, qemu-img's $bt"
        same_data "$desc: repaired images" "o/c$n.qcow2" "t/c$n.qcow2"
        if qemu-img check "t/c$n.qcow2" >/dev/null 2>&1; then
            qemu_accepts "$desc: our repaired image" "o/c$n.qcow2"
        fi
    fi
}

q qemu-img create -f qcow2 base.qcow2 4M
q qemu-io -c "write -P 1 0 1M" -c "write -c -P 2 2M 64k" -c "write -z 3M 64k" base.qcow2
both "clean image" base.qcow2
end=$(qemu-img check --output=json base.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["image-end-offset"])')
free=$((end / 65536 + 2))

# Leaks: refcounts for clusters nothing uses.
cp base.qcow2 leak.qcow2
patch leak.qcow2 refcount $free 1
patch leak.qcow2 refcount $((free + 1)) 3
both "leaks" leak.qcow2
both "leaks -r leaks" leak.qcow2 -r leaks
both "leaks -r all" leak.qcow2 -r all

# Corruption: the refcount of a used data cluster dropped to 0.
cp base.qcow2 c0.qcow2
first=$(qemu-img map --output=json base.qcow2 | python3 -c 'import json,sys; print([e["offset"] for e in json.load(sys.stdin) if e.get("offset")][0] // 65536)')
patch c0.qcow2 refcount "$first" 0
both "refcount 0 of a used cluster" c0.qcow2
both "refcount 0 -r leaks" c0.qcow2 -r leaks
both "refcount 0 -r all" c0.qcow2 -r all

# Corruption: refcount too high and too low mixed with a leak.
cp base.qcow2 mix.qcow2
patch mix.qcow2 refcount "$first" 5
patch mix.qcow2 refcount $((first + 1)) 0
patch mix.qcow2 refcount $free 2
both "mixed refcount errors" mix.qcow2
both "mixed -r all" mix.qcow2 -r all

# COPIED flag missing on a data cluster with refcount 1.
cp base.qcow2 cp.qcow2
patch cp.qcow2 l2 0 0x7fffffffffffffff 0
both "OFLAG_COPIED missing" cp.qcow2
both "OFLAG_COPIED -r all" cp.qcow2 -r all

# An L2 entry pointing past the end of the file.
cp base.qcow2 far.qcow2
patch far.qcow2 l2off 1 0x8000010000000000
both "L2 entry beyond the end" far.qcow2

# An unaligned L2 entry (v3 images: corruption).
cp base.qcow2 un.qcow2
patch un.qcow2 l2off 2 0x8000000000050200
both "unaligned L2 entry" un.qcow2

# The corrupt bit (set by a writer that found corruption): check -r opens
# the image writable anyway, as qemu-img does, and clears the bit once no
# corruption is left (-r all), keeps it when some is (-r leaks).
cp base.qcow2 cb.qcow2
patch cb.qcow2 incompat 2
both "corrupt bit on a clean image" cb.qcow2
both "corrupt bit, clean -r leaks" cb.qcow2 -r leaks
cp mix.qcow2 cbm.qcow2
patch cbm.qcow2 incompat 2
both "corrupt bit, mixed errors -r all" cbm.qcow2 -r all
both "corrupt bit, mixed errors -r leaks" cbm.qcow2 -r leaks
if "$B" img info cbm.qcow2 >/dev/null 2>&1 && ! "$B" io -c "write 0 512" cbm.qcow2 >/dev/null 2>&1; then
    ok "a corrupt-bit image still refuses a writable open outside check -r"
else
    bad "a corrupt-bit image: writable open outside check -r not refused"
fi

# A dirty lazy-refcounts image with a refcount too low (as after a crash):
# check -r all repairs and reports it (no silent repair at open), as qemu-img.
q qemu-img create -f qcow2 -o lazy_refcounts=on lz.qcow2 4M
q qemu-io -c "write -P 1 0 1M" lz.qcow2
lfirst=$(qemu-img map --output=json lz.qcow2 | python3 -c 'import json,sys; print([e["offset"] for e in json.load(sys.stdin) if e.get("offset")][0] // 65536)')
patch lz.qcow2 refcount "$lfirst" 0
patch lz.qcow2 incompat 1
both "dirty image -r all" lz.qcow2 -r all

# Snapshots made by blockgraph and a leak together.
cp base.qcow2 sn.qcow2
"$B" img snapshot -c S sn.qcow2 || bad "snapshot -c failed"
q qemu-io -c "write -P 3 0 64k" sn.qcow2
end=$(qemu-img check --output=json sn.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["image-end-offset"])')
patch sn.qcow2 refcount $((end / 65536 + 3)) 1
both "snapshots and a leak" sn.qcow2
both "snapshots -r leaks" sn.qcow2 -r leaks

finish

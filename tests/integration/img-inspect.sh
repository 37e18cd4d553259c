#!/bin/bash
# tests/integration/img-inspect.sh -- "blockgraph img info / map / check /
# measure" print what qemu-img prints, on a matrix of images qemu-img made.
#
# For every image: info --output=json (with and without --backing-chain),
# map --output=json, check --output=json (and the exit code), measure
# (human and json, -O qcow2 and -O raw) are compared with qemu-img's as
# parsed JSON; the human info and map outputs are compared as text.
# Images: raw (empty, with data), qcow2 v2/v3, cluster sizes 512 B and
# 2 MiB, refcount widths 1 and 64, lazy refcounts, extended L2, zstd and
# zlib compressed clusters, zero clusters, a 3-level backing chain with a
# larger overlay, an external data file, internal snapshots,
# preallocation=metadata, a leaky image (check exit 3) and a corrupt one
# (check exit 2).
. "$(dirname "$0")/img-lib.sh"

# ---- the matrix
q qemu-img create -q -f raw empty.raw 16M
q qemu-img create -q -f raw data.raw 16M
q qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x22 5M 64k' -c 'write -z 8M 1M' data.raw

q qemu-img create -q -f qcow2 v3.qcow2 64M
q qemu-io -c 'write -P 1 0 1M' -c 'write -z 2M 1M' -c 'write -P 2 3M 64k' -c 'discard 3M 64k' -c 'write -P 3 10M 512k' v3.qcow2
q qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 64M
q qemu-io -c 'write -P 1 0 1M' -c 'write -z 2M 1M' v2.qcow2
q qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 small.qcow2 4M
q qemu-io -c 'write -P 5 0 100k' -c 'write -P 6 1M 3k' small.qcow2
q qemu-img create -q -f qcow2 -o cluster_size=2M,refcount_bits=64,lazy_refcounts=on big.qcow2 64M
q qemu-io -c 'write -P 7 0 3M' -c 'write -P 8 20M 4k' big.qcow2
q qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k ext.qcow2 16M
q qemu-io -c 'write -P 9 0 4k' -c 'write -P 9 64k 8k' -c 'write -z 1M 4k' ext.qcow2
q qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 16M
q qemu-io -c 'write -c -P 0x33 0 256k' -c 'write -P 0x34 1M 64k' zstd.qcow2
q qemu-img convert -c -f raw -O qcow2 data.raw zlib.qcow2

q qemu-img create -q -f raw base.raw 32M
q qemu-io -f raw -c 'write -P 0xa1 0 4M' base.raw
q qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 32M
q qemu-io -c 'write -P 0xa2 1M 1M' -c 'write -z 6M 64k' mid.qcow2
q qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 48M
q qemu-io -c 'write -P 0xa3 3M 64k' -c 'write -P 0xa4 40M 64k' top.qcow2

q qemu-img create -q -f qcow2 -o data_file=ext-data.raw datafile.qcow2 16M
q qemu-io -c 'write -P 0x44 0 128k' datafile.qcow2
q qemu-img create -q -f qcow2 snaps.qcow2 16M
q qemu-io -c 'write -P 0x55 0 64k' snaps.qcow2
q qemu-img snapshot -c first snaps.qcow2
q qemu-io -c 'write -P 0x56 64k 64k' snaps.qcow2
q qemu-img snapshot -c second snaps.qcow2
q qemu-img create -q -f qcow2 -o preallocation=metadata prealloc.qcow2 8M

# A leaked cluster: refcount of an unused cluster raised by hand.
q qemu-img create -q -f qcow2 leak.qcow2 16M
q qemu-io -c 'write -P 1 0 64k' leak.qcow2
python3 - leak.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], 'r+b')
h = f.read(104)
cluster_bits = struct.unpack('>I', h[20:24])[0]
rt_off = struct.unpack('>Q', h[48:56])[0]
f.seek(rt_off); rb = struct.unpack('>Q', f.read(8))[0]
cs = 1 << cluster_bits
f.seek(0, 2); end = f.tell() // cs
# mark the cluster after the end of the file as used (leak) and grow the file
f.seek(rb + 2 * end); f.write(struct.pack('>H', 1))
f.truncate((end + 1) * cs)
EOF
# A corruption: an L2 entry pointing to a cluster with refcount 0.
q qemu-img create -q -f qcow2 corrupt.qcow2 16M
q qemu-io -c 'write -P 1 0 64k' corrupt.qcow2
python3 - corrupt.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], 'r+b')
h = f.read(104)
cs = 1 << struct.unpack('>I', h[20:24])[0]
l1_off = struct.unpack('>Q', h[40:48])[0]
rt_off = struct.unpack('>Q', h[48:56])[0]
f.seek(l1_off); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2); e = struct.unpack('>Q', f.read(8))[0]
host = e & 0x00fffffffffffe00
f.seek(rt_off); rb = struct.unpack('>Q', f.read(8))[0]
f.seek(rb + 2 * (host // cs)); f.write(struct.pack('>H', 0))
EOF

IMAGES="empty.raw data.raw v3.qcow2 v2.qcow2 small.qcow2 big.qcow2 ext.qcow2 zstd.qcow2 zlib.qcow2 base.raw mid.qcow2 top.qcow2 datafile.qcow2 snaps.qcow2 prealloc.qcow2"

for img in $IMAGES; do
    # info
    "$B" img info --output=json "$img" >ours.json 2>ours.err
    qemu-img info --output=json "$img" >qemu.json
    json_same "info --output=json $img" info ours.json qemu.json
    if [ "$img" = top.qcow2 ] || [ "$img" = mid.qcow2 ]; then
        "$B" img info --output=json --backing-chain "$img" >ours.json 2>ours.err
        qemu-img info --output=json --backing-chain "$img" >qemu.json
        json_same "info --backing-chain $img" info ours.json qemu.json
    fi
    if diff <("$B" img info "$img" 2>&1) <(qemu-img info "$img" 2>&1) >diff.out; then
        ok "info (human) $img"
    else
        bad "info (human) $img"
        sed 's/^/        /' diff.out | head -20
    fi
    # map
    "$B" img map --output=json "$img" >ours.json 2>ours.err
    qemu-img map --output=json "$img" >qemu.json
    json_same "map --output=json $img" map ours.json qemu.json
    "$B" img map "$img" >ours.out 2>ours.err
    orc=$?
    qemu-img map "$img" >qemu.out 2>qemu.err
    qrc=$?
    sed -i 's/^blockgraph img: /qemu-img: /' ours.err
    if [ $orc = $qrc ] && diff ours.out qemu.out >diff.out && diff ours.err qemu.err >>diff.out; then
        ok "map (human) $img"
    else
        bad "map (human) $img"
        sed 's/^/        /' diff.out | head -10
    fi
    # measure
    for of in qcow2 raw; do
        "$B" img measure --output=json -O "$of" "$img" >ours.json 2>ours.err
        qemu-img measure --output=json -O "$of" "$img" >qemu.json
        json_same "measure -O $of $img" measure ours.json qemu.json
    done
done

# map windows
for args in "--start-offset=1M" "--start-offset=3M --max-length=5M" "--max-length=100k"; do
    # shellcheck disable=SC2086
    "$B" img map --output=json $args top.qcow2 >ours.json
    # shellcheck disable=SC2086
    qemu-img map --output=json $args top.qcow2 >qemu.json
    json_same "map $args top.qcow2" map ours.json qemu.json
done

# check: qcow2 images, with the exit codes
for img in v3.qcow2 v2.qcow2 small.qcow2 big.qcow2 ext.qcow2 zstd.qcow2 top.qcow2 datafile.qcow2 snaps.qcow2 prealloc.qcow2 leak.qcow2 corrupt.qcow2; do
    "$B" img check --output=json "$img" >ours.json 2>ours.err
    orc=$?
    qemu-img check --output=json "$img" >qemu.json 2>qemu.err
    qrc=$?
    json_same "check --output=json $img" check ours.json qemu.json
    if [ $orc = $qrc ]; then ok "check $img: exit $orc as qemu-img"; else bad "check $img: exit $orc, qemu-img $qrc"; fi
done
expect_rc "check on raw: not supported" 63 "$B" img check -f raw data.raw
expect_rc "check leak.qcow2 human" 3 "$B" img check leak.qcow2
grep -q "1 leaked clusters were found on the image" last.out && ok "check human: leak reported" || bad "check human: $(cat last.out)"
cp leak.qcow2 leak2.qcow2
expect_rc "check -r leaks repairs" 0 "$B" img check -r leaks leak2.qcow2
grep -q "The following inconsistencies were found and repaired" last.out && ok "check -r: repair reported" || bad "check -r output: $(cat last.out)"
expect_rc "qemu-img check after our repair" 0 qemu-img check leak2.qcow2
# -r all on the corrupt image: the same report, messages and exit code as qemu-img's repair of a copy.
cp corrupt.qcow2 corrupt-ours.qcow2
cp corrupt.qcow2 corrupt-qemu.qcow2
"$B" img check -r all corrupt-ours.qcow2 >ours.out 2>ours.err
orc=$?
qemu-img check -r all corrupt-qemu.qcow2 >qemu.out 2>qemu.err
qrc=$?
# (stdout and exit code; the per-cluster lines on stderr are the driver's)
if [ $orc = $qrc ] && diff ours.out qemu.out >/dev/null && grep -q "ERROR cluster" ours.err; then
    ok "check -r all corrupt.qcow2: exit $orc, output as qemu-img's"
else
    bad "check -r all: ours $orc '$(cat ours.out ours.err)' qemu-img $qrc '$(cat qemu.out qemu.err)'"
fi
expect_rc "qemu-img check after our -r all" 0 qemu-img check corrupt-ours.qcow2
same_data "data after -r all" corrupt-ours.qcow2 corrupt-qemu.qcow2

# measure --size
for of in qcow2 raw; do
    for opts in "" "-o cluster_size=4k" "-o preallocation=full"; do
        [ "$of" = raw ] && [ -n "$opts" ] && [ "$opts" != "-o preallocation=full" ] && continue
        # shellcheck disable=SC2086
        "$B" img measure --output=json -O $of $opts --size 10G >ours.json 2>ours.err
        # shellcheck disable=SC2086
        qemu-img measure --output=json -O $of $opts --size 10G >qemu.json
        json_same "measure -O $of $opts --size 10G" measure ours.json qemu.json
    done
done
if diff <("$B" img measure -O qcow2 top.qcow2) <(qemu-img measure -O qcow2 top.qcow2) >/dev/null; then
    ok "measure (human)"
else
    bad "measure (human): $("$B" img measure -O qcow2 top.qcow2 2>&1)"
fi

# image forms: json: pseudo file names and --image-opts
"$B" img info --output=json 'json:{"driver":"qcow2","file":{"driver":"file","filename":"top.qcow2"}}' >ours.json
qemu-img info --output=json 'json:{"driver":"qcow2","file":{"driver":"file","filename":"top.qcow2"}}' >qemu.json
json_same "info json:{...}" info ours.json qemu.json
"$B" img info --output=json --image-opts driver=qcow2,file.filename=top.qcow2,l2-cache-size=1M >ours.json
qemu-img info --output=json --image-opts driver=qcow2,file.filename=top.qcow2,l2-cache-size=1M >qemu.json
json_same "info --image-opts" info ours.json qemu.json
"$B" img map --output=json --image-opts driver=qcow2,file.filename=top.qcow2 >ours.json
qemu-img map --output=json --image-opts driver=qcow2,file.filename=top.qcow2 >qemu.json
json_same "map --image-opts" map ours.json qemu.json
"$B" img check --output=json --image-opts driver=qcow2,file.filename=v3.qcow2 >ours.json
qemu-img check --output=json --image-opts driver=qcow2,file.filename=v3.qcow2 >qemu.json
json_same "check --image-opts" check ours.json qemu.json

# errors: one line naming the file, qemu-img's exit codes
expect_rc "info of a missing file" 1 "$B" img info nosuch.qcow2
[ "$(wc -l <last.err)" = 1 ] && grep -q "nosuch.qcow2" last.err && ok "one line naming the file: $(cat last.err)" || bad "error line: $(cat last.err)"
expect_rc "info with a bad --output" 1 "$B" img info --output=xml v3.qcow2
expect_rc "info with -f qcow2 on raw" 1 "$B" img info -f qcow2 data.raw
expect_rc "map of a missing file" 1 "$B" img map nosuch
expect_rc "measure without size or file" 1 "$B" img measure -O qcow2

# locking: an image in use by a writer needs -U
qemu-io -c 'sleep 3000' v3.qcow2 >/dev/null 2>&1 &
holder=$!
sleep 0.5
expect_rc "info of an image in use" 1 "$B" img info v3.qcow2
expect_rc "info -U of an image in use" 0 "$B" img info -U v3.qcow2
expect_rc "map -U of an image in use" 0 "$B" img map -U v3.qcow2
kill $holder 2>/dev/null
wait $holder 2>/dev/null

finish

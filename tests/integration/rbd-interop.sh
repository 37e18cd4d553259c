#!/bin/bash
# tests/integration/rbd-interop.sh -- blockgraph's rbd driver against QEMU's
# rbd driver and the rbd CLI on a real cluster (lib-rbd.sh).
#
# - raw: an image written by "qemu-img convert -O raw SRC rbd:..." reads
#   byte-identical through our img convert / io / compare, and the reverse
#   (our convert and io writes read by qemu-img / qemu-io / rbd export);
# - qcow2 over rbd: "img create -f qcow2 rbd:..." and our writes give an image
#   that qemu-img check finds clean and qemu-img compare finds identical to
#   the same writes made by qemu-io on a local qcow2; QEMU's qcow2 over rbd
#   converts identically through us;
# - block status: "img map" of a sparse image agrees with qemu-img map and
#   with "rbd diff --whole-object" (rbd reports whole objects: the data
#   ranges are the written objects, exactly);
# - rbd du's used size = the data bytes img map reports;
# - img resize grow/shrink seen by rbd info; img info vs rbd info (size,
#   object size = 2^order, also for a 1 MiB-object image, features in rbd
#   info's order) and qemu-img info (size, cluster size);
# - img snapshot -c/-l/-a/-d vs rbd snap ls and qemu-img snapshot -l; @snap
#   opens read the snapshot's data and refuse writes (QEMU's message);
# - a namespace (rbd namespace create) both ways;
# - the option forms: JSON with key-secret (a base64 secret object) and
#   server.0.host/port and no conf at all, JSON with conf, --image-opts,
#   the file name's conf=/id= and mon_host=/key= keys;
# - the exclusive lock: our nbd server holds it (rbd lock ls), qemu-io
#   writes meanwhile (librbd hands the lock over), our server writes again:
#   all three writes are stored.
set -euo pipefail
RBD_TEST_BUDGET=${RBD_TEST_BUDGET:-150}
source "$(dirname "$0")/lib-rbd.sh"

img() { echo "$RBD_PFX-$1"; }
r() { echo "rbd:rbd/$RBD_PFX-$1"; }
bg() { timeout -k 5 60 "$B" "$@"; }
qio() { timeout -k 5 60 qemu-io "$@"; }
qimg() { timeout -k 5 60 qemu-img "$@"; }
# run DESC CMD...: ok if CMD exits 0 (its output in run.out), else bad with it.
run() {
    local d=$1
    shift
    if "$@" >run.out 2>&1; then ok "$d"; else bad "$d: exit $?: $(head -5 run.out)"; fi
}
# io_ok DESC CMD...: a qemu-io style run that must exit 0 and verify every
# pattern (qemu-io exits 0 even after "Pattern verification failed").
io_ok() {
    local d=$1
    shift
    if "$@" >run.out 2>&1 && ! grep -q 'verification failed\|failed:' run.out; then
        ok "$d"
    else
        bad "$d: $(head -5 run.out)"
    fi
}
# noconf CMD...: CMD with CEPH_CONF unset (no conf file at all).
noconf() { (unset CEPH_CONF; "$@"); }
same_file() {
    if cmp -s "$2" "$3"; then ok "$1: byte-identical"; else bad "$1: $2 and $3 differ: $(cmp "$2" "$3" 2>&1 | head -1)"; fi
}

# ---- the local source: data, a zero run and holes; 10 MiB + 12 KiB, so the
# last 4 MiB object is partial; one write crosses an object boundary.
SIZE=$((10 * 1048576 + 12288))
RAWOPS=(-c 'write -P 0x11 0 1M' -c 'write -P 0x12 4190208 8192' -c 'write -z 2M 64k'
    -c 'write -P 0x13 9437696 102400' -c "write -P 0x14 $((SIZE - 4096)) 4096")
qimg create -q -f raw src.raw $SIZE
qio -f raw "${RAWOPS[@]}" src.raw >/dev/null

echo "raw: written by QEMU, read by us"
run "qemu-img convert src.raw -> $(r q1)" qimg convert -f raw -O raw src.raw "$(r q1)"
run "our convert $(r q1) -> ours1.raw" bg img convert -f raw -O raw "$(r q1)" ours1.raw
same_file "QEMU's rbd image read by our convert" src.raw ours1.raw
io_ok "our io reads QEMU's patterns" bg io -f raw -r -c 'read -P 0x11 0 1M' -c 'read -P 0x12 4190208 8192' \
    -c 'read -P 0 2M 64k' -c 'read -P 0x13 9437696 102400' -c "read -P 0x14 $((SIZE - 4096)) 4096" "$(r q1)"
if bg img compare -f raw -F raw "$(r q1)" src.raw >run.out 2>&1 && grep -q 'Images are identical' run.out; then
    ok "our compare: rbd image identical to its source"
else
    bad "our compare: $(cat run.out)"
fi

echo "raw: written by us, read by QEMU and rbd export"
run "our convert src.raw -> $(r b1)" bg img convert -f raw -O raw src.raw "$(r b1)"
s=$(rbd_size "$(img b1)")
if [ "$s" = $SIZE ]; then ok "rbd info: our image has the source's size"; else bad "rbd info size $s, want $SIZE"; fi
run "qemu-img convert $(r b1) -> theirs1.raw" qimg convert -f raw -O raw "$(r b1)" theirs1.raw
same_file "our rbd image read by qemu-img" src.raw theirs1.raw
run "rbd export $(img b1)" rbdc export --no-progress "rbd/$(img b1)" export1.raw
same_file "our rbd image read by rbd export" src.raw export1.raw
WOPS=(-c 'write -P 0x55 5M 64k' -c "write -P 0x56 $((SIZE - 512)) 512" -c 'write -z 0 64k'
    -c 'write -P 0x57 4194300 9' -c 'write -z -u 9437184 1M')
cp src.raw expect1.raw
qio -f raw "${WOPS[@]}" expect1.raw >/dev/null
io_ok "our io writes (pattern, zeroes, unmap, unaligned)" bg io -f raw "${WOPS[@]}" "$(r b1)"
io_ok "qemu-io reads our writes" qio -f raw -r -c 'read -P 0x55 5M 64k' -c "read -P 0x56 $((SIZE - 512)) 512" \
    -c 'read -P 0 0 64k' -c 'read -P 0x57 4194300 9' -c 'read -P 0 9437184 1M' "$(r b1)"
if qimg compare -f raw -F raw "$(r b1)" expect1.raw >run.out 2>&1; then
    ok "qemu-img compare: our writes identical to qemu-io's on a local copy"
else
    bad "qemu-img compare after our writes: $(cat run.out)"
fi

echo "qcow2 over rbd: created and written by us, judged by qemu-img"
QOPS=(-c 'write -P 0x21 0 1M' -c 'write -P 0x22 5M 64k' -c 'write -z 8M 1M' -c 'write -P 0x23 31M 1M'
    -c 'write -P 0x24 12345 4321' -c 'write -P 0x25 20M 3M')
run "our img create -f qcow2 $(r c1) 32M" bg img create -q -f qcow2 "$(r c1)" 32M
s0=$(rbd_size "$(img c1)")
io_ok "our io writes to qcow2 over rbd" bg io -f qcow2 "${QOPS[@]}" "$(r c1)"
s1=$(rbd_size "$(img c1)")
if [ "$s1" -gt "$s0" ] && [ "$s1" -gt $((4 << 20)) ]; then
    ok "qcow2's writes grew the rbd image ($s0 -> $s1 bytes)"
else
    bad "the rbd image did not grow with qcow2's writes ($s0 -> $s1 bytes)"
fi
qimg create -q -f qcow2 ref.qcow2 32M
qio -f qcow2 "${QOPS[@]}" ref.qcow2 >/dev/null
if qimg check -f qcow2 "$(r c1)" >run.out 2>&1; then
    ok "qemu-img check: our qcow2 over rbd is clean"
else
    bad "qemu-img check of our qcow2 over rbd: $(head -5 run.out)"
fi
if qimg compare -f qcow2 -F qcow2 "$(r c1)" ref.qcow2 >run.out 2>&1; then
    ok "qemu-img compare: our qcow2 over rbd identical to qemu-io's local qcow2"
else
    bad "qemu-img compare of our qcow2 over rbd: $(cat run.out)"
fi

echo "qcow2 over rbd: created and written by QEMU, read by us"
run "qemu-img create -f qcow2 $(r qc) 16M" qimg create -q -f qcow2 "$(r qc)" 16M
io_ok "qemu-io writes it" qio -f qcow2 -c 'write -P 0x31 0 2M' -c 'write -P 0x32 7M 4k' -c 'write -z 9M 64k' \
    -c 'write -c -P 0x33 12M 64k' "$(r qc)"
run "qemu-img convert of QEMU's qcow2 over rbd" qimg convert -f qcow2 -O raw "$(r qc)" qc-theirs.raw
run "our convert of QEMU's qcow2 over rbd" bg img convert -f qcow2 -O raw "$(r qc)" qc-ours.raw
same_file "QEMU's qcow2 over rbd read by us" qc-theirs.raw qc-ours.raw
run "our img check of QEMU's qcow2 over rbd" bg img check -f qcow2 "$(r qc)"

echo "block status of a sparse image"
# q1 was written by qemu-img convert from src.raw: objects 0 (0..4M), 1
# (4M-4k..4M+4k crosses into it) and 2 (9M+512.., the tail) hold data.
qimg map --output=json -f raw "$(r q1)" >map-theirs.json 2>run.out || bad "qemu-img map: $(cat run.out)"
bg img map --output=json -f raw "$(r q1)" >map-ours.json 2>run.out || bad "our img map: $(cat run.out)"
rbdc diff --whole-object --format json "rbd/$(img q1)" >diff.json
if out=$(python3 - map-ours.json map-theirs.json diff.json $SIZE <<'EOF' 2>&1
import json, sys
ours, theirs, diff = (json.load(open(f)) for f in sys.argv[1:4])
size = int(sys.argv[4])
def ranges(m):
    out = []
    for e in m:
        if e["data"]:
            if out and out[-1][1] == e["start"]:
                out[-1][1] += e["length"]
            else:
                out.append([e["start"], e["start"] + e["length"]])
    return out
def cover(m):
    pos = 0
    for e in m:
        assert e["start"] == pos, f"extent at {e['start']}, expected {pos}"
        pos += e["length"]
    assert pos == size, f"map ends at {pos}, size {size}"
cover(ours)
o, t = ranges(ours), ranges(theirs)
d = []
for e in diff:
    if e["exists"] in (True, "true"):
        s, l = e["offset"], e["length"]
        if d and d[-1][1] == s:
            d[-1][1] += l
        else:
            d.append([s, s + l])
d = [[s, min(e, size)] for s, e in d]
assert o == t, f"our data ranges {o} != qemu-img map's {t}"
assert o == d, f"our data ranges {o} != rbd diff --whole-object {d}"
assert o == [[0, size]], f"expected all three objects allocated, got {o}"
for e in ours:
    if not e["data"]:
        assert e["zero"], f"unallocated extent not zero: {e}"
print(o)
EOF
); then
    ok "img map data ranges = qemu-img map = rbd diff --whole-object: $out"
else
    bad "block status: $out"
fi
# A sparse image: objects 1 and 3 of 6 written, one object discarded whole.
run "rbd create 24M $(img sp)" rbdc create -s 24M "rbd/$(img sp)"
io_ok "qemu-io writes objects 1, 3 and 5" qio -f raw -c 'write -P 1 5M 4k' -c 'write -P 3 13M 1M' \
    -c 'write -P 5 20M 4M' -c 'discard 20M 4M' "$(r sp)"
bg img map --output=json -f raw "$(r sp)" >map-ours.json 2>run.out || bad "our img map: $(cat run.out)"
qimg map --output=json -f raw "$(r sp)" >map-theirs.json 2>&1
if out=$(python3 - map-ours.json map-theirs.json <<'EOF' 2>&1
import json, sys
ours, theirs = (json.load(open(f)) for f in sys.argv[1:3])
def ranges(m):
    return [(e["start"], e["length"]) for e in m if e["data"]]
M = 1 << 20
want = [(4 * M, 4 * M), (12 * M, 4 * M)]
assert ranges(ours) == ranges(theirs), f"ours {ranges(ours)} != qemu-img's {ranges(theirs)}"
assert ranges(ours) == want, f"data {ranges(ours)}, want {want}"
print(ranges(ours))
EOF
); then
    ok "sparse image: img map = qemu-img map = the written objects: $out"
else
    bad "sparse image block status: $out"
fi
used=$(rbdc du --format json "rbd/$(img sp)" | python3 -c 'import json, sys; print(json.load(sys.stdin)["images"][0]["used_size"])')
mapped=$(python3 -c 'import json, sys; print(sum(e["length"] for e in json.load(open(sys.argv[1])) if e["data"]))' map-ours.json)
if [ "$used" = "$mapped" ]; then
    ok "rbd du used size = img map's data bytes ($used)"
else
    bad "rbd du used size $used, img map data bytes $mapped"
fi
if bg img convert -f raw -O raw "$(r sp)" sp.raw 2>run.out &&
    [ "$(du -k sp.raw | cut -f1)" -le 8300 ] && qimg compare -f raw -F raw sp.raw "$(r sp)" >/dev/null; then
    ok "convert skips the holes ($(du -k sp.raw | cut -f1) KiB allocated) and is identical"
else
    bad "convert of the sparse image: $(cat run.out) $(du -k sp.raw 2>&1)"
fi

echo "resize and info"
run "our img resize $(r b1) 20M" bg img resize -q -f raw "$(r b1)" 20M
s=$(rbd_size "$(img b1)")
if [ "$s" = 20971520 ]; then ok "rbd info sees the grown size"; else bad "rbd info size $s after growing to 20M"; fi
io_ok "the grown area reads zeros (qemu-io)" qio -f raw -r -c "read -P 0 $SIZE $((20971520 - SIZE))" "$(r b1)"
run "our img resize --shrink $(r b1) 6M" bg img resize -q -f raw --shrink "$(r b1)" 6M
s=$(rbd_size "$(img b1)")
if [ "$s" = 6291456 ]; then ok "rbd info sees the shrunk size"; else bad "rbd info size $s after shrinking to 6M"; fi
truncate -s 6M expect1.raw
if qimg compare -f raw -F raw "$(r b1)" expect1.raw >run.out 2>&1; then
    ok "data below the new end unchanged"
else
    bad "after shrink: $(cat run.out)"
fi
rbdc create -s 3M --object-size 1M "rbd/$(img o1)"
for i in q1 o1; do
    rbdc info --format json "rbd/$(img "$i")" >rbdinfo.json
    bg img info --output=json -f raw "$(r "$i")" >info-ours.json 2>run.out || bad "our img info: $(cat run.out)"
    qimg info --output=json -f raw "$(r "$i")" >info-theirs.json
    bg img info --output=json -f rbd "$(r "$i")" >info-rbd.json 2>run.out || bad "our img info -f rbd: $(cat run.out)"
    if out=$(python3 - info-ours.json info-theirs.json rbdinfo.json info-rbd.json <<'EOF' 2>&1
import json, sys
ours, theirs, rbd, rbdnode = (json.load(open(f)) for f in sys.argv[1:5])
# raw on top shows no format-specific data, as with qemu-img.
assert "format-specific" not in ours and "format-specific" not in theirs, "format-specific data on raw"
bits = {"layering": 1, "striping": 2, "exclusive-lock": 4, "object-map": 8, "fast-diff": 16,
        "deep-flatten": 32, "journaling": 64, "data-pool": 128, "operations": 256}
assert ours["virtual-size"] == rbd["size"] == theirs["virtual-size"], \
    f"virtual-size {ours['virtual-size']}, rbd {rbd['size']}, qemu-img {theirs['virtual-size']}"
assert ours.get("cluster-size") == rbd["object_size"] == theirs.get("cluster-size"), \
    f"cluster-size {ours.get('cluster-size')}, object_size {rbd['object_size']}, qemu-img {theirs.get('cluster-size')}"
# The rbd data (features, object size) sits in some format-specific block.
found = []
def walk(x):
    if isinstance(x, dict):
        if "features" in x:
            found.append(x)
        for v in x.values():
            walk(v)
    elif isinstance(x, list):
        for v in x:
            walk(v)
walk(rbdnode)
assert found, "no 'features' in our img info -f rbd"
f = found[0]["features"]
want = set(rbd["features"])
if isinstance(f, int):
    assert f == sum(bits[n] for n in want), f"features {f}, rbd info {sorted(want)}"
else:
    assert list(f) == rbd["features"], f"features {f}, rbd info {rbd['features']}"
osz = found[0].get("object-size")
assert osz == rbd["object_size"] == 1 << rbd["order"], \
    f"object-size {osz}, rbd info object_size {rbd['object_size']} order {rbd['order']}"
print(f"size {rbd['size']}, object size {osz} (order {rbd['order']}), features {rbd['features']}")
EOF
    ); then
        ok "img info agrees with rbd info and qemu-img info: $out"
    else
        bad "img info of $(img "$i"): $out"
    fi
done

echo "snapshots"
run "our img create -f raw $(r s1) 8M" bg img create -q -f raw "$(r s1)" 8M
io_ok "our io writes 0x61" bg io -f raw -c 'write -P 0x61 0 1M' -c 'write -P 0x62 6M 64k' "$(r s1)"
run "our img snapshot -c snapA" bg img snapshot -c snapA "$(r s1)"
io_ok "our io overwrites with 0x71" bg io -f raw -c 'write -P 0x71 0 1M' -c 'write -P 0x72 6M 64k' "$(r s1)"
run "qemu-img snapshot -c snapB" qimg snapshot -c snapB "$(r s1)"
names=$(rbdc snap ls --format json "rbd/$(img s1)" | python3 -c 'import json, sys; print(" ".join(s["name"] for s in json.load(sys.stdin)))')
if [ "$names" = "snapA snapB" ]; then ok "rbd snap ls: snapA snapB"; else bad "rbd snap ls: '$names'"; fi
bg img snapshot -l "$(r s1)" >snap-ours.txt 2>&1 || bad "our img snapshot -l: $(cat snap-ours.txt)"
qimg snapshot -l "$(r s1)" >snap-theirs.txt 2>&1
# Columns: ID TAG VM-SIZE DATE VM-CLOCK ICOUNT; the dates are rbd's.
if [ "$(awk 'NR > 2 { print $1, $2 }' snap-ours.txt)" = "$(awk 'NR > 2 { print $1, $2 }' snap-theirs.txt)" ] &&
    [ "$(head -2 snap-ours.txt)" = "$(head -2 snap-theirs.txt)" ] && grep -q snapA snap-ours.txt; then
    ok "img snapshot -l lists what qemu-img snapshot -l lists"
else
    bad "img snapshot -l:"$'\n'"$(cat snap-ours.txt)"$'\n'"qemu-img:"$'\n'"$(cat snap-theirs.txt)"
fi
io_ok "our io reads @snapA's data" bg io -f raw -r -c 'read -P 0x61 0 1M' -c 'read -P 0x62 6M 64k' "$(r s1)@snapA"
io_ok "our io reads @snapB's data" bg io -f raw -r -c 'read -P 0x71 0 1M' "$(r s1)@snapB"
run "our convert of @snapA" bg img convert -f raw -O raw "$(r s1)@snapA" snapA.raw
qimg convert -f raw -O raw "$(r s1)@snapA" snapA-theirs.raw
same_file "@snapA through our convert and qemu-img's" snapA.raw snapA-theirs.raw
bg io -f raw -c 'write -P 0x99 0 512' "$(r s1)@snapA" >/dev/null 2>snapw-ours.err && bad "writing @snapA succeeded"
qio -f raw -c 'write -P 0x99 0 512' "$(r s1)@snapA" >/dev/null 2>snapw-theirs.err || true
same_msg "writing @snapA refused" snapw-ours.err snapw-theirs.err
io_ok "@snapA unchanged (qemu-io)" qio -f raw -r -c 'read -P 0x61 0 1M' "$(r s1)@snapA"
run "our img snapshot -a snapA" bg img snapshot -a snapA "$(r s1)"
io_ok "rolled back: qemu-io reads snapA's data" qio -f raw -r -c 'read -P 0x61 0 1M' -c 'read -P 0x62 6M 64k' "$(r s1)"
run "our img snapshot -d snapA" bg img snapshot -d snapA "$(r s1)"
run "our img snapshot -d snapB" bg img snapshot -d snapB "$(r s1)"
n=$(rbdc snap ls --format json "rbd/$(img s1)" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')
if [ "$n" = 0 ]; then ok "rbd snap ls: empty after -d"; else bad "rbd snap ls: $n snapshots after -d"; fi
# (Both print the raw probing warning first: the last line is the error.)
bg img snapshot -d snapA "$(r s1)" >/dev/null 2>snapd.err && bad "deleting a deleted snapshot succeeded"
grep -v '^WARNING\|^  ' snapd.err >snapd-ours.err || true
qimg snapshot -d snapA "$(r s1)" 2>&1 >/dev/null | grep -v '^WARNING\|^  ' >snapd-theirs.err || true
same_msg "deleting a missing snapshot refused" snapd-ours.err snapd-theirs.err

echo "namespace"
NS=$RBD_PFX-ns
rbdc namespace create "rbd/$NS"
run "our img create rbd:rbd/$NS/n1" bg img create -q -f raw "rbd:rbd/$NS/n1" 4M
io_ok "our io writes in the namespace" bg io -f raw -c 'write -P 0x81 0 64k' "rbd:rbd/$NS/n1"
if [ "$(rbdc ls rbd --namespace "$NS")" = n1 ] && ! rbdc ls rbd | grep -qx n1; then
    ok "rbd ls: n1 is in the namespace only"
else
    bad "rbd ls --namespace $NS: $(rbdc ls rbd --namespace "$NS")"
fi
io_ok "qemu-io reads it in the namespace" qio -f raw -r -c 'read -P 0x81 0 64k' "rbd:rbd/$NS/n1"
io_ok "qemu-io writes in the namespace" qio -f raw -c 'write -P 0x82 1M 64k' "rbd:rbd/$NS/n1"
io_ok "our io reads it" bg io -f raw -r -c 'read -P 0x82 1M 64k' "rbd:rbd/$NS/n1"

echo "option forms"
KEY=$(admin_key)
MON=$(mon_v1_addr)
H=${MON%:*}
P=${MON#*:}
FILE="\"driver\":\"rbd\",\"pool\":\"rbd\",\"image\":\"$(img q1)\""
READS=(-c 'read -P 0x11 0 1M' -c 'read -P 0x13 9437696 102400')
J1="json:{\"driver\":\"raw\",\"file\":{$FILE,\"user\":\"admin\",\"key-secret\":\"sec0\",\"server\":[{\"host\":\"$H\",\"port\":\"$P\"}]}}"
SEC=(--object "secret,id=sec0,data=$KEY,format=base64")
io_ok "qemu-io: JSON, key-secret, server list, no conf" noconf qio "${SEC[@]}" -r "${READS[@]}" "$J1"
io_ok "our io: JSON, key-secret, server list, no conf" noconf bg io "${SEC[@]}" -r "${READS[@]}" "$J1"
IO="driver=raw,file.driver=rbd,file.pool=rbd,file.image=$(img q1),file.user=admin,file.key-secret=sec0"
IO+=",file.server.0.host=$H,file.server.0.port=$P,file.auth-client-required.0=cephx"
io_ok "our io --image-opts with server.0.host/port and auth-client-required" \
    noconf bg io "${SEC[@]}" --image-opts -r "${READS[@]}" "$IO"
io_ok "our io: JSON with conf" noconf bg io -r "${READS[@]}" \
    "json:{\"driver\":\"raw\",\"file\":{$FILE,\"conf\":\"$CEPH_CONF\",\"user\":\"admin\"}}"
io_ok "our io: file name with conf= and id=" noconf bg io -f raw -r "${READS[@]}" \
    "$(r q1):conf=$CEPH_CONF:id=admin"
io_ok "our io: file name with mon_host= (escaped colon) and key=" noconf bg io -f raw -r "${READS[@]}" \
    "$(r q1):mon_host=$H\\:$P:key=$KEY"
run "our img info: file name with mon_host= and key=" noconf bg img info -f raw "$(r q1):mon_host=$H\\:$P:key=$KEY"
io_ok "our io: JSON file name form with an rbd: filename" bg io -r "${READS[@]}" \
    "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"rbd\",\"filename\":\"$(r q1)\"}}"

echo "exclusive lock: handed over between writers, as with QEMU"
run "our img create $(img lk)" bg img create -q -f raw "$(r lk)" 16M
LKSOCK=$WORK/lk.sock
rbd_cleanup_extra() { [ -f "$WORK/lk.pid" ] && kill "$(cat "$WORK/lk.pid")" 2>/dev/null; rm -f "$WORK/lk.pid"; }
run "our nbd server on $(img lk)" bg nbd --fork --pid-file="$WORK/lk.pid" -k "$LKSOCK" -t -f raw "$(r lk)"
LKURL="nbd+unix:///?socket=$LKSOCK"
io_ok "0x41 written through our server" qio -f raw -c 'write -P 0x41 0 1M' -c flush "$LKURL"
locks=$(rbdc lock ls --format json "rbd/$(img lk)" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')
if [ "$locks" = 1 ]; then ok "rbd lock ls: our server holds the exclusive lock"; else bad "rbd lock ls: $locks locks"; fi
io_ok "qemu-io writes 0x42 while our server has the image open" qio -f raw -c 'write -P 0x42 4M 1M' -c flush "$(r lk)"
io_ok "0x43 written through our server after that" qio -f raw -c 'write -P 0x43 8M 1M' -c flush "$LKURL"
rbd_cleanup_extra
io_ok "all three writes stored (qemu-io)" qio -f raw -r -c 'read -P 0x41 0 1M' -c 'read -P 0x42 4M 1M' \
    -c 'read -P 0x43 8M 1M' -c 'read -P 0 1M 3M' "$(r lk)"

# Every image of this run is removed on exit; check that it works here.
finish

#!/bin/bash
# tests/integration/qcow2-amend.sh -- "blockgraph img amend" on qcow2 judged
# by the real qemu-img 7.2.
#
# After each amendment "qemu-img info --output=json" must show the change,
# "qemu-img check" must call the image clean, and the data (active and
# per snapshot) must be unchanged per qemu-img compare / convert -l.
# Refused amendments must print qemu-img's message (the same command run
# by qemu-img on a copy), exit 1, and leave the image byte for byte as it
# was.
. "$(dirname "$0")/img-lib.sh"

clean() {
    local out
    if out=$(qemu-img check "$2" 2>&1) && ! grep -q "leaked" <<<"$out"; then
        ok "$1: qemu-img check clean"
    else
        bad "$1: qemu-img check: $(echo "$out" | head -5)"
    fi
}
same() {
    if qemu-img compare -q "$2" -F raw "$3" 2>/dev/null; then ok "$1: data unchanged"; else bad "$1: data differs"; fi
}
snap_same() {
    rm -f snap.raw
    if qemu-img convert -l "snapshot.name=$3" -O raw "$2" snap.raw 2>/dev/null && cmp -s snap.raw "$4"; then
        ok "$1: snapshot '$3' data unchanged"
    else
        bad "$1: snapshot '$3' data differs"
    fi
}
# info_is DESC IMG PYEXPR: PYEXPR over j (qemu-img info JSON) and d
# (format-specific data) is true.
info_is() {
    if python3 - "$2" "$3" <<'EOF'; then ok "$1: qemu-img info shows $3"; else bad "$1: qemu-img info: not $3"; fi
import json, subprocess, sys
j = json.loads(subprocess.run(["qemu-img", "info", "--output=json", sys.argv[1]], check=True,
                              capture_output=True, text=True).stdout)
d = j.get("format-specific", {}).get("data", {})
sys.exit(0 if eval(sys.argv[2]) else 1)
EOF
}
raw_of() { rm -f "$2"; q qemu-img convert -O raw "$1" "$2"; }
# refused DESC IMG OPTS: ours and qemu-img's messages equal, exit 1 both,
# our image unchanged.
refused() {
    local desc=$1 img=$2 opts=$3
    cp "$img" before.qcow2
    cp "$img" theirs.qcow2
    "$B" img amend -o "$opts" "$img" >ours.out 2>ours.err
    local rc=$?
    qemu-img amend -o "$opts" theirs.qcow2 >/dev/null 2>theirs.err
    local trc=$?
    sed -i 's/^blockgraph img: //' ours.err
    sed -i 's/^qemu-img: //' theirs.err
    if [ $rc = 1 ] && [ $trc = 1 ] && diff -q ours.err theirs.err >/dev/null; then
        ok "$desc: refused with qemu-img's message ($(head -1 theirs.err))"
    else
        bad "$desc: exit $rc (qemu-img $trc); ours '$(cat ours.err)' vs '$(cat theirs.err)'"
    fi
    if cmp -s "$img" before.qcow2; then ok "$desc: image unchanged"; else bad "$desc: image changed"; fi
}

# ---- compat 1.1 -> 0.10 with zero clusters (plain and allocated), a
#      compressed cluster and a snapshot of the same size.
q qemu-img create -f qcow2 a.qcow2 4M
q qemu-io -c "write -P 1 0 1M" -c "write -z 64k 64k" -c "write -z -u 256k 128k" -c "write -z 2M 128k" \
    -c "write -c -P 2 3M 64k" a.qcow2
raw_of a.qcow2 refS.raw
q qemu-img snapshot -c S a.qcow2
q qemu-io -c "write -z 512k 64k" -c "write -P 3 1M 64k" a.qcow2
raw_of a.qcow2 ref.raw
"$B" img amend -o compat=0.10 a.qcow2 || bad "downgrade failed"
info_is "downgrade" a.qcow2 'd["compat"] == "0.10"'
clean "downgrade" a.qcow2
same "downgrade" a.qcow2 ref.raw
snap_same "downgrade" a.qcow2 S refS.raw
"$B" img amend -o compat=1.1 a.qcow2 || bad "upgrade failed"
info_is "upgrade" a.qcow2 'd["compat"] == "1.1" and d["refcount-bits"] == 16 and not d["lazy-refcounts"]'
clean "upgrade" a.qcow2
same "upgrade" a.qcow2 ref.raw

# ---- downgrade with the L2 table (and its zero clusters) shared by the
#      active state and two snapshots.
q qemu-img create -f qcow2 sh.qcow2 4M
q qemu-io -c "write -P 1 0 512k" -c "write -z 64k 64k" -c "write -z -u 128k 64k" -c "write -z 1M 64k" sh.qcow2
raw_of sh.qcow2 refsh.raw
q qemu-img snapshot -c S1 sh.qcow2
q qemu-img snapshot -c S2 sh.qcow2
"$B" img amend -o compat=0.10 sh.qcow2 || bad "downgrade shared failed"
clean "downgrade shared" sh.qcow2
same "downgrade shared" sh.qcow2 refsh.raw
snap_same "downgrade shared" sh.qcow2 S1 refsh.raw
snap_same "downgrade shared" sh.qcow2 S2 refsh.raw
q qemu-io -c "write -P 4 64k 64k" sh.qcow2
snap_same "downgrade shared, then a write" sh.qcow2 S1 refsh.raw
clean "downgrade shared, then a write" sh.qcow2

# ---- downgrade with a backing file: plain zero clusters must keep reading
#      zeros (not the backing file's data).
q qemu-img create -f qcow2 base.qcow2 2M
q qemu-io -c "write -P 0xaa 0 2M" base.qcow2
q qemu-img create -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2
q qemu-io -c "write -z 0 128k" -c "write -P 5 1M 64k" ov.qcow2
raw_of ov.qcow2 refov.raw
"$B" img amend -o compat=0.10 ov.qcow2 || bad "downgrade with backing failed"
info_is "downgrade with backing" ov.qcow2 'd["compat"] == "0.10"'
clean "downgrade with backing" ov.qcow2
same "downgrade with backing" ov.qcow2 refov.raw

# ---- lazy refcounts on and off (a write through blockgraph while on).
q qemu-img create -f qcow2 l.qcow2 4M
q qemu-io -c "write -P 7 0 256k" l.qcow2
"$B" img amend -o lazy_refcounts=on l.qcow2 || bad "lazy on failed"
info_is "lazy on" l.qcow2 'd["lazy-refcounts"] is True'
clean "lazy on" l.qcow2
"$B" io -c "write -P 8 1M 256k" l.qcow2 >/dev/null || bad "write with lazy refcounts failed"
q qemu-io -c "write -P 8 1M 256k" l.qcow2
raw_of l.qcow2 refl.raw
"$B" img amend -o lazy_refcounts=off l.qcow2 || bad "lazy off failed"
info_is "lazy off" l.qcow2 'd["lazy-refcounts"] is False and not j.get("dirty-flag", False)'
clean "lazy off" l.qcow2
same "lazy off" l.qcow2 refl.raw
refused "lazy on v2" ov.qcow2 lazy_refcounts=on

# ---- refcount_bits: every width there and back, with a snapshot.
q qemu-img create -f qcow2 r.qcow2 4M
q qemu-io -c "write -P 9 0 1M" -c "write -c -P 10 2M 64k" r.qcow2
raw_of r.qcow2 refr0.raw
q qemu-img snapshot -c S r.qcow2
q qemu-io -c "write -P 11 0 64k" r.qcow2
raw_of r.qcow2 refr.raw
for bits in 64 2 8 32 4 16; do
    "$B" img amend -o refcount_bits=$bits r.qcow2 || bad "refcount_bits=$bits failed"
    info_is "refcount_bits=$bits" r.qcow2 "d['refcount-bits'] == $bits"
    clean "refcount_bits=$bits" r.qcow2
    same "refcount_bits=$bits" r.qcow2 refr.raw
done
snap_same "refcount_bits" r.qcow2 S refr0.raw
refused "refcount_bits=1 with shared clusters" r.qcow2 refcount_bits=1
refused "refcount_bits=3" r.qcow2 refcount_bits=3

# ---- backing file and format.
q qemu-img create -f qcow2 base2.qcow2 2M
q qemu-img create -f raw base3.raw 2M
"$B" img amend -o backing_file=base2.qcow2,backing_fmt=qcow2 ov.qcow2 || bad "backing change failed"
info_is "backing change" ov.qcow2 'j["backing-filename"] == "base2.qcow2" and j["backing-filename-format"] == "qcow2"'
clean "backing change" ov.qcow2
"$B" img amend -o backing_file=base3.raw,backing_fmt=raw ov.qcow2 || bad "backing change to raw failed"
info_is "backing change to raw" ov.qcow2 'j["backing-filename"] == "base3.raw" and j["backing-filename-format"] == "raw"'
clean "backing change to raw" ov.qcow2

# ---- size: grow, shrink (no snapshots), shrink with snapshots refused.
q qemu-img create -f qcow2 s.qcow2 2M
q qemu-io -c "write -P 12 0 1M" s.qcow2
raw_of s.qcow2 refs.raw
"$B" img amend -o size=6M s.qcow2 || bad "grow failed"
info_is "grow" s.qcow2 'j["virtual-size"] == 6 * 1024 * 1024'
clean "grow" s.qcow2
same "grow" s.qcow2 refs.raw
"$B" img amend -o size=1M s.qcow2 || bad "shrink failed"
info_is "shrink" s.qcow2 'j["virtual-size"] == 1024 * 1024'
clean "shrink" s.qcow2
same "shrink" s.qcow2 refs.raw
q qemu-img snapshot -c S s.qcow2
cp s.qcow2 before.qcow2
expect_rc "shrink with snapshots refused" 1 "$B" img amend -o size=512k s.qcow2
if cmp -s s.qcow2 before.qcow2; then ok "refused shrink: image unchanged"; else bad "refused shrink changed the image"; fi

# ---- refusals with qemu-img's messages.
q qemu-img create -f qcow2 e.qcow2 1M
for o in cluster_size=4096 compression_type=zstd extended_l2=on preallocation=full foo=1 compat=2.0 \
    "lazy_refcounts=on,compat=0.10" "refcount_bits=8,compat=0.10" data_file_raw=on data_file=x.raw; do
    refused "amend $o" e.qcow2 "$o"
done
q qemu-img create -f qcow2 -o extended_l2=on x.qcow2 1M
refused "downgrade extended_l2" x.qcow2 compat=0.10
q qemu-img create -f qcow2 -o refcount_bits=8 x8.qcow2 1M
refused "downgrade refcount_bits=8" x8.qcow2 compat=0.10
q qemu-img create -f qcow2 -o compression_type=zstd z.qcow2 1M
q qemu-io -c "write -c -P 1 0 64k" z.qcow2
refused "downgrade zstd with compressed clusters" z.qcow2 compat=0.10
q qemu-img create -f qcow2 -o data_file=d.raw df.qcow2 1M
refused "downgrade with data file" df.qcow2 compat=0.10
q qemu-img create -f qcow2 g.qcow2 1M
q qemu-img snapshot -c S g.qcow2
q qemu-img resize g.qcow2 2M
refused "downgrade with snapshot of another size" g.qcow2 compat=0.10
# zstd without compressed clusters downgrades (to zlib).
q qemu-img create -f qcow2 -o compression_type=zstd z2.qcow2 1M
q qemu-io -c "write -P 1 0 64k" z2.qcow2
"$B" img amend -o compat=0.10 z2.qcow2 || bad "downgrade zstd without compressed clusters failed"
info_is "downgrade zstd" z2.qcow2 'd["compat"] == "0.10" and d["compression-type"] == "zlib"'
clean "downgrade zstd" z2.qcow2

# ---- I/O errors (blkdebug EIO on every write after an event) during
#      amend: the data (and a snapshot's) unchanged, qemu-img check finds
#      leaks at worst, and the image still amends cleanly afterwards.
q qemu-img create -f qcow2 e0.qcow2 4M
q qemu-io -c "write -P 1 0 1M" -c "write -z 64k 64k" -c "write -z -u 256k 64k" e0.qcow2
raw_of e0.qcow2 refe.raw
q qemu-img snapshot -c S e0.qcow2
q qemu-io -c "write -z 512k 64k" e0.qcow2
raw_of e0.qcow2 refe2.raw
injected=0
for ev in l2_update refblock_update_part refblock_alloc cluster_alloc cluster_free flush_to_disk pwritev pwritev_zero; do
    for o in compat=0.10 refcount_bits=8 refcount_bits=1; do
        cp e0.qcow2 e.qcow2
        opts="{\"driver\":\"qcow2\",\"file\":{\"driver\":\"blkdebug\",\"image\":{\"driver\":\"file\",\"filename\":\"e.qcow2\"},"
        opts+="\"inject-error\":[{\"event\":\"$ev\",\"iotype\":\"write\",\"errno\":5}]}}"
        "$B" img amend --image-opts -o $o "$opts" >/dev/null 2>&1 || injected=$((injected + 1))
        rc=0
        out=$(qemu-img check e.qcow2 2>&1) || rc=$?
        if [ $rc = 0 ] || [ $rc = 3 ]; then ok "EIO after $ev in amend $o: check exit $rc"; else bad "EIO after $ev in amend $o: check exit $rc: $(echo "$out" | head -3)"; fi
        same "EIO after $ev in amend $o" e.qcow2 refe2.raw
        snap_same "EIO after $ev in amend $o" e.qcow2 S refe.raw
    done
done
if [ $injected -ge 8 ]; then ok "injected errors failed $injected amendments"; else bad "only $injected amendments saw the injected error"; fi
"$B" img amend -o compat=0.10 e.qcow2 || bad "amend after the errors failed"
clean "amend after the errors" e.qcow2

finish

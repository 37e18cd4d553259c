#!/bin/bash
# tests/integration/qcow2-snapshot.sh -- qcow2 internal snapshots written by
# "blockgraph img snapshot" judged by the real qemu-img / qemu-io, and the
# reverse.
#
# For several image layouts (cluster sizes, refcount widths, v2, lazy
# refcounts, compressed and zero clusters, a backing file): snapshots made
# by blockgraph are listed and applied by the real "qemu-img snapshot", and
# snapshots made by qemu-img are applied and deleted by blockgraph. The data
# of every snapshot is compared with a raw reference taken when the snapshot
# was made (qemu-img compare, and qemu-img convert -l of the snapshot), and
# "qemu-img check" must call the image clean (no leaks, no corruption)
# after every step.
. "$(dirname "$0")/img-lib.sh"

# clean DESC IMG: qemu-img check exit 0 and no leak.
clean() {
    local out
    if out=$(qemu-img check "$2" 2>&1) && ! grep -q "leaked" <<<"$out"; then
        ok "$1: qemu-img check clean"
    else
        bad "$1: qemu-img check: $(echo "$out" | head -5)"
    fi
}
# same DESC IMG REF: the active image reads as REF (raw).
same() {
    if qemu-img compare -q -f qcow2 -F raw "$2" "$3" 2>/dev/null; then ok "$1: data equal"; else bad "$1: data differs"; fi
}
# snap_same DESC IMG SNAP REF: the snapshot's data, via qemu-img convert -l.
snap_same() {
    rm -f snap.raw
    if qemu-img convert -l "snapshot.name=$3" -O raw "$2" snap.raw 2>/dev/null && cmp -s snap.raw "$4"; then
        ok "$1: snapshot '$3' data (qemu-img convert -l)"
    else
        bad "$1: snapshot '$3' data differs or unreadable"
    fi
    # Our own read-only snapshot view reads the same.
    if "$B" img compare -q --image-opts "driver=qcow2,file.filename=$2,snapshot.name=$3,read-only=on" \
        "driver=raw,file.filename=$4" 2>/dev/null; then
        ok "$1: snapshot '$3' data (our snapshot.name view)"
    else
        bad "$1: our snapshot.name=$3 view differs"
    fi
}
# listed DESC TOOL IMG NAMES...: the snapshot list holds exactly NAMES.
listed() {
    local desc=$1 tool=$2 img=$3
    shift 3
    local got want
    if [ "$tool" = qemu ]; then got=$(qemu-img snapshot -l "$img" | awk 'NR>2 {print $2}' | sort | tr '\n' ' ')
    else got=$("$B" img snapshot -l "$img" | awk 'NR>2 {print $2}' | sort | tr '\n' ' '); fi
    want=$(printf '%s\n' "$@" | sed '/^$/d' | sort | tr '\n' ' ')
    if [ "$got" = "$want" ]; then ok "$desc: $tool lists [$want]"; else bad "$desc: $tool lists [$got], want [$want]"; fi
}
raw_of() { rm -f "$2"; q qemu-img convert -O raw "$1" "$2"; }

run_layout() {
    local L=$1 size=$2
    shift 2
    local img=$L.qcow2
    rm -f "$img" ref*.raw
    q qemu-img create -f qcow2 "$@" "$img" "$size"
    # State A: data, a compressed cluster, zeroes.
    q qemu-io -c "write -P 0x11 0 300k" -c "write -c -P 0x22 1M 64k" -c "write -z 128k 64k" \
        -c "write -P 0x33 3M 8k" "$img"
    raw_of "$img" refA.raw
    "$B" img snapshot -c A "$img" || bad "$L: snapshot -c A failed"
    clean "$L create A" "$img"
    listed "$L" qemu "$img" A
    # State B: overwrite shared clusters, discard some.
    q qemu-io -c "write -P 0x44 64k 200k" -c "discard 3M 8k" -c "write -P 0x55 2M 4k" "$img"
    raw_of "$img" refB.raw
    "$B" img snapshot -c B "$img" || bad "$L: snapshot -c B failed"
    clean "$L create B" "$img"
    # State C (never snapshotted).
    q qemu-io -c "write -P 0x66 0 1M" "$img"
    clean "$L write C" "$img"
    snap_same "$L" "$img" A refA.raw
    snap_same "$L" "$img" B refB.raw
    # Apply ours with qemu-img, then with blockgraph.
    q qemu-img snapshot -a A "$img"
    same "$L qemu-img applies our A" "$img" refA.raw
    clean "$L qemu apply A" "$img"
    "$B" img snapshot -a B "$img" || bad "$L: snapshot -a B failed"
    same "$L blockgraph applies B" "$img" refB.raw
    clean "$L apply B" "$img"
    # The reverse: qemu-img's snapshot, applied and deleted by blockgraph.
    q qemu-io -c "write -P 0x77 512k 128k" "$img"
    raw_of "$img" refQ.raw
    q qemu-img snapshot -c Q "$img"
    listed "$L" ours "$img" A B Q
    q qemu-io -c "write -P 0x88 0 2M" "$img"
    "$B" img snapshot -a Q "$img" || bad "$L: snapshot -a Q failed"
    same "$L blockgraph applies qemu's Q" "$img" refQ.raw
    clean "$L apply Q" "$img"
    "$B" img snapshot -d A "$img" || bad "$L: snapshot -d A failed"
    clean "$L delete A" "$img"
    listed "$L" qemu "$img" B Q
    snap_same "$L after delete A" "$img" B refB.raw
    same "$L active after delete A" "$img" refQ.raw
    # Writes after the delete go in place where refcounts are 1 again; our
    # own writes too.
    "$B" io -c "write -P 0x99 0 64k" "$img" >/dev/null || bad "$L: blockgraph io write failed"
    q qemu-io -c "write -P 0x99 0 64k" -f raw refQ.raw
    same "$L write after delete" "$img" refQ.raw
    clean "$L write after delete" "$img"
    "$B" img snapshot -d Q "$img" || bad "$L: snapshot -d Q failed"
    "$B" img snapshot -d 2 "$img" || bad "$L: snapshot -d by id failed"
    listed "$L" qemu "$img"
    clean "$L all deleted" "$img"
    same "$L active after all deleted" "$img" refQ.raw
}

run_layout default 4M
run_layout c4k 4M -o cluster_size=4096
run_layout rb8 4M -o refcount_bits=8,cluster_size=16k
run_layout rb64 4M -o refcount_bits=64
run_layout v2 4M -o compat=0.10
run_layout lazy 4M -o lazy_refcounts=on
run_layout extl2 4M -o extended_l2=on

# A backing file: snapshots of the overlay.
rm -f base.qcow2 ov.qcow2
q qemu-img create -f qcow2 base.qcow2 4M
q qemu-io -c "write -P 0xaa 0 4M" base.qcow2
q qemu-img create -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2
q qemu-io -c "write -P 0xbb 1M 64k" ov.qcow2
raw_of ov.qcow2 refA.raw
"$B" img snapshot -c A ov.qcow2 || bad "backing: snapshot -c failed"
q qemu-io -c "write -P 0xcc 0 2M" ov.qcow2
clean "backing create" ov.qcow2
q qemu-img snapshot -a A ov.qcow2
same "backing: qemu-img applies our A" ov.qcow2 refA.raw

# Snapshots across a resize: applying restores the size.
rm -f rs.qcow2
q qemu-img create -f qcow2 rs.qcow2 1M
q qemu-io -c "write -P 1 0 1M" rs.qcow2
raw_of rs.qcow2 refS.raw
"$B" img snapshot -c small rs.qcow2 || bad "resize: snapshot -c failed"
"$B" img resize rs.qcow2 3M >/dev/null || bad "resize: grow with snapshots failed"
q qemu-io -c "write -P 2 2M 64k" rs.qcow2
"$B" img snapshot -c big rs.qcow2 || bad "resize: snapshot -c big failed"
"$B" img snapshot -a small rs.qcow2 || bad "resize: snapshot -a small failed"
sz=$(qemu-img info --output=json rs.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
if [ "$sz" = 1048576 ]; then ok "resize: applying restores the 1 MiB size"; else bad "resize: size $sz after apply"; fi
same "resize: data of small" rs.qcow2 refS.raw
clean "resize apply small" rs.qcow2
q qemu-img snapshot -a big rs.qcow2
sz=$(qemu-img info --output=json rs.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
if [ "$sz" = 3145728 ]; then ok "resize: qemu-img applies our big (3 MiB)"; else bad "resize: size $sz"; fi
# Shrinking with snapshots is refused and changes nothing.
cp rs.qcow2 rs-before.qcow2
expect_rc "shrink with snapshots refused" 1 "$B" img resize --shrink rs.qcow2 1M
if cmp -s rs.qcow2 rs-before.qcow2; then ok "refused shrink left the image unchanged"; else bad "refused shrink changed the image"; fi

# 1-bit refcounts cannot count a second reference: create fails cleanly
# (qemu-img fails too), the image keeps its data and has no corruption.
rm -f rb1.qcow2
q qemu-img create -f qcow2 -o refcount_bits=1 rb1.qcow2 1M
q qemu-io -c "write -P 5 0 64k" rb1.qcow2
raw_of rb1.qcow2 ref1.raw
expect_rc "refcount_bits=1: snapshot -c refused" 1 "$B" img snapshot -c X rb1.qcow2
qemu-img check rb1.qcow2 >/dev/null 2>&1
rc=$?
if [ $rc = 0 ] || [ $rc = 3 ]; then ok "refcount_bits=1: no corruption after the refused create (check exit $rc)"; else bad "refcount_bits=1: check exit $rc"; fi
same "refcount_bits=1: data kept" rb1.qcow2 ref1.raw
listed "refcount_bits=1" qemu rb1.qcow2

# I/O errors (blkdebug EIO on every write after an event, like a crash at
# that point with everything written before it kept) in each snapshot
# operation: no corruption beyond leaks and the OFLAG_COPIED mismatches
# QEMU's own order can leave (repaired by check -r all), the active data
# and every listed snapshot's data intact.
# tolerable DESC IMG: qemu-img check exit 0/3, or 2 with only OFLAG_COPIED errors.
tolerable() {
    local out rc=0
    out=$(qemu-img check "$2" 2>&1) || rc=$?
    if [ $rc = 0 ] || [ $rc = 3 ] ||
        { [ $rc = 2 ] && ! grep "^ERROR" <<<"$out" | grep -qv "OFLAG_COPIED"; }; then
        ok "$1: check exit $rc (leaks/COPIED at worst)"
    else
        bad "$1: check exit $rc: $(echo "$out" | head -4)"
    fi
    q qemu-img check -r all "$2"
    clean "$1 after -r all" "$2"
}
rm -f e0.qcow2
q qemu-img create -f qcow2 e0.qcow2 4M
q qemu-io -c "write -P 1 0 1M" -c "write -c -P 2 2M 64k" e0.qcow2
raw_of e0.qcow2 refE1.raw
q qemu-img snapshot -c one e0.qcow2
q qemu-io -c "write -P 3 0 512k" e0.qcow2
raw_of e0.qcow2 refE2.raw
injected=0
for ev in l1_update l2_update refblock_update_part refblock_alloc cluster_alloc cluster_free flush_to_os flush_to_disk pwritev; do
    for op in "-c two" "-a one" "-d one"; do
        cp e0.qcow2 e.qcow2
        opts="{\"driver\":\"qcow2\",\"file\":{\"driver\":\"blkdebug\",\"image\":{\"driver\":\"file\",\"filename\":\"e.qcow2\"},"
        opts+="\"inject-error\":[{\"event\":\"$ev\",\"iotype\":\"write\",\"errno\":5}]}}"
        "$B" img snapshot --image-opts $op "$opts" >/dev/null 2>&1
        rc=$?
        [ $rc != 0 ] && injected=$((injected + 1))
        tolerable "EIO after $ev in snapshot $op (exit $rc)" e.qcow2
        names=$(qemu-img snapshot -l e.qcow2 | awk 'NR>2 {print $2}' | tr '\n' ' ')
        case "$op" in
        "-a one") if qemu-img compare -q -F raw e.qcow2 refE2.raw 2>/dev/null || qemu-img compare -q -F raw e.qcow2 refE1.raw 2>/dev/null; then
                      ok "EIO after $ev in snapshot $op: active state is the old or the new one"
                  else bad "EIO after $ev in snapshot $op: active data is neither state"; fi ;;
        *) same "EIO after $ev in snapshot $op: active data" e.qcow2 refE2.raw ;;
        esac
        case " $names" in *" one "*) snap_same "EIO after $ev in snapshot $op" e.qcow2 one refE1.raw ;; esac
        case " $names" in *" two "*) snap_same "EIO after $ev in snapshot $op" e.qcow2 two refE2.raw ;; esac
    done
done
if [ $injected -ge 10 ]; then ok "injected errors failed $injected operations"; else bad "only $injected operations saw the injected error"; fi

# Errors: unknown snapshot, duplicate id is impossible by name (ids are new).
expect_rc "apply unknown snapshot" 1 "$B" img snapshot -a nosuch rs.qcow2
expect_rc "delete unknown snapshot" 1 "$B" img snapshot -d nosuch rs.qcow2
clean "after errors" rs.qcow2

finish

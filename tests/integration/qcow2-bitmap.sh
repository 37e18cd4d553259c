#!/bin/bash
# tests/integration/qcow2-bitmap.sh -- persistent dirty bitmaps in qcow2:
# "blockgraph img bitmap", bitmaps kept up to date by every writer
# (blockgraph io, the FUSE daemon), convert --bitmaps. QEMU is the judge:
# twin images get the same operations from qemu-img / qemu-io and from
# blockgraph, then the real qemu-nbd serves each bitmap and qemu-img map
# reads its dirty ranges (x-dirty-bitmap): the maps must be equal, and
# qemu-img check must call every image clean.
#
# Needs qemu-img, qemu-io, qemu-nbd (qemu-utils); exits 77 without them
# unless CI is set.
. "$(dirname "$0")/img-lib.sh"
if ! command -v qemu-nbd >/dev/null; then
    [ -n "${CI:-}" ] && { echo "FAIL: qemu-nbd not installed (qemu-utils), and CI is set"; exit 1; }
    echo "SKIP: qemu-nbd not installed (qemu-utils)"
    exit 77
fi

DAEMON_PID=
cleanup() {
    [ -n "$DAEMON_PID" ] && kill -KILL "$DAEMON_PID" 2>/dev/null
    [ -e "$WORK/mp" ] && fusermount3 -uz "$WORK/mp" 2>/dev/null
    [ "${BG_KEEP_WORK:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

# dirty IMG BITMAP: the bitmap's dirty ranges as qemu-img map prints them
# through qemu-nbd (dirty ranges show "data": false).
dirty() {
    rm -f nbd.sock
    timeout 30 qemu-nbd -r -f qcow2 -B "$2" --socket="$WORK/nbd.sock" "$1" 2>nbd.err &
    local p=$! i
    for i in $(seq 100); do [ -S nbd.sock ] && break; sleep 0.05; done
    timeout 30 qemu-img map --output=json --image-opts \
        "driver=nbd,server.type=unix,server.path=$WORK/nbd.sock,x-dirty-bitmap=qemu:dirty-bitmap:$2" 2>&1 |
        sed 's/, "offset": [0-9]*//'
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null
}
# same_dirty DESC OURS THEIRS BITMAP: equal maps, and (unless ANY_DIRTY=0)
# some range dirty.
same_dirty() {
    local a b
    a=$(dirty "$2" "$4")
    b=$(dirty "$3" "$4")
    if [ -z "$a" ] || [ "$a" != "$b" ]; then
        bad "$1: bitmap $4 differs from QEMU's: ours $(echo "$a" | tr -d '\n' | head -c 400) / QEMU's $(echo "$b" | tr -d '\n' | head -c 400)"
    elif [ "${ANY_DIRTY:-1}" = 1 ] && ! grep -q '"data": false' <<<"$a"; then
        bad "$1: bitmap $4 has no dirty range (the test would not see a difference)"
    else
        ok "$1: bitmap $4 as QEMU's"
    fi
}
# patch_dir IMG PYTHON: runs PYTHON with f (IMG open r+b), doff and dsize
# (the bitmap directory's offset and size, from the header extension).
patch_dir() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(4096)
off = struct.unpack(">I", h[100:104])[0]           # header_length
while True:
    t, l = struct.unpack(">II", h[off:off + 8])
    if t == 0x23852875:
        nb, _, dsize, doff = struct.unpack(">IIQQ", h[off + 8:off + 32])
        break
    off += 8 + ((l + 7) & ~7)
exec(sys.argv[2])
PY
}
bitmaps_of() {
    qemu-img info -U --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"].get("bitmaps"))'
}

# ---- img bitmap: the same commands on twins, the same results
q qemu-img create -q -f qcow2 t.qcow2 64M
cp t.qcow2 o.qcow2
while IFS= read -r args; do
    [ -n "$args" ] || continue
    qo=$(qemu-img bitmap ${args//IMG/t.qcow2} 2>&1); qrc=$?
    bo=$("$B" img bitmap ${args//IMG/o.qcow2} 2>&1); brc=$?
    if [ $qrc = $brc ] && [ "${qo//qemu-img/P}" = "${bo//blockgraph img/P}" ]; then
        ok "bitmap $args: exit $brc${bo:+, '$bo'} as qemu-img"
    else
        bad "bitmap $args: exit $brc '$bo', qemu-img $qrc '$qo'"
    fi
done <<'EOF'
--add IMG b0
--add -g 4096 --disable IMG b1
--add -g 512 IMG b2
--add IMG b0
--add -g 100 IMG b3
--remove IMG nosuch
--clear IMG nosuch
--merge nosuch IMG b0
--enable IMG nosuch
IMG b0
-g 64k --remove IMG b0
--add --disable IMG tmp
--enable --disable --enable IMG tmp
--remove IMG tmp
EOF
[ "$(bitmaps_of o.qcow2)" = "$(bitmaps_of t.qcow2)" ] && ok "bitmap list as qemu-img's: $(bitmaps_of o.qcow2)" ||
    bad "bitmap list $(bitmaps_of o.qcow2), qemu-img's $(bitmaps_of t.qcow2)"
qemu_accepts "after img bitmap" o.qcow2

# ---- tracking: the same writes by qemu-io and by blockgraph io
cmds=(-c 'write -P 1 1M 4k' -c 'write -z 8M 1M' -c 'discard 20M 128k' -c 'write -P 2 33M 100'
    -c 'write -c -P 3 40M 64k' -c 'write -P 4 63M 1M')
q qemu-io "${cmds[@]}" t.qcow2
"$B" io "${cmds[@]}" o.qcow2 >/dev/null || bad "blockgraph io session failed"
for bm in b0 b2; do same_dirty "io writes" o.qcow2 t.qcow2 $bm; done
ANY_DIRTY=0 same_dirty "io writes (disabled bitmap untouched)" o.qcow2 t.qcow2 b1
qemu_accepts "after tracked writes" o.qcow2
[ "$(bitmaps_of o.qcow2)" = "$(bitmaps_of t.qcow2)" ] && ok "flags after a session as QEMU's (no in-use)" ||
    bad "flags after a session: $(bitmaps_of o.qcow2) vs $(bitmaps_of t.qcow2)"

# A second session adds to what the first stored; --clear, --merge and
# --enable then act on stored bits.
cmds=(-c 'write -P 5 2M 64k' -c 'write -P 6 50M 8k')
q qemu-io "${cmds[@]}" t.qcow2
"$B" io "${cmds[@]}" o.qcow2 >/dev/null || bad "second blockgraph io session failed"
same_dirty "second session" o.qcow2 t.qcow2 b0
q qemu-img bitmap --enable t.qcow2 b1
"$B" img bitmap --enable o.qcow2 b1 || bad "--enable b1 failed"
q qemu-io -c 'write -P 7 4M 4k' t.qcow2
"$B" io -c 'write -P 7 4M 4k' o.qcow2 >/dev/null
same_dirty "after --enable" o.qcow2 t.qcow2 b1
q qemu-img bitmap --clear t.qcow2 b2
"$B" img bitmap --clear o.qcow2 b2 || bad "--clear failed"
q qemu-img bitmap --clear --merge b0 t.qcow2 b1
"$B" img bitmap --clear --merge b0 o.qcow2 b1 || bad "--clear --merge failed"
ANY_DIRTY=0 same_dirty "after --clear" o.qcow2 t.qcow2 b2
same_dirty "after --merge (64k into 4k granularity)" o.qcow2 t.qcow2 b1
q qemu-img create -q -f qcow2 src-t.qcow2 64M
q qemu-img bitmap --add -g 512 src-t.qcow2 s
q qemu-io -c 'write 60M 1k' src-t.qcow2
q qemu-img bitmap --merge s -b src-t.qcow2 -F qcow2 t.qcow2 b2
"$B" img bitmap --merge s -b src-t.qcow2 -F qcow2 o.qcow2 b2 || bad "--merge -b failed"
same_dirty "after --merge -b (another image)" o.qcow2 t.qcow2 b2
qemu_accepts "after bitmap changes" o.qcow2

# An open that writes nothing changes nothing in the file.
cp o.qcow2 before.qcow2
"$B" io -c 'read 0 4k' o.qcow2 >/dev/null
cmp -s o.qcow2 before.qcow2 && ok "a writable session without writes leaves the file as it was" ||
    bad "a writable session without writes changed the file"

# Resize: grown part clean (as QEMU), then shrink.
q qemu-img resize -q t.qcow2 96M
"$B" img resize o.qcow2 96M >/dev/null || bad "resize failed"
same_dirty "after a grow" o.qcow2 t.qcow2 b0
q qemu-img resize -q --shrink t.qcow2 48M
"$B" img resize --shrink o.qcow2 48M >/dev/null || bad "shrink failed"
same_dirty "after a shrink" o.qcow2 t.qcow2 b0
qemu_accepts "after resizes" o.qcow2

# Applying an internal snapshot may change any byte: every enabled bitmap
# is all dirty afterwards (qemu-img 7.2 marks nothing; the spec asks auto
# bitmaps to reflect snapshot switching), disabled ones stay as they were.
q qemu-img create -q -f qcow2 sn.qcow2 8M
q qemu-img snapshot -c s1 sn.qcow2
q qemu-img bitmap --add -g 64k sn.qcow2 on
q qemu-img bitmap --add -g 64k --disable sn.qcow2 off
"$B" img snapshot -a s1 sn.qcow2 || bad "snapshot -a failed"
m=$(dirty sn.qcow2 on | tr -d '\n')
[[ $m == *'"start": 0, "length": 8388608,'*'"data": false'* ]] && ok "snapshot -a: the enabled bitmap is all dirty" ||
    bad "snapshot -a: enabled bitmap $m"
m=$(dirty sn.qcow2 off | tr -d '\n')
[[ $m != *'"data": false'* ]] && ok "snapshot -a: the disabled bitmap is untouched" || bad "snapshot -a: disabled bitmap $m"
qemu_accepts "after snapshot -a" sn.qcow2

# ---- the FUSE daemon: writes through the mount (two iothreads) are tracked
q qemu-img create -q -f qcow2 d.qcow2 64M
q qemu-img bitmap --add -g 4k d.qcow2 b0
cp d.qcow2 dt.qcow2
touch mp
"$B" daemon --object iothread,id=t0 --object iothread,id=t1 \
    --blockdev driver=file,node-name=f,filename=d.qcow2 --blockdev driver=qcow2,node-name=q,file=f \
    --export type=fuse,id=e,node-name=q,mountpoint=mp,writable=on,iothread.0=t0,iothread.1=t1 \
    --pidfile "$WORK/d.pid" 2>d.err &
DAEMON_PID=$!
for i in $(seq 200); do grep -q " $WORK/mp " /proc/mounts && break; sleep 0.05; done
dd if=/dev/urandom of=mp bs=4k seek=100 count=3 conv=notrunc,fsync status=none
dd if=/dev/urandom of=mp bs=64k seek=300 count=2 oflag=direct conv=notrunc status=none
kill -TERM $DAEMON_PID
wait $DAEMON_PID && ok "daemon exited 0" || bad "daemon exit: $(cat d.err)"
DAEMON_PID=
q qemu-io -c 'write 400k 12k' -c 'write 19200k 128k' dt.qcow2
same_dirty "writes through the FUSE mount" d.qcow2 dt.qcow2 b0
qemu_accepts "after the daemon" d.qcow2

# ---- a writer killed while open: the bitmap stays marked in use, the
# image is otherwise sound, and --remove (ours, QEMU's) cleans it up.
"$B" daemon --blockdev driver=file,node-name=f,filename=d.qcow2 --blockdev driver=qcow2,node-name=q,file=f \
    --export type=fuse,id=e,node-name=q,mountpoint=mp,writable=on 2>d.err &
DAEMON_PID=$!
for i in $(seq 200); do grep -q " $WORK/mp " /proc/mounts && break; sleep 0.05; done
dd if=/dev/urandom of=mp bs=4k seek=10 count=1 conv=notrunc,fsync status=none
kill -KILL $DAEMON_PID
wait $DAEMON_PID 2>/dev/null
DAEMON_PID=
fusermount3 -uz mp 2>/dev/null
grep -q "in-use" <<<"$(bitmaps_of d.qcow2)" && ok "after SIGKILL: the bitmap is marked in use" ||
    bad "after SIGKILL: $(bitmaps_of d.qcow2)"
cp d.qcow2 dq.qcow2
expect_rc "an in-use bitmap cannot be merged" 1 "$B" img bitmap --merge b0 d.qcow2 b0
grep -q "inconsistent" last.err && ok "... naming it inconsistent" || bad "... $(cat last.err)"
expect_rc "convert --bitmaps refuses an in-use bitmap" 1 "$B" img convert --bitmaps -O qcow2 d.qcow2 conv-x.qcow2
[ ! -e conv-x.qcow2 ] && ok "... before creating the target" || bad "... the target was created"
before=$(md5sum <d.qcow2)
expect_rc "resize with an in-use bitmap refused" 1 "$B" img resize d.qcow2 128M
[ "$(md5sum <d.qcow2)" = "$before" ] && ok "... the image is unchanged" || bad "... the image changed"
expect_rc "--remove of the in-use bitmap" 0 "$B" img bitmap --remove d.qcow2 b0
q qemu-img bitmap --remove dq.qcow2 b0
[ "$(bitmaps_of d.qcow2)" = None ] && ok "no bitmaps left" || bad "bitmaps left: $(bitmaps_of d.qcow2)"
out=$(qemu-img check d.qcow2 2>&1) && ok "after --remove: qemu-img check clean (its clusters freed)" ||
    bad "after --remove: $out"

# ---- convert --bitmaps: the same bitmaps, states and bits as qemu-img's
expect_rc "convert --bitmaps" 0 "$B" img convert --bitmaps -O qcow2 o.qcow2 conv-o.qcow2
q qemu-img convert --bitmaps -O qcow2 t.qcow2 conv-t.qcow2
[ "$(bitmaps_of conv-o.qcow2)" = "$(bitmaps_of conv-t.qcow2)" ] && ok "convert --bitmaps: list as qemu-img's" ||
    bad "convert --bitmaps: $(bitmaps_of conv-o.qcow2) vs $(bitmaps_of conv-t.qcow2)"
for bm in b0 b1; do same_dirty "convert --bitmaps" conv-o.qcow2 conv-t.qcow2 $bm; done
qemu_accepts "convert --bitmaps" conv-o.qcow2
expect_rc "convert --bitmaps to raw" 1 "$B" img convert --bitmaps -O raw o.qcow2 conv.raw
[ ! -e conv.raw ] && ok "... refused before creating it" || bad "... conv.raw was created"
expect_rc "--skip-broken-bitmaps without --bitmaps" 1 "$B" img convert --skip-broken-bitmaps -O qcow2 o.qcow2 c2.qcow2

# The default granularity is qemu-img's (the cluster size within [4k, 64k]).
for cs in 4k 2M; do
    q qemu-img create -q -f qcow2 -o cluster_size=$cs g-t.qcow2 16M
    cp g-t.qcow2 g-o.qcow2
    q qemu-img bitmap --add g-t.qcow2 g
    "$B" img bitmap --add g-o.qcow2 g || bad "--add with $cs clusters failed"
    [ "$(bitmaps_of g-o.qcow2)" = "$(bitmaps_of g-t.qcow2)" ] && ok "default granularity with $cs clusters as qemu-img's" ||
        bad "default granularity with $cs clusters: $(bitmaps_of g-o.qcow2) vs $(bitmaps_of g-t.qcow2)"
done

# A lazy-refcounts image left dirty with a bitmap: the writable open rebuilds
# the refcounts counting the bitmap's clusters, so later allocations do not
# reuse them; the bitmap goes on recording.
q qemu-img create -q -f qcow2 -o lazy_refcounts=on lz-o.qcow2 16M
q qemu-img bitmap --add -g 4k lz-o.qcow2 b0
q qemu-io -c 'write 0 64k' lz-o.qcow2
cp lz-o.qcow2 lz-t.qcow2
for f in lz-o.qcow2 lz-t.qcow2; do
    python3 -c "import struct,sys; f=open(sys.argv[1],'r+b'); f.seek(72); v=struct.unpack('>Q',f.read(8))[0]; f.seek(72); f.write(struct.pack('>Q',v|1))" $f
done
"$B" io -c 'write 1M 256k' -c 'write 3M 64k' lz-o.qcow2 >io.out 2>&1 && ok "dirty image with a bitmap: writes work" ||
    bad "dirty image with a bitmap: $(cat io.out)"
q qemu-io -c 'write 1M 256k' -c 'write 3M 64k' lz-t.qcow2
qemu_accepts "dirty image with a bitmap, after the writes" lz-o.qcow2
same_dirty "dirty image with a bitmap" lz-o.qcow2 lz-t.qcow2 b0

# An unknown autoclear bit (cleared on a writable open) does not cost the
# bitmaps: after a session without writes none is left in use.
cp o.qcow2 ac.qcow2
python3 -c "import struct,sys; f=open(sys.argv[1],'r+b'); f.seek(88); v=struct.unpack('>Q',f.read(8))[0]; f.seek(88); f.write(struct.pack('>Q',v|4))" ac.qcow2
"$B" io -c 'read 0 4k' ac.qcow2 >/dev/null || bad "session on the autoclear image failed"
[ "$(bitmaps_of ac.qcow2)" = "$(bitmaps_of o.qcow2)" ] && ok "unknown autoclear bit: bitmaps kept, none in use" ||
    bad "unknown autoclear bit: $(bitmaps_of ac.qcow2)"
qemu_accepts "unknown autoclear bit" ac.qcow2

# ---- refusals and hostile images
expect_rc "amend compat=0.10 with bitmaps refused" 1 "$B" img amend -o compat=0.10 o.qcow2
grep -q "bitmaps" last.err && ok "... naming the bitmaps" || bad "... $(cat last.err)"
q qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
expect_rc "--add on a v2 image" 1 "$B" img bitmap --add v2.qcow2 b0
grep -q "Cannot store dirty bitmaps in qcow2 v2 files" last.err && ok "... qemu-img's reason" || bad "... $(cat last.err)"
# A bitmap table entry with reserved bits set: a writable open refuses (naming
# the bitmap), read-only use still works, the file is not changed.
cp o.qcow2 evil.qcow2
patch_dir evil.qcow2 '
f.seek(doff)
table = struct.unpack(">Q", f.read(8))[0]
f.seek(table)
f.write(struct.pack(">Q", 0x0100000000000002))   # reserved bits'
before=$(md5sum <evil.qcow2)
expect_rc "a corrupt bitmap table: writable open refused" 1 "$B" io -c 'write 0 4k' evil.qcow2
grep -q "bitmap 'b0' is corrupt" last.err && ok "... naming the bitmap ($(cat last.err))" || bad "... $(cat last.err)"
expect_rc "... read-only use works" 0 "$B" io -r -c 'read 0 4k' evil.qcow2
[ "$(md5sum <evil.qcow2)" = "$before" ] && ok "... the file is unchanged" || bad "... the file changed"
# Two bitmaps sharing one table: a writable open refuses (freeing one
# would free the other's), naming it; the file is not changed.
q qemu-img create -q -f qcow2 sh.qcow2 16M
q qemu-img bitmap --add sh.qcow2 a
q qemu-img bitmap --add sh.qcow2 b
q qemu-io -c 'write 0 1M' sh.qcow2
patch_dir sh.qcow2 '
f.seek(doff)
d = f.read(dsize)
size0 = (24 + struct.unpack(">I", d[20:24])[0] + struct.unpack(">H", d[18:20])[0] + 7) & ~7
f.seek(doff + size0)
f.write(d[0:8])                                     # b table := a table'
before=$(md5sum <sh.qcow2)
expect_rc "two bitmaps sharing a table: writable open refused" 1 "$B" io -c 'write 0 4k' sh.qcow2
grep -q "is not its own" last.err && ok "... naming the bitmap ($(cat last.err))" || bad "... $(cat last.err)"
[ "$(md5sum <sh.qcow2)" = "$before" ] && ok "... the file is unchanged" || bad "... the file changed"
finish

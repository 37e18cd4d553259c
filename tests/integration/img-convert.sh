#!/bin/bash
# tests/integration/img-convert.sh -- "blockgraph img convert" and "compare".
#
# convert: sources made by qemu-img (raw with data, zeros and holes; qcow2
# with zero, compressed and extended-L2 clusters; a backing chain) to raw,
# qcow2 and compressed qcow2, with -W, -m, -S, -n, -B, -t/-T and several
# sources concatenated. Every output must be identical to its source for
# "qemu-img compare" and clean for "qemu-img check"; sparseness is judged
# with "qemu-img map". compare: the verdict, message and exit code are
# qemu-img's. -p: a progress line on a pseudo-terminal, nothing on a pipe.
. "$(dirname "$0")/img-lib.sh"

# ---- sources
q qemu-img create -q -f raw src.raw 24M
q qemu-io -f raw -c 'write -P 0x11 0 3M' -c 'write -P 0 4M 1M' -c 'write -P 0x12 6M 4k' -c 'write -P 0x13 20M 2M' src.raw
q qemu-img create -q -f qcow2 src.qcow2 24M
q qemu-io -c 'write -P 0x21 0 1M' -c 'write -z 1M 1M' -c 'write -c -P 0x22 3M 128k' -c 'write -P 0x23 23M 1M' src.qcow2
q qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k src-ext.qcow2 8M
q qemu-io -c 'write -P 0x31 4k 4k' -c 'write -P 0x32 1M 68k' src-ext.qcow2
q qemu-img create -q -f qcow2 base.qcow2 16M
q qemu-io -c 'write -P 0x41 0 8M' base.qcow2
q qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2 16M
q qemu-io -c 'write -P 0x42 2M 1M' -c 'write -z 5M 1M' overlay.qcow2

# convert SRC... -- OPTS: runs our convert and judges the result.
n=0
check_convert() {
    local desc=$1 fmt=$2 srcfmt=$3 src=$4
    shift 4
    n=$((n + 1))
    local out=out$n.$fmt
    if ! "$B" img convert "$@" -O "$fmt" "$src" "$out" >conv.out 2>conv.err; then
        bad "$desc: convert failed: $(cat conv.err)"
        return
    fi
    same_data "$desc" "$src" "$out" "$srcfmt" "$fmt"
    [ "$fmt" = qcow2 ] && qemu_accepts "$desc" "$out"
    LAST_OUT=$out
}

for src in src.raw src.qcow2 src-ext.qcow2 overlay.qcow2; do
    sf=${src##*.}
    check_convert "$src -> raw" raw "$sf" "$src" -f "$sf"
    check_convert "$src -> qcow2" qcow2 "$sf" "$src" -f "$sf"
    check_convert "$src -> qcow2 -c" qcow2 "$sf" "$src" -f "$sf" -c
    check_convert "$src -> raw -W -m 16" raw "$sf" "$src" -W -m 16
    check_convert "$src -> qcow2 -m 1 -S 64k" qcow2 "$sf" "$src" -m 1 -S 64k
done
check_convert "src.raw -> qcow2 -c -W" qcow2 raw src.raw -f raw -c -W
check_convert "src.raw -> qcow2 -o cluster_size=4k,compat=0.10" qcow2 raw src.raw -f raw -o cluster_size=4k,compat=0.10
check_convert "src.qcow2 -> raw -t none -T none" raw qcow2 src.qcow2 -t none -T none
check_convert "src.qcow2 -> qcow2 -q" qcow2 qcow2 src.qcow2 -q

# Sparseness: holes and zero runs of the source are not written.
"$B" img convert -f raw -O raw src.raw sparse.raw
if qemu-img map --output=json -f raw sparse.raw | python3 -c '
import json, sys
m = json.load(sys.stdin)
data = sum(e["length"] for e in m if e["data"])
# 3M + 4k + 2M of non-zero data; the zero-filled 4M..5M is not data.
sys.exit(0 if data <= (5 << 20) + (1 << 20) and data >= (5 << 20) else 1)'; then
    ok "convert is sparse by default"
else
    bad "convert is not sparse: $(qemu-img map --output=json -f raw sparse.raw)"
fi
"$B" img convert -S 0 -f raw -O raw src.raw full.raw
if qemu-img map --output=json -f raw full.raw | python3 -c '
import json, sys
m = json.load(sys.stdin)
sys.exit(0 if all(e["data"] for e in m) else 1)'; then
    ok "convert -S 0 allocates everything"
else
    bad "convert -S 0 left holes"
fi
same_data "-S 0" src.raw full.raw raw raw
"$B" img convert -f raw -O qcow2 -c src.raw comp.qcow2
if qemu-img check comp.qcow2 | grep -q "[1-9][0-9.]*% compressed clusters"; then
    ok "convert -c writes compressed clusters"
else
    bad "convert -c: $(qemu-img check comp.qcow2)"
fi
if "$B" img map --output=json comp.qcow2 | grep -q '"compressed": true'; then
    ok "map reports compressed clusters"
else
    bad "map shows no compressed clusters"
fi

# Several sources, concatenated.
"$B" img convert -O raw src.raw src.qcow2 src-ext.qcow2 cat.raw
qemu-img convert -O raw src.raw src.qcow2 src-ext.qcow2 cat-qemu.raw
if cmp -s cat.raw cat-qemu.raw; then ok "three sources concatenated as qemu-img does"; else bad "concatenation differs"; fi

# -n: into an existing image (qemu-img made), which is not recreated.
q qemu-img create -q -f qcow2 existing.qcow2 24M
q qemu-io -c 'write -P 0x99 0 24M' existing.qcow2
"$B" img convert -n -O qcow2 src.qcow2 existing.qcow2
same_data "-n into a dirty target (zeros written)" src.qcow2 existing.qcow2 qcow2 qcow2
qemu_accepts "-n" existing.qcow2
q qemu-img create -q -f qcow2 tiny.qcow2 1M
expect_rc "-n into a too small target" 1 "$B" img convert -n -O qcow2 src.qcow2 tiny.qcow2

# -B: only the overlay's own clusters, on top of a backing file.
"$B" img convert -O qcow2 -B base.qcow2 -F qcow2 overlay.qcow2 rebased.qcow2
same_data "-B backing" overlay.qcow2 rebased.qcow2 qcow2 qcow2
qemu_accepts "-B" rebased.qcow2
if [ "$(qemu-img info --output=json rebased.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin).get("backing-filename"))')" = base.qcow2 ]; then
    ok "-B records the backing file"
else
    bad "-B: $(qemu-img info rebased.qcow2)"
fi
"$B" img convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 overlay.qcow2 rebased-o.qcow2
same_data "-o backing_file= (as -B)" overlay.qcow2 rebased-o.qcow2 qcow2 qcow2
size_b=$(stat -c %s rebased.qcow2)
[ "$size_b" -lt $((8 << 20)) ] && ok "-B copies only the overlay's data ($size_b bytes)" || bad "-B image is $size_b bytes"

# -l: a snapshot of the source (by id, by name, by snapshot.* keys), as
# qemu-img converts it; the same failures.
q qemu-img create -q -f qcow2 snap.qcow2 8M
q qemu-io -c 'write -P 0x51 0 2M' snap.qcow2
q qemu-img snapshot -c one snap.qcow2
q qemu-io -c 'write -P 0x52 1M 2M' snap.qcow2
q qemu-img snapshot -c 2 snap.qcow2
q qemu-io -c 'write -P 0x53 0 4M' snap.qcow2
for l in one 1 2 snapshot.name=one snapshot.id=2 snapshot.id=2,snapshot.name=2; do
    rm -f l-ours.raw l-theirs.raw
    "$B" img convert -l "$l" -O raw snap.qcow2 l-ours.raw 2>conv.err || bad "-l $l: $(cat conv.err)"
    q qemu-img convert -l "$l" -O raw snap.qcow2 l-theirs.raw
    if cmp -s l-ours.raw l-theirs.raw; then ok "-l $l: the snapshot's data, as qemu-img"; else bad "-l $l: differs from qemu-img's"; fi
done
# (snapshot "2" is id 2 and name "2"; the bare form takes the id first: same here.)
q qemu-img convert -O raw snap.qcow2 l-now.raw
"$B" img convert -l one -O raw snap.qcow2 l-ours.raw
qemu-io -f raw -c 'read -P 0x51 0 2M' -c 'read -P 0 2M 6M' l-ours.raw | grep -q "^read 6291456" &&
    ! cmp -s l-ours.raw l-now.raw && ok "-l one: the snapshot, not the current state" || bad "-l one: not the snapshot's data"
rm -f l-ours.raw
for l in nosuch snapshot.id=1,snapshot.name=2 snapshot.bogus=1; do
    rm -f l-ours.raw
    expect_rc "-l $l" 1 "$B" img convert -l "$l" -O raw snap.qcow2 l-ours.raw
    [ ! -e l-ours.raw ] && ok "-l $l: no output created" || bad "-l $l: output created"
done
grep -q "Invalid parameter 'snapshot.bogus'" last.err && ok "-l snapshot.bogus: names the key" || bad "-l snapshot.bogus: $(cat last.err)"
for l in one snapshot.id=2; do
    if [ "$("$B" img measure -O qcow2 -l "$l" snap.qcow2 2>&1)" = "$(qemu-img measure -O qcow2 -l "$l" snap.qcow2 2>&1)" ]; then
        ok "measure -l $l: as qemu-img's"
    else
        bad "measure -l $l: $("$B" img measure -O qcow2 -l "$l" snap.qcow2 2>&1 | tr '\n' '|') vs $(qemu-img measure -O qcow2 -l "$l" snap.qcow2 | tr '\n' '|')"
    fi
done
expect_rc "-l with two sources" 1 "$B" img convert -l one -O raw snap.qcow2 snap.qcow2 l-ours.raw
expect_rc "-l on raw" 1 "$B" img convert -l one -O raw src.raw l-ours.raw
grep -q "Failed to load snapshot" last.err && ok "-l on raw: 'Failed to load snapshot'" || bad "-l on raw: $(cat last.err)"

# --salvage: read errors on two sectors of the image file (blkdebug, armed
# by qcow2's read_aio): without it the convert fails; with it both sectors
# become zeros with one warning each, the rest is copied: the same warnings
# and the same output as qemu-img's.
q qemu-img convert -O qcow2 src.raw salv.qcow2
SALV='json:{"driver":"qcow2","file":{"driver":"blkdebug","image":{"driver":"file","filename":"salv.qcow2"},"inject-error":[{"event":"read_aio","iotype":"read","errno":5,"sector":2050},{"event":"read_aio","iotype":"read","errno":5,"sector":4000}]}}'
expect_rc "read errors without --salvage" 1 "$B" img convert -O raw "$SALV" salv-ours.raw
rm -f salv-ours.raw salv-theirs.raw
"$B" img convert --salvage -O raw "$SALV" salv-ours.raw 2>salv-ours.err; rc=$?
qemu-img convert --salvage -O raw "$SALV" salv-theirs.raw 2>salv-theirs.err
[ $rc = 0 ] && ok "--salvage: exit 0" || bad "--salvage: exit $rc: $(cat salv-ours.err)"
sed -i 's/^qemu-img: /blockgraph img: /' salv-theirs.err
if [ "$(wc -l <salv-ours.err)" = 2 ] && diff -q salv-ours.err salv-theirs.err >/dev/null; then
    ok "--salvage: a warning per unreadable sector, as qemu-img's"
else
    bad "--salvage: warnings differ: $(diff salv-ours.err salv-theirs.err | tr '\n' '|')"
fi
cmp -s salv-ours.raw salv-theirs.raw && ok "--salvage: output as qemu-img's" || bad "--salvage: output differs"
cmp -s salv-ours.raw src.raw && bad "--salvage: the unreadable sectors were not zeroed" || ok "--salvage: unreadable sectors zeroed"
rm -f salv-ours.raw
"$B" img convert -q --salvage -O raw "$SALV" salv-ours.raw 2>salv-ours.err
[ ! -s salv-ours.err ] && ok "--salvage -q: no warnings" || bad "--salvage -q: $(cat salv-ours.err)"

# -r: a rate limit of data bytes per second. 4 MiB of data at 1 MiB/s in
# 2 MiB chunks: the second chunk may start only after 2 s (a lower bound,
# which load cannot break); the output is still the source.
q qemu-img create -q -f raw rl.raw 4M
q qemu-io -f raw -c 'write -P 0x61 0 4M' rl.raw
t0=$(date +%s%N)
"$B" img convert -r 1M -O qcow2 rl.raw rl.qcow2 || bad "-r 1M failed"
t1=$(date +%s%N)
ms=$(( (t1 - t0) / 1000000 ))
[ "$ms" -ge 1900 ] && ok "-r 1M: 4 MiB took $ms ms (at least 2 s)" || bad "-r 1M: 4 MiB took only $ms ms"
same_data "-r 1M" rl.raw rl.qcow2 raw qcow2
for r in abc -5; do expect_rc "-r $r" 1 "$B" img convert -r "$r" -O raw rl.raw x.raw; done
grep -q "Invalid rate limit specified" last.err && ok "-r: qemu-img's message" || bad "-r -5: $(cat last.err)"
expect_rc "-r 0 (no limit, as qemu-img 7.2)" 0 "$B" img convert -r 0 -O raw rl.raw x.raw

# errors
expect_rc "-m 17" 1 "$B" img convert -m 17 src.raw x.raw
expect_rc "-S 100" 1 "$B" img convert -S 100 src.raw x.raw
expect_rc "missing source" 1 "$B" img convert nosuch.raw x.raw
expect_rc "-c to raw" 1 "$B" img convert -c -O raw src.raw x.raw
expect_rc "unknown output format" 1 "$B" img convert -O vhdx src.raw x.raw
expect_rc "bad -t" 1 "$B" img convert -t bogus src.raw x.raw

# ---- compare: verdicts, messages and exit codes as qemu-img's
cp src.raw same.raw
cp src.raw diff.raw
q qemu-io -f raw -c 'write -P 0x77 6M 512' diff.raw
cp src.raw late.raw
q qemu-io -f raw -c 'write -P 0x78 22M 1' late.raw
q qemu-img create -q -f raw longer.raw 30M
q qemu-img convert -n -f raw -O raw src.raw longer.raw
cp longer.raw longer-dirty.raw
q qemu-io -f raw -c 'write -P 1 29M 4k' longer-dirty.raw
for pair in "src.raw same.raw" "src.raw diff.raw" "src.raw late.raw" "src.raw src.qcow2" "src.raw longer.raw" \
    "longer-dirty.raw src.raw" "overlay.qcow2 rebased.qcow2" "src.qcow2 out2.qcow2"; do
    for strict in "" "-s"; do
        # shellcheck disable=SC2086
        "$B" img compare $strict $pair >ours.out 2>ours.err
        orc=$?
        # shellcheck disable=SC2086
        qemu-img compare $strict $pair >qemu.out 2>qemu.err
        qrc=$?
        if [ $orc = $qrc ] && diff -q ours.out qemu.out >/dev/null; then
            ok "compare $strict $pair: exit $orc, $(head -c 60 ours.out | tr '\n' ' ')"
        else
            bad "compare $strict $pair: ours exit $orc '$(cat ours.out ours.err)', qemu-img exit $qrc '$(cat qemu.out qemu.err)'"
        fi
    done
done
expect_rc "compare with a missing file" 2 "$B" img compare src.raw nosuch.raw
expect_rc "compare -q identical" 0 "$B" img compare -q src.raw same.raw
[ ! -s last.out ] && ok "compare -q prints nothing" || bad "compare -q printed $(cat last.out)"

# ---- -p: the progress line on a terminal and on a pipe
python3 - "$B" >pty.out <<'EOF'
import os, pty, sys
b = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execv(b, [b, "img", "convert", "-p", "-O", "raw", "src.qcow2", "pty.raw"])
out = b""
while True:
    try:
        d = os.read(fd, 4096)
    except OSError:
        break
    if not d:
        break
    out += d
_, st = os.waitpid(pid, 0)
sys.stdout.write(repr(out) + "\n" + str(os.waitstatus_to_exitcode(st)) + "\n")
EOF
if grep -q '(100.00/100%)' pty.out && grep -q '(0.00/100%)' pty.out && grep -q '\\r' pty.out && tail -1 pty.out | grep -qx 0; then
    ok "-p on a terminal shows percent and redraws: $(head -c 120 pty.out)"
else
    bad "-p on a terminal: $(cat pty.out)"
fi
same_data "-p output" src.qcow2 pty.raw qcow2 raw
"$B" img convert -p -O raw src.qcow2 pipe.raw >pipe.out
# On a pipe too, as qemu-img: from "    (0.00/100%)\r" to "    (100.00/100%)\r\n"
# (img-dropin-misc.sh compares it with qemu-img's).
if [ "$(head -c 16 pipe.out)" = "    (0.00/100%)"$'\r' ] && [ "$(tail -c 19 pipe.out | od -An -c | tr -d ' \n')" = '(100.00/100%)\r\n' ]; then
    ok "-p on a pipe prints the percentages"
else
    bad "-p on a pipe printed $(od -c pipe.out | head -5)"
fi
python3 - "$B" >pty2.out <<'EOF'
import os, pty, sys
b = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execv(b, [b, "img", "compare", "-p", "src.raw", "same.raw"])
out = b""
while True:
    try:
        d = os.read(fd, 4096)
    except OSError:
        break
    if not d:
        break
    out += d
os.waitpid(pid, 0)
print(repr(out))
EOF
grep -q '(100.00/100%)' pty2.out && grep -q 'Images are identical' pty2.out && ok "compare -p on a terminal" || bad "compare -p: $(cat pty2.out)"

# ---- bench: qemu-img bench's arguments and output
q qemu-img create -q -f qcow2 b.qcow2 8M
for args in "-c 1000 -d 8" "-c 500 -d 1 -s 64k -t none" "-w -c 300 -d 4 --pattern=0x5a -o 1M -S 8k" \
    "-w -c 200 -d 2 --flush-interval=50" "-w -c 100 -d 4 --flush-interval=10 --no-drain -i threads" "-c 64 -d 64 -S 0 -q"; do
    # shellcheck disable=SC2086
    "$B" img bench $args b.qcow2 >ours.out 2>ours.err
    orc=$?
    # shellcheck disable=SC2086
    qemu-img bench $args b.qcow2 >qemu.out 2>qemu.err
    qrc=$?
    if [ $orc = $qrc ] && diff <(grep -v '^Run completed' ours.out) <(grep -v '^Run completed' qemu.out) >/dev/null &&
        [ "$(grep -c '^Run completed in [0-9.]* seconds.$' ours.out)" = "$(grep -c '^Run completed' qemu.out)" ]; then
        ok "bench $args: $(head -1 ours.out)"
    else
        bad "bench $args: ours ($orc) '$(cat ours.out ours.err)', qemu-img ($qrc) '$(cat qemu.out qemu.err)'"
    fi
done
if qemu-io -c 'read -P 0x5a 1M 4k' -c 'read -P 0 1052672 4k' -c 'read -P 0x5a 2M 4k' b.qcow2 | grep -q "Pattern verification failed"; then
    bad "bench -w did not write the pattern"
else
    ok "bench -w wrote the pattern at offset, offset + step, ..."
fi
qemu_accepts "after bench -w" b.qcow2
expect_rc "bench --flush-interval without -w" 1 "$B" img bench --flush-interval=10 b.qcow2
expect_rc "bench -c 0" 1 "$B" img bench -c 0 b.qcow2
expect_rc "bench --pattern=300" 1 "$B" img bench -w --pattern=300 b.qcow2

finish

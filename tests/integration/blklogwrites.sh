#!/bin/bash
# tests/integration/blklogwrites.sh -- the blklogwrites filter against
# QEMU's, judged with tests/powerloss/dmlog.py (the dm-log-writes reader),
# cmp, qemu-img check and fio.
#
#  1. The same qemu-io command sequence (pattern writes, write -z, discard,
#     flush, write -f, unaligned writes), run in writeback mode through
#     QEMU's blklogwrites (qemu-io) and ours (blockgraph io), with
#     log-sector-size 512 and 4096: both images end up identical, and both
#     logs read to the same entry sequence (kind, offset, length, data). The
#     one difference is FUA: we pass the flag on and log it on the write
#     entry; QEMU 7.2 emulates FUA above its driver with a flush (logged as
#     a FLUSH entry after the write, unless its generation check skips it)
#     and logs no FUA flag. So both sequences are compared in the form
#     "a FUA write is a write followed by a flush", with consecutive flushes
#     merged (a flush with nothing before it since the last one changes
#     nothing; QEMU sometimes flushes twice at close). Our log must carry
#     FUA on exactly the write -f entry. Replaying either log onto the
#     starting image reproduces the final image (cmp).
#  2. log-append across implementations: a log started by us, continued by
#     QEMU, then by us (and the reverse, with log-sector-size=4096) reads as
#     one log: the super block counts every entry, the first session's
#     entries are unchanged, and the replay gives the final image.
#  3. Each option error gives QEMU's message (compared with qemu-io's), a
#     non-zero exit, and leaves the image and the log unchanged.
#     A write the child failed is not logged; a failed log write fails its
#     request and every later write (which no longer reaches the image).
#  4. A qcow2 image exported by "blockgraph daemon" over FUSE (qcow2 ->
#     blklogwrites(file, log)) written by fio (randwrite, iodepth 32,
#     O_DIRECT, verify) in the main loop and with two iothreads: replaying
#     the log onto the starting image gives the final image byte for byte,
#     and qemu-img check finds the replayed image clean.
#  5. QMP: blockdev-add of the filter (children inline, log-sector-size
#     4096) and query-named-block-nodes answer as qemu-storage-daemon's.
set -euo pipefail
export FUSE_TEST_BUDGET=${FUSE_TEST_BUDGET:-240}
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools qemu-io qemu-storage-daemon fio cmp md5sum
DMLOG=$SRCDIR/tests/powerloss/dmlog.py

# The normalised entry sequence of a log, one line per entry (see above);
# with --fua, the offsets of the entries carrying the FUA flag instead.
cat >norm.py <<'EOF'
import hashlib, sys
sys.path.insert(0, sys.argv[1])
import dmlog
ss, nr, entries = dmlog.read_log(sys.argv[2])
if len(sys.argv) > 3 and sys.argv[3] == "--fua":
    print(" ".join(str(e.offset) for e in entries if e.is_fua))
    sys.exit(0)
out = []
with open(sys.argv[2], "rb") as log:
    for e in entries:
        if e.is_discard:
            out.append("discard %d %d" % (e.offset, e.length))
        elif e.is_write:
            out.append("write %d %d %s" % (e.offset, e.length, hashlib.sha1(e.data(log)).hexdigest()))
        if e.is_flush or e.is_fua:
            if not out or out[-1] != "flush":
                out.append("flush")
print("sectorsize %d nr_entries %d entries %d" % (ss, nr, len(entries)), file=sys.stderr)
print("\n".join(out))
EOF

norm() { python3 norm.py "$SRCDIR/tests/powerloss" "$@"; }
opts() { echo "driver=blklogwrites,file.driver=file,file.filename=$1,log.driver=file,log.filename=$2${3:+,$3}"; }
bgio() { "$BLOCKGRAPH" io "$@"; }

# replay_check DESC LOG START FINAL: replaying LOG onto a copy of START gives FINAL.
replay_check() {
    cp "$3" replayed
    if python3 "$DMLOG" replay "$2" replayed && cmp -s replayed "$4"; then
        ok "$1: replay reproduces the final image"
    else
        bad "$1: replay does not reproduce the final image"
    fi
}

# ---------------------------------------------------------------- 0. the reader
# dmlog.py on a hand-made log in the kernel's layout: a MARK keeps its text
# in its own entry sector after the 32-byte header and has no data sectors.
if python3 - "$SRCDIR/tests/powerloss" <<'EOF'
import struct, sys
sys.path.insert(0, sys.argv[1])
import dmlog
ss = 512
sb = struct.pack("<QQQI", dmlog.MAGIC, 1, 3, ss).ljust(ss, b"\0")
w0 = struct.pack("<QQQQ", 2, 1, 0, 0).ljust(ss, b"\0") + b"\x11" * ss
mk = (struct.pack("<QQQQ", 0, 0, dmlog.MARK, 6) + b"mymark").ljust(ss, b"\0")
w1 = struct.pack("<QQQQ", 4, 1, 0, 0).ljust(ss, b"\0") + b"\x22" * ss
open("mark.log", "wb").write(sb + w0 + mk + w1)
_, nr, es = dmlog.read_log("mark.log")
with open("mark.log", "rb") as f:
    got = [(e.kind(), e.offset, e.data(f)) for e in es]
sys.exit(0 if nr == 3 and got == [("write", 1024, b"\x11" * ss), ("mark", 0, b"mymark"),
                                  ("write", 2048, b"\x22" * ss)] else 1)
EOF
then
    ok "dmlog.py reads a log with a MARK entry in the kernel's layout"
else
    bad "dmlog.py misreads a log with a MARK entry"
fi

# ---------------------------------------------------------------- 1. same log as QEMU
SEQ=(-c 'write -P 0xaa 0 4k' -c 'write -P 0x11 4k 2k' -c flush -c 'write -z 8k 4k' -c 'discard 16k 4k'
    -c 'write -P 0x12 20k 2k' -c 'write -f -P 0xbb 32k 4k' -c 'write -P 0xcc 1000 100'
    -c 'write -z 40k 64k' -c flush -c 'write -P 0x22 64k 128k' -c 'discard 96k 8k' -c 'write -P 0x33 300k 1536')
truncate -s 1M start.raw
qemu-io -f raw -c 'write -P 0x5a 0 1M' start.raw >/dev/null
for ss in 512 4096; do
    d="log-sector-size=$ss"
    for who in qemu bg; do
        cp start.raw "$who.raw"
        : >"$who.log"
        tool=qemu-io
        [ $who = bg ] && tool=bgio
        if ! $tool -t writeback --image-opts "$(opts $who.raw $who.log log-sector-size=$ss)" "${SEQ[@]}" \
            >"$who.out" 2>&1; then
            bad "$d: $who's run failed: $(tail -1 "$who.out")"
        fi
    done
    check "$d: the images are identical" cmp -s qemu.raw bg.raw
    if norm qemu.log >qemu.seq 2>qemu.hdr && norm bg.log >bg.seq 2>bg.hdr; then
        if diff qemu.seq bg.seq >seq.diff; then
            ok "$d: the logs read to the same entry sequence ($(wc -l <bg.seq) normalised entries; $(cat bg.hdr))"
        else
            bad "$d: the entry sequences differ (< QEMU, > ours):"
            sed 's/^/    /' seq.diff | head -20
        fi
    else
        bad "$d: a log does not read: $(cat qemu.hdr bg.hdr)"
    fi
    fua=$(norm bg.log --fua)
    if [ "$fua" = 32768 ]; then ok "$d: FUA logged on the write -f entry only"; else bad "$d: FUA entries at: '$fua'"; fi
    replay_check "$d (ours)" bg.log start.raw bg.raw
    replay_check "$d (QEMU's)" qemu.log start.raw qemu.raw
    if [ "$(stat -c %s bg.log)" -gt 0 ] && python3 -c "
import sys; sys.path.insert(0, '$SRCDIR/tests/powerloss'); import dmlog
ss, nr, e = dmlog.read_log('bg.log'); sys.exit(0 if ss == $ss and nr == len(e) else 1)"; then
        ok "$d: our super block holds sectorsize $ss and counts every entry"
    else
        bad "$d: our super block is wrong"
    fi
done

# ---------------------------------------------------------------- 2. log-append across implementations
append_case() {
    local d=$1 first=$2 second=$3 sopt=$4 t
    cp start.raw app.raw
    : >app.log
    $first -t writeback --image-opts "$(opts app.raw app.log "$sopt")" -c 'write -P 1 0 8k' \
        -c 'write -P 2 4k 1k' -c 'discard 64k 4k' >/dev/null 2>&1 || bad "$d: first session failed"
    cp app.log app1.log
    $second -t writeback --image-opts "$(opts app.raw app.log log-append=on)" -c 'write -P 3 64k 4k' \
        -c 'write -z 0 4k' -c 'write -P 4 5000 10' >/dev/null 2>&1 || bad "$d: second session failed"
    $first -t writeback --image-opts "$(opts app.raw app.log log-append=on)" -c 'write -P 5 200k 12k' \
        -c flush -c 'discard 204k 4k' >/dev/null 2>&1 || bad "$d: third session failed"
    if python3 - "$SRCDIR/tests/powerloss" <<EOF
import sys; sys.path.insert(0, sys.argv[1]); import dmlog
ss1, nr1, e1 = dmlog.read_log("app1.log")
ss, nr, e = dmlog.read_log("app.log")
a, b = open("app1.log", "rb").read(), open("app.log", "rb").read()
ok = ss == ss1 and nr == len(e) and len(e) > nr1 and b[ss:len(a)] == a[ss:]
ok = ok and [(x.kind(), x.offset, x.length) for x in e[:nr1]] == [(x.kind(), x.offset, x.length) for x in e1]
print("  sectorsize %d, %d entries after the first session, %d in all" % (ss, nr1, nr))
sys.exit(0 if ok else 1)
EOF
    then
        ok "$d: one consistent log"
    else
        bad "$d: the appended log is not one consistent log"
    fi
    replay_check "$d" app.log start.raw app.raw
}
append_case "ours, appended by QEMU, then ours" bgio qemu-io ""
append_case "QEMU's (4096), appended by us, then QEMU" qemu-io bgio log-sector-size=4096

# ---------------------------------------------------------------- 3. option errors
# A valid log to corrupt: 3 entries.
: >good.log
cp start.raw e.raw
qemu-io --image-opts "$(opts e.raw good.log)" -c 'write 0 4k' -c 'discard 8k 4k' >/dev/null
python3 - <<'EOF'
import struct
b = bytearray(open("good.log", "rb").read())
v = bytearray(b); v[8:16] = struct.pack("<Q", 2); open("version.log", "wb").write(v)
m = bytearray(b); m[0:8] = struct.pack("<Q", 0x1234); open("magic.log", "wb").write(m)
# entry 1 starts at sector 1 + 1 + 8 (header + 4 KiB of data)
f = bytearray(b); f[10 * 512 + 16:10 * 512 + 24] = struct.pack("<Q", 0x30); open("flags.log", "wb").write(f)
EOF
ERRS=(
    "good.log|log-sector-size=1000"
    "good.log|log-sector-size=16"
    "good.log|log-sector-size=16M"
    "good.log|log-sector-size=0"
    "good.log|log-super-update-interval=0"
    "good.log|log-append=on,log-sector-size=512"
    "magic.log|log-append=on"
    "version.log|log-append=on"
    "flags.log|log-append=on"
)
for e in "${ERRS[@]}"; do
    IFS='|' read -r log o <<<"$e"
    before=$(md5sum e.raw "$log")
    qrc=0 brc=0
    qmsg=$(qemu-io --image-opts "$(opts e.raw "$log" "$o")" -c 'write 0 512' 2>&1) || qrc=$?
    bmsg=$(bgio --image-opts "$(opts e.raw "$log" "$o")" -c 'write 0 512' 2>&1) || brc=$?
    after=$(md5sum e.raw "$log")
    qmsg=${qmsg#*can\'t open: } bmsg=${bmsg#*can\'t open: }
    if [ $qrc -ne 0 ] && [ $brc -ne 0 ] && [ "$qmsg" = "$bmsg" ] && [ "$before" = "$after" ]; then
        ok "$o ($log): \"$bmsg\", exit $brc, nothing changed"
    else
        bad "$o ($log): ours \"$bmsg\" (exit $brc), QEMU's \"$qmsg\" (exit $qrc), changed: $([ "$before" = "$after" ] && echo no || echo yes)"
    fi
done

# ---------------------------------------------------------------- 3b. failures
# A write the child fails (blkdebug EIO on the file below) is not logged;
# the others are. A failed log write fails its request; later writes fail
# without reaching the image; the log still reads up to the hole.
truncate -s 1M fail.raw
: >fail.log
bgio -t writeback --image-opts "driver=blklogwrites,file.driver=blkdebug,file.image.driver=file,file.image.filename=fail.raw,file.inject-error.0.event=pwritev,file.inject-error.0.errno=5,file.inject-error.0.sector=128,log.driver=file,log.filename=fail.log" \
    -c 'write -P 1 0 4k' -c 'write -P 2 64k 4k' -c 'write -P 3 8k 4k' -c flush >fail.out 2>&1 || true
if grep -q 'write failed: Input/output error' fail.out && [ "$(norm fail.log 2>/dev/null | cut -d' ' -f1-3 | tr '\n' ,)" = "write 0 4096,write 8192 4096,flush," ]; then
    ok "a write the child failed is not logged, the others are"
else
    bad "child failure: $(tr '\n' ' ' <fail.out); log: $(norm fail.log 2>&1 | tr '\n' ,)"
fi
rm -f fail.raw
truncate -s 1M fail.raw
: >fail.log
# The second entry's header lies in log sector 10 (super block, entry 0 with 8 sectors of data).
bgio -t writeback --image-opts "driver=blklogwrites,file.driver=file,file.filename=fail.raw,log.driver=blkdebug,log.image.driver=file,log.image.filename=fail.log,log.inject-error.0.event=pwritev,log.inject-error.0.errno=5,log.inject-error.0.sector=10" \
    -c 'write -P 1 0 4k' -c 'write -P 2 8k 4k' -c 'write -P 3 16k 4k' -c flush >fail.out 2>&1 || true
if [ "$(grep -c 'Input/output error' fail.out)" -ge 3 ] && qemu-io -f raw -c 'read -q -P 2 8k 4k' -c 'read -q -P 0 16k 4k' fail.raw >/dev/null 2>&1 \
    && [ "$(norm fail.log 2>&1 | tr '\n' ,)" = "sectorsize 512 nr_entries 1 entries 1,write 0 4096 $(head -c 4096 fail.raw | sha1sum | cut -d' ' -f1)," ]; then
    ok "a failed log write fails its request and every later one (the image unchanged by them); the log reads up to the hole"
else
    bad "log failure: $(tr '\n' ' ' <fail.out); log: $(norm fail.log 2>&1 | tr '\n' ,)"
fi

# ---------------------------------------------------------------- 4. qcow2 over FUSE, fio at depth 32
ENGINE=io_uring
truncate -s 1M probe
timeout 20 fio --name=probe --filename=probe --size=1M --rw=write --bs=4k --ioengine=io_uring --direct=1 \
    >/dev/null 2>&1 || ENGINE=libaio
rm -f probe
# name | objects | export options
CONFIGS=("main-loop||" "two-iothreads|--object iothread,id=t0 --object iothread,id=t1|,iothread.0=t0,iothread.1=t1")
for c in "${CONFIGS[@]}"; do
    IFS='|' read -r name objs expopts <<<"$c"
    d="qcow2 over FUSE, $name"
    rm -f img.qcow2 start.qcow2 fio.log
    qemu-img create -q -f qcow2 img.qcow2 64M
    cp img.qcow2 start.qcow2
    : >fio.dmlog
    touch mp
    # shellcheck disable=SC2086
    if ! fuse_start d $objs --blockdev driver=file,node-name=f0,filename=img.qcow2 \
        --blockdev driver=file,node-name=g0,filename=fio.dmlog \
        --blockdev driver=blklogwrites,node-name=l0,file=f0,log=g0 \
        --blockdev driver=qcow2,node-name=q0,file=l0 \
        --export "type=fuse,id=e,node-name=q0,mountpoint=mp,writable=on$expopts"; then
        bad "$d: the daemon did not start"
        continue
    fi
    if tio fio --name=v --filename=mp --size=8M --offset_increment=16M --numjobs=2 --rw=randwrite \
        --bsrange=4k-64k --iodepth=32 --ioengine=$ENGINE --direct=1 --verify=crc32c --verify_fatal=1 \
        --verify_state_save=0 --group_reporting >fio.log 2>&1; then
        ok "$d: fio randwrite iodepth=32 + verify through the mount"
    else
        bad "$d: fio failed: $(grep -iE 'verify|err' fio.log | head -3)"
    fi
    fuse_stop_check d "$d: the daemon stops cleanly"
    python3 "$DMLOG" dump fio.dmlog >dump.txt || true
    echo "  log: $(head -1 dump.txt)"
    replay_check "$d" fio.dmlog start.qcow2 img.qcow2
    if qemu-img check -q replayed; then ok "$d: qemu-img check of the replayed image is clean"
    else bad "$d: qemu-img check of the replayed image failed"; fi
done

# ---------------------------------------------------------------- 5. QMP, against QSD
cat >qmpq.py <<'EOF'
import json, socket, sys, time
path, arg = sys.argv[1], json.loads(sys.argv[2])
for _ in range(100):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        break
    except OSError:
        time.sleep(0.1)
f = s.makefile("rw")
json.loads(f.readline())
out = []
for c in [{"execute": "qmp_capabilities"}, {"execute": "blockdev-add", "arguments": arg},
          {"execute": "query-named-block-nodes", "arguments": {"flat": True}}, {"execute": "quit"}]:
    f.write(json.dumps(c) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" not in r:
            break
    out.append(r)
print(json.dumps(out[1:], indent=1, sort_keys=True))
EOF
: >q.log
ARG='{"driver":"blklogwrites","node-name":"l","file":{"driver":"file","filename":"start.raw","node-name":"f"},
"log":{"driver":"file","filename":"q.log","node-name":"g"},"log-sector-size":4096}'
for who in qsd bg; do
    if [ $who = qsd ]; then
        timeout 20 qemu-storage-daemon --chardev socket,id=c,path=$who.sock,server=on,wait=off --monitor chardev=c &
    else
        timeout 20 "$BLOCKGRAPH" daemon --chardev socket,id=c,path=$who.sock,server=on,wait=off --monitor chardev=c &
    fi
    pid=$!
    FUSE_BG_PIDS=("$pid")
    timeout 20 python3 qmpq.py $who.sock "$ARG" >$who.json || true
    wait "$pid" || true
    FUSE_BG_PIDS=()
done
if [ -s qsd.json ] && grep -q '"drv": "blklogwrites"' qsd.json && diff qsd.json bg.json >qmp.diff; then
    ok "QMP: blockdev-add and query-named-block-nodes answer as QSD's"
else
    bad "QMP: the answers differ from QSD's (< QSD, > ours):"
    { head -20 qmp.diff; head -5 qsd.json; } 2>/dev/null | sed 's/^/    /' || true
fi

finish

#!/bin/bash
# tests/integration/fuse-enospc.sh -- a writable FUSE export whose image
# lives on a host filesystem that fills up.
#
# A 48 MiB tmpfs (ENOSPC_FS=ext4: a loop-mounted 48 MiB ext4) is mounted
# in the test's directory (root only; skipped otherwise); a filler file
# takes all of it but FREE_MB. For each format (qcow2; qcow2-4k: 4 KiB
# clusters; raw; BG_TEST_FORMATS overrides) a 64 MiB image on it
# (sparse: all the chunks below fit in it) is exported writable by "blockgraph daemon", and a writer writes 256 KiB chunks of
# random data at ascending offsets through the mount, 4 at a time
# (concurrent writes, then fsync), until one fails. Asserts:
#   - the failure is ENOSPC ("No space left on device"), of the write or
#     of its fsync;
#   - the daemon is still running and the mount answers;
#   - after the filler is removed, the same export takes new writes and
#     fsyncs, which read back through the mount;
#   - the daemon exits 0 on SIGTERM and unmounts;
#   - with the daemon gone, every chunk whose write and fsync succeeded
#     reads back exactly (the image converted to raw by qemu-img), and
#     what was never written reads as zeros;
#   - qemu-img check exits 0 or 3 (leaked clusters at worst, never
#     corruption) and the qcow2 corrupt bit is clear (qemu-img info);
#   - "blockgraph img create" (qcow2; raw with preallocation=falloc) and
#     "blockgraph img convert" (to qcow2 and raw) onto the full filesystem
#     exit non-zero with one line naming the file.
#
# ENOSPC_DAEMON=qsd runs the same with qemu-storage-daemon as the daemon
# (the oracle the expectations above were checked against; the img checks
# then use qemu-img).
set -euo pipefail
# Three daemons, a few hundred small processes: about 35 s on an idle
# machine.
export FUSE_TEST_BUDGET=${FUSE_TEST_BUDGET:-100}
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools
[ "$(id -u)" = 0 ] || fuse_missing "mounting a tmpfs needs root"

FORMATS=${BG_TEST_FORMATS:-qcow2 qcow2-4k raw}
FREE_MB=4
CHUNK=$((256 * 1024))
M=$((1 << 20))

FS=$WORK/fs
mkdir "$FS"
fuse_cleanup_hook() {
    # The daemons are stopped and the FUSE mounts gone by now.
    if fuse_mounted "$FS"; then umount "$FS" 2>/dev/null || umount -l "$FS"; fi
    rm -f "$WORK/fs.ext4"
}
case ${ENOSPC_FS:-tmpfs} in
tmpfs) mount -t tmpfs -o size=48m bg-enospc "$FS" ;;
ext4)
    command -v mkfs.ext4 >/dev/null || fuse_missing "mkfs.ext4 is not installed"
    truncate -s 48M fs.ext4
    mkfs.ext4 -q -F -m 0 fs.ext4
    mount -o loop fs.ext4 "$FS"
    ;;
*) echo "ENOSPC_FS=$ENOSPC_FS: tmpfs or ext4"; exit 1 ;;
esac

if [ "${ENOSPC_DAEMON:-}" = qsd ]; then
    command -v qemu-storage-daemon >/dev/null || fuse_missing "qemu-storage-daemon is not installed"
    # lib-fuse.sh runs "$BLOCKGRAPH daemon ARGS": a wrapper that runs QSD.
    cat >qsd-wrapper <<'EOF'
#!/bin/bash
case $1 in
daemon) shift; exec qemu-storage-daemon "$@" ;;
img) shift; exec qemu-img "$@" ;;
esac
exit 2
EOF
    chmod +x qsd-wrapper
    BLOCKGRAPH=$WORK/qsd-wrapper
fi

# writer.py MOUNT LOG OFFSET COUNT STRIDE [PAR]: writes COUNT chunks of
# random data at OFFSET, OFFSET+STRIDE, ..., PAR at a time (concurrent
# pwrites from PAR threads, default 1), each group followed by fsync,
# stopping after the first group with a failure. Each chunk is saved to
# chunk.OFFSET; LOG gets "ok OFFSET" for each chunk of a group whose writes
# and fsync all succeeded, "fail OFFSET write|fsync ERRNO" for the first
# failure.
cat >writer.py <<'EOF'
import errno, os, sys, threading
mp, log, off, count, stride = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
par = int(sys.argv[6]) if len(sys.argv) > 6 else 1
CHUNK = 256 * 1024
fd = os.open(mp, os.O_RDWR)


def write(o, errs):
    data = os.urandom(CHUNK)
    with open("chunk.%d" % o, "wb") as f:
        f.write(data)
    try:
        n = os.pwrite(fd, data, o)
        if n != len(data):
            raise OSError(errno.EIO, "short write of %d bytes" % n)
    except OSError as e:
        errs.append((o, "write", e.errno))


with open(log, "a") as out:
    for g in range(0, count, par):
        offs = [off + i * stride for i in range(g, min(g + par, count))]
        errs = []
        ts = [threading.Thread(target=write, args=(o, errs)) for o in offs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if not errs:
            try:
                os.fsync(fd)
            except OSError as e:
                errs.append((offs[0], "fsync", e.errno))
        if errs:
            o, step, e = sorted(errs)[0]
            out.write("fail %d %s %s\n" % (o, step, errno.errorcode.get(e, str(e))))
            sys.exit(1)
        for o in offs:
            out.write("ok %d\n" % o)
EOF

# verify.py RAW LOG: every "ok" chunk of LOG reads back from RAW exactly,
# and everything outside the chunks ever attempted (the chunk.* files)
# reads as zeros; prints what differs.
cat >verify.py <<'EOF'
import glob, sys
raw, log = sys.argv[1], sys.argv[2]
data = open(raw, "rb").read()
bad = n = 0
for line in open(log):
    w = line.split()
    if w[0] != "ok":
        continue
    o = int(w[1])
    want = open("chunk.%d" % o, "rb").read()
    if data[o:o + len(want)] != want:
        print("chunk at %d differs" % o)
        bad += 1
    n += 1
attempted = sorted(int(f.split(".")[1]) for f in glob.glob("chunk.*"))
pos = 0
for o in attempted + [len(data)]:
    if data[pos:o].count(0) != o - pos:
        print("non-zero bytes in [%d, %d), where nothing was written" % (pos, o))
        bad += 1
    pos = max(pos, o + 256 * 1024)
print("%d acknowledged chunks checked, %d differ; the rest is zero" % (n, bad) if not bad else
      "%d acknowledged chunks checked, %d problems" % (n, bad))
sys.exit(1 if bad or n == 0 else 0)
EOF

fill_fs() {
    # The filler takes all the filesystem but FREE_MB (or everything).
    local free_kb
    free_kb=$(df -k --output=avail "$FS" | tail -1)
    rm -f "$FS/filler"
    if [ "$1" = all ]; then
        dd if=/dev/zero of="$FS/filler" bs=64k status=none 2>/dev/null || true
    else
        dd if=/dev/zero of="$FS/filler" bs=1k count=$((free_kb - FREE_MB * 1024)) status=none
    fi
}

one_line_error() {
    # one_line_error DESC FILE CMD...: CMD fails with one line naming FILE.
    local d=$1 file=$2 out rc=0
    shift 2
    out=$(timeout 60 "$@" 2>&1 >/dev/null) || rc=$?
    if [ $rc != 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ $out == *"$file"* ]]; then
        ok "$d: exit $rc: $out"
    else
        bad "$d: exit $rc, output: $out (want a non-zero exit and one line naming $file)"
    fi
}

for d in $FORMATS; do
    echo "$d"
    # qcow2-4k: 4 KiB clusters and chunks 2 MiB apart, so that every chunk
    # needs a new L2 table and refcount blocks fill up: the metadata
    # allocations meet the full filesystem too.
    fmt=${d%-4k}
    stride=$CHUNK
    copts=
    if [ "$d" = qcow2-4k ]; then
        stride=$((2 * M))
        copts=cluster_size=4096
    fi
    rm -f "$FS"/*.* "$FS"/filler chunk.* log img.raw mp
    img=$FS/img.$fmt
    qemu-img create -q -f "$fmt" ${copts:+-o $copts} "$img" 64M
    fill_fs some
    touch mp
    fuse_blockdevs "$fmt" "$img"
    if ! fuse_start d "${BLOCKDEVS[@]}" --export "type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on"; then
        bad "$d: daemon did not start"
        continue
    fi

    # Until the filesystem is full: FREE_MB leaves room for about 16 chunks.
    : >log
    rc=0
    tio python3 writer.py mp log 0 200 $stride 4 || rc=$?
    nok=$(grep -c '^ok' log || true)
    fail=$(grep '^fail' log || true)
    read -r _ foff _ _ <<<"${fail:-x 0 x x}"
    if [ $rc != 0 ] && [[ $fail == *" ENOSPC" ]] && [ $((foff + CHUNK)) -le $((64 * M)) ]; then
        ok "$d: after $nok chunks: ${fail#fail }"
    else
        bad "$d: writer exit $rc after $nok chunks, ${fail:-no failure} (want ENOSPC)"
    fi
    [ "$nok" -ge 4 ] && ok "$d: $nok chunks written before the filesystem was full" ||
        bad "$d: only $nok chunks written before the failure"
    if kill -0 "$(fuse_pid d)" 2>/dev/null && fuse_mounted "$PWD/mp" && tio stat mp >/dev/null; then
        ok "$d: the daemon runs on and the mount answers"
    else
        bad "$d: the daemon or the mount is gone after ENOSPC"
    fi
    # Writing again on the full filesystem fails the same way.
    rc=0
    tio python3 writer.py mp log $((33 * M)) 1 $stride || rc=$?
    fail2=$(grep '^fail' log | tail -1)
    [ $rc != 0 ] && [[ $fail2 == *" ENOSPC" ]] && ok "$d: a new write on the full filesystem: ENOSPC" ||
        bad "$d: a new write on the full filesystem: writer exit $rc, ${fail2:-no failure}"

    # Space is freed: the same export carries on.
    rm -f "$FS/filler"
    rc=0
    tio python3 writer.py mp log $((40 * M)) 8 $CHUNK || rc=$?
    [ $rc = 0 ] && ok "$d: after freeing space, 8 more chunks written and fsynced" ||
        bad "$d: after freeing space: writer exit $rc, $(tail -1 log)"
    good=1
    for o in $(seq $((40 * M)) $CHUNK $((40 * M + 7 * CHUNK))); do
        cmp -s <(tio dd if=mp bs=$CHUNK skip=$o count=$CHUNK iflag=skip_bytes,count_bytes status=none) \
            "chunk.$o" || good=0
    done
    [ $good = 1 ] && ok "$d: they read back through the mount" || bad "$d: they differ when read through the mount"
    fuse_stop_check d "$d"

    # With the daemon gone: what was acknowledged is there.
    timeout 60 qemu-img convert -f "$fmt" -O raw "$img" img.raw
    if out=$(python3 verify.py img.raw log); then ok "$d: $out"; else bad "$d: $out"; fi
    rm -f img.raw
    if [ "$fmt" = qcow2 ]; then
        rc=0
        out=$(timeout 60 qemu-img check -f qcow2 "$img" 2>&1) || rc=$?
        if [ $rc = 0 ] || [ $rc = 3 ]; then
            ok "$d: qemu-img check exit $rc ($(printf '%s\n' "$out" | grep -E 'leaked|No errors' | head -1))"
        else
            bad "$d: qemu-img check exit $rc: $out"
        fi
        corrupt=$(timeout 60 qemu-img info -U --output=json "$img" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"]["corrupt"])')
        [ "$corrupt" = False ] && ok "$d: the corrupt bit is clear" || bad "$d: corrupt bit: $corrupt"
    fi
done

# Tools onto the full filesystem.
echo "img onto a full filesystem"
rm -f "$FS"/*.* "$FS"/filler
head -c $((8 * M)) /dev/urandom >src.raw
fill_fs all
for fmt in qcow2 raw; do
    # A sparse raw file takes no space: preallocate it.
    o=
    [ $fmt = raw ] && o=preallocation=falloc
    one_line_error "img create -f $fmt $o" "$FS/new.$fmt" "$BLOCKGRAPH" img create -q -f $fmt ${o:+-o $o} \
        "$FS/new.$fmt" 64M
    one_line_error "img convert -O $fmt" "$FS/conv.$fmt" "$BLOCKGRAPH" img convert -f raw -O $fmt src.raw "$FS/conv.$fmt"
    rm -f "$FS/new.$fmt" "$FS/conv.$fmt"
done
finish

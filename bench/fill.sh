#!/bin/bash
# bench/fill.sh -- filling a mounted image: blockgraph daemon against
# qemu-storage-daemon with the same command line, in one run ("make bench-fill").
#
# Both daemons export a FRESH 1 GiB qcow2 image (a fresh image and a fresh
# daemon for every run) with
#   --blockdev driver=file,node-name=f,filename=IMG
#   --blockdev driver=qcow2,node-name=q,file=f[,detect-zeroes=on]
#   --export type=fuse,id=e,node-name=q,mountpoint=MNT,writable=on
# (ours as "blockgraph daemon --stats" + the same arguments), and the mount
# is filled by:
#   dd        dd if=/dev/zero of=MNT bs=4M count=256 conv=notrunc,fsync
#   cp-rand   a 1 GiB file of random data copied onto MNT, then sync MNT
#   cp-zero   a 1 GiB file of zeros (written as data) copied, then sync MNT
#   convert   qemu-img convert -n -O raw -f qcow2 src.qcow2 MNT (src: 1 GiB
#             of random data, text, zero blocks written as data, and holes)
# dd and cp run with detect-zeroes off and on (the option on the qcow2 node
# of both daemons). The daemons run alternately (ours, QSD, ours, QSD, ...)
# RUNS times per case; the time includes the final sync/close. The table
# shows the medians and the ratio QSD time / our time (> 1: we are faster).
# After the last round each daemon's image is checked against the source
# with qemu-img compare.
#
# When HARNESS names the shared fio harness (a directory with compare.sh and
# fuse_fio.sh), the script also runs fio seqwrite-1m-qd16-direct with
# cache.direct=on on the file node of both daemons (FILE_OPTS) on the
# formats FILL_FIO_FORMATS, against QSD and against fio on a raw file
# (native, O_DIRECT, same block size and depth).
#
# Environment: BLOCKGRAPH (binary), BENCH_DIR (work directory, default
# /var/tmp; needs ~5 GiB), RUNS (default 3), CASES (default: all of the
# above, e.g. "dd cp-rand"), DETECT (default "off on"), HARNESS (the shared
# harness; unset: the fio part is skipped), FILL_FIO_FORMATS (default
# "qcow2-filled qcow2 raw-filled"), RUNTIME/RAMP (fio, default 5/1).
# Needs root (FUSE mounts), qemu-img and qemu-storage-daemon.
set -u

B=${BLOCKGRAPH:-$(dirname "$0")/../build/blockgraph}
case $B in /*) ;; *) B=$PWD/$B ;; esac
RUNS=${RUNS:-3}
CASES=${CASES:-dd cp-rand cp-zero convert}
DETECT=${DETECT:-off on}
command -v qemu-img >/dev/null || { echo "qemu-img not installed"; exit 1; }
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon not installed"; exit 1; }
[ -x "$B" ] || { echo "BLOCKGRAPH=$B is not executable"; exit 1; }

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bg-bench-fill.XXXXXX")
DPID=
stop_daemon() {
    [ -n "$DPID" ] || return 0
    # SIGTERM unmounts (both daemons); the mount is removed by hand only if
    # it is still there afterwards.
    kill -TERM "$DPID" 2>/dev/null
    wait "$DPID" 2>/dev/null
    DPID=
    if grep -q " $WORK/mnt " /proc/self/mountinfo; then fusermount3 -u "$WORK/mnt" 2>/dev/null || umount -l "$WORK/mnt"; fi
    return 0
}
trap 'stop_daemon; rm -rf "$WORK"' EXIT
trap 'exit 1' INT TERM
cd "$WORK" || exit 1

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "== source files (1 GiB each): random data, zeros, mixed qcow2"
head -c 1G /dev/urandom >rand.bin
dd if=/dev/zero of=zero.bin bs=4M count=256 status=none   # zeros as data
python3 - <<'EOF'
import os, random
random.seed(42)
chunk = 1 << 20
text = (b"The quick brown fox jumps over the lazy dog. 0123456789\n" * 20000)[:chunk]
with open("mixed.raw", "wb") as f:
    f.truncate(1 << 30)
    for i in range(1024):
        kind = random.random()
        if kind < 0.30:
            f.seek(i * chunk); f.write(os.urandom(chunk))
        elif kind < 0.60:
            f.seek(i * chunk); f.write(text)
        elif kind < 0.75:
            f.seek(i * chunk); f.write(bytes(chunk))
        elif kind < 0.85:
            f.seek(i * chunk + 65536); f.write(os.urandom(8192))
EOF
qemu-img convert -f raw -O qcow2 mixed.raw src.qcow2 && rm -f mixed.raw
sync

# start_daemon WHO DETECT: a fresh 1 GiB qcow2 img.qcow2 exported on mnt
start_daemon() {
    local who=$1 dz=$2 i q=driver=qcow2,node-name=q,file=f
    [ "$dz" = on ] && q=$q,detect-zeroes=on
    rm -f img.qcow2
    qemu-img create -q -f qcow2 img.qcow2 1G
    : >mnt
    local args=(--blockdev "driver=file,node-name=f,filename=$WORK/img.qcow2" --blockdev "$q"
        --export "type=fuse,id=e,node-name=q,mountpoint=$WORK/mnt,writable=on")
    if [ "$who" = bg ]; then
        "$B" daemon --stats "${args[@]}" 2>"$WORK/bg.err" &
    else
        qemu-storage-daemon "${args[@]}" 2>"$WORK/qsd.err" &
    fi
    DPID=$!
    for ((i = 0; i < 100; i++)); do
        grep -q " $WORK/mnt " /proc/self/mountinfo && return 0
        kill -0 "$DPID" 2>/dev/null || break
        sleep 0.1
    done
    echo "FAILED: $who did not mount (detect-zeroes=$dz):" >&2
    cat "$WORK/$who.err" >&2
    DPID=
    return 1
}

# fill CASE: the timed command (seconds on stdout; 0 on failure)
fill() {
    local t0 t1 rc=0
    sync
    t0=$(date +%s.%N)
    case $1 in
        dd) dd if=/dev/zero of=mnt bs=4M count=256 conv=notrunc,fsync status=none || rc=1 ;;
        cp-rand) { cp rand.bin mnt && sync mnt; } || rc=1 ;;
        cp-zero) { cp zero.bin mnt && sync mnt; } || rc=1 ;;
        convert) qemu-img convert -n -O raw -f qcow2 src.qcow2 mnt || rc=1 ;;
    esac
    t1=$(date +%s.%N)
    [ $rc = 0 ] || { echo "FAILED: $1" >&2; echo 0; return; }
    echo "$t1 - $t0" | bc -l
}

source_of() {
    case $1 in
        dd | cp-zero) echo "-f raw -F qcow2 zero.bin" ;;
        cp-rand) echo "-f raw -F qcow2 rand.bin" ;;
        convert) echo "-f qcow2 -F qcow2 src.qcow2" ;;
    esac
}

status=0
header=
printf '\n%-26s %12s %12s %8s\n' "fill (fresh 1 GiB qcow2)" "blockgraph s" "qsd s" "ratio"
for c in $CASES; do
    dzs=$DETECT
    [ "$c" = convert ] && dzs=off
    for dz in $dzs; do
        ours=() theirs=()
        for ((i = 0; i < RUNS; i++)); do
            for who in bg qsd; do
                if start_daemon "$who" "$dz"; then
                    t=$(fill "$c")
                    stop_daemon
                else
                    t=0
                fi
                [ "$t" = 0 ] && status=1
                if [ "$who" = bg ]; then
                    ours+=("$t")
                    [ -n "$header" ] || header=$(grep -m1 -i 'export' bg.err)
                else
                    theirs+=("$t")
                fi
                if ((i == RUNS - 1)); then
                    # shellcheck disable=SC2046
                    if ! qemu-img compare -q $(source_of "$c") img.qcow2 2>/dev/null; then
                        echo "  ($who: the image differs from the source after $c, detect-zeroes=$dz!)"
                        status=1
                    fi
                fi
            done
        done
        mo=$(printf '%s\n' "${ours[@]}" | median)
        mt=$(printf '%s\n' "${theirs[@]}" | median)
        ratio=0
        [ "$(echo "$mo > 0" | bc -l)" = 1 ] && ratio=$(echo "$mt / $mo" | bc -l)
        printf '%-26s %12.3f %12.3f %8.2f\n' "$c detect-zeroes=$dz" "$mo" "$mt" "$ratio"
    done
done
rm -f img.qcow2
echo
echo "ratio = qsd time / blockgraph time (> 1: blockgraph is faster); medians of $RUNS runs"
[ -n "$header" ] && echo "our daemon's --stats: $header"

if [ -z "${HARNESS:-}" ]; then
    echo
    echo "fio seqwrite-1m-qd16-direct with cache.direct=on: skipped (set HARNESS to the fio harness directory)"
elif [ ! -x "$HARNESS/compare.sh" ] || [ ! -x "$HARNESS/fuse_fio.sh" ]; then
    echo "HARNESS=$HARNESS has no compare.sh/fuse_fio.sh"
    status=1
else
    rm -f rand.bin zero.bin src.qcow2
    export RUNTIME=${RUNTIME:-5} RAMP=${RAMP:-1} WORKDIR=$WORK/fio
    mkdir -p "$WORKDIR"
    echo
    echo "== fio seqwrite-1m-qd16-direct, cache.direct=on on the file node (MiB/s; ratio = ours / other)"
    printf '%-14s %10s %10s\n' "format" "/qsd" "/native"
    for f in ${FILL_FIO_FORMATS:-qcow2-filled qcow2 raw-filled}; do
        r=()
        for other in qsd native; do
            line=$("$HARNESS/compare.sh" --rounds "$RUNS" --workload seqwrite-1m-qd16-direct --format "$f" \
                --env-a FILE_OPTS=cache.direct=on --env-b FILE_OPTS=cache.direct=on "$other" "$B" 2>"$WORK/fio.err" | tail -1)
            [ -n "$line" ] || { line=nan; tail -3 "$WORK/fio.err"; status=1; }
            grep -h 'median' "$WORK/fio.err" | sed "s/^/    $f vs $other: /"
            r+=("$line")
        done
        printf '%-14s %10s %10s\n' "$f" "${r[0]}" "${r[1]}"
    done
fi
exit $status

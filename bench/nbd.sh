#!/usr/bin/env bash
# bench/nbd.sh -- NBD servers and clients side by side in one run
# ("make bench-nbd"; never part of make check).
#
# Servers, each on a fresh process per run, listening on a unix socket, the
# same image, the same cache mode (CACHE, default none: cache.direct=on,
# aio=io_uring) and one client (fio's nbd engine, libnbd):
#   qemu-nbd    qemu-nbd -t -f FMT --cache=... --aio=io_uring IMG
#   qsd         qemu-storage-daemon --blockdev file,... --blockdev FMT,...
#               --nbd-server addr.type=unix,... --export type=nbd,writable=on
#   bg-nbd      blockgraph nbd with qemu-nbd's command line
#   bg-daemon   blockgraph daemon with qemu-storage-daemon's command line
# Workloads (fio --ioengine=nbd, one job): randrw-4k-qd1, randrw-4k-qd64
# (50/50 random read/write, 4 KiB), seqread-1m-qd8, seqwrite-1m-qd8.
# Every round runs every server once per workload, one after another
# (interleaved: A B C D A B C D ...); the table shows medians and the
# ratio of each of ours to the better of qemu-nbd and qsd.
#
# Client: `blockgraph img bench` vs `qemu-img bench` (-d 64, 4 KiB, read
# and write; the time each reports as "Run completed in") on nbd+unix:// of
# a fresh qemu-nbd server (-t -e 0) per run, alternately; the server serves
# each image of FORMATS and then ("null") a null-co node with
# read-zeroes=off, where no disk bounds the rate.
#
# Environment:
#   BLOCKGRAPH  the binary (default build/blockgraph next to this script)
#   ROUNDS      runs per configuration (default 3; the table shows medians)
#   RUNTIME RAMP  fio seconds per run (default 10 / 2)
#   SIZE        image size (default 1G; filled with data)
#   FORMATS     default "qcow2 raw null" (null: every server serves a null-co
#               node with read-zeroes=off instead of an image: the protocol
#               path alone, no disk)
#   CONFIGS     default "qemu-nbd qsd bg-nbd bg-daemon"
#   WORKLOADS   default "randrw-4k-qd1 randrw-4k-qd64 seqread-1m-qd8 seqwrite-1m-qd8"
#   CACHE       none (default) or writeback
#   IMG_BENCH   0 skips the client part (default 1); IMG_COUNT requests (200000)
#   WORKDIR     scratch directory (default /var/tmp/blockgraph-bench-nbd)
# Exit status: 0 when every run succeeded, 1 otherwise.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
: "${BLOCKGRAPH:=$SRC/build/blockgraph}"
: "${ROUNDS:=3}"
: "${RUNTIME:=10}"
: "${RAMP:=2}"
: "${SIZE:=1G}"
: "${FORMATS:=qcow2 raw null}"
: "${CONFIGS:=qemu-nbd qsd bg-nbd bg-daemon}"
: "${WORKLOADS:=randrw-4k-qd1 randrw-4k-qd64 seqread-1m-qd8 seqwrite-1m-qd8}"
: "${CACHE:=none}"
: "${IMG_BENCH:=1}"
: "${IMG_COUNT:=200000}"
: "${WORKDIR:=/var/tmp/blockgraph-bench-nbd}"

die() { echo "bench/nbd.sh: $*" >&2; exit 1; }
[ -x "$BLOCKGRAPH" ] || die "blockgraph binary '$BLOCKGRAPH' not found (build it, or set BLOCKGRAPH)"
for t in fio qemu-nbd qemu-storage-daemon qemu-img; do
    command -v $t >/dev/null || die "$t is not installed"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"
BLOCKGRAPH=$(realpath "$BLOCKGRAPH")
case $CACHE in
    none) QNBD_CACHE=(--cache=none --aio=io_uring) FILE_OPTS=cache.direct=on,aio=io_uring ;;
    writeback) QNBD_CACHE=(--aio=io_uring) FILE_OPTS=aio=io_uring ;;
    *) die "CACHE must be none or writeback" ;;
esac

NULL_BYTES=$(numfmt --from=iec "$SIZE")
mkdir -p "$WORKDIR"
RUN=$(mktemp -d "$(realpath "$WORKDIR")/run.XXXXXX")
LINES=$RUN/results.kv
SOCK=$RUN/nbd.sock
SPID=
on_exit() {
    if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then
        kill -TERM "$SPID"
        wait "$SPID" 2>/dev/null
    fi
    rm -rf "$RUN"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# The images: SIZE of random data as raw, and the same converted to qcow2.
echo "bench/nbd.sh: preparing $SIZE images in $RUN" >&2
qemu-img create -q -f raw "$RUN/img.raw" "$SIZE" || die "qemu-img create failed"
fio --name=fill --filename="$RUN/img.raw" --rw=write --bs=1M --iodepth=16 --ioengine=io_uring --direct=1 \
    --size="$SIZE" --refill_buffers=1 --output=/dev/null || die "filling the image failed"
qemu-img convert -f raw -O qcow2 "$RUN/img.raw" "$RUN/img.qcow2" || die "qemu-img convert failed"

wait_socket() {
    local i
    for i in $(seq 200); do
        [ -S "$SOCK" ] && return 0
        kill -0 "$SPID" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# start_server CONFIG FORMAT: the server on $SOCK, its pid in SPID.
start_server() {
    local c=$1 f=$2 img=$RUN/img.$2
    rm -f "$SOCK"
    local qsd_args=(--blockdev "driver=file,node-name=f,filename=$img,$FILE_OPTS"
        --blockdev "driver=$f,node-name=q,file=f")
    local nbd_args=(-f "$f" "${QNBD_CACHE[@]}" "$img")
    if [ "$f" = null ]; then
        qsd_args=(--blockdev "driver=null-co,node-name=q,size=$NULL_BYTES,read-zeroes=off")
        nbd_args=(--image-opts "driver=null-co,size=$NULL_BYTES,read-zeroes=off")
    fi
    qsd_args+=(--nbd-server "addr.type=unix,addr.path=$SOCK"
        --export "type=nbd,id=e,node-name=q,name=,writable=on")
    case $c in
        qemu-nbd) qemu-nbd -t -k "$SOCK" "${nbd_args[@]}" 2>"$RUN/server.err" & ;;
        bg-nbd) "$BLOCKGRAPH" nbd -t -k "$SOCK" "${nbd_args[@]}" 2>"$RUN/server.err" & ;;
        qsd) qemu-storage-daemon "${qsd_args[@]}" 2>"$RUN/server.err" & ;;
        bg-daemon) "$BLOCKGRAPH" daemon "${qsd_args[@]}" 2>"$RUN/server.err" & ;;
        *) die "unknown configuration '$c'" ;;
    esac
    SPID=$!
    wait_socket
}

stop_server() {
    [ -n "$SPID" ] || return 0
    kill -TERM "$SPID" 2>/dev/null
    wait "$SPID" 2>/dev/null
    SPID=
    rm -f "$SOCK"
}

# fio_args WORKLOAD: the fio job of a workload name.
fio_args() {
    case $1 in
        randrw-4k-qd1) echo "--rw=randrw --rwmixread=50 --bs=4k --iodepth=1" ;;
        randrw-4k-qd64) echo "--rw=randrw --rwmixread=50 --bs=4k --iodepth=64" ;;
        seqread-1m-qd8) echo "--rw=read --bs=1M --iodepth=8" ;;
        seqwrite-1m-qd8) echo "--rw=write --bs=1M --iodepth=8" ;;
        *) die "unknown workload '$1'" ;;
    esac
}

# run_fio CONFIG FORMAT WORKLOAD: one result line on stdout.
run_fio() {
    local c=$1 f=$2 w=$3
    start_server "$c" "$f" || { stop_server; echo "server $c did not start: $(tail -1 "$RUN/server.err")" >&2; return 1; }
    # shellcheck disable=SC2046
    fio --name=nbd --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" $(fio_args "$w") --size="$SIZE" \
        --runtime="$RUNTIME" --ramp_time="$RAMP" --time_based=1 --norandommap=1 --randrepeat=0 \
        --output-format=json --output="$RUN/fio.json" >/dev/null 2>"$RUN/fio.err"
    local rc=$?
    stop_server
    [ $rc = 0 ] || { echo "fio failed: $(tail -2 "$RUN/fio.err")" >&2; return 1; }
    /usr/bin/python3 - "$RUN/fio.json" "$c" "$f" "$w" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print("kind=fio config=%s format=%s workload=%s read_iops=%.1f write_iops=%.1f read_bw_kib=%d write_bw_kib=%d"
      % (sys.argv[2], sys.argv[3], sys.argv[4], j["read"]["iops"], j["write"]["iops"],
         j["read"]["bw"], j["write"]["bw"]))
EOF
}

status=0
: >"$LINES"
echo "bench/nbd.sh: $(nproc) CPUs, kernel $(uname -r); rounds=$ROUNDS runtime=${RUNTIME}s cache=$CACHE" >&2
for f in $FORMATS; do
    for w in $WORKLOADS; do
        for ((r = 1; r <= ROUNDS; r++)); do
            for c in $CONFIGS; do
                echo "[$(date +%T)] $f $w round $r/$ROUNDS: $c" >&2
                if line=$(run_fio "$c" "$f" "$w"); then
                    echo "$line" | tee -a "$LINES" >&2
                else
                    echo "  run failed: $c $f $w" >&2
                    status=1
                fi
            done
        done
    done
done

# The client: img bench through nbd+unix:// on one qemu-nbd per run, serving
# each image and, as "null", a null-co node that sends data without touching
# a disk (so the clients' own costs decide, not the server's disk).
if [ "$IMG_BENCH" = 1 ]; then
    for f in ${FORMATS//null/} null; do
        if [ $f = null ]; then
            served=(--image-opts "driver=null-co,size=$NULL_BYTES,read-zeroes=off")
        else
            served=(-f "$f" "${QNBD_CACHE[@]}" "$RUN/img.$f")
        fi
        for mode in read write; do
            for ((r = 1; r <= ROUNDS; r++)); do
                for tool in qemu-img blockgraph; do
                    rm -f "$SOCK"
                    qemu-nbd -t -e 0 -k "$SOCK" "${served[@]}" 2>"$RUN/server.err" &
                    SPID=$!
                    wait_socket || { echo "qemu-nbd did not start" >&2; status=1; stop_server; continue; }
                    wflag=()
                    [ $mode = write ] && wflag=(-w)
                    cmd=(qemu-img)
                    [ $tool = blockgraph ] && cmd=("$BLOCKGRAPH" img)
                    echo "[$(date +%T)] img bench $f $mode round $r/$ROUNDS: $tool" >&2
                    if "${cmd[@]}" bench -f raw -c "$IMG_COUNT" -d 64 -s 4k "${wflag[@]}" \
                        "nbd+unix:///?socket=$SOCK" >"$RUN/img.out" 2>&1 &&
                        secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' "$RUN/img.out") &&
                        [ -n "$secs" ]; then
                        line="kind=img config=$tool format=$f workload=imgbench-$mode-4k-qd64 seconds=$secs"
                        echo "$line" | tee -a "$LINES" >&2
                    else
                        echo "  img bench failed ($tool $f $mode): $(tail -1 "$RUN/img.out")" >&2
                        status=1
                    fi
                    stop_server
                done
            done
        done
    done
fi

echo
echo "## NBD: medians of $ROUNDS interleaved runs ($(nproc) CPUs, kernel $(uname -r), cache=$CACHE)"
echo "rand* = total IOPS (read+write), seq* = MiB/s; ratio = ours / the better of theirs; img bench: seconds per run, ratio = qemu-img time / ours"
/usr/bin/python3 - "$LINES" <<'EOF'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
    w = kv["workload"]
    if kv["kind"] == "img":
        v = None
        try:
            v = float(kv["seconds"])
        except ValueError:
            continue
        v = 1.0 / v  # runs per second: ratios of request rates (same count)
    elif w.startswith("seq"):
        v = (float(kv["read_bw_kib"]) + float(kv["write_bw_kib"])) / 1024
    else:
        v = float(kv["read_iops"]) + float(kv["write_iops"])
    rows.setdefault((kv["kind"], kv["format"], w), {}).setdefault(kv["config"], []).append(v)

def med(d, c):
    return statistics.median(d[c]) if c in d else None
def fmt(v):
    if v is None: return "-"
    return "%.1fk" % (v / 1000) if v >= 10000 else "%.0f" % v
def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"

cfgs = ["qemu-nbd", "qsd", "bg-nbd", "bg-daemon"]
print("| format | workload | " + " | ".join(cfgs) + " | bg-nbd/best | bg-daemon/best |")
print("|---|---|" + "---|" * (len(cfgs) + 2))
for (kind, f, w), d in sorted(rows.items()):
    if kind != "fio": continue
    m = {c: med(d, c) for c in cfgs}
    theirs = [m[c] for c in ("qemu-nbd", "qsd") if m[c] is not None]
    best = max(theirs) if theirs else None
    print("| %s | %s | %s | %s | %s |" % (f, w, " | ".join(fmt(m[c]) for c in cfgs),
          ratio(m["bg-nbd"], best), ratio(m["bg-daemon"], best)))
img = [(k, d) for k, d in sorted(rows.items()) if k[0] == "img"]
if img:
    print()
    print("| format | workload | qemu-img s | blockgraph img s | ratio (qemu-img time / ours) |")
    print("|---|---|---|---|---|")
    for (kind, f, w), d in img:
        q, b = med(d, "qemu-img"), med(d, "blockgraph")
        print("| %s | %s | %s | %s | %s |" % (f, w, "%.2f" % (1 / q) if q else "-", "%.2f" % (1 / b) if b else "-",
              ratio(b, q)))
EOF
cp "$LINES" "$WORKDIR/nbd-$(date +%Y%m%d-%H%M%S).kv"
exit "$status"

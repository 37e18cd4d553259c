#!/usr/bin/env bash
# bench/rbd.sh -- blockgraph's rbd driver against QEMU's, side by side in one
# run, on a one-node Ceph cluster the script starts and stops
# (scripts/ceph-cluster.sh; "make bench-rbd"; never part of make check).
#
# One rbd image (SIZE, filled with data first) serves every run.
#
# (a) Client: `blockgraph img bench` vs `qemu-img bench` on rbd:rbd/IMAGE
#     (-f raw -d 64 -s 4k -c IMG_COUNT, read and write; the time each
#     reports as "Run completed in"), alternately.
# (b) FUSE: the rbd image exported as a raw file, fio through the kernel:
#       qsd    qemu-storage-daemon --blockdev driver=rbd,node-name=q,pool=rbd,
#              image=IMAGE,conf=CONF --export type=fuse,...,writable=on
#       bg     blockgraph daemon with the same command line
#     fio --ioengine=io_uring --numjobs=1 on the mounted file.
# (c) Ceiling:
#       fio-rbd  fio --ioengine=rbd straight to the cluster (librbd in fio,
#                no block layer, no FUSE), the same job.
# Workloads: randrw-4k-qd1-direct, randrw-4k-qd64-direct (50/50 random
# read/write, 4 KiB, O_DIRECT through FUSE) and randrw-4k-qd64, the seed
# job of bench/fuse.sh (buffered through FUSE; for fio-rbd the same job as
# the direct one, there being no page cache).  Every round runs every
# configuration once per workload, one after another (interleaved); the
# tables show medians and ratios measured in this one run.
#
# Environment:
#   BLOCKGRAPH  the binary (default build/blockgraph next to this script)
#   ROUNDS      runs per configuration (default 3; the tables show medians)
#   RUNTIME RAMP  fio seconds per run (default 10 / 2)
#   SIZE        rbd image size (default 1G); the memstore OSD gets 3x that
#   CONFIGS     default "qsd bg fio-rbd"
#   WORKLOADS   default "randrw-4k-qd1-direct randrw-4k-qd64-direct randrw-4k-qd64"
#   IMG_BENCH   0 skips part (a) (default 1); IMG_COUNT requests (default 100000)
#   CLUSTER_OPTS  extra scripts/ceph-cluster.sh start options (e.g. --bluestore)
#   WORKDIR     scratch directory (default /var/tmp/blockgraph-bench-rbd)
#   QUIET_WAIT  seconds to wait before each run for the other processes to
#               leave the CPUs nearly idle (QUIET_MAX, default 0.10 busy);
#               default 30.  Each result line records "busy=" (the fraction
#               of all CPUs busy in the 0.5 s before the run).
# Exit status: 0 when every run succeeded, 1 otherwise.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
: "${BLOCKGRAPH:=$SRC/build/blockgraph}"
: "${ROUNDS:=3}"
: "${RUNTIME:=10}"
: "${RAMP:=2}"
: "${SIZE:=1G}"
: "${CONFIGS:=qsd bg fio-rbd}"
: "${WORKLOADS:=randrw-4k-qd1-direct randrw-4k-qd64-direct randrw-4k-qd64}"
: "${IMG_BENCH:=1}"
: "${IMG_COUNT:=100000}"
: "${CLUSTER_OPTS:=}"
: "${WORKDIR:=/var/tmp/blockgraph-bench-rbd}"
: "${QUIET_WAIT:=30}"
: "${QUIET_MAX:=0.10}"

die() { echo "bench/rbd.sh: $*" >&2; exit 1; }
[ -x "$BLOCKGRAPH" ] || die "blockgraph binary '$BLOCKGRAPH' not found (build it, or set BLOCKGRAPH)"
for t in fio qemu-storage-daemon qemu-img rbd fusermount3; do
    command -v $t >/dev/null || die "$t is not installed (scripts/install-deps.sh)"
done
fio --enghelp=rbd >/dev/null 2>&1 || die "this fio has no rbd engine"
BLOCKGRAPH=$(realpath "$BLOCKGRAPH")
BYTES=$(numfmt --from=iec "$SIZE")

mkdir -p "$WORKDIR"
RUN=$(mktemp -d "$(realpath "$WORKDIR")/run.XXXXXX")
CLUSTER=$RUN/ceph
LINES=$RUN/results.kv
MNT=$RUN/mnt
IMAGE=bench
DPID=
stop_daemon() {
    [ -n "$DPID" ] || return 0
    kill -TERM "$DPID" 2>/dev/null
    local i
    for ((i = 0; i < 200; i++)); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.05; done
    if grep -q " $MNT fuse" /proc/mounts; then fusermount3 -u -z "$MNT" 2>/dev/null; fi
    kill -0 "$DPID" 2>/dev/null && kill -KILL "$DPID" 2>/dev/null
    wait "$DPID" 2>/dev/null
    DPID=
}
on_exit() {
    stop_daemon
    "$SRC/scripts/ceph-cluster.sh" stop "$CLUSTER" --purge >/dev/null 2>&1
    rm -rf "$RUN"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# shellcheck disable=SC2086  # CLUSTER_OPTS is a word list
"$SRC/scripts/ceph-cluster.sh" start "$CLUSTER" --size $((3 * BYTES)) $CLUSTER_OPTS ||
    die "could not start the cluster"
export CEPH_CONF=$CLUSTER/ceph.conf
NAME="rbd:rbd/$IMAGE:conf=$CEPH_CONF"
echo "bench/rbd.sh: filling a $SIZE rbd image" >&2
rbd create --size "$((BYTES / 1048576))M" "rbd/$IMAGE" || die "rbd create failed"
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$IMAGE" \
    --rw=write --bs=4M --iodepth=8 --size="$BYTES" --refill_buffers=1 \
    --output=/dev/null || die "filling the image failed"

# busy: fraction of all CPUs busy during 0.5 s (other processes' load).
busy() {
    local a b
    a=$(awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat)
    sleep 0.5
    b=$(awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); t = y[2] - x[2];
        printf "%.2f\n", (t > 0) ? (y[1] - x[1]) / t : 0 }'
}

# quiet: waits up to QUIET_WAIT s for busy <= QUIET_MAX; prints the last busy.
quiet() {
    local b start=$SECONDS
    while :; do
        b=$(busy)
        awk -v b="$b" -v m="$QUIET_MAX" 'BEGIN { exit !(b <= m) }' && break
        ((SECONDS - start < QUIET_WAIT)) || break
        sleep 1
    done
    echo "$b"
}

start_daemon() {
    local c=$1 i
    : >"$MNT"
    local args=(--blockdev "driver=rbd,node-name=q,pool=rbd,image=$IMAGE,conf=$CEPH_CONF"
        --export "type=fuse,id=e,node-name=q,mountpoint=$MNT,writable=on")
    case $c in
        qsd) qemu-storage-daemon "${args[@]}" >"$RUN/daemon.err" 2>&1 & ;;
        bg) "$BLOCKGRAPH" daemon "${args[@]}" >"$RUN/daemon.err" 2>&1 & ;;
        *) die "unknown configuration '$c'" ;;
    esac
    DPID=$!
    for ((i = 0; i < 400; i++)); do
        grep -q " $MNT fuse" /proc/mounts && return 0
        kill -0 "$DPID" 2>/dev/null || break
        sleep 0.05
    done
    echo "daemon $c did not mount: $(tail -2 "$RUN/daemon.err")" >&2
    stop_daemon
    return 1
}

# run_fio CONFIG WORKLOAD: one result line on stdout.
run_fio() {
    local c=$1 w=$2 qd target direct=0
    case $w in
        randrw-4k-qd1-direct) qd=1 direct=1 ;;
        randrw-4k-qd64-direct) qd=64 direct=1 ;;
        randrw-4k-qd64) qd=64 ;;
        *) die "unknown workload '$w'" ;;
    esac
    if [ "$c" = fio-rbd ]; then
        target=(--ioengine=rbd --clientname=admin --pool=rbd --rbdname="$IMAGE")
    else
        start_daemon "$c" || return 1
        target=(--ioengine=io_uring --filename="$MNT" --direct="$direct")
    fi
    fio --name=job1 "${target[@]}" --numjobs=1 --rw=randrw --bs=4k --iodepth=$qd \
        --size="$BYTES" --runtime="$RUNTIME" --ramp_time="$RAMP" --time_based=1 \
        --output-format=json --output="$RUN/fio.json" >/dev/null 2>"$RUN/fio.err"
    local rc=$?
    stop_daemon
    [ $rc = 0 ] || { echo "fio failed: $(tail -2 "$RUN/fio.err")" >&2; return 1; }
    /usr/bin/python3 - "$RUN/fio.json" "$c" "$w" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print("kind=fio config=%s workload=%s read_iops=%.1f write_iops=%.1f"
      % (sys.argv[2], sys.argv[3], j["read"]["iops"], j["write"]["iops"]))
EOF
}

status=0
: >"$LINES"
echo "bench/rbd.sh: $(nproc) CPUs, kernel $(uname -r); rounds=$ROUNDS runtime=${RUNTIME}s size=$SIZE" >&2

# (a) img bench vs qemu-img bench on the same image.
if [ "$IMG_BENCH" = 1 ]; then
    for mode in read write; do
        for ((r = 1; r <= ROUNDS; r++)); do
            for tool in qemu-img blockgraph; do
                cmd=(qemu-img)
                [ $tool = blockgraph ] && cmd=("$BLOCKGRAPH" img)
                wflag=()
                [ $mode = write ] && wflag=(-w)
                b=$(quiet)
                echo "[$(date +%T)] img bench $mode round $r/$ROUNDS: $tool (busy $b)" >&2
                if "${cmd[@]}" bench -f raw -c "$IMG_COUNT" -d 64 -s 4k "${wflag[@]}" "$NAME" \
                    >"$RUN/img.out" 2>&1 &&
                    secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' "$RUN/img.out") &&
                    [ -n "$secs" ]; then
                    echo "kind=img config=$tool workload=imgbench-$mode-4k-qd64 seconds=$secs busy=$b" |
                        tee -a "$LINES" >&2
                else
                    echo "  img bench failed ($tool $mode): $(tail -1 "$RUN/img.out")" >&2
                    status=1
                fi
            done
        done
    done
fi

# (b) and (c): fio through FUSE (qsd, bg) and straight to the cluster.
for w in $WORKLOADS; do
    for ((r = 1; r <= ROUNDS; r++)); do
        for c in $CONFIGS; do
            b=$(quiet)
            echo "[$(date +%T)] $w round $r/$ROUNDS: $c (busy $b)" >&2
            if line=$(run_fio "$c" "$w"); then
                echo "$line busy=$b" | tee -a "$LINES" >&2
            else
                echo "  run failed: $c $w" >&2
                status=1
            fi
        done
    done
done

echo
echo "## Ceph RBD: medians of $ROUNDS interleaved runs ($(nproc) CPUs, kernel $(uname -r), one-node cluster${CLUSTER_OPTS:+ $CLUSTER_OPTS})"
/usr/bin/python3 - "$LINES" <<'EOF'
import sys, statistics
rows = {}
busy = []
for line in open(sys.argv[1]):
    kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
    busy.append(float(kv.get("busy", "0")))
    if kv["kind"] == "img":
        v = float(kv["seconds"])
    else:
        v = float(kv["read_iops"]) + float(kv["write_iops"])
    rows.setdefault((kv["kind"], kv["workload"]), {}).setdefault(kv["config"], []).append(v)

def med(d, c):
    return statistics.median(d[c]) if c in d else None
def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"
def fmt(v):
    return "-" if v is None else "%.0f" % v

if busy:
    print("other load before the runs (fraction of all CPUs busy): median %.2f, max %.2f"
          % (statistics.median(busy), max(busy)))
img = [(k, d) for k, d in sorted(rows.items()) if k[0] == "img"]
if img:
    print()
    print("img bench (seconds per run; ratio = qemu-img time / ours, > 1: ours faster)")
    print()
    print("| workload | qemu-img s | blockgraph img s | ratio |")
    print("|---|---|---|---|")
    for (kind, w), d in img:
        q, b = med(d, "qemu-img"), med(d, "blockgraph")
        print("| %s | %s | %s | %s |" % (w, "%.2f" % q if q else "-", "%.2f" % b if b else "-", ratio(q, b)))
cfgs = ["qsd", "bg", "fio-rbd"]
fio = [(k, d) for k, d in sorted(rows.items()) if k[0] == "fio"]
if fio:
    print()
    print("fio (total IOPS, read + write; qsd and bg through FUSE, fio-rbd straight to librbd)")
    print()
    print("| workload | " + " | ".join(cfgs) + " | bg/qsd | bg/fio-rbd | qsd/fio-rbd |")
    print("|---|" + "---|" * (len(cfgs) + 3))
    for (kind, w), d in fio:
        m = {c: med(d, c) for c in cfgs}
        print("| %s | %s | %s | %s | %s |" % (w, " | ".join(fmt(m[c]) for c in cfgs),
              ratio(m["bg"], m["qsd"]), ratio(m["bg"], m["fio-rbd"]), ratio(m["qsd"], m["fio-rbd"])))
EOF
cp "$LINES" "$WORKDIR/rbd-$(date +%Y%m%d-%H%M%S).kv"
exit "$status"

#!/usr/bin/env bash
# bench/fuse.sh -- blockgraph daemon vs qemu-storage-daemon through FUSE,
# side by side in one run (make bench-fuse; never part of make check).
#
# For every format and workload, each round runs every configuration once,
# one after another (A, B, C, A, B, C, ...), each with a fresh image and a
# fresh daemon, through the shared harness (../shared/bench/fuse_fio.sh,
# native_fio.sh), then prints a table of medians and ratios.
#
# Configurations:
#   qsd       qemu-storage-daemon, the issue's command line (writable=on)
#   bg        blockgraph daemon, the same command line, requests read from
#             /dev/fuse (BLOCKGRAPH_FUSE_URING=0)
#   bg-uring  the same over FUSE-over-io_uring: the fuse module parameter
#             enable_uring is set to Y for these runs only (root)
#   bg-pt     blockgraph daemon, same line plus growable=on on the export: on
#             raw images this is where FUSE passthrough is used (raw formats only)
#   native    fio on the image file itself, no FUSE (raw formats only)
#   bg-base   like bg, with the binary BASELINE (an older build, for
#             before/after comparisons of a change in one interleaved run)
#   bg-null   the ceiling of every format: the bg daemon with the same
#             --export line, its --blockdev lines replaced by one null-co
#             node of the image's size (read-zeroes=on: reads return data,
#             writes are dropped); only our transport, nothing behind it.
#             The table shows each configuration's share of it (x/null).
# and, when `blockgraph img bench` exists, `qemu-img bench` against it
# (../shared/bench/qemu_img_bench.sh, depth 64, 4k, io_uring, cache none).
#
# Environment:
#   BLOCKGRAPH   the binary (default: build/blockgraph next to this script)
#   BASELINE     the binary of configuration bg-base (required for it)
#   HARNESS      the shared harness directory (default ../shared/bench)
#   ROUNDS       runs per configuration (default 3); the table shows medians
#   RUNTIME RAMP fio seconds per run (default 10 / 2)
#   WORKLOADS    harness workload names (default: the issue 9 set)
#   FORMATS      default "qcow2 qcow2-filled raw-filled"
#   CONFIGS      default "qsd bg bg-null bg-uring bg-pt native"
#   IMG_BENCH    0 skips the img bench part (default 1)
#   MEMORY       0 skips the memory part (default 1): daemon RSS with one 1 TiB
#                sparse qcow2 export under fio randrw 4k qd64 (direct, over the
#                whole TiB), and with 1 vs 5 such exports idle (cost per export)
#   OUT          directory for the raw result lines (default $WORKDIR/results)
#   WORKDIR      scratch directory (default /var/tmp/blockgraph-bench)
#   QUIET_WAIT   seconds to wait for a quiet host before each run (default 20)
# Exit status: 0 when every run succeeded, 1 otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
: "${BLOCKGRAPH:=$SRC/build/blockgraph}"
: "${HARNESS:=$(cd "$SRC/.." && pwd)/shared/bench}"
: "${ROUNDS:=3}"
: "${RUNTIME:=10}"
: "${RAMP:=2}"
: "${WORKLOADS:=randrw-4k-qd1 randrw-4k-qd1-direct randrw-4k-qd64 randrw-4k-qd64-direct seqread-1m-qd16-direct seqwrite-1m-qd16-direct}"
: "${FORMATS:=qcow2 qcow2-filled raw-filled}"
: "${CONFIGS:=qsd bg bg-null bg-uring bg-pt native}"
: "${IMG_BENCH:=1}"
: "${MEMORY:=1}"
: "${WORKDIR:=/var/tmp/blockgraph-bench}"
: "${QUIET_WAIT:=20}"
: "${OUT:=$WORKDIR/results}"
export RUNTIME RAMP WORKDIR QUIET_WAIT

die() { echo "bench/fuse.sh: $*" >&2; exit 1; }
[ -x "$BLOCKGRAPH" ] || die "blockgraph binary '$BLOCKGRAPH' not found (build it, or set BLOCKGRAPH)"
[ -x "$HARNESS/fuse_fio.sh" ] || die "benchmark harness not found in '$HARNESS' (set HARNESS)"
command -v fio >/dev/null || die "fio is not installed"
command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon is not installed"
BLOCKGRAPH=$(realpath "$BLOCKGRAPH")

mkdir -p "$WORKDIR" "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)
LINES=$OUT/fuse-$STAMP.kv
: >"$LINES"

# Wrappers taking qemu-storage-daemon's command line.
BG_WRAP=$WORKDIR/bg
PT_WRAP=$WORKDIR/bg-pt
BASE_WRAP=$WORKDIR/bg-base
NULL_WRAP=$WORKDIR/bg-null
printf '#!/bin/sh\nexec %s daemon --stats "$@"\n' "$BLOCKGRAPH" >"$BG_WRAP"
if [ -n "${BASELINE:-}" ]; then
    printf '#!/bin/sh\nexec %s daemon --stats "$@"\n' "$(realpath "$BASELINE")" >"$BASE_WRAP"
    chmod +x "$BASE_WRAP"
fi
cat >"$PT_WRAP" <<EOF
#!/bin/bash
# blockgraph daemon with growable=on added to every --export (passthrough)
args=()
for a in "\$@"; do
    case \$a in type=fuse,*) a="\$a,growable=on" ;; esac
    args+=("\$a")
done
exec $BLOCKGRAPH daemon --stats "\${args[@]}"
EOF
NULL_SIZE=$(numfmt --from=iec "${SIZE:-1G}") || die "cannot parse SIZE '${SIZE:-1G}'"
cat >"$NULL_WRAP" <<EOF
#!/bin/bash
# blockgraph daemon serving a null-co node named q instead of the image's
# nodes; the --export line and every other argument are kept as given
args=(--blockdev driver=null-co,node-name=q,size=$NULL_SIZE,read-zeroes=on)
skip=0
for a in "\$@"; do
    if [ \$skip = 1 ]; then skip=0; continue; fi
    case \$a in --blockdev) skip=1; continue ;; --blockdev=*) continue ;; esac
    args+=("\$a")
done
exec $BLOCKGRAPH daemon --stats "\${args[@]}"
EOF
chmod +x "$BG_WRAP" "$PT_WRAP" "$NULL_WRAP"

URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_SAVED=$(cat "$URING_PARAM" 2>/dev/null || echo)
restore() { if [ -n "$URING_SAVED" ] && [ -w "$URING_PARAM" ]; then echo "$URING_SAVED" >"$URING_PARAM"; fi; }
MPID=
on_exit() {
    restore
    # A daemon of the memory part still running: SIGTERM unmounts it.
    if [ -n "$MPID" ] && kill -0 "$MPID" 2>/dev/null; then kill -TERM "$MPID"; wait "$MPID" || true; fi
}
trap on_exit EXIT

is_raw() { case $1 in raw*) return 0 ;; esac; return 1; }

run_config() { # CONFIG FORMAT WORKLOAD -> result line on stdout
    local c=$1 f=$2 w=$3
    case $c in
        qsd) WORKLOADS=$w LABEL=qsd "$HARNESS/fuse_fio.sh" qsd "$f" ;;
        bg) BLOCKGRAPH_FUSE_URING=0 WORKLOADS=$w LABEL=bg "$HARNESS/fuse_fio.sh" "$BG_WRAP" "$f" ;;
        bg-base)
            [ -x "$BASE_WRAP" ] || { echo "configuration bg-base needs BASELINE=<binary>" >&2; return 1; }
            BLOCKGRAPH_FUSE_URING=0 WORKLOADS=$w LABEL=bg-base "$HARNESS/fuse_fio.sh" "$BASE_WRAP" "$f" ;;
        bg-uring)
            [ -w "$URING_PARAM" ] || { echo "cannot enable FUSE-over-io_uring ($URING_PARAM)" >&2; return 1; }
            echo Y >"$URING_PARAM"
            local rc=0
            WORKLOADS=$w LABEL=bg-uring "$HARNESS/fuse_fio.sh" "$BG_WRAP" "$f" || rc=$?
            restore
            return $rc ;;
        bg-null) BLOCKGRAPH_FUSE_URING=0 WORKLOADS=$w LABEL=bg-null "$HARNESS/fuse_fio.sh" "$NULL_WRAP" "$f" ;;
        bg-pt) BLOCKGRAPH_FUSE_URING=0 WORKLOADS=$w LABEL=bg-pt "$HARNESS/fuse_fio.sh" "$PT_WRAP" "$f" ;;
        native) WORKLOADS=$w LABEL=native "$HARNESS/native_fio.sh" "$f" ;;
        *) die "unknown configuration '$c'" ;;
    esac
}

status=0
echo "bench/fuse.sh: $(nproc) CPUs, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" >&2
echo "bench/fuse.sh: rounds=$ROUNDS runtime=${RUNTIME}s formats=[$FORMATS] configs=[$CONFIGS]" >&2
for f in $FORMATS; do
    for w in $WORKLOADS; do
        for ((r = 1; r <= ROUNDS; r++)); do
            for c in $CONFIGS; do
                if [ "$c" = bg-pt ] || [ "$c" = native ]; then is_raw "$f" || continue; fi
                echo "[$(date +%T)] $f $w round $r/$ROUNDS: $c" >&2
                if line=$(run_config "$c" "$f" "$w" 2>"$WORKDIR/last.err"); then
                    echo "$line" | tee -a "$LINES" >&2
                else
                    echo "  run failed: $c $f $w (see below)" >&2
                    tail -5 "$WORKDIR/last.err" >&2
                    status=1
                fi
                # Per-request counters of our daemon (from --stats at exit).
                grep -h 'per read/write request' "$WORKDIR/last.err" | sed "s/^ *daemon: */    $c: /" >&2 || true
                grep -h 'passthrough: on\|fuse-over-io_uring: on' "$WORKDIR/last.err" | sed "s/^ *daemon: */    $c: /" >&2 || true
            done
        done
    done
done

echo
echo "## FUSE: medians of $ROUNDS interleaved runs ($(nproc) CPUs, kernel $(uname -r))"
echo "rand* = total IOPS (read+write), seq* = MiB/s"
python3 - "$LINES" <<'EOF'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
    if kv.get("fio_rc") != "0":
        continue
    w = kv["workload"]
    try:
        if w.startswith("seq"):
            v = (float(kv["read_bw_kib"]) + float(kv["write_bw_kib"])) / 1024
        else:
            v = float(kv["read_iops"]) + float(kv["write_iops"])
    except (KeyError, ValueError):
        continue
    rows.setdefault((kv["format"], w), {}).setdefault(kv["daemon"], []).append(v)
cfgs = ["qsd", "bg", "bg-null", "bg-base", "bg-uring", "bg-pt", "native"]
print("| format | workload | " + " | ".join(cfgs) + " | bg/qsd | bg/null | bg/bg-base | bg-uring/qsd | bg-uring/null | bg-pt/native | bg/native |")
print("|---|---|" + "---|" * (len(cfgs) + 7))
def med(d, c):
    return statistics.median(d[c]) if c in d else None
def fmt(v):
    if v is None: return "-"
    return "%.1fk" % (v / 1000) if v >= 10000 else "%.0f" % v
def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"
for (f, w), d in sorted(rows.items()):
    m = {c: med(d, c) for c in cfgs}
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (f, w, " | ".join(fmt(m[c]) for c in cfgs),
          ratio(m["bg"], m["qsd"]), ratio(m["bg"], m["bg-null"]), ratio(m["bg"], m["bg-base"]),
          ratio(m["bg-uring"], m["qsd"]), ratio(m["bg-uring"], m["bg-null"]),
          ratio(m["bg-pt"], m["native"]), ratio(m["bg"], m["native"])))
EOF
echo "raw result lines: $LINES"

if [ "$IMG_BENCH" = 1 ]; then
    if "$BLOCKGRAPH" img bench --help >/dev/null 2>&1; then
        IMG_WRAP=$WORKDIR/bg-img
        printf '#!/bin/sh\nexec %s img "$@"\n' "$BLOCKGRAPH" >"$IMG_WRAP"
        chmod +x "$IMG_WRAP"
        echo
        echo "## img bench (no FUSE): qemu-img vs blockgraph img, depth 64, 4k, io_uring, cache none"
        "$HARNESS/qemu_img_bench.sh" --rounds "$ROUNDS" --formats "raw-filled qcow2-filled" qemu-img "$IMG_WRAP" \
            2>"$WORKDIR/img-bench.err" | tee "$OUT/img-bench-$STAMP.kv" | grep -iE 'ratio|median' || status=1
    else
        echo
        echo "## img bench: skipped ('$BLOCKGRAPH img bench' does not exist in this build)"
    fi
fi
if [ "$MEMORY" = 1 ]; then
    echo
    echo "## memory: blockgraph daemon RSS (default cache sizes)"
    MD=$WORKDIR/mem
    rm -rf "$MD"
    mkdir -p "$MD"
    mem_daemon() { # N-EXPORTS -> starts the daemon, sets MPID; mountpoints $MD/mN
        local n=$1 i args=()
        for ((i = 0; i < n; i++)); do
            qemu-img create -q -f qcow2 "$MD/img$i.qcow2" 1T
            : >"$MD/m$i"
            args+=(--blockdev "driver=file,node-name=f$i,filename=$MD/img$i.qcow2"
                --blockdev "driver=qcow2,node-name=q$i,file=f$i"
                --export "type=fuse,id=e$i,node-name=q$i,mountpoint=$MD/m$i,writable=on")
        done
        BLOCKGRAPH_FUSE_URING=0 "$BLOCKGRAPH" daemon "${args[@]}" --pidfile "$MD/pid" 2>"$MD/daemon.err" &
        MPID=$!
        for ((i = 0; i < 100; i++)); do
            grep -q " $MD/m$((n - 1)) " /proc/self/mountinfo && break
            sleep 0.1
        done
    }
    rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
    hwm_kib() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }
    mem_daemon 1
    fio --name=m --filename="$MD/m0" --ioengine=io_uring --rw=randrw --bs=4k --iodepth=64 --direct=1 \
        --runtime="$RUNTIME" --time_based=1 --norandommap=1 --output=/dev/null || status=1
    echo "one 1 TiB qcow2 export after randrw 4k qd64 over the whole TiB: RSS $(($(rss_kib $MPID) / 1024)) MiB," \
        "peak $(($(hwm_kib $MPID) / 1024)) MiB (target < 64 MiB)"
    kill -TERM $MPID
    wait $MPID || status=1
    MPID=
    idle1=0
    for n in 1 5; do
        mem_daemon $n
        sleep 1
        r=$(rss_kib $MPID)
        echo "$n idle export(s): RSS $((r / 1024)) MiB"
        [ $n = 1 ] && idle1=$r
        [ $n = 5 ] && echo "cost per extra export: $(((r - idle1) / 4)) KiB (target < 4 MiB)"
        kill -TERM $MPID
        wait $MPID || status=1
        MPID=
    done
    rm -rf "$MD"
fi
exit "$status"

# tests/integration/lib-fuse.sh -- helpers shared by the fuse-*.sh tests.
# Sourced, not run: deliberately not executable, so check-integration lists
# it as ignored.
#
# The fuse-*.sh tests mount FUSE exports with "blockgraph daemon" and judge
# what the mount does with the real qemu-img (and fio, python3, coreutils).
#
# Provides:
#   fuse_require_tools [TOOL...]
#                     skip (77) unless qemu-img, fusermount3, python3, the
#                     TOOLs and an accessible /dev/fuse exist; with CI set,
#                     a missing tool is a failure instead
#   FUSE_FORMATS      image formats to loop over (BG_TEST_FORMATS, default
#                     "raw"; add qcow2 once its driver exists)
#   WORK              a temporary directory (physical path), removed on exit;
#                     the test runs in it
#   ok/bad/finish     result accounting (finish exits 1 if any check failed)
#   fuse_image FMT FILE SIZE      qemu-img create -f FMT FILE SIZE
#   fuse_blockdevs FMT FILE [FILE_OPTS [FMT_OPTS]]
#                     sets BLOCKDEVS to the --blockdev arguments opening FILE
#                     as node "file0" (driver=file[,FILE_OPTS]) with node
#                     "fmt0" (driver=FMT[,FMT_OPTS]) on top; export
#                     node-name=fmt0
#   fuse_start NAME DAEMON_ARGS...
#                     runs "blockgraph daemon DAEMON_ARGS --pidfile ..." in
#                     the background under timeout (FUSE_DAEMON_TIMEOUT,
#                     default the time budget), stderr to $WORK/NAME.err,
#                     and waits until every mountpoint= of its --export
#                     arguments is in /proc/self/mountinfo; returns 1 (after
#                     printing the daemon's stderr) if it exits or does not
#                     mount within 10 s
#   fuse_pid NAME     the daemon's pid
#   fuse_stop NAME [SIGNAL]
#                     sends SIGNAL (default TERM), waits (at most 20 s, then
#                     SIGKILL) and sets FUSE_RC to the exit status (137 if it
#                     had to be killed); if a mountpoint was still mounted
#                     after the exit, unmounts it and sets FUSE_LEFT_MOUNTED=1
#   fuse_mounted PATH true if PATH is a mount point now
#   tio CMD...        runs CMD under a 30 s timeout (for I/O on a mount)
#   fill FILE OFF LEN SRC
#                     writes LEN bytes of SRC at byte offset OFF of FILE
#                     (dd, conv=notrunc, any alignment)
#   check DESC CMD... ok DESC if CMD succeeds, else bad DESC
#   eventually CMD... CMD succeeds within 3 s (attributes are cached 1 s)
#   fuse_stop_check NAME DESC [SIGNAL]
#                     fuse_stop, then checks exit status 0 and unmounted
#   img_compare DESC IMG FMT REF   qemu-img compare -f FMT IMG -F raw REF
#   img_check DESC IMG FMT         qemu-img check (nothing for raw)
#
# Cleanup: an EXIT/INT/TERM trap kills the pids in FUSE_BG_PIDS (background
# jobs a test started), stops every daemon still running (SIGTERM, then
# SIGKILL), unmounts (fusermount3 -u, then -uz) every mountpoint still
# in mountinfo, runs fuse_cleanup_hook if the test (or another library)
# defined that function, and removes WORK. The whole file runs under
# "timeout FUSE_TEST_BUDGET" (default 60 s): the script re-executes itself
# once under timeout, which on expiry signals the script's process group
# (a command stuck on the mount gets the signal too) and the trap cleans up.
set -Eeuo pipefail

if [ -z "${FUSE_UNDER_TIMEOUT:-}" ]; then
    export FUSE_UNDER_TIMEOUT=1
    exec timeout -k 20 "${FUSE_TEST_BUDGET:-60}" bash "$0" "$@"
fi

FUSE_FORMATS=${BG_TEST_FORMATS:-raw}
FUSE_DAEMON_TIMEOUT=${FUSE_DAEMON_TIMEOUT:-${FUSE_TEST_BUDGET:-60}}

fuse_missing() {
    if [ -n "${CI:-}" ]; then
        echo "FAIL: $* (CI is set: the test must not skip)"
        exit 1
    fi
    echo "SKIP: $*"
    exit 77
}

fuse_require_tools() {
    local t
    for t in qemu-img fusermount3 python3 timeout "$@"; do
        command -v "$t" >/dev/null || fuse_missing "$t is not installed"
    done
    [ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ] || fuse_missing "/dev/fuse is not accessible"
    if [ ! -x "$BLOCKGRAPH" ]; then
        echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
        exit 1
    fi
}

BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
case $BLOCKGRAPH in /*) ;; *) BLOCKGRAPH=$PWD/$BLOCKGRAPH ;; esac

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-$(basename "$0" .sh).XXXXXX")
WORK=$(cd "$WORK" && pwd -P)
cd "$WORK"

declare -A FUSE_TPID=()    # NAME -> pid of the timeout wrapping the daemon
declare -A FUSE_MPS=()     # NAME -> its mountpoints (absolute, space separated)
FUSE_ALL_MPS=()            # every mountpoint ever used, for the trap
FUSE_BG_PIDS=()            # other background jobs (fio...) the trap kills
FUSE_RC=0
FUSE_LEFT_MOUNTED=0

fuse_mounted() {
    awk -v p="$1" '{ m = $5; gsub(/\\040/, " ", m) } m == p { f = 1 } END { exit !f }' /proc/self/mountinfo
}

fuse_unmount_all() {
    local mp
    for mp in "${FUSE_ALL_MPS[@]}"; do
        if fuse_mounted "$mp"; then
            timeout 10 fusermount3 -u "$mp" 2>/dev/null || timeout 10 fusermount3 -uz "$mp" 2>/dev/null || true
        fi
    done
}

fuse_pid() {
    local p=
    [ -s "$WORK/$1.pid" ] && p=$(head -1 "$WORK/$1.pid" 2>/dev/null)
    # The daemon writes its pidfile before mounting; until then (and after
    # it removed it) signal the timeout wrapper, which passes signals on.
    echo "${p:-${FUSE_TPID[$1]:-}}"
}

fuse_cleanup() {
    local rc=$? name pid tp
    trap - EXIT INT TERM
    set +e
    for pid in "${FUSE_BG_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && sleep 0.2
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for name in "${!FUSE_TPID[@]}"; do
        tp=${FUSE_TPID[$name]}
        kill -0 "$tp" 2>/dev/null || continue
        pid=$(fuse_pid "$name")
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$tp" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$tp" 2>/dev/null; then
            echo "  (cleanup: daemon $name did not stop on SIGTERM; killing it)"
            kill -KILL "$pid" "$tp" 2>/dev/null
        fi
        wait "$tp" 2>/dev/null
    done
    fuse_unmount_all
    declare -F fuse_cleanup_hook >/dev/null && fuse_cleanup_hook
    cd /
    rm -rf "$WORK"
    exit "$rc"
}
trap fuse_cleanup EXIT
# set -e ends the test at a failing setup command: say which, and where.
fuse_err() {
    local rc=$1 cmd=$2 i=0 frame where=
    while frame=$(caller $i); do
        read -r ln fn src <<<"$frame"
        where+=" <- $(basename "$src"):$ln${fn:+ ($fn)}"
        i=$((i + 1))
    done
    echo "  FAIL  \"$cmd\" failed (exit $rc)$where; test aborted"
}
trap 'fuse_err $? "$BASH_COMMAND"' ERR
trap 'echo "$(basename "$0"): interrupted by a signal (or its time budget of ${FUSE_TEST_BUDGET:-60} s ran out)"
    exit 1' INT TERM

fuse_checks=0
fuse_failures=0
ok() {
    fuse_checks=$((fuse_checks + 1))
    echo "  ok    $*"
}
bad() {
    fuse_checks=$((fuse_checks + 1))
    fuse_failures=$((fuse_failures + 1))
    echo "  FAIL  $*"
}
# check DESC CMD...: ok if CMD succeeds, bad otherwise.
check() {
    local d=$1
    shift
    if "$@"; then ok "$d"; else bad "$d"; fi
}
finish() {
    if [ "$fuse_failures" -ne 0 ]; then
        echo "$(basename "$0"): $fuse_failures of $fuse_checks check(s) failed"
        exit 1
    fi
    echo "$(basename "$0"): all $fuse_checks checks passed"
    exit 0
}

tio() { timeout -k 5 30 "$@"; }

fill() {
    local file=$1 off=$2 len=$3 src=$4
    tio dd if="$src" of="$file" bs=256k seek="$off" count="$len" oflag=seek_bytes iflag=count_bytes \
        conv=notrunc status=none
}

fuse_image() {
    qemu-img create -q -f "$1" "$2" "$3"
}

fuse_blockdevs() {
    local fmt=$1 file=$2 opts=${3:+,$3} fopts=${4:+,$4}
    BLOCKDEVS=(--blockdev "driver=file,node-name=file0,filename=$file$opts"
        --blockdev "driver=$fmt,node-name=fmt0,file=file0$fopts")
}

fuse_start() {
    local name=$1 a mp mps=() tp
    shift
    for a in "$@"; do
        if [[ $a =~ (^|,)mountpoint=([^,]*) ]]; then
            mp=${BASH_REMATCH[2]}
            [[ $mp == /* ]] || mp=$PWD/$mp
            mps+=("$mp")
            FUSE_ALL_MPS+=("$mp")
        fi
    done
    rm -f "$WORK/$name.pid"
    timeout -k 5 "$FUSE_DAEMON_TIMEOUT" "$BLOCKGRAPH" daemon "$@" --pidfile "$WORK/$name.pid" \
        </dev/null 2>"$WORK/$name.err" &
    tp=$!
    FUSE_TPID[$name]=$tp
    FUSE_MPS[$name]="${mps[*]}"
    local i all
    for i in $(seq 200); do
        all=1
        for mp in "${mps[@]}"; do fuse_mounted "$mp" || all=0; done
        [ $all = 1 ] && [ -s "$WORK/$name.pid" ] && return 0
        if ! kill -0 "$tp" 2>/dev/null; then
            wait "$tp" && FUSE_RC=0 || FUSE_RC=$?
            echo "  daemon $name exited ($FUSE_RC) before mounting; stderr:"
            sed 's/^/    /' "$WORK/$name.err"
            return 1
        fi
        sleep 0.05
    done
    echo "  daemon $name did not mount within 10 s; stderr:"
    sed 's/^/    /' "$WORK/$name.err"
    return 1
}

fuse_stop() {
    local name=$1 sig=${2:-TERM} tp pid i
    tp=${FUSE_TPID[$name]}
    pid=$(fuse_pid "$name")
    kill -"$sig" "$pid" 2>/dev/null || true
    for i in $(seq 200); do
        kill -0 "$tp" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$tp" 2>/dev/null; then
        echo "  daemon $name did not exit within 20 s of SIG$sig; killing it"
        kill -KILL "$pid" "$tp" 2>/dev/null || true
    fi
    wait "$tp" && FUSE_RC=0 || FUSE_RC=$?
    unset "FUSE_TPID[$name]"
    FUSE_LEFT_MOUNTED=0
    for mp in ${FUSE_MPS[$name]}; do
        if fuse_mounted "$mp"; then
            echo "  $mp still mounted after daemon $name exited; unmounting"
            timeout 10 fusermount3 -u "$mp" || timeout 10 fusermount3 -uz "$mp" || true
            FUSE_LEFT_MOUNTED=1
        fi
    done
}

# fuse_stop_check NAME DESC [SIGNAL]: fuse_stop, then checks exit status 0
# and that nothing was left mounted.
fuse_stop_check() {
    fuse_stop "$1" "${3:-TERM}"
    if [ "$FUSE_RC" = 0 ]; then
        ok "$2: daemon exited 0 on SIG${3:-TERM}"
    else
        bad "$2: daemon exited $FUSE_RC on SIG${3:-TERM}; stderr: $(tail -5 "$WORK/$1.err")"
    fi
    if [ "$FUSE_LEFT_MOUNTED" = 0 ]; then ok "$2: unmounted"; else bad "$2: left mounted"; fi
}

# eventually CMD...: CMD succeeds within 3 s (attributes are cached 1 s).
eventually() {
    local i
    for i in $(seq 30); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# img_compare DESC IMG FMT REF: qemu-img compare -f FMT IMG against raw REF.
img_compare() {
    local out
    if out=$(timeout 60 qemu-img compare -f "$3" -F raw "$2" "$4" 2>&1); then
        ok "$1: qemu-img compare: identical"
    else
        bad "$1: qemu-img compare: $out"
    fi
}

# img_check DESC IMG FMT: qemu-img check where the format has checks.
img_check() {
    local out rc=0
    out=$(timeout 60 qemu-img check -f "$3" "$2" 2>&1) || rc=$?
    if [ $rc = 0 ]; then
        ok "$1: qemu-img check: no errors"
    elif [ $rc = 63 ]; then
        :   # the format does not support checks (raw)
    else
        bad "$1: qemu-img check (exit $rc): $out"
    fi
}

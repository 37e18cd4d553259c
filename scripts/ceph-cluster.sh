#!/usr/bin/env bash
# scripts/ceph-cluster.sh -- a throw-away one-node Ceph cluster for tests,
# demos and benchmarks: one ceph-mon, one ceph-osd, optionally one ceph-mgr,
# all bound to 127.0.0.1, cephx on, everything (conf, keyrings, data, logs,
# admin sockets, pid files) inside one directory.  Run "--help" for usage.
#
# Contract:
# - "start DIR" returns 0 only when pool "rbd" exists and has been "rbd pool
#   init"ed; DIR/ceph.conf then works as CEPH_CONF (or conf=) for every
#   librados client (rbd/ceph CLIs, qemu's and blockgraph's rbd drivers,
#   fio's rbd engine) as client.admin.  On failure it prints the cause and
#   the tail of the relevant logs, stops whatever it started and exits 1.
# - Monitor ports are picked free at run time (parallel clusters never
#   collide); OSD/mgr ports come from Ceph's own free-port search.
# - Daemons run in their own session (a Ctrl-C to the caller's terminal does
#   not reach them): only "stop" (or the *-stop commands) ends them.
# - "stop DIR" ends the daemons (SIGTERM, SIGKILL after a bounded wait) and
#   removes nothing unless --purge is given; either way DIR can then be
#   deleted by the caller.  It is safe on a half-started or stopped DIR.
# - Never reads stdin.  Works as root or as any user owning DIR.
set -euo pipefail

PROG=${0##*/}
START_TIMEOUT=${BG_CEPH_START_TIMEOUT:-120}   # seconds, whole "start"
STOP_TIMEOUT=${BG_CEPH_STOP_TIMEOUT:-15}      # seconds per daemon before SIGKILL

usage() {
    cat <<EOF
Usage: $PROG COMMAND DIR [OPTIONS]

A one-node Ceph cluster (mon.a, osd.0, optional mgr.x) on 127.0.0.1 with
cephx, living entirely in DIR.  Clients use DIR/ceph.conf (CEPH_CONF=DIR/ceph.conf,
or rbd:rbd/IMG:conf=DIR/ceph.conf); the client is client.admin.

Commands:
  start DIR [--bluestore] [--mgr] [--size BYTES]
              create DIR (must be absent or empty), start mon and OSD (and a
              mgr with --mgr), create pool "rbd" and rbd-init it; returns
              when the pool is usable.  The OSD is on memstore (in memory)
              unless --bluestore puts it on a sparse file DIR/osd.0/block.img.
              Either way osd-stop/osd-start keeps the data (memstore saves
              it to DIR on SIGTERM).  --size: OSD device size (default 1 GiB
              memstore, 2 GiB bluestore).
  stop DIR [--purge]
              stop every daemon of DIR (OSD and mgr, then mon; SIGTERM,
              SIGKILL after ${STOP_TIMEOUT}s); --purge also removes DIR.
              Without --purge DIR is left as is (logs stay readable).
  status DIR  print each daemon's state and pid; exit 0 if all that were
              started are running, 1 otherwise.
  pid DIR NAME
              print the pid of NAME (mon.a, osd.0, mgr.x) if it runs.
  osd-stop DIR [--kill]    stop the OSD (SIGTERM; --kill: SIGKILL at once)
  osd-start DIR            start the OSD again, wait until pool "rbd" answers
  mon-stop DIR [--kill]    stop the monitor
  mon-start DIR            start the monitor again (same ports), wait until
                           it answers

Environment: BG_CEPH_START_TIMEOUT (seconds, default 120),
BG_CEPH_STOP_TIMEOUT (seconds per daemon, default 15).
Logs: DIR/log/NAME.log (Ceph's log) and DIR/log/NAME.out (stdout/stderr).
EOF
}

die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# --- helpers on DIR --------------------------------------------------------

# Sets D (absolute, validated) and CONF from $1.
set_dir() {
    [[ -n ${1:-} ]] || die "missing DIR (see --help)"
    D=$(realpath -m -- "$1")
    case $D in
        *[[:space:]:@=\\]*) die "DIR must not contain blanks or any of : @ = \\ (they break rbd: file names): $D" ;;
    esac
    CONF=$D/ceph.conf
}

# Ceph CLI bounded in time: never hangs on a dead monitor.
cephcli() {
    timeout 30 ceph --conf "$CONF" --connect-timeout 5 "$@" </dev/null
}

# Prints the pid of daemon $1 (mon.a, osd.0, mgr.x) if it runs, else nothing
# and returns 1.  A pid counts only if the process still carries our conf
# path on its command line (a recycled pid is never signalled) and is not a
# zombie.
daemon_pid() {
    local f=$D/run/$1.pid pid state
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--conf $CONF " || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    printf '%s\n' "$pid"
}

# Closes every descriptor above 2 of the current (sub)shell: a daemon must
# not hold its caller's pipes (a capturing caller would never see EOF) or
# make's jobserver descriptors.
close_fds() {
    local fd
    for fd in "/proc/$BASHPID/fd/"*; do
        fd=${fd##*/}
        if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}

# Starts daemon $1 (mon.a, osd.0, mgr.x) in the background in its own
# session, stdin from /dev/null, output to DIR/log/NAME.out, no other
# inherited descriptor; records its pid.
spawn() {
    local name=$1 type=${1%%.*} id=${1#*.}
    # The subshell and setsid exec in place (the shell's background child is
    # never a process group leader), so $! is the daemon's pid.
    (
        close_fds
        exec setsid "ceph-$type" -f -i "$id" --conf "$CONF" </dev/null \
            >>"$D/log/$name.out" 2>&1
    ) &
    echo $! >"$D/run/$name.pid"
}

# Sends SIGTERM (or $2) to daemon $1 and waits up to STOP_TIMEOUT seconds,
# then SIGKILLs it.  Returns 0 when it is gone (or was not running).
stop_daemon() {
    local name=$1 sig=${2:-TERM} pid i
    pid=$(daemon_pid "$name") || { rm -f "$D/run/$name.pid"; return 0; }
    kill -s "$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 20; i++)); do
        daemon_pid "$name" >/dev/null || { rm -f "$D/run/$name.pid"; return 0; }
        sleep 0.05
    done
    note "$name (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
    kill -s KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        daemon_pid "$name" >/dev/null || { rm -f "$D/run/$name.pid"; return 0; }
        sleep 0.05
    done
    note "$name (pid $pid) survived SIGKILL"
    return 1
}

# Stops every daemon: OSD and mgr together, then the mon (an OSD whose
# monitor is gone takes longer to exit).
stop_all() {
    local rc=0
    stop_daemon osd.0 & local p1=$!
    stop_daemon mgr.x & local p2=$!
    wait "$p1" || rc=1
    wait "$p2" || rc=1
    stop_daemon mon.a || rc=1
    return $rc
}

# Prints daemon $1's error lines (assertions, "-1" log entries, failures)
# and the last lines of its stdout/stderr to stderr.
show_logs() {
    local name=$1 f
    f=$D/log/$name.log
    if [[ -s $f ]]; then
        printf '%s: --- error lines of %s ---\n' "$PROG" "$f" >&2
        grep -E -i '(^|[^/0-9])-1 |error|fail|assert|abort|denied' "$f" |
            grep -v -E '^ *-?[0-9]+/ *-?[0-9]+ ' | tail -n 15 >&2 || true
    fi
    f=$D/log/$name.out
    if [[ -s $f ]]; then
        printf '%s: --- last lines of %s ---\n' "$PROG" "$f" >&2
        grep -v -E '^ *([0-9]+: |NOTE: |$)' "$f" | tail -n 10 >&2 || true
    fi
}

# Fails start: message, logs of $2..., stop what runs, exit 1.
start_failed() {
    local msg=$1 name
    shift
    note "start failed: $msg"
    for name in "$@"; do show_logs "$name"; done
    stop_all || true
    note "stopped what was started; DIR kept for inspection: $D"
    exit 1
}

# Seconds left before the start deadline.
time_left() { echo $((DEADLINE - SECONDS)); }

# Polls "$@" every 0.1 s until it succeeds; returns 1 at the deadline or
# when daemon $WATCH (if set) has died.
poll() {
    while ! "$@" >/dev/null 2>&1; do
        ((SECONDS < DEADLINE)) || return 1
        if [[ -n ${WATCH:-} ]] && ! daemon_pid "$WATCH" >/dev/null; then
            return 1
        fi
        sleep 0.1
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- start -------------------------------------------------------------------

write_conf() {
    local fsid=$1 monaddr=$2 store=$3 size=$4 store_conf
    if [[ $store == memstore ]]; then
        store_conf="osd objectstore = memstore
memstore device bytes = $size
memstore page set = true"
    else
        store_conf="osd objectstore = bluestore
bluestore block path = $D/osd.0/block.img
bluestore block size = $size
bluestore block create = true
bluestore fsck on mkfs = false
bluestore cache autotune = false
bluestore cache size = 67108864"
    fi
    cat >"$CONF" <<EOF
# One-node test cluster made by scripts/ceph-cluster.sh; all state in $D.
[global]
fsid = $fsid
mon host = $monaddr
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $D/ceph.client.admin.keyring
run dir = $D/run
crash dir = $D/crash
log file = $D/log/\$name.log
mon cluster log file = default=$D/log/\$cluster.\$channel.log cluster=$D/log/\$cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
paxos propose interval = 0.1

[mon]
mon data = $D/\$name
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.ceph.pid

[mgr]
mgr data = $D/\$name
keyring = $D/\$name/keyring
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.ceph.pid

[osd]
osd data = $D/\$name
keyring = $D/\$name/keyring
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.ceph.pid
# keep the data across osd-stop/osd-start (memstore saves it on SIGTERM)
osd fast shutdown = false
# bounded PG log: otherwise the OSD's memory keeps growing under load
osd min pg log entries = 100
osd max pg log entries = 500
osd pg log trim min = 50
$store_conf
EOF
}

make_keyrings() {
    ceph-authtool --create-keyring "$D/mon.keyring" --gen-key -n mon. \
        --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$D/ceph.client.admin.keyring" --gen-key \
        -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
        --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool "$D/mon.keyring" --import-keyring \
        "$D/ceph.client.admin.keyring" >/dev/null
}

# Makes the mon (fresh free ports each attempt: another process may take a
# picked port before the mon binds it) and waits until it answers.
start_mon() {
    local fsid=$1 store=$2 size=$3 attempt v2 v1 addr
    for attempt in 1 2 3; do
        v2=$(free_port)
        v1=$(free_port)
        [[ $v1 != "$v2" ]] || continue
        addr="[v2:127.0.0.1:$v2,v1:127.0.0.1:$v1]"
        write_conf "$fsid" "$addr" "$store" "$size"
        rm -rf "$D/mon.a" "$D/monmap"
        monmaptool --create --fsid "$fsid" --addv a "$addr" "$D/monmap" >/dev/null
        ceph-mon --conf "$CONF" --mkfs -i a --monmap "$D/monmap" \
            --keyring "$D/mon.keyring" </dev/null >>"$D/log/mon.a.out" 2>&1 ||
            start_failed "ceph-mon --mkfs failed" mon.a
        spawn mon.a
        if WATCH=mon.a poll cephcli mon stat; then
            return 0
        fi
        if ! daemon_pid mon.a >/dev/null &&
            grep -qiE 'address already in use|bind.*failed|unable to bind' \
                "$D/log/mon.a.out" "$D/log/mon.a.log" 2>/dev/null; then
            note "monitor port taken (attempt $attempt), retrying with other ports"
            continue
        fi
        start_failed "the monitor did not answer" mon.a
    done
    start_failed "no free monitor ports after 3 attempts" mon.a
}

osd_is_up() { cephcli osd dump | grep -q '^osd\.0 up '; }

# Creates osd.0 (id, data, key) and starts it; waits until it is up.
start_osd() {
    local uuid id
    uuid=$(uuidgen)
    id=$(cephcli osd new "$uuid") || start_failed "ceph osd new failed" mon.a
    [[ $id == 0 ]] || start_failed "ceph osd new gave id '$id', expected 0" mon.a
    mkdir -p "$D/osd.0"
    ceph-osd --conf "$CONF" -i 0 --mkfs --mkkey --osd-uuid "$uuid" \
        --no-mon-config </dev/null >>"$D/log/osd.0.out" 2>&1 ||
        start_failed "ceph-osd --mkfs failed" osd.0
    cephcli auth add osd.0 osd 'allow *' mon 'allow profile osd' \
        mgr 'allow profile osd' -i "$D/osd.0/keyring" >/dev/null 2>&1 ||
        start_failed "ceph auth add osd.0 failed" mon.a
    spawn osd.0
    WATCH=osd.0 poll osd_is_up || start_failed "osd.0 did not come up" osd.0 mon.a
}

start_mgr() {
    mkdir -p "$D/mgr.x"
    cephcli auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' \
        mds 'allow *' -o "$D/mgr.x/keyring" >/dev/null 2>&1 ||
        start_failed "ceph auth get-or-create mgr.x failed" mon.a
    spawn mgr.x
}

mgr_available() { cephcli mgr stat | grep -q '"available": true'; }

cmd_start() {
    local store=memstore mgr=0 size=
    while (($#)); do
        case $1 in
            --bluestore) store=bluestore ;;
            --mgr) mgr=1 ;;
            --size) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--size needs a byte count"; size=$2; shift ;;
            *) die "start: unknown option '$1' (see --help)" ;;
        esac
        shift
    done
    [[ -n $size ]] || { [[ $store == memstore ]] && size=1073741824 || size=2147483648; }
    for tool in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd uuidgen python3 setsid; do
        command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
    done
    if [[ -e $D ]] && [[ -n $(ls -A "$D" 2>/dev/null) ]]; then
        die "$D exists and is not empty (stop --purge it, or pick another DIR)"
    fi
    mkdir -p "$D"/{run,log,crash}
    echo "$store" >"$D/run/objectstore"
    local t0=$SECONDS
    DEADLINE=$((SECONDS + START_TIMEOUT))
    trap 'note "interrupted"; stop_all || true; exit 1' INT TERM HUP

    make_keyrings
    start_mon "$(uuidgen)" "$store" "$size"
    ((mgr)) && start_mgr
    start_osd
    cephcli osd pool create rbd 8 >/dev/null 2>&1 ||
        start_failed "ceph osd pool create rbd failed" mon.a osd.0
    timeout "$(time_left)" rbd --conf "$CONF" pool init rbd </dev/null ||
        start_failed "rbd pool init rbd failed (or timed out)" osd.0 mon.a
    if ((mgr)); then
        WATCH=mgr.x poll mgr_available || start_failed "mgr.x did not become available" mgr.x
    fi
    trap - INT TERM HUP
    local what=$store
    ((mgr == 0)) || what+=", mgr"
    note "cluster ready in $((SECONDS - t0))s ($what): CEPH_CONF=$CONF"
}

# --- the other commands ------------------------------------------------------

cmd_stop() {
    local purge=0
    case ${1:-} in
        --purge) purge=1 ;;
        '') ;;
        *) die "stop: unknown option '$1' (see --help)" ;;
    esac
    [[ -d $D ]] || return 0
    stop_all || die "some daemons of $D could not be stopped"
    if ((purge)); then rm -rf -- "$D"; fi
}

cmd_status() {
    local name pid rc=0 any=0
    [[ -d $D ]] || { echo "$D: no cluster"; return 1; }
    for name in mon.a osd.0 mgr.x; do
        if pid=$(daemon_pid "$name"); then
            echo "$name running (pid $pid)"
            any=1
        elif [[ -e $D/run/$name.pid ]]; then
            echo "$name dead (pid file left)"
            rc=1
        elif [[ -d $D/$name ]]; then
            echo "$name stopped"
            [[ $name == mgr.x ]] || rc=1
        fi
    done
    ((any)) && echo "conf: $CONF"
    return $rc
}

# Restarts daemon $1 from its existing data and waits with $2 (a poll check).
restart() {
    local name=$1 check=$2
    [[ -f $CONF ]] || die "$D has no cluster (no ceph.conf)"
    if daemon_pid "$name" >/dev/null; then
        die "$name is already running"
    fi
    DEADLINE=$((SECONDS + START_TIMEOUT))
    spawn "$name"
    if ! WATCH=$name poll "$check"; then
        note "$name did not become ready"
        show_logs "$name"
        exit 1
    fi
}

pool_answers() { timeout 20 rbd --conf "$CONF" ls rbd </dev/null; }
mon_answers() { cephcli mon stat; }

sig_opt() {
    case ${1:-} in
        --kill) echo KILL ;;
        '') echo TERM ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
}

main() {
    case ${1:-} in
        -h | --help | help) usage; exit 0 ;;
        '') usage >&2; exit 2 ;;
    esac
    local cmd=$1
    shift
    set_dir "${1:-}"
    shift
    case $cmd in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status ;;
        pid) [[ -n ${1:-} ]] || die "pid: which daemon (mon.a, osd.0, mgr.x)?"; daemon_pid "$1" ;;
        osd-stop) stop_daemon osd.0 "$(sig_opt "${1:-}")" ;;
        osd-start) restart osd.0 pool_answers ;;
        mon-stop) stop_daemon mon.a "$(sig_opt "${1:-}")" ;;
        mon-start) restart mon.a mon_answers ;;
        *) die "unknown command '$cmd' (see --help)" ;;
    esac
}

main "$@"

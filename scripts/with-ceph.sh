#!/usr/bin/env bash
# scripts/with-ceph.sh -- run a command with a one-node Ceph cluster
# available through BG_CEPH_DIR (see scripts/ceph-cluster.sh).
#
#   scripts/with-ceph.sh [--bluestore] [--mgr] [--] CMD [ARG...]
#
# Contract:
# - BG_CEPH_DIR set (a running cluster, e.g. from an outer with-ceph.sh):
#   CMD runs with it unchanged (exec); nothing is started or stopped.  It
#   is an error if BG_CEPH_DIR/ceph.conf does not exist.
# - BG_CEPH_DIR unset: a cluster is started in a fresh temporary directory
#   (under TMPDIR, else /tmp), BG_CEPH_DIR is exported to CMD, and on every
#   exit path (CMD's end, SIGINT/SIGTERM/SIGHUP to this script) CMD is
#   ended, the cluster stopped and the directory removed.  A watchdog does
#   the same if this script is SIGKILLed.
# - Exit status: CMD's; 128+N if this script was ended by signal N (after
#   cleanup).  If the cluster cannot be started, CMD still runs (without
#   BG_CEPH_DIR, so the tests that need one fail on their own) and the exit
#   status is non-zero even if CMD succeeded.
# - CMD keeps this script's stdin, stdout and stderr.
# - BG_CEPH_CLUSTER_SCRIPT replaces scripts/ceph-cluster.sh (for the tests
#   of this script: any program taking "start DIR" and "stop DIR --purge").
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "$0")" && pwd)
CLUSTER=${BG_CEPH_CLUSTER_SCRIPT:-$HERE/ceph-cluster.sh}
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

start_opts=()
while (($#)); do
    case $1 in
        --bluestore | --mgr) start_opts+=("$1"); shift ;;
        --) shift; break ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        -*) note "unknown option '$1'"; exit 2 ;;
        *) break ;;
    esac
done
(($#)) || { note "usage: $PROG [--bluestore] [--mgr] [--] CMD [ARG...]"; exit 2; }

if [[ -n ${BG_CEPH_DIR:-} ]]; then
    if [[ ! -f $BG_CEPH_DIR/ceph.conf ]]; then
        note "BG_CEPH_DIR=$BG_CEPH_DIR has no ceph.conf (unset it to start a cluster)"
        exit 1
    fi
    exec "$@"
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/bg-ceph.XXXXXX")
child=
watchdog=
cleaned=0

cleanup() {
    ((cleaned)) && return 0
    cleaned=1
    if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    local t0=$SECONDS
    "$CLUSTER" stop "$dir" --purge || note "stopping the cluster in $dir failed"
    note "cluster stopped in $((SECONDS - t0))s"
    if [[ -n $watchdog ]]; then kill "$watchdog" 2>/dev/null || true; fi
}

on_signal() {
    local sig=$1
    note "SIG$sig: stopping the command and the cluster"
    cleanup
    trap - "$sig" EXIT
    kill -s "$sig" $$
    exit $((128 + $(kill -l "$sig")))
}

trap cleanup EXIT
for s in INT TERM HUP; do
    # shellcheck disable=SC2064
    trap "on_signal $s" "$s"
done

# Cleans up if this script dies without running its traps (SIGKILL).  It
# holds no descriptor of ours (make's jobserver, a caller's pipe).
me=$$
setsid bash -c 'for fd in /proc/$$/fd/*; do fd=${fd##*/}; ((fd > 2)) && eval "exec $fd>&-"; done 2>/dev/null
    while kill -0 '"$me"' 2>/dev/null; do sleep 1; done
    exec "$0" stop "$1" --purge' "$CLUSTER" "$dir" </dev/null >/dev/null 2>&1 &
watchdog=$!

t0=$SECONDS
start_rc=0
"$CLUSTER" start "$dir" "${start_opts[@]}" </dev/null || start_rc=$?
if ((start_rc == 0)); then
    export BG_CEPH_DIR=$dir
    note "cluster ready in $((SECONDS - t0))s: BG_CEPH_DIR=$dir"
else
    note "could not start a cluster: running '$*' without BG_CEPH_DIR"
fi

# In the background (so that a signal to this script is handled at once),
# with this script's stdin (the explicit redirection keeps bash from giving
# a background job /dev/null).  No other descriptor is touched: make's
# jobserver descriptors must reach a recursive make.
"$@" <&0 &
child=$!
rc=0
wait "$child" || rc=$?
child=
((start_rc == 0 || rc != 0)) || rc=1
exit $rc

# tests/integration/lib-rbd.sh -- helpers shared by the rbd-*.sh tests.
# Sourced, not run: deliberately not executable, so check-integration lists
# it as ignored.
#
# The rbd-*.sh tests run blockgraph's rbd driver against a real one-node
# Ceph cluster and judge it with the real peers: qemu-img / qemu-io with
# QEMU's rbd driver (Debian's qemu-block-extra), the rbd and ceph CLIs, fio.
#
# The cluster: with BG_CEPH_DIR set (make check starts one cluster for all
# its targets), the test uses it; otherwise it starts its own with
# scripts/ceph-cluster.sh in WORK and stops it on exit. A test that needs a
# cluster of its own anyway (it stops daemons or fills the pool) sets
# RBD_OWN_CLUSTER=memstore|bluestore before sourcing.
#
# Source order: a test that uses lib-fuse.sh sources it first; then its WORK,
# ok/bad/check/finish, time budget and EXIT trap are used, and the rbd
# clean-up runs from lib-fuse's fuse_cleanup_hook. Otherwise this file
# makes them: the script re-executes itself once under
# "timeout RBD_TEST_BUDGET" (default 120 s), the EXIT trap cleans up.
#
# Provides:
#   B, BLOCKGRAPH       the binary (absolute path)
#   SRC                 the source tree
#   WORK                temporary directory (physical path), the cwd
#   CEPH_DIR            the cluster's directory; CEPH_CONF (exported) its conf
#   RBD_PFX             image-name prefix unique to this run; every image or
#                       namespace in pool rbd whose name starts with it is
#                       removed on exit (snapshots purged first)
#   ok/bad/check/finish result accounting (finish exits 1 if a check failed)
#   rbdc ARGS...        the rbd CLI under a 60 s timeout
#   cephc ARGS...       the ceph CLI under a 60 s timeout (--connect-timeout 10)
#   admin_key           prints client.admin's base64 key
#   mon_v1_addr         prints the monitor's v1 HOST:PORT from the conf
#   free_port           prints a TCP port nobody listens on (bound, released)
#   rbd_size IMG        prints the image's size in bytes (rbd info)
#   same_msg DESC OURS_ERR QEMU_ERR
#                       both stderr files hold exactly one line, equal after
#                       the program-name prefix ("blockgraph io: ",
#                       "qemu-io: ", ...)
#   one_line DESC ERRFILE WANT
#                       ERRFILE is exactly one line and contains WANT
#   cluster CMD ARGS... scripts/ceph-cluster.sh CMD CEPH_DIR ARGS (osd-stop,
#                       osd-start, mon-stop, mon-start, pid NAME: a cluster
#                       of our own only)
set -euo pipefail

RBD_LIB_WITH_FUSE=0
if declare -F fuse_cleanup >/dev/null; then
    RBD_LIB_WITH_FUSE=1
elif [ -z "${RBD_UNDER_TIMEOUT:-}" ]; then
    export RBD_UNDER_TIMEOUT=1
    exec timeout -k 20 "${RBD_TEST_BUDGET:-120}" bash "$0" "$@"
fi

SRC=${BG_SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
case $SRC in /*) ;; *) SRC=$(cd "$SRC" && pwd) ;; esac
BLOCKGRAPH=${BLOCKGRAPH:-$SRC/build/blockgraph}
case $BLOCKGRAPH in /*) ;; *) BLOCKGRAPH=$PWD/$BLOCKGRAPH ;; esac
B=$BLOCKGRAPH

rbd_missing() {
    if [ -n "${CI:-}" ]; then
        echo "FAIL: $* (CI is set: the test must not skip)"
        exit 1
    fi
    echo "SKIP: $*"
    exit 77
}
for t in qemu-img qemu-io rbd ceph python3 timeout ${RBD_NEED_TOOLS:-}; do
    command -v "$t" >/dev/null || rbd_missing "$t is not installed (scripts/install-deps.sh)"
done
compgen -G '/usr/lib/*/qemu/block-rbd.so' >/dev/null ||
    rbd_missing "QEMU's rbd driver is not installed (Debian package qemu-block-extra)"
if [ ! -x "$B" ]; then
    echo "FAIL: BLOCKGRAPH=$B is not an executable"
    exit 1
fi

if [ "$RBD_LIB_WITH_FUSE" = 0 ]; then
    WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-$(basename "$0" .sh).XXXXXX")
    WORK=$(cd "$WORK" && pwd -P)
    cd "$WORK"
    rbd_checks=0
    rbd_failures=0
    ok() {
        rbd_checks=$((rbd_checks + 1))
        echo "  ok    $*"
    }
    bad() {
        rbd_checks=$((rbd_checks + 1))
        rbd_failures=$((rbd_failures + 1))
        echo "  FAIL  $*"
    }
    check() {
        local d=$1
        shift
        if "$@"; then ok "$d"; else bad "$d"; fi
    }
    finish() {
        if [ "$rbd_failures" -ne 0 ]; then
            echo "$(basename "$0"): $rbd_failures of $rbd_checks check(s) failed"
            exit 1
        fi
        echo "$(basename "$0"): all $rbd_checks checks passed"
        exit 0
    }
fi

RBD_PFX=bgt-$(basename "$0" .sh)-$$-$RANDOM
RBD_OWN=
CEPH_DIR=

rbdc() { timeout -k 5 60 rbd "$@"; }
cephc() { timeout -k 5 60 ceph --connect-timeout 10 "$@"; }

# Removes every image and namespace of this run (pool rbd), then stops a
# cluster of our own. Never fails.
rbd_cleanup() {
    local img ns
    set +e
    # A test's own clean-up first (servers holding images open).
    if declare -F rbd_cleanup_extra >/dev/null; then rbd_cleanup_extra; fi
    if [ -n "$CEPH_DIR" ] && [ -f "$CEPH_DIR/ceph.conf" ] && [ -z "$RBD_OWN" ]; then
        for ns in $(rbdc namespace ls rbd 2>/dev/null | grep "^$RBD_PFX"); do
            for img in $(rbdc ls rbd --namespace "$ns" 2>/dev/null); do
                rbdc snap purge --no-progress "rbd/$ns/$img" >/dev/null 2>&1
                rbdc rm --no-progress "rbd/$ns/$img" >/dev/null 2>&1
            done
            rbdc namespace remove "rbd/$ns" >/dev/null 2>&1
        done
        for img in $(rbdc ls rbd 2>/dev/null | grep "^$RBD_PFX"); do
            rbdc snap purge --no-progress "rbd/$img" >/dev/null 2>&1
            rbdc rm --no-progress "rbd/$img" >/dev/null 2>&1 ||
                echo "  (cleanup: could not remove rbd/$img)"
        done
    fi
    if [ -n "$RBD_OWN" ]; then
        timeout -k 5 60 "$SRC/scripts/ceph-cluster.sh" stop "$CEPH_DIR" --purge >/dev/null 2>&1 ||
            echo "  (cleanup: scripts/ceph-cluster.sh stop $CEPH_DIR failed)"
    fi
}

if [ "$RBD_LIB_WITH_FUSE" = 1 ]; then
    fuse_cleanup_hook() { rbd_cleanup; }
else
    rbd_exit() {
        local rc=$?
        trap - EXIT INT TERM
        rbd_cleanup
        cd /
        rm -rf "$WORK"
        exit "$rc"
    }
    trap rbd_exit EXIT
    trap 'echo "  FAIL  \"$BASH_COMMAND\" failed (exit $?) at line $LINENO; test aborted"' ERR
    trap 'echo "$(basename "$0"): interrupted by a signal (or its time budget of ${RBD_TEST_BUDGET:-120} s ran out)"
        exit 1' INT TERM
fi

# The cluster.
if [ -n "${RBD_OWN_CLUSTER:-}" ] || [ -z "${BG_CEPH_DIR:-}" ]; then
    [ -x "$SRC/scripts/ceph-cluster.sh" ] || rbd_missing "scripts/ceph-cluster.sh is missing"
    for t in ceph-mon ceph-osd ceph-authtool monmaptool; do
        command -v "$t" >/dev/null || rbd_missing "$t is not installed (scripts/install-deps.sh)"
    done
    CEPH_DIR=$WORK/ceph
    RBD_OWN=1
    opt=()
    [ "${RBD_OWN_CLUSTER:-memstore}" = bluestore ] && opt=(--bluestore)
    if ! timeout -k 5 90 "$SRC/scripts/ceph-cluster.sh" start "$CEPH_DIR" "${opt[@]}" >"$WORK/cluster.log" 2>&1; then
        echo "  FAIL  scripts/ceph-cluster.sh start ${opt[*]} failed:"
        tail -20 "$WORK/cluster.log" | sed 's/^/    /'
        exit 1
    fi
else
    CEPH_DIR=$BG_CEPH_DIR
    if [ ! -f "$CEPH_DIR/ceph.conf" ]; then
        echo "  FAIL  BG_CEPH_DIR=$CEPH_DIR has no ceph.conf"
        exit 1
    fi
fi
export CEPH_CONF=$CEPH_DIR/ceph.conf
if ! cephc health >/dev/null 2>"$WORK/health.err"; then
    echo "  FAIL  the cluster in $CEPH_DIR does not answer: $(cat "$WORK/health.err")"
    exit 1
fi

admin_key() { sed -n 's/^[[:space:]]*key[[:space:]]*=[[:space:]]*//p' "$CEPH_DIR/ceph.client.admin.keyring" | head -1; }
mon_v1_addr() { sed -n 's/.*v1:\([0-9.]*:[0-9]*\).*/\1/p' "$CEPH_CONF" | head -1; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rbd_size() { rbdc info --format json "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["size"])'; }

# Strips "PROGRAM: " from the front of each line.
strip_prog() { sed -E 's/^(blockgraph [a-z]+|qemu-[a-z]+): //' "$1"; }
same_msg() {
    local d=$1 ours=$2 theirs=$3
    if [ "$(wc -l <"$ours")" != 1 ]; then
        bad "$d: not one line: $(cat "$ours")"
    elif [ "$(strip_prog "$ours")" != "$(strip_prog "$theirs")" ]; then
        bad "$d: '$(cat "$ours")' differs from QEMU's '$(cat "$theirs")'"
    else
        ok "$d: '$(cat "$ours")' (as QEMU)"
    fi
}
one_line() {
    local d=$1 f=$2 want=$3
    if [ "$(wc -l <"$f")" != 1 ]; then
        bad "$d: not one line: $(cat "$f")"
    elif ! grep -qF -- "$want" "$f"; then
        bad "$d: '$(cat "$f")' does not say '$want'"
    else
        ok "$d: '$(cat "$f")'"
    fi
}

# Daemons of a cluster of our own: scripts/ceph-cluster.sh CMD CEPH_DIR ARGS.
cluster() { timeout -k 5 120 "$SRC/scripts/ceph-cluster.sh" "$1" "$CEPH_DIR" "${@:2}"; }

#!/bin/bash
# tests/integration/ceph-scripts.sh -- the test-cluster scripts themselves.
#
#  (a) scripts/with-ceph.sh, driven with a stub cluster script (so it takes
#      no cluster and well under a second): CMD's exit status is passed on;
#      CMD sees BG_CEPH_DIR holding ceph.conf; the directory is stopped and
#      removed after CMD; an existing BG_CEPH_DIR is used as is (nothing
#      started or stopped); SIGTERM ends CMD, stops and removes the cluster
#      and exits 143; a cluster that cannot start still runs CMD, without
#      BG_CEPH_DIR, and fails the run; CMD keeps stdin.
#  (b) scripts/ceph-cluster.sh, for real: a start that fails after the
#      monitor is up (a bluestore device too small for mkfs) exits 1 naming
#      the failed step and the daemon's assertion, and leaves no process of
#      its directory running; start refuses a non-empty directory; stop of a
#      missing directory succeeds; with a cluster in BG_CEPH_DIR, status
#      lists mon.a and osd.0 running and pid gives their pids.
set -euo pipefail

SRC=${BG_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
WITH=$SRC/scripts/with-ceph.sh
CLUSTER=$SRC/scripts/ceph-cluster.sh
for t in ceph-mon ceph-osd ceph monmaptool ceph-authtool uuidgen; do
    command -v $t >/dev/null || { echo "ceph-scripts.sh: $t missing (scripts/install-deps.sh)"; exit 1; }
done

T=$(mktemp -d "${TMPDIR:-/tmp}/bg-ceph-scripts.XXXXXX")
cleanup() {
    "$CLUSTER" stop "$T/fail" >/dev/null 2>&1 || true
    rm -rf "$T"
}
trap cleanup EXIT

fails=0
ok() { echo "  ok    $*"; }
bad() { echo "  FAIL  $*"; fails=$((fails + 1)); }
check() {
    local d=$1
    shift
    if "$@"; then ok "$d"; else bad "$d"; fi
}

# The stub: "start DIR" makes DIR/ceph.conf (fails if $T/start-fails
# exists), "stop DIR --purge" removes DIR; both log to $T/calls.
cat >"$T/stub" <<STUB
#!/bin/bash
echo "\$*" >>"$T/calls"
case \$1 in
    start) [ ! -e "$T/start-fails" ] || exit 1; mkdir -p "\$2"; echo x >"\$2/ceph.conf" ;;
    stop) [ "\$3" = --purge ] && rm -rf "\$2" ;;
esac
STUB
chmod +x "$T/stub"
export BG_CEPH_CLUSTER_SCRIPT=$T/stub
# with-ceph.sh's temporary directories go under $T (removed at the end even
# if with-ceph.sh failed to)
export TMPDIR=$T
SHARED=${BG_CEPH_DIR:-}
unset BG_CEPH_DIR

echo "(a) with-ceph.sh"
rc=0
"$WITH" bash -c 'echo "$BG_CEPH_DIR" >'"$T"'/seen; [ -f "$BG_CEPH_DIR/ceph.conf" ] || exit 9; exit 3' 2>/dev/null || rc=$?
check "(a) CMD's exit status 3 is passed on" [ $rc = 3 ]
d=$(cat "$T/seen")
check "(a) CMD saw BG_CEPH_DIR (not the ceph.conf-missing exit 9)" [ -n "$d" ]
check "(a) the cluster was started then stopped with --purge" \
    [ "$(cat "$T/calls")" = "start $d
stop $d --purge" ]
check "(a) the cluster directory is gone" [ ! -e "$d" ]

: >"$T/calls"
mkdir -p "$T/given" && echo x >"$T/given/ceph.conf"
out=$(BG_CEPH_DIR=$T/given "$WITH" bash -c 'echo "$BG_CEPH_DIR"' 2>/dev/null)
check "(a) an existing BG_CEPH_DIR is passed through" [ "$out" = "$T/given" ]
check "(a) ... and nothing is started or stopped" [ ! -s "$T/calls" ]
rc=0
BG_CEPH_DIR=$T/nothere "$WITH" true 2>/dev/null || rc=$?
check "(a) a BG_CEPH_DIR without ceph.conf is an error" [ $rc = 1 ]

: >"$T/calls"
"$WITH" bash -c 'echo $$ >'"$T"'/cmdpid; exec sleep 30' 2>/dev/null &
wpid=$!
for _ in $(seq 100); do [ -s "$T/cmdpid" ] && break; sleep 0.05; done
kill -TERM $wpid
rc=0
wait $wpid || rc=$?
check "(a) SIGTERM: exit status 143" [ $rc = 143 ]
cmdpid=$(cat "$T/cmdpid")
check "(a) SIGTERM: CMD was ended" bash -c "! kill -0 $cmdpid 2>/dev/null"
check "(a) SIGTERM: the cluster was stopped with --purge" grep -q "^stop .* --purge$" "$T/calls"
d=$(sed -n 's/^start //p' "$T/calls")
check "(a) SIGTERM: the cluster directory is gone" [ -n "$d" ] && check "(a) SIGTERM: ... $d" [ ! -e "$d" ]

touch "$T/start-fails"
rc=0
out=$("$WITH" bash -c 'echo "dir=${BG_CEPH_DIR:-unset}"' 2>/dev/null) || rc=$?
rm "$T/start-fails"
check "(a) a failed start still runs CMD, without BG_CEPH_DIR" [ "$out" = dir=unset ]
check "(a) ... and the run fails" [ $rc = 1 ]
out=$(echo hello | "$WITH" cat 2>/dev/null)
check "(a) CMD keeps stdin" [ "$out" = hello ]
unset BG_CEPH_CLUSTER_SCRIPT

echo "(b) ceph-cluster.sh"
rc=0
out=$("$CLUSTER" start "$T/fail" --bluestore --size 1000 2>&1) || rc=$?
check "(b) a failing start exits 1" [ $rc = 1 ]
check "(b) ... naming the step" grep -q "start failed: ceph-osd --mkfs failed" <<<"$out"
check "(b) ... and the daemon's error" grep -q "FAILED ceph_assert" <<<"$out"
check "(b) ... the monitor had started (its log exists)" [ -s "$T/fail/log/mon.a.log" ]
# (pgrep here, not in a child shell whose command line holds the pattern)
if pgrep -f "$T/fail/" >/dev/null; then bad "(b) ... nothing of its directory runs: $(pgrep -af "$T/fail/")"
else ok "(b) ... nothing of its directory runs"; fi
rc=0
"$CLUSTER" status "$T/fail" >/dev/null || rc=$?
check "(b) status of the failed cluster exits 1" [ $rc = 1 ]
rc=0
out=$("$CLUSTER" start "$T/fail" 2>&1) || rc=$?
check "(b) start refuses a non-empty directory" [ $rc = 1 ] && grep -q "not empty" <<<"$out"
check "(b) stop of a missing directory succeeds" "$CLUSTER" stop "$T/none"
if [ -n "$SHARED" ]; then
    out=$("$CLUSTER" status "$SHARED")
    check "(b) status of BG_CEPH_DIR: mon.a running" grep -q "^mon.a running (pid [0-9]*)" <<<"$out"
    check "(b) status of BG_CEPH_DIR: osd.0 running" grep -q "^osd.0 running (pid [0-9]*)" <<<"$out"
    pid=$("$CLUSTER" pid "$SHARED" osd.0)
    check "(b) pid osd.0 is the ceph-osd of BG_CEPH_DIR" grep -qF "$SHARED/ceph.conf" "/proc/$pid/cmdline"
fi

if [ $fails = 0 ]; then echo "ceph-scripts.sh: all checks passed"; exit 0; fi
echo "ceph-scripts.sh: $fails check(s) failed"
exit 1

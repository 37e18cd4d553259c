# tests/integration/lib-qmp.sh -- the runner shared by the qmp-*.sh tests.
# Sourced, not run: deliberately not executable, so check-integration lists
# it as ignored. Each qmp-NAME.sh is
#   . "$(dirname "$0")/lib-qmp.sh" NAME
# and this runs qmp-NAME.py (with qmp.py, the QMP client) under
# "timeout QMP_BUDGET" (default 120 s; the script stops its daemons,
# unmounts and removes its work directory on the timeout's SIGTERM).
#
# QMP_TARGET selects the daemon: "blockgraph" (default; $BLOCKGRAPH daemon)
# or "qsd" (qemu-storage-daemon, the oracle every test must also pass).
# With the blockgraph target and qemu-storage-daemon installed, the
# oracle_session() checks also run the same QMP session against QSD and
# compare the replies.
#
# Exit: 0 all checks passed, 1 a check failed, 77 skipped (a tool is
# missing; with CI set that is a failure instead).
set -u
name=$1
here=$(cd "$(dirname "$0")" && pwd)

qmp_missing() {
    if [ -n "${CI:-}" ]; then
        echo "FAIL: $* (CI is set: the test must not skip)"
        exit 1
    fi
    echo "SKIP: $*"
    exit 77
}

for t in python3 qemu-img qemu-io timeout ${QMP_NEEDS_FUSE:+fusermount3}; do
    command -v "$t" >/dev/null || qmp_missing "$t is not installed"
done
if [ -n "${QMP_NEEDS_FUSE:-}" ] && ! { [ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ]; }; then
    qmp_missing "/dev/fuse is not accessible"
fi
export QMP_TARGET=${QMP_TARGET:-blockgraph}
if [ "$QMP_TARGET" = qsd ]; then
    command -v qemu-storage-daemon >/dev/null || qmp_missing "qemu-storage-daemon is not installed"
else
    BLOCKGRAPH=${BLOCKGRAPH:-$here/../../build/blockgraph}
    if [ ! -x "$BLOCKGRAPH" ]; then
        echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
        exit 1
    fi
    BLOCKGRAPH=$(cd "$(dirname "$BLOCKGRAPH")" && pwd -P)/$(basename "$BLOCKGRAPH")
    export BLOCKGRAPH
fi

# Every daemon and mount of the script lives under QMP_WORK. qmp.py cleans
# up itself; this trap also covers a script killed outright (the timeout's
# SIGKILL, or a kill from outside): its daemons run in sessions of their own
# and would otherwise keep their FUSE mounts.
QMP_WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-qmp-$name.XXXXXX")
export QMP_WORK
qmp_cleanup() {
    pkill -KILL -f -- "$QMP_WORK/" 2>/dev/null
    sleep 0.2
    awk -v w="$QMP_WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo |
        while read -r mp; do fusermount3 -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null; done
    rm -rf "$QMP_WORK"
}
trap qmp_cleanup EXIT
trap 'exit 1' INT TERM HUP

timeout -k 15 "${QMP_BUDGET:-120}" python3 "$here/${2:-qmp-$name.py}"

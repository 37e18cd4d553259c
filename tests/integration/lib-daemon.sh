# tests/integration/lib-daemon.sh -- the prologue shared by the daemon-*.sh
# and mount-*.sh tests. Sourced, not run: deliberately not executable, so
# check-integration lists it as ignored. Source it right after "set -u":
#   . "$(dirname "$0")/lib-daemon.sh"
#
# Set before sourcing (all optional):
#   DAEMON_NEED_QEMU_IO=1   skip (77) unless qemu-io is installed as well
#   DAEMON_CLEANUP_UMOUNT=1 the EXIT trap first runs "blockgraph umount" on
#                           every mount under WORK (the mount-*.sh tests)
#   DAEMON_CLEANUP_WAIT=N   tenths of a second the EXIT trap gives each
#                           daemon after SIGTERM before SIGKILL (default 200)
#
# Provides:
#   FORMATS           image formats to loop over (BG_TEST_FORMATS, default raw)
#   BLOCKGRAPH        the binary, as an absolute physical path (FAIL, exit 1,
#                     if it is not an executable); skips (77) without
#                     qemu-img, /dev/fuse or fusermount3
#   WORK              a temporary directory (physical path) named after the
#                     script, removed on exit; the test runs in it
#   DAEMON_PIDS       real daemon pids (from pidfiles), for the trap
#   failures          number of failed checks; ok/bad DESC print and count
#   is_mounted PATH   PATH is a mount point now
#   wait_mounted PATH PATH is mounted within 10 s
#   alive PID         a process that exists and is not a zombie
#   wait_dead PID [N] PID is gone within N tenths of a second (default 200)
#   wait_pidfile FILE FILE is non-empty within 10 s
#   mounts_under_work number of mounts under WORK
#   qcow2_supported   true if this build opens qcow2 images
#
# Cleanup: an EXIT trap (INT/TERM exit 1 into it) stops the DAEMON_PIDS
# (SIGTERM, then SIGKILL), unmounts (fusermount3 -u -z, else umount -l)
# whatever is still mounted under WORK and removes WORK.

FORMATS=${BG_TEST_FORMATS:-raw}
BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
if [ ! -x "$BLOCKGRAPH" ]; then
    echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
    exit 1
fi
BLOCKGRAPH=$(cd "$(dirname "$BLOCKGRAPH")" && pwd -P)/$(basename "$BLOCKGRAPH")
if [ -n "${DAEMON_NEED_QEMU_IO:-}" ]; then
    if ! command -v qemu-img >/dev/null || ! command -v qemu-io >/dev/null; then
        echo "SKIP: qemu-img / qemu-io not installed (Debian package qemu-utils)"
        exit 77
    fi
elif ! command -v qemu-img >/dev/null; then
    echo "SKIP: qemu-img not installed (Debian package qemu-utils)"
    exit 77
fi
if [ ! -c /dev/fuse ] || ! command -v fusermount3 >/dev/null; then
    echo "SKIP: FUSE not available (/dev/fuse, fusermount3)"
    exit 77
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-$(basename "$0" .sh).XXXXXX")
WORK=$(cd "$WORK" && pwd -P)
DAEMON_PIDS=()     # real daemon pids (from pidfiles), for the trap
failures=0

ok() { echo "  ok    $*"; }
bad() { echo "  FAIL  $*"; failures=$((failures + 1)); }

is_mounted() { awk -v p="$1" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo; }
wait_mounted() {
    for _ in $(seq 100); do is_mounted "$1" && return 0; sleep 0.1; done
    return 1
}
# A process that exists and is not a zombie.
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
wait_dead() {
    for _ in $(seq "${2:-200}"); do alive "$1" || return 0; sleep 0.1; done
    return 1
}
wait_pidfile() {
    for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done
    return 1
}
mounts_under_work() { awk -v w="$WORK/" 'index($5, w) == 1' /proc/self/mountinfo | wc -l; }
cleanup() {
    local pid m
    if [ -n "${DAEMON_CLEANUP_UMOUNT:-}" ]; then
        for m in $(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo); do
            timeout 40 "$BLOCKGRAPH" umount "$m" >/dev/null 2>&1
        done
    fi
    for pid in "${DAEMON_PIDS[@]}"; do alive "$pid" && kill -TERM "$pid" 2>/dev/null; done
    for pid in "${DAEMON_PIDS[@]}"; do
        wait_dead "$pid" "${DAEMON_CLEANUP_WAIT:-200}" || kill -KILL "$pid" 2>/dev/null
    done
    awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | while read -r m; do
        fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# True if this build opens qcow2 images (the node opens, so the daemon gets
# as far as the export's mountpoint).
qcow2_supported() {
    qemu-img create -q -f qcow2 "$WORK/probe-support.qcow2" 1M || return 1
    "$BLOCKGRAPH" daemon --blockdev driver=file,node-name=f,filename="$WORK/probe-support.qcow2" \
        --blockdev driver=qcow2,node-name=q,file=f \
        --export type=fuse,id=e,node-name=q,mountpoint="$WORK/probe-support.none" 2>&1 |
        grep -q "mountpoint '$WORK/probe-support.none'"
    local rc=$?
    rm -f "$WORK/probe-support.qcow2"
    return $rc
}

cd "$WORK" || exit 1

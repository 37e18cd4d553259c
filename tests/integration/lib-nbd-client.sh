# tests/integration/lib-nbd-client.sh -- helpers shared by the
# nbd-client*.sh tests (our nbd driver against qemu-nbd and nbdkit).
# Sourced, not run (deliberately not executable).
#
# Builds on img-lib.sh (B, WORK, ok/bad/finish, q, json_same, expect_rc)
# and adds:
#   nbd_need TOOL...          skip (77) unless every TOOL is installed (FAIL with CI set)
#   qnbd_start NAME ARGS...   qemu-nbd -k $WORK/NAME.sock -t -e 8 ARGS in the
#                             background (log $WORK/NAME.log); waits for the
#                             socket; returns 1 if it does not appear in 10 s
#   kit_start NAME ARGS...    nbdkit -f -U $WORK/NAME.sock ARGS, likewise (both
#                             without fd 3, which tests use to feed io sessions)
#   srv_stop NAME [SIG]       stops that server (SIGTERM default) and waits
#   srv_pid NAME              its pid
#   uri NAME [EXPORT]         nbd+unix:///EXPORT?socket=$WORK/NAME.sock
#   free_port                 a TCP port free right now
#   seek_extents FILE         the data extents SEEK_DATA/SEEK_HOLE find, "start end" per line
#   map_extents QEMU-IMG-ARGS the data extents of "qemu-img map --output=json ARGS", merged, same form
#
#   NBD_MOUNTS                mountpoints for the trap to unmount
#
# Cleanup: the EXIT trap unmounts NBD_MOUNTS, kills every server still
# running and removes WORK. The script runs under "timeout NBD_TEST_BUDGET" (default 120 s).
if [ -z "${NBD_UNDER_TIMEOUT:-}" ]; then
    export NBD_UNDER_TIMEOUT=1
    exec timeout -k 10 "${NBD_TEST_BUDGET:-120}" bash "$0" "$@"
fi

. "$(dirname "$0")/img-lib.sh"

declare -A NBD_SRV_PID=()
NBD_MOUNTS=()   # mountpoints the trap unmounts ("blockgraph umount", then fusermount3 -uz)

nbd_cleanup() {
    local n
    for n in "${NBD_MOUNTS[@]}"; do
        if grep -q " $n " /proc/self/mountinfo 2>/dev/null; then
            timeout 20 "$B" umount "$n" >/dev/null 2>&1 || fusermount3 -uz "$n" 2>/dev/null
        fi
    done
    for n in "${!NBD_SRV_PID[@]}"; do
        kill -9 "${NBD_SRV_PID[$n]}" 2>/dev/null
        wait "${NBD_SRV_PID[$n]}" 2>/dev/null
    done
    cd /
    if [ "${BG_KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap nbd_cleanup EXIT

nbd_need() {
    local t
    for t in "$@"; do
        if ! command -v "$t" >/dev/null; then
            if [ -n "${CI:-}" ]; then
                echo "FAIL: $t is not installed (CI is set)"
                exit 1
            fi
            echo "SKIP: $t is not installed"
            exit 77
        fi
    done
}

srv_wait_socket() {
    local name=$1 i
    for i in $(seq 100); do
        [ -S "$WORK/$name.sock" ] && return 0
        kill -0 "${NBD_SRV_PID[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    bad "server $name did not start: $(cat "$WORK/$name.log" 2>/dev/null)"
    return 1
}

qnbd_start() {
    local name=$1
    shift
    rm -f "$WORK/$name.sock"
    qemu-nbd -k "$WORK/$name.sock" -t -e 8 "$@" >"$WORK/$name.log" 2>&1 3>&- &
    NBD_SRV_PID[$name]=$!
    srv_wait_socket "$name"
}

kit_start() {
    local name=$1
    shift
    rm -f "$WORK/$name.sock"
    nbdkit -f -U "$WORK/$name.sock" "$@" >"$WORK/$name.log" 2>&1 3>&- &
    NBD_SRV_PID[$name]=$!
    srv_wait_socket "$name"
}

srv_pid() { echo "${NBD_SRV_PID[$1]}"; }

srv_stop() {
    local name=$1 sig=${2:-TERM} pid=${NBD_SRV_PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill -"$sig" "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    unset "NBD_SRV_PID[$name]"
    rm -f "$WORK/$name.sock"
}

uri() { echo "nbd+unix:///${2:-}?socket=$WORK/$1.sock"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

seek_extents() {
    timeout 30 python3 - "$1" <<'PY'
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size, off = os.fstat(fd).st_size, 0
while off < size:
    try:
        start = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            break
        raise
    end = os.lseek(fd, start, os.SEEK_HOLE)
    print(start, end)
    off = end
PY
}

map_extents() {
    qemu-img map --output=json "$@" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    if not e["data"]:
        continue
    s, n = e["start"], e["start"] + e["length"]
    if out and out[-1][1] == s:
        out[-1][1] = n
    else:
        out.append([s, n])
for s, n in out:
    print(s, n)'
}

# tests/integration/lib-nbd-tool.sh -- the prologue shared by the
# nbd-tool*.sh tests ("blockgraph nbd", qemu-nbd's command line). Sourced,
# not run: deliberately not executable. Source it right after "set -u".
#
# Provides:
#   BLOCKGRAPH        the binary, absolute (FAIL, exit 1, if not executable);
#                     skips (77) without qemu-nbd, qemu-img or nbdinfo
#   WORK              a temporary directory named after the script, removed
#                     on exit; the test runs in it
#   failures          failed checks; ok/bad DESC print and count
#   PIDS              processes to stop at exit (SIGTERM, then SIGKILL)
#   alive PID         exists and is not a zombie
#   wait_dead PID [N] gone within N tenths of a second (default 100)
#   wait_socket PATH  a unix socket at PATH within 10 s
#   free_port         a TCP port free right now
#   start_bg_nbd SOCK ARGS...   removes SOCK, runs "blockgraph nbd -k SOCK ARGS" in the
#                     background, appends its pid to PIDS, sets LAST_PID, and
#                     waits for the socket (1 if it never came)
#   start_qemu_nbd SOCK ARGS... the same with qemu-nbd
#   stop PID          SIGTERM and wait (SIGKILL after 10 s)
#   nbdinfo_json URI  nbdinfo --json, one export

BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
if [ ! -x "$BLOCKGRAPH" ]; then
    echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
    exit 1
fi
BLOCKGRAPH=$(cd "$(dirname "$BLOCKGRAPH")" && pwd -P)/$(basename "$BLOCKGRAPH")
for tool in qemu-nbd qemu-img qemu-io nbdinfo; do
    if ! command -v $tool >/dev/null; then
        echo "SKIP: $tool not installed (Debian packages qemu-utils, libnbd-bin)"
        exit 77
    fi
done

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-$(basename "$0" .sh).XXXXXX")
WORK=$(cd "$WORK" && pwd -P)
PIDS=()
LAST_PID=
failures=0

ok() { echo "  ok    $*"; }
bad() { echo "  FAIL  $*"; failures=$((failures + 1)); }

alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
wait_dead() {
    for _ in $(seq "${2:-100}"); do alive "$1" || return 0; sleep 0.1; done
    return 1
}
wait_socket() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    return 1
}
free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
start_bg_nbd() {
    local sock=$1
    shift
    rm -f "$sock"
    "$BLOCKGRAPH" nbd -k "$sock" "$@" 2>>"$WORK/server.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_socket "$sock"
}
start_qemu_nbd() {
    local sock=$1
    shift
    rm -f "$sock"
    qemu-nbd -k "$sock" "$@" 2>>"$WORK/server.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_socket "$sock"
}
stop() {
    alive "$1" || { wait "$1" 2>/dev/null; return 0; }
    kill -TERM "$1" 2>/dev/null
    wait_dead "$1" 100 || kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    return 0
}
nbdinfo_json() { nbdinfo --json "$1" 2>>"$WORK/client.err"; }
# A field of the first export of nbdinfo's JSON on stdin.
json_field() {
    /usr/bin/python3 -c 'import json, sys; v = json.load(sys.stdin)["exports"][0].get(sys.argv[1]); print(json.dumps(v))' "$1"
}

# Passes DESC if WANT and GOT are the same text, else fails it with a diff.
same_text() { # DESC WANT GOT
    if [ "$2" = "$3" ]; then
        ok "$1 ($(echo "$3" | wc -l) lines)"
    else
        bad "$1"
        diff <(echo "$2") <(echo "$3") | sed 's/^/        /'
    fi
}

# The image the listing tests serve: 4 MiB qcow2, bitmaps b0 and b1, 64k of data.
make_list_image() {
    qemu-img create -q -f qcow2 img.qcow2 4M
    qemu-img bitmap --add img.qcow2 b0
    qemu-img bitmap --add img.qcow2 b1
    qemu-io -f qcow2 -c 'write -P 1 0 64k' img.qcow2 >/dev/null
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do alive "$pid" && kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait_dead "$pid" 50 || kill -KILL "$pid" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

cd "$WORK" || exit 1

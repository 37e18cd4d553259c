#!/bin/bash
# tests/integration/file-locking.sh -- image locking of the `file` driver
# against the real QEMU tools: blockgraph and qemu-io/qemu-img must see each
# other's OFD byte locks (QEMU's scheme: byte 100+i while permission i is
# held, byte 200+i while it is not shared).
#
#  (a) qemu-io holds a qcow2 image (the qcow2 node writes its file and does
#      not share write): blockgraph opening the file writable must fail with
#      QEMU's message; read-only and locking=off opens work; once qemu-io
#      quits, blockgraph gets the image.
#  (b) `blockgraph io` holds a raw image writable, commands from a fifo:
#      qemu-img convert (which does not share write) must fail with 'Failed to
#      get shared "write" lock'; qemu-io's write must fail exactly when
#      blockgraph refuses to share write; force-share reads work; after
#      blockgraph quits, everything works.
#
# Needs BLOCKGRAPH (set by "make check-integration"), qemu-io, qemu-img and
# python3 (to look at lock bytes). Exit 77 (skip) if the QEMU tools are missing.
set -u

if ! command -v qemu-io >/dev/null || ! command -v qemu-img >/dev/null; then
    echo "SKIP: qemu-io / qemu-img not installed (Debian package qemu-utils)"
    exit 77
fi
BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
if [ ! -x "$BLOCKGRAPH" ]; then
    echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
    exit 1
fi
if ! "$BLOCKGRAPH" io --help >/dev/null 2>&1; then
    echo "FAIL: '$BLOCKGRAPH io' is not available"
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-file-locking.XXXXXX")
HOLDER_PID=
HOLDER_FD_OPEN=0
failures=0

stop_holder() {
    if [ "$HOLDER_FD_OPEN" = 1 ]; then
        echo quit >&3 2>/dev/null
        exec 3>&-
        HOLDER_FD_OPEN=0
    fi
    if [ -n "$HOLDER_PID" ]; then
        for _ in $(seq 50); do
            kill -0 "$HOLDER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill "$HOLDER_PID" 2>/dev/null
        wait "$HOLDER_PID" 2>/dev/null
        HOLDER_PID=
    fi
}
cleanup() {
    stop_holder
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ok() { echo "  ok    $*"; }
bad() { echo "  FAIL  $*"; failures=$((failures + 1)); }

# lock_held FILE BYTE: true if another open file description holds a lock on
# BYTE of FILE (F_OFD_GETLK with an exclusive probe, like QEMU's test).
lock_held() {
    python3 - "$1" "$2" <<'EOF'
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
# struct flock on Linux/x86_64 and aarch64: short type, short whence, off_t
# start, off_t len, pid_t pid.
fl = struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, int(sys.argv[2]), 1, 0)
res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, fl)
sys.exit(0 if struct.unpack("hh4xqqi4x", res)[0] != fcntl.F_UNLCK else 1)
EOF
}

# wait_lock FILE BYTE: waits up to 10 s for the holder to lock BYTE.
wait_lock() {
    for _ in $(seq 100); do
        lock_held "$1" "$2" && return 0
        kill -0 "$HOLDER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# start_holder LOG CMD...: runs CMD in the background reading commands from a
# fifo that stays open (fd 3) until stop_holder.
start_holder() {
    local log=$1
    shift
    rm -f "$WORK/fifo"
    mkfifo "$WORK/fifo"
    "$@" <"$WORK/fifo" >"$log" 2>&1 &
    HOLDER_PID=$!
    exec 3>"$WORK/fifo"
    HOLDER_FD_OPEN=1
}

# expect_fail DESC PATTERN... -- CMD...: CMD must fail and print every PATTERN.
expect_fail() {
    local desc=$1
    shift
    local pats=()
    while [ "$1" != "--" ]; do
        pats+=("$1")
        shift
    done
    shift
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    if [ $rc -eq 0 ]; then
        bad "$desc: succeeded, expected a lock failure"
        echo "$out" | sed 's/^/        /'
        return
    fi
    for p in "${pats[@]}"; do
        if ! grep -qF -- "$p" <<<"$out"; then
            bad "$desc: output lacks '$p'"
            echo "$out" | sed 's/^/        /'
            return
        fi
    done
    ok "$desc"
}

# expect_ok DESC CMD...
expect_ok() {
    local desc=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        ok "$desc"
    else
        bad "$desc: failed"
        echo "$out" | sed 's/^/        /'
    fi
}

echo "file-locking: $BLOCKGRAPH against $(qemu-io --version | head -1)"

# ---------------------------------------------------------------- (a)
echo "(a) qemu-io holds a qcow2 image"
Q=$WORK/a.qcow2
qemu-img create -q -f qcow2 "$Q" 1M
start_holder "$WORK/a.log" qemu-io -f qcow2 "$Q"
if wait_lock "$Q" 201; then
    ok "qemu-io holds the write lock bytes (101, 201)"
    expect_fail "blockgraph io writable is refused" \
        'Failed to get "write" lock' "Is another process using the image [$Q]?" -- \
        "$BLOCKGRAPH" io -f raw -c 'write 0 4k' "$Q"
    expect_ok "blockgraph io read-only is allowed (as for qemu-io -r)" \
        "$BLOCKGRAPH" io -f raw -r -c 'read 0 4k' "$Q"
    expect_ok "blockgraph io with file.locking=off is allowed" \
        "$BLOCKGRAPH" io -r --image-opts -c 'read 0 4k' \
        "driver=raw,file.driver=file,file.filename=$Q,file.locking=off"
    if lock_held "$Q" 100 && lock_held "$Q" 201; then
        ok "qemu-io's locks survive blockgraph's failed attempt"
    else
        bad "qemu-io's locks disappeared"
    fi
else
    bad "qemu-io did not lock $Q"
    sed 's/^/        /' "$WORK/a.log"
fi
stop_holder
expect_ok "blockgraph io writable once qemu-io has quit" \
    "$BLOCKGRAPH" io -f raw -c 'read 0 4k' "$Q"

# ---------------------------------------------------------------- (b)
echo "(b) blockgraph io holds a raw image"
IMG=$WORK/b.raw
qemu-img create -q -f raw "$IMG" 1M
start_holder "$WORK/b.log" "$BLOCKGRAPH" io -f raw "$IMG"
if wait_lock "$IMG" 101; then
    ok "blockgraph io holds the write lock byte (101)"
    expect_fail "qemu-img convert (does not share write) is refused" \
        'Failed to get shared "write" lock' "Is another process using the image [$IMG]?" -- \
        qemu-img convert -f raw -O raw "$IMG" "$WORK/copy.raw"
    if lock_held "$IMG" 201; then
        expect_fail "qemu-io write is refused (blockgraph does not share write)" \
            'Failed to get "write" lock' "Is another process using the image [$IMG]?" -- \
            qemu-io -f raw -c 'write 0 4k' "$IMG"
    else
        expect_ok "qemu-io write is allowed (blockgraph shares write, as qemu-io does)" \
            qemu-io -f raw -c 'write 0 4k' "$IMG"
    fi
    expect_ok "qemu-io -U (force-share) read is allowed" \
        qemu-io -U -r -f raw -c 'read 0 4k' "$IMG"
else
    bad "blockgraph io did not lock $IMG"
    sed 's/^/        /' "$WORK/b.log"
fi
stop_holder
held=
for b in 100 101 102 103 200 201 202 203; do
    lock_held "$IMG" $b && held="$held $b"
done
if [ -z "$held" ]; then
    ok "blockgraph released every lock byte on exit"
else
    bad "lock bytes still held after blockgraph quit:$held"
fi
expect_ok "qemu-img convert once blockgraph has quit" \
    qemu-img convert -f raw -O raw "$IMG" "$WORK/copy.raw"

if [ $failures -ne 0 ]; then
    echo "file-locking: $failures check(s) failed"
    exit 1
fi
echo "file-locking: all checks passed"
exit 0

#!/bin/bash
# tests/conformance/fuse-conformance.sh -- the conformance stacks through the
# kernel (docs/conformance.md, "Through FUSE").
#
# For every stack of tests/conformance/stacks.txt (the conformance binary
# creates its images: "conformance --prepare"), "blockgraph daemon" exports
# the stack through FUSE and external programs drive the mount:
#   py     tests/conformance/fuse_io.py: os.pread/os.pwrite, reads and writes
#          past the end, fsync, fallocate punch-hole/zero-range,
#          SEEK_DATA/SEEK_HOLE, concurrent writer threads
#   fio    fio randwrite --verify=crc32c (O_DIRECT, iodepth 16, 512 B..128 KiB)
#          on [8 MiB, 12 MiB), read back and verified through the mount
#   stop   SIGTERM: the daemon exits 0 and leaves nothing mounted
#   image  after the daemon is gone: qemu-img converts the stack to raw and
#          the result holds what py and fio wrote (fuse_io.py verify,
#          fio --verify_only); qemu-img check passes for every format node
# Stacks that drop writes (null-co) skip fio: a skip, never a pass.
#
# Environment: BLOCKGRAPH, CONFORMANCE (the binaries), CONF_FUSE_STACKS
# (comma-separated globs), CI (missing tools fail instead of skipping).
set -euo pipefail
export FUSE_TEST_BUDGET=${FUSE_TEST_BUDGET:-600}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../integration/lib-fuse.sh disable=SC2154  # fuse_checks, fuse_failures
source "$HERE/../integration/lib-fuse.sh"
fuse_require_tools fio
# The rbd stacks find the cluster (scripts/with-ceph.sh's BG_CEPH_DIR).
if [ -n "${BG_CEPH_DIR:-}" ] && [ -z "${CEPH_CONF:-}" ]; then export CEPH_CONF=$BG_CEPH_DIR/ceph.conf; fi
# Images that live outside a stack's directory (rbd) are removed by its
# "unserve" (docs/conformance.md): after each stack, and on every exit path.
unserve() { if [ -f "$1/unserve" ]; then (cd "$1" && sh ./unserve) || true; fi; }
fuse_cleanup_hook() {
    local u
    for u in "$WORK"/s*/unserve; do
        if [ -f "$u" ]; then unserve "$(dirname "$u")"; fi
    done
}
CONFORMANCE=${CONFORMANCE:-$HERE/../../build/tests/conformance/conformance}
[ -x "$CONFORMANCE" ] || { echo "FAIL: CONFORMANCE=$CONFORMANCE is not an executable"; exit 1; }
STACKS_FILE=$HERE/stacks.txt

ENGINE=io_uring
truncate -s 1M probe
if ! timeout 20 fio --name=probe --filename=probe --size=1M --rw=write --bs=4k --ioengine=io_uring \
    --direct=1 >/dev/null 2>&1; then
    ENGINE=libaio
fi
rm -f probe
FIO_JOB=(--name=conf --offset=8m --size=4m --rw=randwrite --bsrange=512-128k --verify=crc32c --verify_fatal=1
    --verify_state_save=0 --randseed=4242)

matches() {
    local name=$1 g
    [ -z "${CONF_FUSE_STACKS:-}" ] && return 0
    IFS=, read -ra globs <<<"$CONF_FUSE_STACKS"
    for g in "${globs[@]}"; do
        # shellcheck disable=SC2053
        [[ $name == $g ]] && return 0
    done
    return 1
}

declare -A CELL=()
NAMES=()
n_fail=0
n_skip=0
mark() { # NAME COLUMN pass|FAIL|skip
    CELL[$1:$2]=$3
    case $3 in FAIL) n_fail=$((n_fail + 1)) ;; skip) n_skip=$((n_skip + 1)) ;; esac
}

idx=0
while read -r name caps; do
    matches "$name" || continue
    idx=$((idx + 1))
    NAMES+=("$name")
    echo "$name ($caps)"
    d=$WORK/s$idx
    mkdir -p "$d"
    if ! out=$("$CONFORMANCE" --stacks "$STACKS_FILE" --prepare "$name" "$d"); then
        bad "$name: --prepare failed: $out"
        for c in py fio stop image; do mark "$name" $c FAIL; done
        continue
    fi
    # A stack served over the network (docs/conformance.md, "serve").
    if [ -f "$d/serve" ] && ! sout=$(cd "$d" && sh ./serve 2>&1); then
        bad "$name: starting its server failed: $sout"
        for c in py fio stop image; do mark "$name" $c FAIL; done
        continue
    fi
    [ -f "$d/serve.pid" ] && FUSE_BG_PIDS+=("$(cat "$d/serve.pid")")
    mapfile -t lines <<<"$out"
    json=${lines[1]}
    qjson=${lines[2]}
    checks=("${lines[@]:3}")
    drops=0
    [[ ,$caps, == *,drops-writes,* ]] && drops=1
    timeout 120 qemu-img convert -O raw "$qjson" "$d/init.raw"
    mp=$d/mp
    touch "$mp"
    if ! fuse_start "c$idx" --blockdev "$json" \
        --export "type=fuse,id=e,node-name=top,mountpoint=$mp,writable=on"; then
        bad "$name: daemon did not start"
        for c in py fio stop image; do mark "$name" $c FAIL; done
        continue
    fi
    pyargs=()
    [ $drops = 1 ] && pyargs+=(--drops)
    if timeout -k 5 120 python3 "$HERE/fuse_io.py" run "$mp" "$d/init.raw" "$d/state.json" --seed $idx "${pyargs[@]}" \
        >"$d/py.log" 2>&1; then
        ok "$name: python os.pread/os.pwrite cases"
        mark "$name" py pass
    else
        bad "$name: python cases:"
        sed 's/^/      /' "$d/py.log" | grep -v "^      *ok" | head -10
        mark "$name" py FAIL
    fi
    if [ $drops = 1 ]; then
        echo "  skip  $name: fio verification (the stack drops writes)"
        mark "$name" fio skip
    elif timeout -k 5 120 fio "${FIO_JOB[@]}" --filename="$mp" --ioengine=$ENGINE --direct=1 --iodepth=16 >"$d/fio.log" 2>&1; then
        ok "$name: fio randwrite + crc32c verify through the mount"
        mark "$name" fio pass
    else
        bad "$name: fio through the mount:"
        grep -iE 'verify|err|bad' "$d/fio.log" | head -5 | sed 's/^/      /'
        mark "$name" fio FAIL
    fi
    fuse_stop "c$idx"
    if [ "$FUSE_RC" = 0 ] && [ "$FUSE_LEFT_MOUNTED" = 0 ]; then
        ok "$name: daemon exited 0 on SIGTERM, unmounted"
        mark "$name" stop pass
    else
        bad "$name: daemon exit $FUSE_RC, left mounted: $FUSE_LEFT_MOUNTED; $(tail -3 "$WORK/c$idx.err")"
        mark "$name" stop FAIL
    fi
    img_ok=1
    if ! timeout 120 qemu-img convert -O raw "$qjson" "$d/out.raw" 2>"$d/convert.log"; then
        bad "$name: qemu-img convert of the stack: $(cat "$d/convert.log")"
        img_ok=0
    else
        if python3 "$HERE/fuse_io.py" verify "$d/out.raw" "$d/state.json" >"$d/verify.log" 2>&1; then
            ok "$name: the image holds what python wrote"
        else
            bad "$name: $(grep FAIL "$d/verify.log" | head -3)"
            img_ok=0
        fi
        if [ $drops = 0 ]; then
            if timeout 60 fio "${FIO_JOB[@]}" --filename="$d/out.raw" --verify_only --ioengine=psync \
                >"$d/fio-verify.log" 2>&1; then
                ok "$name: the image holds what fio wrote (fio --verify_only)"
            else
                bad "$name: fio --verify_only of the image:"
                grep -iE 'verify|err|bad' "$d/fio-verify.log" | head -5 | sed 's/^/      /'
                img_ok=0
            fi
        fi
    fi
    for c in "${checks[@]}"; do
        [ -n "$c" ] || continue
        if cout=$(timeout 60 qemu-img check "$c" 2>&1); then
            ok "$name: qemu-img check"
        else
            bad "$name: qemu-img check: $cout"
            img_ok=0
        fi
    done
    if [ $img_ok = 1 ]; then mark "$name" image pass; else mark "$name" image FAIL; fi
    if [ -f "$d/serve.pid" ]; then
        spid=$(cat "$d/serve.pid")
        kill "$spid" 2>/dev/null || true
        # Gone or a zombie: a forked server is an orphan, reaped by PID 1
        # (sometimes seconds later).
        for _ in $(seq 100); do
            [ "$(awk '{ print $3 }' "/proc/$spid/stat" 2>/dev/null || echo Z)" = Z ] && break
            sleep 0.05
        done
        kill -9 "$spid" 2>/dev/null || true
        keep=()
        for p in "${FUSE_BG_PIDS[@]}"; do [ "$p" = "$spid" ] || keep+=("$p"); done
        FUSE_BG_PIDS=("${keep[@]}")
    fi
    unserve "$d"
    rm -rf "$d"
done < <("$CONFORMANCE" --stacks "$STACKS_FILE" --list)

echo
printf '%-24s %-6s %-6s %-6s %-6s\n' stack py fio stop image
for n in "${NAMES[@]}"; do
    printf '%-24s %-6s %-6s %-6s %-6s\n' "$n" "${CELL[$n:py]}" "${CELL[$n:fio]}" "${CELL[$n:stop]}" "${CELL[$n:image]}"
done
echo "fuse-conformance: ${#NAMES[@]} stacks, $fuse_checks checks, $fuse_failures failed; $n_fail failed cells, $n_skip skipped cells"
[ ${#NAMES[@]} -gt 0 ] || { echo "fuse-conformance: no stack matched '${CONF_FUSE_STACKS:-}'"; exit 1; }
finish

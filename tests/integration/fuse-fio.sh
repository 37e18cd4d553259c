#!/bin/bash
# tests/integration/fuse-fio.sh -- fio data verification through a FUSE
# export, in the main loop and multi-queue (iothreads).
#
# For each format and each configuration
#   main loop | one iothread (iothread=t0) | two iothreads (iothread.0=t0,
#   iothread.1=t1)  x  O_DIRECT io_uring iodepth=64 | buffered,
# plus 700-byte O_DIRECT libaio writes (many in flight at once, neighbours
# sharing sectors) on a file node with cache.direct=on, so that the block
# layer's read-modify-write must serialise them, in the main loop and with
# two iothreads, and a growable export of an empty image that a sequential
# fio writer (iodepth 64, two iothreads) grows to 16 MiB, and 1 MiB writes
# in the main loop (iodepth 16: the burst queue, a second reader of
# /dev/fuse, must serve some of them, and 4 KiB ones none; and a SIGTERM
# while it reads must stop the daemon cleanly),
# fio writes random blocks (randwrite, --verify=crc32c, several jobs on
# disjoint regions) through the mount and reads them back verifying every
# block (--verify_fatal). Then the daemon gets SIGTERM (exit 0, unmounted,
# --stats shows the number of queues) and the image itself -- converted to
# raw with qemu-img for non-raw formats -- passes "fio --verify_only" with
# the same job, so what the mount acknowledged is what the image holds;
# qemu-img check where the format has checks.
# fio's io_uring engine falls back to libaio where io_uring is disabled.
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools fio

ENGINE=io_uring
truncate -s 1M probe
if ! timeout 20 fio --name=probe --filename=probe --size=1M --rw=write --bs=4k --ioengine=io_uring \
    --direct=1 >/dev/null 2>&1; then
    ENGINE=libaio
    echo "  note: fio's io_uring engine does not work here; using libaio"
fi
rm -f probe

SIZE=$((128 << 20))
JOB_SIZE=$((24 << 20))
# name | export options | file node options | fio options
CONFIGS=(
    "main-direct|||--direct=1 --ioengine=$ENGINE --iodepth=64 --bs=4k --numjobs=2"
    "main-buffered|||--direct=0 --ioengine=$ENGINE --iodepth=64 --bsrange=1k-2m --numjobs=2"
    "main-1m|||--direct=1 --ioengine=$ENGINE --iodepth=16 --bs=1m --numjobs=2"
    "1thread-direct|,iothread=t0||--direct=1 --ioengine=$ENGINE --iodepth=64 --bsrange=4k-64k --numjobs=2"
    "2threads-direct|,iothread.0=t0,iothread.1=t1||--direct=1 --ioengine=$ENGINE --iodepth=64 --bs=4k --numjobs=4"
    "2threads-buffered|,iothread.0=t0,iothread.1=t1||--direct=0 --ioengine=$ENGINE --iodepth=64 --bsrange=512-1m --numjobs=4"
    "main-rmw||cache.direct=on|--direct=1 --ioengine=libaio --iodepth=64 --bs=700 --numjobs=1 --size=6m"
    "2threads-rmw|,iothread.0=t0,iothread.1=t1|cache.direct=on|--direct=1 --ioengine=libaio --iodepth=64 --bs=700 --numjobs=2 --size=6m"
)

run_fio() {
    local file=$1 log=$2
    shift 2
    timeout -k 5 40 fio --name=v --filename="$file" --size=$JOB_SIZE --offset_increment=$((JOB_SIZE + 4096)) \
        --rw=randwrite --verify=crc32c --verify_fatal=1 --verify_state_save=0 --group_reporting \
        "$@" >"$log" 2>&1
}

for fmt in $FUSE_FORMATS; do
    for c in "${CONFIGS[@]}"; do
        IFS='|' read -r name expopts fileopts fioopts <<<"$c"
        d="$fmt $name"
        echo "$d"
        rm -f img img.raw mp
        fuse_image "$fmt" img $SIZE
        touch mp
        fuse_blockdevs "$fmt" img "$fileopts"
        objs=()
        queues=1
        case $expopts in
            *iothread.1=*) objs=(--object iothread,id=t0 --object iothread,id=t1) queues=2 ;;
            *iothread=*) objs=(--object iothread,id=t0) ;;
        esac
        if ! fuse_start d "${objs[@]}" "${BLOCKDEVS[@]}" --stats \
            --export "type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on$expopts"; then
            bad "$d: daemon did not start"
            continue
        fi
        # shellcheck disable=SC2086
        if run_fio mp fio.log $fioopts; then
            ok "$d: fio randwrite + verify through the mount"
        else
            bad "$d: fio through the mount failed:"
            grep -iE 'verify|err|bad' fio.log | head -10 | sed 's/^/    /'
        fi
        fuse_stop_check d "$d"
        if grep -q "^export 'e' (fuse, .*, $queues queue" d.err; then
            ok "$d: $queues queue(s) in --stats"
        else
            bad "$d: --stats does not show $queues queue(s): $(head -1 d.err)"
        fi
        # The burst queue (a second reader while big requests arrive) is
        # there without iothreads; it reads only for big requests.
        burst=$(grep -oE "burst queue: woken [0-9]+ times, [0-9]+ requests read" d.err || true)
        case $name in
            main-1m)
                if [[ $burst =~ woken\ ([0-9]+)\ times,\ ([0-9]+)\ requests ]] && [ "${BASH_REMATCH[1]}" -ge 1 ] &&
                    [ "${BASH_REMATCH[2]}" -ge 1 ]; then
                    ok "$d: the burst queue served some of the 1 MiB writes ($burst)"
                else
                    bad "$d: the burst queue did not serve 1 MiB writes: ${burst:-no burst line}"
                fi ;;
            main-direct)
                check "$d: 4 KiB requests leave the burst queue parked ($burst)" \
                    [ "$burst" = "burst queue: woken 0 times, 0 requests read" ] ;;
        esac
        img_check "$d" img "$fmt"
        target=img
        if [ "$fmt" != raw ]; then
            timeout 60 qemu-img convert -f "$fmt" -O raw img img.raw
            target=img.raw
        fi
        # shellcheck disable=SC2086
        if run_fio $target fio-verify.log $fioopts --verify_only --ioengine=psync --direct=0; then
            ok "$d: fio --verify_only of the image after unmount"
        else
            bad "$d: the image does not hold what fio wrote:"
            grep -iE 'verify|err|bad' fio-verify.log | head -10 | sed 's/^/    /'
        fi
    done

    # SIGTERM while the burst queue is reading: the daemon stops within
    # the harness's 20 s, unmounts, and the image stays consistent.
    d="$fmt burst-sigterm"
    echo "$d"
    rm -f img mp
    fuse_image "$fmt" img $SIZE
    touch mp
    fuse_blockdevs "$fmt" img
    if fuse_start s "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on; then
        timeout -k 5 40 fio --name=s --filename=mp --size=$JOB_SIZE --rw=write --bs=1m --iodepth=16 --direct=1 \
            --ioengine=$ENGINE --time_based=1 --runtime=20 >fio.log 2>&1 &
        fio_pid=$!
        sleep 2
        fuse_stop_check s "$d"
        wait $fio_pid || true
        img_check "$d" img "$fmt"
    else
        bad "$d: daemon did not start"
    fi

    # Growable, from empty: a sequential writer extends the image request by
    # request (iodepth 64, two iothreads).
    d="$fmt growable-from-empty"
    echo "$d"
    rm -f img img.raw mp
    fuse_image "$fmt" img 0
    touch mp
    fuse_blockdevs "$fmt" img
    GROW_JOB=(--name=g --size=$((16 << 20)) --rw=write --bsrange=4k-256k --verify=crc32c --verify_fatal=1
        --verify_state_save=0)
    if fuse_start g --object iothread,id=t0 --object iothread,id=t1 "${BLOCKDEVS[@]}" \
        --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on,growable=on,iothread.0=t0,iothread.1=t1; then
        if timeout -k 5 40 fio "${GROW_JOB[@]}" --filename=mp --create_on_open=1 --ioengine=$ENGINE --iodepth=64 \
            --direct=1 >fio.log 2>&1; then
            ok "$d: fio write + verify growing the image"
        else
            bad "$d: fio failed:"
            grep -iE 'verify|err' fio.log | head -5 | sed 's/^/    /'
        fi
        check "$d: size 16M" [ "$(stat -c %s mp)" = $((16 << 20)) ]
        fuse_stop_check g "$d"
        img_check "$d" img "$fmt"
        target=img
        if [ "$fmt" != raw ]; then
            timeout 60 qemu-img convert -f "$fmt" -O raw img img.raw
            target=img.raw
        fi
        if timeout -k 5 40 fio "${GROW_JOB[@]}" --filename=$target --verify_only --ioengine=psync \
            >fio-verify.log 2>&1; then
            ok "$d: fio --verify_only of the image after unmount"
        else
            bad "$d: the image does not hold what fio wrote:"
            grep -iE 'verify|err' fio-verify.log | head -5 | sed 's/^/    /'
        fi
    else
        bad "$d: daemon did not start"
    fi
done
finish

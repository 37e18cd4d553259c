#!/bin/bash
# tests/integration/io-compare.sh -- "blockgraph io" against the real qemu-io.
#
# Each case runs the same commands through both tools on two copies of one
# image and requires the same stdout, stderr and exit status (timing numbers
# aside, see io-lib.sh) and identical images afterwards (cmp and qemu-img
# compare). Cases: data commands (write -P/-z/-u/-f/-C/-q, discard, read
# -P/-v/-l/-s, readv/writev, alloc, map, length, flush), unaligned I/O,
# truncate, errors inside commands, aio_* with aio_flush (sorted: completion
# order is not defined), read-only images, every cache and aio mode,
# misaligned buffers, and a long pseudo-random sequence.
#
# Formats: IO_TEST_FORMATS (default "raw"); add qcow2 once it is implemented.
# Needs BLOCKGRAPH, qemu-io and qemu-img (exit 77 without them, unless CI).
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "io-compare: $BLOCKGRAPH against $(qemu-io --version | head -1)"
printf 'blockgraph io -s pattern\n' >"$WORK/pattern"

for fmt in ${IO_TEST_FORMATS:-raw}; do
    echo "format $fmt"
    OPTS=(-f "$fmt")

    fresh_images "$fmt" 4M
    compare "$fmt: write -P / read -P / read -v / length / map" \
        'write -P 0xa5 0 64k' 'read -P 0xa5 0 64k' 'read -P 0 64k 64k' 'read -v 65520 32' \
        'length' 'map' 'alloc 0 1M' 'alloc 3M'
    compare "$fmt: write -z, -z -u, discard read back as zeroes" \
        'write -P 1 0 1M' 'write -z 4k 8k' 'write -z -u 64k 64k' 'discard 256k 128k' \
        'read -P 1 0 4k' 'read -P 0 4k 8k' 'read -P 0 64k 64k' 'read -P 0 256k 128k' 'read -P 1 384k 640k' \
        'map' 'flush'
    compare "$fmt: write -f (FUA), -C and -q reports" \
        'write -f -P 2 1M 4k' 'write -C -P 3 2M 512' 'read -C -P 3 2M 512' 'read -q -P 2 1M 4k' \
        'discard -C 3M 4k' 'discard -q 3M 4k' 'write -q 0 1'
    compare "$fmt: read -l / -s partial pattern checks" \
        'write -P 7 8k 100' 'read -P 7 -s 0 -l 100 8k 200' 'read -P 0 -s 100 8k 200' \
        'read -P 7 -s 50 -l 60 8k 4k'
    compare "$fmt: writev / readv" \
        'writev -P 9 4096 512 1k 2560' 'readv -P 9 4096 2k 2k' 'readv -v 4096 16 16' 'readv -P 8 4096 512'
    compare "$fmt: unaligned and sub-sector I/O" \
        'write -P 0x11 1 1' 'write -P 0x22 511 2' 'write -P 0x33 4095 4099' 'read -v 0 32' \
        'read -v 500 20' 'read -P 0x33 4095 4099' 'write -z 3 1021' 'read -v 0 16'
    compare "$fmt: zero-length requests" 'read 0 0' 'write 0 0' 'discard 0 0' 'read 4M 0'
    compare "$fmt: large request across the image" \
        'write -P 0x5a 512k 3M' 'read -P 0x5a 512k 3M' 'read -P 0 0 512k' 'read -P 0 3584k 512k'

    fresh_images "$fmt" 1M
    compare "$fmt: truncate grow, write at the new end, shrink" \
        'length' 'truncate 3M' 'length' 'write -P 4 2M 1M' 'read -P 0 1M 1M' 'truncate 1536k' 'length' \
        'read -P 4 1M 0' 'read 1536k 1' 'map' 'truncate -m falloc 2M' 'read -P 0 1536k 512k' \
        'truncate -m full 3M' 'read -P 0 2M 1M' 'length'

    fresh_images "$fmt" 1M
    compare "$fmt: errors inside commands" \
        'read 1M 1' 'write 1048575 2' 'discard 2M 4k' 'write -z 1M 4k' 'read 0 3G' 'write 0 3G' \
        'read x 4k' 'read 0 4q' 'read 0 99999999999999999999' 'read -P 0x100 0 1' 'read -P 1x 0 1' \
        'read -l 10 0 64' 'read -s 70 -P 0 0 64' 'read -Z 0 1' 'read 0' 'read 0 1 2' \
        'write -u 0 1' 'write -n 0 1' 'write -z -P 1 0 1' 'write -b -z 0 1' 'write -f -c 0 512' \
        'write -c 1 512' 'write -b 0 512' 'write -s /nonexistent 0 4k' \
        'truncate' 'truncate x' 'truncate -m bogus 1M' 'alloc x' 'map x' 'length x' 'flush x' \
        'sleep' 'sleep x' 'sleep -1' 'help nosuch' 'nosuch' 'aio_read 0' 'aio_write -u 0 1' \
        'aio_write -z 0 1 2' 'aio_read x 1' 'aio_write 0 x'
    compare "$fmt: pattern mismatch fails the command, later commands still run" \
        'write -P 1 0 4k' 'read -P 2 0 4k' 'read -P 1 0 4k'
    compare "$fmt: quit stops, aliases work" \
        'w -P 3 0 512' 'r -P 3 0 512' 'l' 'f' 'a 0' 'd 0 512' 'quit' 'write 0 1'
    compare "$fmt: sleep and help" 'sleep 20' 'help quit' 'help length' 'help map' 'help aio_flush'
    compare "$fmt: write -s fills from a file, repeated" \
        "write -s $WORK/pattern 0 3000" 'read -v 0 48' 'read -v 2950 50'

    # aio: completions may come in any order, so the lines are compared
    # sorted; the requests do not overlap, so the images must still match.
    fresh_images "$fmt" 4M
    COMPARE_SORT=1
    cmds=()
    for i in $(seq 0 15); do cmds+=("aio_write -P $((i + 1)) $((i * 64))k 64k"); done
    cmds+=('aio_flush')
    for i in $(seq 0 15); do cmds+=("aio_read -P $((i + 1)) $((i * 64))k 64k"); done
    cmds+=('aio_flush')
    compare "$fmt: 16 concurrent aio_write, aio_flush, 16 aio_read -P" "${cmds[@]}"
    compare "$fmt: aio_write -z / -u, -q, -C, -i, aio_read -v, a failing aio" \
        'aio_write -z 0 64k' 'aio_write -z -u 64k 64k' 'aio_write -q -P 5 2M 4k' 'aio_write -C -P 6 3M 512' \
        'aio_read -i 0 1' 'aio_write -i 0 1' 'aio_flush' 'aio_read -v 2M 16' 'aio_read -C 3M 512' \
        'aio_write 4M 4k' 'aio_read 4M 1' 'aio_flush' 'aio_read -P 9 0 4k' 'aio_flush'
    compare "$fmt: aio requests complete during later commands and at exit" \
        'aio_write -P 7 1M 1M' 'read -P 0 0 4k' 'aio_write -P 8 2M 4k 4k' 'sleep 10' \
        'aio_read -P 0 3M 512k'
    COMPARE_SORT=0

    # Read-only: reads work, every write refuses.
    fresh_images "$fmt" 1M
    (cd "$WORK/q" && qemu-io -f "$fmt" -c 'write -P 0x42 0 64k' "img.$fmt" >/dev/null)
    cp "$WORK/q/img.$fmt" "$WORK/b/img.$fmt"
    OPTS=(-f "$fmt" -r)
    compare "$fmt: -r reads, refuses write / write -z / discard / truncate / aio_write" \
        'read -P 0x42 0 64k' 'write 0 4k' 'write -z 0 4k' 'discard 0 4k' 'truncate 2M' 'aio_write 0 4k' \
        'aio_flush' 'flush' 'length' 'read -P 0x42 0 64k'
    OPTS=(-f "$fmt" -r -U)
    compare "$fmt: -r -U reads" 'read -P 0x42 0 64k' 'write 0 1'

    # Cache and aio modes change how, not what.
    for t in none writeback writethrough directsync unsafe; do
        fresh_images "$fmt" 2M
        OPTS=(-f "$fmt" -t "$t")
        compare "$fmt: -t $t" 'write -P 1 0 64k' 'write -P 2 1 4095' 'read -P 2 1 4095' 'write -z 8k 8k' \
            'aio_write -P 3 1M 64k' 'aio_flush' 'read -P 3 1M 64k' 'flush'
    done
    for a in threads io_uring; do
        fresh_images "$fmt" 2M
        OPTS=(-f "$fmt" --aio "$a")
        compare "$fmt: --aio $a" 'write -P 1 0 64k' 'read -P 1 0 64k' 'discard 0 4k' 'read -P 0 0 4k'
    done
    fresh_images "$fmt" 2M
    OPTS=(-f "$fmt" -t none --aio native)
    compare "$fmt: -t none --aio native" 'write -P 1 0 64k' 'read -P 1 0 64k'
    OPTS=(-f "$fmt" --aio native)
    compare "$fmt: --aio native without cache.direct is refused" 'length'
    OPTS=(-f "$fmt" -n -m)
    compare "$fmt: -n -m (O_DIRECT with misaligned buffers)" \
        'write -P 6 0 64k' 'write -P 7 100 1000' 'read -P 7 100 1000' 'read -v 96 8'
    OPTS=(-f "$fmt" -d ignore)
    compare "$fmt: -d ignore keeps discarded data" 'write -P 8 0 64k' 'discard 0 64k' 'read -v 0 16'

    # A long pseudo-random sequence, checked through small read -v dumps and
    # the final images.
    fresh_images "$fmt" 8M
    OPTS=(-f "$fmt")
    RANDOM=4242
    cmds=()
    for i in $(seq 300); do
        off=$(((RANDOM * 32768 + RANDOM) % (8 * 1024 * 1024 - 70000)))
        len=$((RANDOM % 65536 + 1))
        case $((RANDOM % 10)) in
        0 | 1 | 2 | 3) cmds+=("write -P $((RANDOM % 256)) $off $len") ;;
        4) cmds+=("write -z $off $len") ;;
        5) cmds+=("write -z -u $((off / 4096 * 4096)) $((len / 4096 * 4096 + 4096))") ;;
        6) cmds+=("discard $((off / 4096 * 4096)) $((len / 4096 * 4096 + 4096))") ;;
        7) cmds+=("writev -P $((RANDOM % 256)) $off $((len / 3 + 1)) $((len / 2 + 1))") ;;
        *) cmds+=("read -v $off $((RANDOM % 64 + 1))") ;;
        esac
    done
    compare "$fmt: 300 random writes, zeroes, discards and reads" "${cmds[@]}"
done

finish

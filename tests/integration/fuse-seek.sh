#!/bin/bash
# tests/integration/fuse-seek.sh -- SEEK_DATA / SEEK_HOLE on a FUSE export
# against "qemu-img map --output=json" of the same image.
#
# For each format: an image with data at the start, in the middle (aligned,
# unaligned, one byte, across a block boundary), a punched hole inside a
# data run, and data ending exactly at EOF. A python3 script walks the
# mountpoint with os.lseek(SEEK_DATA/SEEK_HOLE) and lists the data extents;
# after the daemon stopped, qemu-img map's data=true extents (merged) must
# be the same list. Also asserted through the mount: SEEK_DATA inside a hole
# returns the next data, SEEK_HOLE inside data returns its end, SEEK_HOLE in
# the last data run returns EOF, SEEK_DATA/SEEK_HOLE at or after EOF fail
# with ENXIO; an all-sparse image has no data (SEEK_DATA 0: ENXIO, SEEK_HOLE
# 0: 0), and its qemu-img map agrees.
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools fallocate

M=$((1 << 20))
SIZE=$((32 * M))

cat >extents.py <<'EOF'
# extents.py FILE: data extents by SEEK_DATA/SEEK_HOLE, one "start end" a line.
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
off = 0
while off < size:
    try:
        start = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            break
        raise
    end = os.lseek(fd, start, os.SEEK_HOLE)
    if end <= start:
        sys.exit("SEEK_HOLE(%d) returned %d" % (start, end))
    print(start, end)
    off = end
EOF
cat >mapext.py <<'EOF'
# mapext.py < qemu-img map --output=json: merged data=true extents.
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
    print(s, n)
EOF
cat >seek.py <<'EOF'
# seek.py FILE WHENCE OFFSET: prints the result or the errno name.
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
w = {"data": os.SEEK_DATA, "hole": os.SEEK_HOLE}[sys.argv[2]]
try:
    print(os.lseek(fd, int(sys.argv[3]), w))
except OSError as e:
    print(errno.errorcode[e.errno])
EOF

# seek_is DESC WHENCE OFFSET WANT
seek_is() {
    local got
    got=$(tio python3 seek.py mp "$2" "$3" 2>&1)
    [ "$got" = "$4" ] && ok "$1: SEEK_${2^^} $3 = $4" || bad "$1: SEEK_${2^^} $3 = $got, want $4"
}

for fmt in $FUSE_FORMATS; do
    echo "format $fmt"
    rm -f img mp
    fuse_image "$fmt" img $SIZE
    touch mp
    head -c $((4 * M)) /dev/urandom >data
    fuse_blockdevs "$fmt" img discard=unmap discard=unmap
    if ! fuse_start d "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on; then
        bad "$fmt: daemon did not start"
        continue
    fi
    fill mp 0 65536 data
    fill mp $((M + 100)) 10 data
    fill mp $((5 * M)) $((3 * M)) data
    fill mp $((12 * M - 1)) 2 data
    fill mp $((20 * M + 12345)) 1 data
    fill mp $((SIZE - 8192)) 8192 data
    tio fallocate -p -o $((6 * M)) -l $M mp
    tio sync mp

    if tio python3 extents.py mp >ext-mount 2>err; then
        ok "$fmt: SEEK_DATA/SEEK_HOLE walk: $(wc -l <ext-mount) data extents"
    else
        bad "$fmt: SEEK_DATA/SEEK_HOLE walk failed: $(cat err)"
    fi
    seek_is "$fmt" data $((2 * M)) $((5 * M))
    seek_is "$fmt" data $((5 * M + 7)) $((5 * M + 7))
    seek_is "$fmt" hole $((5 * M + 7)) $((6 * M))
    seek_is "$fmt" data $((6 * M)) $((7 * M))
    seek_is "$fmt" hole 0 65536
    seek_is "$fmt" hole $((SIZE - 1)) $SIZE
    seek_is "$fmt" data $SIZE ENXIO
    seek_is "$fmt" hole $SIZE ENXIO
    seek_is "$fmt" data $((SIZE + M)) ENXIO
    fuse_stop_check d "$fmt"
    timeout 60 qemu-img map -f "$fmt" --output=json img | python3 mapext.py >ext-map
    if cmp -s ext-mount ext-map; then
        ok "$fmt: extents through the mount = qemu-img map's data extents"
    else
        bad "$fmt: extents differ (mount | qemu-img map):"
        diff -y ext-mount ext-map | sed 's/^/    /' || true
    fi

    # All sparse (qemu-img create allocates the first block of a raw image).
    rm -f img
    if [ "$fmt" = raw ]; then truncate -s $SIZE img; else fuse_image "$fmt" img $SIZE; fi
    fuse_blockdevs "$fmt" img
    if ! fuse_start s "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp; then
        bad "$fmt sparse: daemon did not start"
        continue
    fi
    seek_is "$fmt sparse" data 0 ENXIO
    seek_is "$fmt sparse" hole 0 0
    seek_is "$fmt sparse" hole $((SIZE / 2)) $((SIZE / 2))
    tio python3 extents.py mp >ext-mount
    fuse_stop_check s "$fmt sparse"
    timeout 60 qemu-img map -f "$fmt" --output=json img | python3 mapext.py >ext-map
    if [ ! -s ext-mount ] && [ ! -s ext-map ]; then
        ok "$fmt sparse: no data extents, through the mount and in qemu-img map"
    else
        bad "$fmt sparse: mount: $(cat ext-mount) / map: $(cat ext-map)"
    fi
done
finish

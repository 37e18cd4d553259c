#!/usr/bin/env python3
"""tests/conformance/fuse_io.py -- drives a FUSE-exported stack through the
kernel with os.pread/os.pwrite (docs/conformance.md, "Through FUSE").

  fuse_io.py run MOUNT INIT_RAW STATE [--drops] [--seed N]
      Runs the cases on the mounted file MOUNT. INIT_RAW is what qemu-img
      converted from the freshly created stack (the expected initial
      content); --drops: the stack drops writes (reads stay as INIT_RAW).
      Writes the expected content of every touched 64 KiB chunk to STATE.
  fuse_io.py verify IMAGE_RAW STATE
      Compares the touched chunks of IMAGE_RAW (qemu-img convert of the
      stack after the export went away) with STATE.

Only [0, 4 MiB) and the last MiB are touched: fuse-conformance.sh gives
[8 MiB, 12 MiB) to fio. Prints one line per case ("ok ..." / "FAIL ...");
exit status 1 if any case failed.
"""
import ctypes
import errno
import json
import os
import random
import sys
import threading

CHUNK = 64 << 10
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Model:
    """Expected content: INIT_RAW plus what was written, in 64 KiB chunks."""

    def __init__(self, init_raw, size, drops):
        self.init = open(init_raw, "rb")
        self.size = size
        self.drops = drops
        self.chunks = {}

    def _chunk(self, idx):
        c = self.chunks.get(idx)
        if c is None:
            self.init.seek(idx * CHUNK)
            c = bytearray(self.init.read(CHUNK))
            c.extend(bytes(CHUNK - len(c)))
            self.chunks[idx] = c
        return c

    def read(self, off, n):
        out = bytearray()
        while n > 0:
            idx, i = divmod(off, CHUNK)
            k = min(n, CHUNK - i)
            out += self._chunk(idx)[i:i + k]
            off += k
            n -= k
        return bytes(out)

    def write(self, off, data, force=False):
        if self.drops and not force:
            return
        pos = 0
        while pos < len(data):
            idx, i = divmod(off + pos, CHUNK)
            k = min(len(data) - pos, CHUNK - i)
            self._chunk(idx)[i:i + k] = data[pos:pos + k]
            pos += k


failures = 0


def result(ok, what):
    global failures
    if ok:
        print("  ok    %s" % what)
    else:
        failures += 1
        print("  FAIL  %s" % what)
    sys.stdout.flush()


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


def check_range(fd, m, off, n, what):
    got = os.pread(fd, n, off)
    want = m.read(off, n)
    d = first_diff(got, want)
    if d >= 0:
        result(False, "%s: differs at offset %d (read %d bytes of %d)" % (what, off + d, len(got), n))
        return False
    return True


def pattern(rng, n):
    return rng.randbytes(n).replace(b"\0", b"\x5c")


def run(mount, init_raw, state, drops, seed):
    rng = random.Random(seed)
    size = os.stat(mount).st_size
    m = Model(init_raw, size, drops)
    fd = os.open(mount, os.O_RDWR)
    region = min(4 << 20, size)
    tail = max(size - (1 << 20), region)

    ok = check_range(fd, m, 0, min(1 << 20, size), "initial content (start)") and \
        check_range(fd, m, size - min(1 << 20, size), min(1 << 20, size), "initial content (end)")
    result(ok, "reads of the initial content match qemu-img's")

    ok = True
    for k in range(150):
        if k % 5 == 4:
            off = tail + rng.randrange(size - tail)
        else:
            off = rng.randrange(region)
        n = 1 + rng.randrange(4096 if k % 3 else 200000)
        if k % 4 == 0:
            off &= ~511
            n = max(512, n & ~511)
        limit = size if off >= tail else region
        n = min(n, limit - off)
        data = pattern(rng, n)
        w = os.pwrite(fd, data, off)
        if w != n:
            result(False, "pwrite(%d, %d) returned %d" % (off, n, w))
            ok = False
            break
        m.write(off, data)
        if k % 10 == 0:
            ok = check_range(fd, m, max(0, off - 1000), min(n + 2000, size - max(0, off - 1000)),
                             "read after write") and ok
    ok = check_range(fd, m, 0, region, "random pwrites (region)") and ok
    ok = check_range(fd, m, tail, size - tail, "random pwrites (end)") and ok
    result(ok, "150 pwrites (aligned and unaligned), read back with pread")

    # Reads at and past the end: EOF, short reads.
    got_end = os.pread(fd, 512, size)
    got_straddle = os.pread(fd, 1024, size - 512)
    result(got_end == b"" and got_straddle == m.read(size - 512, 512),
           "pread at the end returns 0 bytes, across the end a short read (%d, %d)" %
           (len(got_end), len(got_straddle)))

    # Writes past the end of a non-growable export: ENOSPC, size unchanged.
    try:
        os.pwrite(fd, b"\x77" * 512, size)
        result(False, "pwrite past the end succeeded")
    except OSError as e:
        result(e.errno in (errno.ENOSPC, errno.EFBIG), "pwrite past the end fails (%s)" % e.strerror)
    new = b"\x66" * 1024
    old_last = m.read(size - 512, 512)
    try:
        w = os.pwrite(fd, new, size - 512)
        straddle_ok = w in (512, 0)
    except OSError as e:
        straddle_ok = e.errno in (errno.ENOSPC, errno.EFBIG)
    last = os.pread(fd, 512, size - 512)
    straddle_ok = straddle_ok and (last == old_last or last == new[:512] and not drops)
    m.write(size - 512, last, force=True)
    result(straddle_ok and os.stat(mount).st_size == size,
           "pwrite across the end writes at most what fits, the size stays %d" % size)

    os.fsync(fd)
    result(True, "fsync")

    # Punch hole (write-zeroes with unmap) and zero range, aligned and not.
    for mode, name, off, n in ((FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "punch-hole", 1 << 20, 256 << 10),
                               (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "zero-range", 3000, 70001)):
        try:
            fallocate(fd, mode, off, n)
            m.write(off, bytes(n), force=True)
            did = "done"
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                result(False, "fallocate %s: %s" % (name, e.strerror))
                continue
            did = "not supported"
        result(check_range(fd, m, off - 512 if off >= 512 else 0, n + 1024, "after " + name),
               "fallocate %s (%s), then the data around it" % (name, did))

    # SEEK_DATA / SEEK_HOLE: holes read as zeros.
    ok = True
    pos, end, holes = 0, min(size, 16 << 20), 0
    while pos < end:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:
                result(False, "SEEK_DATA: %s" % e.strerror)
                ok = False
            d = size
        if d > pos:
            holes += 1
            for o in (pos, max(pos, min(d, end) - 4096)):
                n = min(4096, min(d, end) - o)
                if n > 0 and os.pread(fd, n, o) != bytes(n):
                    result(False, "hole at %d (SEEK_DATA -> %d) reads data" % (o, d))
                    ok = False
        if d >= end:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        if h <= d:
            result(False, "SEEK_HOLE at %d returned %d" % (d, h))
            ok = False
            break
        pos = h
    result(ok, "SEEK_DATA/SEEK_HOLE: %d hole(s) in the first 16 MiB read as zeros" % holes)

    # Concurrent writers (kernel threads, one descriptor each) on disjoint ranges.
    def writer(t, out):
        f = os.open(mount, os.O_RDWR)
        r = random.Random(seed * 100 + t)
        for j in range(40):
            off = (2 << 20) + t * (256 << 10) + r.randrange(250 << 10)
            n = min(1 + r.randrange(6000), (2 << 20) + (t + 1) * (256 << 10) - off)
            data = pattern(r, n)
            os.pwrite(f, data, off)
            out.append((off, data))
        os.close(f)
    logs = [[] for _ in range(4)]
    threads = [threading.Thread(target=writer, args=(t, logs[t])) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        for off, data in log:
            m.write(off, data)
    result(check_range(fd, m, 2 << 20, 1 << 20, "concurrent writers"), "4 threads writing concurrently")

    os.fsync(fd)
    os.close(fd)
    with open(state, "w") as f:
        json.dump({"size": size, "chunks": {str(k): v.hex() for k, v in m.chunks.items()}}, f)


def verify(image, state):
    with open(state) as f:
        st = json.load(f)
    size = st["size"]
    ok = os.stat(image).st_size == size
    if not ok:
        result(False, "image size %d, expected %d" % (os.stat(image).st_size, size))
    with open(image, "rb") as f:
        for k, hexdata in st["chunks"].items():
            off = int(k) * CHUNK
            want = bytes.fromhex(hexdata)[:max(0, size - off)]
            f.seek(off)
            got = f.read(len(want))
            d = first_diff(got, want)
            if d >= 0:
                result(False, "image differs at offset %d from what was written through the mount" % (off + d))
                ok = False
                break
    result(ok, "the image holds what the mount acknowledged (%d chunks compared)" % len(st["chunks"]))


def main():
    a = sys.argv[1:]
    if len(a) >= 4 and a[0] == "run":
        drops = "--drops" in a
        seed = int(a[a.index("--seed") + 1]) if "--seed" in a else 1
        run(a[1], a[2], a[3], drops, seed)
    elif len(a) == 3 and a[0] == "verify":
        verify(a[1], a[2])
    else:
        print(__doc__)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

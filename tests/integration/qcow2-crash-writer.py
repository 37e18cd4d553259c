#!/usr/bin/env python3
# tests/integration/qcow2-crash-writer.py -- the writer and the verifier of
# qcow2-crash.sh.
#
#   write FILE LOG BLOCKS BS THREADS SEED
#       Threads write whole blocks (each block filled with one byte value)
#       at random into disjoint sets of blocks of FILE (rewrites included),
#       and fsync now and then. LOG gets "I blk val" before each write and,
#       after each fsync returned, "D blk val" for every write of that
#       thread that completed before the fsync started. Runs until a write
#       or fsync fails (the daemon was killed).
#   verify RAW LOG BS INITIAL
#       Every block of RAW (the image converted to raw) must be filled with
#       one value: the value of the block's last durable write (or INITIAL
#       if it has none), or the value of a write issued after it. The
#       block's last issued write may have been in flight at the kill and
#       be torn at sector granularity (see block_ok).
import os
import random
import sys
import threading
import time


def write(path, log, blocks, bs, nthreads, seed):
    fd = os.open(path, os.O_RDWR)
    # Must be the mounted export, not the plain mount point file.
    if os.fstat(fd).st_dev == os.stat(os.path.dirname(os.path.abspath(path))).st_dev:
        sys.exit("writer: %s is not a mounted export" % path)
    logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(logfd, b"R\n")   # ready: the file is open
    stop = threading.Event()
    deadline = time.monotonic() + 30

    def worker(t):
        rng = random.Random(seed * 100 + t)
        mine = list(range(t, blocks, nthreads))
        done = []
        n = 0
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                blk = rng.choice(mine)
                val = rng.randrange(1, 256)
                os.write(logfd, f"I {blk} {val}\n".encode())
                os.pwrite(fd, bytes([val]) * bs, blk * bs)
                done.append((blk, val))
                n += 1
                if n % rng.randrange(3, 12) == 0:
                    pending = done
                    done = []
                    os.fsync(fd)
                    os.write(logfd, "".join(f"D {b} {v}\n" for b, v in pending).encode())
        except OSError:
            stop.set()

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


SECTOR = 512


def block_ok(data, bs, cands, in_flight):
    """A block holds one candidate value, or is torn by the one write that
    can have been in flight at the kill (its thread's last issued write to
    it): a write that never completed promises no atomicity above a
    sector, so each 512-byte sector holds either that value or one other
    candidate (what the block held before it)."""
    if len(data) != bs:
        return False
    if data == bytes([data[0]]) * bs:
        return data[0] in cands
    vals = set()
    for off in range(0, bs, SECTOR):
        sec = data[off:off + SECTOR]
        if sec != bytes([sec[0]]) * len(sec):
            return False
        vals.add(sec[0])
    return len(vals) == 2 and in_flight in vals and vals <= cands


def verify(raw, log, bs, initial):
    issued = {}    # blk -> list of values in issue order
    durable = {}   # blk -> index into issued[blk] of the last durable write
    with open(log) as f:
        for line in f:
            p = line.split()
            if len(p) != 3:
                continue  # "R", or a line cut by the end of the run
            kind, blk, val = p[0], int(p[1]), int(p[2])
            lst = issued.setdefault(blk, [])
            if kind == "I":
                lst.append(val)
            elif kind == "D":
                # The most recent issue of that value before now.
                for i in range(len(lst) - 1, -1, -1):
                    if lst[i] == val:
                        if i > durable.get(blk, -1):
                            durable[blk] = i
                        break
    bad = 0
    ndurable = 0
    with open(raw, "rb") as f:
        for blk, lst in issued.items():
            f.seek(blk * bs)
            data = f.read(bs)
            d = durable.get(blk, -1)
            if d >= 0:
                ndurable += 1
            cands = {lst[d] if d >= 0 else initial} | set(lst[d + 1:])
            if not block_ok(data, bs, cands, lst[-1]):
                vals = sorted(set(data))[:8]
                print(f"block {blk}: holds {vals}, expected one of {sorted(cands)} (durable: {lst[d] if d >= 0 else None})")
                bad += 1
    print(f"verified {len(issued)} blocks ({ndurable} with a durable write), {bad} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
    else:
        sys.exit(verify(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))

#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/fuzz-fuse.cc into a directory
(default tests/fuzz/corpus-fuse/): a valid INIT, then typical request
sequences of a kernel using the export, in the input format the target's
comment describes (a configuration byte, then records of a 4-byte
little-endian word -- the request's length, bit 31 "run what came before
to completion first" -- and the request's bytes).

Usage: tests/fuzz/make-corpus-fuse.py [DIR]
"""
import os
import struct
import sys

# Opcodes and flags of <linux/fuse.h>.
LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
OPEN, READ, WRITE, STATFS, RELEASE = 14, 15, 16, 17, 18
FSYNC, FLUSH, INIT, INTERRUPT = 20, 25, 26, 36
DESTROY, BATCH_FORGET, FALLOCATE, LSEEK = 38, 42, 43, 46
ASYNC_READ, BIG_WRITES, ASYNC_DIO, MAX_PAGES, INIT_EXT = 1, 1 << 5, 1 << 15, 1 << 22, 1 << 30
FATTR_MODE, FATTR_UID, FATTR_SIZE, FATTR_MTIME = 1, 2, 8, 32
PUNCH_HOLE, KEEP_SIZE, ZERO_RANGE = 2, 1, 16
SEEK_DATA, SEEK_HOLE = 3, 4

# Configuration bits (the target's first byte).
INIT_FIRST, RING, READ_ONLY, GROWABLE, QCOW2, WRITETHROUGH = 1, 2, 4, 8, 16, 32

_unique = [100]


def req(opcode, args=b"", payload=b"", nodeid=1, unique=None, length=None):
    """A request: fuse_in_header (len, opcode, unique, nodeid, uid, gid,
    pid, total_extlen, padding), its first argument, and what follows it
    (WRITE data), as a tuple of the three."""
    if unique is None:
        _unique[0] += 2
        unique = _unique[0]
    n = 40 + len(args) + len(payload) if length is None else length
    return (struct.pack("<IIQQIIIHH", n, opcode, unique, nodeid, 0, 0, 1, 0, 0), args, payload)


def rec(r, wait=False, ring=False):
    """One record: /dev/fuse layout (header, argument, payload back to
    back) or ring layout (the argument in a 128-byte op_in area)."""
    hdr, args, payload = r
    if ring:
        args = args[:128].ljust(128, b"\0")
    body = hdr + args + payload
    return struct.pack("<I", len(body) | (0x80000000 if wait else 0)) + body


def init(major=7, minor=31, flags=ASYNC_READ | BIG_WRITES | ASYNC_DIO | MAX_PAGES, flags2=0, short=False):
    a = struct.pack("<IIII", major, minor, 131072, flags)
    if not short:
        a += struct.pack("<I", flags2) + b"\0" * 44
    return req(INIT, a, unique=2)


def open_(flags=2):
    return req(OPEN, struct.pack("<II", flags, 0))


def read(off, size):
    # fh, offset, size, read_flags, lock_owner, flags, padding
    return req(READ, struct.pack("<QQIIQII", 1, off, size, 0, 0, 0, 0))


def write(off, data, size=None):
    # fh, offset, size, write_flags, lock_owner, flags, padding
    size = len(data) if size is None else size
    return req(WRITE, struct.pack("<QQIIQII", 1, off, size, 0, 0, 0, 0), data)


def fsync():
    return req(FSYNC, struct.pack("<QII", 1, 0, 0))


def flush():
    return req(FLUSH, struct.pack("<QIIQ", 1, 0, 0, 0))


def release():
    return req(RELEASE, struct.pack("<QIIQ", 1, 0, 0, 0))


def getattr_():
    return req(GETATTR, struct.pack("<IIQ", 0, 0, 0))


def setattr_(valid, size=0, mode=0, uid=0):
    # valid, padding, fh, size, lock_owner, atime, mtime, ctime,
    # atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5
    return req(SETATTR, struct.pack("<IIQQQQQQIIIIIIII", valid, 0, 1, size, 0, 0, 0, 0, 0, 0, 0, mode, 0, uid, 0, 0))


def fallocate(off, length, mode):
    return req(FALLOCATE, struct.pack("<QQQII", 1, off, length, mode, 0))


def lseek(off, whence):
    return req(LSEEK, struct.pack("<QQII", 1, off, whence, 0))


def statfs():
    return req(STATFS)


def lookup(name=b"x\0"):
    return req(LOOKUP, name)


def forget(n=1):
    return req(FORGET, struct.pack("<Q", n))


def batch_forget():
    return req(BATCH_FORGET, struct.pack("<IIQQ", 1, 0, 1, 1))


def interrupt(unique):
    return req(INTERRUPT, struct.pack("<Q", unique))


def seq(cfg, *reqs, wait_each=True):
    return bytes([cfg]) + b"".join(rec(r, wait_each, cfg & RING) for r in reqs)


def seeds():
    w = INIT_FIRST
    q = INIT_FIRST | QCOW2
    data = bytes(range(256)) * 16
    typical = [open_(), getattr_(), write(0, data), read(0, 4096), fsync(), flush(), release()]
    yield "init-only", bytes([0]) + rec(init())
    yield "init-short", bytes([0]) + rec(init(short=True)) + rec(getattr_(), True)
    yield "init-old-minor", bytes([0]) + rec(init(minor=20))
    yield "init-major8", bytes([0]) + rec(init(major=8)) + rec(init())
    yield "init-ext", bytes([0]) + rec(init(flags=INIT_EXT | ASYNC_READ, flags2=(1 << 5) | (1 << 9)))
    yield "typical-null", seq(w, *typical)
    yield "typical-qcow2", seq(q, *typical)
    yield "typical-ring", seq(w | RING, *typical)
    yield "typical-qcow2-ring", seq(q | RING, *typical)
    yield "read-only", seq(INIT_FIRST | READ_ONLY, open_(0), open_(2), read(0, 512), write(0, b"x" * 512),
                           setattr_(FATTR_SIZE, size=4096), setattr_(FATTR_MODE, mode=0o644), fallocate(0, 4096, 0),
                           fsync())
    yield "concurrent-writes", seq(q, *[write(i * 65536, data) for i in range(8)], fsync(), wait_each=False)
    yield "growable", seq(q | GROWABLE, write((1 << 20) - 100, data), getattr_(),
                          fallocate(2 << 20, 65536, 0), setattr_(FATTR_SIZE, size=3 << 20),
                          fallocate(4 << 20, 4096, ZERO_RANGE), getattr_(), read(3 << 20, 8192))
    yield "past-end", seq(w, write(1 << 20, b"y" * 100), write((1 << 20) - 10, b"y" * 100), read(1 << 20, 10),
                          read((1 << 20) - 10, 100))
    yield "fallocate", seq(q, fallocate(0, 65536, PUNCH_HOLE | KEEP_SIZE), fallocate(65536, 8192, ZERO_RANGE),
                           fallocate(65536, 1 << 21, ZERO_RANGE | KEEP_SIZE), fallocate(0, 4096, 0),
                           fallocate(0, 4096, 64), lseek(0, SEEK_HOLE))
    yield "lseek-qcow2", seq(q, lseek(0, SEEK_DATA), lseek(0, SEEK_HOLE), lseek(100 << 10, SEEK_DATA),
                             lseek(256 << 10, SEEK_HOLE), lseek(600 << 10, SEEK_DATA), lseek(1 << 20, SEEK_DATA),
                             lseek(0, 0))
    yield "setattr", seq(w | GROWABLE, setattr_(FATTR_SIZE, size=65536), setattr_(FATTR_MODE | FATTR_MTIME, mode=0o600),
                         setattr_(FATTR_UID, uid=5), setattr_(1 << 20), getattr_())
    yield "misc", seq(w, statfs(), lookup(), forget(), batch_forget(), interrupt(102), req(12345),
                      req(DESTROY), req(LOOKUP, b""))
    yield "truncated", seq(w, write(0, b"z" * 100, size=4096), req(READ, b"\1\2\3"), req(WRITE, b"\1" * 20),
                           req(SETATTR, b"\0" * 10), req(LSEEK, b"\0" * 12), req(FALLOCATE, b""), req(OPEN, b""))
    yield "lying-len", seq(w, req(GETATTR, b"", length=10), req(READ, struct.pack("<QQI", 1, 0, 4096), length=1 << 30),
                           write(0, b"a" * 64, size=64))
    yield "big-write", seq(q | RING, write(0, bytes(128 << 10)), read(0, 1 << 20), read(0, (1 << 20) + 1))
    yield "writethrough", seq(q | WRITETHROUGH, write(4096, data), fsync(), read(4096, 4096))
    # Regressions: offsets and lengths past INT64_MAX overflowed the signed
    # end computed in READ, WRITE and FALLOCATE (UBSan).
    big = 1 << 63
    yield "regress-range-read", seq(w, read(big, 4096), read(big - 1, 4096))
    yield "regress-range-write", seq(w | GROWABLE, write(big - 8, b"x" * 16), write(big, b"x" * 16))
    yield "regress-range-fallocate", seq(w | GROWABLE, fallocate(big - 8, 1 << 62, 0),
                                         fallocate(1 << 62, big - 1, ZERO_RANGE), fallocate(big, 4096, PUNCH_HOLE | KEEP_SIZE))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus-fuse")
    os.makedirs(out, exist_ok=True)
    for name, body in seeds():
        with open(os.path.join(out, name), "wb") as f:
            f.write(body)


if __name__ == "__main__":
    main()

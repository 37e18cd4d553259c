#!/usr/bin/env python3
# tests/integration/qcow2-write-gen.py -- random operation sequences for
# qcow2-write.sh: prints two command files, one for "blockgraph io" on the
# qcow2 image and one for "qemu-io -f raw" on the reference raw file, that
# must leave both with the same guest contents.
#
# usage: qcow2-write-gen.py SEED SIZE CLUSTER FLAGS OUT_BG OUT_REF
#   FLAGS: comma list of: v2 (no zero flag: discard with backing is a no-op),
#          backing, nocompress (data file images), notruncate
import random
import sys

seed, size, cs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
flags = set(sys.argv[4].split(",")) if sys.argv[4] else set()
rng = random.Random(seed)
bg, ref = [], []


def both(cmd, refcmd=None):
    bg.append(cmd)
    ref.append(refcmd if refcmd is not None else cmd)


def rand_range(max_len):
    # Mostly 512-aligned, sometimes byte-granular; near cluster boundaries.
    if rng.random() < 0.3:
        off = rng.randrange(0, size - 1)
        ln = rng.randrange(1, max(2, min(max_len, size - off)))
    else:
        base = rng.randrange(0, size // 512) * 512
        if rng.random() < 0.4:
            base = rng.randrange(0, size // cs) * cs + rng.choice([0, 512, cs - 512 if cs > 512 else 0])
            base = min(base, size - 512)
        off = base
        ln = rng.randrange(1, max(2, min(max_len, size - off) // 512 + 1)) * 512
        ln = min(ln, size - off)
    return off, max(1, ln)


ops = 45
for i in range(ops):
    r = rng.random()
    pat = rng.randrange(1, 255)
    if r < 0.35:
        off, ln = rand_range(3 * cs + 4096)
        both(f"write -P {pat} {off} {ln}")
    elif r < 0.5:
        # A batch of concurrent non-overlapping writes (shared clusters).
        n = rng.randrange(2, 9)
        start = rng.randrange(0, max(1, size - n * 8192))
        pos = start
        for j in range(n):
            ln = rng.randrange(1, 17) * 512 if rng.random() < 0.8 else rng.randrange(1, 9000)
            if pos + ln > size:
                break
            both(f"aio_write -P {(pat + j) % 255 + 1} {pos} {ln}")
            pos += ln + rng.choice([0, 0, 512, 1000])
        both("aio_flush")
    elif r < 0.62:
        off, ln = rand_range(2 * cs + 8192)
        u = " -u" if rng.random() < 0.5 else ""
        both(f"write -z{u} {off} {ln}")
    elif r < 0.72:
        # Whole clusters only: qcow2 ignores partial-cluster discards.
        if "v2" in flags and "backing" in flags:
            continue
        c = rng.randrange(0, size // cs)
        n = rng.randrange(1, 4)
        off = c * cs
        ln = min(n * cs, (size // cs) * cs - off)
        if ln <= 0:
            continue
        both(f"discard {off} {ln}")
    elif r < 0.82:
        if "nocompress" in flags:
            continue
        c = rng.randrange(0, size // cs)
        n = rng.randrange(1, 3)
        off = c * cs
        ln = min(n * cs, size - off)
        both(f"write -c -P {pat} {off} {ln}", f"write -P {pat} {off} {ln}")
    elif r < 0.86 and "notruncate" not in flags:
        # Shrink and grow back (tests zeroing of the regrown part).
        new = max(cs, (rng.randrange(size // 2, size) // 512) * 512)
        both(f"truncate {new}")
        both(f"truncate {size}")
    elif r < 0.9:
        both("flush")
    else:
        off, ln = rand_range(cs + 4096)
        both(f"read {off} {ln}")

with open(sys.argv[5], "w") as f:
    f.write("\n".join(bg) + "\n")
with open(sys.argv[6], "w") as f:
    f.write("\n".join(ref) + "\n")

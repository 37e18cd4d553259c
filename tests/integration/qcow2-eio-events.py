# tests/integration/qcow2-eio-events.py -- run by qcow2-eio-events.sh (see
# there for the description and the options).

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qmp  # noqa: E402
from qmp import QMPError, Test, run  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
SIZE = 8 * MiB            # virtual size of every image


def pat(byte, n):
    return bytes([byte]) * n


# ---------------------------------------------------------------- images

def qimg(*args):
    run(["qemu-img", *args], check=True)


def qio(img, *cmds, fmt="qcow2"):
    argv = ["qemu-io", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    p = run(argv + [img], check=True)
    if "failed" in p.stdout or "error" in p.stdout.lower():
        raise QMPError(f"qemu-io {cmds}: {p.stdout.strip()}")


def fresh(opts=""):
    def f():
        qimg("create", "-q", "-f", "qcow2", *(["-o", opts] if opts else []), "img.qcow2", str(SIZE))
    return f


def filled(opts=""):
    def f():
        fresh(opts)()
        qio("img.qcow2", "write -P 0x22 0 2M")
    return f


def backed():
    qimg("create", "-q", "-f", "qcow2", "base.qcow2", str(SIZE))
    qio("base.qcow2", "write -P 0x11 0 4M")
    qimg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "img.qcow2", str(SIZE))


def snapshotted():
    filled()()
    qimg("snapshot", "-c", "s0", "img.qcow2")


def compressed():
    fresh()()
    qio("img.qcow2", "write -c -P 0x33 0 64k", "write -c -P 0x34 64k 64k")


def two_snapshots():
    filled()()
    qimg("snapshot", "-c", "s0", "img.qcow2")
    qio("img.qcow2", "write -P 0x44 1M 64k")
    qimg("snapshot", "-c", "s1", "img.qcow2")


def small_l1():
    # 512-byte clusters: one L2 table maps 32 KiB, so an 8 MiB disk has an
    # L1 table of 256 entries (4 clusters); growing to 64 MiB grows it.
    fresh("cluster_size=512")()


def header_field(img, off, fmt):
    with open(img, "rb") as f:
        f.seek(off)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


# ---------------------------------------------------------------- cases
#
# A case: name, the blkdebug rule (event, iotype; or a position found by a
# dry run), the image setup, and the operations that reach the event.
# Operations: ("w", off, len, byte) pwrite through the mount; ("f",) fsync;
# ("t", size) ftruncate; ("q", cmd, args) a QMP command; ("quit",) the
# request is the daemon's own close (a bitmap store).
#
# want: what QEMU does (checked against qemu-storage-daemon):
#   err    the errno the first failing request returns (None: nothing fails)
#   later  True if the daemon serves later writes and reads
#   check  qemu-img check exit status after a clean stop (0, or 3: leaks)
#   corrupt  the corrupt bit is set

CASES = []


def case(name, event, setup, ops, err="EIO", later=True, check=0, corrupt=False, iotype=None,
         locate=None, later_at=6 * MiB, at_close=False, bitmaps=None, ours=None):
    """OURS: the expectations where blockgraph deliberately differs from
    QEMU (each documented in docs/qcow2.md "I/O errors")."""
    want = dict(err=err, later=later, check=check, corrupt=corrupt, bitmaps=bitmaps)
    if ours and qmp.target() != "qsd":
        want.update(ours)
    CASES.append(dict(name=name, event=event, setup=setup, ops=ops, iotype=iotype, locate=locate,
                      later_at=later_at, at_close=at_close, want=want))


W = lambda off, n, b: ("w", off, n, b)  # noqa: E731
R = lambda off, n: ("r", off, n)  # noqa: E731
F = ("f",)
SMALL_RC = "cluster_size=512,refcount_bits=64"   # a refcount block covers 32 KiB

# L2 tables
case("l2_load (write)", "l2_load", filled(), [W(0, 4 * KiB, 1), F])
case("l2_load (read)", "l2_load", filled(), [R(0, 4 * KiB)])
case("l2_alloc_write", "l2_alloc_write", fresh(), [W(0, 64 * KiB, 1), F])
case("l2_update (new L2)", "l2_update", fresh(), [W(0, 64 * KiB, 1), F])
case("l2_update", "l2_update", filled(), [W(4 * MiB, 64 * KiB, 1), F])
case("l2_alloc_cow_read", "l2_alloc_cow_read", snapshotted, [W(0, 64 * KiB, 1), F])
case("l2_alloc_write (snapshot)", "l2_alloc_write", snapshotted, [W(0, 64 * KiB, 1), F])
case("l2_update_compressed", "l2_update_compressed", compressed, [W(0, 4 * KiB, 1), F], err=None)
# L1 table
case("l1_update", "l1_update", fresh(), [W(0, 64 * KiB, 1), F])
for ev in ("l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table"):
    case(ev, ev, small_l1, [("t", 64 * MiB), W(20 * MiB, 64 * KiB, 5), F])
case("l1_grow_write_table (block_resize)", "l1_grow_write_table", small_l1,
     [("q", "block_resize", {"node-name": "fmt0", "size": 64 * MiB})], err="QMP")
for ev in ("l1_shrink_write_table", "l1_shrink_free_l2_clusters"):
    case(ev, ev, filled("cluster_size=512"), [("t", 1 * MiB)], later_at=512 * KiB,
         **({"err": None, "check": 3} if ev == "l1_shrink_free_l2_clusters" else {}))
# refcounts
case("refblock_load", "refblock_load", filled(), [W(4 * MiB, 64 * KiB, 1), F])
case("refblock_update_part", "refblock_update_part", filled(), [W(4 * MiB, 64 * KiB, 1), F])
case("refblock_update", "refblock_update", filled(), [W(4 * MiB, 64 * KiB, 1), F], err=None)
case("reftable_update", "reftable_update", fresh(SMALL_RC), [W(0, 256 * KiB, 1), F], err=None)
case("cluster_alloc", "cluster_alloc", filled(), [W(4 * MiB, 64 * KiB, 1), F])
case("cluster_free", "cluster_free", snapshotted, [W(0, 64 * KiB, 1), F])
for ev in ("refblock_alloc", "refblock_alloc_write", "refblock_alloc_hookup"):
    case(ev, ev, fresh(SMALL_RC), [W(0, 256 * KiB, 1), F])
for ev in ("reftable_grow", "refblock_alloc_write_blocks", "refblock_alloc_write_table",
           "refblock_alloc_switch_table"):
    # Ours: the new table may share refcount blocks with the old one; after
    # a failed header switch their refcounts are kept (the header may have
    # reached the disk): leaks. QEMU's growth area never shares blocks.
    case(ev, ev, fresh(SMALL_RC), [W(0, 1 * MiB, 1), W(1 * MiB, 1 * MiB, 2), W(2 * MiB, 1 * MiB, 3), F],
         ours={"check": 3} if ev == "refblock_alloc_switch_table" else None)
# data and copy-on-write
case("write_aio", "write_aio", filled(), [W(0, 64 * KiB, 1), F])
case("cluster_alloc_space", "cluster_alloc_space", fresh(), [W(1000, 3000, 1), F])
case("cow_read (snapshot)", "cow_read", snapshotted, [W(1000, 3000, 1), F])
case("cow_write (backing)", "cow_write", backed, [W(1000, 3000, 1), F])
case("cow_write (snapshot)", "cow_write", snapshotted, [W(1000, 3000, 1), F])
case("read_compressed (COW)", "read_compressed", compressed, [W(0, 4 * KiB, 1), F])
# internal snapshots (QMP): the rule fails the write of the new snapshot table
case("snapshot table (create)", None, filled(),
     [("q", "blockdev-snapshot-internal-sync", {"device": "fmt0", "name": "s9"})],
     locate="snapshots_offset", err="QMP", check=3)
case("snapshot table (delete)", None, two_snapshots,
     [("q", "blockdev-snapshot-delete-internal-sync", {"device": "fmt0", "name": "s0"})],
     locate="snapshots_offset", err="QMP")
# a persistent bitmap stored when the daemon closes the image
case("bitmap store (cluster_alloc)", "cluster_alloc", filled(),
     [("q", "block-dirty-bitmap-add", {"node": "fmt0", "name": "b0", "persistent": True}),
      W(0, 4 * KiB, 1)], later_at=64 * KiB, at_close=True, err="close", bitmaps=[])


# ---------------------------------------------------------------- running

def errname(e):
    return None if e is None else errno.errorcode.get(e, str(e))


def in_child(fn, timeout=20.0):
    """Runs FN() in a forked child (so that a request stuck on the mount
    cannot hang the test); returns None, an errno, or "HANG"."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except OSError as e:
            code = e.errno if 0 < e.errno < 256 else 255
        except BaseException:  # noqa: BLE001
            code = 255
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        p, status = os.waitpid(pid, os.WNOHANG)
        if p:
            code = os.waitstatus_to_exitcode(status)
            return None if code == 0 else code
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "HANG"
        time.sleep(0.005)


def do_write(path, off, data):
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def do_fsync(path):
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def do_read_check(path, off, data):
    """O_DIRECT read of len(DATA) bytes at OFF (past the page cache);
    EILSEQ (as an errno) if they differ from DATA."""
    import mmap
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        m = mmap.mmap(-1, len(data))
        n = os.preadv(fd, [m], off)
        if n != len(data) or bytes(m) != data:
            raise OSError(errno.EILSEQ, "data differ")
    finally:
        os.close(fd)


class Run:
    """One daemon of the test's target on img.qcow2, with its FUSE export
    at mnt and a QMP monitor."""

    def __init__(self, t):
        self.t = t
        self.d = None
        self.mnt = os.path.join(t.work, "mnt")

    def start(self, rule):
        image = "file0"
        args = ["--blockdev", json.dumps({"driver": "file", "node-name": "file0", "filename": "img.qcow2"})]
        if rule is not None:
            args += ["--blockdev", json.dumps({"driver": "blkdebug", "node-name": "dbg", "image": "file0",
                                               "inject-error": [rule]})]
            image = "dbg"
        args += ["--blockdev", json.dumps({"driver": "qcow2", "node-name": "fmt0", "file": image}),
                 "--export", f"type=fuse,id=exp0,node-name=fmt0,mountpoint={self.mnt},writable=on"]
        open(self.mnt, "a").close()
        self.d = self.t.daemon(args)
        self.q = self.d.qmp()
        if not qmp.wait_for(lambda: qmp.mounted(self.mnt), 10, 0.01):
            raise QMPError(f"no mount: {self.d.stderr()}")

    def op(self, o, expected, uncertain):
        """Runs operation O; updates EXPECTED (the guest-visible content
        if it succeeded) and UNCERTAIN (ranges a failed write may or may
        not have reached). Returns None or (errno name, detail)."""
        kind = o[0]
        if kind == "w":
            _, off, n, b = o
            e = in_child(lambda: do_write(self.mnt, off, pat(b, n)))
            if e is None:
                expected[off:off + n] = pat(b, n)
            else:
                uncertain.append((off, n, b))
        elif kind == "f":
            e = in_child(lambda: do_fsync(self.mnt))
        elif kind == "r":
            _, off, n = o
            e = in_child(lambda: do_read_check(self.mnt, off, bytes(expected[off:off + n])))
        elif kind == "t":
            e = in_child(lambda: os.truncate(self.mnt, o[1]))
            if e is not None and o[1] < len(expected):
                # A failed shrink may have discarded the tail already.
                uncertain.append((o[1], len(expected) - o[1], 0))
            if e is None:
                if o[1] > len(expected):
                    expected.extend(bytes(o[1] - len(expected)))
                else:
                    del expected[o[1]:]
        elif kind == "q":
            r = self.q.cmd(o[1], **{k.replace("-", "_"): v for k, v in o[2].items()})
            if "error" in r:
                return ("QMP", r["error"]["desc"])
            if o[1] == "block_resize":
                expected.extend(bytes(o[2]["size"] - len(expected)))
            return None
        else:
            raise ValueError(o)
        if e is None:
            return None
        if e == "HANG":
            return ("HANG", "no answer within 20 s")
        return (errname(e), os.strerror(e))


def check_data(t, name, expected, uncertain, img="img.qcow2"):
    """The image's content is EXPECTED, except that each 512-byte sector
    of an UNCERTAIN range (a write that failed) holds the old or the new
    data; then qemu-img compare against the resolved expected image."""
    if uncertain:
        run(["qemu-img", "convert", "-O", "raw", img, "act.raw"], check=True)
        act = open("act.raw", "rb").read()
        old = bytes(expected)
        if len(act) != len(expected):
            t.bad(f"{name}: virtual size {len(act)}, want {len(expected)}")
            return
    for off, n, b in uncertain:
        for s in range(off - off % 512, off + n, 512):
            lo, hi = max(s, off), min(s + 512, off + n)
            a = act[lo:hi]
            if a != old[lo:hi] and a != pat(b, hi - lo):
                t.bad(f"{name}: bytes {lo}..{hi} of a failed write hold neither the old nor the new data")
                return
            expected[lo:hi] = a
    with open("exp.raw", "wb") as f:
        f.write(expected)
    p = run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, "exp.raw"])
    t.check(p.returncode == 0, f"{name}: qemu-img compare with the expected content",
            (p.stdout + p.stderr).strip()[:300])


def run_case(t, c):
    t0 = time.monotonic()
    os.chdir(t.work)
    for f in ("img.qcow2", "base.qcow2", "ref.raw", "act.raw", "exp.raw", "mnt"):
        if os.path.exists(f):
            os.unlink(f)
    c["setup"]()
    qimg("convert", "-O", "raw", "img.qcow2", "ref.raw")
    expected = bytearray(open("ref.raw", "rb").read())
    rule = {"event": c["event"], "errno": 5, "once": True}
    if c["iotype"]:
        rule["iotype"] = c["iotype"]
    if c["locate"]:
        # A dry run without errors finds the offset the new table is
        # written at; the rule then fails the first write there.
        shutil.copy("img.qcow2", "dry.qcow2")
        r = Run(t)
        r.start(None)
        for o in c["ops"]:
            r.op(o, bytearray(expected), [])
        r.d.stop()
        off = header_field("img.qcow2", 64, ">Q")
        os.replace("dry.qcow2", "img.qcow2")
        rule = {"event": "none", "iotype": "write", "errno": 5, "once": True, "sector": off // 512}
    r = Run(t)
    r.start(rule)
    uncertain = []
    got = None
    for o in c["ops"]:
        res = r.op(o, expected, uncertain)
        if res is not None and got is None:
            got = res
    # Later requests: a new write elsewhere, flushed, read back; a re-read
    # of what the case wrote successfully.
    off, n, b = c["later_at"], 64 * KiB, 0x77
    lres = (r.op(W(off, n, b), expected, uncertain) or r.op(F, expected, uncertain)
            or r.op(("r", off, n), expected, uncertain))
    for o in c["ops"]:
        if lres is None and o[0] == "w" and (o[1], o[2], o[3]) not in uncertain:
            lres = r.op(("r", o[1], o[2]), expected, uncertain)
    later = lres is None
    alive = r.d.proc.poll() is None
    mounted = qmp.mounted(r.mnt)
    stop_rc = r.d.stop()
    if c["at_close"]:
        got = ("close", "error at close") if "Input/output error" in r.d.stderr() else None
    ck = run(["qemu-img", "check", "img.qcow2"])
    info = json.loads(run(["qemu-img", "info", "--output=json", "img.qcow2"]).stdout or "{}")
    data = info.get("format-specific", {}).get("data", {})
    corrupt = data.get("corrupt", False)
    obs = dict(err=got[0] if got else None, later=later, check=ck.returncode, corrupt=corrupt)
    if c["at_close"]:
        obs["bitmaps"] = sorted((bm["name"], tuple(bm["flags"])) for bm in data.get("bitmaps", []))
    want = c["want"]
    name = c["name"]
    detail = f"{got[1]}" if got else ""
    t.eq(obs["err"], want["err"], f"{name}: error seen by the requester ({detail})")
    t.check(alive and mounted, f"{name}: daemon alive and mounted after the error")
    t.eq(later, want["later"], f"{name}: later requests work" + ("" if lres is None else f" ({lres})"))
    t.eq((stop_rc, r.d.stopped_by), (0, "quit"), f"{name}: daemon exits 0 on quit")
    t.eq(ck.returncode, want["check"], f"{name}: qemu-img check exit status")
    if ck.returncode not in (0, 3):
        print(ck.stdout[:800] + ck.stderr[:400])
    t.eq(corrupt, want["corrupt"], f"{name}: corrupt bit")
    t.eq(info.get("virtual-size"), len(expected), f"{name}: virtual size")
    if c["at_close"]:
        t.eq(obs["bitmaps"], want["bitmaps"], f"{name}: bitmaps in the image")
    if ck.returncode in (0, 3):
        check_data(t, name, expected, uncertain)
    RESULTS.append((name, c["event"] or "(sector rule)", obs))
    print(f"  ({name}: {time.monotonic() - t0:.1f} s)", flush=True)


RESULTS = []


def main():
    only = os.environ.get("EIO_CASES")
    with Test("qcow2-eio-events", budget=int(os.environ.get("EIO_BUDGET", "150")) - 10) as t:
        for c in CASES:
            if only and c["name"] not in only.split(","):
                continue
            t.part(run_case, t, c)
        print("table: case | rule | errno | later requests | check | corrupt")
        for name, ev, o in RESULTS:
            print(f"  {name} | {ev} | {o['err']} | {'ok' if o['later'] else 'fail'} | {o['check']} | {o['corrupt']}")
    sys.exit(1 if t.failures else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Power-loss replay harness for the qcow2 driver (make check-powerloss).

A killed daemon loses nothing the kernel already has (the page cache
survives it); a power cut loses every write that was not flushed, and the
unflushed writes that do survive may be any subset of them, in any order.
This harness records every write the qcow2 driver sends to its image file
and replays the recording to every crash state worth checking:

  graph       file(img) <- blklogwrites(file=img, log=file(log)) <- qcow2
              <- FUSE export (writable), plus a QMP monitor; the daemon is
              "blockgraph daemon" (default) or qemu-storage-daemon
              (--daemon qsd: QEMU's own qcow2 through the same harness, a
              sanity check of the harness itself).
  workload    writes through the mount (and QMP commands) with a ledger of
              what each completed fsync made durable; then a clean stop.
  replay      the log (tests/powerloss/dmlog.py) is replayed onto a copy of
              the image as it was before the workload, to every barrier
              entry (FLUSH or FUA): these prefix states are crash states
              where nothing after the barrier reached the disk.  Between a
              barrier and the next one, --states-per-flush more states keep
              a random subset of the unflushed entries up to a random cut
              (FUA entries before the cut always stay: they completed
              durably), some of them torn at sector granularity.
  checks      per state: "qemu-img check" reports no corruption (exit 0, or
              3 = leaked clusters only; images with lazy refcounts are
              first opened writable by blockgraph, which repairs them, and
              must then check clean); on a sample (--repair-sample)
              "qemu-img check -r leaks" then leaves a clean image; the
              image opens in qemu-io and in "blockgraph io"; its guest
              contents (qemu-img convert -O raw) hold every write that a
              completed fsync acknowledged before the state (or a later
              write of that block), and nothing that was never written.
              The last state (the whole log) must also equal the image the
              daemon left, check clean without leaks, and hold every write.

Guest durability bookkeeping: every sector the writer writes describes
itself (magic, block, sequence number, sector index), so a sector read back
names the write it came from.  When an fsync returns, the writer records the
log's length L; every log entry starting below L was logged before the fsync
completed, among them the fsync's own FLUSH entry.  So the last FLUSH entry
that starts below L comes at or after that fsync's flush, and every crash
state that contains all entries up to it must hold the writes the fsync
covered (those of its thread that completed before it started).

Workloads (--workloads, comma separated; default all): see WORKLOADS below.
Each prints its flush points, the crash states checked, the bad states (with
the first few failure details) and its time; the last line is the total.
Exit status: 0 no bad state, 1 bad states (or a workload failed to run), 77
a tool is missing.  --expect-bad inverts the verdict on bad states (for the
misorder demonstration, which must find some).

BLOCKGRAPH_TEST_QCOW2_MISORDER=l2-before-refcount (--misorder) makes the
qcow2 driver write L2 entries without first flushing the refcount updates
they depend on (a test-only switch, see block/qcow2/qcow2-cache.cc): the
harness must then report bad states.
"""
import argparse
import ctypes
import json
import multiprocessing
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import dmlog  # noqa: E402
import qmp  # noqa: E402

SECTOR = 512
BS = 4096                  # the writer's block
SPB = BS // SECTOR
MAGIC = b"PLOSSv1\0"
HDR = struct.Struct("<8sQQI")
ZERO_SECTOR = bytes(SECTOR)
ZERO_BLOCK = bytes(BS)


def sector_bytes(blk, seq, si):
    fill = ((seq * 7 + si) & 0xFF) | 1
    h = HDR.pack(MAGIC, blk, seq, si)
    return h + bytes([fill]) * (SECTOR - len(h))


def block_bytes(blk, seq):
    return b"".join(sector_bytes(blk, seq, si) for si in range(SPB))


def decode_sector(buf, blk, si):
    """'Z' for a zero sector, the sequence number of a well-formed sector of
    BLK at index SI, else None."""
    if buf == ZERO_SECTOR:
        return "Z"
    magic, b, seq, s = HDR.unpack_from(buf)
    if magic != MAGIC or b != blk or s != si:
        return None
    if buf != sector_bytes(blk, seq, si):
        return None
    return seq


# ---------------------------------------------------------------------------
# Tools

def run(argv, timeout=60, env=None, input=None):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=input)


def blockgraph_bin():
    b = os.environ.get("BLOCKGRAPH") or os.path.join(HERE, "..", "..", "build", "blockgraph")
    return os.path.realpath(b)


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Daemon:
    """A daemon (blockgraph or qemu-storage-daemon) with one QMP monitor
    and (optionally) one FUSE mount; stop() quits it cleanly."""

    def __init__(self, kind, args, work, name, env=None, mountpoint=None):
        self.sock = os.path.join(work, name + ".sock")
        argv = [blockgraph_bin(), "daemon"] if kind == "blockgraph" else ["qemu-storage-daemon"]
        argv += ["--chardev", "socket,id=m0,path=%s,server=on,wait=off" % self.sock,
                 "--monitor", "chardev=m0"] + list(args)
        self.errfile = os.path.join(work, name + ".err")
        self.mountpoint = mountpoint
        self.proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.DEVNULL,
                                     stdout=open(self.errfile + ".out", "wb"),
                                     stderr=open(self.errfile, "wb"),
                                     start_new_session=True, env=env)
        LIVE.append(self)
        deadline = time.monotonic() + 15
        while not os.path.exists(self.sock) or (mountpoint and not mounted(mountpoint)):
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited %d: %s" % (self.proc.returncode, self.stderr()))
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not start: %s" % self.stderr())
            time.sleep(0.02)
        self.qmp = qmp.connect_unix(self.sock)

    def stderr(self):
        try:
            with open(self.errfile, "rb") as f:
                return f.read().decode(errors="replace")[-2000:]
        except OSError:
            return ""

    def cmd(self, _name, **args):
        r = self.qmp.cmd(_name, **args)
        if "return" not in r:
            raise RuntimeError("%s: %s" % (_name, r))
        return r["return"]

    def stop(self):
        try:
            self.qmp.execute("quit", timeout=30)
        except (qmp.QMPError, OSError):
            pass
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("daemon did not quit: %s" % self.stderr())
        self.qmp.close()
        LIVE.remove(self)
        if self.mountpoint and mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True, timeout=10)
            raise RuntimeError("daemon left %s mounted" % self.mountpoint)
        if rc != 0:
            raise RuntimeError("daemon exited %d on quit: %s" % (rc, self.stderr()))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.mountpoint and mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True, timeout=10)


LIVE = []   # daemons running, stopped by cleanup on any exit


def cleanup_daemons():
    for d in list(LIVE):
        try:
            d.kill()
        except Exception:  # noqa: BLE001
            pass
    LIVE.clear()


# ---------------------------------------------------------------------------
# The ledger: what was written and what each fsync made durable

class Ledger:
    def __init__(self, nblocks, initial):
        self.lock = threading.Lock()
        self.seq = 0
        self.nblocks = nblocks
        self.initial = initial     # "Z" (zeroes) or 0 (the backing file's content)
        self.issued = {}           # blk -> [value, ...] in issue order ("Z" or a seq)
        self.syncs = []            # [(session, L tuple or None, [(blk, index into issued[blk])...])]
        self.session = 0           # the session running now

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def issue(self, blk, value):
        with self.lock:
            lst = self.issued.setdefault(blk, [])
            lst.append(value)
            return len(lst) - 1

    def synced(self, L, done):
        with self.lock:
            self.syncs.append((self.session, tuple(L), list(done)))

    def all_durable(self):
        """Marks everything issued so far durable (a clean stop)."""
        with self.lock:
            self.syncs.append((self.session, None, [(b, len(v) - 1) for b, v in self.issued.items()]))

    def snapshot_values(self):
        """blk -> latest value, for quiescent moments (snapshots)."""
        with self.lock:
            return {b: v[-1] for b, v in self.issued.items()}


class RawImage:
    """A raw image file (qemu-img convert output, sparse) read block by
    block: only its data extents are read; holes read as zeroes."""

    def __init__(self, path):
        self.blocks = {}
        with open(path, "rb") as f:
            fd = f.fileno()
            self.size = os.fstat(fd).st_size
            pos = 0
            while pos < self.size:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                start -= start % BS
                buf = os.pread(fd, end - start, start)
                for o in range(0, len(buf), BS):
                    self.blocks[(start + o) // BS] = buf[o:o + BS]
                pos = end

    def block(self, blk):
        b = self.blocks.get(blk, ZERO_BLOCK)
        return b if len(b) == BS else b + bytes(BS - len(b))


BASE_BLOCKS = {}


def base_block(blk):
    b = BASE_BLOCKS.get(blk)
    if b is None:
        b = BASE_BLOCKS[blk] = block_bytes(blk, 0)
    return b


def verify_guest(raw, ledger, durable, nblocks):
    """Checks the guest contents RAW (a RawImage) against LEDGER with
    DURABLE (blk -> index of its last durable write); returns failure
    strings (at most 3)."""
    fails = []
    issued = ledger.issued
    init = ledger.initial
    if init == "Z":
        # Blocks never written must be zero: only those with data matter.
        todo = sorted(set(issued) | set(raw.blocks))
    else:
        todo = range(nblocks)
    for blk in todo:
        lst = issued.get(blk)
        if (blk + 1) * BS > raw.size:
            if lst is not None and durable.get(blk, -1) >= 0:
                fails.append("block %d: a durable write lies beyond the image's end (%d)" % (blk, raw.size))
            if len(fails) >= 3:
                break
            continue
        data = raw.block(blk)
        if lst is None:
            if data == (ZERO_BLOCK if init == "Z" else base_block(blk)):
                continue
            allowed = {init}
        else:
            d = durable.get(blk, -1)
            allowed = set(lst[d:]) if d >= 0 else {init, *lst}
        for si in range(SPB):
            v = decode_sector(data[si * SECTOR:(si + 1) * SECTOR], blk, si)
            if v not in allowed:
                d = durable.get(blk, -1) if lst else -1
                fails.append("block %d sector %d holds %s, expected one of %s (durable: %s)" % (
                    blk, si, "garbage" if v is None else v, sorted(map(str, allowed))[:6],
                    lst[d] if lst and d >= 0 else None))
                break
        if len(fails) >= 3:
            break
    return fails


# ---------------------------------------------------------------------------
# The writer

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 0x10
CHUNK = 16                 # blocks per 64 KiB chunk; a chunk belongs to one thread


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Writer:
    """THREADS threads write blocks of the mount MP (each thread its own
    64 KiB chunks), fsync every few operations and record in LEDGER what
    each fsync covered and the logs' lengths (LOGS) when it returned."""

    def __init__(self, mp, ledger, logs, seed, threads=2, punch=True):
        self.mp, self.ledger, self.logs, self.seed, self.nthreads = mp, ledger, logs, seed, threads
        self.limit = ledger.nblocks      # blocks the writer may use now
        # blockgraph's FUSE export makes punch-hole a write-zeroes with
        # unmap (it reads back zeroes); qemu-storage-daemon's is a discard,
        # which qcow2 may ignore for partial clusters: zero-range only there.
        # blockgraph's qcow2 cannot zero less than a cluster without writing
        # data, so a 4 KiB punch-hole fails with EOPNOTSUPP (the writer's
        # blocks are smaller than a cluster): --punch turns punch-hole on.
        self.punch = punch
        self.errors = []

    def run(self, ops, mode="random", zero_rate=0.0, fsync_every=(3, 12), fresh=False):
        fd = os.open(self.mp, os.O_RDWR)
        try:
            ts = [threading.Thread(target=self._worker, args=(fd, t, ops, mode, zero_rate, fsync_every, fresh))
                  for t in range(self.nthreads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            os.fsync(fd)
            self.ledger.synced(self.lengths(), [])
        finally:
            os.close(fd)
        if self.errors:
            raise RuntimeError("writer: " + "; ".join(self.errors[:3]))

    def lengths(self):
        return [os.stat(p).st_size for p in self.logs]

    def _worker(self, fd, t, ops, mode, zero_rate, fsync_every, fresh):
        rng = random.Random(self.seed * 1000 + t + len(self.ledger.syncs))
        led = self.ledger
        done = []
        seq_pos = 0
        next_sync = rng.randint(*fsync_every)
        try:
            for n in range(ops):
                nchunks = self.limit // CHUNK
                mine = [c for c in range(t, nchunks, self.nthreads)]
                if zero_rate and rng.random() < zero_rate:
                    c = rng.choice(mine)
                    first = rng.randrange(CHUNK)
                    count = rng.randint(1, CHUNK - first)
                    b0 = c * CHUNK + first
                    idx = [led.issue(b, "Z") for b in range(b0, b0 + count)]
                    mode_f = FALLOC_FL_ZERO_RANGE
                    if self.punch and rng.random() < 0.5:
                        mode_f = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                    fallocate(fd, mode_f, b0 * BS, count * BS)
                    done += list(zip(range(b0, b0 + count), idx))
                else:
                    if mode == "sequential":
                        blocks = [c * CHUNK + i for c in mine for i in range(CHUNK)]
                        blk = blocks[seq_pos % len(blocks)]
                        seq_pos += 1
                    elif fresh:
                        for _ in range(20):
                            blk = rng.choice(mine) * CHUNK + rng.randrange(CHUNK)
                            if blk not in led.issued:
                                break
                    else:
                        blk = rng.choice(mine) * CHUNK + rng.randrange(CHUNK)
                    seq = led.next_seq()
                    i = led.issue(blk, seq)
                    os.pwrite(fd, block_bytes(blk, seq), blk * BS)
                    done.append((blk, i))
                if n + 1 == next_sync:
                    next_sync += rng.randint(*fsync_every)
                    pending, done = done, []
                    os.fsync(fd)
                    led.synced(self.lengths(), pending)
        except OSError as e:
            self.errors.append("thread %d: %s" % (t, e))


# ---------------------------------------------------------------------------
# Workloads

class Session:
    """One recorded daemon (or io tool) run: its logs, and the image files
    (relative to the run directory) as they were before it."""

    def __init__(self, logs, pristine):
        self.logs = logs           # [(log path, image file name it records)]
        self.pristine = pristine   # directory with the files before the session
        self.events = []           # (kind, L, payload) from QMP commands


class Workload:
    name = ""
    size = 32 << 20
    create_opts = ""
    lazy = False
    backing = False
    data_file = False
    fio = False
    threads = 2

    def __init__(self, h):
        self.h = h
        self.sessions = []
        self.ledger = None

    def ops(self):
        return self.h.args.ops

    # -- setup -----------------------------------------------------------
    def create(self, run_dir):
        opts = self.create_opts
        if self.data_file:
            opts = (opts + "," if opts else "") + "data_file=img.data"
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if opts:
            argv += ["-o", opts]
        if self.backing:
            base = os.path.join(self.h.wdir, "base.qcow2")
            nb = self.size // BS
            rawp = os.path.join(self.h.wdir, "base.raw")
            with open(rawp, "wb") as f:
                for blk in range(nb):
                    f.write(block_bytes(blk, 0))
            r = run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawp, base])
            os.unlink(rawp)
            if r.returncode:
                raise RuntimeError("qemu-img convert: " + r.stderr)
            argv += ["-b", base, "-F", "qcow2"]
        argv += ["img.qcow2", str(self.size)]
        r = run(argv, env=None)
        if r.returncode:
            raise RuntimeError("qemu-img create: " + r.stderr)
        self.ledger = Ledger(self.size // BS, 0 if self.backing else "Z")

    def files(self):
        return ["img.qcow2"] + (["img.data"] if self.data_file else [])

    def begin_session(self, run_dir):
        i = len(self.sessions)
        pdir = os.path.join(self.h.wdir, "pristine%d" % i)
        os.makedirs(pdir)
        for f in self.files():
            shutil.copyfile(os.path.join(run_dir, f), os.path.join(pdir, f))
        logs = [(os.path.join(self.h.wdir, "log%d" % i), "img.qcow2")]
        if self.data_file:
            logs.append((os.path.join(self.h.wdir, "dlog%d" % i), "img.data"))
        for lp, _ in logs:
            open(lp, "wb").close()
        s = Session(logs, pdir)
        self.sessions.append(s)
        self.ledger.session = i
        return s

    def daemon_args(self, s, mp):
        a = ["--blockdev", "driver=file,node-name=img,filename=img.qcow2",
             "--blockdev", "driver=file,node-name=logf,filename=%s" % s.logs[0][0],
             "--blockdev", "driver=blklogwrites,node-name=lw,file=img,log=logf,log-sector-size=512"]
        q = "driver=qcow2,node-name=q,file=lw"
        if self.data_file:
            a += ["--blockdev", "driver=file,node-name=df,filename=img.data",
                  "--blockdev", "driver=file,node-name=dlogf,filename=%s" % s.logs[1][0],
                  "--blockdev", "driver=blklogwrites,node-name=dlw,file=df,log=dlogf,log-sector-size=512"]
            q += ",data-file=dlw"
        a += ["--blockdev", q, "--export", "type=fuse,id=e,node-name=q,mountpoint=%s,writable=on" % mp]
        return a

    def start(self, run_dir, s):
        mp = os.path.join(run_dir, "mp")
        open(mp, "a").close()
        return Daemon(self.h.args.daemon, self.daemon_args(s, mp), run_dir, "d%d" % len(self.sessions),
                      env=self.h.daemon_env, mountpoint=mp), mp

    def writer(self, mp, s):
        return Writer(mp, self.ledger, [lp for lp, _ in s.logs], self.h.seed + len(self.sessions),
                      self.threads, punch=self.h.args.punch and self.h.args.daemon == "blockgraph")

    def record(self, run_dir):
        """Runs the workload: default one session of writer operations."""
        s = self.begin_session(run_dir)
        d, mp = self.start(run_dir, s)
        try:
            self.writer(mp, s).run(self.ops(), **self.writer_opts())
            d.stop()
        finally:
            d.kill()
        self.ledger.all_durable()

    def writer_opts(self):
        return {}

    # -- per-state extras --------------------------------------------------
    def state_checks(self, sdir, state, rng):
        return []

    def check_exit_ok(self, state, rc, out):
        """True to accept a qemu-img check exit status other than 0/3."""
        return False

    def final_checks(self, sdir, session):
        return []


class Basic(Workload):
    name = "rewrite"
    create_opts = "lazy_refcounts=off"
    __doc__ = "random 4 KiB writes and rewrites from 2 threads, fsync every 3-12 writes (lazy refcounts off)"


class Lazy(Workload):
    name = "lazy-refcounts"
    create_opts = "lazy_refcounts=on"
    lazy = True
    __doc__ = "as rewrite with lazy_refcounts=on: every state is first repaired by a writable blockgraph open"


class AllocSeq(Workload):
    name = "alloc-seq"
    create_opts = "cluster_size=64k"
    __doc__ = "a fresh image written sequentially (every write allocates or fills a new cluster)"

    def writer_opts(self):
        return {"mode": "sequential", "fsync_every": (4, 16)}


class AllocRandom(Workload):
    name = "alloc-random"
    create_opts = "cluster_size=16k"
    __doc__ = "a fresh image with 16 KiB clusters, first writes at random places (allocation and COW)"

    def writer_opts(self):
        return {"fresh": True}


class Discard(Workload):
    name = "discard-zero"
    __doc__ = "writes mixed with fallocate zero-range (and punch-hole with --punch) through the mount"

    def writer_opts(self):
        return {"zero_rate": 0.25}


class ExtL2(Workload):
    name = "extended-l2"
    create_opts = "extended_l2=on,cluster_size=64k"
    __doc__ = "extended_l2=on with 64 KiB clusters (4 KiB writes allocate subclusters)"

    def writer_opts(self):
        return {"zero_rate": 0.1}


class Backing(Workload):
    name = "backing"
    backing = True
    create_opts = "cluster_size=64k"
    __doc__ = "writes to an overlay over a backing file whose every sector describes itself (COW from backing)"

    def writer_opts(self):
        return {"zero_rate": 0.1}


class DataFile(Workload):
    name = "data-file"
    data_file = True
    __doc__ = "an external data file with its own blklogwrites (the model: docs/reliability.md)"

    # Two logs have no common order.  The data file's writes go to fixed
    # places (guest offset = data file offset), so no metadata state
    # depends on them: a state is a crash state of the image file's log
    # combined with the data log cut where the last durable fsync saw it
    # (everything that fsync covered is in it) plus a random subset of the
    # data entries logged after that cut.


class Resize(Workload):
    name = "resize"
    size = 16 << 20
    __doc__ = "QMP block_resize (16 -> 24 -> 32 MiB) while the writer writes, then writes into the new space"

    def record(self, run_dir):
        s = self.begin_session(run_dir)
        d, mp = self.start(run_dir, s)
        try:
            self.ledger.nblocks = (32 << 20) // BS
            w = self.writer(mp, s)
            w.limit = (16 << 20) // BS
            for new in (24 << 20, 32 << 20):
                errs = []

                def phase():
                    try:
                        w.run(self.ops() // 3)
                    except Exception as e:  # noqa: BLE001
                        errs.append(e)
                t = threading.Thread(target=phase)
                t.start()
                time.sleep(0.3)
                d.cmd("block_resize", node_name="q", size=new)
                t.join()
                if errs:
                    raise errs[0]
                w.limit = new // BS
            w.run(self.ops() // 3)
            d.stop()
        finally:
            d.kill()
        self.ledger.all_durable()


class Snapshots(Workload):
    name = "snapshots"
    size = 16 << 20
    __doc__ = "internal snapshots created and deleted over QMP between write phases; contents checked"

    def record(self, run_dir):
        s = self.begin_session(run_dir)
        d, mp = self.start(run_dir, s)
        self.snaps = {}    # name -> (L at create, L at delete or None, values)
        self.ops_windows = []   # (log length before, L after) of each snapshot command
        try:
            w = self.writer(mp, s)
            for i in range(5):
                w.run(self.ops() // 5)
                name = "s%d" % i
                before = w.lengths()
                d.cmd("blockdev-snapshot-internal-sync", device="q", name=name)
                self.snaps[name] = [w.lengths(), None, self.ledger.snapshot_values()]
                self.ops_windows.append((before[0], self.snaps[name][0]))
                if i >= 2:
                    old = "s%d" % (i - 2)
                    before = w.lengths()
                    self.snaps[old].append(before)
                    d.cmd("blockdev-snapshot-delete-internal-sync", device="q", name=old)
                    self.snaps[old][1] = w.lengths()
                    self.ops_windows.append((before[0], self.snaps[old][1]))
            d.stop()
        finally:
            d.kill()
        self.ledger.all_durable()

    def state_checks(self, sdir, state, rng):
        fails = []
        info = json.loads(run(["qemu-img", "info", "--output=json", "-U", "img.qcow2"]).stdout or "{}")
        have = {sn["name"] for sn in info.get("snapshots", [])}
        for name, (Lc, Ld, values, *started) in self.snaps.items():
            created = state.reached(Lc)
            deleted = Ld is not None and state.reached(Ld)
            # Once its deletion started, the snapshot may be gone.
            deleting = bool(started) and state.max_pos >= started[0][0]
            if deleted and name in have:
                fails.append("snapshot %s is listed after its deletion was acknowledged" % name)
            elif created and not deleting and name not in have:
                fails.append("snapshot %s is missing after its creation was acknowledged" % name)
            elif name in have and rng.random() < self.h.args.snapshot_sample:
                fails += self.check_snapshot(name, values)
        return fails

    def check_exit_ok(self, state, rc, out):
        """Creating or deleting an internal snapshot changes refcounts and
        the OFLAG_COPIED flags of every L2/L1 entry, which no ordering makes
        atomic (QEMU's qcow2 alike): a crash inside the command may leave
        flags that disagree with refcounts ("ERROR OFLAG_COPIED"), which
        qemu-img check counts as errors and -r all repairs; refcounts are
        never too low.  The last flag updates may stay in the cache after
        the command returned (QEMU's too), so the window ends at the first
        flush after the reply.  Accepted there, and only that: the image
        must then check clean after qemu-img check -r all."""
        if rc != 2 or not any(state.max_pos >= lo and state.barrier_pos < first_flush_after(state.ctx_flushes, L[0])
                               for lo, L in self.ops_windows):
            return False
        errs = [l for l in out.splitlines() if l.startswith("ERROR")]
        if not errs or not all(l.startswith("ERROR OFLAG_COPIED") for l in errs):
            return False
        r = run(["qemu-img", "check", "-r", "all", "-f", "qcow2", "img.qcow2"])
        r2 = run(["qemu-img", "check", "-f", "qcow2", "img.qcow2"])
        self.h.copied_repaired.value += 1
        return r2.returncode == 0

    def check_snapshot(self, name, values):
        r = run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", "-l", "snapshot.name=" + name,
                 "img.qcow2", "snap.raw"])
        if r.returncode:
            return ["qemu-img convert of snapshot %s: %s" % (name, r.stderr.strip()[:300])]
        raw = RawImage("snap.raw")
        os.unlink("snap.raw")
        led = Ledger(self.ledger.nblocks, self.ledger.initial)
        led.issued = {b: [v] for b, v in values.items()}
        fails = verify_guest(raw, led, {b: 0 for b in values}, self.size // BS)
        return ["snapshot %s: %s" % (name, f) for f in fails]

class Bitmaps(Workload):
    name = "bitmaps"
    __doc__ = "persistent dirty bitmaps: added over QMP, stored by a clean stop, autoloaded (in use) by a second run"

    def record(self, run_dir):
        s = self.begin_session(run_dir)
        d, mp = self.start(run_dir, s)
        try:
            d.cmd("block-dirty-bitmap-add", node="q", name="b0", persistent=True)
            self.writer(mp, s).run(self.ops() // 2)
            d.stop()
        finally:
            d.kill()
        self.ledger.all_durable()
        s = self.begin_session(run_dir)
        d, mp = self.start(run_dir, s)
        try:
            d.cmd("block-dirty-bitmap-add", node="q", name="b1", persistent=True, granularity=65536)
            self.writer(mp, s).run(self.ops() // 2)
            d.stop()
        finally:
            d.kill()
        self.ledger.all_durable()

    def bitmaps(self):
        info = json.loads(run(["qemu-img", "info", "--output=json", "-U", "img.qcow2"]).stdout or "{}")
        bms = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
        return {b["name"]: b for b in bms}

    def state_checks(self, sdir, state, rng):
        # The second run autoloads b0 and must flag it in use (or drop it:
        # QEMU clears the autoclear bit while it rewrites the bitmap
        # directory) before the guest writes anything: a state holding a
        # durable write of that run and b0 not in use is a stale bitmap.
        if state.session != 1 or state.is_final:
            return []
        if not any(sess == 1 and L is not None and state.reached(L) and done
                   for sess, L, done in self.ledger.syncs):
            return []
        b0 = self.bitmaps().get("b0")
        if b0 is not None and "in-use" not in b0.get("flags", []):
            # Stored again (consistent) by the clean stop: only once every
            # guest write of the run is in the image.
            full = {}
            for sess, L, done in self.ledger.syncs:
                for b, i in done:
                    full[b] = max(full.get(b, -1), i)
            fails = verify_guest(state.raw, self.ledger, full, self.ledger.nblocks)
            return ["bitmap b0 is stored as consistent before all of the run's writes are in the image: " + f
                    for f in fails[:1]]
        return []

    def final_checks(self, sdir, session):
        bms = self.bitmaps()
        fails = []
        for n in ("b0", "b1")[:session + 1]:
            if n not in bms:
                fails.append("bitmap %s missing after the clean stop (qemu-img info: %s)" % (n, sorted(bms)))
            elif "in-use" in bms[n].get("flags", []):
                fails.append("bitmap %s still in use after the clean stop" % n)
        return fails


class Compressed(Workload):
    name = "compressed"
    size = 16 << 20
    __doc__ = "compressed cluster writes (io 'write -c') over the same blklogwrites graph, with plain rewrites"

    def record(self, run_dir):
        cs = 65536
        nclusters = self.size // cs
        rng = random.Random(self.h.seed)
        for sess in range(max(2, self.ops() // 40)):
            s = self.begin_session(run_dir)
            spec = ("driver=qcow2,file.driver=blklogwrites,file.file.driver=file,file.file.filename=img.qcow2,"
                    "file.log.driver=file,file.log.filename=%s,file.log-sector-size=512" % s.logs[0][0])
            cmds = []
            for n in range(12):
                if rng.random() < 0.7:
                    c = rng.randrange(nclusters)
                    blocks = range(c * CHUNK, (c + 1) * CHUNK)
                    off, length, flag = c * cs, cs, "-c "
                else:
                    b = rng.randrange(self.size // BS)
                    blocks = range(b, b + 1)
                    off, length, flag = b * BS, BS, ""
                seq = self.ledger.next_seq()
                src = os.path.join(self.h.wdir, "src%d" % n)
                with open(src, "wb") as f:
                    for blk in blocks:
                        self.ledger.issue(blk, seq)
                        f.write(block_bytes(blk, seq))
                cmds += ["-c", "write %s-s %s %d %d" % (flag, src, off, length)]
                if rng.random() < 0.3:
                    cmds += ["-c", "flush"]
            if self.h.args.daemon == "blockgraph":
                argv = [blockgraph_bin(), "io", "--image-opts"] + cmds + [spec]
            else:
                argv = ["qemu-io", "--image-opts"] + cmds + [spec]
            r = run(argv, env=self.h.daemon_env, timeout=120)
            if r.returncode or "error" in (r.stdout + r.stderr).lower():
                raise RuntimeError("%s: exit %d: %s" % (argv[0], r.returncode, (r.stdout + r.stderr)[-500:]))
            self.ledger.all_durable()


class Fio(Workload):
    name = "fio"
    size = 32 << 20
    fio = True
    __doc__ = "fio random writes with --verify=crc32c (fsync every 8 writes); final image passes fio --verify_only"

    def fio_args(self, target):
        return ["fio", "--name=pl", "--filename=" + target, "--size=16M", "--rw=randwrite", "--bs=4k",
                "--ioengine=psync", "--verify=crc32c", "--randseed=%d" % self.h.seed, "--fsync=8",
                "--number_ios=%d" % (self.ops() * 2), "--verify_fatal=1"]

    def record(self, run_dir):
        s = self.begin_session(run_dir)
        d, mp = self.start(run_dir, s)
        try:
            r = run(self.fio_args(mp), timeout=300)
            if r.returncode:
                raise RuntimeError("fio: " + (r.stdout + r.stderr)[-800:])
            d.stop()
        finally:
            d.kill()

    def final_checks(self, sdir, session):
        r = run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", "img.qcow2", "fio.raw"])
        if r.returncode:
            return ["qemu-img convert: " + r.stderr]
        r = run(self.fio_args("fio.raw") + ["--verify_only"], timeout=120)
        os.unlink("fio.raw")
        if r.returncode:
            return ["fio --verify_only: " + (r.stdout + r.stderr)[-500:]]
        return []


WORKLOADS = [Fio, AllocSeq, AllocRandom, Basic, Lazy, Discard, Resize, Snapshots, Bitmaps, Compressed,
             ExtL2, DataFile, Backing]


# ---------------------------------------------------------------------------
# Replay and checks

class State:
    """A crash state's identity: its session, the barrier index it builds
    on and the log lengths that barrier makes durable."""

    def __init__(self, session, barrier_pos, is_final=False):
        self.session = session
        self.barrier_pos = barrier_pos   # byte position of the last FLUSH in the state (-1: none)
        self.is_final = is_final

    def reached(self, L):
        """True if an event whose (primary) log length was L is durable here."""
        if L is None:
            return True
        return dp_pos(self.ctx_flushes, L[0]) <= self.barrier_pos


def first_flush_after(flush_pos, L):
    """The header position of the first FLUSH entry at or after L."""
    for p in flush_pos:
        if p >= L:
            return p
    return 1 << 62


def dp_pos(flush_pos, L):
    """The header position of the last FLUSH entry starting below L (-2
    if none: nothing is durable before the first flush)."""
    best = -2
    for p in flush_pos:
        if p < L:
            best = p
        else:
            break
    return best


class Replayer:
    def __init__(self, h, wl):
        self.h, self.wl = h, wl
        self.args = h.args

    def prepare(self):
        """Reads every session's logs."""
        self.plan = []
        for si, s in enumerate(self.wl.sessions):
            logs = []
            for lp, target in s.logs:
                ss, _, entries = dmlog.read_log(lp)
                logs.append((lp, target, entries))
            prim = logs[0][2]
            barriers = [e.index for e in prim if e.is_barrier]
            flush_pos = [e.data_pos - e.sectorsize for e in prim if e.is_flush]
            self.plan.append((s, logs, barriers, flush_pos))

    def tasks(self):
        """(session, window index) pairs; window w builds on barrier w-1."""
        out = []
        for si, (s, logs, barriers, _) in enumerate(self.plan):
            for w in range(len(barriers) + 1):
                out.append((si, w))
        return out


def flag_of(e):
    return e.kind()


class Checker:
    """Runs in a worker process: materialises states in its own directory
    and checks them."""

    def __init__(self, h, wl, rp, wid):
        self.h, self.wl, self.rp = h, wl, rp
        self.args = h.args
        self.dir = os.path.join(h.wdir, "w%d" % wid)
        os.makedirs(self.dir, exist_ok=True)
        self.base = os.path.join(self.dir, "base")
        os.makedirs(self.base, exist_ok=True)
        self.cur = None        # (session, applied count per log) of the base
        self.rng = random.Random(h.seed * 7919 + wid)
        self.bg = blockgraph_bin() if os.path.exists(blockgraph_bin()) else None

    # -- building states ---------------------------------------------------
    def base_to(self, si, upto):
        """Makes self.base the session's pristine files plus the primary
        log's entries [0, upto) (incrementally where possible)."""
        s, logs, _, _ = self.rp.plan[si]
        if self.cur is None or self.cur[0] != si or self.cur[1] > upto:
            for f in self.wl.files():
                shutil.copyfile(os.path.join(s.pristine, f), os.path.join(self.base, f))
            self.cur = (si, 0)
        lp, target, entries = logs[0]
        fd = os.open(os.path.join(self.base, target), os.O_RDWR)
        with open(lp, "rb") as log:
            for e in entries[self.cur[1]:upto]:
                dmlog.apply(e, log, fd)
        os.close(fd)
        self.cur = (si, upto)

    def materialise(self, si, extra, tear, secondary):
        """The state directory: base plus the primary entries EXTRA (in
        log order; TEAR maps an entry index to the sectors of it that
        survive) and, per secondary log, the entries SECONDARY[i]."""
        s, logs, _, _ = self.rp.plan[si]
        sdir = os.path.join(self.dir, "state")
        os.makedirs(sdir, exist_ok=True)
        for f in self.wl.files():
            shutil.copyfile(os.path.join(self.base, f), os.path.join(sdir, f))
        lp, target, entries = logs[0]
        self.apply_list(lp, os.path.join(sdir, target), [entries[i] for i in extra], tear)
        for (lp2, target2, ents2), idx in zip(logs[1:], secondary):
            self.apply_list(lp2, os.path.join(sdir, target2), [ents2[i] for i in idx], {})
        return sdir

    def apply_list(self, lp, path, entries, tear):
        if not entries:
            return
        fd = os.open(path, os.O_RDWR)
        with open(lp, "rb") as log:
            for e in entries:
                sectors = tear.get(e.index)
                if sectors is None:
                    dmlog.apply(e, log, fd)
                else:
                    data = e.data(log)
                    u = self.args.tear_unit
                    for k in sectors:
                        os.pwrite(fd, data[k * u:(k + 1) * u], e.offset + k * u)
        os.close(fd)

    # -- a window ----------------------------------------------------------
    def window(self, si, w):
        s, logs, barriers, flush_pos = self.rp.plan[si]
        entries = logs[0][2]
        start = barriers[w - 1] + 1 if w > 0 else 0        # entries [0, start) are in the base
        end = barriers[w] if w < len(barriers) else len(entries)   # the next barrier (excluded)
        self.base_to(si, start)
        bpos = -1
        for e in reversed(entries[:start]):
            if e.is_flush:
                bpos = e.data_pos - e.sectorsize
                break
        results = []
        states = [("prefix", list(range(start, start)), {})]
        final = w == len(barriers)
        span = list(range(start, end))
        if span:
            for k in range(self.args.states_per_flush):
                cut = self.rng.randint(start, end - 1)
                keep_p = self.rng.choice([1.0, 0.8, 0.5, 0.2])
                extra = [i for i in range(start, cut + 1)
                         if entries[i].is_fua or self.rng.random() < keep_p]
                tear = {}
                for i in extra:
                    e = entries[i]
                    units = e.length // self.args.tear_unit
                    if e.is_write and units > 1 and self.rng.random() < self.args.tear_rate:
                        tear[i] = sorted(self.rng.sample(range(units), self.rng.randint(1, units - 1)))
                states.append(("subset(cut %d, %d of %d kept%s)" % (cut, len(extra), cut + 1 - start,
                                                                    ", %d torn" % len(tear) if tear else ""),
                               extra, tear))
        if final:
            states.append(("final", span, {}))
        for desc, extra, tear in states:
            st = State(si, bpos, is_final=(desc == "final"))
            st.ctx_flushes = flush_pos
            last = extra[-1] if extra else start - 1
            st.max_pos = entries[last].data_pos - entries[last].sectorsize if last >= 0 else -1
            if desc == "final":
                st.barrier_pos = 1 << 62
            secondary = self.secondary_entries(si, st)
            sdir = self.materialise(si, extra, tear, secondary)
            fails = self.check(sdir, si, st)
            where = "session %d window %d (after entry %d) %s" % (si, w, start - 1, desc)
            results.append((where, fails))
        return results

    def secondary_entries(self, si, st):
        """The data log's entries for a state: everything below where the
        last durable fsync cut it, plus a random half of what follows up
        to the next fsync's cut (the final state: everything)."""
        s, logs, _, flush_pos = self.rp.plan[si]
        out = []
        for li in range(1, len(logs)):
            ents = logs[li][2]
            if st.is_final:
                out.append(list(range(len(ents))))
                continue
            syncs = [L for sess, L, _ in self.wl.ledger.syncs if sess == si and L is not None]
            durable = [L[li] for L in syncs if dp_pos(flush_pos, L[0]) <= st.barrier_pos]
            lo = max(durable) if durable else 0
            later = [L[li] for L in syncs if L[li] > lo]
            hi = min(later) if later else 1 << 62
            sel = []
            for e in ents:
                hpos = e.data_pos - e.sectorsize
                if hpos < lo or (hpos < hi and self.rng.random() < 0.5):
                    sel.append(e.index)
            out.append(sel)
        return out

    # -- the checks of one state ---------------------------------------------
    def check(self, sdir, si, st):
        fails = []
        os.chdir(sdir)
        img = "img.qcow2"
        env = self.h.check_env
        if self.wl.lazy and self.bg:
            r = run([self.bg, "io", "-f", "qcow2", "-c", "flush", img], env=env)
            if r.returncode:
                fails.append("blockgraph writable open (repair) failed: " + (r.stderr + r.stdout).strip()[:300])
        elif self.wl.lazy:
            r = run(["qemu-io", "-f", "qcow2", "-c", "flush", img])
            if r.returncode:
                fails.append("qemu-io writable open (repair) failed: " + (r.stderr + r.stdout).strip()[:300])
        r = run(["qemu-img", "check", "-f", "qcow2", img])
        # Leaks are allowed after a crash (also after the repair of a lazy
        # refcounts image: QEMU's repair on open leaves leaks too); not
        # after the clean stop.
        ok_rc = (0,) if st.is_final else (0, 3)
        if r.returncode not in ok_rc and not (not st.is_final and self.wl.check_exit_ok(st, r.returncode, r.stdout + r.stderr)):
            if getattr(self.wl, "ops_windows", None):
                fails.append("(state max_pos %d barrier %d; command windows %s)" % (
                    st.max_pos, st.barrier_pos, [(lo, L[0], first_flush_after(st.ctx_flushes, L[0]))
                                                 for lo, L in self.wl.ops_windows]))
            lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
            errs = [l for l in lines if l.startswith(("ERROR", "Leaked"))]
            fails.append("qemu-img check exit %d: %s%s" % (r.returncode, " | ".join(lines[:2])[:200],
                         " | " + " | ".join(errs[:4]) if errs else ""))
        if self.bg:
            r = run([self.bg, "io", "-r", "-f", "qcow2", "-c", "read 0 512", img], env=env)
            if r.returncode or "error" in r.stdout.lower():
                fails.append("blockgraph io -r: exit %d: %s" % (r.returncode, (r.stderr + r.stdout).strip()[:300]))
        r = run(["qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", img]) \
            if st.is_final or self.rng.random() < self.args.qemu_io_sample else None
        if r is not None and (r.returncode or "error" in r.stdout.lower() or r.stderr.strip()):
            fails.append("qemu-io -r: exit %d: %s" % (r.returncode, (r.stderr + r.stdout).strip()[:300]))
        if not self.wl.fio:
            r = run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", img, "guest.raw"])
            if r.returncode:
                fails.append("qemu-img convert: " + r.stderr.strip()[:300])
            else:
                raw = st.raw = RawImage("guest.raw")
                os.unlink("guest.raw")
                fails += verify_guest(raw, self.wl.ledger, self.durable_map(si, st), self.wl.ledger.nblocks)
        fails += self.wl.state_checks(sdir, st, self.rng)
        if st.is_final:
            fails += self.final_compare(sdir, si)
            fails += self.wl.final_checks(sdir, si)
        if not fails and self.rng.random() < self.args.repair_sample:
            r = run(["qemu-img", "check", "-r", "leaks", "-f", "qcow2", img])
            r2 = run(["qemu-img", "check", "-f", "qcow2", img])
            if r.returncode not in (0,) or r2.returncode != 0:
                fails.append("qemu-img check -r leaks exit %d, then check exit %d: %s" % (
                    r.returncode, r2.returncode, (r2.stdout + r.stdout).strip()[:300]))
            self.h.repairs.value += 1
        os.chdir(self.h.wdir)
        return fails

    def durable_map(self, si, st):
        """blk -> index of its last write that is durable in the state:
        earlier sessions ended with a clean stop; in this one, the fsyncs
        whose flush the state contains (and at its end, everything)."""
        d = {}
        for sess, L, done in self.wl.ledger.syncs:
            if sess > si:
                continue
            if sess == si:
                if L is None and not st.is_final:
                    continue
                if L is not None and dp_pos(st.ctx_flushes, L[0]) > st.barrier_pos:
                    continue
            for b, i in done:
                if i > d.get(b, -1):
                    d[b] = i
        return d

    def final_compare(self, sdir, si):
        """The whole log replayed equals what the daemon left."""
        if si != len(self.rp.plan) - 1:
            return []
        fails = []
        for f in self.wl.files():
            with open(os.path.join(sdir, f), "rb") as a, open(os.path.join(self.h.run_dir, f), "rb") as b:
                ra, rb = a.read(), b.read()
            # Truncates are not logged: a length difference must be zeroes.
            n = min(len(ra), len(rb))
            if ra[:n] != rb[:n] or ra[n:].count(0) != len(ra) - n or rb[n:].count(0) != len(rb) - n:
                fails.append("%s replayed (%d bytes) differs from the daemon's (%d bytes)" % (f, len(ra), n))
        return fails


WORKER = {}


def worker_run(args):
    wid, chunk = args
    h, wl, rp = WORKER["h"], WORKER["wl"], WORKER["rp"]
    c = Checker(h, wl, rp, wid)
    out = []
    for si, w in chunk:
        try:
            out += c.window(si, w)
        except Exception as e:  # noqa: BLE001
            out.append(("session %d window %d" % (si, w), ["harness error: %s\n%s" % (e, traceback.format_exc()[-800:])]))
    return out


class Harness:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.daemon_env = dict(os.environ)
        self.check_env = dict(os.environ)
        self.check_env.pop("BLOCKGRAPH_TEST_QCOW2_MISORDER", None)
        if args.misorder:
            self.daemon_env["BLOCKGRAPH_TEST_QCOW2_MISORDER"] = args.misorder
        self.repairs = multiprocessing.get_context("fork").Value("i", 0)
        self.copied_repaired = multiprocessing.get_context("fork").Value("i", 0)

    def run_workload(self, cls, top):
        self.wdir = os.path.join(top, cls.name)
        os.makedirs(self.wdir)
        self.run_dir = os.path.join(self.wdir, "run")
        os.makedirs(self.run_dir)
        t0 = time.monotonic()
        wl = cls(self)
        os.chdir(self.run_dir)
        wl.create(self.run_dir)
        wl.record(self.run_dir)
        os.chdir(self.wdir)
        t_rec = time.monotonic() - t0
        rp = Replayer(self, wl)
        rp.prepare()
        tasks = rp.tasks()
        nflush = sum(len(b) for _, _, b, _ in rp.plan)
        jobs = max(1, self.args.jobs)
        chunks = [tasks[i * len(tasks) // jobs:(i + 1) * len(tasks) // jobs] for i in range(jobs)]
        WORKER.update(h=self, wl=wl, rp=rp)
        if jobs == 1:
            results = worker_run((0, chunks[0]))
        else:
            pool = multiprocessing.get_context("fork").Pool(jobs, initializer=signal.signal,
                                                            initargs=(signal.SIGTERM, signal.SIG_DFL))
            try:
                results = [r for part in pool.map(worker_run, list(enumerate(chunks))) for r in part]
                pool.close()
            finally:
                pool.terminate()
                pool.join()
        bad = [(w, f) for w, f in results if f]
        el = time.monotonic() - t0
        nentries = sum(len(l[0][2]) for _, l, _, _ in rp.plan)
        print("%-15s %5d entries %4d barriers %6d states %4d bad  %6.1f s (record %.1f s)" % (
            cls.name, nentries, nflush, len(results), len(bad), el, t_rec), flush=True)
        for w, f in bad[:self.args.details]:
            print("    BAD %s:" % w)
            for x in f[:3]:
                print("        " + x.replace("\n", "\n        "))
        return len(results), len(bad), nflush, el


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="workloads:\n" + "\n".join("  %-15s %s" % (w.name, w.__doc__ or "")
                                                                  for w in WORKLOADS))
    ap.add_argument("--daemon", choices=("blockgraph", "qsd"), default="blockgraph")
    ap.add_argument("--workloads", default="all")
    ap.add_argument("--ops", type=int, default=150, help="writer operations per thread and run (default 150)")
    ap.add_argument("--states-per-flush", type=int, default=4,
                    help="subset crash states per barrier window, besides the prefix (default 4)")
    ap.add_argument("--tear-rate", type=float, default=0.1,
                    help="share of kept entries longer than a tear unit that are torn (default 0.1)")
    ap.add_argument("--tear-unit", type=int, default=4096,
                    help="a torn write keeps a random subset of its units of this size (default 4096: "
                         "the physical sector of current disks; qcow2 needs its header sector atomic)")
    ap.add_argument("--repair-sample", type=float, default=0.05,
                    help="share of states also repaired with qemu-img check -r leaks (default 0.05)")
    ap.add_argument("--snapshot-sample", type=float, default=0.2)
    ap.add_argument("--punch", action="store_true",
                    help="discard-zero also punches holes (blockgraph only; qcow2 refuses those smaller than a cluster with EOPNOTSUPP)")
    ap.add_argument("--qemu-io-sample", type=float, default=0.25,
                    help="share of states also opened with qemu-io (every state is opened by QEMU's "
                         "block layer anyway: qemu-img check and convert); default 0.25")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("BG_POWERLOSS_SEED", "1")))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--details", type=int, default=3)
    ap.add_argument("--misorder", default="", help="BLOCKGRAPH_TEST_QCOW2_MISORDER for the daemon")
    ap.add_argument("--expect-bad", action="store_true", help="pass only if bad states were found")
    args = ap.parse_args()
    for t in ("qemu-img", "qemu-io", "fusermount3") + (("qemu-storage-daemon",) if args.daemon == "qsd" else ()):
        if not shutil.which(t):
            print("SKIP: %s is not installed" % t)
            return 77
    if args.daemon == "blockgraph" and not os.access(blockgraph_bin(), os.X_OK):
        print("FAIL: %s is not an executable" % blockgraph_bin())
        return 1
    names = [w.name for w in WORKLOADS] if args.workloads == "all" else args.workloads.split(",")
    byname = {w.name: w for w in WORKLOADS}
    for n in names:
        if n not in byname:
            print("unknown workload %r (known: %s)" % (n, ", ".join(byname)))
            return 2
    if "fio" in names and not shutil.which("fio"):
        print("SKIP: fio is not installed")
        return 77
    top = tempfile.mkdtemp(prefix="bg-powerloss.", dir=os.environ.get(
        "BG_POWERLOSS_TMP", "/dev/shm" if os.path.isdir("/dev/shm") else os.environ.get("TMPDIR", "/var/tmp")))
    top = os.path.realpath(top)

    def on_signal(sig, frame):
        raise SystemExit("interrupted by signal %d" % sig)
    signal.signal(signal.SIGTERM, on_signal)
    h = Harness(args)
    print("powerloss: daemon %s, seed %d, %d ops per thread, %d states per flush%s" % (
        args.daemon, args.seed, args.ops, args.states_per_flush,
        ", misorder " + args.misorder if args.misorder else ""), flush=True)
    tot_states = tot_bad = tot_flush = 0
    failed = []
    t0 = time.monotonic()
    try:
        for n in names:
            try:
                s, b, f, _ = h.run_workload(byname[n], top)
            except Exception as e:  # noqa: BLE001
                cleanup_daemons()
                print("%-15s FAILED to run: %s" % (n, str(e)[:1500]), flush=True)
                failed.append(n)
                continue
            tot_states += s
            tot_bad += b
            tot_flush += f
    finally:
        cleanup_daemons()
        os.chdir("/")
        if not os.environ.get("BG_POWERLOSS_KEEP"):
            shutil.rmtree(top, ignore_errors=True)
    print("total: %d workloads, %d barriers, %d crash states, %d bad, %d repaired with -r leaks, "
          "%d inside a snapshot command repaired with -r all, %.0f s%s" % (
              len(names), tot_flush, tot_states, tot_bad, h.repairs.value, h.copied_repaired.value,
              time.monotonic() - t0,
        "; FAILED to run: " + ", ".join(failed) if failed else ""), flush=True)
    if failed:
        return 1
    if args.expect_bad:
        return 0 if tot_bad > 0 else 1
    return 1 if tot_bad else 0


if __name__ == "__main__":
    sys.exit(main())

# tests/integration/qmp-mirror.py -- blockdev-mirror and active commit
# (run by qmp-mirror.sh; QMP_TARGET=qsd runs it against
# qemu-storage-daemon). Each section has a daemon of its own:
#   errors      argument errors in QEMU's words, mirror_top not creatable
#   fuse        fio --verify=crc32c (randwrite, depth 64) through a writable
#               FUSE export of a qcow2 node during the whole mirror, until
#               READY and after; the mirror_top filter in
#               query-named-block-nodes; job-complete; fio reports no
#               error; qemu-img compare: the target equals the source as
#               of completion; writes after completion land in the target
#   nbd         the same through an NBD export (fio on an nbdfuse mount of
#               it); job-complete while fio still writes: fio's verify
#               reads go on from the target
#   soft-cancel block-job-cancel after READY: COMPLETED, no switch, the
#               target equals the source at that moment
#   force-cancel, pause/resume (status sequences), sync=top over a
#               backing chain, copy-mode=write-blocking (also switched by
#               block-job-change), on-target-error report/stop and
#               on-source-error=stop with blkdebug's injected errors, the
#               speed limit (within 10 %), kill -9 mid-mirror, active commit
#               (block-commit of the active layer: complete under fio, and a
#               soft cancel). The status sequences are QEMU's: the script
#               passes against qemu-storage-daemon 7.2 too (8.2's
#               actively-synced and block-job-change only against ours).
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, nodes, run, wait_for  # noqa: E402

M = 1 << 20
SIZE = 64 * M


def qimg(*args, check=True):
    return run(["qemu-img", *args], check=check)


def qio(*args, check=True):
    return run(["qemu-io", *args], check=check)


def wait_ev(c, name, pred=None, timeout=20.0):
    """The first event NAME (matching PRED) in c.events or arriving within
    TIMEOUT, left in c.events (so that sequences can be read later)."""
    deadline = time.monotonic() + timeout
    while True:
        for e in c.events:
            if e.get("event") == name and (pred is None or pred(e)):
                return e
        left = deadline - time.monotonic()
        if left <= 0:
            raise Exception(f"no {name} event within {timeout} s; events: {[x['event'] for x in c.events]}")
        try:
            m = c.recv(min(left, 1.0))
        except Exception as ex:  # noqa: BLE001
            if "timed out" in str(ex):
                continue
            raise
        if "event" in m:
            c.events.append(m)


def statuses(c, job):
    return [e["data"]["status"] for e in c.events
            if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == job]


def job_ended(c, job, timeout=30.0):
    return wait_ev(c, "JOB_STATUS_CHANGE", lambda e: e["data"]["id"] == job and e["data"]["status"] == "null",
                   timeout)


def fio_cmd(t, path, runtime, size=32 * M, direct=True, extra=()):
    d = "--direct=1" if direct else "--direct=0"
    return ["fio", "--name=v", f"--filename={path}", f"--size={size}", "--rw=randwrite", "--bs=4k",
            "--ioengine=libaio", d, "--iodepth=64", "--verify=crc32c", "--verify_fatal=1",
            "--verify_backlog=1024", "--verify_state_save=0", "--time_based", f"--runtime={runtime}",
            "--output-format=json", f"--output={t.work}/fio-{os.path.basename(path)}.json", *extra]


def fio_result(t, proc, path, desc):
    out = proc.communicate(timeout=60)[0]
    errs = None
    try:
        with open(f"{t.work}/fio-{os.path.basename(path)}.json") as f:
            j = json.load(f)
        errs = [job.get("error") for job in j["jobs"]]
        w = sum(job["write"]["io_bytes"] for job in j["jobs"])
    except Exception as e:  # noqa: BLE001
        w = 0
        errs = str(e)
    t.check(proc.returncode == 0 and errs == [0] and w > 0, desc,
            f"rc {proc.returncode} errors {errs} written {w} {out[-800:] if out else ''}")


def start_daemon(t):
    """A daemon with an NBD server on a Unix socket (d.nbd_sock)."""
    sock = f"{t.work}/nbd-{len(t.daemons)}.sock"
    d = t.daemon(["--nbd-server", f"addr.type=unix,addr.path={sock}"])
    d.nbd_sock = sock
    return d


def export_file(t, d, c, node, name):
    """A writable file whose bytes are NODE's: a FUSE export; against QSD
    an NBD export on an nbdfuse mount instead (QSD's writable FUSE export
    takes RESIZE, which QEMU's mirror job does not share: blockdev-mirror
    then fails with a permission conflict)."""
    if not t.is_qsd:
        mp = f"{t.work}/{name}"
        open(mp, "w").close()
        t.ret(c.cmd("block-export-add", type="fuse", id="e0", node_name=node, mountpoint=mp, writable=True),
              f"FUSE export of {node}")
        return mp
    t.ret(c.cmd("block-export-add", type="nbd", id="e0", node_name=node, name="e0", writable=True),
          f"NBD export of {node}")
    mnt = f"{t.work}/{name}.d"
    os.mkdir(mnt)
    subprocess.Popen(["nbdfuse", mnt, f"nbd+unix:///e0?socket={d.nbd_sock}"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    path = f"{mnt}/nbd"
    if not wait_for(lambda: os.path.exists(path), 10):
        raise Exception("nbdfuse did not mount the export")
    return path


def unexport(path):
    if path.endswith("/nbd"):
        subprocess.run(["fusermount3", "-u", os.path.dirname(path)], capture_output=True, timeout=10)


def make_source(t, name, size=SIZE, fill=48 * M):
    path = f"{t.work}/{name}.qcow2"
    qimg("create", "-q", "-f", "qcow2", path, str(size))
    # Data with holes and zero runs, so that the copy has all kinds.
    h, q = fill // 2, fill // 8
    qio("-f", "qcow2", "-c", f"write -P 0x5a 0 {h}", "-c", f"write -z {h} {q}",
        "-c", f"write -P 0xa5 {h + 2 * q} {h - 2 * q}", path)
    return path


def add_qcow2(t, c, node, path, desc=None):
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=node,
                file={"driver": "file", "filename": path}), desc or f"blockdev-add {node}")


def compare(t, a, b, desc):
    r = qimg("compare", "-f", "qcow2", "-F", "qcow2", a, b, check=False)
    t.check(r.returncode == 0, desc, (r.stdout + r.stderr).strip())


def check_img(t, path, desc):
    r = qimg("check", path, check=False)
    t.check(r.returncode == 0, desc, (r.stdout + r.stderr).strip()[-400:])


# ---------------------------------------------------------------- errors

def errors(t):
    t.section("argument errors")
    w = t.work
    qimg("create", "-q", "-f", "qcow2", f"{w}/e1.qcow2", "16M")
    qimg("create", "-q", "-f", "qcow2", f"{w}/e2.qcow2", "16M")
    qimg("create", "-q", "-f", "qcow2", f"{w}/e3.qcow2", "32M")
    d = t.daemon([])
    c = d.connect()
    add_qcow2(t, c, "s", f"{w}/e1.qcow2")
    add_qcow2(t, c, "tg", f"{w}/e2.qcow2")
    add_qcow2(t, c, "big", f"{w}/e3.qcow2")
    t.error(c.cmd("blockdev-mirror", job_id="j", device="s", target="s", sync="full"), "into itself",
            "Can't mirror node into itself")
    r = c.cmd("blockdev-mirror", job_id="j", device="s", target="big", sync="full")
    if t.is_qsd and "return" in r:
        # QEMU 7.2 mirrors into a bigger target; later versions refuse it.
        t.ok("different sizes: accepted by QEMU 7.2")
        c.cmd("job-cancel", id="j")
        job_ended(c, "j")
    else:
        t.error(r, "different sizes", "Source and target image have different sizes")
    t.error(c.cmd("blockdev-mirror", job_id="j", device="s", target="tg", sync="bitmap"), "sync bitmap",
            "Sync mode 'bitmap' not supported")
    t.error(c.cmd("blockdev-mirror", job_id="j", device="s", target="tg", sync="full", granularity=100),
            "granularity too small", "Parameter 'granularity' expects a value in range [512B, 64MB]")
    t.error(c.cmd("blockdev-mirror", job_id="j", device="s", target="tg", sync="full", granularity=3 * 4096),
            "granularity not a power of 2", "Parameter 'granularity' expects a power of 2")
    t.error(c.cmd("blockdev-mirror", job_id="j", device="nosuch", target="tg", sync="full"), "unknown device",
            "Cannot find device='nosuch' nor node-name='nosuch'")
    t.error(c.cmd("blockdev-mirror", job_id="1j", device="s", target="tg", sync="full"), "bad job id",
            "Invalid job ID '1j'")
    if t.ours():
        r = c.cmd("blockdev-add", driver="mirror_top", node_name="mt", file="s")
        t.check("error" in r, "blockdev-add of a mirror_top node is refused", r)
    # A running job: its nodes are busy; its id is taken.
    t.ret(c.cmd("blockdev-mirror", job_id="j", device="s", target="tg", sync="none"), "mirror sync=none")
    wait_ev(c, "BLOCK_JOB_READY")
    qimg("create", "-q", "-f", "qcow2", f"{w}/e4.qcow2", "16M")
    qimg("create", "-q", "-f", "qcow2", f"{w}/e5.qcow2", "16M")
    add_qcow2(t, c, "t2", f"{w}/e4.qcow2")
    add_qcow2(t, c, "t3", f"{w}/e5.qcow2")
    t.error(c.cmd("blockdev-mirror", job_id="j", device="t3", target="t2", sync="full"), "id in use",
            "Job ID 'j' already in use")
    t.error(c.cmd("blockdev-mirror", job_id="j2", device="s", target="t2", sync="full"), "source below a filter",
            "Need a root block node")
    t.error(c.cmd("blockdev-mirror", job_id="j2", device="tg", target="t2", sync="full"), "device: the target of a job",
            "Need a root block node")
    t.error(c.cmd("blockdev-mirror", job_id="j2", device="t3", target="tg", sync="full"), "target busy",
            "Node 'tg' is busy: block device is in use by block job: mirror")
    # quit with the job running: it is cancelled, the daemon exits 0.
    t.stop(d, "quit with a mirror running: exit 0")


# ---------------------------------------------------------------- fuse

def fuse(t):
    t.section("fio through a FUSE export during the mirror; job-complete")
    w = t.work
    src = make_source(t, "fs")
    tgt = f"{w}/ft.qcow2"
    qimg("create", "-q", "-f", "qcow2", tgt, str(SIZE))
    d = start_daemon(t)
    c = d.connect()
    add_qcow2(t, c, "src", src)
    add_qcow2(t, c, "tgt", tgt)
    mp = export_file(t, d, c, "src", "fmp")
    fio = subprocess.Popen(fio_cmd(t, mp, 10, direct=True), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=w)
    time.sleep(0.5)
    c.events.clear()
    t.ret(c.cmd("blockdev-mirror", job_id="m0", device="src", target="tgt", sync="full",
                filter_node_name="mtop"), "blockdev-mirror")
    ns = nodes(c)
    t.check("mtop" in ns and ns["mtop"]["drv"] == "mirror_top", "query-named-block-nodes shows mirror_top 'mtop'",
            sorted(ns))
    jobs = c.cmd("query-block-jobs")["return"]
    t.check(len(jobs) == 1 and jobs[0]["type"] == "mirror" and jobs[0]["device"] == "m0"
            and not jobs[0]["ready"], "query-block-jobs: mirror m0, not ready", jobs)
    ready = wait_ev(c, "BLOCK_JOB_READY", timeout=30)
    t.check(fio.poll() is None, "READY while fio still writes", ready)
    t.ret(c.cmd("block-job-set-speed", device="m0", speed=64 * M), "set-speed after READY")
    jobs = c.cmd("query-block-jobs")["return"]
    t.check(jobs and jobs[0]["ready"] and jobs[0]["status"] == "ready", "query-block-jobs: ready", jobs)
    if t.ours():   # actively-synced is QEMU 8.2's
        t.eq(jobs[0].get("actively-synced"), False, "actively-synced false (background)")
    fio_result(t, fio, mp, "fio --verify=crc32c through the mirror: no error")
    t.ret(c.cmd("job-complete", id="m0"), "job-complete")
    wait_ev(c, "BLOCK_JOB_COMPLETED")
    job_ended(c, "m0")
    t.eq(statuses(c, "m0"), ["created", "running", "ready", "waiting", "pending", "concluded", "null"],
         "status sequence")
    done = [e for e in c.events if e["event"] == "BLOCK_JOB_COMPLETED"][0]["data"]
    t.check("error" not in done and done["type"] == "mirror" and done["len"] == done["offset"],
            "BLOCK_JOB_COMPLETED without error, offset == len", done)
    ns = nodes(c)
    t.check("mtop" not in ns, "mirror_top is gone", sorted(ns))
    exp = c.cmd("query-block-exports")["return"]
    t.check(exp and exp[0]["node-name"] == "tgt", "the export now serves tgt", exp)
    # A write after completion lands in the target.
    with open(mp, "r+b") as f:
        f.seek(60 * M)
        f.write(b"\xc3" * M)
        f.flush()
        os.fsync(f.fileno())
    unexport(mp)
    t.stop(d)
    check_img(t, src, "qemu-img check source")
    check_img(t, tgt, "qemu-img check target")
    r = qio("-f", "qcow2", "-c", f"read -P 0xc3 {60 * M} {M}", src, check=False)
    t.check("Pattern verification failed" in r.stdout, "the write after completion is not in the source",
            r.stdout[-200:])
    r = qio("-f", "qcow2", "-c", f"read -P 0xc3 {60 * M} {M}", tgt, check=False)
    t.check(r.returncode == 0 and "failed" not in r.stdout, "the write after completion is in the target",
            r.stdout[-200:])
    qio("-f", "qcow2", "-c", f"write -P 0xc3 {60 * M} {M}", src)
    compare(t, src, tgt, "qemu-img compare: target == source as of completion (+ the later write)")


# ---------------------------------------------------------------- nbd

def nbd(t):
    t.section("fio through an NBD export (nbdfuse) during the mirror; job-complete under load")
    w = t.work
    src = make_source(t, "ns")
    tgt = f"{w}/nt.qcow2"
    qimg("create", "-q", "-f", "qcow2", tgt, str(SIZE))
    sock = f"{w}/nbd.sock"
    d = t.daemon(["--nbd-server", f"addr.type=unix,addr.path={sock}"])
    c = d.connect()
    add_qcow2(t, c, "src", src)
    add_qcow2(t, c, "tgt", tgt)
    t.ret(c.cmd("block-export-add", type="nbd", id="e0", node_name="src", name="e0", writable=True),
          "NBD export of src")
    mnt = f"{w}/nmnt"
    os.mkdir(mnt)
    nf = subprocess.Popen(["nbdfuse", mnt, f"nbd+unix:///e0?socket={sock}"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    path = f"{mnt}/nbd"
    try:
        if not t.check(wait_for(lambda: os.path.exists(path), 10), "nbdfuse mounted the export"):
            return
        fio = subprocess.Popen(fio_cmd(t, path, 10, direct=True), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=w)
        time.sleep(0.5)
        t.ret(c.cmd("blockdev-mirror", job_id="m1", device="src", target="tgt", sync="full"),
              "blockdev-mirror")
        wait_ev(c, "BLOCK_JOB_READY", timeout=30)
        t.check(fio.poll() is None, "READY while fio still writes")
        time.sleep(1.0)
        t.check(fio.poll() is None, "fio still writes at job-complete")
        t.ret(c.cmd("job-complete", id="m1"), "job-complete under load")
        done = wait_ev(c, "BLOCK_JOB_COMPLETED")["data"]
        t.check("error" not in done, "COMPLETED without error", done)
        exp = c.cmd("query-block-exports")["return"]
        t.check(exp and exp[0]["node-name"] == "tgt", "the NBD export now serves tgt", exp)
        fio_result(t, fio, path, "fio --verify=crc32c over NBD across the switch: no error")
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True, timeout=10)
        try:
            nf.wait(10)
        except subprocess.TimeoutExpired:
            nf.kill()
    t.stop(d)
    check_img(t, tgt, "qemu-img check target")
    check_img(t, src, "qemu-img check source")


# ---------------------------------------------------------------- cancel

def soft_cancel(t):
    t.section("soft cancel after READY")
    w = t.work
    src = make_source(t, "cs")
    tgt = f"{w}/ct.qcow2"
    qimg("create", "-q", "-f", "qcow2", tgt, str(SIZE))
    d = start_daemon(t)
    c = d.connect()
    add_qcow2(t, c, "src", src)
    add_qcow2(t, c, "tgt", tgt)
    mp = export_file(t, d, c, "src", "cmp")
    fio = subprocess.Popen(fio_cmd(t, mp, 4, direct=True), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=w)
    c.events.clear()
    t.ret(c.cmd("blockdev-mirror", job_id="m2", device="src", target="tgt", sync="full"), "blockdev-mirror")
    wait_ev(c, "BLOCK_JOB_READY", timeout=30)
    fio_result(t, fio, mp, "fio --verify during the mirror: no error")
    t.ret(c.cmd("block-job-cancel", device="m2"), "block-job-cancel (soft)")
    job_ended(c, "m2")
    evs = [e["event"] for e in c.events if e["event"].startswith("BLOCK_JOB_")]
    t.eq(evs, ["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"], "READY then COMPLETED (not CANCELLED)")
    t.eq(statuses(c, "m2"), ["created", "running", "ready", "waiting", "pending", "concluded", "null"],
         "status sequence")
    exp = c.cmd("query-block-exports")["return"]
    t.check(exp and exp[0]["node-name"] == "src", "no switch: the export serves src", exp)
    unexport(mp)
    t.stop(d)
    compare(t, src, tgt, "qemu-img compare: target == source at the cancel")


def force_cancel(t):
    t.section("force cancel, pause/resume")
    w = t.work
    src = make_source(t, "xs")
    tgt = f"{w}/xt.qcow2"
    qimg("create", "-q", "-f", "qcow2", tgt, str(SIZE))
    d = t.daemon([])
    c = d.connect()
    add_qcow2(t, c, "src", src)
    add_qcow2(t, c, "tgt", tgt)
    c.events.clear()
    t.ret(c.cmd("blockdev-mirror", job_id="m3", device="src", target="tgt", sync="full", speed=8 * M),
          "blockdev-mirror at 8 MiB/s")
    # The speed limit: progress over 2 s of data within 10 % of 8 MiB/s.
    time.sleep(0.3)
    t0, o0 = time.monotonic(), c.cmd("query-block-jobs")["return"][0]["offset"]
    time.sleep(2.0)
    t1, o1 = time.monotonic(), c.cmd("query-block-jobs")["return"][0]["offset"]
    rate = (o1 - o0) / (t1 - t0)
    t.check(abs(rate - 8 * M) <= 0.1 * 8 * M, f"speed 8 MiB/s: {rate / M:.2f} MiB/s measured", rate)
    t.ret(c.cmd("job-pause", id="m3"), "job-pause")
    wait_ev(c, "JOB_STATUS_CHANGE", lambda e: e["data"]["status"] == "paused")
    j = c.cmd("query-block-jobs")["return"][0]
    t.check(j["status"] == "paused" and j["paused"], "query-block-jobs: paused", j)
    off = j["offset"]
    time.sleep(0.5)
    j = c.cmd("query-block-jobs")["return"][0]
    t.eq(j["offset"], off, "no progress while paused")
    t.error(c.cmd("job-pause", id="m3"), "second pause", "Job is already paused")
    t.ret(c.cmd("job-resume", id="m3"), "job-resume")
    wait_ev(c, "JOB_STATUS_CHANGE", lambda e: e["data"]["status"] == "running" and
            statuses(c, "m3").count("running") >= 2)
    time.sleep(0.3)
    j = c.cmd("query-block-jobs")["return"][0]
    t.check(j["offset"] > off and not j["ready"], "progress after resume, not ready yet", j)
    t.ret(c.cmd("block-job-cancel", device="m3"), "block-job-cancel before READY (force)")
    wait_ev(c, "BLOCK_JOB_CANCELLED")
    job_ended(c, "m3")
    t.eq(statuses(c, "m3"), ["created", "running", "paused", "running", "aborting", "concluded", "null"],
         "status sequence")
    ns = nodes(c)
    t.check(not any(n["drv"] == "mirror_top" for n in ns.values()), "the filter is gone", sorted(ns))
    t.stop(d)
    check_img(t, src, "qemu-img check source")


# ---------------------------------------------------------------- sync=top

def sync_top(t):
    t.section("sync=top over a backing chain")
    w = t.work
    base = f"{w}/tb.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, str(SIZE))
    qio("-f", "qcow2", "-c", f"write -P 0x11 0 {32 * M}", base)
    top = f"{w}/tt.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qio("-f", "qcow2", "-c", f"write -P 0x22 {4 * M} {4 * M}", "-c", f"write -P 0x33 {40 * M} 1M", top)
    tgt = f"{w}/tm.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", tgt)
    d = t.daemon([])
    c = d.connect()
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="src", file={"driver": "file", "filename": top}),
          "add top (with its backing)")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="tgt", file={"driver": "file", "filename": tgt},
                backing=None), "add target (backing null)")
    c.events.clear()
    t.ret(c.cmd("blockdev-mirror", job_id="m4", device="src", target="tgt", sync="top"), "blockdev-mirror top")
    ready = wait_ev(c, "BLOCK_JOB_READY")["data"]
    t.eq(ready["len"], 5 * M, "only the top layer's 5 MiB are copied")
    t.ret(c.cmd("job-complete", id="m4"), "job-complete")
    job_ended(c, "m4")
    t.stop(d)
    r = qimg("map", "--output=json", "-f", "qcow2", tgt)
    alloc = sum(e["length"] for e in json.loads(r.stdout) if e["data"] and e["depth"] == 0)
    t.eq(alloc, 5 * M, "the target allocates only the top layer's data")
    compare(t, top, tgt, "qemu-img compare top / target (over the same backing)")


# ---------------------------------------------------------------- write-blocking

def write_blocking(t):
    t.section("copy-mode=write-blocking")
    w = t.work
    src = make_source(t, "ws")
    tgt = f"{w}/wt.qcow2"
    qimg("create", "-q", "-f", "qcow2", tgt, str(SIZE))
    tgt2 = f"{w}/wt2.qcow2"
    qimg("create", "-q", "-f", "qcow2", tgt2, str(SIZE))
    d = start_daemon(t)
    c = d.connect()
    add_qcow2(t, c, "src", src)
    add_qcow2(t, c, "tgt", tgt)
    add_qcow2(t, c, "tgt2", tgt2)
    mp = export_file(t, d, c, "src", "wmp")
    fio = subprocess.Popen(fio_cmd(t, mp, 5, direct=True), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=w)
    t.ret(c.cmd("blockdev-mirror", job_id="m5", device="src", target="tgt", sync="full",
                copy_mode="write-blocking"), "blockdev-mirror copy-mode=write-blocking")
    wait_ev(c, "BLOCK_JOB_READY", timeout=30)
    j = c.cmd("query-block-jobs")["return"][0]
    if t.ours():   # QEMU 8.2
        t.check(j.get("actively-synced") is True, "actively-synced after READY", j)
    fio_result(t, fio, mp, "fio --verify in write-blocking mode: no error")
    t.ret(c.cmd("block-job-cancel", device="m5"), "soft cancel")
    job_ended(c, "m5")
    # background -> write-blocking through block-job-change (QEMU 8.2)
    if t.is_qsd:
        unexport(mp)
        t.stop(d)
        return
    c.events.clear()
    t.ret(c.cmd("blockdev-mirror", job_id="m6", device="src", target="tgt2", sync="full"), "blockdev-mirror")
    wait_ev(c, "BLOCK_JOB_READY", timeout=30)
    j = c.cmd("query-block-jobs")["return"][0]
    t.eq(j.get("actively-synced"), False, "background: not actively synced")
    t.ret(c.cmd("block-job-change", id="m6", type="mirror", copy_mode="write-blocking"),
          "block-job-change copy-mode=write-blocking")
    t.error(c.cmd("block-job-change", id="m6", type="mirror", copy_mode="write-blocking"), "change again",
            "Expected current copy mode 'background', got 'write-blocking'")
    t.error(c.cmd("block-job-change", id="m6", type="mirror", copy_mode="background"), "change back",
            "Change to copy mode 'background' is not implemented")
    with open(mp, "r+b") as f:
        f.seek(2 * M)
        f.write(b"\x77" * (256 * 1024))
        f.flush()
        os.fsync(f.fileno())
    wait_for(lambda: c.cmd("query-block-jobs")["return"][0].get("actively-synced"), 5)
    j = c.cmd("query-block-jobs")["return"][0]
    t.eq(j.get("actively-synced"), True, "actively synced after the change")
    t.ret(c.cmd("job-complete", id="m6"), "job-complete")
    job_ended(c, "m6")
    unexport(mp)
    t.stop(d)
    qio("-f", "qcow2", "-c", f"write -P 0x77 {2 * M} 256k", tgt)
    compare(t, src, tgt, "write-blocking: target == source at the soft cancel (+ the later write)")
    compare(t, src, tgt2, "changed mode: target == source")


# ---------------------------------------------------------------- errors on the target

def target_errors(t):
    t.section("on-target-error with blkdebug's injected errors")
    w = t.work
    src = make_source(t, "es", fill=8 * M)
    for pol in ("report", "stop"):
        raw = f"{w}/et-{pol}.raw"
        qimg("create", "-q", "-f", "raw", raw, str(SIZE))
        d = t.daemon([])
        c = d.connect()
        add_qcow2(t, c, "src", src)
        t.ret(c.cmd("blockdev-add", driver="raw", node_name="tgt",
                    file={"driver": "blkdebug", "image": {"driver": "file", "filename": raw},
                          "inject-error": [{"event": "pwritev", "iotype": "write", "errno": 5, "once": True}]}),
              f"{pol}: target over blkdebug (one write fails)")
        c.events.clear()
        t.ret(c.cmd("blockdev-mirror", job_id="m7", device="src", target="tgt", sync="full",
                    on_target_error=pol), f"blockdev-mirror on-target-error={pol}")
        e = wait_ev(c, "BLOCK_JOB_ERROR")["data"]
        t.eq(e, {"device": "m7", "operation": "write", "action": pol}, f"{pol}: BLOCK_JOB_ERROR")
        if pol == "report":
            done = wait_ev(c, "BLOCK_JOB_COMPLETED")["data"]
            t.eq(done.get("error"), "Input/output error", "report: COMPLETED with error")
            job_ended(c, "m7")
            t.eq(statuses(c, "m7"), ["created", "running", "aborting", "concluded", "null"], "report: statuses")
        else:
            wait_ev(c, "JOB_STATUS_CHANGE", lambda x: x["data"]["status"] == "paused")
            j = c.cmd("query-block-jobs")["return"][0]
            t.check(j["status"] == "paused" and j["io-status"] == "failed", "stop: paused, io-status failed", j)
            t.ret(c.cmd("job-resume", id="m7"), "stop: job-resume")
            wait_ev(c, "BLOCK_JOB_READY")
            j = c.cmd("query-block-jobs")["return"][0]
            t.eq(j["io-status"], "ok", "stop: io-status ok after resume")
            t.ret(c.cmd("job-complete", id="m7"), "stop: job-complete")
            done = wait_ev(c, "BLOCK_JOB_COMPLETED")["data"]
            t.check("error" not in done, "stop: COMPLETED without error after the retry", done)
            job_ended(c, "m7")
            t.eq(statuses(c, "m7"), ["created", "running", "paused", "running", "ready", "waiting", "pending",
                                     "concluded", "null"], "stop: statuses")
        t.stop(d)
        if pol == "stop":
            r = qimg("compare", "-f", "qcow2", "-F", "raw", src, raw, check=False)
            t.check(r.returncode == 0, "stop: the target is complete after the retry", r.stdout + r.stderr)


def source_errors(t):
    t.section("on-source-error=stop with an injected read error")
    w = t.work
    src = make_source(t, "ss", fill=8 * M)
    raw = f"{w}/st.raw"
    qimg("create", "-q", "-f", "raw", raw, str(SIZE))
    d = t.daemon([])
    c = d.connect()
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="src",
                file={"driver": "blkdebug", "image": {"driver": "file", "filename": src},
                      "inject-error": [{"event": "read_aio", "iotype": "read", "errno": 5, "once": True}]}),
          "source over blkdebug (one data read fails)")
    t.ret(c.cmd("blockdev-add", driver="raw", node_name="tgt", file={"driver": "file", "filename": raw}),
          "raw target")
    c.events.clear()
    t.ret(c.cmd("blockdev-mirror", job_id="m9", device="src", target="tgt", sync="full", on_source_error="stop"),
          "blockdev-mirror on-source-error=stop")
    e = wait_ev(c, "BLOCK_JOB_ERROR")["data"]
    t.eq(e, {"device": "m9", "operation": "read", "action": "stop"}, "BLOCK_JOB_ERROR read/stop")
    wait_ev(c, "JOB_STATUS_CHANGE", lambda x: x["data"]["status"] == "paused")
    t.ret(c.cmd("job-resume", id="m9"), "job-resume")
    wait_ev(c, "BLOCK_JOB_READY")
    t.ret(c.cmd("job-complete", id="m9"), "job-complete")
    job_ended(c, "m9")
    t.eq(statuses(c, "m9"), ["created", "running", "paused", "running", "ready", "waiting", "pending",
                             "concluded", "null"], "statuses")
    t.stop(d)
    r = qimg("compare", "-f", "qcow2", "-F", "raw", src, raw, check=False)
    t.check(r.returncode == 0, "the target is complete after the retry", r.stdout + r.stderr)


# ---------------------------------------------------------------- kill -9

def kill9(t):
    t.section("kill -9 mid-mirror")
    w = t.work
    src = make_source(t, "ks")
    tgt = f"{w}/kt.qcow2"
    qimg("create", "-q", "-f", "qcow2", tgt, str(SIZE))
    d = start_daemon(t)
    c = d.connect()
    add_qcow2(t, c, "src", src)
    add_qcow2(t, c, "tgt", tgt)
    mp = export_file(t, d, c, "src", "kmp")
    with open(mp, "r+b") as f:
        f.seek(50 * M)
        f.write(b"\x99" * M)
        f.flush()
        os.fsync(f.fileno())
    t.ret(c.cmd("blockdev-mirror", job_id="m8", device="src", target="tgt", sync="full", speed=8 * M),
          "blockdev-mirror at 8 MiB/s")
    time.sleep(1.0)
    j = c.cmd("query-block-jobs")["return"]
    t.check(j and not j[0]["ready"], "mirror still running", j)
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.wait(10)
    subprocess.run(["fusermount3", "-u", "-z", os.path.dirname(mp) if mp.endswith("/nbd") else mp],
                   capture_output=True, timeout=10)
    check_img(t, src, "qemu-img check source after kill -9")
    r = qio("-f", "qcow2", "-c", f"read -P 0x5a 0 {24 * M}", "-c", f"read -P 0x99 {50 * M} {M}", src, check=False)
    t.check(r.returncode == 0 and "failed" not in r.stdout, "the source still holds its data", r.stdout[-300:])
    r = qimg("check", tgt, check=False)
    t.check(r.returncode in (0, 3), "qemu-img check target: no corruption (leaks allowed)", r.stdout[-300:])


# ---------------------------------------------------------------- active commit

def active_commit(t):
    t.section("active commit (block-commit of the active layer)")
    w = t.work
    base = f"{w}/ab.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, "32M")
    qio("-f", "qcow2", "-c", f"write -P 0x11 0 {16 * M}", base)
    mid = f"{w}/am.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid, "48M")
    qio("-f", "qcow2", "-c", f"write -P 0x22 {8 * M} {4 * M}", mid)
    top = f"{w}/at.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
    qio("-f", "qcow2", "-c", f"write -P 0x33 {40 * M} {2 * M}", top)
    d = start_daemon(t)
    c = d.connect()
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="top", file={"driver": "file", "filename": top}),
          "add the chain top -> mid -> base")
    mp = export_file(t, d, c, "top", "amp")
    fio = subprocess.Popen(fio_cmd(t, mp, 4, size=16 * M, direct=True,
                                   extra=[f"--offset={16 * M}"]),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=w)
    time.sleep(0.3)
    c.events.clear()
    r = c.cmd("block-commit", job_id="c0", device="top")
    if "error" in r and "not available" in r["error"]["desc"]:
        t.ok("block-commit is not in this build (h-commit not merged): active commit skipped")
        fio.kill()
        fio.wait()
        unexport(mp)
        t.stop(d)
        return
    t.ret(r, "block-commit of the active layer")
    ready = wait_ev(c, "BLOCK_JOB_READY", timeout=30)["data"]
    t.eq(ready["type"], "commit", "READY of type commit")
    fio_result(t, fio, mp, "fio --verify during the active commit: no error")
    t.ret(c.cmd("job-complete", id="c0"), "job-complete")
    job_ended(c, "c0")
    t.eq(statuses(c, "c0"), ["created", "running", "ready", "waiting", "pending", "concluded", "null"],
         "status sequence")
    exp = c.cmd("query-block-exports")["return"]
    t.check(exp and exp[0]["node-name"] != "top", "the export now serves base", exp)
    with open(mp, "r+b") as f:
        os.pread(f.fileno(), 4096, 0)
        f.seek(44 * M)
        f.write(b"\x44" * M)
        f.flush()
        os.fsync(f.fileno())
    unexport(mp)
    t.stop(d)
    check_img(t, base, "qemu-img check base")
    r = qimg("info", "--output=json", base)
    t.eq(json.loads(r.stdout)["virtual-size"], 48 * M, "base grew to the top's size")
    r = qio("-f", "qcow2", "-c", f"read -P 0x33 {40 * M} {2 * M}", "-c", f"read -P 0x22 {8 * M} {4 * M}",
            "-c", f"read -P 0x44 {44 * M} {M}", base, check=False)
    t.check(r.returncode == 0 and "failed" not in r.stdout, "base holds top's, mid's and the later data",
            r.stdout[-300:])

    t.section("active commit: soft cancel after READY")
    b2 = f"{w}/ab2.qcow2"
    qimg("create", "-q", "-f", "qcow2", b2, "32M")
    t2 = f"{w}/at2.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", b2, "-F", "qcow2", t2)
    qio("-f", "qcow2", "-c", f"write -P 0x55 {4 * M} {2 * M}", t2)
    d = t.daemon([])
    c = d.connect()
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="top2", file={"driver": "file", "filename": t2},
                backing={"driver": "qcow2", "node-name": "base2", "read-only": True,
                         "file": {"driver": "file", "filename": b2}}), "add top2 -> base2 (read-only)")
    c.events.clear()
    t.ret(c.cmd("block-commit", job_id="c1", device="top2"), "block-commit")
    wait_ev(c, "BLOCK_JOB_READY")
    t.eq(nodes(c)["base2"]["ro"], False, "base reopened read-write for the job")
    t.ret(c.cmd("block-job-cancel", device="c1"), "block-job-cancel (soft)")
    job_ended(c, "c1")
    evs = [e["event"] for e in c.events if e["event"].startswith("BLOCK_JOB_")]
    t.eq(evs, ["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"], "READY then COMPLETED")
    ns = nodes(c)
    t.eq(ns["base2"]["ro"], False, "base stays read-write (QEMU reopens it read-only only on failure)")
    t.check(not any(n["drv"] == "mirror_top" for n in ns.values()), "the filter is gone", sorted(ns))
    t.stop(d)
    r = qio("-f", "qcow2", "-c", f"read -P 0x55 {4 * M} {2 * M}", b2, check=False)
    t.check(r.returncode == 0 and "failed" not in r.stdout, "base holds the committed data", r.stdout[-300:])


SECTIONS = {
    "errors": errors, "fuse": fuse, "nbd": nbd, "soft-cancel": soft_cancel, "force-cancel": force_cancel,
    "sync-top": sync_top, "write-blocking": write_blocking, "target-errors": target_errors,
    "source-errors": source_errors, "kill9": kill9,
    "active-commit": active_commit,
}


def main():
    only = [s for s in os.environ.get("MIRROR_SECTIONS", "").split(",") if s]
    with Test("qmp-mirror", budget=170) as t:
        for name, fn in SECTIONS.items():
            if only and name not in only:
                continue
            t.part(fn, t)


if __name__ == "__main__":
    main()

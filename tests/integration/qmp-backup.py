# tests/integration/qmp-backup.py -- blockdev-backup and its
# copy-before-write filter (run by qmp-backup.sh; QMP_TARGET=qsd runs it
# against qemu-storage-daemon, where every check must pass too).
#
# The oracle for "the backup equals the source at the moment the backup
# started": the source image is made from a reference raw file (random
# data) and nothing writes to it before blockdev-backup returns; only then
# does fio (randwrite 4k, iodepth 64, --verify=crc32c) start writing
# through the export, and it runs until after the job completed, with the
# job's speed limited so that most clusters are copied by the job after
# fio had the chance to overwrite them (the filter must copy them first).
# Afterwards qemu-img compare must find the target identical to the
# reference file, and the source different from it (fio overwrote it).
#
# Sections:
#   full_fuse   sync=full while fio writes through the FUSE export
#   full_nbd    the same through the NBD export (fio's nbd engine, libnbd)
#   top         sync=top of a qcow2 over a backing file: the target (whose
#               backing is the same base) equals the former top, and holds
#               only what the top held
#   bitmaps     sync=incremental/bitmap with bitmap-mode on-success, never,
#               always: the bitmap's count after success, failure, cancel
#   none        sync=none: the target gets the old data of the overwritten
#               clusters, nothing else; cancel is its end (CANCELLED)
#   compress    compress=true (and the refusal for a raw target)
#   errors      on-target-error report / ignore / stop with blkdebug
#   txn         transaction: grouped completion (one fails, both fail),
#               a bitmap action refused in grouped mode, rollback
#   kill        kill -9 mid-backup: source intact, qemu-img check clean
#   quit_running quit and SIGTERM with a backup running: exit 0, images clean
#   speed       the measured rate of a speed-limited backup is within 10 %
#   filter      copy-before-write added by blockdev-add above an exported
#               node (fleecing without a job); on-cbw-error
#   args        argument errors, events, the filter in query-named-block-nodes
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, dd, nodes, run  # noqa: E402

K = 1024
M = 1 << 20
CL = 64 * K


def img(path, size, fmt="qcow2", *extra):
    run(["qemu-img", "create", "-q", "-f", fmt, *extra, path, str(size)], check=True)


def random_image(w, name, size):
    """name.raw (random data) and name.qcow2 made from it."""
    with open(f"{w}/{name}.raw", "wb") as f:
        f.write(os.urandom(size))
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", f"{w}/{name}.raw", f"{w}/{name}.qcow2"], check=True)


def add_qcow2(c, t, w, node, path, **extra):
    t.ret(c.cmd("blockdev-add", driver="file", node_name=f"{node}-f", filename=f"{w}/{path}"), f"add {node}-f")
    return t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=node, file=f"{node}-f", **extra), f"add {node}")


MOUNTS = [0]


def fuse_export(c, t, w, node, name="e0"):
    MOUNTS[0] += 1
    mp = f"{w}/{name}-{MOUNTS[0]}.mp"
    open(mp, "w").close()
    t.ret(c.cmd("block-export-add", type="fuse", id=name, node_name=node, mountpoint=mp, writable=True),
          f"FUSE export of {node}")
    return mp


def compare(a, b, fa=None, fb=None):
    argv = ["qemu-img", "compare", "-U"]
    if fa:
        argv += ["-f", fa]
    if fb:
        argv += ["-F", fb]
    p = run(argv + [a, b], timeout=60)
    return p.returncode, (p.stdout + p.stderr).strip()


def own_data(path, depth0_only=True):
    """The guest ranges holding data in the image itself, adjacent ones merged."""
    m = json.loads(run(["qemu-img", "map", "--output=json", path], check=True).stdout)
    out = []
    for e in m:
        if not e["data"] or (depth0_only and e["depth"] != 0):
            continue
        if out and out[-1][0] + out[-1][1] == e["start"]:
            out[-1] = (out[-1][0], out[-1][1] + e["length"])
        else:
            out.append((e["start"], e["length"]))
    return out


def check_img(t, path, desc):
    p = run(["qemu-img", "check", path])
    t.eq(p.returncode, 0, f"qemu-img check {desc}" + ("" if p.returncode == 0 else ": " + p.stdout[-300:]))


def job_events(c, job):
    """The JOB_STATUS_CHANGE statuses of JOB received so far (consumed)."""
    got = [e["data"]["status"] for e in c.events
           if e.get("event") == "JOB_STATUS_CHANGE" and e["data"].get("id") == job]
    c.events = [e for e in c.events
                if not (e.get("event") == "JOB_STATUS_CHANGE" and e["data"].get("id") == job)]
    return got


def wait_end(c, job, timeout=30):
    """The job's BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED event."""
    deadline = time.monotonic() + timeout
    while True:
        for i, e in enumerate(c.events):
            if e.get("event") in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and \
                    e["data"].get("device") == job:
                return c.events.pop(i)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no end event of job {job} within {timeout} s")
        c.events.append(c.recv(left))


def settle(c, job, timeout=10):
    """Waits until JOB has gone (auto-dismiss)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(j["id"] == job for j in c.cmd("query-jobs")["return"]):
            return True
        time.sleep(0.05)
    return False


def start_fio(t, w, argv_target, runtime, size):
    # QSD 7.2's FUSE export returns wrong data under concurrent O_DIRECT
    # requests (see qmp-live.py), so against QSD the FUSE job is buffered.
    extra = []
    if argv_target[0].startswith("--filename"):
        extra = ["--ioengine=libaio", "--direct=0" if t.is_qsd else "--direct=1"]
    return subprocess.Popen(
        ["fio", "--name=v", *argv_target, *extra, f"--size={size}", "--rw=randwrite", "--bs=4k",
         "--iodepth=64", "--verify=crc32c", "--verify_fatal=1", "--verify_backlog=1024",
         "--verify_state_save=0", "--time_based", f"--runtime={runtime}", "--output-format=json",
         f"--output={w}/fio.json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=w)


def finish_fio(t, w, fio, desc):
    try:
        out = fio.communicate(timeout=40)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        fio.kill()
        out = "fio did not finish"
    t.eq(fio.returncode, 0, f"{desc}: fio exits 0" + ("" if fio.returncode == 0 else " " + out[-400:]))
    try:
        with open(f"{w}/fio.json") as f:
            job = json.load(f)["jobs"][0]
        errs, written = job["error"], job["write"]["io_bytes"]
    except Exception as e:  # noqa: BLE001
        errs, written = f"no fio JSON: {e}", 0
    t.eq(errs, 0, f"{desc}: fio reports no error")
    t.check(written > M, f"{desc}: fio wrote data", written)


# ---------------------------------------------------------------- full, under fio

def full_under_fio(t, how):
    w = t.work
    size = 32 * M
    name = f"src-{how}"
    random_image(w, name, size)
    img(f"{w}/tgt-{how}.qcow2", size)
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", f"{name}.qcow2")
    add_qcow2(c, t, w, "t0", f"tgt-{how}.qcow2")
    if how == "fuse":
        mp = fuse_export(c, t, w, "q0")
        fio_target = [f"--filename={mp}"]
    else:
        sock = f"{w}/nbd.sock"
        t.ret(c.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}}), "nbd-server-start")
        t.ret(c.cmd("block-export-add", type="nbd", id="e0", node_name="q0", name="s", writable=True),
              "NBD export of q0")
        fio_target = ["--ioengine=nbd", f"--uri=nbd+unix:///s?socket={sock}"]
    # 32 MiB at 6 MiB/s: about 5 s, while fio runs 8 s.
    r = c.cmd("blockdev-backup", job_id="j0", device="q0", target="t0", sync="full", speed=6 * M,
              filter_node_name="cbw0")
    t.ret(r, f"{how}: blockdev-backup sync=full")
    fio = start_fio(t, w, fio_target, 8, size)
    n = nodes(c)
    t.eq(n.get("cbw0", {}).get("drv"), "copy-before-write", f"{how}: the filter shows in query-named-block-nodes")
    try:
        ev = wait_end(c, "j0", 40)
        t.check(ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"],
                f"{how}: the job completes", ev)
        t.eq(ev["data"]["offset"], ev["data"]["len"], f"{how}: offset = len at completion")
    except TimeoutError as e:
        t.bad(f"{how}: {e}")
    t.check(fio.poll() is None, f"{how}: fio still writing when the job completed")
    settle(c, "j0")
    t.check("cbw0" not in nodes(c), f"{how}: the filter is gone after the job")
    finish_fio(t, w, fio, how)
    t.stop(d)
    t.eq(compare(f"{w}/{name}.raw", f"{w}/tgt-{how}.qcow2", "raw", "qcow2"),
         (0, "Images are identical."), f"{how}: the target equals the source as it was at the start")
    rc, _ = compare(f"{w}/{name}.raw", f"{w}/{name}.qcow2", "raw", "qcow2")
    t.eq(rc, 1, f"{how}: the source itself was overwritten by fio")
    check_img(t, f"{w}/{name}.qcow2", f"{how}: source")
    check_img(t, f"{w}/tgt-{how}.qcow2", f"{how}: target")


def full_fuse(t):
    full_under_fio(t, "fuse")


def full_nbd(t):
    full_under_fio(t, "nbd")


# ---------------------------------------------------------------- sync=top

def top(t):
    w = t.work
    size = 16 * M
    random_image(w, "base", size)
    img(f"{w}/top.qcow2", size, "qcow2", "-b", f"{w}/base.qcow2", "-F", "qcow2")
    run(["qemu-io", "-c", f"write -P 0x5a {2 * M} {2 * M}", "-c", f"write -P 0x6b {10 * M} {M}",
         f"{w}/top.qcow2"], check=True)
    run(["qemu-img", "convert", "-O", "raw", f"{w}/top.qcow2", f"{w}/top-ref.raw"], check=True)
    img(f"{w}/tgt-top.qcow2", size, "qcow2", "-b", f"{w}/base.qcow2", "-F", "qcow2")
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "top.qcow2")
    add_qcow2(c, t, w, "t0", "tgt-top.qcow2")
    mp = fuse_export(c, t, w, "q0")
    t.ret(c.cmd("blockdev-backup", job_id="j0", device="q0", target="t0", sync="top", speed=512 * K),
          "top: blockdev-backup sync=top")
    # Overwrite a region the top holds (3 MiB) and one only the base holds
    # (12 MiB): the first is copied before the write, the second not at all.
    with open(f"{w}/junk", "wb") as f:
        f.write(b"\xee" * (256 * K))
    t.eq(dd(f"{w}/junk", mp, 3 * M).returncode, 0, "top: write through the export (top's data)")
    t.eq(dd(f"{w}/junk", mp, 12 * M).returncode, 0, "top: write through the export (base's data)")
    t.ret(c.cmd("block-job-set-speed", device="j0", speed=0), "top: speed unlimited")
    ev = wait_end(c, "j0")
    t.check(ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"], "top: the job completes", ev)
    settle(c, "j0")
    t.stop(d)
    t.eq(compare(f"{w}/top-ref.raw", f"{w}/tgt-top.qcow2", "raw", "qcow2"), (0, "Images are identical."),
         "top: the target over the base equals the former top")
    t.eq(own_data(f"{w}/tgt-top.qcow2"), [(2 * M, 2 * M), (10 * M, M)], "top: the target holds only what the top held")
    check_img(t, f"{w}/tgt-top.qcow2", "top: target")


# ---------------------------------------------------------------- bitmaps

def bitmap_info(c, node, name):
    # (QEMU lists a frozen bitmap's successor too, without a name.)
    for b in nodes(c).get(node, {}).get("dirty-bitmaps", []):
        if b.get("name") == name:
            return b
    return {}


def bitmap_count(c, node, name):
    return bitmap_info(c, node, name).get("count")


def bitmaps_section(t):
    w = t.work
    size = 16 * M
    random_image(w, "bsrc", size)
    for n in ("inc", "never", "fail", "always"):
        img(f"{w}/b-{n}.qcow2", size)
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "bsrc.qcow2")
    add_qcow2(c, t, w, "t-inc", "b-inc.qcow2")
    add_qcow2(c, t, w, "t-never", "b-never.qcow2")
    add_qcow2(c, t, w, "t-always", "b-always.qcow2")
    t.ret(c.cmd("blockdev-add", driver="file", node_name="t-fail-f", filename=f"{w}/b-fail.qcow2"), "add t-fail-f")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="t-fail",
                file={"driver": "blkdebug", "image": "t-fail-f",
                      "inject-error": [{"event": "write_aio", "errno": 5}]}), "add t-fail (blkdebug)")
    t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="b0", granularity=CL), "bitmap b0")
    t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="pb", granularity=CL, persistent=True),
          "persistent bitmap pb")
    img(f"{w}/b-pers.qcow2", size)
    add_qcow2(c, t, w, "t-pers", "b-pers.qcow2")
    mp = fuse_export(c, t, w, "q0")
    regions = [(1 * M, 128 * K), (5 * M, 64 * K), (9 * M, 192 * K)]
    with open(f"{w}/pat", "wb") as f:
        f.write(b"\x3c" * (256 * K))
    for off, ln in regions:
        dd(f"{w}/pat", mp, off, ln)
    t.eq(bitmap_count(c, "q0", "b0"), 384 * K, "bitmaps: b0 counts the writes")

    # incremental (= bitmap + on-success), success: the bitmap is emptied.
    t.ret(c.cmd("blockdev-backup", job_id="j1", device="q0", target="t-inc", sync="incremental", bitmap="b0"),
          "bitmaps: sync=incremental")
    ev = wait_end(c, "j1")
    t.check("error" not in ev["data"], "bitmaps: incremental completes", ev)
    t.eq(ev["data"]["len"], 384 * K, "bitmaps: incremental copies the bitmap's bytes")
    settle(c, "j1")
    t.eq(bitmap_count(c, "q0", "b0"), 0, "bitmaps: on-success + success: b0 is empty")

    dd(f"{w}/pat", mp, 3 * M, 64 * K)
    # never: the bitmap is kept as it was.
    t.ret(c.cmd("blockdev-backup", job_id="j2", device="q0", target="t-never", sync="bitmap", bitmap="b0",
                bitmap_mode="never"), "bitmaps: sync=bitmap never")
    b = bitmap_info(c, "q0", "b0")
    t.eq(b.get("busy"), True, "bitmaps: b0 is busy during the job")
    ev = wait_end(c, "j2")
    t.check("error" not in ev["data"], "bitmaps: never completes", ev)
    settle(c, "j2")
    t.eq(bitmap_count(c, "q0", "b0"), 64 * K, "bitmaps: never: b0 unchanged")
    t.eq(bitmap_info(c, "q0", "b0").get("busy"), False, "bitmaps: b0 no longer busy")

    # on-success + failure: the bits come back.
    t.ret(c.cmd("blockdev-backup", job_id="j3", device="q0", target="t-fail", sync="bitmap", bitmap="b0",
                bitmap_mode="on-success"), "bitmaps: sync=bitmap on-success to a failing target")
    ev = wait_end(c, "j3")
    t.eq(ev["data"].get("error"), "Input/output error", "bitmaps: the job fails")
    settle(c, "j3")
    t.eq(bitmap_count(c, "q0", "b0"), 64 * K, "bitmaps: on-success + failure: b0 as before")

    # always + cancel: what was not copied stays in the bitmap.
    with open(f"{w}/big", "wb") as f:
        f.write(b"\x7e" * (8 * M))
    dd(f"{w}/big", mp, 0, 8 * M)
    before = bitmap_count(c, "q0", "b0")
    t.ret(c.cmd("blockdev-backup", job_id="j4", device="q0", target="t-always", sync="bitmap", bitmap="b0",
                bitmap_mode="always", speed=2 * M), "bitmaps: sync=bitmap always (slow)")
    time.sleep(1.2)
    t.ret(c.cmd("job-cancel", id="j4"), "bitmaps: cancel the always job")
    ev = wait_end(c, "j4")
    t.eq(ev["event"], "BLOCK_JOB_CANCELLED", "bitmaps: always job cancelled")
    settle(c, "j4")
    after = bitmap_count(c, "q0", "b0")
    ln, off = ev["data"]["len"], ev["data"]["offset"]
    t.eq(ln, before, "bitmaps: always: len is the bitmap's count")
    t.check(0 < off < ln, "bitmaps: always: cancelled part-way", (off, ln))
    t.eq(after, ln - off, "bitmaps: always + cancel: b0 holds what was not copied")
    # A persistent bitmap (stored in the qcow2 source) under fio.
    pcount = bitmap_count(c, "q0", "pb")
    t.check(pcount and pcount >= 8 * M, "bitmaps: pb counts every write", pcount)
    t.ret(c.cmd("blockdev-backup", job_id="j5", device="q0", target="t-pers", sync="incremental", bitmap="pb",
                speed=8 * M), "bitmaps: incremental with the persistent bitmap")
    fio = start_fio(t, w, [f"--filename={mp}"], 2, 4 * M)
    ev = wait_end(c, "j5")
    t.check("error" not in ev["data"], "bitmaps: persistent incremental completes", ev)
    finish_fio(t, w, fio, "bitmaps: persistent")
    settle(c, "j5")
    pc = bitmap_count(c, "q0", "pb")
    t.check(pc is not None and 0 < pc <= 4 * M, "bitmaps: pb now holds only fio's writes", pc)
    t.stop(d)
    p = run(["qemu-img", "info", "--output=json", f"{w}/bsrc.qcow2"])
    bms = json.loads(p.stdout).get("format-specific", {}).get("data", {}).get("bitmaps", [])
    t.eq([(b["name"], b["flags"]) for b in bms], [("pb", ["auto"])], "bitmaps: pb stored in the image, consistent")
    check_img(t, f"{w}/bsrc.qcow2", "bitmaps: source")
    # The incremental target holds exactly the dirty regions.
    t.eq(own_data(f"{w}/b-inc.qcow2"), regions, "bitmaps: the incremental target holds the dirty clusters")
    with open(f"{w}/b-inc.raw", "wb"):
        pass
    run(["qemu-img", "convert", "-O", "raw", f"{w}/b-inc.qcow2", f"{w}/b-inc.raw"], check=True)
    with open(f"{w}/b-inc.raw", "rb") as f:
        data = f.read()
    t.check(all(data[o:o + n] == b"\x3c" * n for o, n in regions), "bitmaps: with the data written")


# ---------------------------------------------------------------- sync=none

def none(t):
    w = t.work
    size = 16 * M
    random_image(w, "nsrc", size)
    img(f"{w}/n-tgt.qcow2", size)
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "nsrc.qcow2")
    add_qcow2(c, t, w, "t0", "n-tgt.qcow2")
    mp = fuse_export(c, t, w, "q0")
    t.ret(c.cmd("blockdev-backup", job_id="j0", device="q0", target="t0", sync="none"), "none: sync=none")
    with open(f"{w}/pat", "wb") as f:
        f.write(b"\x99" * M)
    writes = [(2 * M, 64 * K), (7 * M + 4 * K, 8 * K), (15 * M, M), (2 * M + 16 * K, 4 * K)]
    for off, ln in writes:
        t.eq(dd(f"{w}/pat", mp, off, ln).returncode, 0, f"none: write {ln} at {off}")
    time.sleep(0.3)
    jobs = c.cmd("query-jobs")["return"]
    t.eq([j["status"] for j in jobs], ["running"], "none: the job runs until cancelled")
    t.ret(c.cmd("job-cancel", id="j0"), "none: job-cancel")
    ev = wait_end(c, "j0")
    t.eq(ev["event"], "BLOCK_JOB_CANCELLED", "none: cancel is its end (CANCELLED)")
    settle(c, "j0")
    t.stop(d)
    run(["qemu-img", "convert", "-O", "raw", f"{w}/n-tgt.qcow2", f"{w}/n-tgt.raw"], check=True)
    with open(f"{w}/nsrc.raw", "rb") as f:
        ref = f.read()
    with open(f"{w}/n-tgt.raw", "rb") as f:
        got = f.read()
    touched = set()
    for off, ln in writes:
        touched.update(range(off // CL, (off + ln - 1) // CL + 1))
    bad = [c_ for c_ in range(size // CL)
           if got[c_ * CL:(c_ + 1) * CL] != (ref[c_ * CL:(c_ + 1) * CL] if c_ in touched else bytes(CL))]
    t.eq(bad, [], "none: the target holds the old data of exactly the overwritten clusters")
    m = json.loads(run(["qemu-img", "map", "--output=json", f"{w}/n-tgt.qcow2"], check=True).stdout)
    alloc = sum(e["length"] for e in m if e["data"])
    t.eq(alloc, len(touched) * CL, "none: nothing else was copied")


# ---------------------------------------------------------------- compress

def compress(t):
    w = t.work
    size = 8 * M
    img(f"{w}/csrc.qcow2", size)
    run(["qemu-io", "-c", f"write -P 0x11 0 {4 * M}", "-c", f"write -P 0x22 {5 * M} {M}", f"{w}/csrc.qcow2"],
        check=True)
    img(f"{w}/c-tgt.qcow2", size)
    img(f"{w}/c-tgt.raw", size, "raw")
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "csrc.qcow2")
    add_qcow2(c, t, w, "t0", "c-tgt.qcow2")
    t.ret(c.cmd("blockdev-add", driver="file", node_name="r0", filename=f"{w}/c-tgt.raw"), "add r0")
    t.error(c.cmd("blockdev-backup", job_id="j0", device="q0", target="r0", sync="full", compress=True),
            "compress: refused for a raw file", "Compression is not supported for this drive ")
    t.ret(c.cmd("blockdev-backup", job_id="j0", device="q0", target="t0", sync="full", compress=True),
          "compress: blockdev-backup compress=true")
    ev = wait_end(c, "j0")
    t.check("error" not in ev["data"], "compress: completes", ev)
    settle(c, "j0")
    t.stop(d)
    t.eq(compare(f"{w}/csrc.qcow2", f"{w}/c-tgt.qcow2"), (0, "Images are identical."), "compress: identical")
    check_img(t, f"{w}/c-tgt.qcow2", "compress: target")
    ck = json.loads(run(["qemu-img", "check", "--output=json", f"{w}/c-tgt.qcow2"]).stdout)
    t.eq((ck.get("allocated-clusters"), ck.get("compressed-clusters")), (5 * M // CL, 5 * M // CL),
         "compress: every data cluster is stored compressed")


# ---------------------------------------------------------------- on-target-error

def errors(t):
    w = t.work
    size = 4 * M
    random_image(w, "esrc", size)
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "esrc.qcow2")
    for pol in ("report", "ignore", "stop"):
        img(f"{w}/e-{pol}.qcow2", size)
        t.ret(c.cmd("blockdev-add", driver="file", node_name=f"e-{pol}-f", filename=f"{w}/e-{pol}.qcow2"), "add")
        t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=f"t-{pol}",
                    file={"driver": "blkdebug", "image": f"e-{pol}-f",
                          "inject-error": [{"event": "write_aio", "errno": 5, "once": True}]}),
              f"errors: target t-{pol} over blkdebug")
        job = f"j-{pol}"
        t.ret(c.cmd("blockdev-backup", job_id=job, device="q0", target=f"t-{pol}", sync="full",
                    on_target_error=pol, x_perf={"max-workers": 1}), f"errors: on-target-error={pol}")
        e = c.wait_event("BLOCK_JOB_ERROR", 10)
        t.eq(e["data"], {"device": job, "operation": "write", "action": pol}, f"errors: {pol}: BLOCK_JOB_ERROR")
        if pol == "stop":
            t.check(wait_for_status(c, job, "paused"), f"errors: {pol}: the job is paused")
            bj = [j for j in c.cmd("query-block-jobs")["return"] if j["device"] == job]
            t.eq(bj and bj[0]["io-status"], "failed", f"errors: {pol}: io-status failed")
            t.ret(c.cmd("job-resume", id=job), f"errors: {pol}: job-resume")
        ev = wait_end(c, job)
        if pol == "report":
            t.eq((ev["event"], ev["data"].get("error")), ("BLOCK_JOB_COMPLETED", "Input/output error"),
                 f"errors: {pol}: the job fails")
        else:
            t.check(ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"],
                    f"errors: {pol}: the job completes", ev)
        settle(c, job)
    t.stop(d)
    for pol in ("ignore", "stop"):
        t.eq(compare(f"{w}/esrc.raw", f"{w}/e-{pol}.qcow2", "raw", "qcow2"), (0, "Images are identical."),
             f"errors: {pol}: the target is complete after the retry")


def wait_for_status(c, job, status, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for j in c.cmd("query-jobs")["return"]:
            if j["id"] == job and j["status"] == status:
                return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------- transactions

def txn(t):
    w = t.work
    size = 8 * M
    random_image(w, "x0", size)
    random_image(w, "x1", size)
    img(f"{w}/xt0.qcow2", size)
    img(f"{w}/xt1.qcow2", size)
    img(f"{w}/xt2.qcow2", size)
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "x0.qcow2")
    add_qcow2(c, t, w, "q1", "x1.qcow2")
    add_qcow2(c, t, w, "t0", "xt0.qcow2")
    add_qcow2(c, t, w, "t2", "xt2.qcow2")
    t.ret(c.cmd("blockdev-add", driver="file", node_name="t1-f", filename=f"{w}/xt1.qcow2"), "add t1-f")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="t1",
                file={"driver": "blkdebug", "image": "t1-f",
                      "inject-error": [{"event": "write_aio", "errno": 5}]}), "add t1 (blkdebug)")
    t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="b0"), "bitmap b0")

    r = c.cmd("transaction", actions=[
        {"type": "blockdev-backup", "data": {"job-id": "g0", "device": "q0", "target": "t0", "sync": "full"}},
        {"type": "block-dirty-bitmap-clear", "data": {"node": "q0", "name": "b0"}}],
        properties={"completion-mode": "grouped"})
    t.error(r, "txn: grouped refuses a bitmap action",
            "Action 'block-dirty-bitmap-clear' does not support Transaction property completion-mode = grouped")
    t.eq(c.cmd("query-jobs")["return"], [], "txn: no job after the refusal")

    r = c.cmd("transaction", actions=[
        {"type": "blockdev-backup", "data": {"job-id": "a0", "device": "q0", "target": "t0", "sync": "full"}},
        {"type": "abort", "data": {}}])
    t.error(r, "txn: an abort action rolls the backup back", "Transaction aborted using Abort action")
    t.eq(c.cmd("query-jobs")["return"], [], "txn: the rolled-back job is gone")
    st = job_events(c, "a0")
    t.eq(st, ["created", "aborting", "concluded", "null"], "txn: the rolled-back job's states")
    t.check(not any(n["drv"] == "copy-before-write" for n in nodes(c).values()), "txn: no filter left")

    r = c.cmd("transaction", actions=[
        {"type": "blockdev-backup", "data": {"job-id": "g0", "device": "q0", "target": "t0", "sync": "full",
                                             "speed": M}},
        {"type": "blockdev-backup", "data": {"job-id": "g1", "device": "q1", "target": "t1", "sync": "full"}}],
        properties={"completion-mode": "grouped"})
    t.ret(r, "txn: two backups, grouped")
    e0, e1 = wait_end(c, "g0"), wait_end(c, "g1")
    t.eq((e1["event"], e1["data"].get("error")), ("BLOCK_JOB_COMPLETED", "Input/output error"),
         "txn: the failing backup fails")
    t.eq(e0["event"], "BLOCK_JOB_CANCELLED", "txn: the other backup of the group is cancelled")
    settle(c, "g0")
    settle(c, "g1")

    r = c.cmd("transaction", actions=[
        {"type": "blockdev-backup", "data": {"job-id": "i0", "device": "q0", "target": "t2", "sync": "full"}},
        {"type": "blockdev-backup", "data": {"job-id": "i1", "device": "q1", "target": "t1", "sync": "full"}}])
    t.ret(r, "txn: two backups, individual")
    e0, e1 = wait_end(c, "i0"), wait_end(c, "i1")
    t.check(e0["event"] == "BLOCK_JOB_COMPLETED" and "error" not in e0["data"],
            "txn: individual: the good backup completes", e0)
    t.eq(e1["data"].get("error"), "Input/output error", "txn: individual: the failing one fails alone")
    settle(c, "i0")
    t.stop(d)
    t.eq(compare(f"{w}/x0.raw", f"{w}/xt2.qcow2", "raw", "qcow2"), (0, "Images are identical."),
         "txn: individual: the good target is complete")


# ---------------------------------------------------------------- kill -9

def kill(t):
    w = t.work
    size = 16 * M
    random_image(w, "ksrc", size)
    img(f"{w}/k-tgt.qcow2", size)
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "ksrc.qcow2")
    add_qcow2(c, t, w, "t0", "k-tgt.qcow2")
    mp = fuse_export(c, t, w, "q0")
    t.ret(c.cmd("blockdev-backup", job_id="j0", device="q0", target="t0", sync="full", speed=2 * M),
          "kill: slow backup")
    with open(f"{w}/pat", "wb") as f:
        f.write(b"\xa5" * M)
    t.eq(dd(f"{w}/pat", mp, 9 * M, M).returncode, 0, "kill: write through the export (synced)")
    time.sleep(0.5)
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.wait(10)
    subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    with open(f"{w}/ksrc.raw", "r+b") as f:
        f.seek(9 * M)
        f.write(b"\xa5" * M)
    t.eq(compare(f"{w}/ksrc.raw", f"{w}/ksrc.qcow2", "raw", "qcow2"), (0, "Images are identical."),
         "kill: the source holds its data and the write")
    check_img(t, f"{w}/ksrc.qcow2", "kill: source")
    p = run(["qemu-img", "check", f"{w}/k-tgt.qcow2"])
    t.check(p.returncode in (0, 3) and "ERROR" not in p.stdout,
            "kill: qemu-img check of the target: no corruption (leaks allowed)", p.stdout[-300:])


# ---------------------------------------------------------------- arguments, events

def args(t):
    w = t.work
    size = 4 * M
    random_image(w, "asrc", size)
    img(f"{w}/a-tgt.qcow2", size)
    img(f"{w}/a-small.qcow2", size // 2)
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "asrc.qcow2")
    add_qcow2(c, t, w, "t0", "a-tgt.qcow2")
    add_qcow2(c, t, w, "small", "a-small.qcow2")
    img(f"{w}/a-src2.qcow2", size)
    img(f"{w}/a-tgt2.qcow2", size)
    add_qcow2(c, t, w, "q1", "a-src2.qcow2")
    add_qcow2(c, t, w, "t1", "a-tgt2.qcow2")
    t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="b0"), "bitmap b0")

    def bad(desc, text, **kw):
        a = dict(job_id="j0", device="q0", target="t0", sync="full")
        a.update(kw)
        t.error(c.cmd("blockdev-backup", **a), f"args: {desc}", text)

    bad("unknown device", "Cannot find device='nope' nor node-name='nope'", device="nope")
    bad("unknown target", "Cannot find device='nope' nor node-name='nope'", target="nope")
    bad("same node", "Source and target cannot be the same", target="q0")
    bad("sizes", "Source and target image have different sizes", target="small")
    bad("bitmap sync without bitmap", "must provide a valid bitmap name for 'bitmap' sync mode", sync="bitmap")
    bad("incremental without bitmap", "must provide a valid bitmap name for 'incremental' sync mode",
        sync="incremental")
    bad("incremental with never", "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'",
        sync="incremental", bitmap="b0", bitmap_mode="never")
    bad("unknown bitmap", "Bitmap 'zz' could not be found", sync="bitmap", bitmap="zz", bitmap_mode="never")
    bad("bitmap without mode", "Bitmap sync mode must be given when providing a bitmap", bitmap="b0")
    bad("mode without bitmap", "Cannot specify bitmap sync mode without a bitmap", bitmap_mode="always")
    bad("none with bitmap", "sync mode 'none' does not produce meaningful bitmap outputs", sync="none",
        bitmap="b0", bitmap_mode="always")
    bad("never with full", "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'",
        bitmap="b0", bitmap_mode="never")
    bad("max-chunk", "Required max-chunk (4096) is less than backup cluster size (65536)",
        x_perf={"max-chunk": 4096})
    bad("bad job id", "Invalid job ID '1x'", job_id="1x")
    t.eq([n for n, i in nodes(c).items() if i["drv"] == "copy-before-write"], [], "args: no filter left behind")

    # The events of a plain backup.
    t.ret(c.cmd("blockdev-backup", job_id="j0", device="q0", target="t0", sync="full", speed=2 * M,
                filter_node_name="cbw0"), "args: a backup")
    t.error(c.cmd("blockdev-backup", job_id="j0", device="q1", target="t1", sync="full"),
            "args: job id in use", "Job ID 'j0' already in use")
    t.error(c.cmd("blockdev-backup", job_id="j1", device="q1", target="t0", sync="full"),
            "args: the job's target is busy", "Node 't0' is busy: block device is in use by block job: backup")
    bj = c.cmd("query-block-jobs")["return"]
    t.eq([(j["type"], j["device"], j["len"], j["speed"]) for j in bj], [("backup", "j0", size, 2 * M)],
         "args: query-block-jobs")
    t.eq(nodes(c).get("cbw0", {}).get("image", {}).get("format"), "copy-before-write",
         "args: the filter's format is copy-before-write")
    t.ret(c.cmd("block-job-set-speed", device="j0", speed=0), "args: set-speed 0")
    ev = wait_end(c, "j0")
    t.eq((ev["event"], ev["data"]["type"], ev["data"]["len"], ev["data"]["offset"]),
         ("BLOCK_JOB_COMPLETED", "backup", size, size), "args: BLOCK_JOB_COMPLETED")
    settle(c, "j0")
    # (QEMU pauses jobs while a command drains every node, as its
    # blockdev-backup does: pairs after the first are not part of the job.)
    seq = job_events(c, "j0")
    while len(seq) > 6 and seq[4:6] == ["paused", "running"]:
        del seq[4:6]
    t.eq(seq, ["created", "running", "paused", "running", "waiting", "pending", "concluded", "null"],
         "args: JOB_STATUS_CHANGE sequence")
    # Two backups of one node at once (QEMU stacks a second filter).
    t.ret(c.cmd("blockdev-backup", job_id="s0", device="q0", target="t0", sync="full", speed=2 * M),
          "args: first backup of q0")
    t.ret(c.cmd("blockdev-backup", job_id="s1", device="q0", target="t1", sync="full"),
          "args: second backup of q0 meanwhile")
    e1 = wait_end(c, "s1")
    t.ret(c.cmd("block-job-set-speed", device="s0", speed=0), "args: s0 unlimited")
    e0 = wait_end(c, "s0")
    t.check("error" not in e0["data"] and "error" not in e1["data"], "args: both complete", (e0, e1))
    settle(c, "s0")
    settle(c, "s1")
    t.eq([n for n, i in nodes(c).items() if i["drv"] == "copy-before-write"], [], "args: both filters gone")
    t.stop(d)
    t.eq(compare(f"{w}/asrc.raw", f"{w}/a-tgt.qcow2", "raw", "qcow2"), (0, "Images are identical."),
         "args: the target is the source")
    t.eq(compare(f"{w}/asrc.raw", f"{w}/a-tgt2.qcow2", "raw", "qcow2"), (0, "Images are identical."),
         "args: the second target too")


def quit_running(t):
    """quit and SIGTERM with a backup running: cancelled cleanly."""
    w = t.work
    size = 8 * M
    random_image(w, "usrc", size)
    for how in ("quit", "sigterm"):
        img(f"{w}/u-{how}.qcow2", size)
        d = t.daemon([])
        c = d.connect()
        add_qcow2(c, t, w, "q0", "usrc.qcow2")
        add_qcow2(c, t, w, "t0", f"u-{how}.qcow2")
        mp = fuse_export(c, t, w, "q0")
        t.ret(c.cmd("blockdev-backup", job_id="j0", device="q0", target="t0", sync="full", speed=M),
              f"{how}: slow backup")
        t.eq(dd(f"{w}/usrc.raw", mp, 0, M).returncode, 0, f"{how}: a write during the backup")
        if how == "quit":
            t.stop(d, "quit: the daemon exits 0 with the job running")
        else:
            d.proc.send_signal(signal.SIGTERM)
            t.eq(d.wait(20), 0, "sigterm: the daemon exits 0 with the job running")
        check_img(t, f"{w}/usrc.qcow2", f"{how}: source")
        check_img(t, f"{w}/u-{how}.qcow2", f"{how}: target")
        t.eq(compare(f"{w}/usrc.raw", f"{w}/usrc.qcow2", "raw", "qcow2"), (0, "Images are identical."),
             f"{how}: the source is intact")


# ---------------------------------------------------------------- speed

def speed(t):
    w = t.work
    size = 24 * M
    random_image(w, "ssrc", size)
    img(f"{w}/s-tgt.qcow2", size)
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "ssrc.qcow2")
    add_qcow2(c, t, w, "t0", "s-tgt.qcow2")
    limit = 8 * M
    t0 = time.monotonic()
    t.ret(c.cmd("blockdev-backup", job_id="j0", device="q0", target="t0", sync="full", speed=limit),
          "speed: backup at 8 MiB/s")
    ev = wait_end(c, "j0")
    dt = time.monotonic() - t0
    rate = ev["data"]["len"] / dt
    t.check(abs(rate - limit) <= limit * 0.10, "speed: measured rate within 10 % of the limit",
            f"{rate / M:.2f} MiB/s in {dt:.2f} s")
    settle(c, "j0")
    t.stop(d)
    t.eq(compare(f"{w}/ssrc.raw", f"{w}/s-tgt.qcow2", "raw", "qcow2"), (0, "Images are identical."),
         "speed: the target is the source")


# ---------------------------------------------------------------- the filter alone

def filter_alone(t):
    w = t.work
    size = 4 * M
    random_image(w, "fsrc", size)
    for n in ("f-tgt", "f-bad", "f-bad2"):
        img(f"{w}/{n}.qcow2", size)
    d = t.daemon([])
    c = d.connect()
    add_qcow2(c, t, w, "q0", "fsrc.qcow2")
    add_qcow2(c, t, w, "t0", "f-tgt.qcow2")
    t.ret(c.cmd("blockdev-add", driver="copy-before-write", node_name="cbw", file="q0", target="t0"),
          "filter: blockdev-add copy-before-write")
    mp = fuse_export(c, t, w, "cbw")
    with open(f"{w}/pat", "wb") as f:
        f.write(b"\x42" * (128 * K))
    t.eq(dd(f"{w}/pat", mp, M + 4 * K, 100 * K).returncode, 0, "filter: a write through the filter")
    t.eq(dd(f"{w}/pat", mp, M + 8 * K, 4 * K).returncode, 0, "filter: a second write to the same cluster")
    for pol, node, ok in (("break-guest-write", "bad", False), ("break-snapshot", "bad2", True)):
        t.ret(c.cmd("blockdev-add", driver="file", node_name=f"{node}-f", filename=f"{w}/f-{node}.qcow2"), "add")
        t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=node,
                    file={"driver": "blkdebug", "image": f"{node}-f",
                          "inject-error": [{"event": "write_aio", "errno": 5}]}), f"filter: failing target {node}")
    # A second filter over a copy of the source, per policy.
    for pol, node, ok in (("break-guest-write", "bad", False), ("break-snapshot", "bad2", True)):
        run(["qemu-img", "convert", "-O", "qcow2", f"{w}/fsrc.raw", f"{w}/fsrc-{node}.qcow2"], check=True)
        add_qcow2(c, t, w, f"s-{node}", f"fsrc-{node}.qcow2")
        t.ret(c.cmd("blockdev-add", driver="copy-before-write", node_name=f"cbw-{node}", file=f"s-{node}",
                    target=node, on_cbw_error=pol), f"filter: on-cbw-error={pol}")
        mpx = fuse_export(c, t, w, f"cbw-{node}", name=f"e-{node}")
        # The answer to the write itself (O_DIRECT); closing may still
        # report the failing target's flush.
        got = direct_write(mpx, 0, b"\x42" * (4 * K))
        t.eq(got == "", ok, f"filter: {pol}: the guest write " + ("succeeds" if ok else "fails") + f" {got}")
    t.stop(d)
    run(["qemu-img", "convert", "-O", "raw", f"{w}/f-tgt.qcow2", f"{w}/f-tgt.raw"], check=True)
    with open(f"{w}/fsrc.raw", "rb") as f:
        ref = f.read()
    with open(f"{w}/f-tgt.raw", "rb") as f:
        got = f.read()
    t.check(got[M:M + 2 * CL] == ref[M:M + 2 * CL], "filter: the target holds the old data of the clusters written")
    t.check(got[:M] == bytes(M) and got[M + 2 * CL:] == bytes(size - M - 2 * CL), "filter: and nothing else")
    t.eq(compare(f"{w}/fsrc.raw", f"{w}/fsrc-bad.qcow2", "raw", "qcow2"), (0, "Images are identical."),
         "filter: break-guest-write: the source is unchanged")
    rc, _ = compare(f"{w}/fsrc.raw", f"{w}/fsrc-bad2.qcow2", "raw", "qcow2")
    t.eq(rc, 1, "filter: break-snapshot: the write reached the source")


def direct_write(path, off, data):
    """pwrite() with O_DIRECT in a child process: "" or the error."""
    code = ("import mmap, os, sys\n"
            "b = mmap.mmap(-1, len(sys.argv[3]) // 2); b.write(bytes.fromhex(sys.argv[3]))\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)\n"
            "try:\n    os.pwrite(fd, b, int(sys.argv[2]))\nexcept OSError as e:\n    print(e.strerror); sys.exit(0)\n"
            "try:\n    os.close(fd)\nexcept OSError:\n    pass\n")
    p = subprocess.run([sys.executable, "-c", code, path, str(off), data.hex()], capture_output=True, text=True,
                       timeout=30)
    return (p.stdout + p.stderr).strip()


def main():
    with Test("qmp-backup", budget=110) as t:
        only = os.environ.get("BACKUP_ONLY", "")
        for fn in (args, full_fuse, full_nbd, top, bitmaps_section, none, compress, errors, txn, kill,
                   quit_running, speed, filter_alone):
            if only and fn.__name__ not in only.split(","):
                continue
            t.section(fn.__name__)
            t.part(fn, t)
            for dmn in t.daemons:
                if dmn.proc.poll() is None:
                    dmn.proc.kill()
                    dmn.wait(5)
            t.daemons = []


if __name__ == "__main__":
    main()

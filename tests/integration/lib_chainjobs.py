# tests/integration/lib_chainjobs.py -- helpers of qmp-commit.py and
# qmp-stream.py (imported, not run): a three-image qcow2 chain with known
# data, its nodes added over QMP, fio through a FUSE export, job waits and
# the qemu-img judgements.
import json
import os
import subprocess
import time

from qmp import run, wait_for

M = 1 << 20
SIZE = 32 * M
# fio writes only below FIO_SIZE; the chain's data above it is compared
# byte for byte with the chain before the job.
FIO_SIZE = 8 * M


class Chain:
    """base (0x11 in [0, 24M)) <- mid (0x22 in [4M, 20M)) <- top (0x33 in
    [10M, 12M) and [2M, 3M)), qcow2, absolute backing names. ref: the raw
    guest data of the whole chain, midref: of mid's chain (mid over base)."""

    def __init__(self, w, name, mid_full=False, size=SIZE, top_data=True):
        self.w, self.name, self.size = w, name, size
        p = f"{w}/{name}"
        self.base, self.mid, self.top = f"{p}-base.qcow2", f"{p}-mid.qcow2", f"{p}-top.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", self.base, str(size)], check=True)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.base, "-F", "qcow2", self.mid], check=True)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.mid, "-F", "qcow2", self.top], check=True)
        run(["qemu-io", "-c", "write -P 0x11 0 24M", self.base], check=True)
        if mid_full:
            run(["qemu-io", "-c", f"write -P 0x22 0 {size}", self.mid], check=True)
        else:
            run(["qemu-io", "-c", "write -P 0x22 4M 16M", self.mid], check=True)
        if top_data:
            run(["qemu-io", "-c", "write -P 0x33 10M 2M", "-c", "write -P 0x33 2M 1M", self.top], check=True)
        self.ref, self.midref = f"{p}-ref.raw", f"{p}-midref.raw"
        run(["qemu-img", "convert", "-O", "raw", self.top, self.ref], check=True)
        run(["qemu-img", "convert", "-O", "raw", self.mid, self.midref], check=True)

    def add(self, t, c, base_file=None, ro=True):
        """Adds the nodes NAME-base, NAME-mid, NAME-top (base and mid
        read-only); base_file: the base's file node definition."""
        n = self.name
        bf = base_file or {"driver": "file", "filename": self.base}
        t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=f"{n}-base", read_only=ro, file=bf), f"add {n}-base")
        t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=f"{n}-mid", read_only=ro, backing=f"{n}-base",
                    file={"driver": "file", "filename": self.mid}), f"add {n}-mid")
        t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=f"{n}-top", backing=f"{n}-mid",
                    file={"driver": "file", "filename": self.top}), f"add {n}-top")

    def check_images(self, t, what, leaks_ok=False):
        for img in (self.base, self.mid, self.top):
            p = run(["qemu-img", "check", "--output=json", img])
            try:
                r = json.loads(p.stdout)
            except ValueError:
                r = {}
            bad = r.get("corruptions", 0) + r.get("check-errors", 0) if r else 1
            if not leaks_ok:
                bad += r.get("leaks", 0)
            t.check(p.returncode in ((0, 3) if leaks_ok else (0,)) and bad == 0,
                    f"{what}: qemu-img check {os.path.basename(img)} clean", p.stdout + p.stderr)

    def backing(self, img):
        p = run(["qemu-img", "info", "--output=json", img])
        return json.loads(p.stdout).get("backing-filename") if p.returncode == 0 else "?"


def same_above(t, image, ref, start, what):
    """The guest data of IMAGE's chain equals REF from START on."""
    out = f"{image}.cmp.raw"
    run(["qemu-img", "convert", "-O", "raw", image, out], check=True)
    with open(out, "rb") as a, open(ref, "rb") as b:
        a.seek(start)
        b.seek(start)
        ok = a.read() == b.read()
    os.unlink(out)
    t.check(ok, what)


def compare(t, a, b, what):
    p = run(["qemu-img", "compare", a, b])
    t.check(p.returncode == 0, what, p.stdout + p.stderr)


def start_fio(t, path, runtime):
    """fio random writes with crc32c verification, depth 64, over the first
    FIO_SIZE bytes of path, for runtime seconds."""
    direct = "--direct=0" if t.is_qsd else "--direct=1"
    return subprocess.Popen(
        ["fio", "--name=v", f"--filename={path}", f"--size={FIO_SIZE}", "--rw=randwrite", "--bs=4k",
         "--ioengine=libaio", direct, "--iodepth=64", "--verify=crc32c", "--verify_fatal=1",
         "--verify_backlog=1024", "--verify_state_save=0", "--time_based", f"--runtime={runtime}",
         "--output-format=json", f"--output={path}.fio.json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish_fio(t, fio, path, what):
    try:
        out = fio.communicate(timeout=60)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        fio.kill()
        out = "fio did not finish"
    t.eq(fio.returncode, 0, f"{what}: fio exits 0" + ("" if fio.returncode == 0 else " " + out[-400:]))
    try:
        with open(f"{path}.fio.json") as f:
            job = json.load(f)["jobs"][0]
        errs, written = job.get("error", 1), job.get("write", {}).get("io_bytes", 0)
    except (OSError, ValueError, KeyError, IndexError) as e:
        errs, written = f"no fio JSON: {e}", 0
    t.eq(errs, 0, f"{what}: fio reports no error")
    t.check(written > 0, f"{what}: fio wrote data", written)


def job(c, jid):
    for j in c.cmd("query-jobs")["return"]:
        if j["id"] == jid:
            return j
    return None


def wait_event(c, name, jid, timeout=30.0):
    return c.wait_event(name, timeout, lambda e: e["data"].get("device", e["data"].get("id")) == jid)


def wait_status(c, jid, status, timeout=10.0):
    def seen():
        return any(e["event"] == "JOB_STATUS_CHANGE" and e["data"] == {"id": jid, "status": status}
                   for e in c.events)
    try:
        c.wait_event("JOB_STATUS_CHANGE", timeout,
                     lambda e: e["data"] == {"id": jid, "status": status}) if not seen() else None
    except Exception:  # noqa: BLE001
        return False
    return True


def statuses(c, jid):
    return [e["data"]["status"] for e in c.events
            if e.get("event") == "JOB_STATUS_CHANGE" and e["data"]["id"] == jid]


def wait_progress(c, jid, at_least, timeout=10.0):
    return wait_for(lambda: (job(c, jid) or {}).get("current-progress", 0) >= at_least, timeout)


def measure_rate(c, jid, window):
    """Bytes per second of jid's progress over window seconds."""
    j0, t0 = job(c, jid), time.monotonic()
    time.sleep(window)
    j1, t1 = job(c, jid), time.monotonic()
    if not j0 or not j1:
        return -1
    return (j1["current-progress"] - j0["current-progress"]) / (t1 - t0)


def node_info(c):
    return {n["node-name"]: n for n in c.cmd("query-named-block-nodes", flat=True)["return"]}


def backing_node(c, name):
    """The backing file query-named-block-nodes shows for name."""
    return node_info(c).get(name, {}).get("backing_file")

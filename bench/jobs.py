#!/usr/bin/env python3
# bench/jobs.py -- block jobs, blockgraph daemon against qemu-storage-daemon,
# interleaved in one run: the time each job takes to copy SIZE bytes of data
# between qcow2 images on BENCH_DIR's file system (no export, no guest I/O):
#   mirror  blockdev-mirror sync=full into an empty qcow2, until READY
#   stream  block-stream of a chain whose base holds the data, to the end
#   commit  block-commit of a full middle layer into an empty base (intermediate)
#   backup  blockdev-backup sync=full into an empty qcow2, to the end
# Prints the median MiB/s of each over RUNS rounds and the ratio ours/QSD.
# Usage: bench/jobs.py BLOCKGRAPH [SIZE_MIB] (env RUNS, BENCH_DIR); make bench-jobs.
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from qmp import connect_unix  # noqa: E402

BG = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "build/blockgraph"
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 512
RUNS = int(os.environ.get("RUNS", "2"))
M = 1 << 20


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)


def qcow2(path, backing=None):
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        args += ["-b", backing, "-F", "qcow2"]
    sh(*args, path, f"{SIZE}M")


def filled(path, w):
    raw = f"{w}/data.raw"
    if not os.path.exists(raw):
        with open(raw, "wb") as f:
            for _ in range(SIZE):
                f.write(os.urandom(M))
    sh("qemu-img", "convert", "-O", "qcow2", raw, path)


def daemon(kind, w):
    sock = f"{w}/qmp-{kind}.sock"
    argv = ([BG, "daemon"] if kind == "ours" else ["qemu-storage-daemon"]) + [
        "--chardev", f"socket,id=m,path={sock},server=on,wait=off", "--monitor", "chardev=m"]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return p, connect_unix(sock)


def add(c, name, path, **extra):
    r = c.cmd("blockdev-add", driver="qcow2", node_name=name, file={"driver": "file", "filename": path}, **extra)
    assert "return" in r, r


def one(kind, job, w):
    for f in os.listdir(w):
        if f.endswith(".qcow2"):
            os.unlink(os.path.join(w, f))
    if job in ("mirror", "backup"):
        filled(f"{w}/src.qcow2", w)
        qcow2(f"{w}/tgt.qcow2")
    elif job == "stream":
        filled(f"{w}/base.qcow2", w)
        qcow2(f"{w}/top.qcow2", f"{w}/base.qcow2")
    else:
        qcow2(f"{w}/base.qcow2")
        filled(f"{w}/mid.qcow2", w)
        sh("qemu-img", "rebase", "-u", "-b", f"{w}/base.qcow2", "-F", "qcow2", f"{w}/mid.qcow2")
        qcow2(f"{w}/top.qcow2", f"{w}/mid.qcow2")
    sh("sync")
    p, c = daemon(kind, w)
    try:
        if job in ("mirror", "backup"):
            add(c, "src", f"{w}/src.qcow2")
            add(c, "tgt", f"{w}/tgt.qcow2")
            cmd = ("blockdev-mirror" if job == "mirror" else "blockdev-backup")
            t0 = time.monotonic()
            r = c.cmd(cmd, job_id="j", device="src", target="tgt", sync="full")
            end = "BLOCK_JOB_READY" if job == "mirror" else "BLOCK_JOB_COMPLETED"
        elif job == "stream":
            add(c, "top", f"{w}/top.qcow2")
            t0 = time.monotonic()
            r = c.cmd("block-stream", job_id="j", device="top")
            end = "BLOCK_JOB_COMPLETED"
        else:
            add(c, "top", f"{w}/top.qcow2")
            nodes = c.cmd("query-named-block-nodes", flat=True)["return"]
            mid = [n["node-name"] for n in nodes if n["image"]["filename"].endswith("/mid.qcow2") and
                   n["drv"] == "qcow2"][0]
            base = [n["node-name"] for n in nodes if n["image"]["filename"].endswith("/base.qcow2") and
                    n["drv"] == "qcow2"][0]
            t0 = time.monotonic()
            r = c.cmd("block-commit", job_id="j", device="top", top_node=mid, base_node=base)
            end = "BLOCK_JOB_COMPLETED"
        assert "return" in r, r
        e = c.wait_event(end, timeout=600)
        dt = time.monotonic() - t0
        assert "error" not in e["data"], e
        if job == "mirror":
            c.cmd("job-cancel", id="j")
        return SIZE / dt
    finally:
        try:
            c.execute("quit", timeout=30)
        except Exception:  # noqa: BLE001
            pass
        p.wait(60)


def main():
    w = tempfile.mkdtemp(prefix="bg-bench-jobs.", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    try:
        res = {}
        for job in ("mirror", "stream", "commit", "backup"):
            for _ in range(RUNS):
                for kind in ("ours", "qsd"):
                    res.setdefault((job, kind), []).append(one(kind, job, w))
        print(f"block jobs, {SIZE} MiB of random data, qcow2 on {w}, medians of {RUNS}")
        print(f"{'job':8} {'blockgraph MiB/s':>17} {'QSD MiB/s':>10} {'ratio':>6}")
        for job in ("mirror", "stream", "commit", "backup"):
            a = statistics.median(res[(job, "ours")])
            b = statistics.median(res[(job, "qsd")])
            print(f"{job:8} {a:17.0f} {b:10.0f} {a / b:6.2f}")
    finally:
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()

# tests/integration/qmp-jobs-stop.py -- the daemon stopped (quit, SIGTERM)
# while several jobs run at once (run by qmp-jobs-stop.sh; QMP_TARGET=qsd
# runs it against qemu-storage-daemon):
#   an intermediate block-commit (mid into base, under top) and a
#   block-stream (base into top) of two chains, both slowed down by a speed
#   limit, and (ours only: qemu-storage-daemon 7.2 aborts on quit while a
#   create job runs) a blockdev-create of a fully preallocated qcow2 onto a
#   file node; once each is running and has made progress, quit (or
#   SIGTERM): the daemon exits 0, every image passes qemu-img check, and
#   each chain still reads exactly as before (qemu-img compare against a raw
#   copy made beforehand): a cancelled commit or stream leaves the guest
#   view untouched; the created image is complete.
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, run, wait_for  # noqa: E402

M = 1 << 20
SIZE = 32 * M


def qemu_io(path, *cmds):
    argv = ["qemu-io"]
    for c in cmds:
        argv += ["-c", c]
    run(argv + [path], check=True)


def make_chains(w):
    """Chain a: a-base <- a-mid <- a-top; chain b: b-base <- b-top; and
    their raw copies (the guest view) a-ref.raw, b-ref.raw."""
    for name, layers in (("a", ("base", "mid", "top")), ("b", ("base", "top"))):
        prev = None
        for i, layer in enumerate(layers):
            path = f"{w}/{name}-{layer}.qcow2"
            argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
            if prev:
                argv += ["-b", prev, "-F", "qcow2"]
            run(argv + [path, str(SIZE)], check=True)
            if i == 0:
                qemu_io(path, f"write -P 0x5a 0 {SIZE}")
            else:
                qemu_io(path, f"write -P 0x{0x30 + i:x} {i * 2}M 3M", f"write -P 0x{0x40 + i:x} {20 + i}M 512k")
            prev = path
        run(["qemu-img", "convert", "-O", "raw", prev, f"{w}/{name}-ref.raw"], check=True)


def add_chain(t, c, w, name, layers):
    prev = None
    for layer in layers:
        node = f"{name}-{layer}"
        args = {"driver": "qcow2", "node-name": node,
                "file": {"driver": "file", "filename": f"{w}/{node}.qcow2"}}
        args["backing"] = prev  # None: no backing for the base
        r = c.execute("blockdev-add", args)
        t.ret(r, f"blockdev-add {node}")
        prev = node


def job_of(c, jid):
    for j in c.cmd("query-jobs")["return"]:
        if j["id"] == jid:
            return j
    return None


def stop_with_jobs(t, how):
    t.section(f"{how} with a commit, a stream{' and a create' if t.ours() else ''} running")
    w = os.path.join(t.work, how)
    os.makedirs(w)
    make_chains(w)
    d = t.daemon([], name=how)
    c = d.qmp()
    add_chain(t, c, w, "a", ("base", "mid", "top"))
    add_chain(t, c, w, "b", ("base", "top"))
    t.ret(c.cmd("block-commit", job_id="commit", device="a-top", top_node="a-mid", base_node="a-base",
                speed=2 * M), "block-commit a-mid into a-base at 2 MiB/s")
    t.ret(c.cmd("block-stream", job_id="stream", device="b-top", speed=2 * M), "block-stream into b-top at 2 MiB/s")
    if t.ours():
        r = c.cmd("blockdev-create", job_id="create",
                  options={"driver": "file", "filename": f"{w}/new.qcow2", "size": 0})
        t.ret(r, "blockdev-create file new.qcow2")
        wait_for(lambda: (job_of(c, "create") or {}).get("status") == "concluded", 10)
        t.ret(c.cmd("job-dismiss", id="create"), "job-dismiss")
        t.ret(c.cmd("blockdev-add", driver="file", filename=f"{w}/new.qcow2", node_name="new"), "blockdev-add new")

    def progressed():
        js = [job_of(c, j) for j in ("commit", "stream")]
        return all(j and j["status"] == "running" and j["current-progress"] > 0 for j in js)

    t.check(wait_for(progressed, 20), "commit and stream running, with progress",
            c.cmd("query-jobs")["return"])
    if t.ours():
        # Started last, so that it is surely still writing at the stop.
        t.ret(c.cmd("blockdev-create", job_id="create",
                    options={"driver": "qcow2", "file": "new", "size": 128 * M, "preallocation": "full"}),
              "blockdev-create qcow2 128 MiB preallocation=full")
        t.eq((job_of(c, "create") or {}).get("status"), "running", "the create job runs")
    if how == "quit":
        c.send_raw(b'{"execute": "quit"}\n')
    else:
        d.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = d.wait(60)
    t.eq(rc, 0, f"the daemon exits 0 on {how}")
    t.check(time.monotonic() - t0 < 30, f"within 30 s ({time.monotonic() - t0:.1f} s)")
    images = [f"{w}/{n}.qcow2" for n in ("a-base", "a-mid", "a-top", "b-base", "b-top")]
    if t.ours():
        images.append(f"{w}/new.qcow2")
    for img in images:
        p = run(["qemu-img", "check", img])
        t.check(p.returncode == 0, f"qemu-img check {os.path.basename(img)}", p.stdout + p.stderr)
    for name in ("a", "b"):
        p = run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", f"{w}/{name}-top.qcow2", f"{w}/{name}-ref.raw"])
        t.check(p.returncode == 0, f"chain {name} reads as before", p.stdout + p.stderr)
    p = run(["qemu-img", "info", "--output=json", f"{w}/a-top.qcow2"])
    t.check('a-mid.qcow2"' in p.stdout, "a-top still over a-mid (the commit was cancelled)", p.stdout)
    p = run(["qemu-img", "info", "--output=json", f"{w}/b-top.qcow2"])
    t.check('"backing-filename"' in p.stdout, "b-top keeps its backing file (the stream was cancelled)")
    if t.ours():
        p = run(["qemu-img", "info", "--output=json", f"{w}/new.qcow2"])
        t.check('"virtual-size": 134217728' in p.stdout, "new.qcow2: the complete 128 MiB image", p.stdout)


def main():
    with Test("qmp-jobs-stop") as t:
        t.part(stop_with_jobs, t, "quit")
        t.part(stop_with_jobs, t, "SIGTERM")
        if t.failures:
            sys.exit(1)


main()

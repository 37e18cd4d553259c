# tests/integration/qmp-jobs.py -- the job model over QMP, the same session
# against blockgraph and qemu-storage-daemon (QMP_TARGET=qsd), on
# block-stream jobs slowed down by a speed limit (run by qmp-jobs.sh):
#   - unknown ids (job-* GenericError "Job not found", block-job-*
#     DeviceNotActive), a second job on a busy node, verbs in states that
#     do not allow them, query-jobs / query-block-jobs members;
#   - pause / resume (paused state, JOB_STATUS_CHANGE sequence, progress
#     stands still while paused), a paused job refusing a soft cancel,
#     block-job-set-speed (negative refused, 0 lets it finish);
#   - the full event sequence of a successful job; auto-finalize=false
#     (pending, BLOCK_JOB_PENDING, job-finalize) and auto-dismiss=false
#     (concluded until job-dismiss);
#   - cancel (BLOCK_JOB_CANCELLED, the error a concluded cancelled job shows,
#     the chain left as it was);
#   - the result judged by qemu-img: the streamed image holds the whole
#     chain's data (qemu-img compare against the chain before), has no
#     backing file, and passes qemu-img check.
# (quit and SIGTERM with jobs running: qmp-jobs-stop.py.)
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, err, run, wait_for  # noqa: E402

M = 1 << 20
SIZE = 32 * M


def make_chain(w, name):
    """base (data 0..SIZE) <- top (a little data of its own); returns top."""
    base, top = f"{w}/{name}-base.qcow2", f"{w}/{name}-top.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE)], check=True)
    run(["qemu-io", "-c", f"write -P 0x5a 0 {SIZE}", base], check=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top], check=True)
    run(["qemu-io", "-c", "write -P 0xa5 1M 1M", top], check=True)
    run(["qemu-img", "convert", "-O", "raw", top, f"{w}/{name}-ref.raw"], check=True)
    return top


def add_top(t, c, name, top):
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=name,
                file={"driver": "file", "filename": top}), f"add {name}")


def statuses(c, job):
    return [e["data"]["status"] for e in c.events
            if e.get("event") == "JOB_STATUS_CHANGE" and e["data"]["id"] == job]


def names(c, job):
    """Events of JOB in order: statuses and other event names."""
    out = []
    for e in c.events:
        d = e.get("data", {})
        if d.get("id") == job or d.get("device") == job:
            out.append(d["status"] if e["event"] == "JOB_STATUS_CHANGE" else e["event"])
    return out


def wait_ev(c, name, pred, timeout=20.0):
    """Waits for an event NAME matching PRED, keeping every event in
    c.events (names() reads them afterwards)."""
    return c.wait_event(name, timeout, pred, keep=True)


def wait_status(c, job, status, timeout=20.0):
    wait_ev(c, "JOB_STATUS_CHANGE", lambda e: e["data"]["id"] == job and e["data"]["status"] == status, timeout)


def progress(c, job):
    for j in c.cmd("query-jobs")["return"]:
        if j["id"] == job:
            return j["current-progress"]
    return None


def control(t, c, w):
    t.section("lookups and refusals")
    t.error(c.cmd("job-pause", id="nojob"), "job-pause of an unknown id", "Job not found")
    t.error(c.cmd("block-job-pause", device="nojob"), "block-job-pause of an unknown id",
            "Block job 'nojob' not found", "DeviceNotActive")
    t.error(c.cmd("block-job-set-speed", device="nojob", speed=1), "block-job-set-speed of an unknown id",
            "Block job 'nojob' not found", "DeviceNotActive")
    t.eq(c.cmd("query-jobs").get("return"), [], "query-jobs: none")
    t.eq(c.cmd("query-block-jobs").get("return"), [], "query-block-jobs: none")

    add_top(t, c, "a", make_chain(w, "a"))
    t.error(c.cmd("block-stream", device="a", speed=M), "block-stream without job-id", "Invalid job ID ''")
    c.events.clear()
    t.ret(c.cmd("block-stream", job_id="j", device="a", speed=M), "block-stream j at 1 MiB/s")
    wait_status(c, "j", "running")
    t.eq(statuses(c, "j"), ["created", "running"], "created, running")
    qj = c.cmd("query-jobs")["return"]
    t.eq([(j["id"], j["type"], j["status"], j["total-progress"] > 0) for j in qj],
         [("j", "stream", "running", True)], "query-jobs: j, stream, running, a total")
    bj = c.cmd("query-block-jobs")["return"]
    t.eq(len(bj), 1, "query-block-jobs: one job")
    if bj:
        b = bj[0]
        t.eq({k: b.get(k) for k in ("type", "device", "speed", "paused", "io-status", "ready", "status",
                                     "auto-finalize", "auto-dismiss")},
             {"type": "stream", "device": "j", "speed": M, "paused": False, "io-status": "ok", "ready": False,
              "status": "running", "auto-finalize": True, "auto-dismiss": True}, "query-block-jobs members")
        t.check(set(b) >= {"len", "offset", "busy"}, "query-block-jobs has len, offset, busy", sorted(b))
    add_top(t, c, "x", make_chain(w, "x"))
    t.error(c.cmd("block-stream", job_id="j", device="x"), "the same job id again", "Job ID 'j' already in use")
    t.error(c.cmd("block-stream", job_id="j2", device="a"), "a second stream on the same node",
            "Node 'a' is busy: block device is in use by block job: stream")
    # QEMU names no device here ("Device '(null)' is in use"); we name the node.
    e = err(c.cmd("block_resize", node_name="a", size=2 * SIZE))
    t.check(e is not None and e[1] in ("Device '(null)' is in use", "Device 'a' is in use"),
            "block_resize of the job's node is refused", e)
    t.error(c.cmd("job-complete", id="j"), "job-complete of a running stream",
            "Job 'j' in state 'running' cannot accept command verb 'complete'")
    t.error(c.cmd("job-finalize", id="j"), "job-finalize of a running job",
            "Job 'j' in state 'running' cannot accept command verb 'finalize'")
    t.error(c.cmd("job-dismiss", id="j"), "job-dismiss of a running job",
            "Job 'j' in state 'running' cannot accept command verb 'dismiss'")
    t.error(c.cmd("job-resume", id="j"), "job-resume of a job not paused",
            "Can't resume a job that was not paused")

    t.section("pause and resume")
    t.ret(c.cmd("job-pause", id="j"), "job-pause")
    wait_status(c, "j", "paused")
    t.error(c.cmd("job-pause", id="j"), "job-pause again", "Job is already paused")
    t.error(c.cmd("block-job-cancel", device="j"), "a soft cancel of a paused job",
            "The block job for device 'j' is currently paused")
    bj = c.cmd("query-block-jobs")["return"]
    t.eq((bj[0]["paused"], bj[0]["status"], bj[0]["busy"]) if bj else None, (True, "paused", False),
         "query-block-jobs: paused, not busy")
    p1 = progress(c, "j")
    time.sleep(1.0)
    t.eq(progress(c, "j"), p1, "no progress while paused")
    t.ret(c.cmd("block-job-resume", device="j"), "block-job-resume")
    wait_status(c, "j", "running")
    t.check(wait_for(lambda: progress(c, "j") > p1, 10), "progress again after resume")

    t.section("speed")
    t.error(c.cmd("block-job-set-speed", device="j", speed=-1), "a negative speed",
            "Parameter 'speed' expects a non-negative value")
    t.ret(c.cmd("block-job-set-speed", device="j", speed=0), "speed 0: unlimited")
    wait_ev(c, "BLOCK_JOB_COMPLETED", lambda e: e["data"]["device"] == "j", 30)
    wait_status(c, "j", "null")
    t.eq(names(c, "j"), ["created", "running", "paused", "running", "waiting", "pending",
                         "BLOCK_JOB_COMPLETED", "concluded", "null"], "the events of j")
    ev = [e for e in c.events if e.get("event") == "BLOCK_JOB_COMPLETED"]
    if ev:
        d = ev[0]["data"]
        t.eq((d["type"], d["device"], d["len"] == d["offset"], d["speed"], "error" in d),
             ("stream", "j", True, 0, False), "BLOCK_JOB_COMPLETED: type, device, len == offset, speed")
    t.eq(c.cmd("query-jobs").get("return"), [], "j is gone")


def manual(t, c, w):
    t.section("auto-finalize and auto-dismiss off")
    add_top(t, c, "b", make_chain(w, "b"))
    c.events.clear()
    t.ret(c.cmd("block-stream", job_id="jb", device="b", auto_finalize=False, auto_dismiss=False),
          "block-stream jb, auto-finalize and auto-dismiss off")
    wait_ev(c, "BLOCK_JOB_PENDING", lambda e: e["data"]["id"] == "jb", 30)
    qj = c.cmd("query-jobs")["return"]
    t.eq([j["status"] for j in qj], ["pending"], "jb pending")
    t.error(c.cmd("job-dismiss", id="jb"), "job-dismiss of a pending job",
            "Job 'jb' in state 'pending' cannot accept command verb 'dismiss'")
    bj = c.cmd("query-block-jobs")["return"]
    t.eq((bj[0]["auto-finalize"], bj[0]["auto-dismiss"]) if bj else None, (False, False),
         "query-block-jobs shows both off")
    t.ret(c.cmd("job-finalize", id="jb"), "job-finalize")
    wait_status(c, "jb", "concluded")
    t.eq([(j["id"], j["status"], "error" in j) for j in c.cmd("query-jobs")["return"]],
         [("jb", "concluded", False)], "jb concluded, no error")
    t.ret(c.cmd("job-dismiss", id="jb"), "job-dismiss")
    wait_status(c, "jb", "null")
    t.eq(names(c, "jb"), ["created", "running", "waiting", "pending", "BLOCK_JOB_PENDING",
                          "BLOCK_JOB_COMPLETED", "concluded", "null"], "the events of jb")
    t.eq(c.cmd("query-jobs").get("return"), [], "jb is gone")


def cancel(t, c, w):
    t.section("cancel")
    add_top(t, c, "c", make_chain(w, "c"))
    c.events.clear()
    t.ret(c.cmd("block-stream", job_id="jc", device="c", speed=M, auto_dismiss=False), "block-stream jc")
    wait_status(c, "jc", "running")
    time.sleep(0.3)
    t.ret(c.cmd("job-cancel", id="jc"), "job-cancel")
    wait_ev(c, "BLOCK_JOB_CANCELLED", lambda e: e["data"]["device"] == "jc", 20)
    wait_status(c, "jc", "concluded")
    t.eq(names(c, "jc"), ["created", "running", "aborting", "BLOCK_JOB_CANCELLED", "concluded"],
         "the events of jc")
    qj = c.cmd("query-jobs")["return"]
    t.eq([(j["status"], j.get("error")) for j in qj], [("concluded", "Operation canceled")],
         "a cancelled job concludes with error 'Operation canceled'")
    t.error(c.cmd("job-cancel", id="jc"), "job-cancel of a concluded job",
            "Job 'jc' in state 'concluded' cannot accept command verb 'cancel'")
    t.ret(c.cmd("job-dismiss", id="jc"), "job-dismiss jc")
    nodes = {n["node-name"]: n for n in c.cmd("query-named-block-nodes", flat=True)["return"]}
    t.eq(nodes.get("c", {}).get("backing_file"), f"{w}/c-base.qcow2", "after the cancel c still has its backing file")


def results(t, w):
    t.section("the images (qemu-img)")
    for n in ("a", "b"):
        top = f"{w}/{n}-top.qcow2"
        info = run(["qemu-img", "info", "--output=json", "-U", top]).stdout
        t.check('"backing-filename"' not in info, f"{n}-top has no backing file after the stream")
        t.eq(run(["qemu-img", "compare", "-U", top, f"{w}/{n}-ref.raw"]).returncode, 0,
             f"{n}-top holds the whole chain's data (qemu-img compare)")
        t.eq(run(["qemu-img", "check", "-U", top]).returncode, 0, f"{n}-top passes qemu-img check")
    top = f"{w}/c-top.qcow2"
    t.eq(run(["qemu-img", "compare", "-U", top, f"{w}/c-ref.raw"]).returncode, 0,
         "c (cancelled) still reads the same data through its chain")
    t.eq(run(["qemu-img", "check", "-U", top]).returncode, 0, "c-top passes qemu-img check")


def main():
    with Test("qmp-jobs", budget=150) as t:
        d = t.daemon()
        c = d.qmp()
        t.part(control, t, c, t.work)
        t.part(manual, t, c, t.work)
        t.part(cancel, t, c, t.work)
        t.stop(d)
        t.part(results, t, t.work)


if __name__ == "__main__":
    main()

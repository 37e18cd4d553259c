# tests/integration/qmp-stream.py -- block-stream (run by qmp-stream.sh;
# QMP_TARGET=qsd runs it against qemu-storage-daemon). Each case builds a
# chain base <- mid <- top (qcow2, data written with qemu-io patterns in
# each layer), adds its nodes over QMP and streams into top:
#   - argument errors (QEMU's texts);
#   - the whole chain under fio (randwrite 4k, depth 64, --verify=crc32c)
#     through a writable FUSE export of top: fio reports no error; the
#     copy-on-read filter (filter-node-name) shows while the job runs;
#     afterwards top has no backing file (query-named-block-nodes and its
#     header), its data beyond fio's region equals the former chain's, and
#     qemu-img check is clean;
#   - with base-node: top then backed by base and equal to the former chain
#     (qemu-img compare);
#   - cancel in the middle: BLOCK_JOB_CANCELLED, the chain unchanged;
#   - pause/resume (states, progress stands still), the speed limit
#     (measured rate within 10% of speed, and after block-job-set-speed);
#   - on-error report / ignore / stop with blkdebug injecting a read error
#     into mid's file (ignore: the job goes on and fails at the end, the
#     backing file kept; stop: paused, io-status failed, resume finishes);
#   - kill -9 of the daemon mid-stream: qemu-img check without errors
#     (leaks allowed), the chain's guest data intact.
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_chainjobs import (FIO_SIZE, M, Chain, backing_node, compare, finish_fio, job, measure_rate,  # noqa: E402
                           node_info, same_above, start_fio, statuses, wait_event, wait_progress)
from qmp import Test, mounted, wait_for  # noqa: E402


def wait_for_status(c, jid, status, timeout=5.0):
    """Polls query-jobs (the events stay in c.events) until jid is in status."""
    return wait_for(lambda: (job(c, jid) or {}).get("status") == status, timeout)


def errors(t, c, w):
    Chain(w, "e").add(t, c)
    t.error(c.cmd("block-stream", job_id="j", device="e-top", base="x", base_node="e-base"), "base and base-node",
            "'base' and 'base-node' cannot be specified at the same time")
    t.error(c.cmd("block-stream", job_id="j", device="e-top", base="x", bottom="e-mid"), "base and bottom",
            "'base' and 'bottom' cannot be specified at the same time")
    t.error(c.cmd("block-stream", job_id="j", device="e-top", bottom="e-mid", base_node="e-base"),
            "bottom and base-node", "'bottom' and 'base-node' cannot be specified at the same time")
    t.error(c.cmd("block-stream", job_id="j", device="nope"), "unknown device",
            "Cannot find device='nope' nor node-name='nope'")
    t.error(c.cmd("block-stream", job_id="j", device="e-mid", base_node="e-top"), "base-node above device",
            "Node 'e-top' is not a backing image of 'e-mid'")
    t.error(c.cmd("block-stream", job_id="j", device="e-mid", bottom="e-top"), "bottom above device",
            "Node 'e-top' is not in a chain starting from 'e-mid'")
    t.error(c.cmd("block-stream", job_id="j", device="e-top", backing_file="x"), "backing-file, whole chain",
            "backing file specified, but streaming the entire chain")
    t.error(c.cmd("block-stream", job_id="j", device="e-top", base="/nope"), "unknown base file",
            "Can't find '/nope' in the backing chain")
    t.error(c.cmd("block-stream", device="e-top"), "no job id", "Invalid job ID ''")


def under_fio(t, c, w):
    ch = Chain(w, "f")
    ch.add(t, c)
    mp = f"{w}/f-mp"
    open(mp, "w").close()
    # ours-only: QEMU 7.2 refuses a stream under a writable FUSE export
    # (its FUSE export takes RESIZE, which the stream job does not share:
    # "Permission conflict on node 'cor': permissions 'resize' ..."); there
    # the same stream runs without the export and fio.
    fio = None
    if t.ours():
        t.ret(c.cmd("block-export-add", type="fuse", id="fe", node_name="f-top", mountpoint=mp, writable=True),
              "FUSE export of top")
        fio = start_fio(t, mp, 6)
        time.sleep(1.0)
    t.ret(c.cmd("block-stream", job_id="fs", device="f-top", speed=8 * M, filter_node_name="cor"),
          "block-stream of the whole chain (under fio)")
    n = node_info(c)
    t.check(n.get("cor", {}).get("drv") == "copy-on-read", "the copy-on-read filter shows while the job runs",
            sorted(n))
    ev = wait_event(c, "BLOCK_JOB_COMPLETED", "fs", 30)
    t.check("error" not in ev["data"], "the stream completed", ev)
    if fio:
        finish_fio(t, fio, mp, "stream under fio")
    n = node_info(c)
    t.check("cor" not in n, "the filter is gone", sorted(n))
    t.eq(backing_node(c, "f-top"), None, "top has no backing any more")
    if fio:
        t.ret(c.cmd("block-export-del", id="fe"), "export removed")
        c.wait_event("BLOCK_EXPORT_DELETED", 10)
    return ch


def under_fio_check(t, ch):
    same_above(t, ch.top, ch.ref, FIO_SIZE, "top's data beyond fio's region is the former chain's")
    t.eq(ch.backing(ch.top), None, "top's header names no backing file")
    ch.check_images(t, "after the stream")


def cancel(t, c, w):
    ch = Chain(w, "c")
    ch.add(t, c)
    t.ret(c.cmd("block-stream", job_id="cs", device="c-top", speed=2 * M), "slow stream")
    t.check(wait_progress(c, "cs", 4 * M), "the job makes progress")
    t.ret(c.cmd("job-cancel", id="cs"), "job-cancel")
    ev = wait_event(c, "BLOCK_JOB_CANCELLED", "cs")
    t.check(0 < ev["data"]["offset"] < ev["data"]["len"], "cancelled in the middle", ev["data"])
    t.check(not any(v["drv"] == "copy-on-read" for v in node_info(c).values()), "no filter left")
    t.eq(backing_node(c, "c-top"), ch.mid, "top still backed by mid")
    return ch


def cancel_check(t, ch):
    compare(t, ch.top, ch.ref, "cancel: the chain's data is unchanged")
    t.eq(ch.backing(ch.top), ch.mid, "cancel: top's header still names mid")
    ch.check_images(t, "after cancel")


def pause_speed(t, c, w):
    # (No data in top: progress counts the ranges top holds, which are
    # not copied, and the rate is measured on copied data.)
    ch = Chain(w, "s", mid_full=True, size=64 * M, top_data=False)
    ch.add(t, c)
    speed = 4 * M
    t.ret(c.cmd("block-stream", job_id="ss", device="s-top", base_node="s-base", speed=speed),
          "stream above base at 4 MiB/s")
    t.check(wait_progress(c, "ss", 1), "the job makes progress")
    time.sleep(0.5)
    rate = measure_rate(c, "ss", 3.0)
    t.check(abs(rate - speed) <= 0.1 * speed, f"measured rate {rate / M:.2f} MiB/s within 10% of 4 MiB/s", rate)
    t.ret(c.cmd("job-pause", id="ss"), "job-pause")
    t.check(wait_for_status(c, "ss", "paused"), "paused", statuses(c, "ss"))
    p0 = job(c, "ss")["current-progress"]
    time.sleep(0.7)
    t.eq(job(c, "ss")["current-progress"], p0, "no progress while paused")
    t.ret(c.cmd("job-resume", id="ss"), "job-resume")
    t.check(wait_for_status(c, "ss", "running", 2), "running again")
    t.eq(statuses(c, "ss")[-3:], ["running", "paused", "running"], "status sequence around the pause")
    t.ret(c.cmd("block-job-set-speed", device="ss", speed=8 * M), "block-job-set-speed 8 MiB/s")
    time.sleep(0.5)
    rate = measure_rate(c, "ss", 2.0)
    t.check(abs(rate - 8 * M) <= 0.8 * M, f"measured rate {rate / M:.2f} MiB/s within 10% of 8 MiB/s", rate)
    t.ret(c.cmd("block-job-set-speed", device="ss", speed=0), "unlimited")
    ev = wait_event(c, "BLOCK_JOB_COMPLETED", "ss", 30)
    t.check("error" not in ev["data"], "completed", ev)
    t.eq(backing_node(c, "s-top"), ch.base, "top now backed by base")
    return ch


def pause_speed_check(t, ch):
    compare(t, ch.top, ch.ref, "base-node: top over base equals the former chain")
    t.eq(ch.backing(ch.top), ch.base, "base-node: top's header names base")
    ch.check_images(t, "after the stream above base")


def on_error(t, c, w, policy):
    ch = Chain(w, f"r{policy}")
    n = ch.name
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=f"{n}-base", read_only=True,
                file={"driver": "file", "filename": ch.base}), f"add {n}-base")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=f"{n}-mid", read_only=True, backing=f"{n}-base",
                file={"driver": "blkdebug", "inject-error": [{"event": "read_aio", "errno": 5, "once": True}],
                      "image": {"driver": "file", "filename": ch.mid}}), f"add {n}-mid (blkdebug)")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name=f"{n}-top", backing=f"{n}-mid",
                file={"driver": "file", "filename": ch.top}), f"add {n}-top")
    t.ret(c.cmd("block-stream", job_id=n, device=f"{n}-top", base_node=f"{n}-base", on_error=policy),
          f"stream with on-error={policy}")
    err = c.wait_event("BLOCK_JOB_ERROR", 10, lambda e: e["data"]["device"] == n)
    t.eq(err["data"], {"device": n, "operation": "read", "action": policy}, f"{policy}: BLOCK_JOB_ERROR")
    if policy == "stop":
        t.check(wait_for_status(c, n, "paused"), "stop: the job is paused", statuses(c, n))
        bj = [j for j in c.cmd("query-block-jobs")["return"] if j["device"] == n]
        t.check(bj and bj[0]["io-status"] == "failed" and bj[0]["paused"], "stop: io-status failed, paused", bj)
        t.ret(c.cmd("job-resume", id=n), "stop: job-resume (the once rule is gone)")
    ev = wait_event(c, "BLOCK_JOB_COMPLETED", n, 20)
    b = backing_node(c, f"{n}-top") or ""
    if policy == "stop":
        t.check("error" not in ev["data"], "stop: the job completes", ev["data"])
        t.check(os.path.basename(ch.base) in b, "stop: top now backed by base", b)
    else:
        # ignore: the job goes on, then fails (QEMU keeps the backing file).
        t.eq(ev["data"].get("error"), "Input/output error", f"{policy}: the job fails with the error")
        if policy == "ignore":
            t.eq(ev["data"]["offset"], ev["data"]["len"], "ignore: the job went on to the end")
        t.check(os.path.basename(ch.mid) in b, f"{policy}: top still backed by mid", b)
    return ch


def on_error_check(t, ch, policy):
    compare(t, ch.top, ch.ref, f"{policy}: the chain's data is unchanged")
    ch.check_images(t, f"on-error={policy}")


def kill9(t, w):
    ch = Chain(w, "k")
    d = t.daemon([])
    c = d.qmp()
    ch.add(t, c)
    t.ret(c.cmd("block-stream", job_id="ks", device="k-top", speed=4 * M), "stream to kill")
    t.check(wait_progress(c, "ks", 8 * M), "the job makes progress")
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    ch.check_images(t, "after kill -9", leaks_ok=True)
    compare(t, ch.top, ch.ref, "after kill -9: the chain's guest data is intact")


def main():
    with Test("qmp-stream", budget=110) as t:
        w = t.work
        d = t.daemon([])
        c = d.qmp()
        t.section("argument errors")
        errors(t, c, w)
        t.section("stream under fio through the FUSE export")
        fch = under_fio(t, c, w)
        t.section("cancel")
        cch = cancel(t, c, w)
        t.section("pause, resume and speed; base-node")
        sch = pause_speed(t, c, w)
        t.section("on-error")
        ech = {p: on_error(t, c, w, p) for p in ("report", "ignore", "stop")}
        t.stop(d)
        under_fio_check(t, fch)
        cancel_check(t, cch)
        pause_speed_check(t, sch)
        for p, ch in ech.items():
            on_error_check(t, ch, p)
        t.section("kill -9 in the middle")
        kill9(t, w)
        for m in os.listdir(w):
            if m.endswith("-mp"):
                t.check(not mounted(f"{w}/{m}"), f"{m} unmounted")


if __name__ == "__main__":
    main()

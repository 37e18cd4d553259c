# tests/integration/qmp-live.py -- monitor commands while a FUSE export is
# under load (run by qmp-live.sh; QMP_TARGET=qsd runs it against
# qemu-storage-daemon):
#   fio (randwrite 4k, iodepth 64, O_DIRECT -- buffered against QSD, see
#   below --, --verify=crc32c with verify_backlog, 10 s) through one writable FUSE export of a qcow2 node,
#   while a client of a second monitor loops over: block-export-add of a
#   second (read-only) export and a read through it, block-export-del with
#   its event, block_resize (growing past fio's region), an internal
#   snapshot (every other one deleted again), a transaction of bitmap
#   actions, blockdev-reopen with the same options, and queries. Every
#   command must succeed; fio must report no error; after quit qemu-img
#   check is clean, qemu-img snapshot -l lists the kept snapshots and the
#   bitmaps' last counts are sane.
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, bitmaps, img_info, mounted, read_at, run  # noqa: E402

M = 1 << 20
FIO_SIZE = 16 * M
RUNTIME = 10


def main():
    with Test("qmp-live", budget=90) as t:
        w = t.work
        run(["qemu-img", "create", "-q", "-f", "qcow2", f"{w}/a.qcow2", "32M"], check=True)
        for m in ("mp", "mp2"):
            open(f"{w}/{m}", "w").close()
        d = t.daemon([], monitors=("mon0", "mon1"))
        c = d.connect()
        ctl = d.connect("mon1")
        t.ret(c.cmd("blockdev-add", driver="file", node_name="f0", filename=f"{w}/a.qcow2"), "add f0")
        t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="q0", file="f0"), "add q0")
        t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="b0"), "bitmap b0")
        t.ret(c.cmd("block-export-add", type="fuse", id="e0", node_name="q0", mountpoint=f"{w}/mp",
                    writable=True), "export e0 (writable)")
        # QSD 7.2's FUSE export returns wrong data under concurrent O_DIRECT
        # requests (this fio job fails against it with no monitor command
        # at all), so against QSD the same job runs buffered.
        direct = "--direct=0" if t.is_qsd else "--direct=1"
        fio = subprocess.Popen(
            ["fio", "--name=v", f"--filename={w}/mp", f"--size={FIO_SIZE}", "--rw=randwrite", "--bs=4k",
             "--ioengine=libaio", direct, "--iodepth=64", "--verify=crc32c", "--verify_fatal=1",
             "--verify_backlog=1024", "--verify_state_save=0", "--time_based", f"--runtime={RUNTIME}",
             "--output-format=json", f"--output={w}/fio.json"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=w)
        failures = []
        rounds = 0
        size = 32 * M
        kept = []
        start = time.monotonic()

        def need(r, what):
            if "return" not in r:
                failures.append((rounds, what, r))
            return r

        while fio.poll() is None and time.monotonic() - start < RUNTIME + 20:
            rounds += 1
            need(ctl.cmd("block-export-add", type="fuse", id="e1", node_name="q0", mountpoint=f"{w}/mp2"),
                 "block-export-add e1")
            if mounted(f"{w}/mp2"):
                try:
                    read_at(f"{w}/mp2", 20 * M, 65536)
                except Exception as e:  # noqa: BLE001
                    failures.append((rounds, "read through e1", str(e)))
            else:
                failures.append((rounds, "e1 not mounted", ""))
            need(ctl.cmd("block-export-del", id="e1"), "block-export-del e1")
            try:
                ctl.wait_event("BLOCK_EXPORT_DELETED", 10, lambda e: e.get("data", {}).get("id") == "e1")
            except Exception as e:  # noqa: BLE001
                failures.append((rounds, "BLOCK_EXPORT_DELETED", str(e)))
            size += M
            need(ctl.cmd("block_resize", node_name="q0", size=size), "block_resize")
            need(ctl.cmd("blockdev-snapshot-internal-sync", device="q0", name=f"s{rounds}"), "snapshot")
            if rounds % 2 == 0:
                need(ctl.cmd("blockdev-snapshot-delete-internal-sync", device="q0", name=f"s{rounds}"), "delete")
            else:
                kept.append(f"s{rounds}")
            need(ctl.cmd("transaction", actions=[
                {"type": "block-dirty-bitmap-add", "data": {"node": "q0", "name": f"t{rounds}"}},
                {"type": "block-dirty-bitmap-merge", "data": {"node": "q0", "target": f"t{rounds}",
                                                              "bitmaps": ["b0"]}},
                {"type": "block-dirty-bitmap-clear", "data": {"node": "q0", "name": "b0"}}]), "transaction")
            if rounds > 1:
                need(ctl.cmd("block-dirty-bitmap-remove", node="q0", name=f"t{rounds - 1}"), "bitmap remove")
            need(ctl.cmd("blockdev-reopen", options=[{"driver": "qcow2", "node-name": "q0", "file": "f0"}]),
                 "blockdev-reopen")
            need(ctl.cmd("query-named-block-nodes"), "query-named-block-nodes")
            need(ctl.cmd("query-block-exports"), "query-block-exports")
        try:
            out = fio.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            fio.kill()
            out = "fio did not finish"
        t.check(rounds >= 3, f"{rounds} rounds of monitor commands during the run", rounds)
        t.eq(failures, [], "every monitor command succeeded")
        t.eq(fio.returncode, 0, "fio exits 0 " + out[-500:] if fio.returncode else "fio exits 0")
        try:
            with open(f"{w}/fio.json") as f:
                job = json.load(f)["jobs"][0]
            errs = job.get("error", 1)
            written = job.get("write", {}).get("io_bytes", 0)
        except (OSError, ValueError, KeyError, IndexError) as e:
            errs, written = f"no fio JSON: {e}", 0
        t.eq(errs, 0, "fio reports no error")
        t.check(written > FIO_SIZE // 4, "fio wrote data", written)
        last = f"t{rounds}"
        bm = t.part(bitmaps, c, "q0") or {}
        t.check(last in bm and 0 <= bm.get("b0", {}).get("count", -1) <= FIO_SIZE, "the bitmaps are consistent",
                {n: b.get("count") for n, b in bm.items()})
        t.stop(d, "daemon exits 0 on quit")
        p = run(["qemu-img", "check", f"{w}/a.qcow2"])
        t.check(p.returncode == 0, "qemu-img check: no errors", p.stdout + p.stderr)
        t.eq(img_info(f"{w}/a.qcow2").get("virtual-size"), size, "qemu-img info: the last resize")
        p = run(["qemu-img", "snapshot", "-l", f"{w}/a.qcow2"])
        names = [line.split()[1] for line in p.stdout.splitlines()[2:] if len(line.split()) > 1]
        t.eq(names, kept, "qemu-img snapshot -l: the kept snapshots")


main()

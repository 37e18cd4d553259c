# tests/integration/qmp-bitmaps.py -- dirty bitmaps and transactions over
# QMP (run by qmp-bitmaps.sh; QMP_TARGET=qsd runs it against
# qemu-storage-daemon):
#   block-dirty-bitmap-add (default and explicit granularity, persistent,
#     disabled) and every error; writes through a FUSE export are counted
#     (exact counts at 64 KiB and 512 B granularity, an unaligned write
#     rounds out, a disabled bitmap counts nothing);
#   -enable/-disable (idempotent, "recording"), -clear, -remove, -merge
#     (strings and {node, name} sources, into a disabled target), their
#     errors;
#   persistence: after quit qemu-img info lists exactly the persistent
#     bitmaps (flags auto for enabled ones), qemu-img check is clean, and
#     a new daemon on the image reports them with the same counts;
#   transaction: all actions succeed; one fails -> nothing changed
#     (bitmaps, an internal snapshot), abort, unknown type, empty list,
#     completion-mode grouped;
#   oracle: the same session against QSD, replies compared.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, bitmaps, dd, img_info, oracle_session, run  # noqa: E402

K = 1024
M = 1 << 20
NF = "Dirty bitmap 'nob' not found"


def make_images(w):
    run(["qemu-img", "create", "-q", "-f", "qcow2", f"{w}/a.qcow2", "16M"], check=True)
    run(["qemu-img", "create", "-q", "-f", "raw", f"{w}/r.raw", "4M"], check=True)
    open(f"{w}/mp", "w").close()
    with open(f"{w}/pat", "wb") as f:
        f.write(b"\x66" * M)


def counts(c):
    return {n: b.get("count") for n, b in bitmaps(c, "q0").items()}


def add(t, c, w):
    t.section("block-dirty-bitmap-add")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="q0",
                file={"driver": "file", "filename": f"{w}/a.qcow2"}), "add q0")
    t.ret(c.cmd("blockdev-add", driver="raw", node_name="r0",
                file={"driver": "file", "filename": f"{w}/r.raw"}), "add r0 (raw)")
    t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="b0"), "b0 (defaults)")
    t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="b1", persistent=True, granularity=65536),
          "b1 persistent, granularity 64k")
    t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="b2", disabled=True), "b2 disabled")
    t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="g512", granularity=512), "g512 granularity 512")
    t.ret(c.cmd("block-dirty-bitmap-add", node="q0", name="pd", persistent=True, disabled=True),
          "pd persistent and disabled")
    t.ret(c.cmd("block-dirty-bitmap-add", node="r0", name="rb"), "rb on the raw node")
    errors = [
        ({"node": "q0", "name": "b0"}, "Bitmap already exists: b0"),
        ({"node": "q0", "name": "x", "granularity": 1000}, "Granularity must be power of 2 and at least 512"),
        ({"node": "q0", "name": "x", "granularity": 256}, "Granularity must be power of 2 and at least 512"),
        ({"node": "q0", "name": "x", "granularity": 1 << 32}, "Parameter 'granularity' expects uint32_t"),
        ({"node": "r0", "name": "x", "persistent": True},
         "Can't store persistent bitmaps to r0: Operation not supported"),
        ({"node": "nonode", "name": "x"}, "Cannot find device='nonode' nor node-name='nonode'"),
        ({"node": "q0", "name": ""}, "Bitmap name cannot be empty"),
        ({"node": "q0", "name": "x" * 1024}, "Bitmap name too long: " + "x" * 1024),
    ]
    for args, text in errors:
        t.error(c.cmd("block-dirty-bitmap-add", **args), f"add {str(args)[:60]}", text)
    bm = bitmaps(c, "q0")
    t.eq(sorted(bm), ["b0", "b1", "b2", "g512", "pd"], "q0 has b0 b1 b2 g512 pd")
    t.eq({n: (b.get("granularity"), b.get("recording"), b.get("persistent"), b.get("busy"), b.get("count"))
          for n, b in bm.items()},
         {"b0": (65536, True, False, False, 0), "b1": (65536, True, True, False, 0),
          "b2": (65536, False, False, False, 0), "g512": (512, True, False, False, 0),
          "pd": (65536, False, True, False, 0)},
         "granularity, recording, persistent, busy, count")
    t.eq(sorted(bitmaps(c, "r0")), ["rb"], "r0 has rb")


def writes(t, c, w):
    t.section("writes are counted")
    t.ret(c.cmd("block-export-add", type="fuse", id="e0", node_name="q0", mountpoint=f"{w}/mp",
                writable=True), "export q0")
    t.check(dd(f"{w}/pat", f"{w}/mp", off=128 * K, length=192 * K).returncode == 0, "write 192k at 128k")
    t.eq(counts(c), {"b0": 192 * K, "b1": 192 * K, "b2": 0, "g512": 192 * K, "pd": 0},
         "192k dirty in the enabled bitmaps, none in the disabled")
    t.check(dd(f"{w}/pat", f"{w}/mp", off=M + 100, length=1).returncode == 0, "write 1 byte at 1M+100")
    t.eq(counts(c), {"b0": 256 * K, "b1": 256 * K, "b2": 0, "g512": 192 * K + 512, "pd": 0},
         "an unaligned byte dirties one granule")
    t.section("enable/disable/clear/merge/remove")
    for _ in range(2):
        t.ret(c.cmd("block-dirty-bitmap-disable", node="q0", name="b0"), "disable b0")
    t.eq(bitmaps(c, "q0").get("b0", {}).get("recording"), False, "b0 not recording")
    t.check(dd(f"{w}/pat", f"{w}/mp", off=4 * M, length=64 * K).returncode == 0, "write 64k at 4M")
    t.eq(counts(c), {"b0": 256 * K, "b1": 320 * K, "b2": 0, "g512": 256 * K + 512, "pd": 0},
         "b0 unchanged while disabled")
    for _ in range(2):
        t.ret(c.cmd("block-dirty-bitmap-enable", node="q0", name="b0"), "enable b0")
    t.eq(bitmaps(c, "q0").get("b0", {}).get("recording"), True, "b0 recording again")
    t.ret(c.cmd("block-dirty-bitmap-clear", node="q0", name="b0"), "clear b0")
    t.check(dd(f"{w}/pat", f"{w}/mp", off=8 * M, length=64 * K).returncode == 0, "write 64k at 8M")
    t.eq(counts(c)["b0"], 64 * K, "b0 counts only the write after the clear")
    t.ret(c.cmd("block-dirty-bitmap-merge", node="q0", target="b2", bitmaps=["b0", {"node": "q0", "name": "b1"}]),
          "merge b0 and {q0, b1} into the disabled b2")
    t.eq(counts(c)["b2"], 384 * K, "b2 holds the union (b1 covers b0)")
    t.ret(c.cmd("block-dirty-bitmap-merge", node="q0", target="g512", bitmaps=["b2"]),
          "merge a 64k-granular bitmap into g512")
    t.eq(counts(c)["g512"], 384 * K, "g512 holds b2's ranges")
    errors = [
        ("block-dirty-bitmap-remove", {"node": "q0", "name": "nob"}, NF),
        ("block-dirty-bitmap-clear", {"node": "q0", "name": "nob"}, NF),
        ("block-dirty-bitmap-enable", {"node": "q0", "name": "nob"}, NF),
        ("block-dirty-bitmap-disable", {"node": "q0", "name": "nob"}, NF),
        ("block-dirty-bitmap-remove", {"node": "nonode", "name": "b0"}, "Node 'nonode' not found"),
        ("block-dirty-bitmap-clear", {"node": "nonode", "name": "b0"}, "Node 'nonode' not found"),
        ("block-dirty-bitmap-merge", {"node": "q0", "target": "b2", "bitmaps": ["nob"]}, NF),
        ("block-dirty-bitmap-merge", {"node": "q0", "target": "nob", "bitmaps": ["b0"]}, NF),
        ("block-dirty-bitmap-merge", {"node": "q0", "target": "b2", "bitmaps": [{"node": "nonode", "name": "b1"}]},
         "Node 'nonode' not found"),
    ]
    for name, args, text in errors:
        t.error(c.cmd(name, **args), f"{name} {str(args)[:60]}", text)
    t.ret(c.cmd("block-dirty-bitmap-remove", node="q0", name="b0"), "remove b0")
    t.eq(sorted(bitmaps(c, "q0")), ["b1", "b2", "g512", "pd"], "b0 is gone")


def transaction(t, c, w):
    t.section("transaction")
    tx = c.cmd("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": "q0", "name": "t1"}},
        {"type": "block-dirty-bitmap-clear", "data": {"node": "q0", "name": "g512"}},
        {"type": "block-dirty-bitmap-disable", "data": {"node": "q0", "name": "b1"}},
        {"type": "block-dirty-bitmap-merge", "data": {"node": "q0", "target": "pd", "bitmaps": ["b2"]}}])
    t.ret(tx, "add t1, clear g512, disable b1, merge b2 into pd: all succeed")
    bm = bitmaps(c, "q0")
    t.eq((sorted(bm), bm.get("g512", {}).get("count"), bm.get("b1", {}).get("recording"),
          bm.get("pd", {}).get("count")), (["b1", "b2", "g512", "pd", "t1"], 0, False, 384 * K),
         "every action took effect")
    before = counts(c)
    cases = [
        ([{"type": "block-dirty-bitmap-add", "data": {"node": "q0", "name": "t2"}},
          {"type": "block-dirty-bitmap-clear", "data": {"node": "q0", "name": "b2"}},
          {"type": "block-dirty-bitmap-enable", "data": {"node": "q0", "name": "b1"}},
          {"type": "block-dirty-bitmap-remove", "data": {"node": "q0", "name": "nob"}}], NF, "the last action fails"),
        ([{"type": "block-dirty-bitmap-remove", "data": {"node": "q0", "name": "t1"}},
          {"type": "abort", "data": {}}], "Transaction aborted using Abort action", "abort"),
        ([{"type": "blockdev-snapshot-internal-sync", "data": {"device": "q0", "name": "ts"}},
          {"type": "block-dirty-bitmap-add", "data": {"node": "q0", "name": "t1"}}],
         "Bitmap already exists: t1", "an internal snapshot, then a failing add"),
    ]
    for actions, text, desc in cases:
        t.error(c.cmd("transaction", actions=actions), desc, text)
        bm = bitmaps(c, "q0")
        t.check(counts(c) == before and bm.get("b1", {}).get("recording") is False and "t1" in bm,
                f"{desc}: nothing changed", counts(c))
    p = run(["qemu-img", "snapshot", "-U", "-l", f"{w}/a.qcow2"])
    t.check(" ts " not in p.stdout, "the failed transaction left no snapshot", p.stdout)
    t.error(c.cmd("transaction", actions=[{"type": "bogus", "data": {}}]), "unknown action type",
            "Parameter 'type' does not accept value 'bogus'")
    t.ret(c.cmd("transaction", actions=[]), "empty transaction")
    t.error(c.cmd("transaction", actions=[{"type": "block-dirty-bitmap-add", "data": {"node": "q0", "name": "t3"}}],
                  properties={"completion-mode": "grouped"}), "completion-mode grouped",
            "Action 'block-dirty-bitmap-add' does not support Transaction property completion-mode = grouped")
    t.ret(c.cmd("transaction", actions=[
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": "q0", "name": "ts"}},
        {"type": "block-dirty-bitmap-add", "data": {"node": "q0", "name": "t4", "persistent": True}}]),
        "an internal snapshot and a persistent bitmap together")
    t.check("t4" in bitmaps(c, "q0"), "t4 exists")
    p = run(["qemu-img", "snapshot", "-U", "-l", f"{w}/a.qcow2"])
    t.check(" ts " in p.stdout, "qemu-img snapshot -l -U shows ts", p.stdout)
    return counts(c)


def persistence(t, w, live):
    t.section("persistence")
    info = img_info(f"{w}/a.qcow2")
    bl = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    got = sorted((b.get("name"), b.get("granularity"), tuple(b.get("flags", []))) for b in bl)
    t.eq(got, [("b1", 65536, ()), ("pd", 65536, ()), ("t4", 65536, ("auto",))],
         "qemu-img info: the persistent bitmaps, auto only on the enabled one")
    p = run(["qemu-img", "check", f"{w}/a.qcow2"])
    t.check(p.returncode == 0, "qemu-img check: no errors", p.stdout + p.stderr)
    d = t.daemon([], name="reopened")
    c = d.connect()
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="q0",
                file={"driver": "file", "filename": f"{w}/a.qcow2"}), "a new daemon opens the image")
    bm = bitmaps(c, "q0")
    t.eq({n: (b.get("count"), b.get("persistent"), b.get("recording")) for n, b in bm.items()},
         {"b1": (live.get("b1"), True, False), "pd": (live.get("pd"), True, False),
          "t4": (live.get("t4"), True, True)},
         "it reports the persistent bitmaps with their counts")
    t.stop(d, "second daemon exits 0")


def oracle(t):
    t.section("oracle")
    script = []

    def setup(d):
        make_images(d)
        q = {"driver": "qcow2", "node-name": "q0", "file": {"driver": "file", "filename": f"{d}/a.qcow2"}}
        script[:] = [
            ("blockdev-add", q),
            ("block-dirty-bitmap-add", {"node": "q0", "name": "a"}),
            ("block-dirty-bitmap-add", {"node": "q0", "name": "p", "persistent": True, "granularity": 4096}),
            ("block-dirty-bitmap-add", {"node": "q0", "name": "a"}),
            ("block-dirty-bitmap-add", {"node": "q0", "name": "d", "disabled": True}),
            ("query-named-block-nodes", {"flat": True}),
            ("block-dirty-bitmap-merge", {"node": "q0", "target": "d", "bitmaps": ["a", "p"]}),
            ("transaction", {"actions": [{"type": "block-dirty-bitmap-clear", "data": {"node": "q0", "name": "a"}},
                                         {"type": "block-dirty-bitmap-remove", "data": {"node": "q0", "name": "x"}}]}),
            ("block-dirty-bitmap-remove", {"node": "q0", "name": "a"}),
            ("query-named-block-nodes", {}),
        ]
    oracle_session(t, "bitmaps and a failing transaction", setup, [], script,
                   post=lambda d: img_info(f"{d}/a.qcow2").get("format-specific"))


def main():
    with Test("qmp-bitmaps", budget=110) as t:
        w = t.work
        make_images(w)
        d = t.daemon([])
        c = d.connect()
        t.part(add, t, c, w)
        t.part(writes, t, c, w)
        live = t.part(transaction, t, c, w)
        t.stop(d, "daemon exits 0 on quit")
        if live is not None:
            t.part(persistence, t, w, live)
        t.part(oracle, t)


main()

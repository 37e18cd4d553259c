# tests/integration/qmp-snapshot.py -- external and internal snapshots over
# QMP (run by qmp-snapshot.sh; QMP_TARGET=qsd runs it against
# qemu-storage-daemon):
#   blockdev-snapshot: an overlay made by qemu-img create -b base, added
#     with "backing": null, put over a node that a writable FUSE export
#     serves: the export moves to the overlay (query-block-exports), the
#     overlay reports its backing file, writes through the export land in
#     the overlay only (qemu-io on both files after quit), old data reads
#     through; qemu-img check both, qemu-img compare against a reference;
#     errors (unknown node / overlay, a cycle, overlay with a backing
#     already, overlay with a parent, base already snapshotted);
#   blockdev-snapshot-internal-sync / -delete-internal-sync: create on a
#     qcow2 root, the data at the snapshot is kept (qemu-img convert -l
#     after quit), qemu-img snapshot -l lists the names; errors (duplicate
#     name, empty name, unknown node, raw node, non-root node, delete
#     without name/id, unknown name/id, both given but not matching, raw);
#     the delete's reply members;
#   oracle: the same session against QSD, replies compared.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, dd, nodes, oracle_session, run  # noqa: E402

M = 1 << 20


def make_images(w):
    run(["qemu-img", "create", "-q", "-f", "qcow2", f"{w}/base.qcow2", "16M"], check=True)
    run(["qemu-io", "-c", "write -P 0x11 0 2M", f"{w}/base.qcow2"], check=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", f"{w}/base.qcow2", "-F", "qcow2", f"{w}/ov.qcow2"],
        check=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", f"{w}/i.qcow2", "8M"], check=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", f"{w}/kb.qcow2", "8M"], check=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", f"{w}/kb.qcow2", "-F", "qcow2", f"{w}/k.qcow2"],
        check=True)
    run(["qemu-img", "create", "-q", "-f", "raw", f"{w}/r.raw", "8M"], check=True)
    open(f"{w}/mp", "w").close()
    open(f"{w}/mpi", "w").close()


def qio(args, img, fmt="qcow2"):
    p = run(["qemu-io", "-f", fmt] + sum((["-c", a] for a in args), []) + [img])
    return p.returncode == 0 and "Pattern verification failed" not in p.stdout, p.stdout + p.stderr


def external(t, c, w):
    t.section("blockdev-snapshot")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="base",
                file={"driver": "file", "filename": f"{w}/base.qcow2"}), "add base")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="ov",
                file={"driver": "file", "filename": f"{w}/ov.qcow2"}, backing=None), "add ov with backing null")
    t.eq(nodes(c).get("ov", {}).get("backing_file_depth"), 0, "ov has no backing before the snapshot")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="k",
                file={"driver": "file", "filename": f"{w}/k.qcow2"}), "add k (its backing kb opened with it)")
    errors = [
        ({"node": "nonode", "overlay": "ov"}, "Cannot find device='nonode' nor node-name='nonode'"),
        ({"node": "base", "overlay": "nonode"}, "Cannot find device='nonode' nor node-name='nonode'"),
        ({"node": "base", "overlay": "base"}, "Making 'base' a backing child of 'base' would create a cycle"),
        ({"node": "base", "overlay": "k"}, "The overlay already has a backing image"),
    ]
    for args, text in errors:
        t.error(c.cmd("blockdev-snapshot", **args), f"blockdev-snapshot {args}", text)
    t.ret(c.cmd("block-export-add", type="fuse", id="e0", node_name="base", mountpoint=f"{w}/mp",
                writable=True), "export base writable")
    t.error(c.cmd("blockdev-snapshot", node="ov", overlay="base"), "an overlay that has a parent (the export)",
            "The overlay is already in use")
    with open("p22", "wb") as f:
        f.write(b"\x22" * M)
    with open("p33", "wb") as f:
        f.write(b"\x33" * M)
    t.check(dd("p22", f"{w}/mp", off=8 * M).returncode == 0, "write 0x22 at 8M into base")
    t.ret(c.cmd("blockdev-snapshot", node="base", overlay="ov"), "blockdev-snapshot base -> ov")
    t.error(c.cmd("blockdev-snapshot", node="base", overlay="ov"), "the same snapshot again",
            "Node 'base' is busy: node is used as backing hd of 'ov'")
    ex = c.cmd("query-block-exports").get("return")
    t.eq([(e.get("id"), e.get("node-name")) for e in ex or []], [("e0", "ov")], "the export now serves ov")
    ns = nodes(c)
    t.eq(ns.get("ov", {}).get("backing_file"), f"{w}/base.qcow2", "ov reports base.qcow2 as backing_file")
    t.check("base" in ns, "base is still a named node")
    t.check(dd("p33", f"{w}/mp", off=10 * M).returncode == 0, "write 0x33 at 10M through the export")
    t.check(dd("p22", f"{w}/mp", off=M // 2, length=64 * 1024).returncode == 0,
            "write 0x22 over 64k of base's data through the export")


def internal(t, c, w):
    t.section("blockdev-snapshot-internal-sync")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="q0",
                file={"driver": "file", "filename": f"{w}/i.qcow2"}), "add q0 (qcow2)")
    t.ret(c.cmd("blockdev-add", driver="raw", node_name="r0",
                file={"driver": "file", "filename": f"{w}/r.raw"}), "add r0 (raw)")
    t.ret(c.cmd("block-export-add", type="fuse", id="ei", node_name="q0", mountpoint=f"{w}/mpi",
                writable=True), "export q0")
    with open("p44", "wb") as f:
        f.write(b"\x44" * M)
    with open("p55", "wb") as f:
        f.write(b"\x55" * M)
    t.check(dd("p44", f"{w}/mpi", off=0).returncode == 0, "write 0x44 at 0")
    t.ret(c.cmd("blockdev-snapshot-internal-sync", device="q0", name="s1"), "snapshot s1")
    t.check(dd("p55", f"{w}/mpi", off=0).returncode == 0, "write 0x55 at 0 after s1")
    t.ret(c.cmd("blockdev-snapshot-internal-sync", device="q0", name="s2"), "snapshot s2")
    t.ret(c.cmd("blockdev-snapshot-internal-sync", device="q0", name="gone"), "snapshot gone")
    errors = [
        ({"device": "q0", "name": "s1"}, "Snapshot with name 's1' already exists on device 'q0'"),
        ({"device": "q0", "name": ""}, "Name is empty"),
        ({"device": "nonode", "name": "x"}, "Cannot find device='nonode' nor node-name='nonode'"),
        ({"device": "r0", "name": "x"}, "Block format 'raw' used by device 'r0' does not support internal snapshots"),
        ({"device": "base", "name": "x"}, "Need a root block node"),
    ]
    for args, text in errors:
        t.error(c.cmd("blockdev-snapshot-internal-sync", **args), f"create {args}", text)
    derrors = [
        ({"device": "q0"}, "Name or id must be provided"),
        ({"device": "q0", "name": "nosuch"}, "Snapshot with id 'null' and name 'nosuch' does not exist on device 'q0'"),
        ({"device": "q0", "id": "9"}, "Snapshot with id '9' and name 'null' does not exist on device 'q0'"),
        ({"device": "q0", "id": "1", "name": "s2"}, "Snapshot with id '1' and name 's2' does not exist on device 'q0'"),
        ({"device": "r0", "name": "s1"}, "Failed to get a snapshot list: Operation not supported"),
        ({"device": "nonode", "name": "s1"}, "Cannot find device='nonode' nor node-name='nonode'"),
    ]
    for args, text in derrors:
        t.error(c.cmd("blockdev-snapshot-delete-internal-sync", **args), f"delete {args}", text)
    r = c.cmd("blockdev-snapshot-delete-internal-sync", device="q0", name="gone")
    v = r.get("return", {})
    t.eq(sorted(v), ["date-nsec", "date-sec", "id", "name", "vm-clock-nsec", "vm-clock-sec", "vm-state-size"],
         "delete returns the snapshot's members")
    t.eq((v.get("id"), v.get("name"), v.get("vm-state-size")), ("3", "gone", 0), "id 3, name gone, no vm state")
    r = c.cmd("blockdev-snapshot-delete-internal-sync", device="q0", id="2")
    t.eq(r.get("return", {}).get("name"), "s2", "delete by id 2 removes s2")
    p = run(["qemu-img", "snapshot", "-U", "-l", f"{w}/i.qcow2"])
    t.check(" s1 " in p.stdout and " s2 " not in p.stdout, "qemu-img snapshot -l -U (live): s1 only", p.stdout)


def after(t, w):
    t.section("after quit")
    for img in ("base.qcow2", "ov.qcow2", "i.qcow2"):
        p = run(["qemu-img", "check", f"{w}/{img}"])
        t.check(p.returncode == 0, f"qemu-img check {img}: no errors", p.stdout + p.stderr)
    ok, out = qio(["read -P 0x11 0 512k", "read -P 0x11 576k 1472k", "read -P 0x22 8M 1M", "read -P 0 10M 1M"],
                  f"{w}/base.qcow2")
    t.check(ok, "base.qcow2 holds only what was written before the snapshot", out)
    p = run(["qemu-img", "map", "--output=json", f"{w}/ov.qcow2"])
    t.check('"depth": 0' in p.stdout, "ov.qcow2 has data of its own", p.stdout[:300])
    ok, out = qio(["read -P 0x11 0 512k", "read -P 0x22 512k 64k", "read -P 0x11 576k 1472k",
                   "read -P 0x22 8M 1M", "read -P 0x33 10M 1M", "read -P 0 12M 4M"], f"{w}/ov.qcow2")
    t.check(ok, "ov.qcow2 (over base) reads old and new data", out)
    p = run(["qemu-img", "map", "--output=json", "-f", "qcow2", f"{w}/ov.qcow2"])
    t.check(p.returncode == 0, "qemu-img map ov.qcow2", p.stderr)
    info = run(["qemu-img", "info", "--output=json", f"{w}/ov.qcow2"]).stdout
    t.check('"backing-filename"' in info and "base.qcow2" in info, "ov.qcow2 still names base.qcow2", info[:300])
    ref = f"{w}/ref.raw"
    run(["qemu-img", "create", "-q", "-f", "raw", ref, "16M"], check=True)
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 2M", "-c", "write -P 0x22 512k 64k",
         "-c", "write -P 0x22 8M 1M", "-c", "write -P 0x33 10M 1M", ref], check=True)
    p = run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", f"{w}/ov.qcow2", ref])
    t.check(p.returncode == 0, "qemu-img compare ov.qcow2 with the reference: identical", p.stdout + p.stderr)
    p = run(["qemu-img", "snapshot", "-l", f"{w}/i.qcow2"])
    t.check(" s1 " in p.stdout and " s2 " not in p.stdout and " gone " not in p.stdout,
            "qemu-img snapshot -l: s1 only", p.stdout)
    p = run(["qemu-img", "convert", "-l", "snapshot.name=s1", "-O", "raw", f"{w}/i.qcow2", f"{w}/s1.raw"])
    t.check(p.returncode == 0, "qemu-img convert the snapshot s1", p.stderr)
    ok, out = qio(["read -P 0x44 0 1M", "read -P 0 1M 7M"], f"{w}/s1.raw", "raw")
    t.check(ok, "s1 holds the data at the time it was taken (0x44)", out)
    ok, out = qio(["read -P 0x55 0 1M"], f"{w}/i.qcow2")
    t.check(ok, "the active layer holds the later data (0x55)", out)


def oracle(t):
    t.section("oracle")

    def script_for(d):
        return [
            ("blockdev-add", {"driver": "qcow2", "node-name": "base",
                              "file": {"driver": "file", "filename": f"{d}/base.qcow2"}}),
            ("blockdev-add", {"driver": "qcow2", "node-name": "ov",
                              "file": {"driver": "file", "filename": f"{d}/ov.qcow2"}, "backing": None}),
            ("query-named-block-nodes", {"flat": True}),
            ("blockdev-snapshot", {"node": "base", "overlay": "ov"}),
            ("blockdev-snapshot", {"node": "base", "overlay": "ov"}),
            ("query-named-block-nodes", {}),
            ("blockdev-snapshot-internal-sync", {"device": "ov", "name": "a"}),
            ("blockdev-snapshot-internal-sync", {"device": "ov", "name": "a"}),
            ("blockdev-snapshot-internal-sync", {"device": "base", "name": "b"}),
            ("blockdev-snapshot-delete-internal-sync", {"device": "ov", "name": "a"}),
            ("blockdev-snapshot-delete-internal-sync", {"device": "ov", "name": "a"}),
        ]
    script = []

    def setup(d):
        make_images(d)
        script[:] = script_for(d)
    oracle_session(t, "external and internal snapshots", setup, [], script,
                   post=lambda d: run(["qemu-img", "info", "--output=json", f"{d}/ov.qcow2"]).stdout.count('"name"'))


def main():
    with Test("qmp-snapshot", budget=110) as t:
        w = t.work
        make_images(w)
        d = t.daemon([])
        c = d.connect()
        t.part(external, t, c, w)
        t.part(internal, t, c, w)
        t.stop(d, "daemon exits 0 on quit")
        t.part(after, t, w)
        t.part(oracle, t)


main()

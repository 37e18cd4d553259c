# tests/integration/qmp-graph.py -- building and changing the graph over
# QMP (run by qmp-graph.sh; QMP_TARGET=qsd runs it against
# qemu-storage-daemon):
#   blockdev-add: file, qcow2 over it, raw with an inline file (a generated
#     #block child), null-co, a --blockdev node; every error (duplicate,
#     invalid and too long node-name, none, unknown driver/option, missing
#     file, wrong format, unknown file reference, permission conflict) and
#     that a failed add leaves no node behind;
#   query-named-block-nodes: the members of each node (flat and not), and
#     the whole reply compared with QSD's after normalisation (oracle);
#   block_resize: grow a qcow2 and a raw node (and a file node), the
#     export's size follows; errors (not a multiple of 512, <= 0, unknown
#     node, device= naming a node, read-only, a driver without resize,
#     permission conflict); qemu-img info shows the sizes after quit;
#   blockdev-del: in use by a parent, by an export, not owned by the
#     monitor, unknown; success removes the node (and an inline child),
#     a --blockdev node can be deleted;
#   blockdev-reopen: read-only -> read-write (then a writable export
#     writes; qemu-img sees the data) and back; errors (unknown node,
#     driver change, unexpected/missing option, unknown child, read-write
#     user of a node going read-only, a read-only child).
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import (Test, dd, img_info, nodes, oracle_session, read_at, run,  # noqa: E402
                 wait_for)

M = 1 << 20
CONFLICT_ADD = ("Permission conflict on node 'f0': permissions 'write, resize' are both required by node "
                "'q0' (uses node 'f0' as 'file' child) and unshared by node 'q1' (uses node 'f0' as "
                "'file' child).")
CONFLICT_RESIZE = ("Permission conflict on node 'f0': permissions 'resize' are both required by an unnamed "
                   "block device (uses node 'f0' as 'root' child) and unshared by node 'q0' (uses node "
                   "'f0' as 'file' child).")


def make_images(w):
    run(["qemu-img", "create", "-q", "-f", "qcow2", f"{w}/a.qcow2", "16M"], check=True)
    run(["qemu-io", "-c", "write -P 0x11 0 1M", f"{w}/a.qcow2"], check=True)
    run(["qemu-img", "create", "-q", "-f", "raw", f"{w}/r.raw", "4M"], check=True)
    run(["qemu-img", "create", "-q", "-f", "raw", f"{w}/c.raw", "2M"], check=True)
    open(f"{w}/mp", "w").close()


def add(t, c, w):
    t.section("blockdev-add")
    t.ret(c.cmd("blockdev-add", driver="file", node_name="f0", filename=f"{w}/a.qcow2"), "file node f0")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="q0", file="f0"), "qcow2 node q0 over f0")
    t.ret(c.cmd("blockdev-add", driver="raw", node_name="r0",
                file={"driver": "file", "filename": f"{w}/r.raw"}), "raw node r0 with an inline file")
    t.ret(c.cmd("blockdev-add", driver="null-co", node_name="n0", size=M), "null-co node n0")
    before = sorted(nodes(c))
    errors = [
        ({"driver": "qcow2", "node-name": "q0", "file": "f0"}, "Duplicate nodes with node-name='q0'"),
        ({"driver": "file", "node-name": "f0", "filename": f"{w}/r.raw"}, "Duplicate nodes with node-name='f0'"),
        ({"driver": "file", "node-name": "1bad", "filename": f"{w}/r.raw"}, "Invalid node-name: '1bad'"),
        ({"driver": "file", "node-name": "a" * 32, "filename": f"{w}/r.raw"}, "Node name too long"),
        ({"driver": "file", "filename": f"{w}/r.raw"}, "'node-name' must be specified for the root node"),
        ({"driver": "file", "node-name": "m", "filename": f"{w}/missing"},
         f"Could not open '{w}/missing': No such file or directory"),
        ({"driver": "nulx", "node-name": "m"}, "Parameter 'driver' does not accept value 'nulx'"),
        ({"driver": "file", "node-name": "m", "filename": f"{w}/r.raw", "bogus": 1},
         "Parameter 'bogus' is unexpected"),
        ({"driver": "qcow2", "node-name": "m", "file": {"driver": "file", "filename": f"{w}/r.raw"}},
         "Image is not in qcow2 format"),
        ({"driver": "raw", "node-name": "m", "file": "nonode"}, "Cannot find device='nonode' nor node-name='nonode'"),
        ({"driver": "qcow2", "node-name": "q1", "file": "f0"}, CONFLICT_ADD),
    ]
    for args, text in errors:
        t.error(c.execute("blockdev-add", args), f"blockdev-add {args.get('node-name')}: {text[:50]}", text)
    t.eq(sorted(nodes(c)), before, "failed adds left no node behind")
    ns = nodes(c)
    auto = [n for n in ns if n.startswith("#block")]
    t.check(len(auto) == 1, "the inline file of r0 got a generated #block name", sorted(ns))
    q0, f0, r0 = ns.get("q0", {}), ns.get("f0", {}), ns.get("r0", {})
    t.eq((q0.get("drv"), q0.get("ro"), q0.get("file"), q0.get("backing_file_depth")),
         ("qcow2", False, f"{w}/a.qcow2", 0), "q0: drv, ro, file, backing_file_depth")
    img = q0.get("image", {})
    t.eq((img.get("format"), img.get("virtual-size"), img.get("cluster-size"), img.get("filename")),
         ("qcow2", 16 * M, 65536, f"{w}/a.qcow2"), "q0: image format, virtual-size, cluster-size, filename")
    t.eq((f0.get("drv"), f0.get("image", {}).get("virtual-size")), ("file", os.path.getsize(f"{w}/a.qcow2")),
         "f0: drv file, size of the host file")
    t.eq((r0.get("drv"), r0.get("image", {}).get("virtual-size")), ("raw", 4 * M), "r0: raw, 4 MiB")
    t.eq(ns.get("n0", {}).get("image", {}).get("virtual-size"), M, "n0: 1 MiB")
    t.eq(ns.get(auto[0] if auto else "", {}).get("drv"), "file", "the generated child is a file node")
    t.eq(ns.get("c0", {}).get("drv"), "file", "the --blockdev node c0 is listed")
    deep = nodes(c, flat=False)
    t.eq(sorted(deep), sorted(ns), "flat=false lists the same nodes")
    return auto[0] if auto else None


def resize(t, c, w):
    t.section("block_resize")
    t.ret(c.cmd("block-export-add", type="fuse", id="e0", node_name="q0", mountpoint=f"{w}/mp",
                writable=True), "export q0")
    t.ret(c.cmd("block_resize", node_name="q0", size=32 * M), "grow qcow2 q0 to 32 MiB")
    t.eq(nodes(c).get("q0", {}).get("image", {}).get("virtual-size"), 32 * M, "query shows 32 MiB")
    t.check(wait_for(lambda: os.path.getsize(f"{w}/mp") == 32 * M, 3), "the export shows 32 MiB",
            os.path.getsize(f"{w}/mp"))
    t.ret(c.cmd("block_resize", node_name="r0", size=8 * M), "grow raw r0 to 8 MiB")
    t.eq(nodes(c).get("r0", {}).get("image", {}).get("virtual-size"), 8 * M, "query shows 8 MiB")
    t.ret(c.cmd("block_resize", node_name="c0", size=3 * M), "grow file node c0 to 3 MiB")
    errors = [
        ({"node-name": "q0", "size": 100}, "The new size must be a multiple of 512"),
        ({"node-name": "q0", "size": -1}, "Parameter 'size' expects a >0 size"),
        ({"node-name": "zz", "size": M}, "Cannot find device='' nor node-name='zz'"),
        ({"device": "q0", "size": M}, "Cannot find device='q0' nor node-name=''"),
        ({"size": M}, "Cannot find device='' nor node-name=''"),
        ({"node-name": "ro0", "size": 8 * M}, "Image is read-only"),
        ({"node-name": "n0", "size": 8 * M}, "Image format driver does not support resize"),
        ({"node-name": "f0", "size": 64 * M}, CONFLICT_RESIZE),
    ]
    t.ret(c.cmd("blockdev-add", driver="file", node_name="ro0", filename=f"{w}/r.raw", read_only=True),
          "read-only file node ro0")
    for args, text in errors:
        t.error(c.execute("block_resize", args), f"block_resize {args}", text)
    t.eq(nodes(c).get("q0", {}).get("image", {}).get("virtual-size"), 32 * M, "q0 still 32 MiB")
    data = os.urandom(64 * 1024)
    with open("data", "wb") as f:
        f.write(data)
    p = dd("data", f"{w}/mp", off=31 * M)
    t.check(p.returncode == 0, "write into the grown area through the export", p.stderr)
    t.eq(read_at(f"{w}/mp", 31 * M, len(data)), data, "read back")
    if t.ret(c.cmd("block-export-del", id="e0"), "delete the export"):
        c.wait_event("BLOCK_EXPORT_DELETED")


def delete(t, c, w, auto):
    t.section("blockdev-del")
    t.ret(c.cmd("block-export-add", type="fuse", id="e1", node_name="q0", mountpoint=f"{w}/mp"), "export q0")
    t.error(c.cmd("blockdev-del", node_name="q0"), "q0 (exported)", "Node q0 is in use")
    t.error(c.cmd("blockdev-del", node_name="f0"), "f0 (the file child of q0)", "Block device f0 is in use")
    t.error(c.cmd("blockdev-del", node_name="zz"), "unknown node", "Failed to find node with node-name='zz'")
    if auto:
        t.error(c.cmd("blockdev-del", node_name=auto), "the generated child",
                f"Node {auto} is not owned by the monitor")
    if t.ret(c.cmd("block-export-del", id="e1"), "delete the export"):
        c.wait_event("BLOCK_EXPORT_DELETED")
    t.ret(c.cmd("blockdev-del", node_name="q0"), "q0 once unexported")
    t.ret(c.cmd("blockdev-del", node_name="f0"), "f0 once q0 is gone")
    t.ret(c.cmd("blockdev-del", node_name="r0"), "r0")
    t.ret(c.cmd("blockdev-del", node_name="c0"), "the --blockdev node c0")
    t.eq(sorted(nodes(c)), ["n0", "ro0"], "only n0 and ro0 remain (r0's inline child went with it)")
    t.error(c.cmd("blockdev-del", node_name="q0"), "q0 again", "Failed to find node with node-name='q0'")


def reopen(t, c, w):
    t.section("blockdev-reopen")
    fopts = {"driver": "file", "node-name": "f0", "filename": f"{w}/a.qcow2"}
    t.ret(c.cmd("blockdev-add", read_only=True, **{k.replace("-", "_"): v for k, v in fopts.items()}),
          "read-only f0")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="q0", file="f0", read_only=True), "read-only q0")
    t.error(c.cmd("block-export-add", type="fuse", id="e2", node_name="q0", mountpoint=f"{w}/mp",
                  writable=True), "writable export of a read-only node",
            "Cannot export read-only node as writable")
    t.error(c.cmd("blockdev-reopen", options=[{"driver": "qcow2", "node-name": "q0", "file": "f0",
                                               "read-only": False}]),
            "q0 read-write over a read-only f0", "Block node is read-only")
    t.eq(nodes(c).get("q0", {}).get("ro"), True, "q0 still read-only")
    t.ret(c.cmd("blockdev-reopen", options=[dict(fopts, **{"read-only": False}),
                                            {"driver": "qcow2", "node-name": "q0", "file": "f0",
                                             "read-only": False}]), "f0 and q0 read-write at once")
    ns = nodes(c)
    t.eq((ns.get("q0", {}).get("ro"), ns.get("f0", {}).get("ro")), (False, False), "both read-write now")
    t.ret(c.cmd("block-export-add", type="fuse", id="e2", node_name="q0", mountpoint=f"{w}/mp",
                writable=True), "writable export now")
    with open("pat", "wb") as f:
        f.write(b"\x5a" * 65536)
    p = dd("pat", f"{w}/mp", off=2 * M)
    t.check(p.returncode == 0, "write through it", p.stderr)
    errors = [
        ([{"driver": "qcow2", "node-name": "q0", "file": "f0", "read-only": True}],
         "Read-only block node 'q0' cannot support read-write users"),
        ([{"driver": "qcow2", "node-name": "nonode", "file": "f0"}],
         "Failed to find node with node-name='nonode'"),
        ([{"driver": "raw", "node-name": "q0", "file": "f0"}], "Cannot change the option 'driver'"),
        ([{"driver": "qcow2", "node-name": "q0", "file": "f0", "bogus": 1}],
         "Parameter 'options[0].bogus' is unexpected"),
        ([{"driver": "qcow2", "node-name": "q0"}], "Parameter 'options[0].file' is missing"),
        ([{"driver": "qcow2", "node-name": "q0", "file": "nonode"}],
         "Cannot find device='' nor node-name='nonode'"),
    ]
    for opts, text in errors:
        t.error(c.cmd("blockdev-reopen", options=opts), f"reopen: {text[:50]}", text)
    t.eq((nodes(c).get("q0", {}).get("ro")), False, "q0 still read-write after the failures")
    if t.ret(c.cmd("block-export-del", id="e2"), "delete the writable export"):
        c.wait_event("BLOCK_EXPORT_DELETED")
    t.ret(c.cmd("blockdev-reopen", options=[{"driver": "qcow2", "node-name": "q0", "file": "f0",
                                             "read-only": True}, dict(fopts, **{"read-only": True})]),
          "both back to read-only")
    ns = nodes(c)
    t.eq((ns.get("q0", {}).get("ro"), ns.get("f0", {}).get("ro")), (True, True), "both read-only now")
    p = run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x5a 2M 64k", f"{w}/a.qcow2"])
    t.check(p.returncode == 0 and "Pattern verification failed" not in p.stdout,
            "qemu-io (sharing the read-only image) reads what the export wrote", p.stdout + p.stderr)


def after(t, w):
    t.section("after quit")
    t.eq(img_info(f"{w}/a.qcow2").get("virtual-size"), 32 * M, "qemu-img info: a.qcow2 is 32 MiB")
    t.eq(img_info(f"{w}/r.raw").get("virtual-size"), 8 * M, "qemu-img info: r.raw is 8 MiB")
    t.eq(os.path.getsize(f"{w}/c.raw"), 3 * M, "c.raw is 3 MiB")
    p = run(["qemu-img", "check", f"{w}/a.qcow2"])
    t.check(p.returncode == 0, "qemu-img check a.qcow2: no errors", p.stdout + p.stderr)
    p = run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x5a 2M 64k",
             "-c", "read -P 0 4M 1M", f"{w}/a.qcow2"])
    t.check(p.returncode == 0 and "Pattern verification failed" not in p.stdout,
            "qemu-io: old data, the written pattern and zeros where expected", p.stdout + p.stderr)


def oracle(t):
    t.section("oracle")
    script = [
        ("blockdev-add", {"driver": "qcow2", "node-name": "q0",
                          "file": {"driver": "file", "filename": "WORK/a.qcow2"}}),
        ("blockdev-add", {"driver": "raw", "node-name": "r0", "file": "c0"}),
        ("blockdev-add", {"driver": "file", "node-name": "ro", "filename": "WORK/r.raw", "read-only": True}),
        ("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": M}),
        ("query-named-block-nodes", {}),
        ("query-named-block-nodes", {"flat": True}),
        ("block_resize", {"node-name": "q0", "size": 20 * M}),
        ("block_resize", {"node-name": "r0", "size": 5 * M}),
        ("block_resize", {"node-name": "q0", "size": 1000}),
        ("blockdev-del", {"node-name": "c0"}),
        ("blockdev-del", {"node-name": "r0"}),
        ("query-named-block-nodes", {"flat": True}),
        ("blockdev-reopen", {"options": [{"driver": "null-co", "node-name": "n0", "size": M,
                                          "read-only": True}]}),
        ("query-named-block-nodes", {"flat": False}),
    ]

    def setup(d):
        make_images(d)
        for i, (n, a) in enumerate(script):
            script[i] = (n, _subst(a, d))
    base = list(script)

    def setup_fresh(d):
        script[:] = base
        setup(d)
    oracle_session(t, "add, query, resize, delete, reopen", setup_fresh,
                   ["--blockdev", "driver=file,node-name=c0,filename=c.raw"], script,
                   post=lambda d: [img_info(f"{d}/a.qcow2").get("virtual-size"), os.path.getsize(f"{d}/c.raw")])


def _subst(v, d):
    if isinstance(v, dict):
        return {k: _subst(x, d) for k, x in v.items()}
    if isinstance(v, list):
        return [_subst(x, d) for x in v]
    if isinstance(v, str):
        return v.replace("WORK", d)
    return v


def main():
    with Test("qmp-graph", budget=110) as t:
        w = t.work
        make_images(w)
        d = t.daemon(["--blockdev", f"driver=file,node-name=c0,filename={w}/c.raw"])
        c = d.connect()
        auto = t.part(add, t, c, w)
        t.part(resize, t, c, w)
        t.part(delete, t, c, w, auto)
        t.part(reopen, t, c, w)
        t.stop(d, "daemon exits 0 on quit")
        t.part(after, t, w)
        t.part(oracle, t)


main()

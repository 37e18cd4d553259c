# tests/integration/qmp-exports.py -- FUSE exports and iothread objects
# over QMP (run by qmp-exports.sh; QMP_TARGET=qsd runs it against
# qemu-storage-daemon):
#   block-export-add type=fuse: the mount appears, holds the node's data
#     (written beforehand by qemu-io) and size; a writable one takes
#     writes (qemu-io reads them after quit); growable; errors (duplicate
#     id, invalid id, unknown node, mountpoint in use / missing / not
#     given, unknown type, unexpected member, nbd without an NBD server
#     running, unknown iothread);
#   query-block-exports: exact members;
#   block-export-del mode=safe (also with a file open on the mount) and
#     mode=hard: {} then BLOCK_EXPORT_DELETED {id} on every monitor (not
#     to a client still negotiating), the
#     mount is gone, the id is free again; errors (unknown, twice);
#   quit with exports still present unmounts them and exits 0;
#   object-add/object-del iothread: properties, errors (duplicate id,
#     unknown property, bad value, unknown type, invalid id, unknown id);
#     an export on an iothread works; deleting an iothread an export uses
#     is refused (ours only: QSD 7.2 aborts on it); --object iothread;
#   query-iothreads (ours only; QSD has no such command).
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, dd, mounted, read_at, run, wait_for  # noqa: E402

M = 1 << 20


def make_images(w):
    run(["qemu-img", "create", "-q", "-f", "qcow2", f"{w}/a.qcow2", "16M"], check=True)
    run(["qemu-io", "-c", "write -P 0x31 0 1M", "-c", "write -P 0x32 15M 1M", f"{w}/a.qcow2"], check=True)
    run(["qemu-img", "create", "-q", "-f", "raw", f"{w}/g.raw", "1M"], check=True)
    for m in ("mp", "mp2", "mp3", "mpg"):
        open(f"{w}/{m}", "w").close()


def exports(t, c, c1, c2, w):
    t.section("block-export-add")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="q0",
                file={"driver": "file", "filename": f"{w}/a.qcow2"}), "add q0")
    t.ret(c.cmd("block-export-add", type="fuse", id="e0", node_name="q0", mountpoint=f"{w}/mp"),
          "read-only export e0")
    t.check(mounted(f"{w}/mp"), "the mount appears")
    t.eq(os.path.getsize(f"{w}/mp"), 16 * M, "its size is the node's")
    t.check(read_at(f"{w}/mp", 0, M) == b"\x31" * M and read_at(f"{w}/mp", 15 * M, M) == b"\x32" * M,
            "it holds the node's data")
    t.check(read_at(f"{w}/mp", 4 * M, 4096) == bytes(4096), "zeros where nothing was written")
    p = dd("/dev/zero", f"{w}/mp", off=0, length=4096)
    t.check(p.returncode != 0, "a read-only export refuses writes", p.stderr)
    t.ret(c.cmd("block-export-add", type="fuse", id="e1", node_name="q0", mountpoint=f"{w}/mp2", writable=True),
          "writable export e1 of the same node")
    with open("pat", "wb") as f:
        f.write(b"\x77" * 65536)
    t.check(dd("pat", f"{w}/mp2", off=2 * M).returncode == 0, "write through e1")
    t.eq(read_at(f"{w}/mp", 2 * M, 65536), b"\x77" * 65536, "e0 sees e1's write")
    errors = [
        ({"type": "fuse", "id": "e0", "node-name": "q0", "mountpoint": f"{w}/mp3"},
         "Block export id 'e0' is already in use"),
        ({"type": "fuse", "id": "1x", "node-name": "q0", "mountpoint": f"{w}/mp3"}, "Invalid block export id"),
        ({"type": "fuse", "id": "e9", "node-name": "nonode", "mountpoint": f"{w}/mp3"},
         "Cannot find device='' nor node-name='nonode'"),
        ({"type": "fuse", "id": "e9", "node-name": "q0", "mountpoint": f"{w}/mp"},
         f"There already is a FUSE export on '{w}/mp'"),
        ({"type": "fuse", "id": "e9", "node-name": "q0", "mountpoint": f"{w}/none"},
         f"Failed to stat '{w}/none': No such file or directory"),
        ({"type": "fuse", "id": "e9", "node-name": "q0"}, "Parameter 'mountpoint' is missing"),
        ({"type": "bogus", "id": "e9", "node-name": "q0"}, "Parameter 'type' does not accept value 'bogus'"),
        ({"type": "fuse", "id": "e9", "node-name": "q0", "mountpoint": f"{w}/mp3", "bogus": True},
         "Parameter 'bogus' is unexpected"),
        ({"type": "nbd", "id": "e9", "node-name": "q0"}, "NBD server not running"),
        ({"type": "fuse", "id": "e9", "node-name": "q0", "mountpoint": f"{w}/mp3", "iothread": "nope"},
         'iothread "nope" not found'),
    ]
    for args, text in errors:
        t.error(c.execute("block-export-add", args), f"block-export-add: {text[:50]}", text)
    t.check(not mounted(f"{w}/mp3"), "no failed add left a mount")
    t.ret(c.cmd("blockdev-add", driver="raw", node_name="g0",
                file={"driver": "file", "filename": f"{w}/g.raw"}), "add raw g0 (1 MiB)")
    t.ret(c.cmd("block-export-add", type="fuse", id="eg", node_name="g0", mountpoint=f"{w}/mpg",
                writable=True, growable=True), "growable export of g0")
    t.check(dd("pat", f"{w}/mpg", off=2 * M).returncode == 0, "write past the end")
    t.check(wait_for(lambda: os.path.getsize(f"{w}/g.raw") == 2 * M + 65536, 3), "g.raw grew",
            os.path.getsize(f"{w}/g.raw"))
    t.section("query-block-exports")
    r = c.cmd("query-block-exports").get("return", [])
    t.eq(sorted(r, key=lambda e: e.get("id")),
         [{"id": "e0", "type": "fuse", "node-name": "q0", "shutting-down": False},
          {"id": "e1", "type": "fuse", "node-name": "q0", "shutting-down": False},
          {"id": "eg", "type": "fuse", "node-name": "g0", "shutting-down": False}], "three exports")

    t.section("block-export-del")
    holder = subprocess.Popen(["bash", "-c", f"exec 3<'{w}/mp'; sleep 2"])
    time.sleep(0.3)
    t.ret(c.cmd("block-export-del", id="e0"), "safe delete of e0 (a file open on it)")
    ev = c.wait_event("BLOCK_EXPORT_DELETED")
    t.eq(ev.get("data"), {"id": "e0"}, "BLOCK_EXPORT_DELETED {id: e0}")
    t.check(isinstance(ev.get("timestamp", {}).get("seconds"), int)
            and isinstance(ev["timestamp"].get("microseconds"), int)
            and abs(ev["timestamp"]["seconds"] - time.time()) < 60, "the event has a wall-clock timestamp", ev)
    t.eq(c1.wait_event("BLOCK_EXPORT_DELETED").get("data"), {"id": "e0"}, "the other monitor gets it too")
    t.check(c2.quiet(0.3), "a client still in negotiation mode gets no event")
    t.check(wait_for(lambda: not mounted(f"{w}/mp"), 5), "e0's mount is gone")
    holder.wait(10)
    t.eq(sorted(e.get("id") for e in c.cmd("query-block-exports").get("return", [])), ["e1", "eg"],
         "e1 and eg remain")
    t.error(c.cmd("block-export-del", id="e0"), "e0 again", "Export 'e0' is not found")
    t.error(c.cmd("block-export-del", id="nope"), "unknown export", "Export 'nope' is not found")
    t.ret(c.cmd("block-export-add", type="fuse", id="e0", node_name="q0", mountpoint=f"{w}/mp"),
          "the id and mountpoint can be used again")
    t.ret(c.cmd("block-export-del", id="e1", mode="hard"), "hard delete of e1")
    t.eq(c.wait_event("BLOCK_EXPORT_DELETED").get("data"), {"id": "e1"}, "BLOCK_EXPORT_DELETED {id: e1}")
    t.check(wait_for(lambda: not mounted(f"{w}/mp2"), 5), "e1's mount is gone")
    t.check(c.quiet(0.3) and not c.events, "no other event")
    t.eq(sorted(e.get("id") for e in c.cmd("query-block-exports").get("return", [])), ["e0", "eg"],
         "e0 and eg remain")


def objects(t, c, w):
    t.section("object-add / object-del")
    t.ret(c.cmd("object-add", qom_type="iothread", id="io1"), "iothread io1")
    t.ret(c.cmd("object-add", qom_type="iothread", id="io2", poll_max_ns=1000, poll_grow=2, poll_shrink=3,
                aio_max_batch=4), "iothread io2 with properties")
    errors = [
        ({"qom-type": "iothread", "id": "io1"}, "attempt to add duplicate property 'io1' to object (type 'container')"),
        ({"qom-type": "iothread", "id": "io0"}, "attempt to add duplicate property 'io0' to object (type 'container')"),
        ({"qom-type": "iothread", "id": "io3", "bogus": 1}, "Parameter 'bogus' is unexpected"),
        ({"qom-type": "iothread", "id": "io3", "poll-max-ns": -1},
         "poll-max-ns value must be in range [0, 9223372036854775807]"),
        ({"qom-type": "nonexist", "id": "x"}, "Parameter 'qom-type' does not accept value 'nonexist'"),
        ({"qom-type": "iothread", "id": "1bad"}, "Parameter 'id' expects an identifier"),
        ({"qom-type": "iothread"}, "Parameter 'id' is missing"),
    ]
    for args, text in errors:
        t.error(c.execute("object-add", args), f"object-add: {text[:50]}", text)
    t.error(c.cmd("object-del", id="nonexist"), "object-del unknown", "object 'nonexist' not found")
    t.ret(c.cmd("object-del", id="io1"), "object-del io1")
    t.error(c.cmd("object-del", id="io1"), "object-del io1 again", "object 'io1' not found")
    t.ret(c.cmd("block-export-add", type="fuse", id="e3", node_name="q0", mountpoint=f"{w}/mp3", writable=True,
                iothread="io2"), "export e3 on iothread io2")
    with open("pat2", "wb") as f:
        f.write(b"\x78" * 65536)
    t.check(dd("pat2", f"{w}/mp3", off=3 * M).returncode == 0, "write through e3")
    t.eq(read_at(f"{w}/mp3", 3 * M, 65536), b"\x78" * 65536, "read back through e3")
    if t.ours():
        t.error(c.cmd("object-del", id="io2"), "object-del of an iothread in use (ours only)",
                "object 'io2' is in use, can not be deleted")
    else:
        print("  (object-del of an iothread in use: skipped against qemu-storage-daemon 7.2, which aborts)")
    t.section("query-iothreads")
    r = c.cmd("query-iothreads")
    if t.ours():
        got = sorted(r.get("return", []), key=lambda x: x.get("id"))
        t.eq([sorted(x) for x in got], [["aio-max-batch", "id", "poll-grow", "poll-max-ns", "poll-shrink",
                                         "thread-id"]] * 2, "members of each iothread (ours only)")
        t.eq([(x.get("id"), x.get("poll-max-ns"), x.get("poll-grow"), x.get("poll-shrink"), x.get("aio-max-batch"))
              for x in got], [("io0", 5000, 0, 0, 0), ("io2", 1000, 2, 3, 4)],
             "io0 (--object) and io2 report their properties")
        t.check(all(isinstance(x.get("thread-id"), int) and os.path.exists(f"/proc/{x['thread-id']}")
                    for x in got), "thread-id names a live thread", got)
    else:
        t.error(r, "query-iothreads: QSD has none", "The command query-iothreads has not been found",
                "CommandNotFound")
    if t.ret(c.cmd("block-export-del", id="e3"), "delete e3"):
        c.wait_event("BLOCK_EXPORT_DELETED")
    t.ret(c.cmd("object-del", id="io2"), "object-del io2 once unused")
    t.ret(c.cmd("object-del", id="io0"), "object-del io0 (from --object)")


def main():
    with Test("qmp-exports", budget=110) as t:
        w = t.work
        make_images(w)
        d = t.daemon(["--object", "iothread,id=io0,poll-max-ns=5000"], monitors=("mon0", "mon1", "mon2"))
        c = d.connect()
        c1 = d.connect("mon1")
        c2 = d.connect("mon2", negotiate=False)
        t.part(exports, t, c, c1, c2, w)
        t.part(objects, t, c, w)
        t.stop(d, "quit with exports e0 and eg present: exit 0")
        t.check(not mounted(f"{w}/mp") and not mounted(f"{w}/mpg"), "their mounts are gone")
        p = run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x31 0 1M", "-c", "read -P 0x77 2M 64k",
                 "-c", "read -P 0x78 3M 64k", "-c", "read -P 0x32 15M 1M", f"{w}/a.qcow2"])
        t.check(p.returncode == 0 and "verification failed" not in p.stdout,
                "qemu-io: the writes through the exports are in the image", p.stdout + p.stderr)
        p = run(["qemu-img", "check", f"{w}/a.qcow2"])
        t.check(p.returncode == 0, "qemu-img check: no errors", p.stdout + p.stderr)


main()

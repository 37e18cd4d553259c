# tests/integration/nbd-server-qmp.py -- the NBD server over QMP (run by
# nbd-server-qmp.sh; QMP_TARGET=qsd runs it against qemu-storage-daemon):
#   nbd-server-start (SocketAddressLegacy addr, as QSD takes it) /
#   nbd-server-stop and their errors (not running, already running, unknown
#   tls-creds, bad max-connections); block-export-add type=nbd and its
#   errors (no server, id in use, name in use, description too long,
#   missing bitmaps by name and by node/name); query-block-exports;
#   block_resize of an exported node is refused (the export took RESIZE);
#   nbdinfo --json on the export; block-export-del mode=safe refused while
#   a client is connected ("export 'e1' still in use"), mode=hard drops it;
#   nbd-server-stop deletes the remaining NBD exports (BLOCK_EXPORT_DELETED
#   each). The whole session is compared with QSD's (oracle_session).
#   Ours only: the flat addr form of --nbd-server also in nbd-server-start.
import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, oracle_session, run  # noqa: E402


def make_images(w):
    run(["qemu-img", "create", "-q", "-f", "qcow2", f"{w}/a.qcow2", "4M"], check=True)
    run(["qemu-io", "-c", "write -P 0x31 0 1M", f"{w}/a.qcow2"], check=True)
    run(["qemu-img", "bitmap", "--add", f"{w}/a.qcow2", "b0"], check=True)


def blockdevs(w):
    return ["--blockdev", f"driver=file,filename={w}/a.qcow2,node-name=f0",
            "--blockdev", "driver=qcow2,file=f0,node-name=q0"]


def recv_exact(s, n):
    """n bytes from s. A socket with a timeout is non-blocking underneath,
    where MSG_WAITALL may return short: read until all have come."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


class Holder:
    """A raw NBD client that negotiates (GO) and stays connected."""

    def __init__(self):
        self.s = None

    def connect(self, path, name):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        recv_exact(s, 18)
        s.sendall(struct.pack(">I", 3))
        data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
        s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
        while True:
            _, _, typ, ln = struct.unpack(">QIII", recv_exact(s, 20))
            if ln:
                recv_exact(s, ln)
            if typ == 1 or typ & 0x80000000:
                break
        self.s = s
        return {"go-reply": typ}

    def closed(self):
        self.s.settimeout(10)
        try:
            return {"closed-by-server": self.s.recv(1) == b""}
        except OSError as e:
            return {"closed-by-server": True, "how": type(e).__name__}


def export_gone(c, export_id):
    """Waits (10 s at most) until query-block-exports no longer lists
    export_id: a hard-deleted export finishes shutting down once its clients
    are gone, which each daemon does in its own time."""
    deadline = time.monotonic() + 10
    while True:
        exports = c.execute("query-block-exports", {}).get("return", [])
        if not any(e.get("id") == export_id for e in exports):
            return {"gone": export_id}
        if time.monotonic() > deadline:
            return {"still-listed": export_id}
        time.sleep(0.05)


def nbdinfo(path, name):
    p = run(["nbdinfo", "--json", f"nbd+unix:///{name}?socket={path}"])
    if p.returncode != 0:
        return {"nbdinfo-failed": p.stderr.strip()}
    info = json.loads(p.stdout)
    for e in info.get("exports", []):
        e.pop("uri", None)
    return info


def oracle(t):
    holder = Holder()

    def setup(d):
        make_images(d)

    def sock(c):
        return os.path.join(os.getcwd(), "nbd.sock")

    long_desc = "x" * 4097
    script = [
        ("nbd-server-stop", {}),
        ("block-export-add", {"type": "nbd", "id": "e1", "node-name": "q0"}),
        lambda c: c.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock(c)}},
                                                 "tls-creds": "nope"}),
        lambda c: c.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock(c)}},
                                                 "max-connections": -1}),
        lambda c: c.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock(c)}}}),
        lambda c: c.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock(c)}}}),
        ("block-export-add", {"type": "nbd", "id": "e1", "node-name": "q0", "description": "first"}),
        ("block-export-add", {"type": "nbd", "id": "e1", "node-name": "q0", "name": "other"}),
        ("block-export-add", {"type": "nbd", "id": "e2", "node-name": "q0"}),
        ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "q0", "name": "x", "description": long_desc}),
        ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "q0", "name": "x", "bitmaps": ["nob"]}),
        ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "q0", "name": "x",
                              "bitmaps": [{"node": "q0", "name": "nob"}]}),
        ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "nope"}),
        ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "q0", "name": "b", "bitmaps": ["b0"],
                              "allocation-depth": True}),
        ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "q0", "name": "b", "bitmaps": ["b0"],
                              "allocation-depth": True, "writable": True}),
        ("block-export-add", {"type": "nbd", "id": "e4", "node-name": "q0", "name": "w", "writable": True}),
        ("block-dirty-bitmap-remove", {"node": "q0", "name": "b0"}),
        ("query-block-exports", {}),
        ("block_resize", {"node-name": "q0", "size": 8 << 20}),
        lambda c: nbdinfo(sock(c), "q0"),
        lambda c: nbdinfo(sock(c), "b"),
        lambda c: nbdinfo(sock(c), "w"),
        lambda c: holder.connect(sock(c), "q0"),
        ("block-export-del", {"id": "e1"}),
        ("block-export-del", {"id": "e1", "mode": "hard"}),
        lambda c: holder.closed(),
        lambda c: export_gone(c, "e1"),
        ("block-export-del", {"id": "e1"}),
        ("query-block-exports", {}),
        ("nbd-server-stop", {}),
        ("query-block-exports", {}),
        ("nbd-server-stop", {}),
        lambda c: {"socket-removed": not os.path.exists(sock(c))},
        lambda c: c.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock(c)}}}),
        ("block-export-add", {"type": "nbd", "id": "e1", "node-name": "q0"}),
        lambda c: nbdinfo(sock(c), "q0").get("exports", [{}])[0].get("export-size"),
    ]
    oracle_session(t, "nbd-server-start/stop, block-export-add/del type=nbd", setup,
                   blockdevs("."), script)


def ours_only(t):
    """The flat SocketAddress in nbd-server-start (QSD 7.2 takes only the
    legacy form there)."""
    if not t.ours():
        return
    w = t.work
    make_images(w)
    d = t.daemon(blockdevs(w))
    c = d.connect()
    path = f"{w}/flat.sock"
    t.ret(c.cmd("nbd-server-start", addr={"type": "unix", "path": path}), "nbd-server-start, flat addr")
    t.ret(c.cmd("block-export-add", type="nbd", id="e", node_name="q0", name="n"), "export n")
    p = run(["nbdinfo", "--size", f"nbd+unix:///n?socket={path}"])
    t.eq(p.stdout.strip(), str(4 << 20), "nbdinfo --size through it")
    t.error(c.cmd("nbd-server-start", addr={"type": "unix", "path": path}), "a second start",
            "NBD server already running")
    t.ret(c.cmd("nbd-server-stop"), "nbd-server-stop")
    t.error(c.cmd("nbd-server-start", addr={"type": "unix"}), "no path", "Parameter 'addr.path' is missing")
    t.error(c.cmd("nbd-server-start", addr={"type": "vsock", "cid": "1", "port": "2"}), "vsock",
            "Parameter 'addr.type' does not accept value 'vsock'")
    t.stop(d)


def main():
    with Test("nbd-server-qmp", budget=110) as t:
        t.part(oracle, t)
        t.part(ours_only, t)


main()

# tests/integration/qmp-protocol.py -- the QMP wire protocol of the daemon
# (run by qmp-protocol.sh; QMP_TARGET=qsd runs it against
# qemu-storage-daemon, which it must pass too):
#   greeting shape; negotiation mode (CommandNotFound texts, no other
#   command runs, argument errors of qmp_capabilities); repeated
#   qmp_capabilities; ids echoed verbatim (string, numbers, bool, null,
#   object, array); structural errors (non-object input, lacking or
#   non-string execute, arguments not an object, unexpected members,
#   exec-oob without oob); unknown command; argument errors (wrong type,
#   unexpected, missing, bad enum value, negative size); malformed JSON
#   (each parse error text, the monitor stays alive, 0x01 resynchronises
#   after a partial message, 0xFF and stray bytes); several objects in one
#   write, whitespace between them; an oversized message (blockgraph only:
#   QSD's limit is 64 MiB of token text, too slow to reach in a test);
#   a client disconnecting mid-message and the next client getting a fresh
#   greeting; a second client waiting until the first leaves; two
#   monitors at once; pretty=on output, byte for byte; a stdio monitor
#   (greeting and replies on stdout, CRLF) and a TCP one (host=, port=);
#   command-line errors of --monitor/--chardev (exit 1, QSD's text).
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Client, Daemon, QMPError, Test, daemon_argv, err  # noqa: E402

GE = "GenericError"
CNF = "CommandNotFound"
NEG = "Expecting capabilities negotiation with 'qmp_capabilities'"


def drain(c, t=0.5):
    """Every message arriving until T seconds pass without one."""
    out = []
    while True:
        try:
            out.append(c.recv(t))
        except QMPError as e:
            if "timed out" in str(e):
                return out
            raise


def perr(text):
    return {"error": {"class": GE, "desc": text}}


def greeting(t, d):
    t.section("greeting")
    c = d.connect(negotiate=False)
    g = c.greeting
    t.eq(sorted(g), ["QMP"], "greeting has one member QMP")
    q = g.get("QMP", {})
    t.eq(sorted(q), ["capabilities", "version"], "QMP has version and capabilities")
    v = q.get("version", {})
    t.eq(sorted(v), ["package", "qemu"], "version has qemu and package")
    t.check(isinstance(v.get("package"), str), "package is a string")
    qv = v.get("qemu", {})
    t.check(sorted(qv) == ["major", "micro", "minor"] and all(isinstance(x, int) for x in qv.values()),
            "qemu has integer major/minor/micro", qv)
    caps = q.get("capabilities")
    t.check(isinstance(caps, list) and set(caps) <= {"oob"}, "capabilities is a list (at most oob)", caps)
    t.check(c.raw.endswith(b"}\r\n") and c.raw.count(b"\n") == 1, "greeting is one line ending CRLF", c.raw)
    t.check(b'": ' in c.raw and b'":"' not in c.raw and b'","' not in c.raw and b'},{' not in c.raw,
            "greeting separators are ': ' and ', '", c.raw[:60])
    return c, v


def negotiation(t, c, version):
    t.section("negotiation mode")
    t.error(c.execute("query-version"), "query-version before qmp_capabilities", NEG, CNF)
    t.eq(c.execute("nope", id=1), {"id": 1, "error": {"class": CNF, "desc": NEG}},
         "unknown command before qmp_capabilities (id echoed)")
    t.error(c.execute("quit"), "quit is refused before qmp_capabilities", NEG, CNF)
    t.error(c.execute("qmp_capabilities", {"x": 1}), "qmp_capabilities: unexpected argument",
            "Parameter 'x' is unexpected")
    t.error(c.execute("qmp_capabilities", {"enable": "oob"}), "qmp_capabilities: enable not an array",
            "Invalid parameter type for 'enable', expected: array")
    t.eq(c.execute("qmp_capabilities", {"enable": []}, id="neg"), {"return": {}, "id": "neg"},
         "qmp_capabilities with enable: [] succeeds")
    t.error(c.execute("qmp_capabilities"), "repeated qmp_capabilities",
            "Capabilities negotiation is already complete, command ignored", CNF)
    r = c.execute("query-version")
    t.eq(r, {"return": version}, "query-version now runs, same version as the greeting")


def ids(t, c):
    t.section("ids echoed verbatim")
    for v in ["x", "", "\u00e9\u4e2d", 0, -3, 7, 2 ** 53, 1.5, True, False, None,
              {"a": [1, {"b": None}], "c": "d"}, [], [1, "two", [3]]]:
        c.send_raw(json.dumps({"execute": "query-version", "id": v}))
        r = c.recv_reply()
        t.check("return" in r and "id" in r and r["id"] == v and type(r["id"]) is type(v),
                f"id {v!r} echoed", r)
    r = c.execute("nope", id={"k": [1]})
    t.eq(r.get("id"), {"k": [1]}, "id echoed on an error reply")
    c.send_raw(b"{'execute': 'query-version', 'id': 'sq'}")
    t.eq(c.recv_reply().get("id"), "sq", "single-quoted strings are accepted")


def structure(t, c):
    t.section("structural errors")
    cases = [
        (b"[1]", perr("QMP input must be a JSON object"), "array input"),
        (b'"str"', perr("QMP input must be a JSON object"), "string input"),
        (b"42 ", perr("QMP input must be a JSON object"), "number input"),
        (b"null ", perr("QMP input must be a JSON object"), "null input"),
        (b'{"arguments": {}}', perr("QMP input lacks member 'execute'"), "lacking execute"),
        (b'{"id": 7}', {"id": 7, "error": {"class": GE, "desc": "QMP input lacks member 'execute'"}},
         "lacking execute (id echoed)"),
        (b'{"execute": 1}', perr("QMP input member 'execute' must be a string"), "execute not a string"),
        (b'{"execute": "query-version", "arguments": []}',
         perr("QMP input member 'arguments' must be an object"), "arguments an array"),
        (b'{"execute": "query-version", "arguments": null}',
         perr("QMP input member 'arguments' must be an object"), "arguments null"),
        (b'{"foo": 1}', perr("QMP input member 'foo' is unexpected"), "only an unexpected member"),
        (b'{"execute": "query-version", "foo": 1, "id": 3}',
         {"id": 3, "error": {"class": GE, "desc": "QMP input member 'foo' is unexpected"}},
         "unexpected member next to execute"),
        (b'{"exec-oob": "query-version", "id": 9}',
         {"id": 9, "error": {"class": GE, "desc": "QMP input member 'exec-oob' is unexpected"}},
         "exec-oob without oob enabled"),
        (b'{"execute": "nope", "id": 5}',
         {"id": 5, "error": {"class": CNF, "desc": "The command nope has not been found"}}, "unknown command"),
        (b'{"execute": "query-version", "arguments": {"a": 1}}', perr("Parameter 'a' is unexpected"),
         "query-version: unexpected argument"),
    ]
    for raw, want, desc in cases:
        c.send_raw(raw)
        t.eq(c.recv_reply(), want, desc)


def arguments(t, c):
    t.section("argument errors")
    cases = [
        ("block_resize", {"node-name": "x", "size": "1"}, "Invalid parameter type for 'size', expected: integer"),
        ("block_resize", {"node-name": "x", "size": 1.5}, "Invalid parameter type for 'size', expected: integer"),
        ("block_resize", {"node-name": "x", "size": 2 ** 64},
         "Invalid parameter type for 'size', expected: integer"),
        ("block_resize", {"node-name": "x", "size": 1, "bar": 2}, "Parameter 'bar' is unexpected"),
        ("block_resize", {"node-name": "x"}, "Parameter 'size' is missing"),
        ("blockdev-del", {"node-name": 5}, "Invalid parameter type for 'node-name', expected: string"),
        ("blockdev-del", {}, "Parameter 'node-name' is missing"),
        ("query-named-block-nodes", {"flat": "yes"}, "Invalid parameter type for 'flat', expected: boolean"),
        ("transaction", {"actions": {}}, "Invalid parameter type for 'actions', expected: array"),
        ("blockdev-add", {}, "Parameter 'driver' is missing"),
        ("blockdev-add", {"driver": "nulx"}, "Parameter 'driver' does not accept value 'nulx'"),
        ("blockdev-add", {"driver": "file"}, "Parameter 'filename' is missing"),
        ("block-export-del", {"id": "e", "mode": "bogus"}, "Parameter 'mode' does not accept value 'bogus'"),
        ("object-add", {"qom-type": "iothread"}, "Parameter 'id' is missing"),
        ("block-dirty-bitmap-add", {"node": "n"}, "Parameter 'name' is missing"),
    ]
    for name, args, text in cases:
        t.error(c.execute(name, args, id="a"), f"{name} {args}", text)


def malformed(t, c):
    t.section("malformed JSON")
    cases = [
        (b'{"execute": "query-version", "id": 1, }', [perr("JSON parse error, expecting value")],
         "trailing comma"),
        (b'{"execute" "x"}', [perr("JSON parse error, missing : in object pair")], "missing colon"),
        (b"}", [perr("JSON parse error, expecting value")], "lone }"),
        (b'{"a": 1, "a": 2}', [perr("JSON parse error, duplicate key")], "duplicate key"),
        (b'{"execute": "query-version", "id": 1, "id": 2}', [perr("JSON parse error, duplicate key")],
         "duplicate id"),
        (b'{"execute": @ "x"}', [perr("JSON parse error, stray '@'"), perr("JSON parse error, expecting value")],
         "stray character"),
    ]
    for raw, want, desc in cases:
        c.send_raw(raw)
        t.eq(drain(c), want, desc)
    c.send_raw(b'{"execute": "query-version", "id": 1')
    t.check(c.quiet(0.5), "a partial message gets no reply")
    c.send_raw(b'\x01{"execute": "query-version", "id": 7}')
    r = drain(c)
    t.check(len(r) == 2 and r[0] == perr("JSON parse error, stray '\x01'") and r[1].get("id") == 7,
            "0x01 drops the partial message and resynchronises", r)
    c.send_raw(b'\xff{"execute": "query-version", "id": 8}')
    r = drain(c)
    t.check(len(r) == 2 and err(r[0]) and r[0]["error"]["desc"].startswith("JSON parse error, stray")
            and r[1].get("id") == 8, "0xFF is an error, then the next command runs", r)
    r = c.execute("query-version", id="alive", timeout=5)
    t.eq(r.get("id"), "alive", "monitor alive after the parse errors")


def batching(t, c):
    t.section("several objects in one write")
    c.send_raw(b'{"execute": "query-version", "id": 1}{"execute": "nope", "id": 2}\n'
               b'  \t{"execute": "query-version", "id": 3}\r\n[1]{"execute": "query-version", "id": 4}')
    r = drain(c)
    t.eq([m.get("id", "-") for m in r], [1, 2, 3, "-", 4], "replies in order (ids 1 2 3 - 4)")
    t.check(len(r) == 5 and "return" in r[0] and err(r[1])[0] == CNF and "return" in r[2]
            and err(r[3]) == (GE, "QMP input must be a JSON object") and "return" in r[4],
            "each object handled on its own", r)
    # A command split over many writes.
    msg = b'{"execute": "query-version", "id": "split"}'
    for i in range(len(msg)):
        c.send_raw(msg[i:i + 1])
    t.eq(c.recv_reply().get("id"), "split", "a command sent a byte at a time")


def oversized(t, c):
    t.section("oversized message")
    if not t.ours():
        print("  (skipped against qemu-storage-daemon: its limit is 64 MiB of token text,"
              " which takes it over 30 s to reach)")
        return
    # Our limit is below 64 MiB; a 65 MiB string must be refused with an
    # error reply, and the monitor must go on after a resynchronisation.
    size = 65 << 20
    sender = c.sock.dup()
    sender.settimeout(60)
    failed = []

    def send():
        try:
            sender.sendall(b'{"execute": "query-version", "id": "' + b"a" * size + b'"}')
        except OSError as e:
            failed.append(e)
    th = threading.Thread(target=send)
    th.start()
    try:
        r = c.recv(60)
    except QMPError as e:
        r = {"client-error": str(e)}
    th.join(60)
    sender.close()
    desc = (r.get("error") or {}).get("desc", "")
    t.check("limit" in desc or desc.startswith("JSON parse error"),
            "a 65 MiB message is refused with an error reply", str(r)[:300])
    t.check(len(desc) < 4096, "the error does not echo the message", len(desc))
    drain(c, 1)
    c.send_raw(b'\x01{"execute": "query-version", "id": "after-big"}')
    got = [m for m in drain(c, 2) if m.get("id") == "after-big"]
    t.check(len(got) == 1 and "return" in got[0], "monitor usable after the oversized message", got)


def clients(t, d):
    t.section("disconnect and reconnect")
    c = d.connect()
    c.send_raw(b'{"execute": "query-ver')
    c.close()
    c2 = d.connect(negotiate=False)
    t.check("QMP" in c2.greeting, "the next client gets a fresh greeting", c2.greeting)
    t.error(c2.execute("query-version"), "the next client starts in negotiation mode", NEG, CNF)
    c2.negotiate()
    t.check("return" in c2.cmd("query-version"), "the next client works after negotiating")
    # A second client on the same socket waits for the first to leave.
    s = socket.socket(socket.AF_UNIX)
    s.connect(d.socks["mon0"])
    s.settimeout(0.5)
    try:
        early = s.recv(100)
    except socket.timeout:
        early = None
    t.eq(early, None, "a second client gets nothing while the first is connected")
    t.check("return" in c2.cmd("query-version"), "the first client still works")
    c2.close()
    s.settimeout(5)
    buf = b""
    try:
        while not buf.endswith(b"\r\n"):
            more = s.recv(4096)
            if not more:
                break
            buf += more
    except socket.timeout:
        pass
    t.check(buf.startswith(b'{"QMP": '), "the waiting client gets its greeting once the first left", buf)
    s.close()


def two_monitors(t, d):
    t.section("two monitors")
    a = d.connect("mon0")
    b = d.connect("mon1", negotiate=False)
    t.check("QMP" in b.greeting, "second monitor greets while the first has a client")
    t.error(b.execute("query-version"), "second monitor negotiates on its own", NEG, CNF)
    b.negotiate()
    a.send_raw(b'{"execute": "query-version", "id": "a1"}')
    b.send_raw(b'{"execute": "query-version", "id": "b1"}')
    t.eq(a.recv_reply().get("id"), "a1", "monitor 0 answers its client")
    t.eq(b.recv_reply().get("id"), "b1", "monitor 1 answers its client")
    a.send_raw(b'{"execute": "query-version", "id": 1')   # partial on monitor 0
    t.eq(b.cmd("query-version").get("return", {}).keys() >= {"qemu"}, True,
         "a partial message on one monitor does not block the other")
    a.send_raw(b"}")
    t.eq(a.recv_reply().get("id"), 1, "monitor 0 completes its message")
    return a, b


def pretty(t, d):
    t.section("pretty=on")
    p = d.connect("mon2", negotiate=False)
    g = p.raw.decode()
    t.check(g.startswith('{\r\n    "QMP": {\r\n') and '\r\n        "version": {\r\n' in g
            and '\r\n            "qemu": {\r\n' in g and '\r\n        "capabilities": [' in g
            and g.endswith("\r\n    }\r\n}\r\n") and "\n" not in g.replace("\r\n", ""),
            "greeting indented by 4 spaces, CRLF line ends", g[:120])
    p.raw = b""
    p.send_raw(b'{"execute": "qmp_capabilities"}')
    p.recv()
    t.eq(p.raw, b'{\r\n    "return": {\r\n    }\r\n}\r\n', "empty return shape")
    p.raw = b""
    p.send_raw(b'{"execute": "nope"}')
    p.recv()
    t.eq(p.raw, b'{\r\n    "error": {\r\n        "class": "CommandNotFound",\r\n'
         b'        "desc": "The command nope has not been found"\r\n    }\r\n}\r\n', "error reply shape")
    p.raw = b""
    p.send_raw(b'{"execute": "query-block-exports", "id": [1]}')
    r = p.recv()
    # Member order is not checked (QSD puts "id" last here).
    t.check(r == {"return": [], "id": [1]} and b'\r\n    "return": [\r\n    ]' in p.raw
            and b'\r\n    "id": [\r\n        1\r\n    ]' in p.raw and p.raw.startswith(b"{\r\n")
            and p.raw.endswith(b"\r\n}\r\n") and p.raw.count(b"\r\n") == 7, "array id and empty array shape", p.raw)


def chardevs(t):
    t.section("other chardevs and command-line errors")
    argv = daemon_argv(t.kind)
    p = subprocess.run(argv + ["--chardev", "stdio,id=s", "--monitor", "s"], capture_output=True, timeout=20,
                       input=b'{"execute": "qmp_capabilities"}\n{"execute": "query-block-exports", "id": 1}\n'
                             b'{"execute": "quit"}\n', cwd=t.work)
    lines = p.stdout.split(b"\r\n")
    t.check(p.returncode == 0 and len(lines) == 5 and lines[0].startswith(b'{"QMP": ')
            and lines[1:] == [b'{"return": {}}', b'{"return": [], "id": 1}', b'{"return": {}}', b""],
            "stdio monitor: greeting and three replies (CRLF), exit 0 on quit", (p.returncode, p.stdout, p.stderr))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = Daemon(t, ["--chardev", f"socket,id=tcp,host=127.0.0.1,port={port},server=on,wait=off",
                   "--monitor", "chardev=tcp,mode=control"], monitors=(), name="tcp")
    c = None
    for _ in range(200):
        try:
            c = Client(socket.create_connection(("127.0.0.1", port), timeout=5), "tcp")
            break
        except OSError:
            time.sleep(0.05)
    if c is None:
        t.bad(f"TCP monitor: cannot connect to port {port}: {d.stderr()}")
    else:
        d.clients.append(c)
        c.greeting = c.recv()
        c.negotiate()
        t.eq(c.cmd("query-block-exports").get("return"), [], "TCP monitor (host=, port=) works")
        t.stop(d, "TCP monitor: quit, exit 0")
    for args, text in [(["--monitor", "x"], 'chardev "x" not found'),
                       (["--monitor", "chardev=m2"], 'chardev "m2" not found'),
                       (["--chardev", f"socket,id=m,path={t.work}/z.sock,server=on,wait=off",
                         "--monitor", "m,mode=readline"], "Only QMP is supported"),
                       (["--chardev", f"socket,id=m,path={t.work}/nodir/x.sock,server=on,wait=off",
                         "--monitor", "m"],
                        f"Failed to bind socket to {t.work}/nodir/x.sock: No such file or directory")]:
        p = subprocess.run(argv + args, capture_output=True, text=True, timeout=20, cwd=t.work)
        t.check(p.returncode == 1 and text in p.stderr and p.stderr.count("\n") == 1,
                f"{' '.join(args)[:60]}: exit 1, {text}", (p.returncode, p.stderr))


def main():
    with Test("qmp-protocol", budget=110) as t:
        d = t.daemon([], monitors=("mon0", "mon1", "mon2"), pretty=("mon2",))
        c, version = greeting(t, d)
        t.part(negotiation, t, c, version)
        # Each section gets a fresh client, so that one that leaves the
        # stream in a bad state does not fail the next.
        for fn in (ids, structure, arguments, malformed, batching, oversized):
            c.close()
            d.clients.remove(c)
            c = d.connect()
            t.part(fn, t, c)
        c.close()
        d.clients.remove(c)
        t.part(clients, t, d)
        t.part(two_monitors, t, d)
        t.part(pretty, t, d)
        t.stop(d, "daemon exits 0 on quit")
        t.part(chardevs, t)


main()

#!/usr/bin/python3
# tests/integration/nbd-server-bad.py -- bad NBD clients against a server
# on a unix socket (nbd-server.sh runs it against ours): garbage, truncated
# and oversized handshakes, unknown flags and options, a client that
# vanishes in the middle of a write payload, oversized and malformed
# requests, a client that sends slowly and one that never finishes its
# handshake (dropped after the 10 s limit). After each, a libnbd client
# must still be served correctly. Prints "ok ..." per case; exits 1 on the
# first failure.
#
# Usage: nbd-server-bad.py SOCKET EXPORT   (EXPORT: a writable export)
import socket
import struct
import sys
import threading
import time

import nbd

SOCK, EXPORT = sys.argv[1], sys.argv[2]
URI = "nbd+unix:///%s?socket=%s" % (EXPORT, SOCK)
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x0003E889045565A9


def fail(msg):
    print("FAIL", msg, flush=True)
    sys.exit(1)


def ok(msg):
    print("ok", msg, flush=True)


def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(SOCK)
    return s


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += c
    return b


def closed_by_server(s, timeout=15):
    """True if the server closes s (EOF or reset) within timeout seconds."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def greet(s, flags=3):
    g = recv_exact(s, 18)
    magic, opt, hflags = struct.unpack(">QQH", g)
    if magic != NBDMAGIC or opt != IHAVEOPT or hflags != 3:
        fail("greeting %r" % g)
    s.sendall(struct.pack(">I", flags))


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def reply(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recv_exact(s, 20))
    if magic != REPMAGIC:
        fail("option reply magic %x" % magic)
    return opt, typ, recv_exact(s, ln)


def go(s, name):
    option(s, 7, struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0))
    while True:
        _, typ, data = reply(s)
        if typ == 1:
            return
        if typ & 0x80000000:
            fail("GO failed: %x %r" % (typ, data))


def healthy(label):
    h = nbd.NBD()
    h.connect_uri(URI)
    h.pwrite(b"\x77" * 4096, 0)
    if h.pread(4096, 0) != b"\x77" * 4096:
        fail(label + ": data read back differs")
    h.shutdown()
    ok(label)


def case_garbage():
    s = conn()
    recv_exact(s, 18)
    s.sendall(b"\xff" * 64)
    if not closed_by_server(s):
        fail("garbage: not disconnected")
    s.close()
    healthy("garbage client flags: disconnected")


def case_truncated():
    s = conn()
    greet(s)
    s.sendall(struct.pack(">Q", IHAVEOPT)[:5])
    s.close()
    healthy("truncated option header")


def case_huge_option():
    s = conn()
    greet(s)
    s.sendall(struct.pack(">QII", IHAVEOPT, 7, 0xFFFFFFFF))
    if not closed_by_server(s):
        fail("huge option length: not disconnected")
    s.close()
    healthy("option length 4 GiB: disconnected")


def case_bad_option_magic():
    s = conn()
    greet(s)
    s.sendall(struct.pack(">QII", 0x1234, 7, 0))
    if not closed_by_server(s):
        fail("bad option magic: not disconnected")
    healthy("bad option magic: disconnected")


def case_unknown_option():
    s = conn()
    greet(s)
    option(s, 99, b"abc")
    opt, typ, data = reply(s)
    if opt != 99 or typ != 0x80000001:
        fail("unknown option: reply %d %x %r" % (opt, typ, data))
    option(s, 3, b"x")   # LIST with data
    _, typ, _ = reply(s)
    if typ != 0x80000003:
        fail("LIST with data: reply %x" % typ)
    option(s, 6, struct.pack(">I", 1000) + b"ab" + struct.pack(">H", 0))   # INFO, name length lies
    _, typ, _ = reply(s)
    if typ != 0x80000003:
        fail("INFO with a bad name length: reply %x" % typ)
    option(s, 2)
    _, typ, _ = reply(s)
    if typ != 1:
        fail("ABORT: reply %x" % typ)
    s.close()
    ok("unknown option, LIST with data, bad INFO: errors; ABORT: ack")


def case_unknown_export_name():
    s = conn()
    greet(s)
    option(s, 1, b"no-such-export")
    if not closed_by_server(s):
        fail("EXPORT_NAME of a missing export: not disconnected")
    ok("EXPORT_NAME of a missing export: disconnected")


def transmission():
    s = conn()
    greet(s)
    go(s, EXPORT)
    return s


def case_vanish_mid_write():
    s = transmission()
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 1 << 20) + b"\x00" * 1000)
    s.close()
    time.sleep(0.2)
    healthy("client gone in the middle of a write payload")


def case_oversized_write():
    s = transmission()
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 64 << 20))
    if not closed_by_server(s):
        fail("64 MiB write: not disconnected")
    healthy("64 MiB write request: disconnected")


def case_oversized_read():
    s = transmission()
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, 0, 64 << 20))
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != 0x67446698 or err != 22 or cookie != 7:
        fail("64 MiB read: reply %x %d %d" % (magic, err, cookie))
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 99, 8, 0, 0))   # unknown command
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    if err != 22 or cookie != 8:
        fail("unknown command: reply %d %d" % (err, cookie))
    s.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, 0, 9, 0, 512))
    if not closed_by_server(s):
        fail("bad request magic: not disconnected")
    healthy("oversized read and unknown command: EINVAL; bad magic: disconnected")


def case_many_in_flight_then_vanish():
    s = transmission()
    req = b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, 0, 65536) for i in range(500))
    s.sendall(req)
    s.close()
    time.sleep(0.3)
    healthy("500 reads sent, replies never read")


def case_slow_client():
    stop = []

    def slow():
        s = conn()
        recv_exact(s, 18)
        for b in struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, 3, 0):
            if stop:
                break
            s.sendall(bytes([b]))
            time.sleep(0.1)
        s.close()

    t = threading.Thread(target=slow)
    t.start()
    t0 = time.time()
    healthy("a client sending one byte per 0.1 s does not hold up others")
    if time.time() - t0 > 1.5:
        fail("the healthy client took %.1f s" % (time.time() - t0))
    stop.append(1)
    t.join()


def case_handshake_limit():
    s = conn()
    recv_exact(s, 18)
    t0 = time.time()
    if not closed_by_server(s, 20):
        fail("silent client: not dropped within 20 s")
    took = time.time() - t0
    if took < 8 or took > 13:
        fail("silent client dropped after %.1f s (want about 10)" % took)
    ok("a client silent in the handshake is dropped after %.0f s" % took)


def case_churn():
    for _ in range(50):
        s = conn()
        s.close()
    healthy("50 connections opened and closed at once")


for case in (case_garbage, case_truncated, case_huge_option, case_bad_option_magic, case_unknown_option,
             case_unknown_export_name, case_vanish_mid_write, case_oversized_write, case_oversized_read,
             case_many_in_flight_then_vanish, case_slow_client, case_churn, case_handshake_limit):
    case()

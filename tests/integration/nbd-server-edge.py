#!/usr/bin/python3
# tests/integration/nbd-server-edge.py -- protocol edge cases through
# libnbd (the python "nbd" module), run by nbd-server.sh against our
# server and against qemu-storage-daemon's; the script prints one line per
# case (the outcome, errno names for failures) and nbd-server.sh compares
# the two transcripts line by line.
#
# Usage: nbd-server-edge.py RO_URI RW_URI
#   RO_URI: a read-only export of the test image (see nbd-server.sh)
#   RW_URI: a writable export of a scratch image (its contents get changed)
import sys

import nbd


def out(*words):
    print(" ".join(str(w) for w in words), flush=True)


def err_name(e):
    import errno
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "no-errno"


def attempt(label, fn):
    try:
        r = fn()
        out(label, "ok", "" if r is None else r)
    except nbd.Error as e:
        out(label, "error", err_name(e))


def connect(uri, contexts=(), strict=True, structured=True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    for c in contexts:
        h.add_meta_context(c)
    if not strict:
        h.set_strict_mode(0)
    h.connect_uri(uri)
    return h


def read_cases(uri):
    h = connect(uri, strict=False)
    size = h.get_size()
    out("size", size)
    for flag in ("flush", "fua", "trim", "zero", "fast_zero", "df", "multi_conn", "cache"):
        out("can", flag, getattr(h, "can_" + flag)())
    out("read_only", h.is_read_only())
    chunks = []

    def cb(buf, off, status, err):
        chunks.append((off, len(buf), status, bytes(buf[:4]).hex()))
        return 0

    h.pread_structured(2 * 1024 * 1024, 0, cb)
    for c in chunks:
        out("chunk", *c)
    chunks.clear()
    h.pread_structured(65536, 0, cb, nbd.CMD_FLAG_DF)
    out("df-chunks", len(chunks), chunks[0][2] if chunks else "-")
    # Invalid requests (strict mode off: libnbd sends them).
    attempt("read-past-eof", lambda: len(h.pread(4096, size - 512)))
    attempt("read-offset-past-eof", lambda: len(h.pread(512, size + 4096)))
    attempt("write-readonly", lambda: h.pwrite(b"x" * 512, 0))
    attempt("trim-readonly", lambda: h.trim(512, 0))
    attempt("zero-readonly", lambda: h.zero(512, 0))
    attempt("flush-bad-flag", lambda: h.flush(nbd.CMD_FLAG_REQ_ONE))
    attempt("read-bad-flag", lambda: len(h.pread(512, 0, nbd.CMD_FLAG_FAST_ZERO)))
    attempt("cache", lambda: h.cache(65536, 0))
    attempt("flush", lambda: h.flush())
    attempt("unaligned-read", lambda: h.pread(3, 1).hex())
    attempt("block-status-unnegotiated",
            lambda: h.block_status(4096, 0, lambda *a: 0))
    attempt("read-after-errors", lambda: h.pread(4, 0).hex())
    h.shutdown()


def status_cases(uri, contexts):
    h = connect(uri, contexts=contexts, strict=False)
    got = []

    def cb(ctx, off, entries, err):
        got.append((ctx, off, list(entries)))
        return 0

    size = h.get_size()
    for flags in (0, nbd.CMD_FLAG_REQ_ONE):
        got.clear()
        h.block_status(size, 0, cb, flags)
        for ctx, off, entries in sorted(got):
            out("status", flags, ctx, off, *entries)
    for ctx in contexts:
        out("can_meta", ctx, h.can_meta_context(ctx))
    attempt("status-past-eof", lambda: h.block_status(4096, size, cb))
    h.shutdown()


def list_cases(uri):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(uri)
    names = []
    h.opt_list(lambda n, d: names.append((n, d)))
    for n, d in sorted(names):
        out("export", repr(n), repr(d))
    ctxs = []
    h.opt_list_meta_context(lambda c: ctxs.append(c))
    out("meta", *sorted(ctxs))
    h.set_export_name("no-such-export")
    attempt("info-missing", lambda: h.opt_info())
    h.opt_abort()


def write_cases(uri):
    h = connect(uri, strict=False)
    size = h.get_size()
    out("rw-size", size, "read_only", h.is_read_only())
    h.pwrite(b"\xab" * 65536, 0)
    h.pwrite(b"\xcd" * 4096, 8192, nbd.CMD_FLAG_FUA)
    attempt("zero-nohole", lambda: h.zero(4096, 16384, nbd.CMD_FLAG_NO_HOLE))
    attempt("zero-fast", lambda: h.zero(65536, 131072, nbd.CMD_FLAG_FAST_ZERO))
    attempt("trim", lambda: h.trim(65536, 196608))
    attempt("trim-fua", lambda: h.trim(65536, 262144, nbd.CMD_FLAG_FUA))
    attempt("write-past-eof", lambda: h.pwrite(b"x" * 4096, size - 512))
    attempt("zero-past-eof", lambda: h.zero(4096, size))
    attempt("zero-bad-flag", lambda: h.zero(4096, 0, nbd.CMD_FLAG_DF))
    attempt("write-bad-flag", lambda: h.pwrite(b"x", 0, nbd.CMD_FLAG_REQ_ONE))
    attempt("readback", lambda: (h.pread(4, 0) + h.pread(4, 8192) + h.pread(4, 16384)).hex())
    # A second connection sees the first one's writes (multi-conn).
    h2 = connect(uri)
    attempt("other-conn", lambda: h2.pread(4, 8192).hex())
    h2.shutdown()
    h.flush()
    h.shutdown()


def main():
    ro, rw = sys.argv[1], sys.argv[2]
    read_cases(ro)
    status_cases(ro, ["base:allocation"])
    status_cases(ro, ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0"])
    list_cases(ro)
    write_cases(rw)


main()

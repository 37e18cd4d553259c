// Unit tests for util/nbd-client.h against a scripted fake server on the
// other end of a socketpair (a coroutine of the same AioContext): the
// handshake and its checks, export listing, and the transmission phase:
// structured read chunks landing at their offsets, out-of-order replies,
// server errors that fail one request, and replies that break the
// protocol (outside the request, overlapping, unknown cookie, bad magic),
// which must break the connection without touching memory outside the
// caller's buffer.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "util/aio.h"
#include "util/co-socket.h"
#include "util/coroutine.h"
#include "util/nbd-client.h"
#include "util/nbd-proto.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;
using namespace bg::nbd;

namespace {

bool run_until(AioContext *ctx, const std::function<bool()> &done, int64_t timeout_ns = 10000000000LL)
{
    int64_t deadline = clock_ns() + timeout_ns;
    while (!done()) {
        if (clock_ns() > deadline) return false;
        ctx->iterate(true);
    }
    return true;
}

// ---- the fake server's wire helpers (coroutine_fn: they yield)

void srv_read(CoSocket &s, void *buf, size_t len) { ck_assert_int_eq(s.co_read_full(buf, len), 0); }

void srv_write(CoSocket &s, const std::vector<uint8_t> &b) { ck_assert_int_eq(s.co_write_full(b.data(), b.size()), 0); }

void p16(std::vector<uint8_t> &v, uint16_t x) { v.push_back(uint8_t(x >> 8)), v.push_back(uint8_t(x)); }
void p32(std::vector<uint8_t> &v, uint32_t x) { p16(v, uint16_t(x >> 16)), p16(v, uint16_t(x)); }
void p64(std::vector<uint8_t> &v, uint64_t x) { p32(v, uint32_t(x >> 32)), p32(v, uint32_t(x)); }
void pstr(std::vector<uint8_t> &v, const std::string &s) { v.insert(v.end(), s.begin(), s.end()); }

// Reads one option request; returns the option, data in *data.
uint32_t srv_opt(CoSocket &s, std::vector<uint8_t> *data)
{
    uint8_t h[16];
    srv_read(s, h, 16);
    ck_assert(get64(h) == kOptMagic);
    data->resize(get32(h + 12));
    if (!data->empty()) srv_read(s, data->data(), data->size());
    return get32(h + 8);
}

void srv_rep(CoSocket &s, uint32_t opt, uint32_t type, const std::vector<uint8_t> &data = {})
{
    std::vector<uint8_t> v;
    p64(v, kOptReplyMagic);
    p32(v, opt);
    p32(v, type);
    p32(v, static_cast<uint32_t>(data.size()));
    v.insert(v.end(), data.begin(), data.end());
    srv_write(s, v);
}

std::vector<uint8_t> info_export(uint64_t size, uint16_t flags)
{
    std::vector<uint8_t> v;
    p16(v, kInfoExport);
    p64(v, size);
    p16(v, flags);
    return v;
}

std::vector<uint8_t> info_block_size(uint32_t min, uint32_t opt, uint32_t max)
{
    std::vector<uint8_t> v;
    p16(v, kInfoBlockSize);
    p32(v, min);
    p32(v, opt);
    p32(v, max);
    return v;
}

constexpr uint64_t kSize = 1 << 20;
constexpr uint16_t kFlags = kTxHasFlags | kTxSendFlush | kTxSendDf;

// The server side of a handshake: structured replies yes, extended
// headers no, base:allocation as context 7, GO with block_size.
void srv_handshake(CoSocket &s, const std::vector<uint8_t> &block_size, bool extended = false)
{
    std::vector<uint8_t> g;
    p64(g, kMagic);
    p64(g, kOptMagic);
    p16(g, kFlagFixedNewstyle | kFlagNoZeroes);
    srv_write(s, g);
    uint8_t cf[4];
    srv_read(s, cf, 4);
    ck_assert_uint_eq(get32(cf), kClientFixedNewstyle | kClientNoZeroes);
    std::vector<uint8_t> d;
    for (;;) {
        uint32_t opt = srv_opt(s, &d);
        if (opt == kOptExtendedHeaders) {
            srv_rep(s, opt, extended ? kRepAck : kRepErrUnsup);
        } else if (opt == kOptStructuredReply) {
            srv_rep(s, opt, kRepAck);
        } else if (opt == kOptSetMetaContext) {
            std::vector<uint8_t> m;
            p32(m, 7);
            pstr(m, kCtxBaseAllocation);
            srv_rep(s, opt, kRepMetaContext, m);
            srv_rep(s, opt, kRepAck);
        } else {
            ck_assert_uint_eq(opt, kOptGo);
            srv_rep(s, opt, kRepInfo, info_export(kSize, kFlags));
            srv_rep(s, opt, kRepInfo, block_size);
            srv_rep(s, opt, kRepAck);
            return;
        }
    }
}

// Reads one request header (compact, or extended).
Request srv_req(CoSocket &s, bool extended = false)
{
    uint8_t h[kExtRequestSize];
    srv_read(s, h, extended ? kExtRequestSize : kRequestSize);
    Request r;
    ck_assert(decode_request(h, &r, extended));
    return r;
}

void srv_ext_chunk(CoSocket &s, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset,
                   const std::vector<uint8_t> &payload)
{
    std::vector<uint8_t> v;
    p32(v, kExtReplyMagic);
    p16(v, flags);
    p16(v, type);
    p64(v, cookie);
    p64(v, offset);
    p64(v, payload.size());
    v.insert(v.end(), payload.begin(), payload.end());
    srv_write(s, v);
}

void srv_chunk(CoSocket &s, uint16_t flags, uint16_t type, uint64_t cookie, const std::vector<uint8_t> &payload)
{
    std::vector<uint8_t> v;
    p32(v, kStructuredReplyMagic);
    p16(v, flags);
    p16(v, type);
    p64(v, cookie);
    p32(v, static_cast<uint32_t>(payload.size()));
    v.insert(v.end(), payload.begin(), payload.end());
    srv_write(s, v);
}

std::vector<uint8_t> data_chunk(uint64_t off, size_t len, uint8_t fill)
{
    std::vector<uint8_t> v;
    p64(v, off);
    v.insert(v.end(), len, fill);
    return v;
}

std::vector<uint8_t> hole_chunk(uint64_t off, uint32_t len)
{
    std::vector<uint8_t> v;
    p64(v, off);
    p32(v, len);
    return v;
}

// A connected pair: the client's connection (handshake done, reader
// started) and the server's socket.
struct Pair {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    std::shared_ptr<NbdClientConnection> conn;
    std::unique_ptr<CoSocket> srv;

    explicit Pair(bool extended = false)
    {
        int fds[2];
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        srv = std::make_unique<CoSocket>(fds[1]);
        auto cli = std::make_unique<CoSocket>(fds[0]);
        bool done = false;
        ctx->co_enter(coroutine_create_fn([&] { srv_handshake(*srv, info_block_size(1, 4096, kSize), extended); }));
        ctx->co_enter(coroutine_create_fn([&] {
            ClientConfig cfg;
            cfg.meta_contexts = {kCtxBaseAllocation};
            auto r = co_client_handshake(*cli, cfg);
            ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
            conn = std::make_shared<NbdClientConnection>(std::move(cli), r.value());
            conn->start();
            done = true;
        }));
        ck_assert(run_until(ctx.get(), [&] { return done; }));
    }
    ~Pair()
    {
        conn->shutdown();
        conn->wait_reader_done();
    }
};

// A read of len bytes at off issued in a coroutine; the buffer has guard
// bytes (0xee) on both sides that must survive anything the server sends.
struct PendingRead {
    std::vector<uint8_t> buf;
    IOVector qiov;
    int ret = 1;
    ReqOutcome oc = ReqOutcome::kOk;
    static constexpr size_t kGuard = 64;

    PendingRead(Pair &p, uint64_t off, size_t len) : buf(len + 2 * kGuard, 0xee), qiov(buf.data() + kGuard, len)
    {
        p.ctx->co_enter(coroutine_create_fn([this, &p, off] { ret = p.conn->co_read(off, qiov, 0, &oc); }));
    }
    bool guards_intact() const
    {
        for (size_t i = 0; i < kGuard; i++) {
            if (buf[i] != 0xee || buf[buf.size() - 1 - i] != 0xee) return false;
        }
        return true;
    }
    uint8_t at(size_t i) const { return buf[kGuard + i]; }
};

} // namespace

START_TEST(test_handshake)
{
    Pair p;
    const ExportInfo &i = p.conn->info();
    ck_assert_uint_eq(i.size, kSize);
    ck_assert_uint_eq(i.flags, kFlags);
    ck_assert(i.structured);
    ck_assert(!i.extended);
    ck_assert_int_eq(static_cast<int>(i.contexts.size()), 1);
    ck_assert_str_eq(i.contexts[0].name.c_str(), kCtxBaseAllocation);
    ck_assert_uint_eq(i.contexts[0].id, 7);
    ck_assert(i.block_size_sent);
    ck_assert_uint_eq(i.opt_block, 4096);
}
END_TEST

// A BLOCK_SIZE minimum that is not a power of two fails the handshake.
START_TEST(test_bad_block_size)
{
    auto ctx = AioContext::create();
    int fds[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    CoSocket srv(fds[1]), cli(fds[0]);
    std::string msg;
    ctx->co_enter(coroutine_create_fn([&] { srv_handshake(srv, info_block_size(3, 4096, kSize)); }));
    ctx->co_enter(coroutine_create_fn([&] {
        auto r = co_client_handshake(cli, ClientConfig());
        ck_assert(!r.ok());
        msg = r.msg();
    }));
    ck_assert(run_until(ctx.get(), [&] { return !msg.empty(); }));
    ck_assert_msg(msg.find("minimum block size 3 is not a power of two") != std::string::npos, "%s", msg.c_str());
}
END_TEST

// A hole chunk and two data chunks, out of order, land where they say.
START_TEST(test_read_chunks)
{
    Pair p;
    PendingRead rd(p, 4096, 16384);
    bool sent = false;
    p.ctx->co_enter(coroutine_create_fn([&] {
        Request r = srv_req(*p.srv);
        ck_assert_uint_eq(r.type, kCmdRead);
        ck_assert_uint_eq(r.offset, 4096);
        ck_assert_uint_eq(r.length, 16384);
        srv_chunk(*p.srv, 0, kChunkOffsetData, r.cookie, data_chunk(4096 + 12288, 4096, 0x33));
        srv_chunk(*p.srv, 0, kChunkOffsetHole, r.cookie, hole_chunk(4096, 4096));
        srv_chunk(*p.srv, kReplyFlagDone, kChunkOffsetData, r.cookie, data_chunk(4096 + 4096, 8192, 0x22));
        sent = true;
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return rd.ret != 1; }));
    ck_assert(sent);
    ck_assert_int_eq(rd.ret, 0);
    for (size_t i = 0; i < 16384; i++) {
        uint8_t want = i < 4096 ? 0 : i < 12288 ? 0x22 : 0x33;
        ck_assert_uint_eq(rd.at(i), want);
    }
    ck_assert(rd.guards_intact());
}
END_TEST

// Two reads in flight, answered in reverse order (simple replies are not
// allowed for reads here; NONE closes a read of a hole-only chunk set).
START_TEST(test_out_of_order)
{
    Pair p;
    PendingRead a(p, 0, 4096), b(p, 8192, 4096);
    p.ctx->co_enter(coroutine_create_fn([&] {
        Request ra = srv_req(*p.srv);
        Request rb = srv_req(*p.srv);
        ck_assert(ra.cookie != rb.cookie);
        srv_chunk(*p.srv, kReplyFlagDone, kChunkOffsetData, rb.cookie, data_chunk(rb.offset, 4096, 0xb0));
        srv_chunk(*p.srv, 0, kChunkOffsetData, ra.cookie, data_chunk(ra.offset, 4096, 0xa0));
        srv_chunk(*p.srv, kReplyFlagDone, kChunkNone, ra.cookie, {});
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return a.ret != 1 && b.ret != 1; }));
    ck_assert_int_eq(a.ret, 0);
    ck_assert_int_eq(b.ret, 0);
    ck_assert_uint_eq(a.at(0), 0xa0);
    ck_assert_uint_eq(a.at(4095), 0xa0);
    ck_assert_uint_eq(b.at(0), 0xb0);
    ck_assert(a.guards_intact() && b.guards_intact());
}
END_TEST

// An error chunk fails its request with the server's errno; the
// connection stays usable.
START_TEST(test_error_chunk)
{
    Pair p;
    PendingRead a(p, 0, 4096);
    p.ctx->co_enter(coroutine_create_fn([&] {
        Request r = srv_req(*p.srv);
        std::vector<uint8_t> e;
        p32(e, kENOSPC);
        p16(e, 4);
        pstr(e, "full");
        srv_chunk(*p.srv, kReplyFlagDone, kChunkError, r.cookie, e);
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return a.ret != 1; }));
    ck_assert_int_eq(a.ret, -ENOSPC);
    ck_assert(a.oc == ReqOutcome::kOk);
    ck_assert(!p.conn->broken());
    PendingRead b(p, 0, 512);
    p.ctx->co_enter(coroutine_create_fn([&] {
        Request r = srv_req(*p.srv);
        srv_chunk(*p.srv, kReplyFlagDone, kChunkOffsetData, r.cookie, data_chunk(0, 512, 0x5e));
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return b.ret != 1; }));
    ck_assert_int_eq(b.ret, 0);
    ck_assert_uint_eq(b.at(511), 0x5e);
}
END_TEST

// Replies that break the protocol: each breaks the connection, fails the
// read with EIO (outcome kProtocol), and leaves the guard bytes alone.
enum class Bad { kPastEnd, kBefore, kOverlap, kHoleTooLong, kUnknownCookie, kBadMagic, kShort, kStatusForRead };

void run_bad(Bad how)
{
    Pair p;
    PendingRead rd(p, 65536, 8192);
    p.ctx->co_enter(coroutine_create_fn([&] {
        Request r = srv_req(*p.srv);
        switch (how) {
        case Bad::kPastEnd:
            srv_chunk(*p.srv, kReplyFlagDone, kChunkOffsetData, r.cookie, data_chunk(65536 + 4096, 8192, 0x11));
            break;
        case Bad::kBefore:
            srv_chunk(*p.srv, kReplyFlagDone, kChunkOffsetData, r.cookie, data_chunk(65536 - 64, 4096, 0x11));
            break;
        case Bad::kOverlap:
            srv_chunk(*p.srv, 0, kChunkOffsetData, r.cookie, data_chunk(65536, 4096, 0x11));
            srv_chunk(*p.srv, kReplyFlagDone, kChunkOffsetData, r.cookie, data_chunk(65536 + 2048, 6144, 0x12));
            break;
        case Bad::kHoleTooLong:
            srv_chunk(*p.srv, kReplyFlagDone, kChunkOffsetHole, r.cookie, hole_chunk(65536, 8192 + 512));
            break;
        case Bad::kUnknownCookie:
            srv_chunk(*p.srv, kReplyFlagDone, kChunkOffsetData, r.cookie ^ 0x10000, data_chunk(65536, 8192, 0x11));
            break;
        case Bad::kBadMagic: {
            std::vector<uint8_t> v;
            p32(v, 0x12345678);
            v.resize(32, 0);
            srv_write(*p.srv, v);
            break;
        }
        case Bad::kShort:
            srv_chunk(*p.srv, kReplyFlagDone, kChunkOffsetData, r.cookie, data_chunk(65536, 4096, 0x11));
            break;
        case Bad::kStatusForRead: {
            std::vector<uint8_t> v;
            p32(v, 7);
            p32(v, 8192);
            p32(v, 0);
            srv_chunk(*p.srv, kReplyFlagDone, kChunkBlockStatus, r.cookie, v);
            break;
        }
        }
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return rd.ret != 1; }));
    ck_assert_int_eq(rd.ret, -EIO);
    ck_assert(rd.oc == ReqOutcome::kProtocol);
    ck_assert(p.conn->broken());
    ck_assert(rd.guards_intact());
    // Later requests fail at once.
    PendingRead again(p, 0, 512);
    ck_assert(run_until(p.ctx.get(), [&] { return again.ret != 1; }));
    ck_assert_int_eq(again.ret, -EIO);
}

START_TEST(test_bad_replies)
{
    for (Bad b : {Bad::kPastEnd, Bad::kBefore, Bad::kOverlap, Bad::kHoleTooLong, Bad::kUnknownCookie, Bad::kBadMagic,
                  Bad::kShort, Bad::kStatusForRead}) {
        run_bad(b);
    }
}
END_TEST

// The server closing the connection: requests in flight fail with EIO and
// outcome kConnLost (the driver's cue to reconnect).
START_TEST(test_conn_lost)
{
    Pair p;
    PendingRead rd(p, 0, 4096);
    p.ctx->co_enter(coroutine_create_fn([&] {
        srv_req(*p.srv);
        p.srv->shutdown();
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return rd.ret != 1; }));
    ck_assert_int_eq(rd.ret, -EIO);
    ck_assert(rd.oc == ReqOutcome::kConnLost);
}
END_TEST

// Block status with REQ_ONE: the first extent, clamped to the request.
START_TEST(test_block_status)
{
    Pair p;
    Extent ext;
    int ret = 1;
    ReqOutcome oc;
    p.ctx->co_enter(coroutine_create_fn([&] { ret = p.conn->co_block_status(0, 65536, 7, &ext, &oc); }));
    p.ctx->co_enter(coroutine_create_fn([&] {
        Request r = srv_req(*p.srv);
        ck_assert_uint_eq(r.type, kCmdBlockStatus);
        ck_assert(r.flags & kCmdFlagReqOne);
        std::vector<uint8_t> v;
        p32(v, 7);
        p32(v, 1 << 20);   // longer than asked: clamped
        p32(v, kStateHole | kStateZero);
        srv_chunk(*p.srv, kReplyFlagDone, kChunkBlockStatus, r.cookie, v);
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return ret != 1; }));
    ck_assert_int_eq(ret, 0);
    ck_assert_uint_eq(ext.length, 65536);
    ck_assert_uint_eq(ext.flags, kStateHole | kStateZero);
}
END_TEST

// Extended headers: 32-byte requests (writes with PAYLOAD_LEN), extended
// chunks for reads, BLOCK_STATUS_EXT, and NONE for other commands.
START_TEST(test_extended)
{
    Pair p(true);
    ck_assert(p.conn->info().extended);
    PendingRead rd(p, 4096, 8192);
    std::vector<uint8_t> wbuf(4096, 0x77);
    IOVector wq(wbuf.data(), wbuf.size());
    int wret = 1, sret = 1;
    Extent ext;
    ReqOutcome oc;
    p.ctx->co_enter(coroutine_create_fn([&] { wret = p.conn->co_write(0, wq, kCmdFlagFua, &oc); }));
    p.ctx->co_enter(coroutine_create_fn([&] { sret = p.conn->co_block_status(0, 1 << 20, 7, &ext, &oc); }));
    p.ctx->co_enter(coroutine_create_fn([&] {
        Request r = srv_req(*p.srv, true);
        ck_assert_uint_eq(r.type, kCmdRead);
        ck_assert_uint_eq(r.length, 8192);
        Request w = srv_req(*p.srv, true);
        ck_assert_uint_eq(w.type, kCmdWrite);
        ck_assert_uint_eq(w.flags, kCmdFlagFua | kCmdFlagPayloadLen);
        ck_assert_uint_eq(w.length, 4096);
        std::vector<uint8_t> payload(4096);
        srv_read(*p.srv, payload.data(), payload.size());
        ck_assert_uint_eq(payload[4095], 0x77);
        Request b = srv_req(*p.srv, true);
        ck_assert_uint_eq(b.type, kCmdBlockStatus);
        srv_ext_chunk(*p.srv, kReplyFlagDone, kChunkNone, w.cookie, 0, {});
        srv_ext_chunk(*p.srv, 0, kChunkOffsetHole, r.cookie, r.offset, hole_chunk(4096, 4096));
        srv_ext_chunk(*p.srv, kReplyFlagDone, kChunkOffsetData, r.cookie, r.offset, data_chunk(8192, 4096, 0x99));
        std::vector<uint8_t> st;
        p32(st, 7);
        p32(st, 1);
        p64(st, 65536);
        p64(st, kStateZero);
        srv_ext_chunk(*p.srv, kReplyFlagDone, kChunkBlockStatusExt, b.cookie, 0, st);
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return rd.ret != 1 && wret != 1 && sret != 1; }));
    ck_assert_int_eq(wret, 0);
    ck_assert_int_eq(rd.ret, 0);
    ck_assert_uint_eq(rd.at(0), 0);
    ck_assert_uint_eq(rd.at(4096), 0x99);
    ck_assert_int_eq(sret, 0);
    ck_assert_uint_eq(ext.length, 65536);
    ck_assert_uint_eq(ext.flags, kStateZero);
    ck_assert(rd.guards_intact());
}
END_TEST

// LIST, then INFO and LIST_META_CONTEXT per export, then ABORT.
START_TEST(test_list)
{
    auto ctx = AioContext::create();
    int fds[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    CoSocket srv(fds[1]), cli(fds[0]);
    bool srv_done = false;
    ctx->co_enter(coroutine_create_fn([&] {
        std::vector<uint8_t> g;
        p64(g, kMagic);
        p64(g, kOptMagic);
        p16(g, kFlagFixedNewstyle | kFlagNoZeroes);
        srv_write(srv, g);
        uint8_t cf[4];
        srv_read(srv, cf, 4);
        std::vector<uint8_t> d;
        for (;;) {
            uint32_t opt = srv_opt(srv, &d);
            if (opt == kOptExtendedHeaders) {
                srv_rep(srv, opt, kRepAck);
            } else if (opt == kOptList) {
                for (std::string n : {"a", "bb"}) {
                    std::vector<uint8_t> s;
                    p32(s, static_cast<uint32_t>(n.size()));
                    pstr(s, n);
                    pstr(s, "desc-" + n);
                    srv_rep(srv, opt, kRepServer, s);
                }
                srv_rep(srv, opt, kRepAck);
            } else if (opt == kOptInfo) {
                std::string name(d.begin() + 4, d.begin() + 4 + get32(d.data()));
                srv_rep(srv, opt, kRepInfo, info_export(name == "a" ? 512 : 1024, kFlags | kTxReadOnly));
                srv_rep(srv, opt, kRepInfo, info_block_size(1, 4096, kSize));
                srv_rep(srv, opt, kRepAck);
            } else if (opt == kOptListMetaContext) {
                std::vector<uint8_t> m;
                p32(m, 0);
                pstr(m, kCtxBaseAllocation);
                srv_rep(srv, opt, kRepMetaContext, m);
                srv_rep(srv, opt, kRepAck);
            } else {
                ck_assert_uint_eq(opt, kOptAbort);
                srv_done = true;
                return;
            }
        }
    }));
    std::vector<ListedExport> out;
    bool cli_done = false;
    ctx->co_enter(coroutine_create_fn([&] {
        auto r = co_client_list(cli, ClientConfig());
        ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
        out = r.value();
        cli_done = true;
    }));
    ck_assert(run_until(ctx.get(), [&] { return srv_done && cli_done; }));
    ck_assert_int_eq(static_cast<int>(out.size()), 2);
    ck_assert_str_eq(out[0].name.c_str(), "a");
    ck_assert_str_eq(out[0].description.c_str(), "desc-a");
    ck_assert_uint_eq(out[0].size, 512);
    ck_assert_uint_eq(out[1].size, 1024);
    ck_assert(out[1].flags & kTxReadOnly);
    ck_assert_uint_eq(out[1].max_block, kSize);
    ck_assert(out[0].extended);
    ck_assert_int_eq(static_cast<int>(out[1].contexts.size()), 1);
    ck_assert_str_eq(out[1].contexts[0].c_str(), kCtxBaseAllocation);
}
END_TEST

static Suite *nbd_client_suite()
{
    Suite *s = suite_create("nbd-client");
    TCase *tc = tcase_create("nbd-client");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_handshake);
    tcase_add_test(tc, test_bad_block_size);
    tcase_add_test(tc, test_read_chunks);
    tcase_add_test(tc, test_out_of_order);
    tcase_add_test(tc, test_error_chunk);
    tcase_add_test(tc, test_bad_replies);
    tcase_add_test(tc, test_conn_lost);
    tcase_add_test(tc, test_block_status);
    tcase_add_test(tc, test_extended);
    tcase_add_test(tc, test_list);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(nbd_client_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

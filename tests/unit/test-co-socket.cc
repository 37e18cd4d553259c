// Unit tests for util/co-socket.h: CoSocket reads and writes that yield,
// shutdown, read deadlines, and listen/connect/accept over unix and TCP.
#include <glib.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "util/aio.h"
#include "util/co-socket.h"
#include "util/coroutine.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

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

void make_pair(int fds[2])
{
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    // Small buffers so that big transfers must wait for the reader.
    int sz = 4096;
    setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
}

} // namespace

// 8 MiB in both directions at once, written as several iovecs and read in
// odd-sized pieces: every byte arrives, in order, and both sides yield
// (the buffers are far smaller than the data).
START_TEST(test_full_duplex)
{
    auto ctx = AioContext::create();
    int fds[2];
    make_pair(fds);
    CoSocket a(fds[0]), b(fds[1]);
    constexpr size_t kLen = 8 << 20;
    std::vector<uint8_t> out(kLen), in_a(kLen), in_b(kLen);
    for (size_t i = 0; i < kLen; i++) out[i] = static_cast<uint8_t>(i * 7 + (i >> 13));
    int done = 0;
    auto writer = [&](CoSocket *s) {
        struct iovec iov[3] = {{out.data(), 1000}, {out.data() + 1000, kLen / 2}, {out.data() + 1000 + kLen / 2, kLen / 2 - 1000}};
        ck_assert_int_eq(s->co_write_full(iov, 3), 0);
        done++;
    };
    auto reader = [&](CoSocket *s, std::vector<uint8_t> *in) {
        size_t off = 0, piece = 1;
        while (off < kLen) {
            size_t n = std::min(piece, kLen - off);
            ck_assert_int_eq(s->co_read_full(in->data() + off, n), 0);
            off += n;
            piece = piece * 3 + 1;
            if (piece > 300000) piece = 17;
        }
        done++;
    };
    ctx->co_enter(coroutine_create_fn([&] { writer(&a); }));
    ctx->co_enter(coroutine_create_fn([&] { writer(&b); }));
    ctx->co_enter(coroutine_create_fn([&] { reader(&a, &in_a); }));
    ctx->co_enter(coroutine_create_fn([&] { reader(&b, &in_b); }));
    ck_assert(run_until(ctx.get(), [&] { return done == 4; }));
    ck_assert(in_a == out);
    ck_assert(in_b == out);
}
END_TEST

// The peer closing: a read waiting between messages reports -ECONNRESET
// with *eof set; one that got part of its bytes reports it without.
START_TEST(test_eof)
{
    auto ctx = AioContext::create();
    int fds[2];
    make_pair(fds);
    auto a = std::make_unique<CoSocket>(fds[0]);
    int r1 = 1, r2 = 1;
    bool eof1 = false, eof2 = true;
    bool finished = false;
    ctx->co_enter(coroutine_create_fn([&] {
        char buf[8];
        r1 = a->co_read_full(buf, 4, &eof1);
        r2 = a->co_read_full(buf, 8, &eof2);
        finished = true;
    }));
    ck_assert(!finished);
    ck_assert_int_eq(write(fds[1], "abcdefg", 7), 7);   // 4 for the first read, 3 of the second's 8
    close(fds[1]);
    ck_assert(run_until(ctx.get(), [&] { return finished; }));
    ck_assert_int_eq(r1, 0);
    ck_assert(!eof1);
    ck_assert_int_eq(r2, -ECONNRESET);
    ck_assert(!eof2);

    int fds2[2];
    make_pair(fds2);
    CoSocket c(fds2[0]);
    finished = false;
    ctx->co_enter(coroutine_create_fn([&] {
        char buf[8];
        r1 = c.co_read_full(buf, 8, &eof1);
        finished = true;
    }));
    close(fds2[1]);
    ck_assert(run_until(ctx.get(), [&] { return finished; }));
    ck_assert_int_eq(r1, -ECONNRESET);
    ck_assert(eof1);
}
END_TEST

// shutdown() wakes a waiting reader and a waiting writer with -ESHUTDOWN,
// and later calls fail at once.
START_TEST(test_shutdown_wakes)
{
    auto ctx = AioContext::create();
    int fds[2];
    make_pair(fds);
    CoSocket a(fds[0]);
    int rr = 1, rw = 1;
    std::vector<uint8_t> big(4 << 20);
    ctx->co_enter(coroutine_create_fn([&] {
        char buf[4];
        rr = a.co_read_full(buf, 4);
    }));
    ctx->co_enter(coroutine_create_fn([&] { rw = a.co_write_full(big.data(), big.size()); }));
    ck_assert_int_eq(rr, 1);
    ck_assert_int_eq(rw, 1);
    a.shutdown();
    ck_assert(run_until(ctx.get(), [&] { return rr != 1 && rw != 1; }));
    ck_assert_int_eq(rr, -ESHUTDOWN);
    ck_assert_int_eq(rw, -ESHUTDOWN);
    char c;
    int again = 1;
    ctx->co_enter(coroutine_create_fn([&] { again = a.co_read_full(&c, 1); }));
    ck_assert_int_eq(again, -ESHUTDOWN);
    close(fds[1]);
}
END_TEST

// A read deadline ends a wait with -ETIMEDOUT; data arriving in time does not.
START_TEST(test_read_deadline)
{
    auto ctx = AioContext::create();
    int fds[2];
    make_pair(fds);
    CoSocket a(fds[0]);
    int r = 1;
    int64_t t0 = clock_ns();
    a.set_read_deadline(t0 + 100000000);   // 100 ms
    ctx->co_enter(coroutine_create_fn([&] {
        char buf[4];
        r = a.co_read_full(buf, 4);
    }));
    ck_assert(run_until(ctx.get(), [&] { return r != 1; }));
    ck_assert_int_eq(r, -ETIMEDOUT);
    ck_assert(clock_ns() - t0 >= 100000000);

    a.set_read_deadline(0);
    ck_assert_int_eq(write(fds[1], "wxyz", 4), 4);
    char buf[4];
    r = 1;
    ctx->co_enter(coroutine_create_fn([&] { r = a.co_read_full(buf, 4); }));
    ck_assert(run_until(ctx.get(), [&] { return r != 1; }));
    ck_assert_int_eq(r, 0);
    ck_assert_int_eq(memcmp(buf, "wxyz", 4), 0);
    close(fds[1]);
}
END_TEST

namespace {

// Listens on addr, connects from a coroutine, accepts, exchanges a message.
void listen_connect_roundtrip(SocketAddress addr)
{
    auto ctx = AioContext::create();
    Result<int> l = socket_listen(addr);
    ck_assert_msg(l.ok(), "%s", l.ok() ? "" : l.msg().c_str());
    if (addr.type == SocketAddress::Type::kInet && addr.port == "0") {
        sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        ck_assert_int_eq(getsockname(l.value(), reinterpret_cast<sockaddr *>(&ss), &len), 0);
        addr.port = std::to_string(ntohs(reinterpret_cast<sockaddr_in *>(&ss)->sin_port));
    }
    bool ok = false;
    ctx->co_enter(coroutine_create_fn([&] {
        Result<int> c = co_socket_connect(addr, 2000000000LL);
        ck_assert_msg(c.ok(), "%s", c.ok() ? "" : c.msg().c_str());
        CoSocket s(c.value());
        ck_assert_int_eq(s.co_write_full("ping", 4), 0);
        char buf[4];
        ck_assert_int_eq(s.co_read_full(buf, 4), 0);
        ck_assert_int_eq(memcmp(buf, "pong", 4), 0);
        ok = true;
    }));
    int fd = -EAGAIN;
    ck_assert(run_until(ctx.get(), [&] { return (fd = socket_accept(l.value())) >= 0; }));
    CoSocket srv(fd);
    ctx->co_enter(coroutine_create_fn([&] {
        char buf[4];
        ck_assert_int_eq(srv.co_read_full(buf, 4), 0);
        ck_assert_int_eq(memcmp(buf, "ping", 4), 0);
        ck_assert_int_eq(srv.co_write_full("pong", 4), 0);
    }));
    ck_assert(run_until(ctx.get(), [&] { return ok; }));
    close(l.value());
}

} // namespace

START_TEST(test_unix_listen_connect)
{
    char dir[] = "/tmp/bg-cosock-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    SocketAddress a;
    a.type = SocketAddress::Type::kUnix;
    a.path = std::string(dir) + "/s";
    listen_connect_roundtrip(a);
    unlink(a.path.c_str());
    rmdir(dir);
}
END_TEST

START_TEST(test_tcp_listen_connect)
{
    SocketAddress a;
    a.host = "127.0.0.1";
    a.port = "0";
    listen_connect_roundtrip(a);
}
END_TEST

// Connecting to nothing fails with a message naming the address.
START_TEST(test_connect_refused)
{
    auto ctx = AioContext::create();
    SocketAddress a;
    a.type = SocketAddress::Type::kUnix;
    a.path = "/nonexistent-dir-bg/sock";
    bool done = false;
    ctx->co_enter(coroutine_create_fn([&] {
        Result<int> c = co_socket_connect(a);
        ck_assert(!c.ok());
        ck_assert_int_eq(c.err(), ENOENT);
        ck_assert_str_eq(c.msg().c_str(),
                         "Failed to connect to /nonexistent-dir-bg/sock: No such file or directory");
        done = true;
    }));
    ck_assert(done);
}
END_TEST

static Suite *co_socket_suite()
{
    Suite *s = suite_create("co-socket");
    TCase *tc = tcase_create("cosocket");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_full_duplex);
    tcase_add_test(tc, test_eof);
    tcase_add_test(tc, test_shutdown_wakes);
    tcase_add_test(tc, test_read_deadline);
    tcase_add_test(tc, test_unix_listen_connect);
    tcase_add_test(tc, test_tcp_listen_connect);
    tcase_add_test(tc, test_connect_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(co_socket_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

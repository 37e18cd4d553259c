// Unit tests for util/io.h: file I/O from coroutines through io_uring and
// through the thread-pool fallback. Most tests run once per backend:
//   0: ctx->io(kIoUring)    1: ctx->io(kThreads)
//   2: ctx->io() with BLOCKGRAPH_AIO=threads (the fallback forced by the environment)
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "util/aio.h"
#include "util/coroutine.h"
#include "util/io.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {

constexpr int kBackends = 3;

// A temporary file, unlinked at once so that it never outlives the test, even
// when an assertion ends the test process early.
struct TempFile {
    int fd = -1;      // read-write
    int ro_fd = -1;   // read-only
    TempFile()
    {
        const char *dir = getenv("TMPDIR");
        std::string path = std::string(dir && *dir ? dir : "/tmp") + "/test-io-XXXXXX";
        fd = mkstemp(path.data());
        ck_assert_msg(fd >= 0, "mkstemp(%s): %s", path.c_str(), strerror(errno));
        ro_fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(ro_fd, 0);
        unlink(path.c_str());
    }
    ~TempFile()
    {
        close(fd);
        close(ro_fd);
    }
    int64_t size() const
    {
        struct stat st;
        ck_assert_int_eq(fstat(fd, &st), 0);
        return st.st_size;
    }
};

IoBackend *backend_for(AioContext *ctx, int which)
{
    IoBackend *b = nullptr;
    switch (which) {
    case 0:
        b = ctx->io(AioBackendKind::kIoUring);
        ck_assert_str_eq(b->name(), "io_uring");
        break;
    case 1:
        b = ctx->io(AioBackendKind::kThreads);
        ck_assert_str_eq(b->name(), "threads");
        break;
    default:
        setenv("BLOCKGRAPH_AIO", "threads", 1);   // this test's process only (fork mode)
        b = ctx->io();
        ck_assert_str_eq(b->name(), "threads");
        break;
    }
    return b;
}

// Splits [buf, buf+len) into up to 4 iovec pieces at random points.
std::vector<struct iovec> split(uint8_t *buf, size_t len, std::mt19937 &rng)
{
    std::vector<struct iovec> v;
    int pieces = 1 + static_cast<int>(rng() % 4);
    size_t pos = 0;
    for (int i = 0; i < pieces - 1 && pos < len; i++) {
        size_t n = 1 + rng() % (len - pos);
        if (pos + n >= len) break;
        v.push_back({buf + pos, n});
        pos += n;
    }
    v.push_back({buf + pos, len - pos});
    return v;
}

uint8_t pattern(int64_t off, int seed) { return static_cast<uint8_t>((off * 131 + seed * 7 + (off >> 9)) & 0xff); }

void fill_pattern(uint8_t *p, size_t len, int64_t off, int seed)
{
    for (size_t i = 0; i < len; i++) p[i] = pattern(off + static_cast<int64_t>(i), seed);
}

bool check_pattern(const uint8_t *p, size_t len, int64_t off, int seed)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern(off + static_cast<int64_t>(i), seed)) return false;
    return true;
}

int64_t co_write_buf(IoBackend *b, int fd, const void *buf, size_t len, int64_t off)
{
    struct iovec iov = {const_cast<void *>(buf), len};
    return b->co_pwritev(fd, &iov, 1, off);
}

int64_t co_read_buf(IoBackend *b, int fd, void *buf, size_t len, int64_t off)
{
    struct iovec iov = {buf, len};
    return b->co_preadv(fd, &iov, 1, off);
}

// Runs n coroutines of fn(i) at once and the loop until all are done.
template <typename Fn>
void run_concurrently(AioContext *ctx, int n, Fn fn)
{
    int done = 0;
    for (int i = 0; i < n; i++) {
        ctx->co_enter(coroutine_create_fn([&fn, &done, i] {
            fn(i);
            done++;
        }));
    }
    int64_t deadline = clock_ns() + 20000000000LL;
    while (done < n) {
        ck_assert_msg(clock_ns() < deadline, "only %d of %d coroutines finished", done, n);
        ctx->iterate(true);
    }
}

} // namespace

// ---------------------------------------------------------------- data

// Random reads, writes and syncs, checked against a reference buffer.
START_TEST(test_rw_random)
{
    auto ctx = AioContext::create();
    IoBackend *b = backend_for(ctx.get(), _i);
    TempFile f;
    constexpr size_t kFile = 4 << 20, kMaxIo = 192 << 10;
    std::vector<uint8_t> ref(kFile, 0), buf(kMaxIo);
    std::mt19937 rng(1234 + _i);
    int64_t end = 0;
    int writes = 0, reads = 0, syncs = 0;
    run_in_coroutine([&] {
        for (int op = 0; op < 300; op++) {
            unsigned kind = rng() % 10;
            size_t len = 1 + rng() % kMaxIo;
            if (rng() % 4 == 0) len = (1 + rng() % 16) * 4096;   // aligned sizes too
            int64_t off = static_cast<int64_t>(rng() % (kFile - len));
            if (rng() % 4 == 0) off &= ~int64_t{4095};
            if (kind < 5) {
                for (size_t i = 0; i < len; i++) buf[i] = static_cast<uint8_t>(rng());
                auto iov = split(buf.data(), len, rng);
                int64_t r = b->co_pwritev(f.fd, iov.data(), static_cast<int>(iov.size()), off);
                ck_assert_int_eq(r, static_cast<int64_t>(len));
                memcpy(&ref[off], buf.data(), len);
                if (off + static_cast<int64_t>(len) > end) end = off + static_cast<int64_t>(len);
                writes++;
            } else if (kind < 9) {
                memset(buf.data(), 0xee, len);
                auto iov = split(buf.data(), len, rng);
                int64_t r = b->co_preadv(f.fd, iov.data(), static_cast<int>(iov.size()), off);
                ck_assert_int_eq(r, static_cast<int64_t>(len));
                ck_assert_msg(memcmp(buf.data(), &ref[off], len) == 0, "op %d: read of %zu at %lld differs",
                              op, len, static_cast<long long>(off));
                reads++;
            } else {
                ck_assert_int_eq(b->co_fsync(f.fd, rng() % 2 == 0), 0);
                syncs++;
            }
        }
    });
    ck_assert_int_gt(writes, 0);
    ck_assert_int_gt(reads, 0);
    ck_assert_int_gt(syncs, 0);
    ck_assert_int_eq(f.size(), end);
    // What the kernel has, read back without the backend.
    std::vector<uint8_t> all(kFile, 0xee);
    ck_assert_int_eq(pread(f.fd, all.data(), kFile, 0), end);
    ck_assert(memcmp(all.data(), ref.data(), static_cast<size_t>(end)) == 0);
    IoBackendStats st = b->stats();
    ck_assert_uint_eq(st.requests, static_cast<uint64_t>(writes + reads + syncs));
    ck_assert_uint_ge(st.submissions, st.requests);
}
END_TEST

// 256 coroutines with a request each in flight at once: writes, then reads.
START_TEST(test_256_in_flight)
{
    auto ctx = AioContext::create();
    IoBackend *b = backend_for(ctx.get(), _i);
    TempFile f;
    constexpr int kN = 256;
    constexpr size_t kChunk = 16 << 10;
    IoBackendStats before = b->stats();
    int in_flight = 0, max_in_flight = 0, bad = 0;
    auto track = [&](int64_t (*op)(IoBackend *, int, uint8_t *, int64_t), IoBackend *be, int fd, uint8_t *p,
                     int64_t off) {
        in_flight++;
        if (in_flight > max_in_flight) max_in_flight = in_flight;
        int64_t r = op(be, fd, p, off);
        in_flight--;
        return r;
    };
    auto do_write = [](IoBackend *be, int fd, uint8_t *p, int64_t off) {
        // Two pieces, to exercise vectors.
        struct iovec iov[2] = {{p, kChunk / 4}, {p + kChunk / 4, kChunk - kChunk / 4}};
        return be->co_pwritev(fd, iov, 2, off);
    };
    auto do_read = [](IoBackend *be, int fd, uint8_t *p, int64_t off) { return co_read_buf(be, fd, p, kChunk, off); };
    run_concurrently(ctx.get(), kN, [&](int i) {
        std::vector<uint8_t> w(kChunk), r(kChunk, 0);
        int64_t off = static_cast<int64_t>(i) * kChunk;
        fill_pattern(w.data(), kChunk, off, i);
        if (track(do_write, b, f.fd, w.data(), off) != static_cast<int64_t>(kChunk)) bad++;
        if (track(do_read, b, f.fd, r.data(), off) != static_cast<int64_t>(kChunk)) bad++;
        if (!check_pattern(r.data(), kChunk, off, i)) bad++;
    });
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(max_in_flight, kN);
    // Each reads its neighbour's chunk, all at once again.
    max_in_flight = 0;
    run_concurrently(ctx.get(), kN, [&](int i) {
        std::vector<uint8_t> r(kChunk, 0);
        int j = (i + 1) % kN;
        int64_t off = static_cast<int64_t>(j) * kChunk;
        if (track(do_read, b, f.fd, r.data(), off) != static_cast<int64_t>(kChunk)) bad++;
        if (!check_pattern(r.data(), kChunk, off, j)) bad++;
    });
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(max_in_flight, kN);
    IoBackendStats st = b->stats();
    ck_assert_uint_eq(st.requests - before.requests, 3 * kN);
    if (_i == 0) {
        // Batched: far fewer io_uring_enter calls than requests.
        ck_assert_uint_gt(st.enters - before.enters, 0);
        ck_assert_uint_lt(st.enters - before.enters, (st.requests - before.requests) / 4);
    } else {
        ck_assert_uint_eq(st.enters, 0);
    }
}
END_TEST

// A read that reaches end-of-file returns the full length; the part beyond
// EOF reads as zeros. The kernel returns a short read first, then 0.
START_TEST(test_read_past_eof)
{
    auto ctx = AioContext::create();
    IoBackend *b = backend_for(ctx.get(), _i);
    TempFile f;
    constexpr size_t kFile = 10000;
    std::vector<uint8_t> data(kFile);
    fill_pattern(data.data(), kFile, 0, 5);
    ck_assert_int_eq(pwrite(f.fd, data.data(), kFile, 0), static_cast<ssize_t>(kFile));
    IoBackendStats before = b->stats();
    run_in_coroutine([&] {
        // EOF (at 10000 - 8192 = 1808 bytes in) falls inside the second piece.
        std::vector<uint8_t> buf(16384, 0xaa);
        struct iovec iov[3] = {{buf.data(), 1000}, {buf.data() + 1000, 4000}, {buf.data() + 5000, 16384 - 5000}};
        ck_assert_int_eq(b->co_preadv(f.fd, iov, 3, 8192), 16384);
        ck_assert(check_pattern(buf.data(), kFile - 8192, 8192, 5));
        for (size_t i = kFile - 8192; i < buf.size(); i++) ck_assert_msg(buf[i] == 0, "byte %zu not zero", i);
        // The iovec array itself is not modified.
        ck_assert_ptr_eq(iov[1].iov_base, buf.data() + 1000);
        ck_assert_uint_eq(iov[1].iov_len, 4000);

        // Entirely beyond EOF.
        std::vector<uint8_t> far(4096, 0xaa);
        ck_assert_int_eq(co_read_buf(b, f.fd, far.data(), far.size(), 1 << 20), 4096);
        for (uint8_t c : far) ck_assert_uint_eq(c, 0);

        // Exactly up to EOF, and one byte across it.
        std::vector<uint8_t> whole(kFile + 1, 0xaa);
        ck_assert_int_eq(co_read_buf(b, f.fd, whole.data(), kFile, 0), kFile);
        ck_assert(check_pattern(whole.data(), kFile, 0, 5));
        ck_assert_uint_eq(whole[kFile], 0xaa);   // nothing written past the request
        ck_assert_int_eq(co_read_buf(b, f.fd, whole.data(), kFile + 1, 0), kFile + 1);
        ck_assert_uint_eq(whole[kFile], 0);
    });
    ck_assert_int_eq(f.size(), kFile);   // reads never extend the file
    if (_i == 0) ck_assert_uint_gt(b->stats().resubmissions - before.resubmissions, 0);
}
END_TEST

// inline_if_idle: with nothing in flight the transfer is done in the calling
// coroutine (no yield, counted in inline_requests, EOF rule kept); with
// another request in flight it goes through the backend as usual.
START_TEST(test_inline_if_idle)
{
    auto ctx = AioContext::create();
    IoBackend *b = backend_for(ctx.get(), _i);
    TempFile f;
    std::vector<uint8_t> data(8192), back(8192 + 100, 0xaa), big(IoBackend::kInlineMaxBytes + 1);
    fill_pattern(data.data(), data.size(), 0, 9);
    const IoBackendStats before = b->stats();
    run_in_coroutine([&] {
        struct iovec w = {data.data(), data.size()};
        ck_assert(b->idle());
        ck_assert_int_eq(b->co_pwritev(f.fd, &w, 1, 0, true), 8192);
        struct iovec r = {back.data(), back.size()};
        ck_assert_int_eq(b->co_preadv(f.fd, &r, 1, 0, true), 8192 + 100);
        // Larger than kInlineMaxBytes: through the backend.
        struct iovec g = {big.data(), big.size()};
        ck_assert_int_eq(b->co_preadv(f.fd, &g, 1, 0, true), static_cast<int64_t>(big.size()));
    });
    ck_assert(check_pattern(back.data(), 8192, 0, 9));
    for (size_t i = 8192; i < back.size(); i++) ck_assert_msg(back[i] == 0, "byte %zu past EOF not zero", i);
    const IoBackendStats mid = b->stats();
    ck_assert_uint_eq(mid.inline_requests - before.inline_requests, 2);
    ck_assert_uint_eq(mid.requests, before.requests + 1);   // only the large one

    // Two at once: the first goes inline only if nothing is in flight; the
    // second finds the first in flight unless it was inline; both complete.
    run_concurrently(ctx.get(), 2, [&](int i) {
        std::vector<uint8_t> buf(4096);
        struct iovec v = {buf.data(), buf.size()};
        ck_assert_int_eq(b->co_preadv(f.fd, &v, 1, i * 4096, i == 0 ? false : true), 4096);
        ck_assert(check_pattern(buf.data(), 4096, i * 4096, 9));
    });
    const IoBackendStats after = b->stats();
    // The first (not inline) was in flight when the second asked.
    ck_assert_uint_eq(after.inline_requests, mid.inline_requests);
    ck_assert(b->idle());
}
END_TEST

// io_uring only: a pipe delivers data in pieces, so reads come back short in
// the middle of the data (not at EOF) and must be continued in order.
START_TEST(test_short_read_pipe_uring)
{
    auto ctx = AioContext::create();
    IoBackend *b = backend_for(ctx.get(), 0);
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    constexpr size_t kTotal = 3 * 4096 + 100;
    std::vector<uint8_t> data(kTotal);
    fill_pattern(data.data(), kTotal, 0, 9);
    // The next piece goes in only once the reader has taken the previous
    // one, so every piece but the last ends a short read.
    std::atomic<int> pieces_written{0};
    std::thread writer([&] {
        size_t pos = 0;
        const size_t pieces[] = {1000, 4096, 3000, kTotal - 8096};
        for (size_t n : pieces) {
            int64_t deadline = clock_ns() + 5000000000LL;
            int avail = 1;
            while (pos && clock_ns() < deadline && ioctl(p[0], FIONREAD, &avail) == 0 && avail > 0) g_usleep(200);
            if (write(p[1], data.data() + pos, n) != static_cast<ssize_t>(n)) break;
            pos += n;
            pieces_written++;
        }
    });
    IoBackendStats before = b->stats();
    std::vector<uint8_t> buf(kTotal, 0);
    int64_t r = run_in_coroutine([&] {
        struct iovec iov[2] = {{buf.data(), 5000}, {buf.data() + 5000, kTotal - 5000}};
        return b->co_preadv(p[0], iov, 2, 0);
    });
    writer.join();
    ck_assert_int_eq(pieces_written.load(), 4);
    ck_assert_int_eq(r, kTotal);
    ck_assert(memcmp(buf.data(), data.data(), kTotal) == 0);
    ck_assert_uint_ge(b->stats().resubmissions - before.resubmissions, 3);
    close(p[0]);
    close(p[1]);
}
END_TEST

// A ring of 8 entries and 256 concurrent requests: all complete correctly;
// the extra ones waited for room.
START_TEST(test_small_ring)
{
    auto ctx = AioContext::create();
    auto r = IoBackend::new_uring(ctx.get(), 8);
    ck_assert_msg(r.ok(), "new_uring: %s", r.ok() ? "" : r.msg().c_str());
    std::unique_ptr<IoBackend> b = std::move(r.value());
    ck_assert_str_eq(b->name(), "io_uring");
    TempFile f;
    constexpr int kN = 256;
    constexpr size_t kChunk = 8192;
    int bad = 0;
    run_concurrently(ctx.get(), kN, [&](int i) {
        std::vector<uint8_t> w(kChunk), rd(kChunk, 0);
        int64_t off = static_cast<int64_t>(i) * kChunk;
        fill_pattern(w.data(), kChunk, off, i + 1);
        if (co_write_buf(b.get(), f.fd, w.data(), kChunk, off) != static_cast<int64_t>(kChunk)) bad++;
        if (co_read_buf(b.get(), f.fd, rd.data(), kChunk, off) != static_cast<int64_t>(kChunk)) bad++;
        if (!check_pattern(rd.data(), kChunk, off, i + 1)) bad++;
    });
    ck_assert_int_eq(bad, 0);
    IoBackendStats st = b->stats();
    ck_assert_uint_eq(st.requests, 2 * kN);
    ck_assert_uint_gt(st.queue_full_waits, 0);
    ck_assert_uint_ge(st.submissions, 2 * kN);
    std::vector<uint8_t> all(kN * kChunk);
    ck_assert_int_eq(pread(f.fd, all.data(), all.size(), 0), static_cast<ssize_t>(all.size()));
    for (int i = 0; i < kN; i++) ck_assert(check_pattern(&all[i * kChunk], kChunk, i * static_cast<int64_t>(kChunk), i + 1));
    b.reset();   // removes its handler and hook from ctx before ctx goes
}
END_TEST

// ---------------------------------------------------------------- backend choice

START_TEST(test_disable_io_uring)
{
    setenv("BLOCKGRAPH_DISABLE_IO_URING", "1", 1);
    auto ctx = AioContext::create();
    auto r = IoBackend::new_uring(ctx.get());
    ck_assert(!r.ok());
    ck_assert_int_eq(r.err(), ENOSYS);
    ck_assert_ptr_nonnull(strstr(r.msg().c_str(), "BLOCKGRAPH_DISABLE_IO_URING"));
    ck_assert(!ctx->io_uring_available());
    IoBackend *b = ctx->io();
    ck_assert_str_eq(b->name(), "threads");
    ck_assert_ptr_eq(ctx->io(AioBackendKind::kIoUring), b);   // falls back to the same pool
    ck_assert_ptr_eq(ctx->io(AioBackendKind::kThreads), b);
    TempFile f;
    char out[6] = {};
    run_in_coroutine([&] {
        ck_assert_int_eq(co_write_buf(b, f.fd, "hello", 5, 0), 5);
        ck_assert_int_eq(co_read_buf(b, f.fd, out, 5, 0), 5);
    });
    ck_assert_str_eq(out, "hello");
    ck_assert_uint_eq(b->stats().requests, 2);
}
END_TEST

START_TEST(test_backend_selection)
{
    auto ctx = AioContext::create();
    ck_assert(ctx->io_uring_available());
    IoBackend *def = ctx->io();
    ck_assert_str_eq(def->name(), "io_uring");
    ck_assert_ptr_eq(ctx->io(AioBackendKind::kIoUring), def);   // one backend of each kind
    IoBackend *th = ctx->io(AioBackendKind::kThreads);
    ck_assert_str_eq(th->name(), "threads");
    ck_assert_ptr_eq(ctx->io(AioBackendKind::kThreads), th);
    setenv("BLOCKGRAPH_AIO", "threads", 1);
    ck_assert_ptr_eq(ctx->io(), th);
    ck_assert_ptr_eq(ctx->io(AioBackendKind::kIoUring), def);   // an explicit kind wins
    setenv("BLOCKGRAPH_AIO", "io_uring", 1);
    ck_assert_ptr_eq(ctx->io(), def);
}
END_TEST

// ---------------------------------------------------------------- fallocate, errors

START_TEST(test_fallocate)
{
    auto ctx = AioContext::create();
    IoBackend *b = backend_for(ctx.get(), _i);
    TempFile f;
    constexpr size_t kSize = 1 << 20, kHoleOff = 64 << 10, kHoleLen = 128 << 10;
    std::vector<uint8_t> buf(kSize, 0xcd);
    run_in_coroutine([&] {
        ck_assert_int_eq(co_write_buf(b, f.fd, buf.data(), kSize, 0), kSize);
        ck_assert_int_eq(b->co_fallocate(f.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kHoleOff, kHoleLen), 0);
        std::fill(buf.begin(), buf.end(), 0x11);
        ck_assert_int_eq(co_read_buf(b, f.fd, buf.data(), kSize, 0), kSize);
        for (size_t i = 0; i < kSize; i++) {
            uint8_t want = (i >= kHoleOff && i < kHoleOff + kHoleLen) ? 0 : 0xcd;
            if (buf[i] != want) ck_abort_msg("byte %zu is %#x, want %#x", i, buf[i], want);
        }
        // Mode 0 allocates and extends the file; the new range reads as zeros.
        ck_assert_int_eq(b->co_fallocate(f.fd, 0, 2 << 20, 64 << 10), 0);
        std::vector<uint8_t> tail(64 << 10, 0x11);
        ck_assert_int_eq(co_read_buf(b, f.fd, tail.data(), tail.size(), 2 << 20), tail.size());
        for (uint8_t c : tail) ck_assert_uint_eq(c, 0);
        // Punching without KEEP_SIZE is refused by the kernel.
        ck_assert_int_eq(b->co_fallocate(f.fd, FALLOC_FL_PUNCH_HOLE, 0, 4096), -EOPNOTSUPP);
    });
    ck_assert_int_eq(f.size(), (2 << 20) + (64 << 10));
    struct stat st;
    ck_assert_int_eq(fstat(f.fd, &st), 0);
    // The hole really is one: fewer blocks than the data written + allocated.
    ck_assert_int_lt(st.st_blocks * 512, static_cast<int64_t>(kSize + (64 << 10)));
}
END_TEST

START_TEST(test_errors)
{
    auto ctx = AioContext::create();
    IoBackend *b = backend_for(ctx.get(), _i);
    TempFile f;
    int dir = open("/", O_RDONLY | O_DIRECTORY);
    ck_assert_int_ge(dir, 0);
    int closed = dup(f.fd);   // a descriptor number that is not open
    close(closed);
    IoBackendStats before = b->stats();
    run_in_coroutine([&] {
        char buf[512] = {};
        ck_assert_int_eq(co_read_buf(b, -1, buf, sizeof(buf), 0), -EBADF);
        ck_assert_int_eq(co_read_buf(b, closed, buf, sizeof(buf), 0), -EBADF);
        ck_assert_int_eq(co_write_buf(b, f.ro_fd, buf, sizeof(buf), 0), -EBADF);
        ck_assert_int_eq(co_write_buf(b, -1, buf, sizeof(buf), 0), -EBADF);
        ck_assert_int_eq(b->co_fsync(-1, false), -EBADF);
        ck_assert_int_eq(b->co_fsync(closed, true), -EBADF);
        ck_assert_int_eq(b->co_fallocate(f.ro_fd, 0, 0, 4096), -EBADF);
        ck_assert_int_eq(co_read_buf(b, dir, buf, sizeof(buf), 0), -EISDIR);
        ck_assert_int_eq(co_read_buf(b, f.fd, buf, sizeof(buf), -4096), -EINVAL);
        // The backend still works after errors.
        ck_assert_int_eq(co_write_buf(b, f.fd, "ok", 2, 0), 2);
        ck_assert_int_eq(co_read_buf(b, f.ro_fd, buf, 2, 0), 2);
        ck_assert(memcmp(buf, "ok", 2) == 0);
    });
    ck_assert_uint_eq(b->stats().requests - before.requests, 11);
    close(dir);
}
END_TEST

START_TEST(test_io_outside_coroutine_aborts)
{
    auto ctx = AioContext::create();
    IoBackend *b = backend_for(ctx.get(), _i);
    char buf[16];
    co_read_buf(b, 0, buf, sizeof(buf), 0);
    ck_abort_msg("I/O outside a coroutine did not abort");
}
END_TEST

// ---------------------------------------------------------------- suite

static Suite *io_suite()
{
    Suite *s = suite_create("io");

    TCase *tc = tcase_create("data");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_rw_random, 0, kBackends);
    tcase_add_loop_test(tc, test_256_in_flight, 0, kBackends);
    tcase_add_loop_test(tc, test_read_past_eof, 0, kBackends);
    tcase_add_loop_test(tc, test_inline_if_idle, 0, kBackends);
    tcase_add_test(tc, test_short_read_pipe_uring);
    tcase_add_test(tc, test_small_ring);
    suite_add_tcase(s, tc);

    tc = tcase_create("backend");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_disable_io_uring);
    tcase_add_test(tc, test_backend_selection);
    suite_add_tcase(s, tc);

    tc = tcase_create("ops");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, test_fallocate, 0, kBackends);
    tcase_add_loop_test(tc, test_errors, 0, kBackends);
    tcase_add_loop_test_raise_signal(tc, test_io_outside_coroutine_aborts, SIGABRT, 0, kBackends);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(io_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

// Unit tests for the `file` protocol driver (block/file-posix.cc): I/O with
// io_uring and the thread pool, O_DIRECT with misaligned callers, zeroes,
// discard, block status, truncate, flush, open errors and QEMU-compatible
// image locking.
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#define FUSE_USE_VERSION 31
#include <fuse3/fuse.h>
#include <glib.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "block/block-driver.h"
#include "block/block.h"
#include "tests/unit/testdrv.h"
#include "util/aio.h"
#include "util/iov.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

// True when every byte of [p, p + n) is zero. One assertion per range: Check
// records each assertion (a write to its log pipe), so per-byte assertions
// over megabytes would dominate the test's run time.
static bool all_zero(const uint8_t *p, size_t n)
{
    return std::all_of(p, p + n, [](uint8_t b) { return b == 0; });
}

using namespace bg;

namespace {

// ---------------------------------------------------------------- helpers

// Per-test-case scratch directory. Created and removed by an unchecked
// fixture, i.e. in the runner process, so files of a test whose child died
// on a failed assertion (no destructors run) are removed too.
std::string g_dir;

std::string tmp_dir()
{
    const char *t = getenv("TMPDIR");
    return t && *t ? t : "/var/tmp";
}

void scratch_setup()
{
    std::string tmpl = tmp_dir() + "/test-file-XXXXXX";
    std::vector<char> b(tmpl.begin(), tmpl.end());
    b.push_back('\0');
    if (!mkdtemp(b.data())) abort();
    g_dir = b.data();
    chmod(g_dir.c_str(), 0755);   // test_open_eacces's unprivileged child looks inside
}

void scratch_teardown()
{
    nftw(g_dir.c_str(), [](const char *p, const struct stat *, int, struct FTW *) { return remove(p); }, 16,
         FTW_DEPTH | FTW_PHYS);
}

// A temporary file, removed when this goes out of scope.
struct TmpFile {
    std::string path;
    explicit TmpFile(int64_t size = 0, bool fill = false, uint32_t seed = 1)
    {
        std::string tmpl = g_dir + "/img-XXXXXX";
        std::vector<char> b(tmpl.begin(), tmpl.end());
        b.push_back('\0');
        int fd = mkstemp(b.data());
        ck_assert_int_ge(fd, 0);
        path = b.data();
        if (fill) {
            std::mt19937 rng(seed);
            std::vector<uint8_t> buf(static_cast<size_t>(size));
            for (auto &c : buf) c = static_cast<uint8_t>(rng());
            ck_assert_int_eq(pwrite(fd, buf.data(), buf.size(), 0), size);
        } else {
            ck_assert_int_eq(ftruncate(fd, size), 0);
        }
        close(fd);
    }
    ~TmpFile() { unlink(path.c_str()); }
    std::vector<uint8_t> contents() const
    {
        int fd = open(path.c_str(), O_RDONLY);
        ck_assert_int_ge(fd, 0);
        struct stat st;
        ck_assert_int_eq(fstat(fd, &st), 0);
        std::vector<uint8_t> v(static_cast<size_t>(st.st_size));
        ck_assert_int_eq(pread(fd, v.data(), v.size(), 0), st.st_size);
        close(fd);
        return v;
    }
    struct stat stat() const
    {
        struct stat st;
        ck_assert_int_eq(::stat(path.c_str(), &st), 0);
        return st;
    }
};

// A file node's options; aio: "io_uring", "threads" or "native"; extra:
// more members ({"locking": "off"}).
nlohmann::json file_json(const std::string &path, const char *aio = "io_uring", const nlohmann::json &extra = {})
{
    nlohmann::json j = {{"driver", "file"}, {"filename", path}, {"aio", aio}};
    if (extra.is_object()) j.update(extra);
    return j;
}

BlockdevOptions file_opts(const std::string &path, const char *aio = "io_uring", const nlohmann::json &extra = {})
{
    return must_parse_json(file_json(path, aio, extra), builtin_drivers());
}

constexpr BlockPerm kRW = kPermConsistentRead | kPermWrite;
// What qemu-io / qemu-img share by default (BDRV_O_NO_SHARE).
constexpr BlockPerm kShareNoWrite = kPermConsistentRead | kPermWriteUnchanged;

// A graph with one file node and one backend on it.
struct Env {
    std::unique_ptr<BlockGraph> graph = std::make_unique<BlockGraph>();
    BlockNode *node = nullptr;
    std::unique_ptr<BlockBackend> blk;

    explicit Env(const BlockdevOptions &o, BlockPerm perm = kRW | kPermResize, BlockPerm shared = kPermAll)
    {
        auto n = graph->add_node(o);
        ck_assert_msg(n.ok(), "add_node: %s", n.ok() ? "" : n.msg().c_str());
        node = *n;
        auto b = BlockBackend::create(node, perm, shared, "test");
        ck_assert_msg(b.ok(), "BlockBackend::create: %s", b.ok() ? "" : b.msg().c_str());
        blk = std::move(*b);
    }
    ~Env()
    {
        blk.reset();
        graph.reset();
    }
};

int blk_read(BlockBackend *blk, int64_t off, int64_t len, void *buf)
{
    return run_in_coroutine([&] { return blk->co_pread(off, len, buf); });
}
int blk_write(BlockBackend *blk, int64_t off, int64_t len, const void *buf)
{
    return run_in_coroutine([&] { return blk->co_pwrite(off, len, buf); });
}

struct Status3 {
    int ret;
    int64_t pnum, map;
    BlockNode *file;
};
Status3 node_status(BlockNode *n, bool want_zero, int64_t off, int64_t bytes)
{
    Status3 s{0, 0, -1, nullptr};
    s.ret = run_in_coroutine([&] { return n->co_block_status(want_zero, off, bytes, &s.pnum, &s.map, &s.file); });
    return s;
}

// True if some descriptor of this process that names path was opened with
// O_DIRECT (read from /proc/self/fdinfo).
bool fd_has_odirect(const std::string &path)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return false;
    bool found = false;
    while (struct dirent *e = readdir(d)) {
        char link[4096];
        std::string p = std::string("/proc/self/fd/") + e->d_name;
        ssize_t n = readlink(p.c_str(), link, sizeof(link) - 1);
        if (n <= 0) continue;
        link[n] = '\0';
        if (path != link) continue;
        FILE *f = fopen((std::string("/proc/self/fdinfo/") + e->d_name).c_str(), "r");
        if (!f) continue;
        char line[256];
        while (fgets(line, sizeof(line), f)) {
            unsigned long flags;
            if (sscanf(line, "flags: %lo", &flags) == 1 && (flags & O_DIRECT)) found = true;
        }
        fclose(f);
    }
    closedir(d);
    return found;
}

// Whether another open file description holds a lock on byte off of path.
bool byte_locked(const std::string &path, int off)
{
    int fd = open(path.c_str(), O_RDONLY);
    ck_assert_int_ge(fd, 0);
    struct flock fl = {};
    fl.l_whence = SEEK_SET;
    fl.l_start = off;
    fl.l_len = 1;
    fl.l_type = F_WRLCK;
    ck_assert_int_eq(fcntl(fd, F_OFD_GETLK, &fl), 0);
    close(fd);
    return fl.l_type != F_UNLCK;
}

// Random reads and writes at random (unaligned) offsets through blk, checked
// against a reference copy; buffers are deliberately misaligned when
// misalign is set. Finally the file itself is compared.
void random_io(BlockBackend *blk, const TmpFile &tf, std::vector<uint8_t> &ref, bool misalign, int rounds)
{
    std::mt19937 rng(42);
    const int64_t size = static_cast<int64_t>(ref.size());
    std::vector<uint8_t> mem(256 * 1024 + 64);
    for (int i = 0; i < rounds; i++) {
        int64_t len = 1 + rng() % (192 * 1024);
        if (i % 3 == 0) len = (1 + rng() % 48) * 4096;   // aligned sizes too
        int64_t off = rng() % (size - len + 1);
        if (i % 5 == 0) off = off / 4096 * 4096;
        uint8_t *buf = mem.data() + (misalign ? 1 + rng() % 63 : 0);
        if (rng() % 2) {
            for (int64_t k = 0; k < len; k++) buf[k] = static_cast<uint8_t>(rng());
            ck_assert_int_eq(blk_write(blk, off, len, buf), 0);
            std::memcpy(ref.data() + off, buf, static_cast<size_t>(len));
        } else {
            ck_assert_int_eq(blk_read(blk, off, len, buf), 0);
            ck_assert_msg(std::memcmp(buf, ref.data() + off, static_cast<size_t>(len)) == 0,
                          "round %d: read %lld@%lld differs", i, (long long)len, (long long)off);
        }
    }
    // Vectored, misaligned read of everything.
    std::vector<uint8_t> a(static_cast<size_t>(size) / 2 + 7), b(static_cast<size_t>(size) - a.size() + 16);
    IOVector qiov;
    qiov.add(a.data(), a.size());
    qiov.add(b.data() + 3, static_cast<size_t>(size) - a.size());
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_preadv(0, size, qiov); }), 0);
    ck_assert(std::memcmp(a.data(), ref.data(), a.size()) == 0);
    ck_assert(std::memcmp(b.data() + 3, ref.data() + a.size(), static_cast<size_t>(size) - a.size()) == 0);
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_flush(); }), 0);
    ck_assert(tf.contents() == ref);
}

void rw_test(const char *aio, bool direct)
{
    auto ctx = AioContext::create();
    const int64_t size = 4 << 20;
    TmpFile tf(size, true, 7);
    std::vector<uint8_t> ref = tf.contents();
    auto o = file_opts(tf.path, aio);
    o.cache_direct = direct;
    Env env(o);
    ck_assert_int_eq(env.node->getlength(), size);
    ck_assert(env.node->filename() == tf.path);
    ck_assert_int_eq(fd_has_odirect(tf.path), direct);
    if (direct) {
        ck_assert_uint_ge(env.node->limits().request_alignment, 512);
        ck_assert_uint_ge(env.node->limits().min_mem_alignment, 512);
    } else {
        ck_assert_uint_eq(env.node->limits().request_alignment, 1);
    }
    random_io(env.blk.get(), tf, ref, direct, 300);
}

} // namespace

// ---------------------------------------------------------------- read/write

START_TEST(test_rw_io_uring) { rw_test("io_uring", false); }
END_TEST

START_TEST(test_rw_threads) { rw_test("threads", false); }
END_TEST

// O_DIRECT: the generic layer pads unaligned offsets, the driver bounces
// misaligned buffers.
START_TEST(test_rw_direct_io_uring) { rw_test("io_uring", true); }
END_TEST

START_TEST(test_rw_direct_threads) { rw_test("threads", true); }
END_TEST

// Requests from coroutines of two threads at once, each with its own
// AioContext (and ring): the driver picks the backend per request.
START_TEST(test_rw_two_threads)
{
    auto ctx = AioContext::create();
    const int64_t size = 2 << 20;
    TmpFile tf(size);
    Env env(file_opts(tf.path));
    std::atomic<int> failures{0};
    auto worker = [&](int id) {
        GMainContext *gctx = g_main_context_new();
        g_main_context_push_thread_default(gctx);
        auto tctx = AioContext::create(gctx);
        std::vector<uint8_t> buf(64 * 1024, static_cast<uint8_t>(0x10 + id)), back(buf.size());
        for (int i = 0; i < 16; i++) {
            int64_t off = (i * 2 + id) * static_cast<int64_t>(buf.size());
            if (blk_write(env.blk.get(), off, buf.size(), buf.data()) != 0) failures++;
            if (blk_read(env.blk.get(), off, back.size(), back.data()) != 0 || back != buf) failures++;
        }
        tctx.reset();
        g_main_context_pop_thread_default(gctx);
        g_main_context_unref(gctx);
    };
    std::thread t0(worker, 0), t1(worker, 1);
    t0.join();
    t1.join();
    ck_assert_int_eq(failures.load(), 0);
    auto c = tf.contents();
    for (int64_t i = 0; i < size; i++) {
        if (c[i] != 0x10 + (i / (64 * 1024)) % 2) ck_abort_msg("byte %lld: 0x%02x", (long long)i, c[i]);
    }
}
END_TEST

// A file of unaligned length with O_DIRECT: the padded tail reads as zeros.
START_TEST(test_direct_unaligned_length)
{
    auto ctx = AioContext::create();
    for (auto aio : {"io_uring", "threads"}) {
        TmpFile tf(1000, true, 3);
        auto ref = tf.contents();
        auto o = file_opts(tf.path, aio);
        o.cache_direct = true;
        Env env(o);
        ck_assert_int_eq(env.node->getlength(), 1000);
        std::vector<uint8_t> buf(1000 + 1);
        ck_assert_int_eq(blk_read(env.blk.get(), 0, 1000, buf.data() + 1), 0);
        ck_assert(std::memcmp(buf.data() + 1, ref.data(), 1000) == 0);
        ck_assert_int_eq(blk_read(env.blk.get(), 999, 1, buf.data()), 0);
        ck_assert_int_eq(buf[0], ref[999]);
        // Writing the last bytes keeps the first ones (read-modify-write).
        buf[0] = 0xee;
        ck_assert_int_eq(blk_write(env.blk.get(), 990, 1, buf.data()), 0);
        ref[990] = 0xee;
        auto c = tf.contents();
        ck_assert_int_ge(c.size(), 1000);
        ck_assert(std::memcmp(c.data(), ref.data(), 1000) == 0);
    }
}
END_TEST

// Reading where the file has been shrunk behind the node's back: the part
// past the file's end reads as zeros.
START_TEST(test_read_past_eof)
{
    auto ctx = AioContext::create();
    for (int variant = 0; variant < 3; variant++) {
        TmpFile tf(65536, true, 5);
        auto ref = tf.contents();
        auto o = file_opts(tf.path, variant == 1 ? "threads" : "io_uring");
        o.cache_direct = variant == 2;
        Env env(o);
        ck_assert_int_eq(truncate(tf.path.c_str(), 20000), 0);
        ck_assert_int_eq(env.node->getlength(), 65536);   // cached
        std::vector<uint8_t> buf(65536, 0xaa);
        ck_assert_int_eq(blk_read(env.blk.get(), 0, 65536, buf.data()), 0);
        ck_assert(std::memcmp(buf.data(), ref.data(), 20000) == 0);
        ck_assert(all_zero(buf.data() + 20000, buf.size() - 20000));
        ck_assert_int_eq(env.node->refresh_length(), 0);
        ck_assert_int_eq(env.node->getlength(), 20000);
    }
}
END_TEST

// ---------------------------------------------------------------- zeroes, discard, status

START_TEST(test_discard)
{
    auto ctx = AioContext::create();
    const int64_t size = 1 << 20;
    TmpFile tf(size, true, 9);
    auto o = file_opts(tf.path);
    o.discard = BlockdevDiscardOptions::kUnmap;
    Env env(o);
    auto before = tf.stat().st_blocks;
    auto s = node_status(env.node, true, 256 * 1024, 256 * 1024);
    ck_assert_int_eq(s.ret & (kStatusData | kStatusZero), kStatusData);

    ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_pdiscard(256 * 1024, 256 * 1024); }), 0);
    ck_assert_int_le(tf.stat().st_blocks, before - 256 * 1024 / 512);
    s = node_status(env.node, true, 256 * 1024, 512 * 1024);
    ck_assert_int_eq(s.ret & (kStatusData | kStatusZero | kStatusOffsetValid), kStatusZero | kStatusOffsetValid);
    ck_assert_int_eq(s.pnum, 256 * 1024);
    ck_assert_int_eq(s.map, 256 * 1024);
    ck_assert_ptr_eq(s.file, env.node);
    std::vector<uint8_t> buf(256 * 1024, 1);
    ck_assert_int_eq(blk_read(env.blk.get(), 256 * 1024, buf.size(), buf.data()), 0);
    ck_assert(all_zero(buf.data(), buf.size()));
    ck_assert_int_eq(tf.stat().st_size, size);   // KEEP_SIZE
}
END_TEST

// Without discard=unmap the generic layer drops discards: data stays.
START_TEST(test_discard_ignored)
{
    auto ctx = AioContext::create();
    TmpFile tf(1 << 20, true, 9);
    auto ref = tf.contents();
    Env env(file_opts(tf.path));
    ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_pdiscard(0, 1 << 20); }), 0);
    ck_assert(tf.contents() == ref);
}
END_TEST

START_TEST(test_write_zeroes)
{
    auto ctx = AioContext::create();
    const int64_t size = 1 << 20;
    TmpFile tf(size, true, 11);
    auto ref = tf.contents();
    auto o = file_opts(tf.path);
    o.discard = BlockdevDiscardOptions::kUnmap;
    Env env(o);
    auto blocks0 = tf.stat().st_blocks;

    // Without MAY_UNMAP: reads as zeros, space stays allocated.
    ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_pwrite_zeroes(65536, 131072, 0); }), 0);
    std::memset(ref.data() + 65536, 0, 131072);
    ck_assert(tf.contents() == ref);
    ck_assert_int_ge(tf.stat().st_blocks, blocks0);

    // Unaligned range (zeroes partial file-system blocks).
    ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_pwrite_zeroes(300001, 7777, 0); }), 0);
    std::memset(ref.data() + 300001, 0, 7777);
    ck_assert(tf.contents() == ref);

    // With MAY_UNMAP: a hole.
    ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_pwrite_zeroes(524288, 262144, kReqMayUnmap); }), 0);
    std::memset(ref.data() + 524288, 0, 262144);
    ck_assert(tf.contents() == ref);
    ck_assert_int_le(tf.stat().st_blocks, blocks0 - 262144 / 512);
    auto s = node_status(env.node, true, 524288, 262144);
    ck_assert_int_eq(s.ret & (kStatusData | kStatusZero), kStatusZero);
    ck_assert_int_eq(s.pnum, 262144);
    ck_assert_int_eq(tf.stat().st_size, size);
}
END_TEST

// Data, hole, data, trailing hole; and the cheap want_zero=false mode.
START_TEST(test_block_status)
{
    auto ctx = AioContext::create();
    const int64_t size = 1 << 20;
    TmpFile tf(size);
    Env env(file_opts(tf.path));
    std::vector<uint8_t> data(65536, 0x5a);
    ck_assert_int_eq(blk_write(env.blk.get(), 0, 65536, data.data()), 0);
    ck_assert_int_eq(blk_write(env.blk.get(), 512 * 1024, 65536, data.data()), 0);
    // Make sure delayed allocation has put extents on disk for SEEK_DATA.
    ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_flush(); }), 0);

    const int kMask = kStatusData | kStatusZero | kStatusOffsetValid;
    auto s = node_status(env.node, true, 0, size);
    ck_assert_int_eq(s.ret & kMask, kStatusData | kStatusOffsetValid);
    ck_assert_int_eq(s.pnum, 65536);
    ck_assert_int_eq(s.map, 0);
    ck_assert_ptr_eq(s.file, env.node);

    s = node_status(env.node, true, 65536, size - 65536);
    ck_assert_int_eq(s.ret & kMask, kStatusZero | kStatusOffsetValid);
    ck_assert_int_eq(s.pnum, 512 * 1024 - 65536);
    ck_assert_int_eq(s.map, 65536);

    s = node_status(env.node, true, 512 * 1024, size - 512 * 1024);
    ck_assert_int_eq(s.ret & kMask, kStatusData | kStatusOffsetValid);
    ck_assert_int_eq(s.pnum, 65536);

    // Trailing hole (lseek says ENXIO): zeros to the end.
    s = node_status(env.node, true, 576 * 1024, size - 576 * 1024);
    ck_assert_int_eq(s.ret & (kStatusData | kStatusZero), kStatusZero);
    ck_assert_int_eq(s.pnum, size - 576 * 1024);

    // A query limited to part of an extent.
    s = node_status(env.node, true, 4096, 8192);
    ck_assert_int_eq(s.ret & kMask, kStatusData | kStatusOffsetValid);
    ck_assert_int_eq(s.pnum, 8192);

    // want_zero=false: all data, no lseek.
    s = node_status(env.node, false, 65536, size - 65536);
    ck_assert_int_eq(s.ret & kMask, kStatusData | kStatusOffsetValid);
    ck_assert_int_eq(s.pnum, size - 65536);
    ck_assert_int_eq(s.map, 65536);
}
END_TEST

// ---------------------------------------------------------------- truncate

START_TEST(test_truncate)
{
    auto ctx = AioContext::create();
    TmpFile tf(65536, true, 13);
    auto ref = tf.contents();
    Env env(file_opts(tf.path));
    auto trunc = [&](int64_t len, PreallocMode m) {
        return run_in_coroutine([&] { return env.blk->co_truncate(len, true, m); });
    };

    // off: sparse growth.
    ck_assert_int_eq(trunc(4 << 20, PreallocMode::kOff), 0);
    ck_assert_int_eq(tf.stat().st_size, 4 << 20);
    ck_assert_int_eq(env.node->getlength(), 4 << 20);
    ck_assert_int_lt(tf.stat().st_blocks * 512, 1 << 20);
    auto c = tf.contents();
    ck_assert(std::memcmp(c.data(), ref.data(), 65536) == 0);
    ck_assert(all_zero(c.data() + 65536, c.size() - 65536));

    // falloc: the new area is allocated.
    ck_assert_int_eq(trunc(8 << 20, PreallocMode::kFalloc), 0);
    ck_assert_int_eq(tf.stat().st_size, 8 << 20);
    ck_assert_int_ge(tf.stat().st_blocks * 512, 4 << 20);

    // full: zeros written.
    auto blocks = tf.stat().st_blocks;
    ck_assert_int_eq(trunc((12 << 20) + 1000, PreallocMode::kFull), 0);
    ck_assert_int_eq(tf.stat().st_size, (12 << 20) + 1000);
    ck_assert_int_ge(tf.stat().st_blocks - blocks, (4 << 20) / 512);
    c = tf.contents();
    ck_assert(all_zero(c.data() + 65536, c.size() - 65536));

    // metadata: refused (a file has no metadata), the file is unchanged.
    ck_assert_int_eq(trunc(13 << 20, PreallocMode::kMetadata), -ENOTSUP);
    ck_assert_int_eq(tf.stat().st_size, (12 << 20) + 1000);
    ck_assert_int_eq(trunc(13 << 20, PreallocMode::kOff), 0);
    ck_assert_int_eq(tf.stat().st_size, 13 << 20);

    // Shrinking with preallocation is refused, without it works.
    ck_assert_int_eq(trunc(32768, PreallocMode::kFalloc), -ENOTSUP);
    ck_assert_int_eq(trunc(32768, PreallocMode::kFull), -ENOTSUP);
    ck_assert_int_eq(tf.stat().st_size, 13 << 20);
    ck_assert_int_eq(trunc(32768, PreallocMode::kOff), 0);
    ck_assert_int_eq(tf.stat().st_size, 32768);
    ck_assert_int_eq(env.node->getlength(), 32768);
    c = tf.contents();
    ck_assert(std::memcmp(c.data(), ref.data(), 32768) == 0);
}
END_TEST

// preallocation=full with O_DIRECT from an unaligned length keeps the old
// tail and ends at exactly the requested length.
START_TEST(test_truncate_full_direct)
{
    auto ctx = AioContext::create();
    TmpFile tf(5000, true, 17);
    auto ref = tf.contents();
    auto o = file_opts(tf.path);
    o.cache_direct = true;
    Env env(o);
    ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_truncate(1 << 20, true, PreallocMode::kFull); }), 0);
    ck_assert_int_eq(tf.stat().st_size, 1 << 20);
    auto c = tf.contents();
    ck_assert(std::memcmp(c.data(), ref.data(), 5000) == 0);
    ck_assert(all_zero(c.data() + 5000, c.size() - 5000));
    ck_assert_int_ge(tf.stat().st_blocks * 512, 1 << 20);
    ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_truncate(3333, true, PreallocMode::kOff); }), 0);
    ck_assert_int_eq(tf.stat().st_size, 3333);
}
END_TEST

// ---------------------------------------------------------------- flush

START_TEST(test_flush)
{
    auto ctx = AioContext::create();
    for (auto aio : {"io_uring", "threads"}) {
        TmpFile tf(65536);
        Env env(file_opts(tf.path, aio));
        std::vector<uint8_t> buf(4096, 0x77);
        ck_assert_int_eq(blk_write(env.blk.get(), 0, 4096, buf.data()), 0);
        ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_flush(); }), 0);
        ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_flush(); }), 0);
    }
}
END_TEST

// ---- Flush poisoning, against a tiny FUSE file system whose fsync fails.
namespace {

struct FailFs {
    std::mutex lock;
    std::vector<uint8_t> data = std::vector<uint8_t>(1 << 20);
    std::atomic<int> fsyncs{0};
    std::atomic<bool> fail_fsync{true};
};
FailFs *g_fs;

int ffs_getattr(const char *path, struct stat *st, struct fuse_file_info *)
{
    std::memset(st, 0, sizeof(*st));
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        return 0;
    }
    if (strcmp(path, "/img") != 0) return -ENOENT;
    st->st_mode = S_IFREG | 0644;
    st->st_nlink = 1;
    std::lock_guard<std::mutex> g(g_fs->lock);
    st->st_size = static_cast<off_t>(g_fs->data.size());
    return 0;
}
int ffs_open(const char *path, struct fuse_file_info *) { return strcmp(path, "/img") == 0 ? 0 : -ENOENT; }
int ffs_read(const char *, char *buf, size_t size, off_t off, struct fuse_file_info *)
{
    std::lock_guard<std::mutex> g(g_fs->lock);
    if (static_cast<size_t>(off) >= g_fs->data.size()) return 0;
    size = std::min(size, g_fs->data.size() - static_cast<size_t>(off));
    std::memcpy(buf, g_fs->data.data() + off, size);
    return static_cast<int>(size);
}
int ffs_write(const char *, const char *buf, size_t size, off_t off, struct fuse_file_info *)
{
    std::lock_guard<std::mutex> g(g_fs->lock);
    if (static_cast<size_t>(off) + size > g_fs->data.size()) g_fs->data.resize(off + size);
    std::memcpy(g_fs->data.data() + off, buf, size);
    return static_cast<int>(size);
}
int ffs_fsync(const char *, int, struct fuse_file_info *)
{
    g_fs->fsyncs++;
    return g_fs->fail_fsync ? -EIO : 0;
}

} // namespace

// A failed fdatasync poisons every later flush (the page cache state is
// unknown), even once the file system would succeed again.
START_TEST(test_flush_poisoned)
{
    FailFs fs;
    g_fs = &fs;
    char mnt[] = "/tmp/test-file-fuse-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(mnt));
    struct fuse_operations ops = {};
    ops.getattr = ffs_getattr;
    ops.open = ffs_open;
    ops.read = ffs_read;
    ops.write = ffs_write;
    ops.fsync = ffs_fsync;
    char arg0[] = "test-file";
    char *argv[] = {arg0, nullptr};
    struct fuse_args args = FUSE_ARGS_INIT(1, argv);
    struct fuse *f = fuse_new(&args, &ops, sizeof(ops), nullptr);
    fuse_opt_free_args(&args);
    ck_assert_ptr_nonnull(f);
    if (fuse_mount(f, mnt) != 0) {
        fuse_destroy(f);
        rmdir(mnt);
        fprintf(stderr, "test_flush_poisoned: cannot mount FUSE here; skipped\n");
        return;
    }
    std::thread loop([f] { fuse_loop(f); });
    int result_first = 1, result_second = 1, result_third = 1, fsyncs_after = -1;
    {
        auto ctx = AioContext::create();
        auto o = file_opts(std::string(mnt) + "/img", "threads", {{"locking", "off"}});
        Env env(o);
        std::vector<uint8_t> buf(4096, 0x42);
        ck_assert_int_eq(blk_write(env.blk.get(), 0, 4096, buf.data()), 0);
        result_first = run_in_coroutine([&] { return env.blk->co_flush(); });
        int n = fs.fsyncs;
        fs.fail_fsync = false;
        result_second = run_in_coroutine([&] { return env.blk->co_flush(); });
        ck_assert_int_eq(blk_write(env.blk.get(), 4096, 4096, buf.data()), 0);
        result_third = run_in_coroutine([&] { return env.blk->co_flush(); });
        fsyncs_after = fs.fsyncs - n;
    }
    fuse_exit(f);
    fuse_unmount(f);
    loop.join();
    fuse_destroy(f);
    rmdir(mnt);
    ck_assert_int_eq(result_first, -EIO);
    ck_assert_int_eq(result_second, -EIO);
    ck_assert_int_eq(result_third, -EIO);
    ck_assert_int_eq(fsyncs_after, 0);   // no fdatasync attempted once poisoned
}
END_TEST

// ---------------------------------------------------------------- open

START_TEST(test_open_errors)
{
    auto ctx = AioContext::create();
    BlockGraph g;
    std::string missing = g_dir + "/does-not-exist";
    auto r = g.add_node(file_opts(missing));
    ck_assert(!r.ok());
    ck_assert_int_eq(r.err(), ENOENT);
    ck_assert_msg(r.msg().find("Could not open '" + missing + "': No such file or directory") != std::string::npos,
                  "%s", r.msg().c_str());

    // A directory: EISDIR when opened for writing ...
    std::string dir = g_dir;
    r = g.add_node(file_opts(dir));
    ck_assert(!r.ok());
    ck_assert_msg(r.msg().find("Could not open '" + dir + "': Is a directory") != std::string::npos, "%s",
                  r.msg().c_str());
    // ... and not a regular file when read-only.
    auto o = file_opts(dir);
    o.read_only = true;
    r = g.add_node(o);
    ck_assert(!r.ok());
    ck_assert_int_eq(r.err(), EINVAL);
    ck_assert_msg(r.msg().find("'file' driver requires '" + dir + "' to be a regular file") != std::string::npos,
                  "%s", r.msg().c_str());

    // aio=native needs cache.direct=on (QEMU's rule).
    TmpFile tf(4096);
    r = g.add_node_json(file_json(tf.path, "native"));
    ck_assert(!r.ok());
    ck_assert_msg(r.msg().find("aio=native was specified, but it requires cache.direct=on, which was not "
                               "specified.") != std::string::npos,
                  "%s", r.msg().c_str());
    // The driver checks it again at open (options built without the decoder).
    o = file_opts(tf.path, "native", {{"cache", {{"direct", true}}}});
    o.cache_direct = false;
    r = g.add_node(o);
    ck_assert(!r.ok());
    ck_assert_msg(r.msg().find("requires cache.direct=on") != std::string::npos, "%s", r.msg().c_str());
    o.cache_direct = true;
    r = g.add_node(o);
    ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
    ck_assert_int_eq(g.nodes().size(), 1);
}
END_TEST

// Permission denied. Root passes permission checks, so as root the checks
// run in a child process that drops to "nobody" first (the parent keeps the
// rights to clean up). The child reports the number of the failed check.
namespace {
int eacces_checks(const std::string &path)
{
    auto ctx = AioContext::create();
    BlockGraph g;
    auto r = g.add_node(file_opts(path));
    if (r.ok()) return 1;
    if (r.err() != EACCES) return 2;
    if (r.msg().find("Could not open '" + path + "': Permission denied") == std::string::npos) {
        fprintf(stderr, "message: %s\n", r.msg().c_str());
        return 3;
    }
    // Read-only works; so does auto-read-only, which settles for it.
    auto o = file_opts(path);
    o.read_only = true;
    r = g.add_node(o);
    if (!r.ok() || !r.value()->read_only()) return 4;
    o = file_opts(path);
    o.auto_read_only = true;
    r = g.add_node(o);
    if (!r.ok()) {
        fprintf(stderr, "auto-read-only: %s\n", r.msg().c_str());
        return 5;
    }
    if (!r.value()->read_only()) return 6;
    return 0;
}
} // namespace

START_TEST(test_open_eacces)
{
    TmpFile tf(4096);
    ck_assert_int_eq(chmod(tf.path.c_str(), 0444), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (geteuid() == 0 && (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0))
            _exit(100);
        _exit(eacces_checks(tf.path));
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status));
    ck_assert_msg(WEXITSTATUS(status) == 0, "check %d failed", WEXITSTATUS(status));
}
END_TEST

START_TEST(test_allocated_size)
{
    auto ctx = AioContext::create();
    TmpFile tf(1 << 20);
    Env env(file_opts(tf.path));
    ck_assert_int_eq(env.node->allocated_file_size(), 0);
    std::vector<uint8_t> buf(65536, 1);
    ck_assert_int_eq(blk_write(env.blk.get(), 0, buf.size(), buf.data()), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return env.blk->co_flush(); }), 0);
    ck_assert_int_eq(env.node->allocated_file_size(), tf.stat().st_blocks * 512);
    ck_assert_int_ge(env.node->allocated_file_size(), 65536);
}
END_TEST

// ---------------------------------------------------------------- locking
//
// OFD locks belong to an open file description, so two graphs in one
// process conflict like two processes would.

namespace {

std::string perm_err(const Result<std::unique_ptr<BlockBackend>> &r) { return r.ok() ? "" : r.msg(); }

} // namespace

START_TEST(test_lock_writer_vs_writer)
{
    auto ctx = AioContext::create();
    TmpFile tf(65536);
    Env a(file_opts(tf.path), kRW, kShareNoWrite);   // like qemu-io

    // QEMU's bytes: 100+i held, 200+i not shared.
    ck_assert(byte_locked(tf.path, 100));
    ck_assert(byte_locked(tf.path, 101));
    ck_assert(!byte_locked(tf.path, 102));
    ck_assert(!byte_locked(tf.path, 103));
    ck_assert(!byte_locked(tf.path, 200));
    ck_assert(byte_locked(tf.path, 201));
    ck_assert(!byte_locked(tf.path, 202));
    ck_assert(byte_locked(tf.path, 203));

    BlockGraph g2;
    auto n2 = g2.add_node(file_opts(tf.path));   // opening alone takes no locks
    ck_assert_msg(n2.ok(), "%s", n2.ok() ? "" : n2.msg().c_str());
    auto b2 = BlockBackend::create(*n2, kRW, kShareNoWrite, "second");
    ck_assert(!b2.ok());
    ck_assert_int_eq(b2.err(), EAGAIN);
    std::string want = "Failed to get \"write\" lock: Is another process using the image [" + tf.path + "]?";
    ck_assert_msg(perm_err(b2).find(want) != std::string::npos, "%s", perm_err(b2).c_str());

    // Once the first writer is gone, the second gets the image.
    a.blk.reset();
    ck_assert(!byte_locked(tf.path, 101));
    ck_assert(!byte_locked(tf.path, 201));
    b2 = BlockBackend::create(*n2, kRW, kShareNoWrite, "second");
    ck_assert_msg(b2.ok(), "%s", perm_err(b2).c_str());
}
END_TEST

START_TEST(test_lock_reader_vs_writer)
{
    auto ctx = AioContext::create();
    TmpFile tf(65536);
    Env w(file_opts(tf.path), kRW, kShareNoWrite);

    // A reader sharing everything coexists with the writer.
    auto ro = file_opts(tf.path);
    ro.read_only = true;
    Env r1(ro, kPermConsistentRead, kPermAll);

    // A reader that does not share write cannot start while someone writes.
    BlockGraph g3;
    auto n3 = g3.add_node(ro);
    ck_assert(n3.ok());
    auto b3 = BlockBackend::create(*n3, kPermConsistentRead, kShareNoWrite, "reader");
    ck_assert(!b3.ok());
    ck_assert_int_eq(b3.err(), EAGAIN);
    std::string want = "Failed to get shared \"write\" lock: Is another process using the image [" + tf.path + "]?";
    ck_assert_msg(perm_err(b3).find(want) != std::string::npos, "%s", perm_err(b3).c_str());

    // The other way round: a reader refusing writers keeps a writer out.
    w.blk.reset();
    b3 = BlockBackend::create(*n3, kPermConsistentRead, kShareNoWrite, "reader");
    ck_assert_msg(b3.ok(), "%s", perm_err(b3).c_str());
    BlockGraph g4;
    auto n4 = g4.add_node(file_opts(tf.path));
    ck_assert(n4.ok());
    auto b4 = BlockBackend::create(*n4, kRW, kPermAll, "writer");
    ck_assert(!b4.ok());
    ck_assert_msg(perm_err(b4).find("Failed to get \"write\" lock") != std::string::npos, "%s",
                  perm_err(b4).c_str());
}
END_TEST

// A failed permission change leaves the node's old locks as they were and
// takes no new ones.
START_TEST(test_lock_abort_restores)
{
    auto ctx = AioContext::create();
    TmpFile tf(65536);
    auto a = std::make_unique<Env>(file_opts(tf.path), kPermConsistentRead, kShareNoWrite);

    BlockGraph g;
    auto n = g.add_node(file_opts(tf.path));
    ck_assert(n.ok());
    auto reader = BlockBackend::create(*n, kPermConsistentRead, kPermAll, "reader");
    ck_assert_msg(reader.ok(), "%s", perm_err(reader).c_str());
    auto writer = BlockBackend::create(*n, kRW, kPermAll, "writer");
    ck_assert(!writer.ok());
    ck_assert_msg(perm_err(writer).find("Failed to get \"write\" lock") != std::string::npos, "%s",
                  perm_err(writer).c_str());

    a.reset();   // only g's node is left
    ck_assert(byte_locked(tf.path, 100));    // the reader's
    ck_assert(!byte_locked(tf.path, 101));   // taken during the check, released by abort
    for (int i = 0; i < 4; i++) ck_assert(!byte_locked(tf.path, 200 + i));

    // Now the writer fits.
    writer = BlockBackend::create(*n, kRW, kPermAll, "writer");
    ck_assert_msg(writer.ok(), "%s", perm_err(writer).c_str());
    ck_assert(byte_locked(tf.path, 101));
}
END_TEST

START_TEST(test_lock_off)
{
    auto ctx = AioContext::create();
    TmpFile tf(65536);
    auto a = std::make_unique<Env>(file_opts(tf.path), kRW, kShareNoWrite);
    auto o = file_opts(tf.path, "io_uring", {{"locking", "off"}});
    {
        Env b(o, kRW, kShareNoWrite);   // no check, no conflict
    }
    a.reset();
    Env b(o, kRW, kShareNoWrite);
    for (int i = 0; i < 4; i++) {
        ck_assert(!byte_locked(tf.path, 100 + i));
        ck_assert(!byte_locked(tf.path, 200 + i));
    }
    // locking=on behaves like auto here (OFD locks exist on Linux).
    auto on = file_opts(tf.path, "io_uring", {{"locking", "on"}});
    Env c(on, kRW, kShareNoWrite);
    ck_assert(byte_locked(tf.path, 101));
}
END_TEST

// Closing the graph releases every lock.
START_TEST(test_lock_released_on_close)
{
    auto ctx = AioContext::create();
    TmpFile tf(65536);
    {
        Env a(file_opts(tf.path), kPermAll, 0);
        for (int i = 0; i < 4; i++) {
            ck_assert(byte_locked(tf.path, 100 + i));
            ck_assert(byte_locked(tf.path, 200 + i));
        }
    }
    for (int i = 0; i < 4; i++) {
        ck_assert(!byte_locked(tf.path, 100 + i));
        ck_assert(!byte_locked(tf.path, 200 + i));
    }
}
END_TEST

static Suite *file_suite()
{
    Suite *s = suite_create("file");
    TCase *tc = tcase_create("io");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, scratch_setup, scratch_teardown);
    tcase_add_test(tc, test_rw_io_uring);
    tcase_add_test(tc, test_rw_threads);
    tcase_add_test(tc, test_rw_direct_io_uring);
    tcase_add_test(tc, test_rw_direct_threads);
    tcase_add_test(tc, test_rw_two_threads);
    tcase_add_test(tc, test_direct_unaligned_length);
    tcase_add_test(tc, test_read_past_eof);
    tcase_add_test(tc, test_discard);
    tcase_add_test(tc, test_discard_ignored);
    tcase_add_test(tc, test_write_zeroes);
    tcase_add_test(tc, test_block_status);
    tcase_add_test(tc, test_truncate);
    tcase_add_test(tc, test_truncate_full_direct);
    tcase_add_test(tc, test_flush);
    tcase_add_test(tc, test_flush_poisoned);
    tcase_add_test(tc, test_allocated_size);
    suite_add_tcase(s, tc);

    tc = tcase_create("open");
    tcase_add_unchecked_fixture(tc, scratch_setup, scratch_teardown);
    tcase_add_test(tc, test_open_errors);
    tcase_add_test(tc, test_open_eacces);
    suite_add_tcase(s, tc);

    tc = tcase_create("locking");
    tcase_add_unchecked_fixture(tc, scratch_setup, scratch_teardown);
    tcase_add_test(tc, test_lock_writer_vs_writer);
    tcase_add_test(tc, test_lock_reader_vs_writer);
    tcase_add_test(tc, test_lock_abort_restores);
    tcase_add_test(tc, test_lock_off);
    tcase_add_test(tc, test_lock_released_on_close);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(file_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

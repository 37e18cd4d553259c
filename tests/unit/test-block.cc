// Unit tests for the graph (block/graph.cc, block/backend.cc) and the
// generic request path (block/io.cc), using a test-only in-memory driver
// whose limits and behaviour each test sets, and which records what the
// generic layer asked of it.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <memory>
#include <list>
#include <random>
#include <thread>
#include <string>
#include <vector>

#include "block/block-driver.h"
#include "util/aio.h"
#include "util/coroutine.h"
#include "util/iothread.h"

#include <check.h>

using namespace bg;

namespace {

// Behaviour of the next MemNode to open, set by each test.
struct MemConfig {
    int64_t size = 1 << 20;
    uint32_t align = 1;
    uint64_t max_transfer = 0;
    uint32_t zero_align = 0;
    bool zeroes_supported = true;
    int64_t latency_ns = 0;
    bool random_latency = false;
};
MemConfig g_cfg;

// What MemNodes saw.
struct MemLog {
    int misaligned = 0;         // requests violating align / max_transfer
    int reads = 0, writes = 0, zero_calls = 0, flushes = 0, discards = 0;
    std::vector<std::string> closed;
    // Read and write hooks in the order they began and ended: "r+0" is a
    // read at offset 0 beginning, "w-512" a write at 512 ending.
    std::vector<std::string> events;
};
MemLog g_memlog;

// While closed, read (write) hooks of MemNodes wait before they touch data.
struct MemGate {
    bool reads_closed = false, writes_closed = false;
};
MemGate g_gate;

std::mt19937 g_rng(1234);

class MemNode : public BlockNode {
  public:
    std::vector<uint8_t> data;
    MemConfig cfg;

  protected:
    Status open(const BlockdevOptions &) override
    {
        cfg = g_cfg;
        data.assign(cfg.size, 0);
        return {};
    }
    void close() override { g_memlog.closed.push_back(node_name()); }
    void refresh_limits(BlockLimits *bl) override
    {
        bl->request_alignment = cfg.align;
        bl->max_transfer = cfg.max_transfer;
        bl->pwrite_zeroes_alignment = cfg.zero_align;
    }
    void check(int64_t off, int64_t bytes)
    {
        if (off % cfg.align || bytes % cfg.align) g_memlog.misaligned++;
        if (cfg.max_transfer && static_cast<uint64_t>(bytes) > cfg.max_transfer) g_memlog.misaligned++;
    }
    static void event(char op, char phase, int64_t off)
    {
        g_memlog.events.push_back(std::string(1, op) + phase + std::to_string(off));
    }
    void delay()
    {
        int64_t ns = cfg.latency_ns;
        if (cfg.random_latency) ns = static_cast<int64_t>(g_rng() % 200) * 1000;
        if (ns) co_sleep_ns(ns);
    }
    int do_co_preadv(int64_t off, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        check(off, bytes);
        g_memlog.reads++;
        event('r', '+', off);
        while (g_gate.reads_closed) co_sleep_ns(100 * 1000);
        delay();
        for (int64_t i = 0; i < bytes; i++) {
            uint8_t b = off + i < static_cast<int64_t>(data.size()) ? data[off + i] : 0;
            qiov.from_buf(i, &b, 1);
        }
        event('r', '-', off);
        return 0;
    }
    int do_co_pwritev(int64_t off, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        check(off, bytes);
        g_memlog.writes++;
        event('w', '+', off);
        // Copy now, land later: a lost update shows if RMW is not serialised.
        std::vector<uint8_t> tmp(bytes);
        qiov.to_buf(0, tmp.data(), bytes);
        while (g_gate.writes_closed) co_sleep_ns(100 * 1000);
        delay();
        if (off + bytes > static_cast<int64_t>(data.size())) data.resize(off + bytes);
        memcpy(data.data() + off, tmp.data(), bytes);
        event('w', '-', off);
        return 0;
    }
    int do_co_pwrite_zeroes(int64_t off, int64_t bytes, ReqFlags) override
    {
        if (!cfg.zeroes_supported) return -ENOTSUP;
        check(off, bytes);
        if (cfg.zero_align && (off % cfg.zero_align || bytes % cfg.zero_align)) g_memlog.misaligned++;
        g_memlog.zero_calls++;
        delay();
        memset(data.data() + off, 0, bytes);
        return 0;
    }
    int do_co_pdiscard(int64_t, int64_t) override
    {
        g_memlog.discards++;
        return 0;
    }
    int do_co_flush_to_disk() override
    {
        g_memlog.flushes++;
        return 0;
    }
    int do_co_truncate(int64_t off, bool, PreallocMode, ReqFlags) override
    {
        data.resize(off);
        return 0;
    }
    int64_t do_getlength() override { return static_cast<int64_t>(data.size()); }
};

// For requests from several threads: a thread-safe in-memory node that
// counts a violation whenever a write hook runs at the same time as any
// other hook call on an overlapping range. Used where every write is
// serialising (unaligned), so no write may ever overlap anything.
class OverlapNode : public BlockNode {
  public:
    static constexpr int64_t kSize = 4096;
    std::atomic<int> violations{0};
    std::vector<uint8_t> data = std::vector<uint8_t>(kSize, 0);

  protected:
    struct Active {
        int64_t off, bytes;
        bool write;
    };
    Status open(const BlockdevOptions &) override { return {}; }
    void refresh_limits(BlockLimits *bl) override { bl->request_alignment = 512; }
    int64_t do_getlength() override { return kSize; }
    // Registers the hook call; counts a violation if it overlaps a call it
    // must not overlap.
    std::list<Active>::iterator enter(int64_t off, int64_t bytes, bool write)
    {
        std::lock_guard<std::mutex> g(lock_);
        for (const Active &a : active_) {
            bool overlap = off < a.off + a.bytes && a.off < off + bytes;
            if (overlap && (write || a.write)) violations.fetch_add(1);
        }
        return active_.insert(active_.end(), Active{off, bytes, write});
    }
    void leave(std::list<Active>::iterator it)
    {
        std::lock_guard<std::mutex> g(lock_);
        active_.erase(it);
    }
    // Sleeps up to max_us microseconds.
    static void delay(int max_us)
    {
        thread_local std::mt19937 rng(std::hash<std::thread::id>()(std::this_thread::get_id()));
        co_sleep_ns(static_cast<int64_t>(rng() % max_us) * 1000);
    }
    int do_co_preadv(int64_t off, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        auto it = enter(off, bytes, false);
        {
            std::lock_guard<std::mutex> g(lock_);
            qiov.from_buf(0, data.data() + off, bytes);
        }
        // The readers' (two-block) reads take long; the writers' one-block
        // read-modify-write reads and their writes do not yield at all, so
        // a serialising request is in flight only briefly (the readers run
        // mostly on the fast path) and a write that did not wait for the
        // reads in flight would overlap one.
        if (bytes > 512) delay(3000);
        leave(it);
        return 0;
    }
    int do_co_pwritev(int64_t off, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        std::vector<uint8_t> tmp(bytes);
        qiov.to_buf(0, tmp.data(), bytes);
        auto it = enter(off, bytes, true);
        {
            std::lock_guard<std::mutex> g(lock_);
            memcpy(data.data() + off, tmp.data(), bytes);
        }
        leave(it);
        return 0;
    }

  private:
    std::mutex lock_;
    std::list<Active> active_;
};

// A filter over one child, to build two-level graphs.
class PassNode : public FilterNode {
  protected:
    Status open(const BlockdevOptions &opts) override
    {
        return open_filtered("image", opts.as<BlockdevOptionsBlkdebug>()->image);
    }
    void close() override { g_memlog.closed.push_back(node_name()); }
};

constexpr BlockDriver kMemDriver = {"mem", BlockDriverKind::kProtocol, kCapWrite, "test memory",
                                    [] { return std::unique_ptr<BlockNode>(new MemNode); }, nullptr};
constexpr BlockDriver kOverlapDriver = {"overlap", BlockDriverKind::kProtocol, kCapWrite, "test overlaps",
                                        [] { return std::unique_ptr<BlockNode>(new OverlapNode); }, nullptr};
constexpr BlockDriver kPassDriver = {"pass", BlockDriverKind::kFilter, kCapWrite, "test filter",
                                     [] { return std::unique_ptr<BlockNode>(new PassNode); }, nullptr};

DriverRegistry *test_registry()
{
    static DriverRegistry r;
    if (r.all().empty()) {
        r.add(&kMemDriver);
        r.add(&kPassDriver);
        r.add(&kOverlapDriver);
    }
    return &r;
}

BlockdevOptions mem_opts(const std::string &name, bool ro = false)
{
    BlockdevOptions o;
    o.driver = "mem";
    o.node_name = name;
    o.read_only = ro;
    o.opts = BlockdevOptionsNull{};
    return o;
}

BlockdevOptions pass_opts(const std::string &name, BlockdevRef child)
{
    BlockdevOptions o;
    o.driver = "pass";
    o.node_name = name;
    BlockdevOptionsBlkdebug d;
    d.image = std::move(child);
    o.opts = d;
    return o;
}

BlockdevRef ref_to(const std::string &name)
{
    BlockdevRef r;
    r.kind = BlockdevRef::Kind::kReference;
    r.reference = name;
    return r;
}

struct Fixture {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    std::unique_ptr<BlockGraph> graph = std::make_unique<BlockGraph>(test_registry());
    BlockNode *node = nullptr;
    std::unique_ptr<BlockBackend> blk;

    explicit Fixture(const MemConfig &cfg)
    {
        g_cfg = cfg;
        g_memlog = MemLog{};
        g_gate = MemGate{};
        auto r = graph->add_node(mem_opts("m"));
        ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
        node = r.value();
        auto b = BlockBackend::create(node, kPermConsistentRead | kPermWrite | kPermResize, kPermAll, "test");
        ck_assert_msg(b.ok(), "%s", b.ok() ? "" : b.msg().c_str());
        blk = std::move(b.value());
    }
    MemNode *mem() { return static_cast<MemNode *>(node); }
    ~Fixture()
    {
        blk.reset();
        graph.reset();
    }
};

} // namespace

// ---------------------------------------------------------------- request path

START_TEST(test_unaligned_rw_padding)
{
    MemConfig cfg;
    cfg.size = 64 * 1024;
    cfg.align = 512;
    Fixture f(cfg);
    std::vector<uint8_t> ref(cfg.size, 0);
    std::mt19937 rng(7);
    for (int i = 0; i < 300; i++) {
        int64_t off = rng() % (cfg.size - 1);
        int64_t len = 1 + rng() % std::min<int64_t>(5000, cfg.size - off);
        std::vector<uint8_t> buf(len);
        for (auto &b : buf) b = static_cast<uint8_t>(rng());
        int r = run_in_coroutine([&] { return f.blk->co_pwrite(off, len, buf.data()); });
        ck_assert_int_eq(r, 0);
        memcpy(ref.data() + off, buf.data(), len);
        int64_t roff = rng() % (cfg.size - 1);
        int64_t rlen = 1 + rng() % std::min<int64_t>(5000, cfg.size - roff);
        std::vector<uint8_t> rb(rlen, 0xee);
        r = run_in_coroutine([&] { return f.blk->co_pread(roff, rlen, rb.data()); });
        ck_assert_int_eq(r, 0);
        ck_assert(memcmp(rb.data(), ref.data() + roff, rlen) == 0);
    }
    ck_assert_int_eq(g_memlog.misaligned, 0);
    ck_assert(f.mem()->data == ref);
}
END_TEST

START_TEST(test_rmw_serialised_under_concurrency)
{
    // Many concurrent unaligned writes to disjoint bytes of the same blocks:
    // without serialisation, read-modify-write loses some of them.
    MemConfig cfg;
    cfg.size = 4096;
    cfg.align = 512;
    cfg.random_latency = true;
    Fixture f(cfg);
    const int n = 64;
    int done = 0;
    std::vector<std::vector<uint8_t>> bufs(n);
    for (int i = 0; i < n; i++) {
        bufs[i].assign(16, static_cast<uint8_t>(i + 1));
        f.ctx->co_enter(coroutine_create_fn([&, i] {
            int r = f.blk->co_pwrite(i * 16 + 3, 16, bufs[i].data());
            ck_assert_int_eq(r, 0);
            done++;
        }));
    }
    while (done < n) f.ctx->iterate(true);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 16; j++) ck_assert_int_eq(f.mem()->data[i * 16 + 3 + j], i + 1);
    }
    ck_assert_int_eq(g_memlog.misaligned, 0);
}
END_TEST

// Runs the loop until done or for about 20 ms.
void spin(AioContext *ctx, const bool &done)
{
    const int64_t until = clock_ns() + 20 * 1000 * 1000;
    while (!done && clock_ns() < until) {
        Timer t(ctx, [](void *) {}, nullptr);
        t.mod_in(1000 * 1000);
        ctx->iterate(true);
    }
}

START_TEST(test_serialising_waits_for_untracked_read)
{
    // An aligned read starts while no serialising request is in flight, so
    // it runs untracked (the fast path: on no list). An unaligned write to
    // the same block (serialising: it read-modify-writes the block) arrives
    // while the read is inside the driver: it must reach the driver only
    // after the read has ended.
    MemConfig cfg;
    cfg.size = 4096;
    cfg.align = 512;
    Fixture f(cfg);
    g_gate.reads_closed = true;
    bool read_done = false, write_done = false;
    std::vector<uint8_t> rb(512);
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pread(0, 512, rb.data()), 0);
        read_done = true;
    }));
    ck_assert(g_memlog.events == std::vector<std::string>{"r+0"});
    const uint8_t pat[16] = {0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55,
                             0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55};
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pwrite(3, 16, pat), 0);
        write_done = true;
    }));
    spin(f.ctx.get(), write_done);
    ck_assert(!read_done && !write_done);
    ck_assert(g_memlog.events == std::vector<std::string>{"r+0"});   // the write waits
    g_gate.reads_closed = false;
    while (!read_done || !write_done) f.ctx->iterate(true);
    // The read ended before the write's read-modify-write began.
    std::vector<std::string> want = {"r+0", "r-0", "r+0", "r-0", "w+0", "w-0"};
    ck_assert(g_memlog.events == want);
    for (int i = 0; i < 16; i++) ck_assert_int_eq(f.mem()->data[3 + i], 0x55);

    // Afterwards the node is back on the fast path and still correct.
    g_memlog.events.clear();
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pread(0, 512, rb.data()); }), 0);
    ck_assert_int_eq(rb[3], 0x55);
}
END_TEST

START_TEST(test_serialising_waits_for_untracked_write)
{
    // The same with an aligned (non-serialising, untracked) write in
    // flight: if the unaligned write did not wait for it, its
    // read-modify-write would read the block before the aligned write
    // lands and then write the old bytes back over it.
    MemConfig cfg;
    cfg.size = 4096;
    cfg.align = 512;
    Fixture f(cfg);
    g_gate.writes_closed = true;
    bool aligned_done = false, unaligned_done = false;
    std::vector<uint8_t> block(512, 0xaa), pat(16, 0x55);
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pwrite(0, 512, block.data()), 0);
        aligned_done = true;
    }));
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pwrite(3, 16, pat.data()), 0);
        unaligned_done = true;
    }));
    spin(f.ctx.get(), unaligned_done);
    ck_assert(g_memlog.events == std::vector<std::string>{"w+0"});
    g_gate.writes_closed = false;
    while (!aligned_done || !unaligned_done) f.ctx->iterate(true);
    for (int i = 0; i < 512; i++) ck_assert_int_eq(f.mem()->data[i], (i >= 3 && i < 19) ? 0x55 : 0xaa);
}
END_TEST

START_TEST(test_untracked_request_waits_for_serialising)
{
    // The other direction: a request that starts while a serialising one is
    // in flight is tracked and waits for it where they overlap, and does
    // not wait where they do not.
    MemConfig cfg;
    cfg.size = 4096;
    cfg.align = 512;
    Fixture f(cfg);
    g_gate.writes_closed = true;
    bool w_done = false, r_overlap_done = false, r_other_done = false;
    std::vector<uint8_t> pat(16, 0x55), rb1(512), rb2(512);
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pwrite(3, 16, pat.data()), 0);
        w_done = true;
    }));
    ck_assert(g_memlog.events == (std::vector<std::string>{"r+0", "r-0", "w+0"}));
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pread(0, 512, rb1.data()), 0);
        r_overlap_done = true;
    }));
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pread(1024, 512, rb2.data()), 0);
        r_other_done = true;
    }));
    spin(f.ctx.get(), r_overlap_done);
    ck_assert(r_other_done && !r_overlap_done && !w_done);
    g_gate.writes_closed = false;
    while (!w_done || !r_overlap_done) f.ctx->iterate(true);
    ck_assert_int_eq(rb1[3], 0x55);
    ck_assert_int_eq(rb1[2], 0);
}
END_TEST

START_TEST(test_split_max_transfer)
{
    MemConfig cfg;
    cfg.size = 1 << 20;
    cfg.align = 512;
    cfg.max_transfer = 4096;
    Fixture f(cfg);
    std::vector<uint8_t> buf(65536 + 100);
    for (size_t i = 0; i < buf.size(); i++) buf[i] = static_cast<uint8_t>(i * 7);
    int r = run_in_coroutine([&] { return f.blk->co_pwrite(1000, buf.size(), buf.data()); });
    ck_assert_int_eq(r, 0);
    ck_assert_int_ge(g_memlog.writes, 17);
    std::vector<uint8_t> rb(buf.size());
    r = run_in_coroutine([&] { return f.blk->co_pread(1000, rb.size(), rb.data()); });
    ck_assert_int_eq(r, 0);
    ck_assert(rb == buf);
    ck_assert_int_eq(g_memlog.misaligned, 0);
}
END_TEST

START_TEST(test_write_zeroes_native_and_fallback)
{
    for (int supported = 0; supported < 2; supported++) {
        MemConfig cfg;
        cfg.size = 1 << 20;
        cfg.align = 512;
        cfg.zero_align = 4096;
        cfg.zeroes_supported = supported;
        Fixture f(cfg);
        std::fill(f.mem()->data.begin(), f.mem()->data.end(), 0xab);
        int r = run_in_coroutine([&] { return f.blk->co_pwrite_zeroes(100, 20000); });
        ck_assert_int_eq(r, 0);
        for (int64_t i = 0; i < (1 << 20); i++) {
            uint8_t want = (i >= 100 && i < 20100) ? 0 : 0xab;
            ck_assert_int_eq(f.mem()->data[i], want);
        }
        ck_assert_int_eq(g_memlog.misaligned, 0);
        if (supported) ck_assert_int_gt(g_memlog.zero_calls, 0);
        else ck_assert_int_eq(g_memlog.zero_calls, 0);
        if (!supported) {
            r = run_in_coroutine([&] { return f.blk->co_pwrite_zeroes(0, 8192, kReqNoFallback); });
            ck_assert_int_eq(r, -ENOTSUP);
        }
    }
}
END_TEST

START_TEST(test_bounds_and_readonly)
{
    MemConfig cfg;
    cfg.size = 8192;
    Fixture f(cfg);
    char buf[16];
    int r = run_in_coroutine([&] { return f.blk->co_pread(8190, 16, buf); });
    ck_assert_int_eq(r, -EIO);
    r = run_in_coroutine([&] { return f.blk->co_pread(-1, 1, buf); });
    ck_assert_int_eq(r, -EIO);
    r = run_in_coroutine([&] { return f.blk->co_pread(8192, 0, buf); });
    ck_assert_int_eq(r, 0);

    // A backend without WRITE permission cannot write.
    auto ro = BlockBackend::create(f.node, kPermConsistentRead, kPermAll, "reader");
    ck_assert(ro.ok());
    r = run_in_coroutine([&] { return ro.value()->co_pwrite(0, 16, buf); });
    ck_assert_int_eq(r, -EPERM);
}
END_TEST

START_TEST(test_flush_generations)
{
    Fixture f(MemConfig{});
    char buf[512] = {1};
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_flush(); }), 0);
    ck_assert_int_eq(g_memlog.flushes, 0);   // nothing written yet
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pwrite(0, 512, buf); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_flush(); }), 0);
    ck_assert_int_eq(g_memlog.flushes, 1);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_flush(); }), 0);
    ck_assert_int_eq(g_memlog.flushes, 1);   // skipped: no write since
    f.blk->set_writethrough(true);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pwrite(0, 512, buf); }), 0);
    ck_assert_int_eq(g_memlog.flushes, 2);   // writethrough flushes each write
}
END_TEST

START_TEST(test_discard_advisory)
{
    Fixture f(MemConfig{});
    // discard=ignore (default): dropped before the driver.
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pdiscard(0, 4096); }), 0);
    ck_assert_int_eq(g_memlog.discards, 0);
}
END_TEST

START_TEST(test_truncate)
{
    Fixture f(MemConfig{});
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_truncate(12345, true, PreallocMode::kOff); }), 0);
    ck_assert_int_eq(f.blk->getlength(), 12345);
    ck_assert_int_eq(f.node->getlength(), 12345);
}
END_TEST

START_TEST(test_block_status_default)
{
    MemConfig cfg;
    cfg.size = 10000;
    Fixture f(cfg);
    int64_t pnum = 0, map = 0;
    BlockNode *file = nullptr;
    int r = run_in_coroutine([&] { return f.blk->co_block_status(true, 100, 1 << 20, &pnum, &map, &file); });
    ck_assert_int_eq(r, kStatusData | kStatusOffsetValid | kStatusAllocated | kStatusEof);
    ck_assert_int_eq(pnum, 9900);
    ck_assert_int_eq(map, 100);
    ck_assert_ptr_eq(file, f.node);
    r = run_in_coroutine([&] { return f.blk->co_block_status(true, 10000, 10, &pnum, &map, &file); });
    ck_assert_int_eq(r, kStatusEof);
    ck_assert_int_eq(pnum, 0);
}
END_TEST

START_TEST(test_detect_zeroes)
{
    auto ctx = AioContext::create();
    g_cfg = MemConfig{};
    g_cfg.align = 512;
    g_memlog = MemLog{};
    BlockGraph graph(test_registry());
    BlockdevOptions o = mem_opts("m");
    o.detect_zeroes = BlockdevDetectZeroes::kOn;
    auto n = graph.add_node(o);
    ck_assert(n.ok());
    auto blk = BlockBackend::create(n.value(), kPermConsistentRead | kPermWrite, kPermAll, "t");
    ck_assert(blk.ok());
    std::vector<uint8_t> z(4096, 0);
    ck_assert_int_eq(run_in_coroutine([&] { return blk.value()->co_pwrite(0, 4096, z.data()); }), 0);
    ck_assert_int_eq(g_memlog.zero_calls, 1);
    ck_assert_int_eq(g_memlog.writes, 0);
}
END_TEST

// ---------------------------------------------------------------- graph

START_TEST(test_node_names)
{
    auto ctx = AioContext::create();
    BlockGraph graph(test_registry());
    auto a = graph.add_node(mem_opts("a"));
    ck_assert(a.ok());
    auto dup = graph.add_node(mem_opts("a"));
    ck_assert(!dup.ok());
    ck_assert_str_eq(dup.msg().c_str(), "blockdev 'a': Duplicate nodes with node-name='a'");
    auto bad = graph.add_node(mem_opts("1abc"));
    ck_assert(!bad.ok());
    ck_assert_str_eq(bad.msg().c_str(), "blockdev '1abc': '1abc' is not a valid node name");
    auto anon = graph.add_node(mem_opts(""));
    ck_assert(anon.ok());
    ck_assert_int_eq(anon.value()->node_name()[0], '#');
    BlockdevOptions u = mem_opts("u");
    u.driver = "nosuch";
    auto unk = graph.add_node(u);
    ck_assert(!unk.ok());
    ck_assert_str_eq(unk.msg().c_str(), "blockdev 'u': unknown driver 'nosuch'");
    auto missing = graph.add_node(pass_opts("p", ref_to("ghost")));
    ck_assert(!missing.ok());
    ck_assert_str_eq(missing.msg().c_str(), "blockdev 'p': image: no node named 'ghost'");
    ck_assert_ptr_null(graph.find("p"));
}
END_TEST

START_TEST(test_permission_conflicts)
{
    auto ctx = AioContext::create();
    g_cfg = MemConfig{};
    BlockGraph graph(test_registry());
    BlockNode *m = graph.add_node(mem_opts("m")).value();
    // Writer that does not share write.
    auto w = BlockBackend::create(m, kPermConsistentRead | kPermWrite, kPermAll & ~kPermWrite, "export 'w'");
    ck_assert(w.ok());
    auto w2 = BlockBackend::create(m, kPermConsistentRead | kPermWrite, kPermAll, "export 'w2'");
    ck_assert(!w2.ok());
    ck_assert_str_eq(w2.msg().c_str(),
                     "export 'w2' cannot use node 'm' as 'root': it conflicts with use by export 'w' as 'root', "
                     "which does not allow 'write'");
    // Readers are fine.
    auto r = BlockBackend::create(m, kPermConsistentRead, kPermAll, "reader");
    ck_assert(r.ok());
    // After the writer goes, a second writer is accepted.
    w.value().reset();
    auto w3 = BlockBackend::create(m, kPermConsistentRead | kPermWrite, kPermAll, "export 'w3'");
    ck_assert(w3.ok());
    // A read-only node refuses writers.
    BlockNode *ro = graph.add_node(mem_opts("ro", true)).value();
    auto rw = BlockBackend::create(ro, kPermConsistentRead | kPermWrite, kPermAll, "x");
    ck_assert(!rw.ok());
    ck_assert_str_eq(rw.msg().c_str(), "node 'ro' is read-only");
    // Permissions propagate through a filter to its child.
    BlockNode *p = graph.add_node(pass_opts("p", ref_to("m"))).value();
    ck_assert_int_eq(p->cumulative_perm(), 0);
    auto pw = BlockBackend::create(p, kPermConsistentRead | kPermWrite, kPermAll & ~kPermWrite, "export 'pw'");
    ck_assert(!pw.ok());   // w3 already writes m and the filter would not share write
    w3.value().reset();
    pw = BlockBackend::create(p, kPermConsistentRead | kPermWrite, kPermAll & ~kPermWrite, "export 'pw'");
    ck_assert_msg(pw.ok(), "%s", pw.ok() ? "" : pw.msg().c_str());
    ck_assert_int_eq(m->cumulative_perm() & kPermWrite, kPermWrite);
    // blockdev-del of a node in use is refused.
    Status s = graph.remove_node("m");
    ck_assert(!s.ok());
    ck_assert_str_eq(s.msg().c_str(), "Node 'm' is busy: it is used as 'root' by reader");
}
END_TEST

START_TEST(test_teardown_order_and_inline_children)
{
    auto ctx = AioContext::create();
    g_cfg = MemConfig{};
    g_memlog = MemLog{};
    {
        BlockGraph graph(test_registry());
        BlockdevRef inl;
        inl.kind = BlockdevRef::Kind::kInline;
        inl.def = std::make_shared<BlockdevOptions>(mem_opts("child"));
        auto top = graph.add_node(pass_opts("top", inl));
        ck_assert(top.ok());
        ck_assert_int_eq(graph.nodes().size(), 2);
        ck_assert(graph.find("child")->implicit());
        // The re-emitted options name the child.
        BlockdevOptions d = top.value()->dump_options();
        ck_assert(d.as<BlockdevOptionsBlkdebug>()->image.kind == BlockdevRef::Kind::kReference);
        ck_assert_str_eq(d.as<BlockdevOptionsBlkdebug>()->image.reference.c_str(), "child");
    }
    ck_assert_int_eq(g_memlog.closed.size(), 2);
    ck_assert_str_eq(g_memlog.closed[0].c_str(), "top");
    ck_assert_str_eq(g_memlog.closed[1].c_str(), "child");

    // Removing the parent removes its inline child.
    BlockGraph graph(test_registry());
    BlockdevRef inl;
    inl.kind = BlockdevRef::Kind::kInline;
    inl.def = std::make_shared<BlockdevOptions>(mem_opts("c2"));
    ck_assert(graph.add_node(pass_opts("t2", inl)).ok());
    ck_assert(graph.remove_node("t2").ok());
    ck_assert_int_eq(graph.nodes().size(), 0);
}
END_TEST

START_TEST(test_drain_with_requests_in_flight)
{
    MemConfig cfg;
    cfg.latency_ns = 2 * 1000 * 1000;
    Fixture f(cfg);
    int started = 0, done = 0;
    char buf[512];
    for (int i = 0; i < 10; i++) {
        f.ctx->co_enter(coroutine_create_fn([&] {
            started++;
            ck_assert_int_eq(f.blk->co_pread(0, 512, buf), 0);
            done++;
        }));
    }
    ck_assert_int_eq(started, 10);
    ck_assert_int_gt(f.node->in_flight(), 0);
    f.node->drained_begin();
    ck_assert_int_eq(done, 10);
    ck_assert_int_eq(f.node->in_flight(), 0);
    // A request issued while drained waits for drained_end.
    bool late_done = false;
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pread(0, 512, buf), 0);
        late_done = true;
    }));
    for (int i = 0; i < 20; i++) f.ctx->iterate(false);
    ck_assert(!late_done);
    ck_assert_int_eq(f.node->in_flight(), 0);
    f.node->drained_end();
    while (!late_done) f.ctx->iterate(true);
}
END_TEST

// ---------------------------------------------------------------- threads

namespace {

constexpr int kStressWriters = 2;        // per thread
constexpr int kStressReaders = 4;        // per thread
constexpr int kStressWrites = 100;       // per writer

struct Stress {
    BlockBackend *blk;
    std::atomic<int> writers_left{2 * kStressWriters};
    std::atomic<int> readers_left{2 * kStressReaders};
    std::atomic<int> errors{0};
};
struct StressStart {
    Stress *st;
    int id;   // writer: 0 .. 2*kStressWriters-1
};

// Writes 8 bytes of its own, unaligned (serialising), pausing in between so
// that the node keeps switching between the fast path and tracking.
void stress_writer(void *opaque)
{
    auto *a = static_cast<StressStart *>(opaque);
    for (int j = 0; j < kStressWrites; j++) {
        std::vector<uint8_t> v(8, static_cast<uint8_t>(a->id + 1));
        int64_t off = a->id * 8 + (j * 2 * kStressWriters * 8) % OverlapNode::kSize;
        if (a->st->blk->co_pwrite(off, 8, v.data()) != 0) a->st->errors.fetch_add(1);
        co_sleep_ns((1 + j % 4) * 500 * 1000);
    }
    a->st->writers_left.fetch_sub(1);
}

// Aligned reads (untracked unless a serialising request is in flight) until
// the writers are done.
void stress_reader(void *opaque)
{
    auto *a = static_cast<StressStart *>(opaque);
    std::vector<uint8_t> buf(1024);
    for (int i = 0; a->st->writers_left.load() > 0; i++) {
        int64_t off = (a->id * 3 + i) % 7 * 512;
        if (a->st->blk->co_pread(off, 1024, buf.data()) != 0) a->st->errors.fetch_add(1);
    }
    a->st->readers_left.fetch_sub(1);
}

} // namespace

START_TEST(test_serialising_across_threads)
{
    // Readers and unaligned writers on one node from the main thread and an
    // iothread at once: no write hook may ever overlap another hook call
    // (a missed wait for a request that started on the fast path in the
    // other thread shows as a violation), and no write may be lost.
    auto ctx = AioContext::create();
    BlockGraph graph(test_registry());
    BlockdevOptions o = mem_opts("o");
    o.driver = "overlap";
    BlockNode *n = graph.add_node(o).value();
    auto *node = static_cast<OverlapNode *>(n);
    auto blk = BlockBackend::create(n, kPermConsistentRead | kPermWrite, kPermAll, "t").value();
    auto th = IoThread::create("io0").value();
    Stress st;
    st.blk = blk.get();
    std::vector<StressStart> writers(2 * kStressWriters), readers(2 * kStressReaders);
    for (int i = 0; i < 2 * kStressWriters; i++) writers[i] = {&st, i};
    for (int i = 0; i < 2 * kStressReaders; i++) readers[i] = {&st, i};
    struct Batch {
        StressStart *w, *r;
    };
    Batch other{writers.data() + kStressWriters, readers.data() + kStressReaders};
    th->run_sync([](void *p) {
        auto *b = static_cast<Batch *>(p);
        for (int i = 0; i < kStressWriters; i++) AioContext::current()->co_enter(coroutine_create(stress_writer, &b->w[i]));
        for (int i = 0; i < kStressReaders; i++) AioContext::current()->co_enter(coroutine_create(stress_reader, &b->r[i]));
    }, &other);
    for (int i = 0; i < kStressWriters; i++) ctx->co_enter(coroutine_create(stress_writer, &writers[i]));
    for (int i = 0; i < kStressReaders; i++) ctx->co_enter(coroutine_create(stress_reader, &readers[i]));
    while (st.writers_left.load() > 0 || st.readers_left.load() > 0) {
        Timer t(ctx.get(), [](void *) {}, nullptr);
        t.mod_in(1000 * 1000);
        ctx->iterate(true);
    }
    th.reset();
    ck_assert_int_eq(st.errors.load(), 0);
    ck_assert_int_eq(node->violations.load(), 0);
    for (int w = 0; w < 2 * kStressWriters; w++) {
        for (int j = 0; j < kStressWrites; j++) {
            int64_t off = w * 8 + (j * 2 * kStressWriters * 8) % OverlapNode::kSize;
            for (int k = 0; k < 8; k++) ck_assert_int_eq(node->data[off + k], w + 1);
        }
    }
    blk.reset();
}
END_TEST

Suite *block_suite()
{
    Suite *s = suite_create("block");
    TCase *io = tcase_create("request-path");
    tcase_set_timeout(io, 30);
    tcase_add_test(io, test_unaligned_rw_padding);
    tcase_add_test(io, test_rmw_serialised_under_concurrency);
    tcase_add_test(io, test_serialising_waits_for_untracked_read);
    tcase_add_test(io, test_serialising_waits_for_untracked_write);
    tcase_add_test(io, test_untracked_request_waits_for_serialising);
    tcase_add_test(io, test_serialising_across_threads);
    tcase_add_test(io, test_split_max_transfer);
    tcase_add_test(io, test_write_zeroes_native_and_fallback);
    tcase_add_test(io, test_bounds_and_readonly);
    tcase_add_test(io, test_flush_generations);
    tcase_add_test(io, test_discard_advisory);
    tcase_add_test(io, test_truncate);
    tcase_add_test(io, test_block_status_default);
    tcase_add_test(io, test_detect_zeroes);
    suite_add_tcase(s, io);
    TCase *g = tcase_create("graph");
    tcase_add_test(g, test_node_names);
    tcase_add_test(g, test_permission_conflicts);
    tcase_add_test(g, test_teardown_order_and_inline_children);
    tcase_add_test(g, test_drain_with_requests_in_flight);
    suite_add_tcase(s, g);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(block_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

// Unit tests for the graph (block/graph.cc, block/backend.cc) and the
// generic request path (block/io.cc), using a test-only in-memory driver
// whose limits and behaviour each test sets, and which records what the
// generic layer asked of it.
#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "block/block-driver.h"
#include "util/aio.h"
#include "util/coroutine.h"

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
};
MemLog g_memlog;

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
        delay();
        for (int64_t i = 0; i < bytes; i++) {
            uint8_t b = off + i < static_cast<int64_t>(data.size()) ? data[off + i] : 0;
            qiov.from_buf(i, &b, 1);
        }
        return 0;
    }
    int do_co_pwritev(int64_t off, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        check(off, bytes);
        g_memlog.writes++;
        // Copy now, land later: a lost update shows if RMW is not serialised.
        std::vector<uint8_t> tmp(bytes);
        qiov.to_buf(0, tmp.data(), bytes);
        delay();
        if (off + bytes > static_cast<int64_t>(data.size())) data.resize(off + bytes);
        memcpy(data.data() + off, tmp.data(), bytes);
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
constexpr BlockDriver kPassDriver = {"pass", BlockDriverKind::kFilter, kCapWrite, "test filter",
                                     [] { return std::unique_ptr<BlockNode>(new PassNode); }, nullptr};

DriverRegistry *test_registry()
{
    static DriverRegistry r;
    if (r.all().empty()) {
        r.add(&kMemDriver);
        r.add(&kPassDriver);
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

Suite *block_suite()
{
    Suite *s = suite_create("block");
    TCase *io = tcase_create("request-path");
    tcase_set_timeout(io, 30);
    tcase_add_test(io, test_unaligned_rw_padding);
    tcase_add_test(io, test_rmw_serialised_under_concurrency);
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

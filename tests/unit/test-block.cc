// Unit tests for the graph (block/graph.cc, block/backend.cc) and the
// generic request path (block/io.cc), using the test driver test-mem
// (testdrv.h), whose limits and behaviour each test sets, and which records
// what the generic layer asked of it.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/testdrv.h"
#include "qapi/option-reader.h"
#include "util/aio.h"
#include "util/coroutine.h"
#include "util/iothread.h"

#include <check.h>

using namespace bg;

namespace {

// Behaviour of the test-mem node a Fixture opens: its options, and the
// latency set on it after open.
struct MemConfig {
    int64_t size = 1 << 20;
    uint32_t align = 1;
    uint64_t max_transfer = 0;
    uint32_t zero_align = 0;
    bool zeroes_supported = true;
    int64_t latency_ns = 0;
    bool random_latency = false;   // 0..200 us per request
};

// The --blockdev text of a test-mem node with cfg's limits.
std::string mem_arg(const std::string &name, const MemConfig &cfg = MemConfig{}, bool ro = false)
{
    std::string s = "test-mem,size=" + std::to_string(cfg.size);
    if (!name.empty()) s += ",node-name=" + name;
    if (ro) s += ",read-only=on";
    if (cfg.align != 1) s += ",align=" + std::to_string(cfg.align);
    if (cfg.max_transfer) s += ",max-transfer=" + std::to_string(cfg.max_transfer);
    if (cfg.zero_align) s += ",zero-align=" + std::to_string(cfg.zero_align);
    if (!cfg.zeroes_supported) s += ",write-zeroes=off";
    return s;
}

BlockdevOptions mem_opts(const std::string &name, bool ro = false)
{
    return must_parse(mem_arg(name, MemConfig{}, ro));
}

// A filter over child, to build two-level graphs: blkdebug without rules.
BlockdevOptions pass_opts(const std::string &name, BlockdevRef child)
{
    nlohmann::json j = {{"driver", "blkdebug"}, {"node-name", name}};
    put_ref(j, "image", child);
    return must_parse_json(j);
}

void apply_latency(TestNode *m, const MemConfig &cfg)
{
    if (cfg.random_latency) m->set_latency(kTestAllOps, 0, 200 * 1000);
    else if (cfg.latency_ns) m->set_latency(kTestAllOps, cfg.latency_ns);
}

struct Fixture {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    std::unique_ptr<BlockGraph> graph = std::make_unique<BlockGraph>(&test_registry());
    BlockNode *node = nullptr;
    std::unique_ptr<BlockBackend> blk;

    explicit Fixture(const MemConfig &cfg)
    {
        auto r = graph->add_node(must_parse(mem_arg("m", cfg)));
        ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
        node = r.value();
        apply_latency(mem(), cfg);
        auto b = BlockBackend::create(node, kPermConsistentRead | kPermWrite | kPermResize, kPermAll, "test");
        ck_assert_msg(b.ok(), "%s", b.ok() ? "" : b.msg().c_str());
        blk = std::move(b.value());
    }
    TestNode *mem() { return TestNode::from(node); }
    uint64_t calls(TestOp op) { return mem()->count(op).calls; }
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
    ck_assert_int_eq(f.mem()->misaligned(), 0);
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
    ck_assert_int_eq(f.mem()->misaligned(), 0);
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

bool log_is(TestNode *m, const std::vector<TestRequest> &want)
{
    std::vector<TestRequest> got = m->log();
    if (got.size() != want.size()) return false;
    for (size_t i = 0; i < got.size(); i++) {
        if (got[i].op != want[i].op || got[i].offset != want[i].offset || got[i].bytes != want[i].bytes) return false;
    }
    return true;
}

constexpr TestMatch kAnyRead{test_op_bit(TestOp::kRead)};
constexpr TestMatch kAnyWrite{test_op_bit(TestOp::kWrite)};

START_TEST(test_serialising_waits_for_untracked_read)
{
    // An aligned read starts while no serialising request is in flight, so
    // it runs untracked (the fast path: on no list). An unaligned write to
    // the same block (serialising: it read-modify-writes the block) arrives
    // while the read is held in the driver: it must reach the driver only
    // after the read has ended.
    MemConfig cfg;
    cfg.size = 4096;
    cfg.align = 512;
    Fixture f(cfg);
    TestNode *m = f.mem();
    m->set_logging(true);
    m->hold(kAnyRead);
    bool read_done = false, write_done = false;
    std::vector<uint8_t> rb(512), pat(16, 0x55);
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pread(0, 512, rb.data()), 0);
        read_done = true;
    }));
    ck_assert_int_eq(m->held(), 1);
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pwrite(3, 16, pat.data()), 0);
        write_done = true;
    }));
    spin(f.ctx.get(), write_done);
    ck_assert(!read_done && !write_done);
    // The write waits above the driver: its read-modify-write has not begun.
    ck_assert(log_is(m, {{TestOp::kRead, 0, 512, 0}}));
    ck_assert_int_eq(m->held(), 1);
    // The read ends before the write's read-modify-write begins.
    m->release();
    while (!read_done || !write_done) f.ctx->iterate(true);
    ck_assert(log_is(m, {{TestOp::kRead, 0, 512, 0}, {TestOp::kRead, 0, 512, 0}, {TestOp::kWrite, 0, 512, 0}}));
    ck_assert_int_eq(m->overlapping_writes(), 0);
    for (int i = 0; i < 16; i++) ck_assert_int_eq(m->data[3 + i], 0x55);

    // Afterwards the node is back on the fast path and still correct.
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pread(0, 512, rb.data()); }), 0);
    ck_assert_int_eq(rb[3], 0x55);
}
END_TEST

START_TEST(test_serialising_waits_for_untracked_write)
{
    // The same with an aligned (non-serialising, untracked) write held in
    // the driver: if the unaligned write did not wait for it, its
    // read-modify-write would read the block before the aligned write lands
    // and then write the old bytes back over it.
    MemConfig cfg;
    cfg.size = 4096;
    cfg.align = 512;
    Fixture f(cfg);
    TestNode *m = f.mem();
    m->set_logging(true);
    m->hold(kAnyWrite);
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
    ck_assert(!aligned_done && !unaligned_done);
    ck_assert(log_is(m, {{TestOp::kWrite, 0, 512, 0}}));
    ck_assert_int_eq(m->held(), 1);
    m->release();
    while (!aligned_done || !unaligned_done) f.ctx->iterate(true);
    ck_assert(log_is(m, {{TestOp::kWrite, 0, 512, 0}, {TestOp::kRead, 0, 512, 0}, {TestOp::kWrite, 0, 512, 0}}));
    ck_assert_int_eq(m->overlapping_writes(), 0);
    for (int i = 0; i < 512; i++) ck_assert_int_eq(m->data[i], (i >= 3 && i < 19) ? 0x55 : 0xaa);
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
    TestNode *m = f.mem();
    m->set_logging(true);
    m->hold(kAnyWrite);
    bool w_done = false, r_overlap_done = false, r_other_done = false;
    std::vector<uint8_t> pat(16, 0x55), rb1(512), rb2(512);
    f.ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(f.blk->co_pwrite(3, 16, pat.data()), 0);
        w_done = true;
    }));
    // The read-modify-write's read went through; its write is held.
    ck_assert(log_is(m, {{TestOp::kRead, 0, 512, 0}, {TestOp::kWrite, 0, 512, 0}}));
    ck_assert_int_eq(m->held(), 1);
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
    ck_assert(log_is(m, {{TestOp::kRead, 0, 512, 0}, {TestOp::kWrite, 0, 512, 0}, {TestOp::kRead, 1024, 512, 0}}));
    m->release();
    while (!w_done || !r_overlap_done) f.ctx->iterate(true);
    ck_assert_int_eq(m->overlapping_writes(), 0);
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
    ck_assert_int_ge(f.calls(TestOp::kWrite), 17);
    std::vector<uint8_t> rb(buf.size());
    r = run_in_coroutine([&] { return f.blk->co_pread(1000, rb.size(), rb.data()); });
    ck_assert_int_eq(r, 0);
    ck_assert(rb == buf);
    ck_assert_int_eq(f.mem()->misaligned(), 0);
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
        ck_assert_int_eq(f.mem()->misaligned(), 0);
        if (supported) ck_assert_int_gt(f.calls(TestOp::kZeroes), 0);
        else ck_assert_int_eq(f.calls(TestOp::kZeroes), 0);
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
    ck_assert_int_eq(f.calls(TestOp::kFlush), 0);   // nothing written yet
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pwrite(0, 512, buf); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_flush(); }), 0);
    ck_assert_int_eq(f.calls(TestOp::kFlush), 1);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_flush(); }), 0);
    ck_assert_int_eq(f.calls(TestOp::kFlush), 1);   // skipped: no write since
    f.blk->set_writethrough(true);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pwrite(0, 512, buf); }), 0);
    ck_assert_int_eq(f.calls(TestOp::kFlush), 2);   // writethrough flushes each write
}
END_TEST

START_TEST(test_discard_advisory)
{
    Fixture f(MemConfig{});
    // discard=ignore (default): dropped before the driver.
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pdiscard(0, 4096); }), 0);
    ck_assert_int_eq(f.calls(TestOp::kDiscard), 0);
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
    MemConfig cfg;
    cfg.align = 512;
    BlockGraph graph(&test_registry());
    BlockdevOptions o = must_parse(mem_arg("m", cfg) + ",detect-zeroes=on");
    ck_assert(o.detect_zeroes == BlockdevDetectZeroes::kOn);
    auto n = graph.add_node(o);
    ck_assert(n.ok());
    auto blk = BlockBackend::create(n.value(), kPermConsistentRead | kPermWrite, kPermAll, "t");
    ck_assert(blk.ok());
    std::vector<uint8_t> z(4096, 0);
    ck_assert_int_eq(run_in_coroutine([&] { return blk.value()->co_pwrite(0, 4096, z.data()); }), 0);
    TestNode *m = TestNode::from(n.value());
    ck_assert_int_eq(m->count(TestOp::kZeroes).calls, 1);
    ck_assert_int_eq(m->count(TestOp::kZeroes).bytes, 4096);
    ck_assert_int_eq(m->count(TestOp::kWrite).calls, 0);
}
END_TEST

// ---------------------------------------------------------------- graph

START_TEST(test_node_names)
{
    auto ctx = AioContext::create();
    BlockGraph graph(&test_registry());
    auto a = graph.add_node(mem_opts("a"));
    ck_assert(a.ok());
    auto dup = graph.add_node(mem_opts("a"));
    ck_assert(!dup.ok());
    ck_assert_str_eq(dup.msg().c_str(), "blockdev 'a': Duplicate nodes with node-name='a'");
    // The decoder refuses such a name; add_node checks it again.
    BlockdevOptions b = mem_opts("");
    b.node_name = "1abc";
    auto bad = graph.add_node(b);
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
    BlockGraph graph(&test_registry());
    BlockNode *m = graph.add_node(mem_opts("m")).value();
    // Writer that does not share write.
    auto w = BlockBackend::create(m, kPermConsistentRead | kPermWrite, kPermAll & ~kPermWrite, "export 'w'");
    ck_assert(w.ok());
    auto w2 = BlockBackend::create(m, kPermConsistentRead | kPermWrite, kPermAll, "export 'w2'");
    ck_assert(!w2.ok());
    ck_assert_str_eq(w2.msg().c_str(),
                     "Permission conflict on node 'm': permissions 'write' are both required by export 'w2' (uses "
                     "node 'm' as 'root' child) and unshared by export 'w' (uses node 'm' as 'root' child).");
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
    std::vector<std::string> closed;
    {
        BlockGraph graph(&test_registry());
        // A test-mem pass-through node over an inline test-mem child: both
        // report their close.
        auto top = graph.add_node(must_parse("test-mem,node-name=top,file.driver=test-mem,file.node-name=child"));
        ck_assert(top.ok());
        ck_assert_int_eq(graph.nodes().size(), 2);
        ck_assert(graph.find("child")->implicit());
        for (BlockNode *n : graph.nodes()) {
            TestNode::from(n)->on_close = [&closed](const std::string &name) { closed.push_back(name); };
        }
        // The re-emitted options name the child.
        nlohmann::json d = blockdev_options_to_json(top.value()->dump_options());
        ck_assert_msg(d["file"] == "child", "%s", d.dump().c_str());
    }
    ck_assert_int_eq(closed.size(), 2);
    ck_assert_str_eq(closed[0].c_str(), "top");
    ck_assert_str_eq(closed[1].c_str(), "child");

    // Removing the parent removes its inline child (here a filter).
    BlockGraph graph(&test_registry());
    BlockdevOptions c2 = mem_opts("c2");
    ck_assert(graph.add_node(pass_opts("t2", inline_ref(c2))).ok());
    ck_assert_int_eq(graph.nodes().size(), 2);
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

constexpr int64_t kStressSize = 4096;
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

int64_t stress_write_offset(int writer, int j)
{
    return writer * 8 + (j * 2 * kStressWriters * 8) % kStressSize;
}

// Writes 8 bytes of its own, unaligned (serialising), pausing in between so
// that the node keeps switching between the fast path and tracking.
void stress_writer(void *opaque)
{
    auto *a = static_cast<StressStart *>(opaque);
    for (int j = 0; j < kStressWrites; j++) {
        std::vector<uint8_t> v(8, static_cast<uint8_t>(a->id + 1));
        if (a->st->blk->co_pwrite(stress_write_offset(a->id, j), 8, v.data()) != 0) a->st->errors.fetch_add(1);
        co_sleep_ns((1 + j % 4) * 500 * 1000);
    }
    a->st->writers_left.fetch_sub(1);
}

// Aligned two-block reads (untracked unless a serialising request is in
// flight) until the writers are done.
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
    // iothread at once: every write is serialising, so no write may ever
    // be in the driver beside an overlapping request (a missed wait for a
    // request that started on the fast path in the other thread shows in
    // overlapping_writes()), and no write may be lost.
    MemConfig cfg;
    cfg.size = kStressSize;
    cfg.align = 512;
    Fixture f(cfg);
    TestNode *m = f.mem();
    // The readers' two-block reads take up to 3 ms; the writers' one-block
    // read-modify-write reads and their writes do not yield at all, so a
    // serialising request is in flight only briefly (the readers run
    // mostly on the fast path) and a write that did not wait for the reads
    // in flight would overlap one.
    m->set_latency(test_op_bit(TestOp::kRead), 0, 3 * 1000 * 1000, 1024);
    auto th = IoThread::create("io0").value();
    Stress st;
    st.blk = f.blk.get();
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
    for (int i = 0; i < kStressWriters; i++) f.ctx->co_enter(coroutine_create(stress_writer, &writers[i]));
    for (int i = 0; i < kStressReaders; i++) f.ctx->co_enter(coroutine_create(stress_reader, &readers[i]));
    while (st.writers_left.load() > 0 || st.readers_left.load() > 0) {
        Timer t(f.ctx.get(), [](void *) {}, nullptr);
        t.mod_in(1000 * 1000);
        f.ctx->iterate(true);
    }
    th.reset();
    ck_assert_int_eq(st.errors.load(), 0);
    ck_assert_int_eq(m->overlapping_writes(), 0);
    ck_assert_int_eq(m->misaligned(), 0);
    for (int w = 0; w < 2 * kStressWriters; w++) {
        for (int j = 0; j < kStressWrites; j++) {
            int64_t off = stress_write_offset(w, j);
            for (int k = 0; k < 8; k++) ck_assert_int_eq(m->data[off + k], w + 1);
        }
    }
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

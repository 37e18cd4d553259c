// Regression test: flush generations are bumped *before* a write reaches
// the driver (block/io.cc co_aligned_pwritev: mark_dirty() first). A flush
// that runs while the write is still in flight records the new generation
// as flushed; the next flush, issued after the write completed, is then
// skipped although the data written was never flushed to disk.
#include <cstring>
#include <memory>
#include <vector>

#include "block/block-driver.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <check.h>

using namespace bg;

namespace {

int g_flushes = 0;

class SlowMem : public BlockNode {
  public:
    std::vector<uint8_t> data;

  protected:
    Status open(const BlockdevOptions &) override
    {
        data.assign(1 << 20, 0);
        return {};
    }
    int do_co_preadv(int64_t off, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        qiov.from_buf(0, data.data() + off, bytes);
        return 0;
    }
    int do_co_pwritev(int64_t off, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        co_sleep_ns(5 * 1000 * 1000);   // the write is in flight for 5 ms
        qiov.to_buf(0, data.data() + off, bytes);
        return 0;
    }
    int do_co_flush_to_disk() override
    {
        g_flushes++;
        return 0;
    }
    int64_t do_getlength() override { return static_cast<int64_t>(data.size()); }
};

constexpr BlockDriver kSlowDriver = {"slowmem", BlockDriverKind::kProtocol, kCapWrite, "test",
                                     [] { return std::unique_ptr<BlockNode>(new SlowMem); }, nullptr};

DriverRegistry *registry()
{
    static DriverRegistry r;
    if (r.all().empty()) r.add(&kSlowDriver);
    return &r;
}

} // namespace

START_TEST(test_flush_after_completed_write_reaches_disk)
{
    auto ctx = AioContext::create();
    BlockGraph graph(registry());
    BlockdevOptions o;
    o.driver = "slowmem";
    o.node_name = "m";
    o.opts = BlockdevOptionsNull{};
    BlockNode *n = graph.add_node(o).value();
    auto blk = BlockBackend::create(n, kPermConsistentRead | kPermWrite, kPermAll, "t").value();

    char buf[512];
    memset(buf, 0x5a, sizeof(buf));
    bool written = false;
    ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(blk->co_pwrite(0, 512, buf), 0);
        written = true;
    }));
    ck_assert(!written);
    // Flush 1 overlaps the write: it need not cover it.
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_flush(); }), 0);
    ck_assert(!written);
    while (!written) ctx->iterate(true);
    int before = g_flushes;
    // Flush 2 is issued after the write completed: it must reach the disk.
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_flush(); }), 0);
    ck_assert_msg(g_flushes == before + 1,
                  "flush after a completed write was skipped (flush_to_disk calls %d -> %d)", before, g_flushes);
    blk.reset();
}
END_TEST

int main()
{
    Suite *s = suite_create("regress-flush-gen");
    TCase *tc = tcase_create("flush-generation");
    tcase_add_test(tc, test_flush_after_completed_write_reaches_disk);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

// Regression test: flush generations are bumped *before* a write reaches
// the driver (block/io.cc co_aligned_pwritev: mark_dirty() first). A flush
// that runs while the write is still in flight records the new generation
// as flushed; the next flush, issued after the write completed, is then
// skipped although the data written was never flushed to disk.
#include <cstring>
#include <memory>
#include <vector>

#include "tests/unit/testdrv.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <check.h>

using namespace bg;

START_TEST(test_flush_after_completed_write_reaches_disk)
{
    auto ctx = AioContext::create();
    BlockGraph graph(&test_registry());
    BlockNode *n = graph.add_node(must_parse("test-mem,node-name=m")).value();
    TestNode *mem = TestNode::from(n);
    mem->set_latency(test_op_bit(TestOp::kWrite), 5 * 1000 * 1000);   // the write is in flight for 5 ms
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
    uint64_t before = mem->count(TestOp::kFlush).calls;
    // Flush 2 is issued after the write completed: it must reach the disk.
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_flush(); }), 0);
    uint64_t after = mem->count(TestOp::kFlush).calls;
    ck_assert_msg(after == before + 1, "flush after a completed write was skipped (flush_to_disk calls %d -> %d)",
                  static_cast<int>(before), static_cast<int>(after));
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

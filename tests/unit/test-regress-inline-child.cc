// Regression test: inline (implicit) children inherit nothing from their
// parent (block/graph.cc open_child, kInline). QEMU's
// bdrv_inherited_options() gives an inline child the parent's read-only,
// force-share and cache.no-flush, and defaults it to discard=unmap ("our
// block drivers ... respect unmap policy, so we can default to enable both
// on lower layers"). Here a discard=unmap node over an inline file child
// never frees space (the child drops MAY_UNMAP and discards), and a
// read-only node over an inline file opens the file read-write.
#include <cstring>
#include <memory>
#include <vector>

#include "tests/unit/testdrv.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <check.h>

using namespace bg;

namespace {

// A filter (blkdebug without rules) over an inline test-mem child.
BlockdevOptions pass_over_inline_mem(bool ro, BlockdevDiscardOptions discard)
{
    std::string arg = "blkdebug,node-name=top,image.driver=test-mem";
    if (ro) arg += ",read-only=on";
    if (discard == BlockdevDiscardOptions::kUnmap) arg += ",discard=unmap";
    return must_parse(arg);
}

} // namespace

START_TEST(test_inline_child_unmap)
{
    auto ctx = AioContext::create();
    BlockGraph graph(&test_registry());
    BlockNode *top = graph.add_node(pass_over_inline_mem(false, BlockdevDiscardOptions::kUnmap)).value();
    TestNode *mem = TestNode::from(top->filtered_child()->node());
    mem->set_logging(true);
    auto blk = BlockBackend::create(top, kPermConsistentRead | kPermWrite, kPermAll, "t").value();
    // FUSE PUNCH_HOLE: write-zeroes with MAY_UNMAP; and a discard.
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_pwrite_zeroes(0, 65536, kReqMayUnmap | kReqNoFallback); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_pdiscard(65536, 65536); }), 0);
    int unmap_zero_calls = 0;
    for (const TestRequest &r : mem->log()) unmap_zero_calls += r.op == TestOp::kZeroes && (r.flags & kReqMayUnmap);
    ck_assert_msg(unmap_zero_calls == 1, "MAY_UNMAP dropped by the inline child: the hole is never punched");
    ck_assert_msg(mem->count(TestOp::kDiscard).calls == 1, "discard dropped by the inline child (discard=ignore)");
    blk.reset();
}
END_TEST

START_TEST(test_inline_child_read_only)
{
    auto ctx = AioContext::create();
    BlockGraph graph(&test_registry());
    BlockNode *top = graph.add_node(pass_over_inline_mem(true, BlockdevDiscardOptions::kIgnore)).value();
    BlockNode *child = top->filtered_child()->node();
    ck_assert_msg(child->read_only(), "inline child of a read-only node was opened read-write");
}
END_TEST

int main()
{
    Suite *s = suite_create("regress-inline-child");
    TCase *tc = tcase_create("inherit");
    tcase_add_test(tc, test_inline_child_unmap);
    tcase_add_test(tc, test_inline_child_read_only);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

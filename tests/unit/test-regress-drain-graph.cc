// Regression test: graph changes inside a drained section (the protocol
// block/block.h asks for) corrupt the quiesce counters. attach_child() and
// BlockBackend::create() on a drained node do not drain the new parent, but
// the node's drained_end() ends a drain on every parent it has *then*: the new
// parent's counter goes to -1, and from then on a drain of that parent does
// not stop its BlockBackend, whose requests run on during the drained section.
// (The mirror case: a parent detached inside the section stays quiesced.)
#include <cstring>
#include <memory>
#include <vector>

#include "tests/unit/testdrv.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <check.h>

using namespace bg;

START_TEST(test_parent_attached_while_drained)
{
    auto ctx = AioContext::create();
    BlockGraph graph(&test_registry());
    BlockNode *mem = graph.add_node(must_parse("test-mem,node-name=m")).value();

    mem->drained_begin();
    // A graph change in the drained section: a filter on top, and a user.
    BlockNode *flt = graph.add_node(must_parse("blkdebug,node-name=p,image=m")).value();
    auto blk = BlockBackend::create(flt, kPermConsistentRead, kPermAll, "user").value();
    mem->drained_end();
    ck_assert_msg(!flt->quiesced(), "filter still quiesced after the drained section");

    // Later, a drained section on the filter must hold the user's requests.
    flt->drained_begin();
    ck_assert_msg(flt->quiesced(), "drained_begin() on the filter left it unquiesced (counter went negative)");
    bool done = false;
    char buf[512];
    ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(blk->co_pread(0, 512, buf), 0);
        done = true;
    }));
    for (int i = 0; i < 10; i++) ctx->iterate(false);
    ck_assert_msg(!done, "a request ran inside a drained section");
    flt->drained_end();
    while (!done) ctx->iterate(true);
    blk.reset();
}
END_TEST

int main()
{
    Suite *s = suite_create("regress-drain-graph");
    TCase *tc = tcase_create("drain");
    tcase_add_test(tc, test_parent_attached_while_drained);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

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

#include "block/block-driver.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <check.h>

using namespace bg;

namespace {

class Mem : public BlockNode {
  protected:
    Status open(const BlockdevOptions &) override { return {}; }
    int do_co_preadv(int64_t, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        qiov.memset(0, 0, bytes);
        return 0;
    }
    int64_t do_getlength() override { return 1 << 20; }
};

class Pass : public FilterNode {
  protected:
    Status open(const BlockdevOptions &opts) override
    {
        return open_filtered("image", opts.as<BlockdevOptionsBlkdebug>()->image);
    }
};

constexpr BlockDriver kMem = {"mem", BlockDriverKind::kProtocol, kCapWrite, "t",
                              [] { return std::unique_ptr<BlockNode>(new Mem); }, nullptr};
constexpr BlockDriver kPass = {"pass", BlockDriverKind::kFilter, kCapWrite, "t",
                               [] { return std::unique_ptr<BlockNode>(new Pass); }, nullptr};

DriverRegistry *registry()
{
    static DriverRegistry r;
    if (r.all().empty()) {
        r.add(&kMem);
        r.add(&kPass);
    }
    return &r;
}

} // namespace

START_TEST(test_parent_attached_while_drained)
{
    auto ctx = AioContext::create();
    BlockGraph graph(registry());
    BlockdevOptions m;
    m.driver = "mem";
    m.node_name = "m";
    m.opts = BlockdevOptionsNull{};
    BlockNode *mem = graph.add_node(m).value();

    mem->drained_begin();
    // A graph change in the drained section: a filter on top, and a user.
    BlockdevOptions p;
    p.driver = "pass";
    p.node_name = "p";
    BlockdevOptionsBlkdebug d;
    d.image.kind = BlockdevRef::Kind::kReference;
    d.image.reference = "m";
    p.opts = d;
    BlockNode *flt = graph.add_node(p).value();
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

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

#include "block/block-driver.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <check.h>

using namespace bg;

namespace {

int g_unmap_zero_calls = 0, g_discards = 0;

class Mem : public BlockNode {
  protected:
    Status open(const BlockdevOptions &) override
    {
        supported_zero_flags_ = kReqMayUnmap;
        return {};
    }
    int do_co_preadv(int64_t, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        qiov.memset(0, 0, bytes);
        return 0;
    }
    int do_co_pwritev(int64_t, int64_t, IOVector &, ReqFlags) override { return 0; }
    int do_co_pwrite_zeroes(int64_t, int64_t, ReqFlags f) override
    {
        if (f & kReqMayUnmap) g_unmap_zero_calls++;
        return 0;
    }
    int do_co_pdiscard(int64_t, int64_t) override
    {
        g_discards++;
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

BlockdevOptions pass_over_inline_mem(bool ro, BlockdevDiscardOptions discard)
{
    auto child = std::make_shared<BlockdevOptions>();
    child->driver = "mem";
    child->opts = BlockdevOptionsNull{};
    BlockdevOptions p;
    p.driver = "pass";
    p.node_name = "top";
    p.read_only = ro;
    p.discard = discard;
    BlockdevOptionsBlkdebug d;
    d.image.kind = BlockdevRef::Kind::kInline;
    d.image.def = child;
    p.opts = d;
    return p;
}

} // namespace

START_TEST(test_inline_child_unmap)
{
    auto ctx = AioContext::create();
    BlockGraph graph(registry());
    BlockNode *top = graph.add_node(pass_over_inline_mem(false, BlockdevDiscardOptions::kUnmap)).value();
    auto blk = BlockBackend::create(top, kPermConsistentRead | kPermWrite, kPermAll, "t").value();
    // FUSE PUNCH_HOLE: write-zeroes with MAY_UNMAP; and a discard.
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_pwrite_zeroes(0, 65536, kReqMayUnmap | kReqNoFallback); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_pdiscard(65536, 65536); }), 0);
    ck_assert_msg(g_unmap_zero_calls == 1, "MAY_UNMAP dropped by the inline child: the hole is never punched");
    ck_assert_msg(g_discards == 1, "discard dropped by the inline child (discard=ignore)");
    blk.reset();
}
END_TEST

START_TEST(test_inline_child_read_only)
{
    auto ctx = AioContext::create();
    BlockGraph graph(registry());
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

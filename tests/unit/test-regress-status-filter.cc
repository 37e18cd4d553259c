// Regression test: block status through a filter on top of an overlay.
// block/io.cc co_block_status() adds ZERO to every unallocated answer of a
// node without a backing child -- including a filter whose RAW answer came
// from an overlay that leaves the range to *its* backing file -- and
// co_block_status_above() walks only COW children, never through filters.
// So SEEK_DATA on a FUSE export of a filter over a qcow2 overlay (and any
// tool using block_status_above on such a node) reports a hole where the
// backing file holds data. QEMU adds ZERO only for drivers that support
// backing files and walks bdrv_filter_or_cow_bs().
#include <cstring>
#include <memory>
#include <vector>

#include "block/block-driver.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <check.h>

using namespace bg;

namespace {

constexpr int64_t kSize = 1 << 20;

// Base: plain data everywhere.
class Mem : public BlockNode {
  protected:
    Status open(const BlockdevOptions &) override { return {}; }
    int do_co_preadv(int64_t, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        qiov.memset(0, 0xaa, bytes);
        return 0;
    }
    int64_t do_getlength() override { return kSize; }
};

// Overlay: first half unallocated (served by the backing child), second half
// its own data -- what qcow2 answers for an overlay with half its clusters
// allocated.
class Cow : public BlockNode {
  protected:
    Status open(const BlockdevOptions &opts) override
    {
        auto c = open_child("backing", opts.as<BlockdevOptionsBlkdebug>()->image, kRoleCow);
        if (!c.ok()) return c.error();
        return {};
    }
    int do_co_preadv(int64_t off, int64_t bytes, IOVector &qiov, ReqFlags f) override
    {
        return backing_child()->co_preadv(off, bytes, qiov, f);
    }
    int do_co_block_status(bool, int64_t off, int64_t bytes, int64_t *pnum, int64_t *map, BlockNode **file) override
    {
        if (off < kSize / 2) {
            *pnum = std::min(bytes, kSize / 2 - off);
            return 0;   // unallocated here
        }
        *pnum = bytes;
        *map = off;
        *file = this;
        return kStatusData | kStatusOffsetValid;
    }
    int64_t do_getlength() override { return kSize; }
};

class Pass : public FilterNode {
  protected:
    Status open(const BlockdevOptions &opts) override
    {
        return open_filtered("image", opts.as<BlockdevOptionsBlkdebug>()->image);
    }
};

constexpr BlockDriver kMem = {"mem", BlockDriverKind::kProtocol, 0, "t",
                              [] { return std::unique_ptr<BlockNode>(new Mem); }, nullptr};
constexpr BlockDriver kCow = {"cow", BlockDriverKind::kFormat, kCapBacking, "t",
                              [] { return std::unique_ptr<BlockNode>(new Cow); }, nullptr};
constexpr BlockDriver kPass = {"pass", BlockDriverKind::kFilter, 0, "t",
                               [] { return std::unique_ptr<BlockNode>(new Pass); }, nullptr};

DriverRegistry *registry()
{
    static DriverRegistry r;
    if (r.all().empty()) {
        r.add(&kMem);
        r.add(&kCow);
        r.add(&kPass);
    }
    return &r;
}

BlockdevOptions opts(const char *drv, const char *name, const char *child = nullptr)
{
    BlockdevOptions o;
    o.driver = drv;
    o.node_name = name;
    o.read_only = true;
    if (child) {
        BlockdevOptionsBlkdebug d;
        d.image.kind = BlockdevRef::Kind::kReference;
        d.image.reference = child;
        o.opts = d;
    } else {
        o.opts = BlockdevOptionsNull{};
    }
    return o;
}

} // namespace

START_TEST(test_status_above_through_filter)
{
    auto ctx = AioContext::create();
    BlockGraph graph(registry());
    ck_assert(graph.add_node(opts("mem", "base")).ok());
    BlockNode *top = graph.add_node(opts("cow", "top", "base")).value();
    BlockNode *flt = graph.add_node(opts("pass", "flt", "top")).value();

    int64_t pnum = 0;
    // Sanity: asked on the overlay itself, the first half is data from base.
    int r = run_in_coroutine(
        [&] { return top->co_block_status_above(nullptr, true, 0, kSize, &pnum, nullptr, nullptr, nullptr); });
    ck_assert_int_ge(r, 0);
    ck_assert_msg(r & kStatusData, "overlay: flags 0x%x", r);

    // The same range through a filter on the overlay must say the same.
    r = run_in_coroutine(
        [&] { return flt->co_block_status_above(nullptr, true, 0, kSize, &pnum, nullptr, nullptr, nullptr); });
    ck_assert_int_ge(r, 0);
    ck_assert_msg((r & kStatusData) && !(r & kStatusZero),
                  "through a filter: flags 0x%x (ZERO without DATA: SEEK_DATA/convert treat base data as a hole)", r);
}
END_TEST

int main()
{
    Suite *s = suite_create("regress-status-filter");
    TCase *tc = tcase_create("block-status");
    tcase_add_test(tc, test_status_above_through_filter);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

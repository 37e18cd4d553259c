// Regression test: block status through a filter on top of an overlay.
// block/io.cc co_block_status() adds ZERO to every unallocated answer of a
// node without a backing child -- including a filter whose RAW answer came
// from an overlay that leaves the range to *its* backing file -- and
// co_block_status_above() walks only COW children, never through filters.
// So SEEK_DATA on a FUSE export of a filter over a qcow2 overlay (and any
// tool using block_status_above on such a node) reports a hole where the
// backing file holds data. QEMU adds ZERO only for drivers that support
// backing files and walks bdrv_filter_or_cow_bs().
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "tests/unit/testdrv.h"
#include "qapi/option-reader.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <check.h>

using namespace bg;

namespace {

constexpr int64_t kSize = 1 << 20;

// The overlay's one option: its backing child (a node-name).
struct CowOptions : DriverOptionsOf<CowOptions> {
    BlockdevRef backing;
    void encode(nlohmann::json &j) const override { put_ref(j, "backing", backing); }
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override
    {
        fn("backing", backing);
    }
};

Result<std::unique_ptr<DriverOptions>> decode_cow_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<CowOptions>();
    BG_TRY(r.get_ref("backing", &o->backing, OptionReader::RefMode::kRequired));
    return std::unique_ptr<DriverOptions>(std::move(o));
}

// Overlay: first half unallocated (served by the backing child), second half
// its own data -- what qcow2 answers for an overlay with half its clusters
// allocated. A format with a backing child, which test-mem cannot play.
class Cow : public BlockNode {
  protected:
    Status open(const BlockdevOptions &opts) override
    {
        auto c = open_child("backing", opts.as<CowOptions>()->backing, kRoleCow);
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

constexpr BlockDriver kCow = {"cow", BlockDriverKind::kFormat, kCapBacking, "t", decode_cow_options,
                              [] { return std::unique_ptr<BlockNode>(new Cow); }, nullptr};

// test-mem for the base, blkdebug for the filter, and the overlay.
const DriverRegistry &registry()
{
    static const DriverRegistry r = [] {
        DriverRegistry x = test_registry();
        x.add(&kCow);
        return x;
    }();
    return r;
}

} // namespace

START_TEST(test_status_above_through_filter)
{
    auto ctx = AioContext::create();
    BlockGraph graph(&registry());
    BlockNode *base = graph.add_node(must_parse("test-mem,node-name=base,read-only=on,size=1M")).value();
    auto &bytes = TestNode::from(base)->data;
    std::fill(bytes.begin(), bytes.end(), 0xaa);   // plain data everywhere
    BlockNode *top = graph.add_node(must_parse("cow,node-name=top,read-only=on,backing=base", registry())).value();
    BlockNode *flt = graph.add_node(must_parse("blkdebug,node-name=flt,read-only=on,image=top")).value();

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

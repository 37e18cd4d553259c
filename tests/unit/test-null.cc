// Unit tests for block/null.cc: the null-co and null-aio protocol drivers.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "block/block-driver.h"
#include "util/aio.h"

#include "tests/unit/testdrv.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

namespace bg {
extern const BlockDriver kDriverNullCo, kDriverNullAio;
}

using namespace bg;

namespace {

// extra: more keyval options (",size=1M").
BlockdevOptions null_opts(const std::string &driver, const std::string &name, const std::string &extra = "")
{
    return must_parse(driver + ",node-name=" + name + extra, builtin_drivers());
}

struct Fixture {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph;
    BlockNode *node = nullptr;
    std::unique_ptr<BlockBackend> blk;

    explicit Fixture(const BlockdevOptions &o, BlockPerm perm = kPermConsistentRead | kPermWrite)
    {
        auto r = graph.add_node(o);
        ck_assert_msg(r.ok(), "add_node: %s", r.ok() ? "" : r.msg().c_str());
        node = r.value();
        auto b = BlockBackend::create(node, perm, kPermAll, "test");
        ck_assert_msg(b.ok(), "backend: %s", b.ok() ? "" : b.msg().c_str());
        blk = std::move(b.value());
    }
    ~Fixture()
    {
        blk.reset();
        graph.close_all();
    }
};

} // namespace

START_TEST(test_null_defaults)
{
    Fixture f(null_opts("null-co", "n0"));
    ck_assert_int_eq(f.blk->getlength(), 1LL << 30);
    ck_assert_str_eq(f.node->driver_name(), "null-co");
    ck_assert(f.node->filename() == "null-co://");
    ck_assert_int_eq(f.node->allocated_file_size(), 0);
    std::vector<uint8_t> buf(65536, 0xaa);
    int r = run_in_coroutine([&] { return f.blk->co_pread(4096, buf.size(), buf.data()); });
    ck_assert_int_eq(r, 0);
    for (uint8_t b : buf) ck_assert_int_eq(b, 0);
    // The last bytes of the device; one past is out of range.
    r = run_in_coroutine([&] { return f.blk->co_pread((1LL << 30) - 512, 512, buf.data()); });
    ck_assert_int_eq(r, 0);
    r = run_in_coroutine([&] { return f.blk->co_pread((1LL << 30) - 512, 1024, buf.data()); });
    ck_assert_int_lt(r, 0);
}
END_TEST

START_TEST(test_null_size_option)
{
    Fixture f(null_opts("null-co", "n0", ",size=" + std::to_string(3 * 1024 * 1024 + 512)));
    ck_assert_int_eq(f.blk->getlength(), 3 * 1024 * 1024 + 512);
}
END_TEST

START_TEST(test_null_read_zeroes_off)
{
    Fixture f(null_opts("null-co", "n0", ",read-zeroes=off"));
    std::vector<uint8_t> buf(8192, 0x5c);
    int r = run_in_coroutine([&] { return f.blk->co_pread(0, buf.size(), buf.data()); });
    ck_assert_int_eq(r, 0);
    for (uint8_t b : buf) ck_assert_int_eq(b, 0x5c);
}
END_TEST

// Writes are discarded (reads still give zeros); every other operation
// succeeds except truncate.
START_TEST(test_null_writes_discarded)
{
    BlockdevOptions o = null_opts("null-co", "n0", ",discard=unmap");
    Fixture f(o, kPermConsistentRead | kPermWrite | kPermResize);
    std::vector<uint8_t> data(4096, 0x77);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pwrite(0, data.size(), data.data()); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pwrite(100, 7, data.data(), kReqFua); }), 0);
    std::vector<uint8_t> buf(4096, 0xaa);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pread(0, buf.size(), buf.data()); }), 0);
    for (uint8_t b : buf) ck_assert_int_eq(b, 0);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pwrite_zeroes(0, 1 << 20, kReqMayUnmap); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pwrite_zeroes(3, 5, 0); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pdiscard(0, 1 << 20); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_flush(); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_truncate(1 << 20, true, PreallocMode::kOff); }),
                     -ENOTSUP);
    ck_assert_int_eq(f.blk->getlength(), 1LL << 30);
}
END_TEST

START_TEST(test_null_latency)
{
    Fixture f(null_opts("null-co", "n0", ",latency-ns=20000000"));
    uint8_t buf[512];
    int64_t t0 = clock_ns();
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pread(0, sizeof(buf), buf); }), 0);
    int64_t t1 = clock_ns();
    ck_assert_int_ge(t1 - t0, 20 * 1000 * 1000);
    ck_assert_int_eq(run_in_coroutine([&] { return f.blk->co_pwrite(0, sizeof(buf), buf); }), 0);
    ck_assert_int_ge(clock_ns() - t1, 20 * 1000 * 1000);

    // Without latency, null-co never yields: a request finishes inside the
    // coroutine's first run.
    Fixture g(null_opts("null-co", "n1"));
    bool done = false;
    Coroutine *co = coroutine_create_fn([&] {
        uint8_t b[512];
        ck_assert_int_eq(g.blk->co_pread(0, sizeof(b), b), 0);
        done = true;
    });
    g.ctx->co_enter(co);
    ck_assert(done);
}
END_TEST

// null-aio completes from the loop: concurrent requests overlap.
START_TEST(test_null_aio)
{
    Fixture f(null_opts("null-aio", "a0"));
    ck_assert(f.node->filename() == "null-aio://");
    constexpr int kN = 8;
    int done = 0;
    int entered_all_before_first_done = -1;
    int started = 0;
    for (int i = 0; i < kN; i++) {
        Coroutine *co = coroutine_create_fn([&, i] {
            std::vector<uint8_t> b(4096, 0xee);
            started++;
            int r = f.blk->co_pread(static_cast<int64_t>(i) * 4096, b.size(), b.data());
            ck_assert_int_eq(r, 0);
            ck_assert_int_eq(b[0], 0);
            if (done == 0) entered_all_before_first_done = started;
            done++;
        });
        f.ctx->co_enter(co);
    }
    // None finished synchronously.
    ck_assert_int_eq(done, 0);
    while (done < kN) f.ctx->iterate(true);
    ck_assert_int_eq(entered_all_before_first_done, kN);
}
END_TEST

START_TEST(test_null_block_status)
{
    Fixture f(null_opts("null-co", "n0"));
    int64_t pnum = 0, map = -1;
    BlockNode *file = nullptr;
    int r = run_in_coroutine([&] { return f.blk->co_block_status(true, 4096, 65536, &pnum, &map, &file); });
    ck_assert_int_ge(r, 0);
    ck_assert(r & kStatusZero);
    ck_assert(!(r & kStatusData));
    ck_assert(r & kStatusOffsetValid);
    ck_assert_int_eq(pnum, 65536);
    ck_assert_int_eq(map, 4096);
    ck_assert_ptr_eq(file, f.node);

    Fixture g(null_opts("null-co", "n1", ",read-zeroes=off"));
    r = run_in_coroutine([&] { return g.blk->co_block_status(true, 0, 65536, &pnum, &map, &file); });
    ck_assert_int_ge(r, 0);
    ck_assert(r & kStatusData);
    ck_assert(!(r & kStatusZero));
    ck_assert(r & kStatusOffsetValid);
    ck_assert_ptr_eq(file, g.node);
}
END_TEST

START_TEST(test_null_descriptors)
{
    const DriverRegistry &reg = builtin_drivers();
    ck_assert_ptr_eq(reg.find("null-co"), &kDriverNullCo);
    ck_assert_ptr_eq(reg.find("null-aio"), &kDriverNullAio);
    for (const BlockDriver *d : {&kDriverNullCo, &kDriverNullAio}) {
        ck_assert(d->kind == BlockDriverKind::kProtocol);
        ck_assert(d->caps & kCapWrite);
        ck_assert(d->caps & kCapWriteZeroes);
        ck_assert(d->caps & kCapDiscard);
        ck_assert(!(d->caps & kCapPersistent));
        ck_assert(d->probe == nullptr);
    }
}
END_TEST

static Suite *null_suite()
{
    Suite *s = suite_create("null");
    TCase *tc = tcase_create("null");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_null_defaults);
    tcase_add_test(tc, test_null_size_option);
    tcase_add_test(tc, test_null_read_zeroes_off);
    tcase_add_test(tc, test_null_writes_discarded);
    tcase_add_test(tc, test_null_latency);
    tcase_add_test(tc, test_null_aio);
    tcase_add_test(tc, test_null_block_status);
    tcase_add_test(tc, test_null_descriptors);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(null_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

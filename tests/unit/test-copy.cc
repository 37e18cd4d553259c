// Unit tests for block/copy.cc (the copy engine behind img convert, commit
// and rebase): content, sparseness, several sources, ordering modes,
// destinations that do not read as zeros, diff-against copies, worker
// threads, errors naming the offset and the file, option checks, and the
// block jobs' hooks (before_chunk, on_error, read_only).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "block/block-driver.h"
#include "block/copy.h"
#include "util/aio.h"
#include "util/iothread.h"
#include "qapi/block-parse.h"
#include "tests/unit/testdrv.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

#include "tests/unit/tmpdir.h"

using namespace bg;
using namespace bgtest;

namespace {

uint8_t pat(int64_t i, int seed) { return static_cast<uint8_t>((i * 13 + seed + i / 509) % 251 + 1); }

// A file of size bytes: the ranges in data hold the pattern, the rest is a hole.
void make_file(const std::string &path, int64_t size, const std::vector<std::pair<int64_t, int64_t>> &data,
               int seed = 0, int fill = -1)
{
    int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, size), 0);
    if (fill >= 0) {
        std::vector<uint8_t> f(static_cast<size_t>(size), static_cast<uint8_t>(fill));
        ck_assert_int_eq(pwrite(fd, f.data(), f.size(), 0), size);
    }
    for (auto [off, len] : data) {
        std::vector<uint8_t> b(static_cast<size_t>(len));
        for (int64_t i = 0; i < len; i++) b[static_cast<size_t>(i)] = pat(off + i, seed);
        ck_assert_int_eq(pwrite(fd, b.data(), b.size(), off), len);
    }
    close(fd);
}

std::vector<uint8_t> file_bytes(const std::string &path)
{
    int fd = open(path.c_str(), O_RDONLY);
    ck_assert_int_ge(fd, 0);
    struct stat st;
    ck_assert_int_eq(fstat(fd, &st), 0);
    std::vector<uint8_t> buf(static_cast<size_t>(st.st_size));
    ck_assert_int_eq(pread(fd, buf.data(), buf.size(), 0), st.st_size);
    close(fd);
    return buf;
}

int64_t allocated_bytes(const std::string &path)
{
    struct stat st;
    ck_assert_int_eq(stat(path.c_str(), &st), 0);
    return static_cast<int64_t>(st.st_blocks) * 512;
}

BlockdevOptions file_opts(const std::string &path)
{
    return must_parse_json({{"driver", "file"}, {"filename", path}}, builtin_drivers());
}

BlockdevOptions raw_over(const BlockdevOptions &child)
{
    return must_parse_json({{"driver", "raw"}, {"file", blockdev_options_to_json(child)}}, builtin_drivers());
}

// blkdebug over child failing every request of iotype ("read", "write")
// at sector with EIO (once: only the first).
BlockdevOptions blkdebug_over(const BlockdevOptions &child, const char *iotype, int64_t sector, bool once = false)
{
    nlohmann::json e = {{"iotype", iotype}, {"errno", EIO}, {"sector", sector}};
    if (once) e["once"] = true;
    return must_parse_json({{"driver", "blkdebug"}, {"image", blockdev_options_to_json(child)}, {"inject-error", nlohmann::json::array({e})}},
                           builtin_drivers());
}

constexpr BlockPerm kRW = kPermConsistentRead | kPermWrite;

struct Env {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph;
    std::vector<std::unique_ptr<BlockBackend>> blks;
    ~Env()
    {
        blks.clear();
        graph.close_all();
    }
    BlockBackend *open(const BlockdevOptions &o, BlockPerm perm = kRW)
    {
        auto r = graph.add_node(o);
        ck_assert_msg(r.ok(), "add_node: %s", r.ok() ? "" : r.msg().c_str());
        auto b = BlockBackend::create(r.value(), perm, kPermAll, "test");
        ck_assert_msg(b.ok(), "backend: %s", b.ok() ? "" : b.msg().c_str());
        blks.push_back(std::move(b.value()));
        return blks.back().get();
    }
    BlockBackend *open_raw(const std::string &path, BlockPerm perm = kRW) { return open(raw_over(file_opts(path)), perm); }
};

CopySource src_of(BlockBackend *b, const char *name)
{
    CopySource s;
    s.blk = b;
    s.name = name;
    return s;
}

void flush(BlockBackend *b) { ck_assert_int_eq(run_in_coroutine([&] { return b->co_flush(); }), 0); }

const int64_t kMiB = 1 << 20;

} // namespace

// Data and holes are copied; holes and zero-filled blocks stay holes.
START_TEST(test_copy_sparse)
{
    Env e;
    const std::string s = tmp_path("s"), d = tmp_path("d");
    make_file(s, 16 * kMiB, {{0, kMiB}, {5 * kMiB + 4096, 8192}, {15 * kMiB, kMiB}});
    {
        // A zero-filled megabyte written as data.
        int fd = open(s.c_str(), O_RDWR);
        std::vector<uint8_t> z(kMiB, 0);
        ck_assert_int_eq(pwrite(fd, z.data(), z.size(), 8 * kMiB), kMiB);
        close(fd);
    }
    make_file(d, 16 * kMiB, {});
    BlockBackend *sb = e.open_raw(s, kPermConsistentRead), *db = e.open_raw(d);
    CopyOptions o;
    o.dest_is_zero = true;
    auto r = copy_sync({src_of(sb, "s")}, db, o);
    ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
    flush(db);
    ck_assert(file_bytes(s) == file_bytes(d));
    // 2 MiB + 8 KiB of data; the zero megabyte and the holes are not written.
    ck_assert_int_le(allocated_bytes(d), 2 * kMiB + 8192 + 65536);
    ck_assert_int_eq(r.value().bytes_written, 2 * kMiB + 8192);
    ck_assert_int_eq(r.value().bytes_zeroed, 0);
}
END_TEST

// sparse_size 0: every byte written (fully allocated).
START_TEST(test_copy_no_sparse)
{
    Env e;
    const std::string s = tmp_path("s0"), d = tmp_path("d0");
    make_file(s, 4 * kMiB, {{kMiB, 4096}});
    make_file(d, 4 * kMiB, {});
    BlockBackend *sb = e.open_raw(s, kPermConsistentRead), *db = e.open_raw(d);
    CopyOptions o;
    o.sparse_size = 0;
    o.dest_is_zero = true;
    auto r = copy_sync({src_of(sb, "s0")}, db, o);
    ck_assert(r.ok());
    flush(db);
    ck_assert(file_bytes(s) == file_bytes(d));
    ck_assert_int_ge(allocated_bytes(d), 4 * kMiB);
    ck_assert_int_eq(r.value().bytes_written, 4 * kMiB);
}
END_TEST

// Sources of odd lengths are concatenated; every worker count and both
// ordering modes give the same bytes.
START_TEST(test_copy_concat_modes)
{
    const std::string a = tmp_path("a"), b = tmp_path("b"), c = tmp_path("c");
    make_file(a, 3 * kMiB + 512, {{0, 100000}, {3 * kMiB, 512}}, 1);
    make_file(b, 1536, {{0, 1536}}, 2);
    make_file(c, 5 * kMiB, {{2 * kMiB - 7, 3 * kMiB}}, 3);
    std::vector<uint8_t> want = file_bytes(a), vb = file_bytes(b), vc = file_bytes(c);
    want.insert(want.end(), vb.begin(), vb.end());
    want.insert(want.end(), vc.begin(), vc.end());
    for (int workers : {1, 3, 16}) {
        for (bool ooo : {false, true}) {
            Env e;
            const std::string d = tmp_path("dcat");
            make_file(d, static_cast<int64_t>(want.size()), {});
            BlockBackend *ab = e.open_raw(a, kPermConsistentRead), *bb = e.open_raw(b, kPermConsistentRead),
                         *cb = e.open_raw(c, kPermConsistentRead), *db = e.open_raw(d);
            CopyOptions o;
            o.max_workers = workers;
            o.out_of_order = ooo;
            o.chunk_size = 256 * 1024;
            o.dest_is_zero = true;
            int64_t last = -1;
            bool monotonic = true;
            o.progress = [&](const CopyProgress &p) {
                if (p.done < last) monotonic = false;
                last = p.done;
                ck_assert_int_eq(p.total, static_cast<int64_t>(want.size()));
            };
            auto r = copy_sync({src_of(ab, "a"), src_of(bb, "b"), src_of(cb, "c")}, db, o);
            ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
            flush(db);
            ck_assert_msg(file_bytes(d) == want, "workers %d out-of-order %d", workers, ooo);
            ck_assert(monotonic);
            ck_assert_int_eq(last, static_cast<int64_t>(want.size()));
        }
    }
}
END_TEST

// A destination holding data gets zeros written where the source is zero.
START_TEST(test_copy_dirty_destination)
{
    Env e;
    const std::string s = tmp_path("sd"), d = tmp_path("dd");
    make_file(s, 4 * kMiB, {{kMiB, 8192}});
    make_file(d, 4 * kMiB, {}, 0, 0xee);
    BlockBackend *sb = e.open_raw(s, kPermConsistentRead), *db = e.open_raw(d);
    CopyOptions o;
    o.dest_is_zero = false;
    auto r = copy_sync({src_of(sb, "sd")}, db, o);
    ck_assert(r.ok());
    flush(db);
    ck_assert(file_bytes(s) == file_bytes(d));
    ck_assert_int_gt(r.value().bytes_zeroed, 0);
}
END_TEST

// diff_against: only sectors that differ from the comparison image are
// written; the rest of the destination keeps its bytes. A source shorter
// than the copy reads as zeros past its end.
START_TEST(test_copy_diff_against)
{
    Env e;
    const std::string s = tmp_path("sdiff"), cmp = tmp_path("cmp"), d = tmp_path("ddiff");
    make_file(s, 2 * kMiB, {{0, 2 * kMiB}}, 5);
    make_file(cmp, 4 * kMiB, {{0, 2 * kMiB}, {3 * kMiB, 4096}}, 5);
    {
        int fd = open(cmp.c_str(), O_RDWR);
        uint8_t x = 0;
        ck_assert_int_eq(pwrite(fd, &x, 1, 700000), 1);   // one differing sector
        close(fd);
    }
    make_file(d, 4 * kMiB, {}, 0, 0x5a);
    BlockBackend *sb = e.open_raw(s, kPermConsistentRead), *cb = e.open_raw(cmp, kPermConsistentRead),
                 *db = e.open_raw(d);
    CopySource src = src_of(sb, "sdiff");
    src.length = 4 * kMiB;
    CopyOptions o;
    o.diff_against = cb;
    o.sparse_size = 0;
    auto r = copy_sync({src}, db, o);
    ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
    flush(db);
    std::vector<uint8_t> got = file_bytes(d), sv = file_bytes(s);
    // The differing sector [699904, 700416) comes from the source.
    for (int64_t i = 699904; i < 700416; i++) ck_assert_int_eq(got[static_cast<size_t>(i)], sv[static_cast<size_t>(i)]);
    ck_assert_int_eq(got[699903], 0x5a);
    ck_assert_int_eq(got[700416], 0x5a);
    // The comparison image's data at 3 MiB differs from the (zero) source.
    for (int64_t i = 3 * kMiB; i < 3 * kMiB + 4096; i++) ck_assert_int_eq(got[static_cast<size_t>(i)], 0);
    ck_assert_int_eq(got[static_cast<size_t>(3 * kMiB + 4096)], 0x5a);
    ck_assert_int_eq(r.value().bytes_written, 512 + 4096);
}
END_TEST

// Workers spread over iothreads copy the same bytes.
START_TEST(test_copy_threads)
{
    Env e;
    const std::string s = tmp_path("st"), d = tmp_path("dt");
    make_file(s, 12 * kMiB, {{0, 3 * kMiB}, {7 * kMiB, 5 * kMiB}}, 9);
    make_file(d, 12 * kMiB, {});
    BlockBackend *sb = e.open_raw(s, kPermConsistentRead), *db = e.open_raw(d);
    auto t1 = IoThread::create("t1"), t2 = IoThread::create("t2");
    ck_assert(t1.ok() && t2.ok());
    for (bool ooo : {false, true}) {
        CopyOptions o;
        o.dest_is_zero = false;
        o.out_of_order = ooo;
        o.chunk_size = 128 * 1024;
        o.contexts = {t1.value()->ctx(), t2.value()->ctx()};
        auto r = copy_sync({src_of(sb, "st")}, db, o);
        ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
        flush(db);
        ck_assert(file_bytes(s) == file_bytes(d));
    }
}
END_TEST

// A read error stops the copy with a message naming the offset and file.
START_TEST(test_copy_read_error)
{
    Env e;
    const std::string s = tmp_path("se"), d = tmp_path("de");
    make_file(s, 8 * kMiB, {{0, 8 * kMiB}});
    make_file(d, 8 * kMiB, {});
    BlockBackend *sb = e.open(blkdebug_over(raw_over(file_opts(s)), "read", (5 * kMiB) / 512),
                              kPermConsistentRead);
    BlockBackend *db = e.open_raw(d);
    CopyOptions o;
    auto r = copy_sync({src_of(sb, "bad.img")}, db, o);
    ck_assert(!r.ok());
    ck_assert_int_eq(r.err(), EIO);
    ck_assert_str_eq(r.msg().c_str(), "error while reading at byte 4194304 of 'bad.img': Input/output error");
}
END_TEST

// A write error likewise.
START_TEST(test_copy_write_error)
{
    Env e;
    const std::string s = tmp_path("sw"), d = tmp_path("dw");
    make_file(s, 4 * kMiB, {{0, 4 * kMiB}});
    make_file(d, 4 * kMiB, {});
    BlockBackend *sb = e.open_raw(s, kPermConsistentRead);
    BlockBackend *db = e.open(blkdebug_over(raw_over(file_opts(d)), "write", (3 * kMiB) / 512));
    for (int workers : {1, 8}) {
        CopyOptions o;
        o.max_workers = workers;
        auto r = copy_sync({src_of(sb, "sw")}, db, o);
        ck_assert(!r.ok());
        ck_assert_int_eq(r.err(), EIO);
        // Named by the destination's file name.
        const std::string want = "error while writing at byte 2097152 of '" + d + "': Input/output error";
        ck_assert_str_eq(r.msg().c_str(), want.c_str());
    }
}
END_TEST

// Bad options and a short destination are refused before any I/O.
START_TEST(test_copy_options)
{
    Env e;
    const std::string s = tmp_path("so"), d = tmp_path("do");
    make_file(s, kMiB, {{0, kMiB}});
    make_file(d, kMiB / 2, {});
    BlockBackend *sb = e.open_raw(s, kPermConsistentRead), *db = e.open_raw(d);
    CopyOptions o;
    o.max_workers = 0;
    ck_assert_int_eq(copy_sync({src_of(sb, "so")}, db, o).err(), EINVAL);
    o.max_workers = kCopyMaxWorkers + 1;
    ck_assert_int_eq(copy_sync({src_of(sb, "so")}, db, o).err(), EINVAL);
    o.max_workers = 8;
    o.sparse_size = 1000;
    ck_assert_int_eq(copy_sync({src_of(sb, "so")}, db, o).err(), EINVAL);
    o.sparse_size = 4096;
    auto r = copy_sync({src_of(sb, "so")}, db, o);
    ck_assert(!r.ok());
    ck_assert_int_eq(r.err(), EINVAL);
    ck_assert(file_bytes(d) == std::vector<uint8_t>(kMiB / 2, 0));
}
END_TEST

// The jobs' hooks: before_chunk sees each chunk's data bytes and stops
// the copy with its errno; on_error retries or skips a chunk; one worker
// runs in the caller's coroutine.
START_TEST(test_copy_hooks)
{
    Env e;
    const std::string s = tmp_path("sh"), d = tmp_path("dh");
    make_file(s, 8 * kMiB, {{0, 8 * kMiB}}, 3);
    make_file(d, 8 * kMiB, {});
    BlockBackend *sb = e.open_raw(s, kPermConsistentRead), *db = e.open_raw(d);
    const std::vector<uint8_t> want = file_bytes(s);

    // Cancelled before the third chunk: two chunks copied.
    CopyOptions o;
    o.max_workers = 1;
    o.chunk_size = kMiB;
    int calls = 0;
    int64_t data = 0;
    Coroutine *caller = nullptr;
    bool same_co = true;
    o.before_chunk = [&](int64_t n) {
        if (calls == 0) caller = coroutine_self();
        same_co = same_co && coroutine_self() == caller;
        data += n;
        return ++calls == 3 ? -ECANCELED : 0;
    };
    auto r = run_in_coroutine([&] {
        Coroutine *me = coroutine_self();
        auto res = co_copy({src_of(sb, "sh")}, db, o);
        same_co = same_co && me == caller;
        return res;
    });
    ck_assert(!r.ok());
    ck_assert_int_eq(r.err(), ECANCELED);
    ck_assert(same_co);
    ck_assert_int_eq(data, 3 * kMiB);
    flush(db);
    std::vector<uint8_t> got = file_bytes(d);
    ck_assert(std::equal(want.begin(), want.begin() + 2 * kMiB, got.begin()));
    ck_assert(std::all_of(got.begin() + 2 * kMiB, got.end(), [](uint8_t b) { return b == 0; }));

    // A write error once, retried: the copy completes.
    const std::string d2 = tmp_path("dh2");
    make_file(d2, 8 * kMiB, {});
    BlockBackend *db2 = e.open(blkdebug_over(raw_over(file_opts(d2)), "write", (5 * kMiB) / 512, true));
    CopyOptions o2;
    o2.max_workers = 1;
    o2.chunk_size = kMiB;
    std::vector<CopyIoError> errs;
    int retries = 0;
    o2.before_chunk = [&](int64_t n) {
        if (n == 0 && !errs.empty()) retries++;
        return 0;
    };
    o2.on_error = [&](const CopyIoError &ce) {
        errs.push_back(ce);
        return CopyErrorAction::kRetry;
    };
    ck_assert(copy_sync({src_of(sb, "sh")}, db2, o2).ok());
    ck_assert_int_eq(errs.size(), 1);
    ck_assert(!errs[0].is_read);
    ck_assert_int_eq(errs[0].err, EIO);
    ck_assert_int_eq(errs[0].offset, 5 * kMiB);
    const std::string want_msg = "error while writing at byte 5242880 of '" + d2 + "': Input/output error";
    ck_assert_str_eq(errs[0].msg.c_str(), want_msg.c_str());
    ck_assert_int_eq(retries, 1);
    flush(db2);
    ck_assert(file_bytes(d2) == want);

    // A read error that persists, skipped: that chunk stays as it was.
    const std::string d3 = tmp_path("dh3");
    make_file(d3, 8 * kMiB, {});
    BlockBackend *sb3 = e.open(blkdebug_over(raw_over(file_opts(s)), "read", (6 * kMiB) / 512), kPermConsistentRead);
    BlockBackend *db3 = e.open_raw(d3);
    CopyOptions o3;
    o3.max_workers = 1;
    o3.chunk_size = kMiB;
    int skipped = 0;
    o3.on_error = [&](const CopyIoError &ce) {
        ck_assert(ce.is_read);
        skipped++;
        return CopyErrorAction::kSkip;
    };
    CopyProgress last;
    o3.progress = [&](const CopyProgress &p) { last = p; };
    ck_assert(copy_sync({src_of(sb3, "sh")}, db3, o3).ok());
    ck_assert_int_eq(skipped, 1);
    ck_assert_int_eq(last.done, 8 * kMiB);
    flush(db3);
    got = file_bytes(d3);
    ck_assert(std::equal(want.begin(), want.begin() + 6 * kMiB, got.begin()));
    ck_assert(std::all_of(got.begin() + 6 * kMiB, got.begin() + 7 * kMiB, [](uint8_t b) { return b == 0; }));
    ck_assert(std::equal(want.begin() + 7 * kMiB, want.end(), got.begin() + 7 * kMiB));
}
END_TEST

// read_only: the data is read, nothing is written (no destination).
START_TEST(test_copy_read_only)
{
    Env e;
    const std::string s = tmp_path("sr");
    make_file(s, 4 * kMiB, {{kMiB, kMiB}});
    BlockBackend *sb = e.open_raw(s, kPermConsistentRead);
    CopyOptions o;
    o.read_only = true;
    o.max_workers = 1;
    auto r = copy_sync({src_of(sb, "sr")}, nullptr, o);
    ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
    ck_assert_int_eq(r.value().bytes_written, 0);
    ck_assert_int_eq(r.value().bytes_zeroed, 0);
    ck_assert_int_ge(r.value().bytes_read, kMiB);
    o.read_only = false;
    ck_assert_int_eq(copy_sync({src_of(sb, "sr")}, nullptr, o).err(), EINVAL);
}
END_TEST

START_TEST(test_compare_sectors)
{
    std::vector<uint8_t> a(4096, 1), b(4096, 1);
    bool same;
    ck_assert_int_eq(compare_sectors(a.data(), b.data(), 4096, &same), 4096);
    ck_assert(same);
    b[1500] = 2;
    ck_assert_int_eq(compare_sectors(a.data(), b.data(), 4096, &same), 1024);
    ck_assert(same);
    ck_assert_int_eq(compare_sectors(a.data() + 1024, b.data() + 1024, 3072, &same), 512);
    ck_assert(!same);
    ck_assert_int_eq(compare_sectors(a.data(), b.data(), 100, &same), 100);
    ck_assert(same);
}
END_TEST

Suite *copy_suite()
{
    Suite *s = suite_create("copy");
    TCase *tc = tcase_create("copy");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_copy_sparse);
    tcase_add_test(tc, test_copy_no_sparse);
    tcase_add_test(tc, test_copy_concat_modes);
    tcase_add_test(tc, test_copy_dirty_destination);
    tcase_add_test(tc, test_copy_diff_against);
    tcase_add_test(tc, test_copy_threads);
    tcase_add_test(tc, test_copy_read_error);
    tcase_add_test(tc, test_copy_write_error);
    tcase_add_test(tc, test_copy_options);
    tcase_add_test(tc, test_copy_hooks);
    tcase_add_test(tc, test_copy_read_only);
    tcase_add_test(tc, test_compare_sectors);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(copy_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

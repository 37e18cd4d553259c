// Unit tests for util/iov.h: IOVector and the iovec helpers.
#include <sys/uio.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "util/iov.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {

// n separate (never adjacent) buffers of the given sizes inside one arena,
// so a flat model of the bytes is easy to keep: model[i] <-> byte i of v.
struct Scattered {
    std::vector<uint8_t> arena;
    IOVector v;
    explicit Scattered(const std::vector<size_t> &sizes)
    {
        size_t total = 0;
        for (size_t s : sizes) total += s + 16;
        arena.assign(total, 0);
        size_t pos = 8;
        for (size_t s : sizes) {
            v.add(arena.data() + pos, s);
            pos += s + 16;   // a gap: no merging
        }
    }
    // The bytes of v, in order.
    std::vector<uint8_t> flat() const
    {
        std::vector<uint8_t> out;
        for (int i = 0; i < v.niov(); i++) {
            auto *p = static_cast<const uint8_t *>(v.iov()[i].iov_base);
            out.insert(out.end(), p, p + v.iov()[i].iov_len);
        }
        return out;
    }
};

bool naive_is_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i]) return false;
    return true;
}

} // namespace

// ---------------------------------------------------------------- add

START_TEST(test_add_merges_contiguous)
{
    uint8_t buf[256];
    IOVector v;
    ck_assert_int_eq(v.niov(), 0);
    ck_assert_uint_eq(v.size(), 0);
    ck_assert(v.is_zero());   // empty
    v.add(buf, 10);
    v.add(buf + 10, 20);   // contiguous: merged
    ck_assert_int_eq(v.niov(), 1);
    ck_assert_uint_eq(v.size(), 30);
    ck_assert_ptr_eq(v.iov()[0].iov_base, buf);
    ck_assert_uint_eq(v.iov()[0].iov_len, 30);
    v.add(buf + 40, 10);   // gap: new entry
    v.add(buf + 50, 0);    // empty: ignored
    v.add(buf + 100, 0);
    ck_assert_int_eq(v.niov(), 2);
    ck_assert_uint_eq(v.size(), 40);
    v.add(buf + 50, 5);    // contiguous with the last entry only
    ck_assert_int_eq(v.niov(), 2);
    ck_assert_uint_eq(v.iov()[1].iov_len, 15);
    v.add(buf, 5);         // before the first: not merged backwards
    ck_assert_int_eq(v.niov(), 3);
    ck_assert_uint_eq(v.size(), 50);
    ck_assert_uint_eq(iov_size(v.iov(), v.niov()), 50);
    v.reset();
    ck_assert_int_eq(v.niov(), 0);
    ck_assert_uint_eq(v.size(), 0);
    IOVector one(buf, 7);
    ck_assert_int_eq(one.niov(), 1);
    ck_assert_uint_eq(one.size(), 7);
}
END_TEST

START_TEST(test_add_slice)
{
    uint8_t arena[100];   // three buffers with gaps between them
    uint8_t *a = arena, *b = arena + 20, *c = arena + 50;
    IOVector src;
    src.add(a, 10);
    src.add(b, 20);
    src.add(c, 30);
    ck_assert_int_eq(src.niov(), 3);

    IOVector s;
    s.add_slice(src, 5, 40);   // a[5..10) + b[0..20) + c[0..15)
    ck_assert_int_eq(s.niov(), 3);
    ck_assert_uint_eq(s.size(), 40);
    ck_assert_ptr_eq(s.iov()[0].iov_base, a + 5);
    ck_assert_uint_eq(s.iov()[0].iov_len, 5);
    ck_assert_ptr_eq(s.iov()[1].iov_base, b);
    ck_assert_uint_eq(s.iov()[1].iov_len, 20);
    ck_assert_ptr_eq(s.iov()[2].iov_base, c);
    ck_assert_uint_eq(s.iov()[2].iov_len, 15);

    // Starting exactly on an entry boundary, inside one entry.
    IOVector t;
    t.add_slice(src, 10, 5);
    ck_assert_int_eq(t.niov(), 1);
    ck_assert_ptr_eq(t.iov()[0].iov_base, b);
    ck_assert_uint_eq(t.iov()[0].iov_len, 5);

    // Past the end: truncated to what exists; zero length adds nothing.
    IOVector u;
    u.add_slice(src, 55, 100);
    ck_assert_uint_eq(u.size(), 5);
    ck_assert_ptr_eq(u.iov()[0].iov_base, c + 25);
    u.add_slice(src, 0, 0);
    u.add_slice(src, 1000, 10);
    ck_assert_uint_eq(u.size(), 5);

    // Slices of one buffer merge back into one entry; concat appends all.
    uint8_t big[100];
    IOVector whole(big, sizeof(big)), m;
    m.add_slice(whole, 0, 30);
    m.add_slice(whole, 30, 70);
    ck_assert_int_eq(m.niov(), 1);
    ck_assert_uint_eq(m.size(), 100);
    IOVector cat;
    cat.concat(src);
    cat.concat(m);
    ck_assert_int_eq(cat.niov(), 4);
    ck_assert_uint_eq(cat.size(), 160);

    // From a raw iovec array.
    struct iovec raw[2] = {{a, 10}, {c, 30}};
    IOVector r;
    r.add_slice(raw, 2, 8, 4);
    ck_assert_int_eq(r.niov(), 2);
    ck_assert_ptr_eq(r.iov()[0].iov_base, a + 8);
    ck_assert_ptr_eq(r.iov()[1].iov_base, c);
    ck_assert_uint_eq(r.iov()[1].iov_len, 2);
}
END_TEST

// ---------------------------------------------------------------- copy helpers

// to_buf / from_buf / memset / is_zero at many offsets across entry
// boundaries, checked against a flat model.
START_TEST(test_buf_ops_model)
{
    std::mt19937 rng(42);
    for (int round = 0; round < 40; round++) {
        std::vector<size_t> sizes;
        int n = 1 + static_cast<int>(rng() % 9);
        for (int i = 0; i < n; i++) sizes.push_back(1 + rng() % 40);
        Scattered s(sizes);
        size_t total = s.v.size();
        std::vector<uint8_t> model(total, 0);
        for (int op = 0; op < 60; op++) {
            size_t off = rng() % (total + 4);            // sometimes past the end
            size_t len = rng() % (total + 4);
            size_t avail = off < total ? std::min(len, total - off) : 0;
            std::vector<uint8_t> buf(len);
            switch (rng() % 4) {
            case 0: {   // from_buf
                for (auto &c : buf) c = static_cast<uint8_t>(rng() | 1);
                ck_assert_uint_eq(s.v.from_buf(off, buf.data(), len), avail);
                if (avail) memcpy(&model[off], buf.data(), avail);
                break;
            }
            case 1: {   // to_buf
                std::fill(buf.begin(), buf.end(), 0xee);
                ck_assert_uint_eq(s.v.to_buf(off, buf.data(), len), avail);
                if (avail) ck_assert(memcmp(buf.data(), &model[off], avail) == 0);
                for (size_t i = avail; i < len; i++) ck_assert_uint_eq(buf[i], 0xee);   // untouched
                break;
            }
            case 2: {   // memset
                int c = (rng() % 3 == 0) ? 0 : static_cast<int>(rng() % 256);
                ck_assert_uint_eq(s.v.memset(off, c, len), avail);
                if (avail) memset(&model[off], c, avail);
                break;
            }
            default: {  // is_zero
                bool want = avail == 0 || naive_is_zero(&model[off], avail);
                ck_assert_msg(s.v.is_zero(off, len) == want, "round %d op %d: is_zero(%zu, %zu)", round, op, off, len);
                break;
            }
            }
            ck_assert(s.flat() == model);
        }
        ck_assert(s.v.is_zero() == naive_is_zero(model.data(), total));
        // The gaps between entries were never written.
        size_t pos = 0;
        for (size_t sz : sizes) {
            for (size_t i = 0; i < 8; i++) ck_assert_uint_eq(s.arena[pos + i], 0);
            pos += 8 + sz;
            for (size_t i = 0; i < 8; i++) ck_assert_uint_eq(s.arena[pos + i], 0);
            pos += 8;
        }
    }
}
END_TEST

START_TEST(test_is_zero_across_entries)
{
    Scattered s({5, 7, 3, 9});
    ck_assert(s.v.is_zero());
    // A non-zero byte in entry 2 (offset 13): ranges around it.
    static_cast<uint8_t *>(s.v.iov()[2].iov_base)[1] = 1;
    ck_assert(!s.v.is_zero());
    ck_assert(s.v.is_zero(0, 13));
    ck_assert(!s.v.is_zero(0, 14));
    ck_assert(!s.v.is_zero(13, 1));
    ck_assert(s.v.is_zero(14, 10));
    ck_assert(!s.v.is_zero(10, 5));
    ck_assert(s.v.is_zero(14, 1000));   // clamped to the end
    ck_assert(iov_is_zero(s.v.iov(), s.v.niov(), 0, 12));
}
END_TEST

// ---------------------------------------------------------------- growth, copy, move

START_TEST(test_many_entries)
{
    constexpr int kN = 100;
    static_assert(kN > IOVector::kInline);
    std::vector<size_t> sizes;
    for (int i = 0; i < kN; i++) sizes.push_back(1 + i % 13);
    Scattered s(sizes);
    ck_assert_int_eq(s.v.niov(), kN);
    size_t total = 0;
    for (int i = 0; i < kN; i++) {
        ck_assert_uint_eq(s.v.iov()[i].iov_len, sizes[i]);
        total += sizes[i];
    }
    ck_assert_uint_eq(s.v.size(), total);
    // Data round-trips through the heap-grown vector.
    std::vector<uint8_t> in(total), out(total);
    for (size_t i = 0; i < total; i++) in[i] = static_cast<uint8_t>(i * 7 + 1);
    ck_assert_uint_eq(s.v.from_buf(0, in.data(), total), total);
    ck_assert_uint_eq(s.v.to_buf(0, out.data(), total), total);
    ck_assert(in == out);
    ck_assert(s.flat() == in);
    // Growth exactly at the inline limit keeps the first entries.
    uint8_t b[64];
    IOVector v;
    for (int i = 0; i <= IOVector::kInline; i++) v.add(b + 2 * i * 4, 4);
    ck_assert_int_eq(v.niov(), IOVector::kInline + 1);
    for (int i = 0; i <= IOVector::kInline; i++) ck_assert_ptr_eq(v.iov()[i].iov_base, b + 2 * i * 4);
}
END_TEST

START_TEST(test_copy_move)
{
    std::vector<size_t> sizes(10, 4);
    Scattered s(sizes);           // heap-grown
    IOVector copy(s.v);
    ck_assert_int_eq(copy.niov(), 10);
    ck_assert_uint_eq(copy.size(), 40);
    ck_assert(copy.iov() != s.v.iov());   // its own array
    for (int i = 0; i < 10; i++) ck_assert_ptr_eq(copy.iov()[i].iov_base, s.v.iov()[i].iov_base);
    uint8_t extra[8];
    copy.add(extra, 8);
    ck_assert_int_eq(copy.niov(), 11);
    ck_assert_int_eq(s.v.niov(), 10);   // the original is independent

    // Copy-assign over a bigger vector, and self-assign.
    uint8_t small[4];
    IOVector inl(small, 4);
    copy = inl;
    ck_assert_int_eq(copy.niov(), 1);
    ck_assert_uint_eq(copy.size(), 4);
    IOVector &alias = copy;
    copy = alias;
    ck_assert_int_eq(copy.niov(), 1);
    ck_assert_ptr_eq(copy.iov()[0].iov_base, small);

    // Move of a heap-grown vector steals the array.
    const struct iovec *arr = s.v.iov();
    IOVector moved(std::move(s.v));
    ck_assert_ptr_eq(moved.iov(), arr);
    ck_assert_int_eq(moved.niov(), 10);
    ck_assert_uint_eq(moved.size(), 40);
    ck_assert_int_eq(s.v.niov(), 0);   // the moved-from vector is empty
    ck_assert_uint_eq(s.v.size(), 0);
    s.v.add(extra, 8);                 // and usable
    ck_assert_int_eq(s.v.niov(), 1);

    // Move of an inline vector copies the entries.
    IOVector in2;
    in2.add(small, 2);
    in2.add(extra, 3);
    IOVector m2;
    m2.add(extra, 1);
    m2 = std::move(in2);
    ck_assert_int_eq(m2.niov(), 2);
    ck_assert_ptr_eq(m2.iov()[1].iov_base, extra);
    ck_assert_uint_eq(m2.size(), 5);
    // Move-assign over a heap-grown vector with an inline one.
    IOVector m3 = std::move(moved);
    IOVector in3(small, 4);
    m3 = std::move(in3);
    ck_assert_int_eq(m3.niov(), 1);
    ck_assert_ptr_eq(m3.iov()[0].iov_base, small);
    for (int i = 0; i < 20; i++) m3.add(extra + (i % 2 ? 0 : 4), 1);   // can grow again
    ck_assert_uint_eq(m3.size(), 24);
}
END_TEST

// ---------------------------------------------------------------- buffer_is_zero

START_TEST(test_buffer_is_zero_unaligned)
{
    // Guard bytes around each buffer are non-zero and must be ignored.
    std::vector<uint8_t> mem(4096 + 128);
    const size_t lens[] = {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 256, 1000, 4095, 4096};
    for (size_t start = 0; start < 16; start++) {
        for (size_t len : lens) {
            std::fill(mem.begin(), mem.end(), 0xff);
            uint8_t *p = mem.data() + 32 + start;
            memset(p, 0, len);
            ck_assert_msg(buffer_is_zero(p, len), "start %zu len %zu", start, len);
            // A single non-zero byte anywhere is found (every position for short
            // buffers; a spread of positions for long ones).
            size_t step = len <= 300 ? 1 : 37;
            for (size_t i = 0; i < len; i += step) {
                p[i] = static_cast<uint8_t>(1u << (i % 8));
                bool got = buffer_is_zero(p, len);
                ck_assert_msg(got == naive_is_zero(p, len) && !got, "start %zu len %zu byte %zu", start, len, i);
                p[i] = 0;
            }
            if (len) {
                p[len - 1] = 0x80;   // the very last byte
                ck_assert(!buffer_is_zero(p, len));
                ck_assert(buffer_is_zero(p, len - 1));
            }
        }
    }
}
END_TEST

START_TEST(test_buffer_is_zero_random)
{
    std::mt19937 rng(7);
    std::vector<uint8_t> mem(2048);
    for (int round = 0; round < 3000; round++) {
        size_t start = rng() % 64, len = rng() % (mem.size() - 64);
        std::fill(mem.begin(), mem.end(), 0);
        int nz = static_cast<int>(rng() % 3);   // 0, 1 or 2 non-zero bytes anywhere in mem
        for (int k = 0; k < nz; k++) mem[rng() % mem.size()] = static_cast<uint8_t>(1 + rng() % 255);
        uint8_t *p = mem.data() + start;
        ck_assert(buffer_is_zero(p, len) == naive_is_zero(p, len));
    }
}
END_TEST

START_TEST(test_aligned_alloc_buf)
{
    for (size_t align : {1, 8, 512, 4096}) {
        AlignedBuf b = aligned_alloc_buf(align, 10000);
        ck_assert_ptr_nonnull(b.get());
        ck_assert_uint_eq(reinterpret_cast<uintptr_t>(b.get()) % align, 0);
        memset(b.get(), 0x5a, 10000);   // usable over its whole length
    }
    AlignedBuf z = aligned_alloc_buf(4096, 0);
    ck_assert_ptr_nonnull(z.get());
}
END_TEST

// ---------------------------------------------------------------- suite

static Suite *iov_suite()
{
    Suite *s = suite_create("iov");
    TCase *tc = tcase_create("iovector");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_add_merges_contiguous);
    tcase_add_test(tc, test_add_slice);
    tcase_add_test(tc, test_buf_ops_model);
    tcase_add_test(tc, test_is_zero_across_entries);
    tcase_add_test(tc, test_many_entries);
    tcase_add_test(tc, test_copy_move);
    suite_add_tcase(s, tc);

    tc = tcase_create("buffer");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_buffer_is_zero_unaligned);
    tcase_add_test(tc, test_buffer_is_zero_random);
    tcase_add_test(tc, test_aligned_alloc_buf);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(iov_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

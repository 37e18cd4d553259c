// The conformance cases (docs/conformance.md explains each). Every case is a
// Check test whose loop index _i is the stack index; it runs in a forked
// child on a private copy of the stack's images (Env).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "tests/conformance/conformance.h"

using namespace conf;
using bg::kReqFua;
using bg::kReqMayUnmap;
using bg::kReqNoFallback;
using bg::kStatusAllocated;
using bg::kStatusEof;
using bg::kStatusZero;

namespace {

constexpr int64_t KiB = 1024, MiB = 1024 * 1024;

#define EXPECT_RET(call, want)                                                                                    \
    do {                                                                                                          \
        int r_ = (call);                                                                                          \
        int w_ = (want);                                                                                          \
        REQUIRE(r_ == w_, "%s returned %d (%s), expected %d (%s)", #call, r_, r_ < 0 ? strerror(-r_) : "ok", \
                      w_, w_ < 0 ? strerror(-w_) : "ok");                                                         \
    } while (0)

std::mt19937_64 rng_for(int stack, int salt) { return std::mt19937_64(static_cast<uint64_t>(stack) * 7919 + salt); }

int64_t rnd(std::mt19937_64 &g, int64_t n) { return n <= 0 ? 0 : static_cast<int64_t>(g() % static_cast<uint64_t>(n)); }

bool all_zero(const uint8_t *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (p[i]) return false;
    }
    return true;
}

std::vector<uint8_t> read_actual(Env &e, int64_t off, int64_t len)
{
    std::vector<uint8_t> b(len, 0xee);
    int r = e.rd(off, len, b.data());
    REQUIRE(r == 0, "read [%ld, +%ld): %s", (long)off, (long)len, strerror(-r));
    return b;
}

// After a discard (or a failed operation) of [doff, doff+dlen) inside
// [off, off+len): bytes outside must be the model's, bytes inside either
// the model's (old data) or zero, per unit bytes (1: per byte). Then the
// model takes what was read.
void check_old_or_zero(Env &e, int64_t off, int64_t len, int64_t doff, int64_t dlen, int64_t unitb, const char *what)
{
    std::vector<uint8_t> got = read_actual(e, off, len), old = e.m.get(off, len);
    for (int64_t i = 0; i < len; i++) {
        int64_t o = off + i;
        if (o < doff || o >= doff + dlen) {
            REQUIRE(got[i] == old[i], "%s: byte at %ld outside the range changed (0x%02x, expected 0x%02x)",
                          what, (long)o, got[i], old[i]);
        }
    }
    int64_t s = std::max(doff, off), end = std::min(doff + dlen, off + len);
    for (int64_t u = s; u < end;) {
        int64_t ue = std::min(end, (u / unitb + 1) * unitb);
        const uint8_t *g = got.data() + (u - off), *o = old.data() + (u - off);
        bool is_old = memcmp(g, o, ue - u) == 0, is_zero = all_zero(g, ue - u);
        REQUIRE(is_old || is_zero, "%s: bytes [%ld, %ld) are neither the old data nor zeros", what, (long)u,
                      (long)ue);
        u = ue;
    }
    e.m.write(off, len, got.data());
}

// Walks block status over [off, off+len); calls fn(offset, pnum, flags).
template <typename F>
void walk_status(Env &e, int64_t off, int64_t len, bool want_zero, F &&fn)
{
    int64_t pos = off, end = off + len;
    int guard = 0;
    while (pos < end) {
        int64_t pnum = 0;
        int r = e.bs(pos, end - pos, &pnum, want_zero);
        REQUIRE(r >= 0, "block status at %ld: %s", (long)pos, strerror(-r));
        REQUIRE(pnum > 0 && pnum <= end - pos, "block status at %ld: pnum %ld out of range (%ld left)",
                      (long)pos, (long)pnum, (long)(end - pos));
        fn(pos, pnum, r);
        pos += pnum;
        REQUIRE(++guard < 1000000, "block status walk does not progress");
    }
}

// Every extent claimed ZERO reads as zeros (checked on the actual data and,
// where the model is the oracle, on the model), sampling big extents.
void check_zero_claims(Env &e, int64_t off, int64_t len, bool want_zero, bool model_too)
{
    walk_status(e, off, len, want_zero, [&](int64_t pos, int64_t pnum, int flags) {
        if (!(flags & kStatusZero)) return;
        const int64_t kSample = 256 * KiB;
        std::vector<std::pair<int64_t, int64_t>> parts;
        if (pnum <= 2 * kSample) parts.push_back({pos, pnum});
        else parts = {{pos, kSample}, {pos + pnum - kSample, kSample}, {pos + pnum / 2 / 512 * 512, 4096}};
        for (auto [p, n] : parts) {
            std::vector<uint8_t> got = read_actual(e, p, n);
            REQUIRE(all_zero(got.data(), n), "block status says ZERO for [%ld, +%ld) but it reads data",
                          (long)pos, (long)pnum);
            if (model_too) {
                std::vector<uint8_t> want = e.m.get(p, n);
                REQUIRE(all_zero(want.data(), n),
                              "block status says ZERO for [%ld, +%ld) but qemu-img's view has data there",
                              (long)pos, (long)pnum);
            }
        }
    });
}

// ---- concurrency helpers ----
struct Req {
    int64_t off, len;
    uint32_t seed;
    bool zero;
    bool unmap;
    uint8_t byte(int64_t o) const { return zero ? 0 : pat(seed, o); }
    bool covers(int64_t o) const { return o >= off && o < off + len; }
};

std::function<void()> req_fn(Env &e, const Req &q)
{
    return [&e, q] {
        int r;
        if (q.zero) {
            r = e.blk->co_pwrite_zeroes(q.off, q.len, q.unmap ? kReqMayUnmap : 0);
        } else {
            std::vector<uint8_t> b = pattern(q.seed, q.off, q.len);
            r = e.blk->co_pwrite(q.off, q.len, b.data());
        }
        REQUIRE(r == 0, "concurrent %s [%ld, +%ld): %s", q.zero ? "write-zeroes" : "write", (long)q.off,
                      (long)q.len, strerror(-r));
    };
}

// Sector-aligned requests: every sector equals exactly one covering request
// (or the old data if none covers it).
void check_sectors_whole(Env &e, int64_t off, int64_t len, const std::vector<Req> &reqs)
{
    std::vector<uint8_t> got = read_actual(e, off, len), old = e.m.get(off, len);
    if (e.has(bg::kCapDropsWrites)) {
        REQUIRE(got == old, "a device that drops writes returned data");
        return;
    }
    for (int64_t s = off; s < off + len; s += 512) {
        const uint8_t *g = got.data() + (s - off);
        bool ok = false, covered = false;
        for (const Req &q : reqs) {
            if (!q.covers(s)) continue;
            covered = true;
            bool eq = true;
            for (int64_t i = 0; i < 512 && eq; i++) eq = g[i] == q.byte(s + i);
            if (eq) {
                ok = true;
                break;
            }
        }
        if (!covered) ok = memcmp(g, old.data() + (s - off), 512) == 0;
        REQUIRE(ok, "sector at %ld is not entirely from one request (%s)", (long)s,
                      covered ? "mixed or foreign data" : "no request covers it, yet it changed");
    }
    e.m.write(off, len, got.data());
}

// Unaligned requests: every byte comes from a request covering it (or is
// old); where two requests overlap within a sector and no third covers the
// bytes, those bytes are all from one of the two.
void check_sectors_pairs(Env &e, int64_t off, int64_t len, const std::vector<Req> &reqs)
{
    std::vector<uint8_t> got = read_actual(e, off, len), old = e.m.get(off, len);
    if (e.has(bg::kCapDropsWrites)) {
        REQUIRE(got == old, "a device that drops writes returned data");
        return;
    }
    for (int64_t i = 0; i < len; i++) {
        int64_t o = off + i;
        bool covered = false, ok = false;
        for (const Req &q : reqs) {
            if (!q.covers(o)) continue;
            covered = true;
            if (got[i] == q.byte(o)) ok = true;
        }
        if (!covered) ok = got[i] == old[i];
        REQUIRE(ok, "byte at %ld is from no request covering it", (long)o);
    }
    for (int64_t s = off / 512 * 512; s < off + len; s += 512) {
        std::vector<const Req *> in;
        for (const Req &q : reqs) {
            if (q.off < s + 512 && q.off + q.len > s) in.push_back(&q);
        }
        for (size_t a = 0; a < in.size(); a++) {
            for (size_t b = a + 1; b < in.size(); b++) {
                int64_t lo = std::max({in[a]->off, in[b]->off, s, off});
                int64_t hi = std::min({in[a]->off + in[a]->len, in[b]->off + in[b]->len, s + 512, off + len});
                bool all_a = true, all_b = true, any = false;
                for (int64_t o = lo; o < hi; o++) {
                    bool third = false;
                    for (size_t c = 0; c < in.size() && !third; c++) third = c != a && c != b && in[c]->covers(o);
                    if (third) continue;
                    any = true;
                    uint8_t g = got[o - off];
                    if (g != in[a]->byte(o)) all_a = false;
                    if (g != in[b]->byte(o)) all_b = false;
                }
                REQUIRE(!any || all_a || all_b,
                              "sector at %ld mixes two overlapping requests ([%ld, +%ld) and [%ld, +%ld))", (long)s,
                              (long)in[a]->off, (long)in[a]->len, (long)in[b]->off, (long)in[b]->len);
            }
        }
    }
    e.m.write(off, len, got.data());
}

// ---- applicability ----
const char *app_l2(const Stack &s)
{
    return s.geo.l2 < s.size ? nullptr : "geometry: no L2-table boundary inside the device";
}
const char *app_refblock(const Stack &s)
{
    return 2 * s.geo.refblock + 4 * s.geo.cluster <= 8 * MiB
               ? nullptr
               : "geometry: a refcount block covers more than 4 MiB of host file";
}
const char *app_check(const Stack &s)
{
    return s.has_check ? nullptr : "qemu-img has no check for this stack's formats";
}
const char *app_readonly(const Stack &s)
{
    return s.readonly_open ? nullptr : "the stack cannot be opened read-only";
}
const char *app_events(const Stack &s)
{
    return s.events ? nullptr : "no format driver above the image file with debug-events";
}
const char *app_events_refblock(const Stack &s)
{
    const char *w = app_events(s);
    return w ? w : app_refblock(s);
}
const char *app_events_data(const Stack &s)
{
    const char *w = app_events(s);
    if (w) return w;
    return s.data_apart ? "guest data in a separate data file (read_aio arms the image file's rule)" : nullptr;
}
const char *app_events_backing(const Stack &s)
{
    const char *w = app_events(s);
    if (w) return w;
    return s.has_backing ? nullptr : "the image has no backing file (no copy-on-write)";
}

// ---- fault rules ----
// Rules put on every leaf: armed by the event vmstate_load (which no driver
// of ours fires; the case fires it), each fails the first matching request
// on its leaf once; vmstate_save arms a rule that never matches, which
// disarms the others (QEMU's blkdebug: the first rule an event arms
// replaces the armed set).
json arm_rules(int err, const char *iotype, bool with_truncate, bool immediately = false)
{
    json r = json::array();
    json a = {{"event", "vmstate_load"}, {"errno", err}, {"once", true}, {"immediately", immediately}};
    if (iotype) a["iotype"] = iotype;
    r.push_back(a);
    if (with_truncate) r.push_back({{"event", "vmstate_load"}, {"iotype", "truncate"}, {"errno", err}, {"once", true}});
    r.push_back({{"event", "vmstate_save"},
                 {"iotype", "block-status"},
                 {"offset", static_cast<uint64_t>(1) << 62},
                 {"bytes", 1},
                 {"errno", 5}});
    return r;
}

void arm(Env &e) { e.event("vmstate_load"); }
void disarm(Env &e) { e.event("vmstate_save"); }

// The operation's own return value or, if it succeeded, the next flush's.
void expect_error_reaches(int r_op, Env &e, int err, const char *op)
{
    int r = r_op;
    if (r == 0) r = e.fl();
    REQUIRE(r == -err, "%s with an injected %s: got %d (%s) from the operation and its flush", op,
                  strerror(err), r, r < 0 ? strerror(-r) : "success");
}

void expect_check_clean(Env &e, bool leaks_ok)
{
    e.close();
    std::string out;
    int rc = e.qemu_check(&out);
    if (rc == 63) return;   // nothing in this stack has a check
    REQUIRE(rc == 0 || (leaks_ok && rc == 3), "qemu-img check after the case: exit %d: %s", rc, out.c_str());
}

// ================================================================ read

START_TEST(read_initial)
{
    Env e(_i);
    int64_t sz = e.size(), n = std::min<int64_t>(6 * MiB, sz);
    e.verify(0, n, "start of the device");
    e.verify(sz - std::min<int64_t>(MiB, sz), std::min<int64_t>(MiB, sz), "end of the device");
    int64_t mid = sz / 2 / 4096 * 4096;
    e.verify(mid, std::min<int64_t>(MiB, sz - mid), "middle of the device");
}
END_TEST

START_TEST(read_unaligned)
{
    Env e(_i);
    auto g = rng_for(_i, 1);
    int64_t sz = e.size(), near = std::min<int64_t>(8 * MiB, sz);
    for (int k = 0; k < 100; k++) {
        int64_t off = k % 2 ? rnd(g, near - 1) : rnd(g, sz - 1);
        int64_t len = 1 + rnd(g, std::min<int64_t>(70000, sz - off));
        e.verify(off, len, "unaligned read");
    }
}
END_TEST

START_TEST(read_iovec)
{
    Env e(_i);
    const size_t sizes[] = {1, 511, 4096, 3, 65536, 777, 100000};
    int64_t total = 0;
    for (size_t s : sizes) total += s;
    int64_t off = std::max<int64_t>(0, std::min(e.s.geo.cluster - 1000, e.size() - total));
    std::vector<std::vector<uint8_t>> bufs;
    bg::IOVector v;
    for (size_t s : sizes) bufs.emplace_back(s, 0xee);
    for (auto &b : bufs) v.add(b.data(), b.size());
    int r = bg::run_in_coroutine([&] { return e.blk->co_preadv(off, total, v); });
    ck_assert_int_eq(r, 0);
    std::vector<uint8_t> want = e.m.get(off, total), got;
    for (auto &b : bufs) got.insert(got.end(), b.begin(), b.end());
    REQUIRE(got == want, "scattered read differs from the expected data");
}
END_TEST

// ================================================================ rw

START_TEST(rw_aligned)
{
    Env e(_i);
    int64_t b = work_base(e, MiB, 64 * KiB);
    e.write_pat(b, 64 * KiB, 1);
    e.write_pat(b + 256 * KiB, 4 * KiB, 2);
    e.write_pat(0, 4 * KiB, 3);
    e.verify(b, MiB, "aligned writes");
    e.verify(0, 8 * KiB, "aligned write at 0");
}
END_TEST

START_TEST(rw_unaligned)
{
    Env e(_i);
    int64_t b = work_base(e, 256 * KiB, 64 * KiB);
    e.write_pat(b + 4097, 3000, 4);
    e.write_pat(b + 65535, 2, 5);
    e.write_pat(b + 100000, 12345, 6);
    e.write_pat(b + 131071, 65538, 7);
    e.verify(b, 256 * KiB, "unaligned writes");
}
END_TEST

START_TEST(rw_tiny)
{
    Env e(_i);
    int64_t b = work_base(e, 128 * KiB, 64 * KiB);
    const int64_t at[] = {0, 1, 511, 512, 513, 4095, 4096, 65535, 65536, 70001};
    uint32_t seed = 10;
    for (int64_t a : at) e.write_pat(b + a, 1, seed++);
    e.write_pat(b + 1000, 3, seed++);
    e.verify(b, 128 * KiB, "1-byte writes");
}
END_TEST

START_TEST(rw_cluster_cross)
{
    Env e(_i);
    int64_t c = e.s.geo.cluster, b = work_base(e, 4 * c, c);
    e.write_pat(b + c - 700, 1400, 20);
    e.write_pat(b + 2 * c - 1, 2, 21);
    e.write_pat(b + 3 * c - c / 2, c, 22);
    e.verify(b, 4 * c, "writes across cluster boundaries");
}
END_TEST

START_TEST(rw_cluster_whole)
{
    Env e(_i);
    int64_t c = e.s.geo.cluster, b = work_base(e, 4 * c, c);
    e.write_pat(b + c, c, 23);
    e.write_pat(b + 2 * c + c / 4, c / 2, 24);
    e.write_pat(b + c, c / 2, 25);
    e.verify(b, 4 * c, "whole and half clusters");
}
END_TEST

START_TEST(rw_l2_cross)
{
    Env e(_i);
    int64_t l = e.s.geo.l2, c = e.s.geo.cluster;
    e.write_pat(l - 3000, 6000, 30);
    e.write_pat(l - c, std::min(2 * c, e.size() - (l - c)), 31);
    e.write_pat(l + c + 5, 100, 32);
    if (2 * l < e.size()) e.write_pat(2 * l - 1, 2, 33);
    e.verify(l - c - 4096, std::min(3 * c + 8192, e.size() - (l - c - 4096)), "writes across an L2 boundary");
    if (2 * l < e.size()) e.verify(2 * l - 512, 1024, "second L2 boundary");
}
END_TEST

START_TEST(rw_refblock_cross)
{
    Env e(_i);
    int64_t c = e.s.geo.cluster, amount = 2 * e.s.geo.refblock + 4 * c;
    int64_t b = work_base(e, amount, c), chunk = std::max<int64_t>(c, 256 * KiB);
    uint32_t seed = 40;
    for (int64_t o = 0; o < amount; o += chunk) e.write_pat(b + o, std::min(chunk, amount - o), seed++);
    e.verify(b, amount, "data allocated across refcount blocks");
}
END_TEST

START_TEST(rw_device_end)
{
    Env e(_i);
    int64_t sz = e.size(), c = std::min(e.s.geo.cluster, sz / 4);
    e.write_pat(sz - 4096, 4096, 50);
    e.write_pat(sz - 1, 1, 51);
    e.write_pat(sz - c - 333, c, 52);
    e.write_pat(sz - 777, 777, 53);
    int64_t from = std::max<int64_t>(0, sz - 2 * c - 8192);
    e.verify(from, sz - from, "writes at the end of the device");
}
END_TEST

START_TEST(rw_iovec)
{
    Env e(_i);
    const size_t sizes[] = {3, 4093, 1, 65536, 511, 70000};
    int64_t total = 0;
    for (size_t s : sizes) total += s;
    int64_t c = e.s.geo.cluster, off = work_base(e, total + 2 * c, c) + c - 2000;
    std::vector<uint8_t> all = pattern(60, off, total);
    std::vector<std::vector<uint8_t>> bufs;
    size_t pos = 0;
    for (size_t s : sizes) {
        bufs.emplace_back(all.begin() + pos, all.begin() + pos + s);
        pos += s;
    }
    bg::IOVector v;
    for (auto &b : bufs) v.add(b.data(), b.size());
    int r = bg::run_in_coroutine([&] { return e.blk->co_pwritev(off, total, v); });
    ck_assert_int_eq(r, 0);
    e.m.write(off, total, all.data());
    e.verify(off - 4096, total + 8192, "scattered write");
}
END_TEST

START_TEST(rw_large)
{
    Env e(_i);
    int64_t len = 4 * MiB + 4321, b = work_base(e, len + 8192, 4096);
    e.write_pat(b + 1234, len, 61);
    e.verify(b, len + 8192, "4 MiB write");
}
END_TEST

START_TEST(rw_overwrite)
{
    Env e(_i);
    int64_t b = work_base(e, 256 * KiB, 64 * KiB);
    e.write_pat(b, 256 * KiB, 70);
    e.write_pat(b + 1000, 100 * KiB, 71);
    e.write_pat(b + 50000, 1, 72);
    e.write_pat(b, 512, 73);
    e.verify(b, 256 * KiB, "overwrites");
}
END_TEST

START_TEST(rw_random)
{
    Env e(_i);
    auto g = rng_for(_i, 2);
    int64_t sz = e.size(), region = std::min<int64_t>(8 * MiB, sz);
    for (int k = 0; k < 300; k++) {
        int64_t len = 1 + rnd(g, k % 10 == 0 ? 300000 : 9000);
        int64_t off;
        if (k % 7 == 0) off = sz - 1 - rnd(g, std::min<int64_t>(MiB, sz) - 1);
        else off = rnd(g, region);
        len = std::min(len, sz - off);
        if (k % 3 == 0) off = off / 512 * 512, len = std::max<int64_t>(512, len / 512 * 512);
        len = std::min(len, sz - off);
        e.write_pat(off, len, 1000 + k);
    }
    e.verify(0, region, "random writes");
    e.verify(sz - std::min<int64_t>(MiB, sz), std::min<int64_t>(MiB, sz), "random writes near the end");
}
END_TEST

START_TEST(rw_reopen)
{
    Env e(_i);
    int64_t b = work_base(e, MiB, 64 * KiB);
    e.write_pat(b + 17, 300 * KiB, 80);
    e.write_pat(e.size() - 5000, 5000, 81);
    EXPECT_RET(e.fl(), 0);
    e.close();
    e.open();
    e.verify(b, MiB, "after close and reopen");
    e.verify(e.size() - 8192, 8192, "end after close and reopen");
}
END_TEST

START_TEST(rw_fua_writethrough)
{
    Env e(_i);
    int64_t b = work_base(e, MiB, 64 * KiB);
    e.write_pat(b + 100, 10000, 90, kReqFua);
    e.blk->set_writethrough(true);
    e.write_pat(b + 65536, 65536, 91);
    e.zero(b + 4096, 4096);
    e.verify(b, MiB, "FUA and writethrough writes");
}
END_TEST

// ================================================================ bounds

START_TEST(read_past_end)
{
    Env e(_i);
    int64_t sz = e.size();
    std::vector<uint8_t> buf(1 << 20, 0xee);
    EXPECT_RET(e.rd(sz, 512, buf.data()), -EIO);
    EXPECT_RET(e.rd(sz - 512, 1024, buf.data()), -EIO);
    EXPECT_RET(e.rd(sz + MiB, 1, buf.data()), -EIO);
    EXPECT_RET(e.rd(sz, 0, buf.data()), 0);
    e.verify(sz - 512, 512, "last sector");
}
END_TEST

START_TEST(write_past_end)
{
    Env e(_i);
    int64_t sz = e.size();
    std::vector<uint8_t> buf = pattern(100, 0, 4096);
    EXPECT_RET(e.wr(sz, 512, buf.data()), -EIO);
    EXPECT_RET(e.wr(sz - 512, 1024, buf.data()), -EIO);
    EXPECT_RET(e.wr(sz + MiB, 1, buf.data()), -EIO);
    ck_assert_int_eq(e.blk->getlength(), sz);
    e.verify(sz - 4096, 4096, "end after refused writes");
}
END_TEST

START_TEST(zero_discard_past_end)
{
    Env e(_i);
    int64_t sz = e.size();
    EXPECT_RET(e.wz(sz, 512), -EIO);
    EXPECT_RET(e.wz(sz - 512, 1024, kReqMayUnmap), -EIO);
    EXPECT_RET(e.dc(sz, 4096), -EIO);
    EXPECT_RET(e.dc(sz - 512, 1024), -EIO);
    ck_assert_int_eq(e.blk->getlength(), sz);
    e.verify(sz - 4096, 4096, "end after refused write-zeroes/discard");
}
END_TEST

// ================================================================ zero

void zero_case(int i, bg::ReqFlags flags)
{
    Env e(i);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 200);
    e.zero(b + u, 2 * u, flags);
    e.verify(b, 4 * u, "write-zeroes");
    EXPECT_RET(e.fl(), 0);
    e.verify(b, 4 * u, "write-zeroes after flush");
}

START_TEST(zeroes_plain) { zero_case(_i, 0); }
END_TEST

START_TEST(zeroes_unmap) { zero_case(_i, kReqMayUnmap); }
END_TEST

START_TEST(zeroes_unaligned)
{
    Env e(_i);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 210);
    e.zero(b + 1000, 2 * u + 333, kReqMayUnmap);
    e.zero(b + 3 * u + 7, 5);
    e.zero(b + 3 * u + 600, 3000, kReqMayUnmap);
    e.verify(b, 4 * u, "unaligned write-zeroes");
}
END_TEST

START_TEST(zeroes_status)
{
    Env e(_i);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 220);
    e.zero(b + u, 2 * u, kReqMayUnmap);
    walk_status(e, b + u, 2 * u, true, [&](int64_t pos, int64_t pnum, int flags) {
        REQUIRE(flags & kStatusZero, "after write-zeroes with unmap, [%ld, +%ld) is not reported ZERO (0x%x)",
                      (long)pos, (long)pnum, flags);
    });
    walk_status(e, b, u, true, [&](int64_t pos, int64_t pnum, int flags) {
        REQUIRE(!(flags & kStatusZero), "data at [%ld, +%ld) reported ZERO", (long)pos, (long)pnum);
    });
    e.zero(b + 3 * u, u, 0);
    check_zero_claims(e, b, 4 * u, true, true);
    e.verify(b, 4 * u, "after write-zeroes");
}
END_TEST

START_TEST(zeroes_no_fallback)
{
    Env e(_i);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 230);
    int r = e.wz(b + u, 2 * u, kReqNoFallback | kReqMayUnmap);
    if (e.has(bg::kCapWriteZeroes)) {
        REQUIRE(r == 0, "write-zeroes with NO_FALLBACK on a driver with efficient zeroes: %s", strerror(-r));
    } else {
        REQUIRE(r == 0 || r == -ENOTSUP, "write-zeroes with NO_FALLBACK: %s", strerror(-r));
    }
    if (r == 0) e.m.zero(b + u, 2 * u);
    e.verify(b, 4 * u, "after write-zeroes with NO_FALLBACK");
}
END_TEST

START_TEST(zeroes_large)
{
    Env e(_i);
    int64_t u = unit(e), len = std::min<int64_t>(16 * MiB, e.size() / 4) / u * u;
    int64_t b = work_base(e, len, u);
    e.write_pat(b, 4096, 240);
    e.write_pat(b + len / 2 + 17, 4096, 241);
    e.write_pat(b + len - 4096, 4096, 242);
    e.zero(b, len, kReqMayUnmap);
    e.verify(b, len, "16 MiB of write-zeroes");
}
END_TEST

// ================================================================ discard

START_TEST(discard_aligned)
{
    Env e(_i);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 300);
    EXPECT_RET(e.dc(b + u, 2 * u), 0);
    if (e.has(bg::kCapDiscardZeroes)) {
        e.m.zero(b + u, 2 * u);
        e.verify(b, 4 * u, "discarded range must read as zeros (discard-zeroes)");
    } else {
        check_old_or_zero(e, b, 4 * u, b + u, 2 * u, 512, "discard");
    }
    e.write_pat(b + u + 100, 1000, 301);
    e.verify(b, 4 * u, "write after discard");
}
END_TEST

START_TEST(discard_unaligned)
{
    Env e(_i);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 310);
    int64_t doff = b + 1000, dlen = 2 * u + 333;
    EXPECT_RET(e.dc(doff, dlen), 0);
    std::vector<uint8_t> got = read_actual(e, b, 4 * u);
    if (e.has(bg::kCapDiscardZeroes)) {
        int64_t lo = (doff + u - 1) / u * u, hi = (doff + dlen) / u * u;
        REQUIRE(all_zero(got.data() + (lo - b), hi - lo),
                      "the whole units [%ld, %ld) inside the discarded range do not read as zeros", (long)lo,
                      (long)hi);
    }
    check_old_or_zero(e, b, 4 * u, doff, dlen, 1, "unaligned discard");
}
END_TEST

START_TEST(discard_ignored)
{
    Env e(_i, false);
    OpenOpts o;
    o.unmap = false;
    e.open(o);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 320);
    EXPECT_RET(e.dc(b, 4 * u), 0);
    e.verify(b, 4 * u, "discard with discard=ignore must not change data");
}
END_TEST

START_TEST(discard_status)
{
    Env e(_i);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 330);
    EXPECT_RET(e.dc(b + u, 2 * u), 0);
    check_old_or_zero(e, b, 4 * u, b + u, 2 * u, 512, "discard");
    if (e.has(bg::kCapDiscardZeroes)) {
        walk_status(e, b + u, 2 * u, true, [&](int64_t pos, int64_t pnum, int flags) {
            REQUIRE(flags & kStatusZero, "discarded [%ld, +%ld) not reported ZERO (0x%x)", (long)pos,
                          (long)pnum, flags);
        });
    }
    check_zero_claims(e, b, 4 * u, true, false);
}
END_TEST

// ================================================================ status

START_TEST(status_walk)
{
    Env e(_i);
    int64_t sz = e.size(), last_end = 0;
    int last_flags = 0;
    check_zero_claims(e, 0, sz, true, true);
    walk_status(e, 0, sz, true, [&](int64_t pos, int64_t pnum, int flags) {
        REQUIRE(pos == last_end, "extent at %ld, expected %ld", (long)pos, (long)last_end);
        last_end = pos + pnum;
        last_flags = flags;
    });
    ck_assert_int_eq(last_end, sz);
    REQUIRE(last_flags & kStatusEof, "the last extent does not carry EOF (0x%x)", last_flags);
}
END_TEST

START_TEST(status_after_writes)
{
    Env e(_i);
    int64_t u = unit(e), b = work_base(e, 8 * u, u), sz = e.size();
    std::vector<std::pair<int64_t, int64_t>> w = {{b, 64 * KiB}, {b + 3 * u + 17, 1}, {b + 5 * u - 100, 200},
                                                  {sz - 4096, 4096}};
    uint32_t seed = 400;
    for (auto [o, n] : w) e.write_pat(o, n, seed++);
    for (auto [o, n] : w) {
        // ZERO only where the data is zeros (everywhere but on a device that drops writes).
        check_zero_claims(e, o, n, true, true);
        if (e.has(bg::kCapBacking)) {
            int64_t pnum = 0, map = 0;
            bg::BlockNode *file = nullptr;
            int r = bg::run_in_coroutine([&] { return e.blk->co_block_status(true, o, n, &pnum, &map, &file); });
            REQUIRE(r >= 0 && (r & kStatusAllocated), "written range at %ld not ALLOCATED in the top layer (%d)",
                          (long)o, r);
        }
    }
    check_zero_claims(e, b, 8 * u, true, true);
}
END_TEST

START_TEST(status_mixed)
{
    Env e(_i);
    int64_t u = unit(e), b = work_base(e, 8 * u, u);
    e.write_pat(b, 8 * u, 410);
    e.zero(b + u, u, kReqMayUnmap);
    e.zero(b + 3 * u + 512, u, 0);
    EXPECT_RET(e.dc(b + 5 * u, u), 0);
    check_old_or_zero(e, b, 8 * u, b + 5 * u, u, 512, "discard");
    e.write_pat(b + u + 4096, 100, 411);
    check_zero_claims(e, b, 8 * u, true, true);
    e.verify(b, 8 * u, "mixed operations");
}
END_TEST

START_TEST(status_no_want_zero)
{
    Env e(_i);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    check_zero_claims(e, 0, std::min<int64_t>(e.size(), 16 * MiB), false, true);
    if (e.has(bg::kCapWrite)) {
        e.write_pat(b, 4 * u, 420);
        check_zero_claims(e, b, 4 * u, false, true);
    }
}
END_TEST

START_TEST(status_eof)
{
    Env e(_i);
    int64_t sz = e.size(), pnum = -1;
    int r = e.bs(sz, 512, &pnum);
    REQUIRE(r >= 0 && pnum == 0 && (r & kStatusEof), "status at the end: %d, pnum %ld", r, (long)pnum);
    r = e.bs(sz - 512, 512, &pnum);
    REQUIRE(r >= 0 && pnum == 512 && (r & kStatusEof), "status of the last sector: %d, pnum %ld", r,
                  (long)pnum);
    r = e.bs(0, sz, &pnum);
    REQUIRE(r >= 0 && pnum > 0 && pnum <= sz, "status of the device: %d, pnum %ld", r, (long)pnum);
    if (pnum < sz) REQUIRE(!(r & kStatusEof), "EOF set on an extent not reaching the end");
}
END_TEST

// ================================================================ flush

START_TEST(flush_idle)
{
    Env e(_i);
    EXPECT_RET(e.fl(), 0);
    EXPECT_RET(e.fl(), 0);
    e.verify(0, 4096, "after flushes");
}
END_TEST

START_TEST(flush_visible)
{
    Env e(_i);
    int64_t b = work_base(e, MiB, 64 * KiB);
    e.write_pat(b + 3, 500 * KiB, 500);
    e.zero(b + 600 * KiB, 64 * KiB);
    EXPECT_RET(e.fl(), 0);
    OpenOpts o;
    o.read_only = true;
    o.force_share = true;
    o.perm = bg::kPermConsistentRead;
    Env::Second sec = e.open_second(o);
    REQUIRE(sec.error.empty(), "second read-only open: %s", sec.error.c_str());
    std::vector<uint8_t> got(MiB, 0xee);
    int r = bg::run_in_coroutine([&] { return sec.blk->co_pread(b, MiB, got.data()); });
    ck_assert_int_eq(r, 0);
    REQUIRE(got == e.m.get(b, MiB), "a second graph does not see the flushed data");
}
END_TEST

START_TEST(flush_concurrent)
{
    Env e(_i);
    int64_t b = work_base(e, MiB, 64 * KiB);
    std::vector<std::function<void()>> fns;
    std::vector<Req> reqs;
    for (int k = 0; k < 8; k++) reqs.push_back({b + k * 64 * KiB + k, 60000, static_cast<uint32_t>(510 + k), false, false});
    for (const Req &q : reqs) fns.push_back(req_fn(e, q));
    for (int k = 0; k < 4; k++) {
        fns.push_back([&e] {
            for (int j = 0; j < 3; j++) {
                int r = e.blk->co_flush();
                REQUIRE(r == 0, "concurrent flush: %s", strerror(-r));
            }
        });
    }
    e.parallel(fns);
    for (const Req &q : reqs) {
        std::vector<uint8_t> p = pattern(q.seed, q.off, q.len);
        e.m.write(q.off, q.len, p.data());
    }
    EXPECT_RET(e.fl(), 0);
    e.verify(b, MiB, "writes with concurrent flushes");
}
END_TEST

// ================================================================ truncate

START_TEST(truncate_grow)
{
    Env e(_i);
    int64_t sz = e.size(), nsz = sz + MiB;
    int r = e.tr(nsz);
    if (!e.has(bg::kCapResize)) {
        REQUIRE(r == -ENOTSUP, "truncate on a stack without resize: %d (%s), expected ENOTSUP", r,
                      strerror(-r));
        ck_assert_int_eq(e.blk->getlength(), sz);
        return;
    }
    REQUIRE(r == 0, "truncate grow: %s", strerror(-r));
    ck_assert_int_eq(e.blk->getlength(), nsz);
    e.m.resize(nsz);
    e.verify(sz - 4096, 4096 + MiB, "grown area");
    e.write_pat(nsz - 1000, 1000, 600);
    e.verify(nsz - MiB, MiB, "write into the grown area");
    EXPECT_RET(e.fl(), 0);
}
END_TEST

START_TEST(truncate_shrink)
{
    Env e(_i);
    int64_t sz = e.size(), nsz = sz - MiB;
    if (e.has(bg::kCapWrite)) e.write_pat(sz - 2 * MiB, 2 * MiB, 610);
    int r = e.tr(nsz);
    if (!e.has(bg::kCapShrink)) {
        REQUIRE(r == -ENOTSUP, "shrinking a stack without shrink: %d (%s), expected ENOTSUP", r,
                      strerror(-r));
        ck_assert_int_eq(e.blk->getlength(), sz);
        e.verify(sz - 2 * MiB, 2 * MiB, "data after a refused shrink");
        return;
    }
    REQUIRE(r == 0, "truncate shrink: %s", strerror(-r));
    ck_assert_int_eq(e.blk->getlength(), nsz);
    std::vector<uint8_t> buf(512);
    EXPECT_RET(e.rd(nsz, 512, buf.data()), -EIO);
    e.m.resize(nsz);
    e.verify(nsz - MiB, MiB, "data below the new end");
    if (e.has(bg::kCapResize)) {
        EXPECT_RET(e.tr(sz), 0);
        e.m.resize(sz);
        e.verify(nsz - MiB, 2 * MiB, "grown again: no stale data");
    }
}
END_TEST

START_TEST(truncate_unaligned)
{
    Env e(_i);
    int64_t sz = e.size(), nsz = sz + 4096 + 512;
    int r = e.tr(nsz);
    if (!e.has(bg::kCapResize)) {
        REQUIRE(r == -ENOTSUP, "truncate: %d (%s), expected ENOTSUP", r, strerror(-r));
        return;
    }
    REQUIRE(r == 0, "truncate to %ld: %s", (long)nsz, strerror(-r));
    ck_assert_int_eq(e.blk->getlength(), nsz);
    e.m.resize(nsz);
    e.verify(sz - 4096, nsz - sz + 4096, "unaligned grow");
    e.write_pat(nsz - 700, 700, 620);
    e.verify(nsz - 8192, 8192, "write at the new end");
}
END_TEST

START_TEST(truncate_no_perm)
{
    Env e(_i, false);
    OpenOpts o;
    o.perm = bg::kPermConsistentRead | (e.has(bg::kCapWrite) ? bg::kPermWrite : 0);
    e.open(o);
    int64_t sz = e.size();
    EXPECT_RET(e.tr(sz + MiB), -EPERM);
    ck_assert_int_eq(e.blk->getlength(), sz);
}
END_TEST

// ================================================================ conc

START_TEST(conc_overlap_aligned)
{
    Env e(_i);
    auto g = rng_for(_i, 3);
    int64_t b = work_base(e, 256 * KiB, 64 * KiB);
    std::vector<Req> reqs;
    for (int k = 0; k < 32; k++) {
        int64_t off = b + 4096 * rnd(g, 48), len = 4096 * (1 + rnd(g, 16));
        reqs.push_back({off, len, static_cast<uint32_t>(700 + k), false, false});
    }
    std::vector<std::function<void()>> fns;
    for (const Req &q : reqs) fns.push_back(req_fn(e, q));
    e.parallel(fns);
    check_sectors_whole(e, b, 256 * KiB, reqs);
}
END_TEST

START_TEST(conc_overlap_unaligned)
{
    Env e(_i);
    auto g = rng_for(_i, 4);
    int64_t b = work_base(e, 64 * KiB, 64 * KiB);
    std::vector<Req> reqs;
    for (int k = 0; k < 40; k++) {
        int64_t off = b + rnd(g, 60000), len = 1 + rnd(g, 5000);
        len = std::min(len, b + 64 * KiB - off);
        reqs.push_back({off, len, static_cast<uint32_t>(800 + k), false, false});
    }
    std::vector<std::function<void()>> fns;
    for (const Req &q : reqs) fns.push_back(req_fn(e, q));
    e.parallel(fns);
    check_sectors_pairs(e, b, 64 * KiB, reqs);
}
END_TEST

START_TEST(conc_read_during_write)
{
    Env e(_i);
    auto g = rng_for(_i, 5);
    const int64_t len = 512 * KiB;
    int64_t b = work_base(e, len, 64 * KiB);
    std::vector<uint32_t> seeds;
    for (int k = 0; k < 12; k++) seeds.push_back(900 + k);
    std::vector<uint8_t> old = e.m.get(b, len);
    bool drops = e.has(bg::kCapDropsWrites);
    // A whole sector of one version (the state after all writes).
    auto sector_ok = [&](int64_t o, const uint8_t *p) {
        if (memcmp(p, old.data() + (o - b), 512) == 0) return true;
        if (drops) return false;
        for (uint32_t s : seeds) {
            bool eq = true;
            for (int i = 0; i < 512 && eq; i++) eq = p[i] == pat(s, o + i);
            if (eq) return true;
        }
        return false;
    };
    // Every byte of one version (a read racing a write: the host kernel
    // does not make buffered reads atomic against writes, even within a
    // page, so a sector may be torn between two versions; never anything
    // else).
    auto bytes_ok = [&](int64_t o, const uint8_t *p) {
        for (int i = 0; i < 512; i++) {
            bool ok = p[i] == old[o - b + i];
            for (size_t k = 0; !ok && !drops && k < seeds.size(); k++) ok = p[i] == pat(seeds[k], o + i);
            if (!ok) return false;
        }
        return true;
    };
    std::vector<std::function<void()>> fns;
    for (int w = 0; w < 4; w++) {
        fns.push_back([&, w] {
            for (int j = 0; j < 3; j++) {
                std::vector<uint8_t> p = pattern(seeds[w * 3 + j], b, len);
                int r = e.blk->co_pwrite(b, len, p.data());
                REQUIRE(r == 0, "write: %s", strerror(-r));
            }
        });
    }
    std::vector<int64_t> offs;
    for (int k = 0; k < 36; k++) offs.push_back(b + 4096 * rnd(g, (len - 64 * KiB) / 4096));
    for (int rdr = 0; rdr < 6; rdr++) {
        fns.push_back([&, rdr] {
            for (int j = 0; j < 6; j++) {
                int64_t o = offs[rdr * 6 + j];
                std::vector<uint8_t> buf(64 * KiB, 0xee);
                int r = e.blk->co_pread(o, buf.size(), buf.data());
                REQUIRE(r == 0, "read during writes: %s", strerror(-r));
                for (int64_t s = 0; s < 64 * KiB; s += 512) {
                    REQUIRE(bytes_ok(o + s, buf.data() + s),
                            "a read during writes returned data in sector %ld that no write produced", (long)(o + s));
                }
            }
        });
    }
    e.parallel(fns);
    std::vector<uint8_t> got = read_actual(e, b, len);
    for (int64_t s = 0; s < len; s += 512) {
        REQUIRE(sector_ok(b + s, got.data() + s), "sector %ld after the writes is mixed", (long)(b + s));
    }
    if (drops) REQUIRE(got == old, "a device that drops writes returned data");
}
END_TEST

START_TEST(conc_disjoint)
{
    Env e(_i);
    int64_t b = work_base(e, MiB + 64 * KiB, 64 * KiB);
    std::vector<Req> reqs;
    for (int k = 0; k < 64; k++) reqs.push_back({b + k * 16 * KiB + 7 * k, 8000 + k, static_cast<uint32_t>(1000 + k), false, false});
    std::vector<std::function<void()>> fns;
    for (const Req &q : reqs) fns.push_back(req_fn(e, q));
    e.parallel(fns);
    for (const Req &q : reqs) {
        std::vector<uint8_t> p = pattern(q.seed, q.off, q.len);
        e.m.write(q.off, q.len, p.data());
    }
    e.verify(b, MiB + 64 * KiB, "64 concurrent disjoint writes");
}
END_TEST

START_TEST(conc_zero_write)
{
    Env e(_i);
    auto g = rng_for(_i, 6);
    int64_t b = work_base(e, 256 * KiB, 64 * KiB);
    e.write_pat(b, 256 * KiB, 1100);
    std::vector<Req> reqs;
    for (int k = 0; k < 32; k++) {
        int64_t off = b + 4096 * rnd(g, 48), len = 4096 * (1 + rnd(g, 16));
        reqs.push_back({off, len, static_cast<uint32_t>(1101 + k), k % 2 == 0, k % 4 == 0});
    }
    std::vector<std::function<void()>> fns;
    for (const Req &q : reqs) fns.push_back(req_fn(e, q));
    e.parallel(fns);
    check_sectors_whole(e, b, 256 * KiB, reqs);
}
END_TEST

// ================================================================ perm

START_TEST(perm_readonly_node)
{
    Env e(_i, false);
    OpenOpts o;
    o.read_only = true;
    std::string err = e.try_open(o);
    REQUIRE(!err.empty(), "a writable backend on a read-only node was allowed");
    o.perm = bg::kPermConsistentRead;
    e.open(o);
    std::vector<uint8_t> buf = pattern(1200, 0, 4096);
    EXPECT_RET(e.wr(0, 4096, buf.data()), -EPERM);
    EXPECT_RET(e.wz(0, 4096), -EPERM);
    EXPECT_RET(e.dc(0, 4096), -EPERM);
    EXPECT_RET(e.tr(e.size() + MiB), -EPERM);
    e.verify(0, std::min<int64_t>(e.size(), 6 * MiB), "read-only node");
    e.close();
    std::string out;
    int rc = e.qemu_check(&out);
    REQUIRE(rc == 0 || rc == 63, "qemu-img check: %s", out.c_str());
}
END_TEST

START_TEST(perm_no_write_perm)
{
    Env e(_i, false);
    OpenOpts o;
    o.perm = bg::kPermConsistentRead;
    e.open(o);
    std::vector<uint8_t> buf = pattern(1201, 0, 4096);
    EXPECT_RET(e.wr(4096, 4096, buf.data()), -EPERM);
    EXPECT_RET(e.wz(4096, 4096), -EPERM);
    EXPECT_RET(e.dc(4096, 4096), -EPERM);
    e.verify(0, 16 * KiB, "backend without write permission");
}
END_TEST

START_TEST(perm_conflict)
{
    Env e(_i, false);
    OpenOpts o;
    o.shared = bg::kPermConsistentRead;   // a writer that shares nothing but reading
    e.open(o);
    auto b1 = bg::BlockBackend::create(e.root, bg::kPermConsistentRead | bg::kPermWrite, bg::kPermAll, "other");
    REQUIRE(!b1.ok(), "a second writer was allowed next to one that does not share writing");
    auto b2 = bg::BlockBackend::create(e.root, bg::kPermConsistentRead, bg::kPermConsistentRead, "reader");
    REQUIRE(!b2.ok(), "a reader that does not share writing was allowed next to a writer");
    auto b3 = bg::BlockBackend::create(e.root, bg::kPermConsistentRead, bg::kPermAll, "tolerant");
    REQUIRE(b3.ok(), "a reader sharing everything was refused: %s", b3.ok() ? "" : b3.msg().c_str());
    e.write_pat(0, 4096, 1210);
    b3.value().reset();
    e.blk.reset();
    auto b4 = bg::BlockBackend::create(e.root, bg::kPermConsistentRead | bg::kPermWrite, bg::kPermAll, "later");
    REQUIRE(b4.ok(), "a writer was refused after the first went away: %s", b4.ok() ? "" : b4.msg().c_str());
    e.blk = std::move(b4.value());
    e.verify(0, 4096, "after permission changes");
}
END_TEST

START_TEST(perm_lock_other_graph)
{
    Env e(_i, false);
    OpenOpts o;
    o.shared = bg::kPermConsistentRead;
    e.open(o);
    e.write_pat(0, 4096, 1220);
    EXPECT_RET(e.fl(), 0);
    OpenOpts w;
    Env::Second s1 = e.open_second(w);
    REQUIRE(!s1.error.empty(), "a second graph opened the images for writing while the first writes");
    s1.reset();
    OpenOpts r;
    r.read_only = true;
    r.force_share = true;   // what qemu-img -U does; without it a format node refuses to share writes
    r.perm = bg::kPermConsistentRead;
    Env::Second s2 = e.open_second(r);
    REQUIRE(s2.error.empty(), "a read-only reader with force-share was refused: %s", s2.error.c_str());
    s2.reset();
    e.close();
    Env::Second s3 = e.open_second(w);
    REQUIRE(s3.error.empty(), "writer refused after the first graph closed: %s", s3.error.c_str());
}
END_TEST

// ================================================================ fault

void fault_write_case(int i, bool immediately)
{
    Env e(i, false);
    OpenOpts o;
    o.leaf_rules = arm_rules(ENOSPC, nullptr, false, immediately);
    e.open(o);
    int64_t b = work_base(e, 64 * KiB, 64 * KiB);
    e.write_pat(b, 64 * KiB, 1300);
    EXPECT_RET(e.fl(), 0);
    arm(e);
    std::vector<uint8_t> nw = pattern(1301, b + 4096, 8192);
    int r = e.wr(b + 4096, 8192, nw.data());
    expect_error_reaches(r, e, ENOSPC, "write");
    disarm(e);
    // Each sector of the failed write: the old data or the new.
    std::vector<uint8_t> got = read_actual(e, b + 4096, 8192), old = e.m.get(b + 4096, 8192);
    for (int s = 0; s < 8192; s += 512) {
        REQUIRE(!memcmp(got.data() + s, old.data() + s, 512) || !memcmp(got.data() + s, nw.data() + s, 512),
                      "after a failed write, sector %ld is neither old nor new", (long)(b + 4096 + s));
    }
    e.verify(b, 4096, "data before the failed write");
    e.verify(b + 12288, 64 * KiB - 12288, "data after the failed write");
    e.write_pat(b + 4096, 8192, 1302);
    EXPECT_RET(e.fl(), 0);
    e.verify(b, 64 * KiB, "writes after the fault");
    expect_check_clean(e, true);
}

START_TEST(fault_read)
{
    Env e(_i, false);
    OpenOpts o;
    o.leaf_rules = arm_rules(ENODATA, "read", false);
    e.open(o);
    int64_t b = work_base(e, 64 * KiB, 64 * KiB);
    e.write_pat(b, 64 * KiB, 1310);
    EXPECT_RET(e.fl(), 0);
    arm(e);
    std::vector<uint8_t> buf(64 * KiB);
    EXPECT_RET(e.rd(b, 64 * KiB, buf.data()), -ENODATA);
    disarm(e);
    e.verify(b, 64 * KiB, "reads after the fault");
    expect_check_clean(e, false);
}
END_TEST

START_TEST(fault_write) { fault_write_case(_i, false); }
END_TEST

START_TEST(fault_write_immediately) { fault_write_case(_i, true); }
END_TEST

START_TEST(fault_zeroes)
{
    Env e(_i, false);
    OpenOpts o;
    o.leaf_rules = arm_rules(EDQUOT, nullptr, false);
    e.open(o);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 1320);
    EXPECT_RET(e.fl(), 0);
    arm(e);
    expect_error_reaches(e.wz(b + u, u, kReqMayUnmap), e, EDQUOT, "write-zeroes");
    disarm(e);
    check_old_or_zero(e, b, 4 * u, b + u, u, 512, "failed write-zeroes");
    e.zero(b + u, u, kReqMayUnmap);
    EXPECT_RET(e.fl(), 0);
    e.verify(b, 4 * u, "write-zeroes after the fault");
    expect_check_clean(e, true);
}
END_TEST

START_TEST(fault_discard)
{
    Env e(_i, false);
    OpenOpts o;
    o.leaf_rules = arm_rules(ENXIO, nullptr, false);
    e.open(o);
    int64_t u = unit(e), b = work_base(e, 4 * u, u);
    e.write_pat(b, 4 * u, 1330);
    EXPECT_RET(e.fl(), 0);
    arm(e);
    expect_error_reaches(e.dc(b + u, u), e, ENXIO, "discard");
    disarm(e);
    check_old_or_zero(e, b, 4 * u, b + u, u, 512, "failed discard");
    e.write_pat(b + u, u, 1331);
    EXPECT_RET(e.fl(), 0);
    e.verify(b, 4 * u, "writes after the fault");
    expect_check_clean(e, true);
}
END_TEST

START_TEST(fault_flush)
{
    Env e(_i, false);
    OpenOpts o;
    o.leaf_rules = arm_rules(EIO, nullptr, false);
    e.open(o);
    int64_t b = work_base(e, 64 * KiB, 64 * KiB);
    e.write_pat(b, 64 * KiB, 1340);
    arm(e);
    EXPECT_RET(e.fl(), -EIO);
    disarm(e);
    EXPECT_RET(e.fl(), 0);
    e.verify(b, 64 * KiB, "data after a failed flush");
    e.write_pat(b + 100, 100, 1341);
    EXPECT_RET(e.fl(), 0);
    e.verify(b, 64 * KiB, "writes after the fault");
    expect_check_clean(e, true);
}
END_TEST

START_TEST(fault_truncate)
{
    Env e(_i, false);
    OpenOpts o;
    o.leaf_rules = arm_rules(EFBIG, nullptr, true);
    e.open(o);
    int64_t sz = e.size();
    e.write_pat(sz - 4096, 4096, 1350);
    EXPECT_RET(e.fl(), 0);
    arm(e);
    EXPECT_RET(e.tr(sz + MiB), -EFBIG);
    REQUIRE(e.blk->getlength() == sz, "a failed truncate changed the length to %ld", (long)e.blk->getlength());
    disarm(e);
    EXPECT_RET(e.tr(sz + MiB), 0);
    e.m.resize(sz + MiB);
    e.write_pat(sz + MiB - 512, 512, 1351);
    EXPECT_RET(e.fl(), 0);
    e.verify(sz - 4096, MiB + 4096, "after the failed and the successful truncate");
    expect_check_clean(e, true);
}
END_TEST

// ================================================================ meta

// A rule armed by the driver's own event fails the next request of any type
// on the leaf below it; the write (or its flush) must fail with that errno;
// later writes work and the image passes qemu-img check (leaks allowed).
void meta_write_case(int i, const char *event, int64_t off, int64_t len)
{
    Env e(i, false);
    OpenOpts o;
    o.leaf_rules = json::array({{{"event", event}, {"errno", ENOSPC}, {"once", true}}});
    e.open(o);
    std::vector<uint8_t> nw = pattern(1400, off, len);
    int r = e.wr(off, len, nw.data());
    expect_error_reaches(r, e, ENOSPC, (std::string("write with an error on ") + event).c_str());
    e.write_pat(off, len, 1401);
    EXPECT_RET(e.fl(), 0);
    e.verify(off / 4096 * 4096, std::min<int64_t>(e.size() - off / 4096 * 4096, len + 8192), "writes after the fault");
    expect_check_clean(e, true);
}

int64_t fresh_off(const Stack &s) { return std::min<int64_t>(std::max<int64_t>(MiB, s.geo.cluster), s.size / 2); }

START_TEST(meta_l1_update)
{
    const Stack &s = g_stacks[_i];
    meta_write_case(_i, "l1_update", s.geo.l2 < s.size ? s.geo.l2 : fresh_off(s), 4096);
}
END_TEST

START_TEST(meta_l2_alloc_write)
{
    const Stack &s = g_stacks[_i];
    meta_write_case(_i, "l2_alloc_write", s.geo.l2 < s.size ? s.geo.l2 : fresh_off(s), 4096);
}
END_TEST

START_TEST(meta_l2_update) { meta_write_case(_i, "l2_update", fresh_off(g_stacks[_i]), 4096); }
END_TEST

START_TEST(meta_refblock_update) { meta_write_case(_i, "refblock_update_part", fresh_off(g_stacks[_i]), 4096); }
END_TEST

START_TEST(meta_cluster_alloc) { meta_write_case(_i, "cluster_alloc", fresh_off(g_stacks[_i]), 4096); }
END_TEST

// A whole fresh cluster: no copy-on-write around the data.
START_TEST(meta_write_aio)
{
    const Stack &s = g_stacks[_i];
    int64_t c = s.geo.cluster;
    meta_write_case(_i, "write_aio", (fresh_off(s) + c - 1) / c * c, c);
}
END_TEST

START_TEST(meta_cow_write) { meta_write_case(_i, "cow_write", 2 * MiB + 3 * g_stacks[_i].geo.cluster + 17, 100); }
END_TEST

START_TEST(meta_cow_read) { meta_write_case(_i, "cow_read", 2 * MiB + 5 * g_stacks[_i].geo.cluster + 17, 100); }
END_TEST

START_TEST(meta_refblock_alloc)
{
    Env e(_i, false);
    OpenOpts o;
    o.leaf_rules = json::array({{{"event", "refblock_alloc"}, {"errno", ENOSPC}, {"once", true}}});
    e.open(o);
    int64_t c = e.s.geo.cluster, amount = 2 * e.s.geo.refblock + 4 * c;
    int64_t b = work_base(e, amount, c), chunk = std::max<int64_t>(c, 64 * KiB);
    int r = 0;
    for (int64_t off = 0; off < amount && r == 0; off += chunk) {
        std::vector<uint8_t> p = pattern(1410, b + off, std::min(chunk, amount - off));
        r = e.wr(b + off, p.size(), p.data());
    }
    expect_error_reaches(r, e, ENOSPC, "writes allocating a refcount block");
    for (int64_t off = 0; off < amount; off += chunk) e.write_pat(b + off, std::min(chunk, amount - off), 1411);
    EXPECT_RET(e.fl(), 0);
    e.verify(b, amount, "writes after the fault");
    expect_check_clean(e, true);
}
END_TEST

// Read events: on a reopened graph (cold caches) a rule armed by the event
// fails the next read of the leaf below the driver; the read must fail with
// EIO, the retry and everything else read the data.
void meta_read_case(int i, const char *event)
{
    Env e(i);
    int64_t c = std::max<int64_t>(e.s.geo.cluster, 64 * KiB), b = work_base(e, 4 * c, c);
    e.write_pat(b, 2 * c, 1430);
    EXPECT_RET(e.fl(), 0);
    OpenOpts o;
    o.leaf_rules = json::array({{{"event", event}, {"iotype", "read"}, {"errno", EIO}, {"once", true}}});
    e.open(o);
    std::vector<uint8_t> buf(4096);
    EXPECT_RET(e.rd(b + c, 4096, buf.data()), -EIO);
    e.verify(b, 4 * c, (std::string("reads after the fault on ") + event).c_str());
    expect_check_clean(e, false);
}

START_TEST(meta_l2_load) { meta_read_case(_i, "l2_load"); }
END_TEST

START_TEST(meta_read_aio) { meta_read_case(_i, "read_aio"); }
END_TEST

// Cold caches: the graph is reopened, so the first I/O on the image file is
// whatever the driver must load first (qcow2: the L2 table, a refcount
// block) or the data itself; an error there reaches the caller.
void cold_case(int i, bool write)
{
    Env e(i);
    int64_t c = std::max<int64_t>(e.s.geo.cluster, 64 * KiB), b = work_base(e, 8 * c, c);
    e.write_pat(b, 256 * KiB, 1420);
    EXPECT_RET(e.fl(), 0);
    OpenOpts o;
    int err = write ? ENOSPC : EIO;
    o.leaf_rules = arm_rules(err, write ? nullptr : "read", false);
    e.open(o);
    arm(e);
    if (write) {
        std::vector<uint8_t> p = pattern(1421, b + 4 * c, c);
        expect_error_reaches(e.wr(b + 4 * c, c, p.data()), e, err, "write after a reopen");
        disarm(e);
        e.write_pat(b + 4 * c, c, 1422);
        EXPECT_RET(e.fl(), 0);
    } else {
        std::vector<uint8_t> buf(256 * KiB);
        EXPECT_RET(e.rd(b, 256 * KiB, buf.data()), -EIO);
        disarm(e);
    }
    e.verify(b, 8 * c, "I/O after the fault");
    expect_check_clean(e, write);
}

START_TEST(fault_read_cold) { cold_case(_i, false); }
END_TEST

START_TEST(fault_write_cold) { cold_case(_i, true); }
END_TEST

// ================================================================ oracle

// A workload of writes and write-zeroes (and with discard, discards whose
// outcome is checked and then taken as the model).
void workload(Env &e, int salt, bool with_discard)
{
    auto g = rng_for(static_cast<int>(e.s.caps), salt);
    int64_t sz = e.size(), region = std::min<int64_t>(8 * MiB, sz), u = unit(e);
    for (int k = 0; k < 120; k++) {
        int64_t off = k % 9 == 0 ? sz - 1 - rnd(g, std::min<int64_t>(MiB, sz) - 1) : rnd(g, region);
        int64_t len = std::min<int64_t>(1 + rnd(g, k % 10 ? 20000 : 400000), sz - off);
        if (k % 11 == 5) e.zero(off, len, k % 2 ? kReqMayUnmap : 0);
        else e.write_pat(off, len, 1500 + k);
    }
    if (with_discard) {
        int64_t b = work_base(e, 4 * u, u);
        e.write_pat(b, 4 * u, 1499);
        EXPECT_RET(e.dc(b + u, 2 * u), 0);
        check_old_or_zero(e, b, 4 * u, b + u, 2 * u, 512, "discard");
    }
    EXPECT_RET(e.fl(), 0);
}

START_TEST(qemu_img_compare)
{
    Env e(_i);
    workload(e, 1, true);
    std::string diff = e.qemu_compare();
    REQUIRE(diff.empty(), "qemu-img sees other data than was written: %s", diff.c_str());
}
END_TEST

START_TEST(qemu_img_check)
{
    Env e(_i);
    workload(e, 2, true);
    if (e.has(bg::kCapResize)) {
        EXPECT_RET(e.tr(e.size() + 3 * MiB), 0);
        e.m.resize(e.size() + 3 * MiB);
        e.write_pat(e.size() - 2 * MiB, 100000, 1600);
    }
    e.verify(0, std::min<int64_t>(8 * MiB, e.size()), "after the workload");
    EXPECT_RET(e.fl(), 0);
    expect_check_clean(e, false);
    std::string diff = e.qemu_compare();
    REQUIRE(diff.empty(), "%s", diff.c_str());
}
END_TEST

} // namespace

namespace conf {

#define C(group, name, needs, applies) {group, #name, name, needs, applies}

const std::vector<CaseDef> &all_cases()
{
    using namespace bg;
    const DriverCaps W = kCapWrite;
    static const std::vector<CaseDef> cases = {
        C("read", read_initial, 0, nullptr),
        C("read", read_unaligned, 0, nullptr),
        C("read", read_iovec, 0, nullptr),
        C("rw", rw_aligned, W, nullptr),
        C("rw", rw_unaligned, W, nullptr),
        C("rw", rw_tiny, W, nullptr),
        C("rw", rw_cluster_cross, W, nullptr),
        C("rw", rw_cluster_whole, W, nullptr),
        C("rw", rw_l2_cross, W, app_l2),
        C("rw", rw_refblock_cross, W, app_refblock),
        C("rw", rw_device_end, W, nullptr),
        C("rw", rw_iovec, W, nullptr),
        C("rw", rw_large, W, nullptr),
        C("rw", rw_overwrite, W, nullptr),
        C("rw", rw_random, W, nullptr),
        C("rw", rw_reopen, W | kCapPersistent, nullptr),
        C("rw", rw_fua_writethrough, W, nullptr),
        C("bounds", read_past_end, 0, nullptr),
        C("bounds", write_past_end, W, nullptr),
        C("bounds", zero_discard_past_end, W, nullptr),
        C("zero", zeroes_plain, W, nullptr),
        C("zero", zeroes_unmap, W, nullptr),
        C("zero", zeroes_unaligned, W, nullptr),
        C("zero", zeroes_status, W | kCapWriteZeroes | kCapBlockStatus, nullptr),
        C("zero", zeroes_no_fallback, W, nullptr),
        C("zero", zeroes_large, W, nullptr),
        C("discard", discard_aligned, W, nullptr),
        C("discard", discard_unaligned, W, nullptr),
        C("discard", discard_ignored, W, nullptr),
        C("discard", discard_status, W, nullptr),
        C("status", status_walk, 0, nullptr),
        C("status", status_after_writes, W, nullptr),
        C("status", status_mixed, W, nullptr),
        C("status", status_no_want_zero, 0, nullptr),
        C("status", status_eof, 0, nullptr),
        C("flush", flush_idle, 0, nullptr),
        C("flush", flush_visible, W | kCapPersistent, app_readonly),
        C("flush", flush_concurrent, W, nullptr),
        C("trunc", truncate_grow, 0, nullptr),
        C("trunc", truncate_shrink, 0, nullptr),
        C("trunc", truncate_unaligned, 0, nullptr),
        C("trunc", truncate_no_perm, 0, nullptr),
        C("conc", conc_overlap_aligned, W, nullptr),
        C("conc", conc_overlap_unaligned, W, nullptr),
        C("conc", conc_read_during_write, W, nullptr),
        C("conc", conc_disjoint, W, nullptr),
        C("conc", conc_zero_write, W, nullptr),
        C("perm", perm_readonly_node, 0, app_readonly),
        C("perm", perm_no_write_perm, 0, nullptr),
        C("perm", perm_conflict, W, nullptr),
        C("perm", perm_lock_other_graph, W | kCapLocking, app_readonly),
        C("fault", fault_read, W, nullptr),
        C("fault", fault_write, W, nullptr),
        C("fault", fault_write_immediately, W, nullptr),
        C("fault", fault_zeroes, W, nullptr),
        C("fault", fault_discard, W, nullptr),
        C("fault", fault_flush, W, nullptr),
        C("fault", fault_truncate, W | kCapResize, nullptr),
        C("fault", fault_read_cold, W | kCapPersistent, nullptr),
        C("fault", fault_write_cold, W | kCapPersistent, nullptr),
        C("meta", meta_l1_update, W, app_events),
        C("meta", meta_l2_alloc_write, W, app_events),
        C("meta", meta_l2_update, W, app_events),
        C("meta", meta_refblock_update, W, app_events),
        C("meta", meta_refblock_alloc, W, app_events_refblock),
        C("meta", meta_cluster_alloc, W, app_events),
        C("meta", meta_write_aio, W, app_events),
        C("meta", meta_cow_write, W, app_events_backing),
        C("meta", meta_cow_read, W, app_events_backing),
        C("meta", meta_l2_load, W | kCapPersistent, app_events),
        C("meta", meta_read_aio, W | kCapPersistent, app_events_data),
        C("oracle", qemu_img_compare, W, nullptr),
        C("oracle", qemu_img_check, W, app_check),
    };
    return cases;
}

const std::vector<const char *> &all_groups()
{
    static const std::vector<const char *> groups = {"read", "rw",   "bounds", "zero", "discard", "status", "flush",
                                                     "trunc", "conc", "perm",   "fault", "meta",   "oracle"};
    return groups;
}

} // namespace conf

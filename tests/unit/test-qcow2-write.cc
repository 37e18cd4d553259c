// Unit tests of the qcow2 write path (block/qcow2/qcow2-write.cc,
// qcow2-refcount.cc, qcow2-cache.cc, qcow2-alloc.cc): metadata write
// ordering observed by a recording filter between qcow2 and its file,
// concurrent allocations of the same clusters, a discard racing an
// in-place rewrite (a host cluster under I/O is never reused), overlap
// checks (corrupt bit, writes stop), lazy refcounts (dirty bit while open,
// repair of a crashed image), shrink refusal with snapshots, discard-no-unref,
// preallocated growth, and shrink + regrow of a cluster with mixed
// subclusters. Images are made and judged by the real qemu-img.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tests/unit/testdrv.h"
#include "block/qcow2/qcow2.h"
#include "util/aio.h"

#include <check.h>

#include "tests/unit/tmpdir.h"

using namespace bg;
using namespace bgtest;

namespace {

int sh(const std::string &cmd)
{
    int r = system((cmd + " >/dev/null 2>&1").c_str());
    return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

bool have_qemu_img() { return sh("qemu-img --version") == 0; }

std::vector<uint8_t> read_file(const std::string &path, size_t off, size_t len)
{
    std::vector<uint8_t> buf(len);
    int fd = open(path.c_str(), O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, buf.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    close(fd);
    return buf;
}

void patch_file(const std::string &path, size_t off, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = static_cast<uint8_t>(v >> (56 - 8 * i));
    int fd = open(path.c_str(), O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, b, 8, static_cast<off_t>(off)), 8);
    close(fd);
}

uint64_t file_be64(const std::string &path, size_t off) { return qcow2::be64(read_file(path, off, 8).data()); }

// ---------------------------------------------------------------- recording filter

// Between qcow2 and its file, optionally, a test-mem node in pass-through
// mode (testdrv.h): it logs every request that reaches it and can hold
// writes or reads to a chosen range until released. Its log as
// (kind, offset, length): 'w' write, 'f' flush (to disk), 'd' discard,
// 'z' write-zeroes, 'r' read, 't' truncate.
struct Op {
    char kind;
    uint64_t off, len;
};

std::vector<Op> ops(const TestNode *rec)
{
    static const char kKinds[] = "rwzdft";
    std::vector<Op> v;
    for (const TestRequest &r : rec->log()) {
        v.push_back({kKinds[static_cast<unsigned>(r.op)], static_cast<uint64_t>(r.offset),
                     static_cast<uint64_t>(r.bytes)});
    }
    return v;
}

const DriverRegistry &registry() { return test_registry(); }

nlohmann::json file_json(const std::string &path)
{
    return {{"driver", "file"}, {"filename", path}, {"discard", "unmap"}};
}

// qcow2 over rec over file (rec = true) or directly over file; extra: more
// qcow2 options ({"overlap-check": "all"}).
BlockdevOptions qcow2_opts(const std::string &path, bool rec = false, const nlohmann::json &extra = {})
{
    nlohmann::json j = {{"driver", "qcow2"}, {"node-name", "q"}, {"discard", "unmap"}};
    if (rec) j["file"] = {{"driver", "test-mem"}, {"file", file_json(path)}};
    else j["file"] = file_json(path);
    if (extra.is_object()) j.update(extra);
    return must_parse_json(j);
}

struct Env {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph{&registry()};
    Qcow2Node *q = nullptr;
    std::unique_ptr<BlockBackend> b;
    ~Env() { close(); }
    void open(const BlockdevOptions &o)
    {
        auto r = graph.add_node(o);
        ck_assert_msg(r.ok(), "add_node: %s", r.ok() ? "" : r.msg().c_str());
        q = dynamic_cast<Qcow2Node *>(r.value());
        ck_assert_ptr_nonnull(q);
        if (TestNode *t = rec()) t->set_logging(true);
        auto bk = BlockBackend::create(q, kPermConsistentRead | kPermWrite | kPermResize, kPermAll, "test");
        ck_assert_msg(bk.ok(), "backend: %s", bk.ok() ? "" : bk.msg().c_str());
        b = std::move(bk.value());
    }
    // The recorder between qcow2 and its file, or nullptr.
    TestNode *rec() const { return TestNode::from(q->file_child()->node()); }
    void close()
    {
        b.reset();
        graph.close_all();
        q = nullptr;
    }
    int write(int64_t off, const std::vector<uint8_t> &d)
    {
        return run_in_coroutine([&] { return b->co_pwrite(off, static_cast<int64_t>(d.size()), d.data()); });
    }
    std::vector<uint8_t> read(int64_t off, size_t len)
    {
        std::vector<uint8_t> d(len);
        ck_assert_int_eq(run_in_coroutine([&] { return b->co_pread(off, static_cast<int64_t>(len), d.data()); }), 0);
        return d;
    }
    int flush() { return run_in_coroutine([&] { return b->co_flush(); }); }
    qcow2::HostMapping mapping(uint64_t off)
    {
        qcow2::HostMapping m;
        ck_assert_int_eq(run_in_coroutine([&] { return q->co_get_mapping(off, 1, &m); }), 0);
        return m;
    }
    // Runs fns as concurrent coroutines until all are done.
    void parallel(std::vector<std::function<void()>> fns)
    {
        size_t done = 0;
        for (auto &f : fns) {
            Coroutine *co = coroutine_create_fn([&f, &done] {
                f();
                done++;
            });
            ctx->co_enter(co);
        }
        while (done < fns.size()) ctx->iterate(true);
    }
};

std::vector<uint8_t> fill(size_t len, uint8_t v) { return std::vector<uint8_t>(len, v); }

int qemu_img_check(const std::string &path) { return sh("qemu-img check '" + path + "'"); }

#define REQUIRE_QEMU_IMG()                                                  \
    do {                                                                    \
        ck_assert_msg(have_qemu_img(), "qemu-img is not installed (qemu-utils)"); \
    } while (0)

// ---------------------------------------------------------------- ordering

// An allocating write, then a flush: the refcount block and the data reach
// the file, and a flush completes, before the L2 write that points at the
// new cluster. A discard: the L2 update reaches the file, and a flush
// completes, before the refcount block write that frees the cluster.
START_TEST(test_write_ordering)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("order.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + path + "' 64M"), 0);
    Env e;
    e.open(qcow2_opts(path, true));
    TestNode *rec = e.rec();
    ck_assert_int_eq(e.write(1 << 20, fill(65536, 0xab)), 0);
    ck_assert_int_eq(e.flush(), 0);
    const uint64_t data = e.mapping(1 << 20).host_offset;
    const uint64_t l2 = file_be64(path, e.q->header().l1_table_offset) & qcow2::kL1eOffsetMask;
    const uint64_t rb = file_be64(path, e.q->header().refcount_table_offset) & qcow2::kReftOffsetMask;
    ck_assert(data && l2 && rb);
    auto last_index = [&](auto pred, size_t before) {
        long idx = -1;
        for (size_t i = 0; i < before; i++) {
            if (pred(ops(rec)[i])) idx = static_cast<long>(i);
        }
        return idx;
    };
    // The last L2 write (it holds the data cluster's entry).
    long l2w = last_index([&](const Op &o) { return o.kind == 'w' && o.off <= l2 && l2 < o.off + o.len; },
                          ops(rec).size());
    ck_assert_int_ge(l2w, 0);
    long dw = last_index([&](const Op &o) { return o.kind == 'w' && o.off == data; }, static_cast<size_t>(l2w));
    long rw = last_index([&](const Op &o) { return o.kind == 'w' && o.off == rb; }, static_cast<size_t>(l2w));
    long fl = last_index([&](const Op &o) { return o.kind == 'f'; }, static_cast<size_t>(l2w));
    ck_assert_msg(dw >= 0 && rw >= 0 && fl >= 0, "data %ld refblock %ld flush %ld before L2 %ld", dw, rw, fl, l2w);
    ck_assert_msg(dw < fl && rw < fl, "flush %ld must follow data %ld and refblock %ld (L2 %ld)", fl, dw, rw, l2w);

    // Free: discard the cluster, flush.
    rec->reset_counters();
    ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_pdiscard(1 << 20, 65536); }), 0);
    ck_assert_int_eq(e.flush(), 0);
    long l2w2 = last_index([&](const Op &o) { return o.kind == 'w' && o.off <= l2 && l2 < o.off + o.len; },
                           ops(rec).size());
    long rw2 = last_index([&](const Op &o) { return o.kind == 'w' && o.off == rb; }, ops(rec).size());
    ck_assert_msg(l2w2 >= 0 && rw2 > l2w2, "refblock write %ld must follow the L2 write %ld", rw2, l2w2);
    bool flush_between = false;
    for (long i = l2w2 + 1; i < rw2; i++) flush_between |= ops(rec)[static_cast<size_t>(i)].kind == 'f';
    ck_assert_msg(flush_between, "no flush between the L2 update and the refcount decrement");
    e.close();
    ck_assert_int_eq(qemu_img_check(path), 0);
}
END_TEST

// Copy-on-write from the backing file: head, guest data and tail reach the
// file as one write of the whole new cluster (QEMU's perform_cow).
START_TEST(test_cow_one_write)
{
    REQUIRE_QEMU_IMG();
    const std::string base = tmp_path("cowbase.qcow2"), path = tmp_path("cow.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + base + "' 4M"), 0);
    ck_assert_int_eq(sh("qemu-io -c 'write -P 0x5a 0 4M' '" + base + "'"), 0);
    ck_assert_int_eq(sh("qemu-img create -f qcow2 -b '" + base + "' -F qcow2 '" + path + "' 4M"), 0);
    Env e;
    // The backing file is given explicitly: opening the one named in the
    // header fails while a filter sits between qcow2 and its file (the
    // backing file's options are copied from the filter's).
    e.open(qcow2_opts(path, true, {{"backing", {{"driver", "qcow2"}, {"file", file_json(base)}}}}));
    TestNode *rec = e.rec();
    rec->reset_counters();
    ck_assert_int_eq(e.write(65536 + 1000, fill(3000, 1)), 0);
    const uint64_t host = e.mapping(65536).host_offset;
    int writes = 0;
    for (const Op &op : ops(rec)) {
        if (op.kind == 'w' && op.off < host + 65536 && host < op.off + op.len) {
            writes++;
            ck_assert_int_eq(op.off, host);
            ck_assert_int_eq(op.len, 65536);
        }
    }
    ck_assert_int_eq(writes, 1);
    auto d = e.read(65536, 65536);
    for (size_t i = 0; i < d.size(); i++) ck_assert_int_eq(d[i], i >= 1000 && i < 4000 ? 1 : 0x5a);
    e.close();
    ck_assert_int_eq(qemu_img_check(path), 0);
}
END_TEST

// Many requests writing into the same unallocated clusters at once: each
// guest cluster gets exactly one host cluster, all data is there, no leak.
START_TEST(test_concurrent_same_cluster)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("conc.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 -o cluster_size=64k '" + path + "' 16M"), 0);
    Env e;
    e.open(qcow2_opts(path));
    std::vector<std::function<void()>> fns;
    std::vector<int> rets(64, 1);
    for (int i = 0; i < 64; i++) {
        // 4 guest clusters x 16 pieces of 4 KiB, in a scrambled order.
        const int piece = (i * 37) % 64;
        fns.push_back([&, i, piece] {
            std::vector<uint8_t> d(4096, static_cast<uint8_t>(piece + 1));
            rets[i] = e.b->co_pwrite(static_cast<int64_t>(piece) * 4096, 4096, d.data());
        });
    }
    e.parallel(fns);
    for (int i = 0; i < 64; i++) ck_assert_int_eq(rets[i], 0);
    for (int c = 0; c < 4; c++) {
        const auto m0 = e.mapping(static_cast<uint64_t>(c) * 65536);
        ck_assert(m0.type == qcow2::SubclusterType::kNormal);
        for (int p = 0; p < 16; p++) {
            const auto m = e.mapping(static_cast<uint64_t>(c) * 65536 + p * 4096);
            ck_assert_int_eq(m.host_offset, m0.host_offset + p * 4096);
        }
    }
    for (int piece = 0; piece < 64; piece++) {
        auto d = e.read(piece * 4096, 4096);
        ck_assert(d == fill(4096, static_cast<uint8_t>(piece + 1)));
    }
    e.close();
    ck_assert_int_eq(qemu_img_check(path), 0);
}
END_TEST

// A discard of a cluster whose rewrite is still in flight frees it, but
// the allocator must not hand it out until the rewrite has completed
// (QEMU tests/qcow2-discard-during-rewrite).
START_TEST(test_discard_during_rewrite)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("race.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + path + "' 16M"), 0);
    Env e;
    e.open(qcow2_opts(path, true));
    TestNode *rec = e.rec();
    ck_assert_int_eq(e.write(0, fill(65536, 1)), 0);
    const uint64_t host_a = e.mapping(0).host_offset;
    rec->hold(TestMatch{test_op_bit(TestOp::kWrite), static_cast<int64_t>(host_a), 65536});
    int r_rewrite = 1, r_discard = 1, r_new = 1;
    bool rewrite_started = false;
    uint64_t host_b = 0;
    size_t done = 0;
    Coroutine *w = coroutine_create_fn([&] {
        std::vector<uint8_t> d(65536, 2);
        rewrite_started = true;
        r_rewrite = e.b->co_pwrite(0, 65536, d.data());
        done++;
    });
    e.ctx->co_enter(w);
    while (!rec->held()) e.ctx->iterate(true);
    ck_assert(rewrite_started);
    // While the rewrite is held: discard guest cluster 0, write cluster 1.
    Coroutine *d = coroutine_create_fn([&] {
        r_discard = e.b->co_pdiscard(0, 65536);
        std::vector<uint8_t> v(65536, 3);
        r_new = e.b->co_pwrite(65536, 65536, v.data());
        qcow2::HostMapping m;
        e.q->co_get_mapping(65536, 1, &m);
        host_b = m.host_offset;
        done++;
    });
    e.ctx->co_enter(d);
    while (done < 1) e.ctx->iterate(true);
    ck_assert_int_eq(r_discard, 0);
    ck_assert_int_eq(r_new, 0);
    ck_assert_msg(host_b != host_a, "cluster 0x%" PRIx64 " reused while a write to it was in flight", host_a);
    rec->release();
    while (done < 2) e.ctx->iterate(true);
    ck_assert_int_eq(r_rewrite, 0);
    ck_assert(e.read(65536, 65536) == fill(65536, 3));
    e.close();
    int rc = qemu_img_check(path);
    ck_assert_int_eq(rc, 0);
}
END_TEST

// The same for a read in flight: the cluster it reads is not handed to a
// new allocation (the read would return another cluster's data).
START_TEST(test_discard_during_read)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("rrace.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + path + "' 16M"), 0);
    Env e;
    e.open(qcow2_opts(path, true));
    TestNode *rec = e.rec();
    ck_assert_int_eq(e.write(0, fill(65536, 1)), 0);
    const uint64_t host_a = e.mapping(0).host_offset;
    rec->hold(TestMatch{test_op_bit(TestOp::kRead), static_cast<int64_t>(host_a), 65536});
    std::vector<uint8_t> got(65536);
    int r_read = 1;
    size_t done = 0;
    uint64_t host_b = 0;
    Coroutine *rd = coroutine_create_fn([&] {
        r_read = e.b->co_pread(0, 65536, got.data());
        done++;
    });
    e.ctx->co_enter(rd);
    while (!rec->held()) e.ctx->iterate(true);
    Coroutine *w = coroutine_create_fn([&] {
        ck_assert_int_eq(e.b->co_pdiscard(0, 65536), 0);
        std::vector<uint8_t> v(65536, 3);
        ck_assert_int_eq(e.b->co_pwrite(65536, 65536, v.data()), 0);
        qcow2::HostMapping m;
        e.q->co_get_mapping(65536, 1, &m);
        host_b = m.host_offset;
        done++;
    });
    e.ctx->co_enter(w);
    while (done < 1) e.ctx->iterate(true);
    ck_assert_msg(host_b != host_a, "cluster 0x%" PRIx64 " reused while a read of it was in flight", host_a);
    rec->release();
    while (done < 2) e.ctx->iterate(true);
    ck_assert_int_eq(r_read, 0);
    ck_assert(got == fill(65536, 1));
    e.close();
    ck_assert_int_eq(qemu_img_check(path), 0);
}
END_TEST

// A data cluster pointing into the refcount table: a write there is
// refused (-EIO), the image is marked corrupt on disk, writes stop; with
// overlap-check=none nothing is checked (not exercised: it would destroy
// the table). Read-only opens still work.
START_TEST(test_overlap_check)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("ol.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + path + "' 16M"), 0);
    ck_assert_int_eq(sh("qemu-io -c 'write -P 1 0 64k' '" + path + "'"), 0);
    const uint64_t l1 = file_be64(path, 40), rt = file_be64(path, 48);
    const uint64_t l2 = file_be64(path, l1) & qcow2::kL1eOffsetMask;
    patch_file(path, l2, rt | qcow2::kOflagCopied);
    for (const char *mode : {"constant", "cached", "all"}) {
        patch_file(path, 72, 0);   // clear corrupt from the previous round
        Env e;
        auto o = qcow2_opts(path, false, {{"overlap-check", mode}});
        e.open(o);
        ck_assert_int_eq(e.write(0, fill(512, 9)), -EIO);
        ck_assert(e.q->write_stopped());
        ck_assert_int_eq(e.write(1 << 20, fill(512, 9)), -EIO);
        e.close();
        ck_assert_int_eq(file_be64(path, 72) & qcow2::kIncompatCorrupt, qcow2::kIncompatCorrupt);
        // The refcount table is intact.
        ck_assert_int_ne(file_be64(path, rt), 9ULL * 0x0101010101010101ULL);
    }
    ck_assert_int_eq(sh("qemu-img info '" + path + "' | grep -q 'corrupt: true'"), 0);
}
END_TEST

// Lazy refcounts: the dirty bit is on disk while writes are in progress and
// cleared by a clean close. A copy taken while the image is open (a crash)
// is dirty; the next writable open repairs it, and qemu-img check is clean.
START_TEST(test_lazy_refcounts)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("lazy.qcow2"), crash = tmp_path("crash.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 -o lazy_refcounts=on '" + path + "' 16M"), 0);
    {
        Env e;
        e.open(qcow2_opts(path));
        ck_assert(e.q->lazy_refcounts());
        ck_assert_int_eq(file_be64(path, 72) & qcow2::kIncompatDirty, 0);
        for (int i = 0; i < 20; i++) ck_assert_int_eq(e.write(i * 200000, fill(70000, static_cast<uint8_t>(i + 1))), 0);
        ck_assert_int_eq(file_be64(path, 72) & qcow2::kIncompatDirty, qcow2::kIncompatDirty);
        ck_assert_int_eq(sh("cp '" + path + "' '" + crash + "'"), 0);
        e.close();
        ck_assert_int_eq(file_be64(path, 72) & qcow2::kIncompatDirty, 0);
    }
    ck_assert_int_eq(qemu_img_check(path), 0);
    ck_assert_int_eq(file_be64(crash, 72) & qcow2::kIncompatDirty, qcow2::kIncompatDirty);
    {
        Env e;
        e.open(qcow2_opts(crash));
        ck_assert_int_eq(file_be64(crash, 72) & qcow2::kIncompatDirty, 0);
        ck_assert_int_eq(e.flush(), 0);
    }
    ck_assert_int_eq(qemu_img_check(crash), 0);
    // Data written before the copy and flushed by nobody may be lost, but
    // whatever the L2 tables reference is counted: compare the two images'
    // committed view only through check. The clean one holds all data.
    ck_assert_int_eq(sh("qemu-io -c 'read -P 20 3800000 70000' '" + path + "' | grep -q 'verification failed'"), 1);
}
END_TEST

// Shrinking an image with internal snapshots is refused; growing works.
START_TEST(test_shrink_with_snapshot)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("snap.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + path + "' 16M"), 0);
    ck_assert_int_eq(sh("qemu-img snapshot -c s1 '" + path + "'"), 0);
    Env e;
    e.open(qcow2_opts(path));
    ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_truncate(8 << 20, false, PreallocMode::kOff); }), -ENOTSUP);
    ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_truncate(32 << 20, false, PreallocMode::kOff); }), 0);
    ck_assert_int_eq(e.b->getlength(), 32 << 20);
    ck_assert_int_eq(e.write(30 << 20, fill(4096, 5)), 0);
    e.close();
    ck_assert_int_eq(qemu_img_check(path), 0);
    ck_assert_int_eq(sh("qemu-io -c 'read -P 5 30M 4k' '" + path + "' | grep -q 'verification failed'"), 1);
}
END_TEST

// discard-no-unref keeps the host cluster allocated (a zero cluster with
// its offset); without it the cluster is freed.
START_TEST(test_discard_no_unref)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("nounref.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + path + "' 16M"), 0);
    for (bool nounref : {true, false}) {
        Env e;
        auto o = qcow2_opts(path, false, {{"discard-no-unref", nounref}});
        e.open(o);
        ck_assert_int_eq(e.write(0, fill(65536, 7)), 0);
        const uint64_t host = e.mapping(0).host_offset;
        ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_pdiscard(0, 65536); }), 0);
        const auto m = e.mapping(0);
        if (nounref) {
            ck_assert(m.type == qcow2::SubclusterType::kZeroAlloc);
            ck_assert_int_eq(m.host_offset, host);
            // pass-discard-request (default on): the data is dropped in the file.
            ck_assert(read_file(path, host, 65536) == fill(65536, 0));
        } else {
            ck_assert(m.type == qcow2::SubclusterType::kZeroPlain);
            uint64_t rc = 9;
            ck_assert_int_eq(run_in_coroutine([&] { return e.q->co_get_refcount(host >> 16, &rc); }), 0);
            ck_assert_int_eq(rc, 0);
        }
        ck_assert(e.read(0, 65536) == fill(65536, 0));
        e.close();
        ck_assert_int_eq(qemu_img_check(path), 0);
    }
}
END_TEST

// Growing with preallocation (metadata, falloc, full): clusters allocated
// and reading as zeros; qemu-img check clean; qemu-img map shows data.
START_TEST(test_truncate_prealloc)
{
    REQUIRE_QEMU_IMG();
    for (auto mode : {PreallocMode::kMetadata, PreallocMode::kFalloc, PreallocMode::kFull}) {
        const std::string path = tmp_path("pre.qcow2");
        ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + path + "' 1M"), 0);
        Env e;
        e.open(qcow2_opts(path));
        // Garbage in a cluster that is freed again: preallocation reuses it.
        ck_assert_int_eq(e.write(0, fill(65536, 0xee)), 0);
        ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_pdiscard(0, 65536); }), 0);
        ck_assert_int_eq(e.flush(), 0);
        ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_truncate(4 << 20, false, mode); }), 0);
        const auto m = e.mapping(2 << 20);
        ck_assert(m.type == qcow2::SubclusterType::kNormal);
        for (uint64_t off = 1 << 20; off < (4u << 20); off += 65536) {
            ck_assert(e.read(static_cast<int64_t>(off), 65536) == fill(65536, 0));
        }
        e.close();
        ck_assert_int_eq(qemu_img_check(path), 0);
        unlink(path.c_str());
    }
}
END_TEST

// pass-discard-request: a guest discard that frees a cluster discards it in
// the file, after the L2 update and the refcount are on disk (at the
// flush); off: the file sees no discard. pass-discard-other: the old L1
// table freed by L1 growth is discarded in the file only when on.
START_TEST(test_pass_discard)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("pd.qcow2");
    for (bool on : {true, false}) {
        ck_assert_int_eq(sh("qemu-img create -f qcow2 -o cluster_size=4k '" + path + "' 1M"), 0);
        Env e;
        auto o = qcow2_opts(path, true, {{"pass-discard-request", on}, {"pass-discard-other", on}});
        e.open(o);
        TestNode *rec = e.rec();
        ck_assert_int_eq(e.write(0, fill(65536, 1)), 0);
        const uint64_t host = e.mapping(8192).host_offset;
        ck_assert_int_eq(e.flush(), 0);
        rec->reset_counters();
        ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_pdiscard(8192, 4096); }), 0);
        for (const Op &op : ops(rec)) ck_assert_msg(op.kind != 'd', "file discard before the flush");
        ck_assert_int_eq(e.flush(), 0);
        long flush_at = -1, discard_at = -1;
        for (size_t i = 0; i < ops(rec).size(); i++) {
            if (ops(rec)[i].kind == 'f' && flush_at < 0) flush_at = static_cast<long>(i);
            if (ops(rec)[i].kind == 'd' && ops(rec)[i].off == host) discard_at = static_cast<long>(i);
        }
        if (on) {
            ck_assert_msg(discard_at > flush_at && flush_at >= 0, "discard %ld flush %ld", discard_at, flush_at);
        } else {
            ck_assert_int_eq(discard_at, -1);
        }
        // Growth beyond the L1 table (4 KiB clusters: 512 entries of 2 MiB each,
        // so 2 GiB needs a second L1 cluster): the old table is freed.
        const uint64_t old_l1 = e.q->header().l1_table_offset;
        rec->reset_counters();
        ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_truncate(int64_t{3} << 30, false, PreallocMode::kOff); }), 0);
        ck_assert_int_ne(e.q->header().l1_table_offset, old_l1);
        ck_assert_int_eq(e.flush(), 0);
        bool old_discarded = false;
        for (const Op &op : ops(rec)) old_discarded |= op.kind == 'd' && op.off <= old_l1 && old_l1 < op.off + op.len;
        ck_assert(old_discarded == on);
        ck_assert_int_eq(e.write((int64_t{3} << 30) - 4096, fill(4096, 3)), 0);
        e.close();
        ck_assert_int_eq(qemu_img_check(path), 0);
        ck_assert_int_eq(sh("qemu-io -c 'read -P 3 3145724k 4k' -c 'read -P 0 8k 4k' -c 'read -P 1 12k 52k' '" + path +
                            "' | grep -q 'verification failed'"),
                         1);
        unlink(path.c_str());
    }
}
END_TEST

// Compressed writes: compressible clusters are stored compressed, several
// sharing one host cluster (byte-granular allocation, one reference each);
// incompressible data is stored plain; zlib and zstd as the image says.
START_TEST(test_compressed_writes)
{
    REQUIRE_QEMU_IMG();
    for (const char *type : {"zlib", "zstd"}) {
        const std::string path = tmp_path(std::string("c-") + type + ".qcow2");
        ck_assert_int_eq(sh("qemu-img create -f qcow2 -o compression_type=" + std::string(type) + " '" + path + "' 4M"), 0);
        Env e;
        e.open(qcow2_opts(path));
        std::vector<uint8_t> text(65536);
        for (size_t i = 0; i < text.size(); i++) text[i] = static_cast<uint8_t>("qcow2 compressed "[i % 17]);
        std::vector<uint8_t> noise(65536);
        uint32_t x = 12345;
        for (auto &b : noise) {
            x = x * 1103515245 + 12345;
            b = static_cast<uint8_t>(x >> 16);
        }
        auto wc = [&](int64_t off, const std::vector<uint8_t> &d) {
            return run_in_coroutine([&] { return e.b->co_pwrite(off, 65536, d.data(), kReqWriteCompressed); });
        };
        ck_assert_int_eq(wc(0, text), 0);
        ck_assert_int_eq(wc(65536, text), 0);
        ck_assert_int_eq(wc(131072, noise), 0);
        const auto m0 = e.mapping(0), m1 = e.mapping(65536), m2 = e.mapping(131072);
        ck_assert(m0.type == qcow2::SubclusterType::kCompressed);
        ck_assert(m1.type == qcow2::SubclusterType::kCompressed);
        ck_assert_int_eq(m0.comp_offset >> 16, m1.comp_offset >> 16);   // same host cluster
        ck_assert(m2.type == qcow2::SubclusterType::kNormal);
        uint64_t rc = 0;
        ck_assert_int_eq(run_in_coroutine([&] { return e.q->co_get_refcount(m0.comp_offset >> 16, &rc); }), 0);
        ck_assert_int_eq(rc, 2);
        // Unaligned compressed writes are refused.
        ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_pwrite(512, 4096, text.data(), kReqWriteCompressed); }),
                         -EINVAL);
        // Overwriting one compressed cluster normally drops one reference.
        ck_assert_int_eq(e.write(0, fill(4096, 9)), 0);
        ck_assert_int_eq(run_in_coroutine([&] { return e.q->co_get_refcount(m1.comp_offset >> 16, &rc); }), 0);
        ck_assert_int_eq(rc, 1);
        ck_assert(e.read(65536, 65536) == text);
        ck_assert(e.read(131072, 65536) == noise);
        e.close();
        ck_assert_int_eq(qemu_img_check(path), 0);
        ck_assert_int_eq(sh("qemu-img info '" + path + "' | grep -q 'compression type: " + type + "'"), 0);
        ck_assert_int_eq(sh("qemu-io -c 'read -P 9 0 4k' '" + path + "' | grep -q 'verification failed'"), 1);
    }
}
END_TEST

// Shrink into a cluster whose subclusters map several ways (extended L2),
// then grow back: the whole regrown tail of that cluster reads as zeros,
// not only its first run of subclusters. Here the first run after the cut
// is zero (a zero write), the rest unallocated over a backing file full of
// 0x5a: it must not show the backing file again.
START_TEST(test_regrow_mixed_subclusters)
{
    REQUIRE_QEMU_IMG();
    const std::string base = tmp_path("rgbase.qcow2"), path = tmp_path("rg.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + base + "' 1M"), 0);
    ck_assert_int_eq(sh("qemu-io -c 'write -P 0x5a 0 1M' '" + base + "'"), 0);
    ck_assert_int_eq(sh("qemu-img create -f qcow2 -o extended_l2=on,cluster_size=16k -b '" + base +
                        "' -F qcow2 '" + path + "' 1M"),
                     0);
    Env e;
    e.open(qcow2_opts(path));
    // Cluster 4 = [64k, 80k), 512-byte subclusters: 0..17 zero, 18..31 backing.
    ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_pwrite_zeroes(65536, 9216); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_truncate(65536 + 7168, false, PreallocMode::kOff); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_truncate(1 << 20, false, PreallocMode::kOff); }), 0);
    ck_assert(e.read(65536, 16384) == fill(16384, 0));
    ck_assert(e.read(0, 65536) == fill(65536, 0x5a));
    e.close();
    ck_assert_int_eq(qemu_img_check(path), 0);
    ck_assert_int_eq(sh("qemu-io -c 'read -P 0x5a 0 64k' -c 'read -P 0 64k 960k' '" + path +
                        "' | grep -q 'verification failed'"),
                     1);
}
END_TEST

// A cluster mapped before open but lying past the end of the file (a crash
// kept the L2 entry and the refcount, not the data write that would have
// grown the file) is written in place, freed, and handed out again for a
// partial write: the rest of that cluster must read as zeros, not as the
// data written before (the cluster is not "never written" any more).
START_TEST(test_realloc_past_eof_cluster)
{
    REQUIRE_QEMU_IMG();
    const std::string path = tmp_path("eof.qcow2");
    ck_assert_int_eq(sh("qemu-img create -f qcow2 '" + path + "' 16M"), 0);
    ck_assert_int_eq(sh("qemu-io -c 'write -P 1 0 64k' '" + path + "'"), 0);
    struct stat st;
    ck_assert_int_eq(stat(path.c_str(), &st), 0);
    const uint64_t data = static_cast<uint64_t>(st.st_size) - 65536;   // the data cluster is the last one
    ck_assert_int_eq(truncate(path.c_str(), static_cast<off_t>(data)), 0);
    Env e;
    e.open(qcow2_opts(path, false, {{"pass-discard-request", false}}));
    ck_assert_int_eq(e.mapping(0).host_offset, data);
    ck_assert_int_eq(e.write(0, fill(65536, 7)), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return e.b->co_pdiscard(0, 65536); }), 0);
    ck_assert_int_eq(e.write(1 << 20, fill(4096, 9)), 0);
    ck_assert_int_eq(e.mapping(1 << 20).host_offset, data);   // the freed cluster, reused
    auto d = e.read(1 << 20, 65536);
    for (size_t i = 0; i < d.size(); i++) ck_assert_int_eq(d[i], i < 4096 ? 9 : 0);
    e.close();
    ck_assert_int_eq(qemu_img_check(path), 0);
    ck_assert_int_eq(sh("qemu-io -c 'read -P 9 1M 4k' -c 'read -P 0 1028k 60k' -c 'read -P 0 0 64k' '" + path +
                        "' | grep -q 'verification failed'"),
                     1);
}
END_TEST

Suite *qcow2_write_suite()
{
    Suite *s = suite_create("qcow2-write");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_write_ordering);
    tcase_add_test(tc, test_cow_one_write);
    tcase_add_test(tc, test_concurrent_same_cluster);
    tcase_add_test(tc, test_discard_during_rewrite);
    tcase_add_test(tc, test_discard_during_read);
    tcase_add_test(tc, test_overlap_check);
    tcase_add_test(tc, test_lazy_refcounts);
    tcase_add_test(tc, test_shrink_with_snapshot);
    tcase_add_test(tc, test_discard_no_unref);
    tcase_add_test(tc, test_truncate_prealloc);
    tcase_add_test(tc, test_pass_discard);
    tcase_add_test(tc, test_compressed_writes);
    tcase_add_test(tc, test_regrow_mixed_subclusters);
    tcase_add_test(tc, test_realloc_past_eof_cluster);
    suite_add_tcase(s, tc);
    return s;
}

} // namespace

int main()
{
    SRunner *sr = srunner_create(qcow2_write_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

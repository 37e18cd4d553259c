// Unit tests for block/blkdebug.cc: error injection rules (iotype, errno,
// sector/offset, once, after, event arming, state machine), transparency,
// and forced request limits.
#include <fcntl.h>
#include <unistd.h>

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
#include "qapi/option-reader.h"
#include "util/aio.h"

#include "tests/unit/testdrv.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

#include "tests/unit/tmpdir.h"

namespace bg {
extern const BlockDriver kDriverBlkdebug;
}

using namespace bg;
using namespace bgtest;

namespace {

uint8_t pattern_byte(int64_t i) { return static_cast<uint8_t>((i * 13 + i / 509) % 251 + 1); }

void make_file(const std::string &path, int64_t size)
{
    int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0600);
    ck_assert_int_ge(fd, 0);
    std::vector<uint8_t> buf(size);
    for (int64_t i = 0; i < size; i++) buf[i] = pattern_byte(i);
    ck_assert_int_eq(pwrite(fd, buf.data(), buf.size(), 0), size);
    close(fd);
}

std::vector<uint8_t> file_bytes(const std::string &path, int64_t off, int64_t len)
{
    std::vector<uint8_t> buf(len);
    int fd = open(path.c_str(), O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, buf.data(), len, off), len);
    close(fd);
    return buf;
}

BlockdevRef name_ref(const std::string &name) { return ref_to(name); }

BlockdevOptions null_opts(uint64_t size = 1 << 20, const char *driver = "null-co")
{
    return must_parse_json({{"driver", driver}, {"size", size}}, builtin_drivers());
}

// raw over file over path.
BlockdevOptions raw_file_opts(const std::string &path)
{
    return must_parse_json({{"driver", "raw"}, {"file", {{"driver", "file"}, {"filename", path}}}}, builtin_drivers());
}

// blkdebug's options as the tests write them (the driver's own structs are
// private to block/blkdebug.cc): json() gives the JSON members, which the
// driver decodes. Defaults as the driver's; every value a test sets is
// written, even one the decoder refuses.
struct Rule {
    std::string event;
    std::optional<std::string> iotype;   // "read", "write", ...; absent: QEMU's default set
    int64_t err = EIO;
    int64_t sector = -1;
    std::optional<uint64_t> offset, bytes;
    uint64_t after = 0;
    bool once = false;
    bool immediately = false;
    int64_t state = 0;

    nlohmann::json json() const
    {
        nlohmann::json j = {{"errno", err}};
        if (!event.empty()) j["event"] = event;
        if (iotype) j["iotype"] = *iotype;
        if (sector != -1) j["sector"] = sector;
        if (offset) j["offset"] = *offset;
        if (bytes) j["bytes"] = *bytes;
        if (after) j["after"] = after;
        if (once) j["once"] = true;
        if (immediately) j["immediately"] = true;
        if (state) j["state"] = state;
        return j;
    }
};

struct SetState {
    std::string event;
    int64_t state = 0;
    int64_t new_state = 0;
};

struct Dbg {
    std::string config;
    uint32_t align = 0, max_transfer = 0, opt_write_zero = 0, max_write_zero = 0, opt_discard = 0, max_discard = 0;
    std::vector<Rule> inject_error;
    std::vector<SetState> set_state;

    void put(nlohmann::json &j) const
    {
        if (!config.empty()) j["config"] = config;
        const std::pair<const char *, uint32_t> limits[] = {
            {"align", align}, {"max-transfer", max_transfer}, {"opt-write-zero", opt_write_zero},
            {"max-write-zero", max_write_zero}, {"opt-discard", opt_discard}, {"max-discard", max_discard},
        };
        for (const auto &[key, value] : limits) {
            if (value) j[key] = value;
        }
        if (!inject_error.empty()) {
            j["inject-error"] = nlohmann::json::array();
            for (const Rule &r : inject_error) j["inject-error"].push_back(r.json());
        }
        if (!set_state.empty()) {
            j["set-state"] = nlohmann::json::array();
            for (const SetState &x : set_state) {
                nlohmann::json e = {{"event", x.event}, {"new_state", x.new_state}};
                if (x.state) e["state"] = x.state;
                j["set-state"].push_back(e);
            }
        }
    }
};

nlohmann::json dbg_json(const BlockdevRef &image, const Dbg &d = {}, const std::string &name = "dbg")
{
    nlohmann::json j = {{"driver", "blkdebug"}, {"node-name", name}, {"discard", "unmap"}};
    put_ref(j, "image", image);
    d.put(j);
    return j;
}

BlockdevOptions dbg_opts(const BlockdevRef &image, const Dbg &d = {}, const std::string &name = "dbg")
{
    return must_parse_json(dbg_json(image, d, name));
}

Rule rule(std::optional<std::string> iotype, int err, const std::string &event = "")
{
    Rule r;
    r.iotype = std::move(iotype);
    r.err = err;
    r.event = event;
    r.immediately = true;
    return r;
}

constexpr BlockPerm kRW = kPermConsistentRead | kPermWrite;

struct Env {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph{&test_registry()};
    BlockNode *node = nullptr;
    std::unique_ptr<BlockBackend> blk;
    ~Env()
    {
        blk.reset();
        graph.close_all();
    }
    BlockNode *add(const BlockdevOptions &o)
    {
        auto r = graph.add_node(o);
        ck_assert_msg(r.ok(), "add_node: %s", r.ok() ? "" : r.msg().c_str());
        return r.value();
    }
    // Opens o as the root and a backend on it.
    void open(const BlockdevOptions &o, BlockPerm perm = kRW | kPermResize)
    {
        node = add(o);
        auto b = BlockBackend::create(node, perm, kPermAll, "test");
        ck_assert_msg(b.ok(), "backend: %s", b.ok() ? "" : b.msg().c_str());
        blk = std::move(b.value());
    }
    int read(int64_t off, int64_t len)
    {
        std::vector<uint8_t> buf(len);
        return run_in_coroutine([&] { return blk->co_pread(off, len, buf.data()); });
    }
    int write(int64_t off, int64_t len, uint8_t fill = 0x61)
    {
        std::vector<uint8_t> buf(len, fill);
        return run_in_coroutine([&] { return blk->co_pwrite(off, len, buf.data()); });
    }
    int zeroes(int64_t off, int64_t len) { return run_in_coroutine([&] { return blk->co_pwrite_zeroes(off, len); }); }
    int discard(int64_t off, int64_t len) { return run_in_coroutine([&] { return blk->co_pdiscard(off, len); }); }
    int flush() { return run_in_coroutine([&] { return blk->co_flush(); }); }
    int status(int64_t off, int64_t len)
    {
        int64_t pnum, map;
        BlockNode *f;
        return run_in_coroutine([&] { return blk->co_block_status(true, off, len, &pnum, &map, &f); });
    }
    void event(const char *name) { blk->root()->debug_event(name); }
};

// Decoding (with the graph's registry) or opening o fails with msg.
void expect_open_error(const nlohmann::json &o, const std::string &msg)
{
    Env e;
    auto r = e.graph.add_node_json(o);
    ck_assert(!r.ok());
    ck_assert_msg(r.msg().find(msg) != std::string::npos, "got '%s', want '%s'", r.msg().c_str(), msg.c_str());
    ck_assert_int_eq(e.graph.nodes().size(), 0);
}

} // namespace

// ---------------------------------------------------------------- transparency

START_TEST(test_blkdebug_transparent)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    Env e;
    e.open(dbg_opts(inline_ref(raw_file_opts(path))));
    ck_assert_str_eq(e.node->driver_name(), "blkdebug");
    ck_assert_int_eq(e.blk->getlength(), 1 << 20);
    BdrvChild *c = e.node->filtered_child();
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(c->name().c_str(), "image");
    ck_assert_int_eq(c->role(), kRoleFiltered | kRolePrimary);
    // No rules nor limits: QEMU's "blkdebug:CONFIG:IMAGE" name.
    ck_assert(e.node->filename() == "blkdebug::" + c->node()->filename());

    std::vector<uint8_t> buf(200000);
    ck_assert_int_eq(run_in_coroutine([&] { return e.blk->co_pread(1001, buf.size(), buf.data()); }), 0);
    for (size_t i = 0; i < buf.size(); i++) ck_assert_int_eq(buf[i], pattern_byte(1001 + i));
    std::vector<uint8_t> w(70000);
    for (size_t i = 0; i < w.size(); i++) w[i] = static_cast<uint8_t>(i * 3);
    ck_assert_int_eq(run_in_coroutine([&] { return e.blk->co_pwrite(5000, w.size(), w.data()); }), 0);
    ck_assert_int_eq(e.zeroes(100000, 5000), 0);
    ck_assert_int_eq(e.discard(0, 4096), 0);
    ck_assert_int_eq(e.flush(), 0);
    ck_assert(file_bytes(path, 5000, w.size()) == w);
    auto z = file_bytes(path, 100000, 5000);
    for (uint8_t b : z) ck_assert_int_eq(b, 0);
    ck_assert_int_ge(e.status(0, 65536), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return e.blk->co_truncate(2 << 20, true, PreallocMode::kOff); }), 0);
    ck_assert_int_eq(e.blk->getlength(), 2 << 20);
}
END_TEST

// ---------------------------------------------------------------- iotypes

// Each iotype gets its own errno; the QEMU default set (no iotype) covers
// read, write, write-zeroes, discard and flush but not block status.
START_TEST(test_blkdebug_iotypes)
{
    Dbg d;
    d.inject_error = {rule("read", EIO), rule("write", ENOSPC),
                      rule("write-zeroes", EROFS), rule("discard", EBUSY),
                      rule("block-status", ENOLINK), rule("truncate", EFBIG)};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e.read(0, 4096), -EIO);
    ck_assert_int_eq(e.write(0, 4096), -ENOSPC);
    ck_assert_int_eq(e.zeroes(0, 4096), -EROFS);
    ck_assert_int_eq(e.discard(0, 4096), -EBUSY);
    ck_assert_int_eq(e.status(0, 4096), -ENOLINK);
    ck_assert_int_eq(run_in_coroutine([&] { return e.blk->co_truncate(4096, true, PreallocMode::kOff); }), -EFBIG);
    ck_assert_int_eq(e.flush(), 0);

    // Flush: only reaches the driver after a write (flush generations).
    Dbg f;
    f.inject_error = {rule("flush", ENOMEM)};
    Env g;
    g.open(dbg_opts(inline_ref(null_opts()), f));
    ck_assert_int_eq(g.read(0, 512), 0);
    ck_assert_int_eq(g.write(0, 512), 0);
    ck_assert_int_eq(g.flush(), -ENOMEM);

    // Default set.
    Dbg a;
    a.inject_error = {rule(std::nullopt, EACCES)};
    Env h;
    h.open(dbg_opts(inline_ref(null_opts()), a));
    ck_assert_int_eq(h.read(0, 4096), -EACCES);
    ck_assert_int_eq(h.write(0, 4096), -EACCES);
    ck_assert_int_eq(h.zeroes(0, 4096), -EACCES);
    ck_assert_int_eq(h.discard(0, 4096), -EACCES);
    ck_assert_int_ge(h.status(0, 4096), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return h.blk->co_truncate(4096, true, PreallocMode::kOff); }),
                     -ENOTSUP);   // forwarded: null cannot resize
}
END_TEST

// errno 0 (QEMU: stop matching, let the request through) cannot be given:
// the decoder accepts 1 to 4095 and names the list element.
START_TEST(test_blkdebug_errno_zero)
{
    Dbg d;
    d.inject_error = {rule("read", 0), rule("read", EIO)};
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "inject-error.0.errno: 0 is out of range (1 to 4095)");
    d.inject_error = {rule("read", EIO), rule("read", 4096)};
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "inject-error.1.errno: 4096 is out of range (1 to 4095)");
}
END_TEST

// ---------------------------------------------------------------- once / after

START_TEST(test_blkdebug_once_vs_always)
{
    Dbg d;
    Rule once = rule("read", EIO);
    once.once = true;
    d.inject_error = {once};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e.read(0, 512), -EIO);
    ck_assert_int_eq(e.read(0, 512), 0);
    ck_assert_int_eq(e.read(0, 512), 0);

    Dbg a;
    a.inject_error = {rule("read", EIO)};
    Env g;
    g.open(dbg_opts(inline_ref(null_opts()), a));
    for (int i = 0; i < 5; i++) ck_assert_int_eq(g.read(0, 512), -EIO);
    ck_assert_int_eq(g.write(0, 512), 0);
}
END_TEST

START_TEST(test_blkdebug_after)
{
    Dbg d;
    Rule r = rule("write", EIO);
    r.after = 2;
    d.inject_error = {r};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e.read(0, 512), 0);     // not matching: not counted
    ck_assert_int_eq(e.write(0, 512), 0);
    ck_assert_int_eq(e.write(0, 512), 0);
    ck_assert_int_eq(e.write(0, 512), -EIO);
    ck_assert_int_eq(e.write(0, 512), -EIO);

    Dbg o;
    r.once = true;
    r.after = 1;
    o.inject_error = {r};
    Env g;
    g.open(dbg_opts(inline_ref(null_opts()), o));
    ck_assert_int_eq(g.write(0, 512), 0);
    ck_assert_int_eq(g.write(0, 512), -EIO);
    ck_assert_int_eq(g.write(0, 512), 0);
}
END_TEST

// ---------------------------------------------------------------- position

START_TEST(test_blkdebug_sector)
{
    Dbg d;
    Rule r = rule("read", EIO);
    r.sector = 8;   // byte 4096
    d.inject_error = {r};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e.read(0, 4096), 0);
    ck_assert_int_eq(e.read(4096, 512), -EIO);
    ck_assert_int_eq(e.read(4095, 2), -EIO);
    ck_assert_int_eq(e.read(0, 65536), -EIO);
    ck_assert_int_eq(e.read(4097, 1000), 0);
    ck_assert_int_eq(e.read(8192, 512), 0);
    // Positional rules never match flush.
    Dbg f;
    Rule fr = rule(std::nullopt, EIO);
    fr.sector = 0;
    f.inject_error = {fr};
    Env g;
    g.open(dbg_opts(inline_ref(null_opts()), f));
    ck_assert_int_eq(g.write(512, 512), 0);
    ck_assert_int_eq(g.flush(), 0);
    ck_assert_int_eq(g.write(0, 512), -EIO);
}
END_TEST

START_TEST(test_blkdebug_offset_range)
{
    Dbg d;
    Rule r = rule("write", EIO);
    r.offset = 10000;
    r.bytes = 100;
    Rule tail = rule("read", ENXIO);
    tail.offset = 500000;   // to the end
    d.inject_error = {r, tail};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e.write(0, 10000), 0);
    ck_assert_int_eq(e.write(9000, 1001), -EIO);
    ck_assert_int_eq(e.write(10099, 1), -EIO);
    ck_assert_int_eq(e.write(10050, 10), -EIO);
    ck_assert_int_eq(e.write(10100, 5000), 0);
    ck_assert_int_eq(e.read(10000, 100), 0);
    ck_assert_int_eq(e.read(499999, 1), 0);
    ck_assert_int_eq(e.read(499999, 2), -ENXIO);
    ck_assert_int_eq(e.read((1 << 20) - 512, 512), -ENXIO);
}
END_TEST

// ---------------------------------------------------------------- events and states

START_TEST(test_blkdebug_event_arming)
{
    Dbg d;
    d.inject_error = {rule("read", EIO, "l2_update")};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e.read(0, 512), 0);
    e.event("l1_update");
    ck_assert_int_eq(e.read(0, 512), 0);
    e.event("l2_update");
    ck_assert_int_eq(e.read(0, 512), -EIO);
    ck_assert_int_eq(e.read(0, 512), -EIO);   // stays armed
}
END_TEST

// As in QEMU, an event that arms inject-error rules replaces the set of
// armed rules; a once rule is gone for good.
START_TEST(test_blkdebug_event_replaces_armed)
{
    Dbg d;
    Rule a = rule("read", EIO, "l1_update");
    Rule b = rule("write", ENOSPC, "l2_update");
    Rule c = rule("write", EDOM, "refblock_alloc");
    c.once = true;
    d.inject_error = {a, b, c};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    e.event("l1_update");
    ck_assert_int_eq(e.read(0, 512), -EIO);
    ck_assert_int_eq(e.write(0, 512), 0);
    e.event("cluster_alloc");   // arms nothing: no change
    ck_assert_int_eq(e.read(0, 512), -EIO);
    e.event("l2_update");
    ck_assert_int_eq(e.read(0, 512), 0);
    ck_assert_int_eq(e.write(0, 512), -ENOSPC);
    e.event("refblock_alloc");
    ck_assert_int_eq(e.write(0, 512), -EDOM);
    ck_assert_int_eq(e.write(0, 512), 0);
    e.event("refblock_alloc");
    ck_assert_int_eq(e.write(0, 512), 0);
    e.event("l1_update");
    ck_assert_int_eq(e.read(0, 512), -EIO);
}
END_TEST

// The generic layer fires "pwritev" on the node before its writes.
START_TEST(test_blkdebug_generic_events)
{
    Dbg d;
    d.inject_error = {rule("read", EIO, "pwritev")};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e.read(0, 512), 0);
    ck_assert_int_eq(e.write(0, 512), 0);
    ck_assert_int_eq(e.read(0, 512), -EIO);
}
END_TEST

// "none" fires once at open: event=none means armed from the start.
START_TEST(test_blkdebug_event_none)
{
    Dbg d;
    d.inject_error = {rule("read", EIO, "none")};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e.read(0, 512), -EIO);
}
END_TEST

START_TEST(test_blkdebug_states)
{
    Dbg d;
    Rule r = rule("read", EIO, "l2_update");
    r.state = 2;
    Rule always_in_3 = rule("write", ENOSPC);
    always_in_3.state = 3;
    d.inject_error = {r, always_in_3};
    d.set_state = {{"l1_update", 1, 2}, {"cluster_alloc", 2, 3}, {"cluster_free", 0, 1}};
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    e.event("l2_update");   // state 1: not armed
    ck_assert_int_eq(e.read(0, 512), 0);
    e.event("cluster_alloc");   // only from state 2
    e.event("l1_update");   // 1 -> 2
    ck_assert_int_eq(e.read(0, 512), 0);
    ck_assert_int_eq(e.write(0, 512), 0);
    e.event("l2_update");   // state 2: armed
    ck_assert_int_eq(e.read(0, 512), -EIO);
    e.event("cluster_alloc");   // 2 -> 3: event-less rule for state 3 applies; armed rule stays armed
    ck_assert_int_eq(e.write(0, 512), -ENOSPC);
    ck_assert_int_eq(e.read(0, 512), -EIO);
    e.event("cluster_free");   // any -> 1
    ck_assert_int_eq(e.write(0, 512), 0);
}
END_TEST

// Events pass on to the nodes below.
START_TEST(test_blkdebug_event_passed_down)
{
    Dbg inner;
    inner.inject_error = {rule("read", EIO, "l2_load")};
    Env e;
    e.add(dbg_opts(inline_ref(null_opts()), inner, "inner"));
    e.open(dbg_opts(name_ref("inner"), {}, "outer"));
    ck_assert_int_eq(e.read(0, 512), 0);
    e.event("l2_load");
    ck_assert_int_eq(e.read(0, 512), -EIO);
}
END_TEST

// immediately=false completes the error from the loop (the request yields).
START_TEST(test_blkdebug_immediately)
{
    for (bool imm : {true, false}) {
        Dbg d;
        Rule r = rule("read", EIO);
        r.immediately = imm;
        d.inject_error = {r};
        Env e;
        e.open(dbg_opts(inline_ref(null_opts()), d));
        int ret = 1;
        Coroutine *co = coroutine_create_fn([&] {
            uint8_t b[512];
            ret = e.blk->co_pread(0, 512, b);
        });
        e.ctx->co_enter(co);
        if (imm) ck_assert_int_eq(ret, -EIO);
        else ck_assert_int_eq(ret, 1);
        while (ret == 1) e.ctx->iterate(true);
        ck_assert_int_eq(ret, -EIO);
    }
}
END_TEST

// Concurrent requests (null-aio interleaves them): a once rule fires for
// exactly one request, an after=N rule lets exactly N through.
START_TEST(test_blkdebug_concurrent)
{
    Dbg d;
    Rule once = rule("read", EIO);
    once.once = true;
    once.immediately = false;
    Rule after = rule("write", ENOSPC);
    after.after = 10;
    d.inject_error = {once, after};
    BlockdevOptions n = null_opts(1 << 20, "null-aio");
    Env e;
    e.open(dbg_opts(inline_ref(n), d));
    constexpr int kN = 32;
    int done = 0, read_fail = 0, write_fail = 0;
    for (int i = 0; i < kN; i++) {
        Coroutine *co = coroutine_create_fn([&, i] {
            std::vector<uint8_t> b(512);
            int r = i % 2 ? e.blk->co_pread(i * 512, 512, b.data()) : e.blk->co_pwrite(i * 512, 512, b.data());
            if (r == -EIO) read_fail++;
            else if (r == -ENOSPC) write_fail++;
            else ck_assert_int_eq(r, 0);
            done++;
        });
        e.ctx->co_enter(co);
    }
    while (done < kN) e.ctx->iterate(true);
    ck_assert_int_eq(read_fail, 1);
    ck_assert_int_eq(write_fail, kN / 2 - 10);
}
END_TEST

// ---------------------------------------------------------------- limits

// align=4096 makes the generic layer pad: an unaligned write reaches
// blkdebug as a whole block (proved by a rule on byte 0 only), and data
// still round-trips through raw over file.
START_TEST(test_blkdebug_align)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    Dbg d;
    d.align = 4096;
    Env e;
    e.open(dbg_opts(inline_ref(raw_file_opts(path)), d));
    ck_assert_int_eq(e.node->limits().request_alignment, 4096);

    std::vector<uint8_t> w(3000);
    for (size_t i = 0; i < w.size(); i++) w[i] = static_cast<uint8_t>(0x80 + i % 100);
    ck_assert_int_eq(run_in_coroutine([&] { return e.blk->co_pwrite(1000, w.size(), w.data()); }), 0);
    std::vector<uint8_t> r(8192);
    ck_assert_int_eq(run_in_coroutine([&] { return e.blk->co_pread(0, r.size(), r.data()); }), 0);
    for (int i = 0; i < 8192; i++) {
        uint8_t want = i >= 1000 && i < 4000 ? w[i - 1000] : pattern_byte(i);
        ck_assert_int_eq(r[i], want);
    }
    std::vector<uint8_t> r2(10);
    ck_assert_int_eq(run_in_coroutine([&] { return e.blk->co_pread(3995, r2.size(), r2.data()); }), 0);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(r2[i], 3995 + i < 4000 ? w[2995 + i] : pattern_byte(3995 + i));
    ck_assert_int_eq(e.flush(), 0);
    ck_assert(file_bytes(path, 1000, 3000) == w);
    ck_assert_int_eq(file_bytes(path, 999, 1)[0], pattern_byte(999));
    ck_assert_int_eq(file_bytes(path, 4000, 1)[0], pattern_byte(4000));

    // Over null-co, with a rule on byte 0: padding widens [1000, 4000) to [0, 4096).
    Dbg n;
    n.align = 4096;
    Rule b0 = rule("write", EXDEV);
    b0.offset = 0;
    b0.bytes = 1;
    n.inject_error = {b0};
    Env g;
    g.open(dbg_opts(inline_ref(null_opts()), n));
    ck_assert_int_eq(g.write(1000, 3000), -EXDEV);   // RMW read of [0, 4096) then write of it
    ck_assert_int_eq(g.write(4096, 100), 0);
    Dbg u = n;
    u.align = 0;
    Env h;
    h.open(dbg_opts(inline_ref(null_opts()), u));
    ck_assert_int_eq(h.write(1000, 3000), 0);
}
END_TEST

// max-transfer splits requests: a 16 KiB read is four 4 KiB driver requests.
START_TEST(test_blkdebug_max_transfer)
{
    for (uint64_t after : {3, 4}) {
        Dbg d;
        d.align = 512;
        d.max_transfer = 4096;
        Rule r = rule("read", EIO);
        r.after = after;
        d.inject_error = {r};
        Env e;
        e.open(dbg_opts(inline_ref(null_opts()), d));
        ck_assert_int_eq(e.node->limits().max_transfer, 4096);
        ck_assert_int_eq(e.read(0, 16384), after == 3 ? -EIO : 0);
    }
    Dbg z;
    z.opt_write_zero = 8192;
    z.max_write_zero = 65536;
    z.opt_discard = 4096;
    z.max_discard = 8192;
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), z));
    ck_assert_int_eq(e.node->limits().pwrite_zeroes_alignment, 8192);
    ck_assert_int_eq(e.node->limits().max_pwrite_zeroes, 65536);
    ck_assert_int_eq(e.node->limits().pdiscard_alignment, 4096);
    ck_assert_int_eq(e.node->limits().max_pdiscard, 8192);
    ck_assert_int_eq(e.zeroes(1000, 100000), 0);
    ck_assert_int_eq(e.discard(1000, 100000), 0);
}
END_TEST

START_TEST(test_blkdebug_validation)
{
    // The limits, with QEMU's messages (checked at open).
    Dbg d;
    d.align = 3000;
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "Cannot meet constraints with align 3000");
    d.align = 1u << 31;
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "Cannot meet constraints with align 2147483648");
    d = {};
    d.align = 4096;
    d.max_transfer = 6144;
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "Cannot meet constraints with max-transfer 6144");
    d = {};
    d.opt_write_zero = 4096;
    d.max_write_zero = 6144;
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "Cannot meet constraints with max-write-zero 6144");
    d = {};
    d.align = 512;
    d.opt_discard = 100;
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "Cannot meet constraints with opt-discard 100");
    d = {};
    d.max_transfer = 1u << 31;
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "Cannot meet constraints with max-transfer 2147483648");
    // What the decoder checks, at the key's path.
    d = {};
    d.set_state = {{"", 0, 2}};
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "blockdev 'dbg': set-state.0.event: must not be empty");
    d = {};
    d.config = tmp_path("no-such.conf");
    expect_open_error(dbg_json(inline_ref(null_opts()), d),
                      "Could not read blkdebug config file: No such file or directory");
    expect_open_error(dbg_json(BlockdevRef{}), "missing required key 'image'");
    // What only open can check: event names, and the limits against the
    // child's own alignment (a test-mem child with align=4096).
    d = {};
    d.inject_error = {rule(std::nullopt, EIO, "no_such_event")};
    expect_open_error(dbg_json(inline_ref(null_opts()), d), "no_such_event");
    BlockdevOptions aligned = must_parse("test-mem,align=4096");
    d = {};
    d.max_transfer = 6144;
    expect_open_error(dbg_json(inline_ref(aligned), d), "Cannot meet constraints with max-transfer 6144");
    d = {};
    d.opt_discard = 512;
    expect_open_error(dbg_json(inline_ref(aligned), d), "Cannot meet constraints with opt-discard 512");
}
END_TEST

// ---------------------------------------------------------------- config file

namespace {

std::string write_config(const std::string &name, const std::string &text)
{
    std::string path = tmp_path(name);
    FILE *f = std::fopen(path.c_str(), "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(std::fwrite(text.data(), 1, text.size(), f), text.size());
    std::fclose(f);
    return path;
}

} // namespace

START_TEST(test_blkdebug_config_rules)
{
    // read_aio arms the first rule (ENOSPC, once); l2_load moves to state 2,
    // where the second (EACCES, any I/O, immediately) applies.
    Dbg d;
    d.config = write_config("rules.conf",
                            "# a comment\n"
                            "\n"
                            "[inject-error]\n"
                            "event = \"read_aio\"\n"
                            "errno = \"28\"\n"
                            "once = \"on\"\n"
                            "[inject-error \"second\"]\n"
                            "  event   =   \"write_aio\"  trailing text is ignored\n"
                            "state = \"2\"\n"
                            "iotype = \"write\"\n"
                            "errno = \"0xd\"\n"
                            "immediately = \"yes\"\n"
                            "[set-state]\n"
                            "event = \"l2_load\"\n"
                            "new_state = \"2\"\n");
    Env e;
    e.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e.read(0, 512), 0);
    e.event("read_aio");
    ck_assert_int_eq(e.read(0, 512), -ENOSPC);
    ck_assert_int_eq(e.read(0, 512), 0);         // once
    e.event("write_aio");                          // state 1: the rule does not arm
    ck_assert_int_eq(e.write(0, 512), 0);
    e.event("l2_load");
    e.event("write_aio");
    ck_assert_int_eq(e.write(0, 512), -EACCES);
    ck_assert_int_eq(e.read(0, 512), 0);         // iotype=write

    // Options' rules come after the file's, and both apply.
    d.inject_error = {rule(std::string("write"), EROFS)};
    Env e2;
    e2.open(dbg_opts(inline_ref(null_opts()), d));
    ck_assert_int_eq(e2.write(0, 512), -EROFS);
    ck_assert(e2.node->filename() == "null-co://");   // options: the child's name
    e2.event("read_aio");
    ck_assert_int_eq(e2.read(0, 512), -ENOSPC);
}
END_TEST

START_TEST(test_blkdebug_config_errors)
{
    struct Case {
        const char *text, *msg;
    } cases[] = {
        {"foo\n", "no group defined"},
        {"[inject-error]\n   \n", "parse error"},
        {"[bogus]\n", "There is no option group 'bogus'"},
        {"[inject-error\n", "There is no option group 'inject-error\n'"},
        {"[]\n", "no group defined"},
        {"[inject-error]\nfoo = \"1\"\n", "Invalid parameter 'foo'"},
        {"[inject-error]\nerrno=5\n", "Invalid parameter 'errno=5'"},
        {"[inject-error]\nonce=\"on\"\n", "Invalid parameter 'once=\"on\"'"},
        {"[inject-error]\nerrno = \"x\"\n", "Parameter 'errno' expects a number"},
        {"[inject-error]\nsector = \"1k\"\n", "Parameter 'sector' expects a number"},
        {"[inject-error]\nerrno = \"99999999999999999999\"\n",
         "Value '99999999999999999999' is too large for parameter 'errno'"},
        {"[inject-error]\nonce = \"maybe\"\n", "Parameter 'once' expects 'on' or 'off'"},
        {"[inject-error]\nerrno = \"5\"\n", "Missing event name for rule"},
        {"[set-state]\nnew_state = \"5\"\n", "Missing event name for rule"},
        {"[inject-error]\nevent = \"nope\"\n", "invalid parameter value: nope"},
        {"[inject-error]\nevent = \"read_aio\"\niotype = \"bogus\"\n", "invalid parameter value: bogus"},
        {"[set-state]\nevent = \"read_aio\"\nerrno = \"5\"\n", "Invalid parameter 'errno'"},
        {"[inject-error]\nevent = \"read_aio\"\nerrno = \"5000\"\n",
         "Value '5000' is out of range for parameter 'errno'"},
    };
    int i = 0;
    for (const Case &c : cases) {
        Dbg d;
        d.config = write_config("bad" + std::to_string(i++) + ".conf", c.text);
        Env e;
        auto r = e.graph.add_node_json(dbg_json(inline_ref(null_opts()), d));
        ck_assert_msg(!r.ok(), "accepted: %s", c.text);
        ck_assert_msg(r.msg() == c.msg || r.msg() == std::string("blockdev 'dbg': ") + c.msg,
                      "%s: got '%s', want '%s'", c.text, r.msg().c_str(), c.msg);
    }
}
END_TEST

START_TEST(test_blkdebug_legacy_filename)
{
    std::string dumped;
    auto j = filename_node_options("blkdebug:a.conf:dir/x:y.qcow2");
    ck_assert_msg(j.ok(), "%s", j.ok() ? "" : j.msg().c_str());
    dumped = j.value().dump();
    ck_assert_str_eq(dumped.c_str(),
                     R"({"config":"a.conf","driver":"blkdebug","image":{"driver":"file","filename":"dir/x:y.qcow2"}})");
    j = filename_node_options("blkdebug::img");
    ck_assert(j.ok());
    dumped = j.value().dump();
    ck_assert_str_eq(dumped.c_str(), R"({"driver":"blkdebug","image":{"driver":"file","filename":"img"}})");
    // Nesting, and a "file:" image.
    j = filename_node_options("blkdebug::blkdebug::file:a:b");
    ck_assert(j.ok());
    dumped = j.value().dump();
    ck_assert_str_eq(dumped.c_str(),
                     R"({"driver":"blkdebug","image":{"driver":"blkdebug","image":{"driver":"file","filename":"./a:b"}}})");
    ck_assert_ptr_eq(protocol_driver_for(builtin_drivers(), "blkdebug::img"), &kDriverBlkdebug);
    j = filename_node_options("blkdebug:img");
    ck_assert(!j.ok());
    ck_assert_str_eq(j.msg().c_str(), "blkdebug requires both config file and image path");
    j = filename_node_options("blkdebug::image:x");
    ck_assert(!j.ok());
    ck_assert_str_eq(j.msg().c_str(), "Unknown protocol 'image'");

    // Opening one: the config's rule fires on the file below.
    std::string path = tmp_path("legacy.img");
    make_file(path, 65536);
    std::string conf = write_config("legacy.conf", "[inject-error]\nevent = \"none\"\nerrno = \"28\"\nsector = \"8\"\n");
    j = filename_node_options("blkdebug:" + conf + ":" + path);
    ck_assert(j.ok());
    Env e;
    e.open(must_parse_json(j.value(), builtin_drivers()));
    ck_assert_int_eq(e.read(0, 4096), 0);
    ck_assert_int_eq(e.read(4096, 512), -ENOSPC);
}
END_TEST

START_TEST(test_blkdebug_descriptor)
{
    ck_assert_ptr_eq(builtin_drivers().find("blkdebug"), &kDriverBlkdebug);
    ck_assert(kDriverBlkdebug.kind == BlockDriverKind::kFilter);
    ck_assert(kDriverBlkdebug.probe == nullptr);
}
END_TEST

static Suite *blkdebug_suite()
{
    Suite *s = suite_create("blkdebug");
    TCase *tc = tcase_create("blkdebug");
    tcase_set_timeout(tc, 30);
    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_blkdebug_transparent);
    tcase_add_test(tc, test_blkdebug_iotypes);
    tcase_add_test(tc, test_blkdebug_errno_zero);
    tcase_add_test(tc, test_blkdebug_once_vs_always);
    tcase_add_test(tc, test_blkdebug_after);
    tcase_add_test(tc, test_blkdebug_sector);
    tcase_add_test(tc, test_blkdebug_offset_range);
    tcase_add_test(tc, test_blkdebug_event_arming);
    tcase_add_test(tc, test_blkdebug_event_replaces_armed);
    tcase_add_test(tc, test_blkdebug_generic_events);
    tcase_add_test(tc, test_blkdebug_event_none);
    tcase_add_test(tc, test_blkdebug_states);
    tcase_add_test(tc, test_blkdebug_event_passed_down);
    tcase_add_test(tc, test_blkdebug_immediately);
    tcase_add_test(tc, test_blkdebug_concurrent);
    tcase_add_test(tc, test_blkdebug_align);
    tcase_add_test(tc, test_blkdebug_max_transfer);
    tcase_add_test(tc, test_blkdebug_validation);
    tcase_add_test(tc, test_blkdebug_config_rules);
    tcase_add_test(tc, test_blkdebug_config_errors);
    tcase_add_test(tc, test_blkdebug_legacy_filename);
    tcase_add_test(tc, test_blkdebug_descriptor);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(blkdebug_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

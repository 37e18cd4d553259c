// Unit tests for the driver-owned options machinery: each driver decodes
// its own keys (qapi/option-reader.h) and encodes them back; unknown keys
// are found after the driver's decoder ran and reported at their dotted
// path, nested children and list elements included; dump_options() names
// children instead of repeating their definitions; a driver outside the
// built-in set (the test driver test-mem) is one descriptor plus one
// registry line. Also the test driver's own hooks, which other suites rely
// on.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block-driver.h"
#include "qapi/block-parse.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include "tests/unit/testdrv.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

#include "tests/unit/tmpdir.h"

using namespace bg;
using namespace bgtest;
using nlohmann::json;

namespace {

json encode(const BlockdevOptions &o) { return blockdev_options_to_json(o); }

// Decoding arg fails with exactly msg (EINVAL).
void expect_error(const BlockdevSchema &schema, const std::string &arg, const std::string &msg)
{
    auto r = parse_blockdev_arg(schema, arg);
    ck_assert_msg(!r.ok(), "'%s': expected failure", arg.c_str());
    ck_assert_msg(r.msg() == msg, "'%s':\n  got  %s\n  want %s", arg.c_str(), r.msg().c_str(), msg.c_str());
    ck_assert_int_eq(r.err(), EINVAL);
}

// One case per driver: keyval text setting every key of the driver to a
// value other than its default, and the JSON that encoding it must give.
struct DriverCase {
    const char *driver;
    const char *kv;
    const char *json;
};

const DriverCase kDriverCases[] = {
    {"file",
     "file,filename=file:/a,,b,aio=native,cache.direct=on,locking=off,aio-max-batch=7,drop-cache=off",
     R"({"driver":"file","filename":"/a,b","aio":"native","cache":{"direct":true},"locking":"off",
         "aio-max-batch":7,"drop-cache":false})"},
    {"raw", "raw,file.driver=null-co,file.size=64k,offset=512,size=1k",
     R"({"driver":"raw","file":{"driver":"null-co","size":65536},"offset":512,"size":1024})"},
    {"null-co", "null-co,size=2M,latency-ns=9,read-zeroes=off",
     R"({"driver":"null-co","size":2097152,"latency-ns":9,"read-zeroes":false})"},
    {"null-aio", "null-aio,size=3M,latency-ns=1,read-zeroes=off",
     R"({"driver":"null-aio","size":3145728,"latency-ns":1,"read-zeroes":false})"},
    {"blkdebug",
     "blkdebug,image=i,align=512,max-transfer=4k,opt-write-zero=1k,max-write-zero=2k,opt-discard=1k,"
     "max-discard=3k,inject-error.0.event=l1_update,inject-error.0.iotype=flush,inject-error.0.errno=28,"
     "inject-error.0.sector=8,inject-error.0.offset=4k,inject-error.0.bytes=512,inject-error.0.after=2,"
     "inject-error.0.once=on,inject-error.0.immediately=on,inject-error.0.state=3,"
     "set-state.0.event=l2_update,set-state.0.state=1,set-state.0.new_state=0",
     R"({"driver":"blkdebug","image":"i","align":512,"max-transfer":4096,"opt-write-zero":1024,
         "max-write-zero":2048,"opt-discard":1024,"max-discard":3072,
         "inject-error":[{"event":"l1_update","iotype":"flush","errno":28,"sector":8,"offset":4096,
                          "bytes":512,"after":2,"once":true,"immediately":true,"state":3}],
         "set-state":[{"event":"l2_update","state":1,"new_state":0}]})"},
    {"qcow2",
     "qcow2,read-only=on,file=f,backing.driver=raw,backing.file=b,data-file=d,lazy-refcounts=off,"
     "pass-discard-request=off,pass-discard-snapshot=off,pass-discard-other=on,discard-no-unref=on,"
     "overlap-check=constant,cache-size=1M,l2-cache-size=512k,l2-cache-entry-size=4k,"
     "cache-clean-interval=5,snapshot.id=7,snapshot.name=s",
     R"({"driver":"qcow2","read-only":true,"file":"f","backing":{"driver":"raw","file":"b"},
         "data-file":"d","lazy-refcounts":false,"pass-discard-request":false,"pass-discard-snapshot":false,
         "pass-discard-other":true,"discard-no-unref":true,"overlap-check":"constant","cache-size":1048576,
         "l2-cache-size":524288,"l2-cache-entry-size":4096,"cache-clean-interval":5,"snapshot.id":"7",
         "snapshot.name":"s"})"},
    {"nbd",
     "nbd,server.type=inet,server.host=h,server.port=10809,export=e,tls-creds=t0,tls-hostname=x,"
     "x-dirty-bitmap=qemu:dirty-bitmap:b,reconnect-delay=5,open-timeout=3",
     R"({"driver":"nbd","server":{"type":"inet","host":"h","port":"10809"},"export":"e","tls-creds":"t0",
         "tls-hostname":"x","x-dirty-bitmap":"qemu:dirty-bitmap:b","reconnect-delay":5,"open-timeout":3})"},
    {"copy-on-read", "copy-on-read,file=f,bottom=b", R"({"driver":"copy-on-read","file":"f","bottom":"b"})"},
    {"blklogwrites", "blklogwrites,file=f,log=l,log-sector-size=4k,log-append=on,log-super-update-interval=7",
     R"({"driver":"blklogwrites","file":"f","log":"l","log-sector-size":4096,"log-append":true,
         "log-super-update-interval":7})"},
    {"commit_top", "commit_top,backing=b", R"({"driver":"commit_top","backing":"b"})"},
    {"mirror_top", "mirror_top,file=f", R"({"driver":"mirror_top","file":"f"})"},
    {"commit_top", "commit_top,backing=f", R"({"driver":"commit_top","backing":"f"})"},
    {"copy-before-write",
     "copy-before-write,file=f,target=t,bitmap.node=n,bitmap.name=b,on-cbw-error=break-snapshot,cbw-timeout=5,"
     "min-cluster-size=131072",
     R"({"driver":"copy-before-write","file":"f","target":"t","bitmap":{"node":"n","name":"b"},
         "on-cbw-error":"break-snapshot","cbw-timeout":5,"min-cluster-size":131072})"},
    {"rbd",
     "rbd,pool=p,namespace=n,image=i,snapshot=s,conf=/c,user=u,key-secret=k,auth-client-required.0=cephx,"
     "auth-client-required.1=none,server.0.host=h,server.0.port=6789,server.1.host=::1,server.1.port=3300",
     R"({"driver":"rbd","pool":"p","namespace":"n","image":"i","snapshot":"s","conf":"/c","user":"u",
         "key-secret":"k","auth-client-required":["cephx","none"],
         "server":[{"host":"h","port":"6789"},{"host":"::1","port":"3300"}]})"},
    {"test-mem", "test-mem,size=8k,align=512,max-transfer=2k,zero-align=1k,write-zeroes=off,file=n",
     R"({"driver":"test-mem","size":8192,"align":512,"max-transfer":2048,"zero-align":1024,
         "write-zeroes":false,"file":"n"})"},
};

} // namespace

// ---------------------------------------------------------------- round trip

// Every driver of the registry: decode -> encode gives the expected JSON
// (each key survives, in canonical form), and decoding that again gives the
// same options, from JSON and from keyval.
START_TEST(test_every_driver_round_trips)
{
    const DriverRegistry &reg = test_registry();
    std::set<std::string> covered;
    for (const DriverCase &c : kDriverCases) {
        auto o = parse_blockdev_arg(reg, c.kv);
        ck_assert_msg(o.ok(), "%s: %s", c.kv, o.ok() ? "" : o.msg().c_str());
        ck_assert_str_eq(o.value().driver.c_str(), c.driver);
        ck_assert_ptr_nonnull(o.value().drv.get());
        json j = encode(o.value());
        ck_assert_msg(j == json::parse(c.json), "%s:\n  got  %s\n  want %s", c.driver, j.dump().c_str(),
                      json::parse(c.json).dump().c_str());
        auto again = blockdev_options_from_tree(reg, j, false);
        ck_assert_msg(again.ok(), "%s: %s", c.driver, again.ok() ? "" : again.msg().c_str());
        ck_assert(encode(again.value()) == j);
        auto kv = parse_blockdev_arg(reg, blockdev_options_to_keyval(o.value()));
        ck_assert_msg(kv.ok(), "%s: %s", c.driver, kv.ok() ? "" : kv.msg().c_str());
        ck_assert(encode(kv.value()) == j);
        // A copy is deep and equal.
        BlockdevOptions copy = o.value();
        ck_assert(copy.drv.get() != o.value().drv.get());
        ck_assert(encode(copy) == j);
        covered.insert(c.driver);
    }
    for (const BlockDriver *d : reg.all()) {
        ck_assert_msg(covered.count(d->name), "no round-trip case for driver '%s'", d->name);
        ck_assert_msg(d->decode_options != nullptr, "driver '%s' has no decoder", d->name);
    }
}
END_TEST

// ---------------------------------------------------------------- unknown keys

// Unknown keys are reported at their path: in nested children (inline
// definitions decoded by their own driver) and in list elements.
START_TEST(test_unknown_key_paths)
{
    const DriverRegistry &reg = test_registry();
    struct {
        const char *arg, *msg;
    } cases[] = {
        {"null-co,node-name=d,bogus=1", "blockdev 'd': unknown key 'bogus'"},
        {"raw,node-name=d,file.driver=raw,file.file.driver=null-co,file.file.bogus=1",
         "blockdev 'd': file.file: unknown key 'bogus'"},
        {"qcow2,node-name=d,file=f,backing.driver=qcow2,backing.file.driver=file,backing.file.filename=x,"
         "backing.file.bogus=1",
         "blockdev 'd': backing.file: unknown key 'bogus'"},
        {"qcow2,node-name=d,file=f,data-file.driver=file,data-file.filename=x,data-file.bogus=1",
         "blockdev 'd': data-file: unknown key 'bogus'"},
        {"qcow2,node-name=d,file=f,read-only=on,snapshot.id=1,snapshot.bogus=1",
         "blockdev 'd': snapshot: unknown key 'bogus'"},
        {"blkdebug,node-name=d,image=i,inject-error.0.errno=5,inject-error.1.bogus=1",
         "blockdev 'd': inject-error.1: unknown key 'bogus'"},
        {"blkdebug,node-name=d,image=i,set-state.0.event=l1_update,set-state.0.new_state=1,set-state.0.bogus=2",
         "blockdev 'd': set-state.0: unknown key 'bogus'"},
        {"raw,node-name=d,file.driver=blkdebug,file.image=i,file.inject-error.0.bogus=1",
         "blockdev 'd': file.inject-error.0: unknown key 'bogus'"},
        {"blkdebug,node-name=d,image.driver=test-mem,image.file.driver=null-co,image.file.bogus=1",
         "blockdev 'd': image.file: unknown key 'bogus'"},
        // A key of another driver is unknown here.
        {"null-co,node-name=d,filename=x", "blockdev 'd': unknown key 'filename'"},
        {"raw,node-name=d,file.driver=null-co,file.read-zeroes=off,file.align=512",
         "blockdev 'd': file: unknown key 'align'"},
        // The driver's own errors come first: unknown keys are looked for
        // only after its decoder accepted the rest.
        {"null-co,node-name=d,size=abc,bogus=1", "blockdev 'd': size: 'abc' is not a valid size"},
        {"test-mem,node-name=d,align=3,bogus=1", "blockdev 'd': align: must be a power of two"},
    };
    for (const auto &c : cases) expect_error(reg, c.arg, c.msg);
    // The same through JSON.
    auto r = blockdev_options_from_tree(
        reg, json::parse(R"({"driver":"blkdebug","node-name":"d","image":"i","inject-error":[{},{},{"x":1}]})"),
        false);
    ck_assert(!r.ok());
    ck_assert_str_eq(r.msg().c_str(), "blockdev 'd': inject-error.2: unknown key 'x'");
}
END_TEST

// ---------------------------------------------------------------- dump_options

namespace {

struct Graph {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph{&test_registry()};
    BlockNode *add(const json &tree)
    {
        auto r = graph.add_node_json(tree);
        ck_assert_msg(r.ok(), "%s: %s", tree.dump().c_str(), r.ok() ? "" : r.msg().c_str());
        return r.value();
    }
};

// tree with every inline child replaced by want's references; the rest
// must be equal.
void expect_dump(BlockNode *n, const json &want)
{
    json got = encode(n->dump_options());
    ck_assert_msg(got == want, "dump_options:\n  got  %s\n  want %s", got.dump().c_str(), want.dump().c_str());
    // The options themselves keep the inline definitions.
    json orig = encode(n->options());
    for (const auto &[key, value] : want.items()) {
        if (value.is_string() && orig[key].is_object()) return;
    }
    ck_abort_msg("no inline child in the node's own options: %s", orig.dump().c_str());
}

} // namespace

START_TEST(test_dump_options_raw_blkdebug_testmem)
{
    Graph g;
    // raw over an inline named child, with its own members kept.
    BlockNode *raw = g.add({{"driver", "raw"}, {"node-name", "r"}, {"offset", 512}, {"size", 1024},
                            {"file", {{"driver", "null-co"}, {"node-name", "n1"}, {"size", 65536}}}});
    expect_dump(raw, {{"driver", "raw"}, {"node-name", "r"}, {"offset", 512}, {"size", 1024}, {"file", "n1"}});
    // An inline child without a name: its generated one.
    BlockNode *raw2 = g.add({{"driver", "raw"}, {"node-name", "r2"}, {"file", {{"driver", "null-co"}}}});
    const std::string anon = raw2->file_child()->node()->node_name();
    ck_assert_int_eq(anon[0], '#');
    expect_dump(raw2, {{"driver", "raw"}, {"node-name", "r2"}, {"file", anon}});
    // blkdebug: the image child; its rules stay.
    json rules = json::array({{{"iotype", "read"}, {"errno", 28}}});
    BlockNode *dbg = g.add({{"driver", "blkdebug"},
                            {"node-name", "d"},
                            {"inject-error", rules},
                            {"image", {{"driver", "test-mem"}, {"node-name", "m1"}}}});
    expect_dump(dbg, {{"driver", "blkdebug"}, {"node-name", "d"}, {"inject-error", rules}, {"image", "m1"}});
    // test-mem in pass-through mode: its file child.
    BlockNode *tm = g.add({{"driver", "test-mem"},
                           {"node-name", "t"},
                           {"align", 512},
                           {"file", {{"driver", "null-co"}, {"node-name", "n2"}}}});
    expect_dump(tm, {{"driver", "test-mem"}, {"node-name", "t"}, {"align", 512}, {"file", "n2"}});
    // A reference stays a reference.
    BlockNode *raw3 = g.add({{"driver", "raw"}, {"node-name", "r3"}, {"file", "n1"}});
    ck_assert(encode(raw3->dump_options()) == encode(raw3->options()));
}
END_TEST

START_TEST(test_dump_options_qcow2)
{
    Graph g;
    const std::string base = tmp_path("base.qcow2"), top = tmp_path("top.qcow2");
    for (const std::string &p : {base, top}) {
        CreateOptions co;
        co.set("size", "1M");
        Status s = builtin_drivers().find("qcow2")->create_image(p, co);
        ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
    }
    // file and backing inline.
    BlockNode *q = g.add({{"driver", "qcow2"},
                          {"node-name", "q"},
                          {"read-only", true},
                          {"cache-clean-interval", 0},
                          {"file", {{"driver", "file"}, {"node-name", "qf"}, {"filename", top}}},
                          {"backing",
                           {{"driver", "qcow2"},
                            {"node-name", "qb"},
                            {"file", {{"driver", "file"}, {"node-name", "qbf"}, {"filename", base}}}}}});
    expect_dump(q, {{"driver", "qcow2"},
                    {"node-name", "q"},
                    {"read-only", true},
                    {"cache-clean-interval", 0},
                    {"file", "qf"},
                    {"backing", "qb"}});
    // (An inline child inherits read-only, and discard=unmap by default.)
    expect_dump(g.graph.find("qb"),
                {{"driver", "qcow2"}, {"node-name", "qb"}, {"read-only", true}, {"discard", "unmap"}, {"file", "qbf"}});
    // An inline data file.
    const std::string ext = tmp_path("ext.qcow2"), data = tmp_path("ext.data");
    CreateOptions co;
    co.set("size", "1M");
    co.set("data_file", data);
    Status s = builtin_drivers().find("qcow2")->create_image(ext, co);
    ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
    BlockNode *qd = g.add({{"driver", "qcow2"},
                           {"node-name", "qd"},
                           {"file", {{"driver", "file"}, {"node-name", "qdf"}, {"filename", ext}}},
                           {"data-file", {{"driver", "file"}, {"node-name", "qdd"}, {"filename", data}}}});
    expect_dump(qd, {{"driver", "qcow2"}, {"node-name", "qd"}, {"file", "qdf"}, {"data-file", "qdd"}});
    // A null backing stays null.
    BlockNode *q2 = g.add({{"driver", "qcow2"},
                           {"node-name", "q2"},
                           {"read-only", true},
                           {"backing", nullptr},
                           {"file", {{"driver", "file"}, {"node-name", "q2f"}, {"filename", top}}}});
    expect_dump(q2, {{"driver", "qcow2"}, {"node-name", "q2"}, {"read-only", true}, {"backing", nullptr}, {"file", "q2f"}});
}
END_TEST

// ---------------------------------------------------------------- a new driver

// A driver outside the built-in set: unknown to builtin_drivers(), decoded
// (with its own checks and children) once one line adds it to a registry.
START_TEST(test_new_driver_is_one_registry_line)
{
    expect_error(builtin_drivers(), "test-mem,node-name=d", "blockdev 'd': unknown driver 'test-mem'");
    ck_assert_ptr_null(builtin_drivers().find("test-mem"));

    DriverRegistry reg = builtin_drivers();
    reg.add(&kTestDriver);
    ck_assert_ptr_eq(reg.find("test-mem"), &kTestDriver);
    ck_assert_uint_eq(reg.all().size(), builtin_drivers().all().size() + 1);
    auto o = parse_blockdev_arg(reg, "test-mem,node-name=d,size=64k,align=4k,file.driver=null-co");
    ck_assert_msg(o.ok(), "%s", o.ok() ? "" : o.msg().c_str());
    ck_assert(encode(o.value()) ==
              json::parse(R"({"driver":"test-mem","node-name":"d","size":65536,"align":4096,
                              "file":{"driver":"null-co"}})"));
    expect_error(reg, "test-mem,node-name=d,align=3", "blockdev 'd': align: must be a power of two");
    expect_error(reg, "test-mem,node-name=d,align=4k,max-transfer=6k",
                 "blockdev 'd': max-transfer: must be a multiple of align");
    expect_error(reg, "test-mem,node-name=d,align=4k,zero-align=1k",
                 "blockdev 'd': zero-align: must be a power of two and a multiple of align");
    expect_error(reg, "test-mem,node-name=d,size=big", "blockdev 'd': size: 'big' is not a valid size");
    expect_error(reg, "test-mem,node-name=d,file.driver=nosuch", "blockdev 'd': file: unknown driver 'nosuch'");

    // And it opens in a graph using that registry.
    auto ctx = AioContext::create();
    BlockGraph graph(&reg);
    auto n = graph.add_node(o.value());
    ck_assert_msg(n.ok(), "%s", n.ok() ? "" : n.msg().c_str());
    ck_assert_str_eq(n.value()->driver_name(), "test-mem");
    ck_assert_int_eq(n.value()->getlength(), 65536);
    ck_assert_uint_eq(n.value()->limits().request_alignment, 4096);
    ck_assert_ptr_nonnull(n.value()->filtered_child());
}
END_TEST

// ---------------------------------------------------------------- test-mem hooks

START_TEST(test_testmem_hooks)
{
    auto ctx = AioContext::create();
    BlockGraph graph(&test_registry());
    BlockNode *n = graph.add_node(must_parse("test-mem,node-name=m,size=64k")).value();
    TestNode *m = TestNode::from(n);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_null(TestNode::from(nullptr));
    auto blk = BlockBackend::create(n, kPermConsistentRead | kPermWrite | kPermResize, kPermAll, "t").value();
    std::vector<uint8_t> buf(4096, 0x11);
    auto rd = [&](int64_t off, int64_t len) { return run_in_coroutine([&] { return blk->co_pread(off, len, buf.data()); }); };
    auto wr = [&](int64_t off, int64_t len) { return run_in_coroutine([&] { return blk->co_pwrite(off, len, buf.data()); }); };

    // Data and counters.
    m->set_logging(true);
    ck_assert_int_eq(wr(100, 1000), 0);
    ck_assert_int_eq(m->data[100], 0x11);
    ck_assert_int_eq(m->data[99], 0);
    ck_assert_int_eq(rd(0, 4096), 0);
    ck_assert_uint_eq(m->count(TestOp::kWrite).calls, 1);
    ck_assert_uint_eq(m->count(TestOp::kWrite).bytes, 1000);
    ck_assert_uint_eq(m->count(TestOp::kRead).bytes, 4096);
    auto log = m->log();
    ck_assert_uint_eq(log.size(), 2);
    ck_assert(log[0].op == TestOp::kWrite && log[0].offset == 100 && log[0].bytes == 1000);
    ck_assert(log[1].op == TestOp::kRead && log[1].offset == 0);
    m->reset_counters();
    ck_assert_uint_eq(m->count(TestOp::kWrite).calls, 0);
    ck_assert(m->log().empty());

    // Failures: by operation and range, once or always.
    m->inject_error(TestMatch{test_op_bit(TestOp::kRead), 8192, 4096}, EIO, 1);
    m->inject_error(TestMatch{test_op_bit(TestOp::kWrite), 0, -1}, ENOSPC);
    ck_assert_int_eq(rd(0, 4096), 0);             // outside the range
    ck_assert_int_eq(rd(10000, 100), -EIO);       // overlaps: fails once
    ck_assert_int_eq(rd(10000, 100), 0);
    ck_assert_int_eq(wr(60000, 10), -ENOSPC);     // always
    ck_assert_int_eq(wr(0, 10), -ENOSPC);
    ck_assert_int_eq(m->data[60000], 0);          // a failed write stores nothing
    m->clear_failures();
    ck_assert_int_eq(wr(0, 10), 0);
    m->inject_error(TestMatch{test_op_bit(TestOp::kFlush)}, EDQUOT);
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_flush(); }), -EDQUOT);
    m->clear_failures();

    // Holding: a matching request waits until released; others pass.
    m->hold(TestMatch{test_op_bit(TestOp::kWrite), 0, 512});
    bool done = false;
    ctx->co_enter(coroutine_create_fn([&] {
        ck_assert_int_eq(blk->co_pwrite(0, 512, buf.data()), 0);
        done = true;
    }));
    ck_assert_int_eq(m->held(), 1);
    ck_assert(!done);
    ck_assert_int_eq(rd(0, 512), 0);
    ck_assert_int_eq(wr(4096, 512), 0);
    ck_assert_int_eq(m->held(), 1);
    m->release();
    while (!done) ctx->iterate(true);
    ck_assert_int_eq(m->held(), 0);

    // Latency: a request takes at least that long.
    m->set_latency(test_op_bit(TestOp::kRead), 20 * 1000 * 1000);
    int64_t t0 = clock_ns();
    ck_assert_int_eq(rd(0, 512), 0);
    ck_assert_int_ge(clock_ns() - t0, 20 * 1000 * 1000);
    m->set_latency(0, 0);

    // Truncate and discard reach the driver; close is reported.
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_truncate(8192, true, PreallocMode::kOff); }), 0);
    ck_assert_uint_eq(m->data.size(), 8192);
    ck_assert_uint_eq(m->count(TestOp::kTruncate).calls, 1);
    std::string closed;
    m->on_close = [&closed](const std::string &name) { closed = name; };
    blk.reset();
    graph.close_all();
    ck_assert_str_eq(closed.c_str(), "m");
}
END_TEST

// Limits given as options reach the generic layer: requests arrive aligned
// and split, and misaligned() stays 0.
START_TEST(test_testmem_limits)
{
    auto ctx = AioContext::create();
    BlockGraph graph(&test_registry());
    BlockNode *n = graph.add_node(must_parse("test-mem,size=1M,align=4k,max-transfer=16k,zero-align=64k")).value();
    TestNode *m = TestNode::from(n);
    ck_assert_uint_eq(n->limits().request_alignment, 4096);
    ck_assert_uint_eq(n->limits().max_transfer, 16384);
    ck_assert_uint_eq(n->limits().pwrite_zeroes_alignment, 65536);
    auto blk = BlockBackend::create(n, kPermConsistentRead | kPermWrite, kPermAll, "t").value();
    std::vector<uint8_t> buf(100000, 7);
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_pwrite(1000, 100000, buf.data()); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return blk->co_pwrite_zeroes(5000, 200000); }), 0);
    ck_assert_uint_ge(m->count(TestOp::kWrite).calls, 7);
    ck_assert_uint_gt(m->count(TestOp::kZeroes).calls, 0);
    ck_assert_uint_eq(m->misaligned(), 0);
    for (int64_t i = 0; i < 1000; i++) ck_assert_int_eq(m->data[i], 0);
    for (int64_t i = 1000; i < 5000; i++) ck_assert_int_eq(m->data[i], 7);
    for (int64_t i = 5000; i < 205000; i++) ck_assert_int_eq(m->data[i], 0);
}
END_TEST

static Suite *options_suite()
{
    Suite *s = suite_create("options");
    TCase *tc = tcase_create("options");
    tcase_set_timeout(tc, 30);
    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_every_driver_round_trips);
    tcase_add_test(tc, test_unknown_key_paths);
    tcase_add_test(tc, test_dump_options_raw_blkdebug_testmem);
    tcase_add_test(tc, test_dump_options_qcow2);
    tcase_add_test(tc, test_new_driver_is_one_registry_line);
    tcase_add_test(tc, test_testmem_hooks);
    tcase_add_test(tc, test_testmem_limits);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(options_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

// Unit tests for qapi/: size parsing, keyval and JSON syntax, the typed
// BlockdevOptions decoder (every error class with its exact message), the
// encoders and their round-trip property, json: pseudo-filenames.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "qapi/block-options.h"
#include "qapi/block-parse.h"
#include "qapi/keyval.h"
#include "qapi/size.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;
using nlohmann::json;

namespace {

// ------------------------------------------------------------ helpers

// Deep, field-by-field equality; *why names the first difference.
bool eq(const BlockdevOptions &a, const BlockdevOptions &b, std::string *why);

bool ref_eq(const BlockdevRef &a, const BlockdevRef &b, const std::string &name, std::string *why)
{
    if (a.kind != b.kind) {
        *why = name + ": kind";
        return false;
    }
    if (a.kind == BlockdevRef::Kind::kReference && a.reference != b.reference) {
        *why = name + ": reference '" + a.reference + "' != '" + b.reference + "'";
        return false;
    }
    if (a.kind == BlockdevRef::Kind::kInline) {
        if (!a.def || !b.def) {
            *why = name + ": missing def";
            return false;
        }
        std::string w;
        if (!eq(*a.def, *b.def, &w)) {
            *why = name + "." + w;
            return false;
        }
    }
    return true;
}

#define EQ_FIELD(x, y, name)                                                \
    do {                                                                    \
        if (!((x) == (y))) {                                                \
            *why = name;                                                    \
            return false;                                                   \
        }                                                                   \
    } while (0)

bool eq(const BlockdevOptions &a, const BlockdevOptions &b, std::string *why)
{
    EQ_FIELD(a.driver, b.driver, "driver");
    EQ_FIELD(a.node_name, b.node_name, "node-name");
    EQ_FIELD(a.read_only, b.read_only, "read-only");
    EQ_FIELD(a.auto_read_only, b.auto_read_only, "auto-read-only");
    EQ_FIELD(a.force_share, b.force_share, "force-share");
    EQ_FIELD(a.discard, b.discard, "discard");
    EQ_FIELD(a.detect_zeroes, b.detect_zeroes, "detect-zeroes");
    EQ_FIELD(a.cache_direct, b.cache_direct, "cache.direct");
    EQ_FIELD(a.cache_no_flush, b.cache_no_flush, "cache.no-flush");
    EQ_FIELD(a.opts.index(), b.opts.index(), "opts variant");
    if (auto *x = a.as<BlockdevOptionsFile>()) {
        auto *y = b.as<BlockdevOptionsFile>();
        EQ_FIELD(x->filename, y->filename, "filename");
        EQ_FIELD(x->aio, y->aio, "aio");
        EQ_FIELD(x->locking, y->locking, "locking");
        EQ_FIELD(x->aio_max_batch, y->aio_max_batch, "aio-max-batch");
        EQ_FIELD(x->drop_cache, y->drop_cache, "drop-cache");
    } else if (auto *x = a.as<BlockdevOptionsRaw>()) {
        auto *y = b.as<BlockdevOptionsRaw>();
        if (!ref_eq(x->file, y->file, "file", why)) return false;
        EQ_FIELD(x->offset, y->offset, "offset");
        EQ_FIELD(x->size, y->size, "size");
    } else if (auto *x = a.as<BlockdevOptionsNull>()) {
        auto *y = b.as<BlockdevOptionsNull>();
        EQ_FIELD(x->size, y->size, "size");
        EQ_FIELD(x->latency_ns, y->latency_ns, "latency-ns");
        EQ_FIELD(x->read_zeroes, y->read_zeroes, "read-zeroes");
    } else if (auto *x = a.as<BlockdevOptionsBlkdebug>()) {
        auto *y = b.as<BlockdevOptionsBlkdebug>();
        if (!ref_eq(x->image, y->image, "image", why)) return false;
        EQ_FIELD(x->config, y->config, "config");
        EQ_FIELD(x->align, y->align, "align");
        EQ_FIELD(x->max_transfer, y->max_transfer, "max-transfer");
        EQ_FIELD(x->opt_write_zero, y->opt_write_zero, "opt-write-zero");
        EQ_FIELD(x->max_write_zero, y->max_write_zero, "max-write-zero");
        EQ_FIELD(x->opt_discard, y->opt_discard, "opt-discard");
        EQ_FIELD(x->max_discard, y->max_discard, "max-discard");
        EQ_FIELD(x->inject_error.size(), y->inject_error.size(), "inject-error size");
        for (size_t i = 0; i < x->inject_error.size(); i++) {
            const auto &e = x->inject_error[i], &f = y->inject_error[i];
            EQ_FIELD(e.event, f.event, "inject-error.event");
            EQ_FIELD(e.iotype, f.iotype, "inject-error.iotype");
            EQ_FIELD(e.err, f.err, "inject-error.errno");
            EQ_FIELD(e.sector, f.sector, "inject-error.sector");
            EQ_FIELD(e.offset, f.offset, "inject-error.offset");
            EQ_FIELD(e.bytes, f.bytes, "inject-error.bytes");
            EQ_FIELD(e.after, f.after, "inject-error.after");
            EQ_FIELD(e.once, f.once, "inject-error.once");
            EQ_FIELD(e.immediately, f.immediately, "inject-error.immediately");
            EQ_FIELD(e.state, f.state, "inject-error.state");
        }
        EQ_FIELD(x->set_state.size(), y->set_state.size(), "set-state size");
        for (size_t i = 0; i < x->set_state.size(); i++) {
            const auto &e = x->set_state[i], &f = y->set_state[i];
            EQ_FIELD(e.event, f.event, "set-state.event");
            EQ_FIELD(e.state, f.state, "set-state.state");
            EQ_FIELD(e.new_state, f.new_state, "set-state.new_state");
        }
    } else if (auto *x = a.as<BlockdevOptionsQcow2>()) {
        auto *y = b.as<BlockdevOptionsQcow2>();
        if (!ref_eq(x->file, y->file, "file", why)) return false;
        if (!ref_eq(x->backing, y->backing, "backing", why)) return false;
        if (!ref_eq(x->data_file, y->data_file, "data-file", why)) return false;
        EQ_FIELD(x->lazy_refcounts_set, y->lazy_refcounts_set, "lazy-refcounts given");
        EQ_FIELD(x->lazy_refcounts, y->lazy_refcounts, "lazy-refcounts");
        EQ_FIELD(x->pass_discard_request, y->pass_discard_request, "pass-discard-request");
        EQ_FIELD(x->pass_discard_snapshot, y->pass_discard_snapshot, "pass-discard-snapshot");
        EQ_FIELD(x->pass_discard_other, y->pass_discard_other, "pass-discard-other");
        EQ_FIELD(x->discard_no_unref, y->discard_no_unref, "discard-no-unref");
        EQ_FIELD(x->overlap_check, y->overlap_check, "overlap-check");
        EQ_FIELD(x->cache_size, y->cache_size, "cache-size");
        EQ_FIELD(x->l2_cache_size, y->l2_cache_size, "l2-cache-size");
        EQ_FIELD(x->l2_cache_entry_size, y->l2_cache_entry_size, "l2-cache-entry-size");
        EQ_FIELD(x->refcount_cache_size, y->refcount_cache_size, "refcount-cache-size");
        EQ_FIELD(x->cache_clean_interval, y->cache_clean_interval, "cache-clean-interval");
        EQ_FIELD(x->snapshot_id, y->snapshot_id, "snapshot.id");
        EQ_FIELD(x->snapshot_name, y->snapshot_name, "snapshot.name");
    }
    return true;
}

#define ck_assert_opts_eq(a, b)                                             \
    do {                                                                    \
        std::string why_;                                                   \
        ck_assert_msg(eq((a), (b), &why_), "options differ: %s", why_.c_str()); \
    } while (0)

// Asserts that expr (a Result) failed with EINVAL and exactly this message.
#define ck_assert_error(expr, expected)                                     \
    do {                                                                    \
        auto r_ = (expr);                                                   \
        ck_assert_msg(!r_.ok(), "expected failure: %s", (expected));        \
        ck_assert_str_eq(r_.msg().c_str(), (expected));                     \
        ck_assert_int_eq(r_.err(), EINVAL);                                 \
    } while (0)

// Asserts that expr (a Result) succeeded, printing the error otherwise.
#define ck_assert_result_ok(r)                                              \
    ck_assert_msg((r).ok(), "unexpected error: %s", (r).ok() ? "" : (r).msg().c_str())

BlockdevOptions parse_ok(const std::string &arg)
{
    auto r = parse_blockdev_arg(arg);
    ck_assert_msg(r.ok(), "'%s': unexpected error: %s", arg.c_str(), r.ok() ? "" : r.msg().c_str());
    return std::move(r).value();
}

json kv_ok(const std::string &s, const char *implied = nullptr)
{
    auto r = keyval_parse(s, implied);
    ck_assert_msg(r.ok(), "'%s': unexpected error: %s", s.c_str(), r.ok() ? "" : r.msg().c_str());
    return std::move(r).value();
}

#define ck_assert_json_eq(j, text)                                          \
    do {                                                                    \
        std::string got_ = (j).dump();                                      \
        std::string want_ = json::parse(text).dump();                       \
        ck_assert_str_eq(got_.c_str(), want_.c_str());                      \
    } while (0)

} // namespace

// ---------------------------------------------------------------- size

START_TEST(test_size_valid)
{
    struct { const char *in; uint64_t out; } cases[] = {
        {"0", 0}, {"512", 512}, {"4k", 4096}, {"4K", 4096}, {"1M", 1 << 20},
        {"1m", 1 << 20}, {"1G", 1ULL << 30}, {"2T", 2ULL << 40}, {"1P", 1ULL << 50},
        {"1E", 1ULL << 60}, {"15E", 15ULL << 60}, {"100b", 100}, {"100B", 100},
        {"1.5M", 1572864}, {"0.5k", 512}, {"1.k", 1024}, {"1.0", 1},
        {"0x10", 16}, {"0XfF", 255}, {"18446744073709551615", UINT64_MAX},
        {"1.0000000000000000000001G", 1ULL << 30},
        {"0.1k", 102},                  // fraction truncated: 102.4
    };
    for (const auto &c : cases) {
        auto r = parse_size(c.in);
        ck_assert_msg(r.ok(), "%s: %s", c.in, r.ok() ? "" : r.msg().c_str());
        ck_assert_msg(r.value() == c.out, "%s: got %llu", c.in, (unsigned long long)r.value());
    }
}
END_TEST

START_TEST(test_size_invalid)
{
    const char *cases[] = {"", "abc", "-1", "-0", "+1", " 1", "1 ", "4k ", "1.5", "1.5B",
                           "16E", "18446744073709551616", "0x", "0x1G", "0x10000000000000000",
                           "1KB", "1Q", ".5M", "1..5M", "1e3", "k"};
    for (const char *c : cases) {
        std::string want = std::string("'") + c + "' is not a valid size";
        ck_assert_error(parse_size(c), want.c_str());
    }
}
END_TEST

// ---------------------------------------------------------------- keyval

START_TEST(test_keyval_basic)
{
    ck_assert_json_eq(kv_ok("a=1,b.c=x,b.d=y"), R"({"a":"1","b":{"c":"x","d":"y"}})");
    ck_assert_json_eq(kv_ok(""), "{}");
    ck_assert_json_eq(kv_ok("a=1,"), R"({"a":"1"})");
    ck_assert_json_eq(kv_ok("a="), R"({"a":""})");
    ck_assert_json_eq(kv_ok("a=b=c"), R"({"a":"b=c"})");
    ck_assert_json_eq(kv_ok("Key_x-9=1"), R"({"Key_x-9":"1"})");
    ck_assert_json_eq(kv_ok("a.b.c.d=1,a.b.e=2"), R"({"a":{"b":{"c":{"d":"1"},"e":"2"}}})");
}
END_TEST

START_TEST(test_keyval_escapes)
{
    ck_assert_json_eq(kv_ok("v=a,,b"), R"({"v":"a,b"})");
    ck_assert_json_eq(kv_ok("v=a,,,b=2"), R"({"v":"a,","b":"2"})");
    ck_assert_json_eq(kv_ok("v=,,,,"), R"({"v":",,"})");
    ck_assert_json_eq(kv_ok("v=,,"), R"({"v":","})");
    ck_assert_json_eq(kv_ok("filename=/x,,y.img,node-name=n"), R"({"filename":"/x,y.img","node-name":"n"})");
    std::string esc = keyval_escape("a,b,,c");
    ck_assert_str_eq(esc.c_str(), "a,,b,,,,c");
}
END_TEST

START_TEST(test_keyval_implied)
{
    ck_assert_json_eq(kv_ok("file,node-name=f", "driver"), R"({"driver":"file","node-name":"f"})");
    ck_assert_json_eq(kv_ok("qcow2", "driver"), R"({"driver":"qcow2"})");
    // Only the first element, and only without '='.
    ck_assert_json_eq(kv_ok("driver=raw,file=f", "driver"), R"({"driver":"raw","file":"f"})");
    ck_assert_error(keyval_parse("file,raw", "driver"), "keyval: expected '=' after 'raw'");
    ck_assert_error(keyval_parse("file", nullptr), "keyval: expected '=' after 'file'");
    ck_assert_error(keyval_parse("file,driver=raw", "driver"), "keyval: duplicate key 'driver'");
    ck_assert_error(keyval_parse(",a=1", "driver"), "keyval: empty key at position 0");
}
END_TEST

START_TEST(test_keyval_arrays)
{
    ck_assert_json_eq(kv_ok("inject-error.0.event=x,inject-error.1.event=y"),
                      R"({"inject-error":[{"event":"x"},{"event":"y"}]})");
    ck_assert_json_eq(kv_ok("l.1=b,l.0=a"), R"({"l":["a","b"]})");
    ck_assert_json_eq(kv_ok("l.0.0=a,l.0.1=b,l.1.0=c"), R"({"l":[["a","b"],["c"]]})");
    std::string big;
    for (int i = 0; i < 12; i++) big += (i ? "," : "") + std::string("l.") + std::to_string(i) + "=" + std::to_string(i);
    ck_assert_int_eq(kv_ok(big)["l"].size(), 12);
    std::string tenth = kv_ok(big)["l"][10].get<std::string>();
    ck_assert_str_eq(tenth.c_str(), "10");
    ck_assert_error(keyval_parse("inject-error.0.event=x,inject-error.2.event=y", nullptr),
                    "keyval: missing key 'inject-error.1' (list indices must be contiguous from 0)");
    ck_assert_error(keyval_parse("l.1=x", nullptr),
                    "keyval: missing key 'l.0' (list indices must be contiguous from 0)");
    ck_assert_error(keyval_parse("l.0=x,l.a=y", nullptr), "keyval: 'l' mixes list indices and member names");
    ck_assert_error(keyval_parse("l.01=x", nullptr), "keyval: invalid list index '01' in key 'l.01'");
    ck_assert_error(keyval_parse("0.a=x", nullptr),
                    "keyval: invalid key '0.a' (a list index cannot come first)");
    ck_assert_error(keyval_parse("l.0=x,l.0=y", nullptr), "keyval: duplicate key 'l.0'");
}
END_TEST

START_TEST(test_keyval_errors)
{
    ck_assert_error(keyval_parse("=1", nullptr), "keyval: empty key at position 0");
    ck_assert_error(keyval_parse("a=1,=2", nullptr), "keyval: empty key at position 4");
    ck_assert_error(keyval_parse("a=1,,,=2", nullptr), "keyval: empty key at position 6");
    ck_assert_json_eq(kv_ok("a=1,,,"), R"({"a":"1,"})");
    ck_assert_error(keyval_parse("node-name=a,node-name=b", nullptr), "keyval: duplicate key 'node-name'");
    ck_assert_error(keyval_parse("file=f,file.driver=x", nullptr),
                    "keyval: 'file' is used both as a value and as an object prefix");
    ck_assert_error(keyval_parse("file.driver=x,file=f", nullptr),
                    "keyval: 'file' is used both as a value and as an object prefix");
    ck_assert_error(keyval_parse("a.b=1,a.b.c=2", nullptr),
                    "keyval: 'a.b' is used both as a value and as an object prefix");
    ck_assert_error(keyval_parse("a=1,foo", nullptr), "keyval: expected '=' after 'foo'");
    ck_assert_error(keyval_parse("a b=1", nullptr), "keyval: invalid character ' ' in key 'a b'");
    ck_assert_error(keyval_parse("a/b=1", nullptr), "keyval: invalid character '/' in key 'a/b'");
    ck_assert_error(keyval_parse("a..b=1", nullptr), "keyval: empty segment in key 'a..b'");
    ck_assert_error(keyval_parse(".a=1", nullptr), "keyval: empty segment in key '.a'");
    ck_assert_error(keyval_parse("a.=1", nullptr), "keyval: empty segment in key 'a.'");
    std::string deep;
    for (int i = 0; i < 65; i++) deep += i ? ".a" : "a";
    auto r = keyval_parse(deep + "=1", nullptr);
    ck_assert(!r.ok());
    ck_assert_int_eq(r.err(), EINVAL);
    ck_assert(r.msg().find("is nested too deeply") != std::string::npos);
}
END_TEST

START_TEST(test_keyval_format)
{
    json j = json::parse(R"({"node-name":"n","x":{"b":true,"a":[1,"p,q"]},"driver":"d","z":null,"e":{}})");
    std::string kv = keyval_format(j);
    ck_assert_str_eq(kv.c_str(), "driver=d,node-name=n,x.a.0=1,x.a.1=p,,q,x.b=on,z=");
}
END_TEST

// ---------------------------------------------------------------- JSON

START_TEST(test_json_object)
{
    auto r = parse_json_object(R"(  {"a": [1, {"b": null}], "c": "d"}  )");
    ck_assert_result_ok(r);
    ck_assert_json_eq(r.value(), R"({"a":[1,{"b":null}],"c":"d"})");
    ck_assert_error(parse_json_object(R"({"a":1,"a":2})"), "JSON: duplicate key 'a'");
    ck_assert_error(parse_json_object(R"({"x":{"a":1,"a":2}})"), "JSON: duplicate key 'a'");
    // The same name in different objects is fine.
    ck_assert_result_ok(parse_json_object(R"({"x":{"a":1},"y":{"a":2},"a":[{"a":1},{"a":2}]})"));
    ck_assert_error(parse_json_object("[1]"), "JSON: expected an object");
    ck_assert_error(parse_json_object("\"s\""), "JSON: expected an object");
    ck_assert_error(parse_json_object("{a}"),
                    "JSON: syntax error while parsing object key - invalid literal; last read: "
                    "'{a'; expected string literal at position 1");
    ck_assert_error(parse_json_object(R"({"a":)"),
                    "JSON: syntax error while parsing value - unexpected end of input; expected "
                    "'[', '{', or a literal at position 5");
    ck_assert_error(parse_json_object(R"({"a":1,})"),
                    "JSON: syntax error while parsing object key - unexpected '}'; expected "
                    "string literal at position 7");
    ck_assert_error(parse_json_object(""),
                    "JSON: syntax error while parsing value - unexpected end of input; expected "
                    "'[', '{', or a literal at position 0");
    // No comments, no trailing garbage.
    ck_assert(!parse_json_object(R"({"a":1} /* c */)").ok());
    ck_assert(!parse_json_object(R"({"a":1} x)").ok());
    std::string deep(200, '[');
    deep = "{\"a\":" + deep + std::string(200, ']') + "}";
    ck_assert_error(parse_json_object(deep), "JSON: nesting deeper than 128 levels");
}
END_TEST

START_TEST(test_json_unflatten)
{
    auto r = json_unflatten(json::parse(
        R"({"file.filename":"x","file":{"driver":"file","cache.direct":true},"l.1.e":2,"l.0.e":1})"));
    ck_assert_result_ok(r);
    ck_assert_json_eq(r.value(),
                      R"({"file":{"driver":"file","filename":"x","cache":{"direct":true}},"l":[{"e":1},{"e":2}]})");
    r = json_unflatten(json::parse(R"({"x":[{"a.b":1},2],"c":{}})"));
    ck_assert_result_ok(r);
    ck_assert_json_eq(r.value(), R"({"x":[{"a":{"b":1}},2],"c":{}})");
    ck_assert_error(json_unflatten(json::parse(R"({"file":{"filename":"a"},"file.filename":"b"})")),
                    "JSON: duplicate key 'file.filename'");
    ck_assert_error(json_unflatten(json::parse(R"({"file":"ref","file.driver":"x"})")),
                    "JSON: 'file' is used both as a value and as an object prefix");
    ck_assert_error(json_unflatten(json::parse(R"({"l.0":1,"l.2":2})")),
                    "JSON: missing key 'l.1' (list indices must be contiguous from 0)");
    ck_assert_error(json_unflatten(json::parse(R"({"a..b":1})")), "JSON: empty segment in key 'a..b'");
    ck_assert_error(json_unflatten(json::parse("[]")), "JSON: expected an object");
}
END_TEST

// ---------------------------------------------------------------- decoding

START_TEST(test_decode_file)
{
    BlockdevOptions o = parse_ok("file,node-name=f,filename=file:/tmp/a,,b.img,aio=threads,"
                                 "locking=off,aio-max-batch=0x10,drop-cache=no,read-only=on,"
                                 "auto-read-only=true,force-share=yes,discard=unmap,"
                                 "detect-zeroes=unmap,cache.direct=on,cache.no-flush=on");
    ck_assert_str_eq(o.driver.c_str(), "file");
    ck_assert_str_eq(o.node_name.c_str(), "f");
    ck_assert(o.read_only && o.auto_read_only && o.force_share);
    ck_assert(o.discard == BlockdevDiscardOptions::kUnmap);
    ck_assert(o.detect_zeroes == BlockdevDetectZeroes::kUnmap);
    ck_assert(o.cache_direct && o.cache_no_flush);
    auto *f = o.as<BlockdevOptionsFile>();
    ck_assert_ptr_nonnull(f);
    ck_assert_str_eq(f->filename.c_str(), "/tmp/a,b.img");
    ck_assert(f->aio == BlockdevAioOptions::kThreads);
    ck_assert(f->locking == OnOffAuto::kOff);
    ck_assert_uint_eq(f->aio_max_batch, 16);
    ck_assert(!f->drop_cache);

    // Defaults.
    o = parse_ok("file,filename=x");
    f = o.as<BlockdevOptionsFile>();
    ck_assert(o.node_name.empty() && !o.read_only && !o.cache_direct);
    ck_assert(o.discard == BlockdevDiscardOptions::kIgnore);
    ck_assert(f->aio == BlockdevAioOptions::kIoUring && f->locking == OnOffAuto::kAuto);
    ck_assert(f->drop_cache && f->aio_max_batch == 0);

    // QEMU's discard aliases.
    ck_assert(parse_ok("file,filename=x,discard=on").discard == BlockdevDiscardOptions::kUnmap);
    ck_assert(parse_ok("file,filename=x,discard=off").discard == BlockdevDiscardOptions::kIgnore);
    ck_assert(parse_ok(R"({"driver":"file","filename":"x","discard":"on"})").discard ==
              BlockdevDiscardOptions::kUnmap);
    // aio=native with O_DIRECT.
    ck_assert(parse_ok("file,filename=x,aio=native,cache.direct=on").as<BlockdevOptionsFile>()->aio ==
              BlockdevAioOptions::kNative);
    ck_assert(parse_ok("file,filename=x,aio=io_uring").as<BlockdevOptionsFile>()->aio ==
              BlockdevAioOptions::kIoUring);
}
END_TEST

START_TEST(test_decode_raw_null)
{
    BlockdevOptions o = parse_ok("raw,node-name=r,file=f0,offset=1M,size=4k");
    auto *r = o.as<BlockdevOptionsRaw>();
    ck_assert_ptr_nonnull(r);
    ck_assert(r->file.kind == BlockdevRef::Kind::kReference);
    ck_assert_str_eq(r->file.reference.c_str(), "f0");
    ck_assert(r->offset && *r->offset == 1 << 20);
    ck_assert(r->size && *r->size == 4096);

    o = parse_ok("raw,file.driver=null-co,file.size=1G");
    r = o.as<BlockdevOptionsRaw>();
    ck_assert(!r->offset && !r->size);
    ck_assert(r->file.kind == BlockdevRef::Kind::kInline);
    ck_assert_str_eq(r->file.def->driver.c_str(), "null-co");
    ck_assert_uint_eq(r->file.def->as<BlockdevOptionsNull>()->size, 1ULL << 30);

    o = parse_ok("null-aio,size=0x1000,latency-ns=100,read-zeroes=off");
    ck_assert_str_eq(o.driver.c_str(), "null-aio");
    auto *n = o.as<BlockdevOptionsNull>();
    ck_assert_ptr_nonnull(n);
    ck_assert_uint_eq(n->size, 4096);
    ck_assert_uint_eq(n->latency_ns, 100);
    ck_assert(!n->read_zeroes);
    o = parse_ok("null-co");
    n = o.as<BlockdevOptionsNull>();
    ck_assert_uint_eq(n->size, 1ULL << 30);
    ck_assert(n->read_zeroes && n->latency_ns == 0);
}
END_TEST

START_TEST(test_decode_blkdebug)
{
    BlockdevOptions o = parse_ok(
        "blkdebug,node-name=b,image.driver=null-co,align=4k,max-transfer=64k,opt-write-zero=8k,"
        "max-write-zero=1M,opt-discard=4k,max-discard=8k,"
        "inject-error.0.event=l2_update,inject-error.0.errno=28,inject-error.0.once=on,"
        "inject-error.0.state=2,inject-error.0.immediately=on,"
        "inject-error.1.iotype=write-zeroes,inject-error.1.sector=-1,inject-error.1.offset=1M,"
        "inject-error.1.bytes=4k,inject-error.1.after=3,"
        "set-state.0.event=l1_update,set-state.0.new_state=2,"
        "set-state.1.event=read_aio,set-state.1.state=2,set-state.1.new_state=3");
    auto *b = o.as<BlockdevOptionsBlkdebug>();
    ck_assert_ptr_nonnull(b);
    ck_assert(b->image.kind == BlockdevRef::Kind::kInline);
    ck_assert_uint_eq(b->align, 4096);
    ck_assert_uint_eq(b->max_transfer, 65536);
    ck_assert_uint_eq(b->opt_write_zero, 8192);
    ck_assert_uint_eq(b->max_write_zero, 1 << 20);
    ck_assert_uint_eq(b->opt_discard, 4096);
    ck_assert_uint_eq(b->max_discard, 8192);
    ck_assert_int_eq(b->inject_error.size(), 2);
    const auto &e0 = b->inject_error[0], &e1 = b->inject_error[1];
    ck_assert_str_eq(e0.event.c_str(), "l2_update");
    ck_assert(!e0.iotype);
    ck_assert_int_eq(e0.err, 28);
    ck_assert(e0.once && e0.immediately);
    ck_assert_int_eq(e0.state, 2);
    ck_assert_int_eq(e0.sector, -1);
    ck_assert(e1.event.empty());
    ck_assert(e1.iotype && *e1.iotype == BlkdebugIoType::kWriteZeroes);
    ck_assert_int_eq(e1.err, 5);
    ck_assert(e1.offset && *e1.offset == 1 << 20);
    ck_assert(e1.bytes && *e1.bytes == 4096);
    ck_assert_uint_eq(e1.after, 3);
    ck_assert_int_eq(b->set_state.size(), 2);
    ck_assert_str_eq(b->set_state[0].event.c_str(), "l1_update");
    ck_assert_int_eq(b->set_state[0].state, 0);
    ck_assert_int_eq(b->set_state[0].new_state, 2);
    ck_assert_int_eq(b->set_state[1].state, 2);
    ck_assert_int_eq(b->set_state[1].new_state, 3);

    const char *iotypes[] = {"read", "write", "write-zeroes", "discard", "flush", "block-status", "truncate"};
    for (int i = 0; i < 7; i++) {
        std::string arg = std::string("blkdebug,image=x,inject-error.0.iotype=") + iotypes[i];
        auto o2 = parse_ok(arg);
        ck_assert_int_eq(static_cast<int>(*o2.as<BlockdevOptionsBlkdebug>()->inject_error[0].iotype), i);
    }
}
END_TEST

START_TEST(test_decode_qcow2)
{
    BlockdevOptions o = parse_ok(
        "qcow2,node-name=q,file.driver=file,file.filename=a.qcow2,backing=base,data-file=df,"
        "lazy-refcounts=on,pass-discard-request=off,pass-discard-snapshot=off,"
        "pass-discard-other=on,discard-no-unref=on,overlap-check=all,cache-size=4M,"
        "l2-cache-size=1M,l2-cache-entry-size=4k,cache-clean-interval=0,read-only=on,"
        "snapshot.id=1,snapshot.name=snap");
    auto *q = o.as<BlockdevOptionsQcow2>();
    ck_assert_ptr_nonnull(q);
    ck_assert(q->file.kind == BlockdevRef::Kind::kInline);
    ck_assert_str_eq(q->file.def->as<BlockdevOptionsFile>()->filename.c_str(), "a.qcow2");
    ck_assert(q->backing.kind == BlockdevRef::Kind::kReference);
    ck_assert_str_eq(q->backing.reference.c_str(), "base");
    ck_assert_str_eq(q->data_file.reference.c_str(), "df");
    ck_assert(q->lazy_refcounts_set && q->lazy_refcounts);
    ck_assert(!q->pass_discard_request && !q->pass_discard_snapshot);
    ck_assert(q->pass_discard_other && q->discard_no_unref);
    ck_assert(q->overlap_check == Qcow2OverlapCheckMode::kAll);
    ck_assert(*q->cache_size == 4 << 20 && *q->l2_cache_size == 1 << 20);
    ck_assert(!q->refcount_cache_size);
    ck_assert(*q->l2_cache_entry_size == 4096);
    ck_assert_uint_eq(q->cache_clean_interval, 0);
    ck_assert_str_eq(q->snapshot_id->c_str(), "1");
    ck_assert_str_eq(q->snapshot_name->c_str(), "snap");

    // Defaults.
    o = parse_ok("qcow2,file=f");
    q = o.as<BlockdevOptionsQcow2>();
    ck_assert(!q->backing.present() && !q->data_file.present());
    ck_assert(!q->lazy_refcounts_set);
    ck_assert(q->pass_discard_request && q->pass_discard_snapshot && !q->pass_discard_other);
    ck_assert(q->overlap_check == Qcow2OverlapCheckMode::kCached);
    ck_assert_uint_eq(q->cache_clean_interval, 600);
    ck_assert(!q->snapshot_id && !q->snapshot_name);

    // JSON: backing null; snapshot as literal dotted keys or nested.
    o = parse_ok(R"({"driver":"qcow2","file":"f","backing":null,"read-only":true,"snapshot.id":"3"})");
    q = o.as<BlockdevOptionsQcow2>();
    ck_assert(q->backing.kind == BlockdevRef::Kind::kNull);
    ck_assert_str_eq(q->snapshot_id->c_str(), "3");
    o = parse_ok(R"({"driver":"qcow2","file":"f","read-only":true,"snapshot":{"name":"s"}})");
    ck_assert_str_eq(o.as<BlockdevOptionsQcow2>()->snapshot_name->c_str(), "s");
    ck_assert(!o.as<BlockdevOptionsQcow2>()->snapshot_id);
}
END_TEST

// The same configuration in both syntaxes gives the same options.
START_TEST(test_both_syntaxes)
{
    struct { const char *kv; const char *js; } cases[] = {
        {"file,node-name=disk,filename=/img/a.raw,aio=threads,cache.direct=on,locking=on",
         R"({"driver":"file","node-name":"disk","filename":"/img/a.raw","aio":"threads",
             "cache":{"direct":true},"locking":"on"})"},
        {"qcow2,node-name=top,read-only=on,force-share=on,file.driver=file,file.filename=t.qcow2,"
         "backing.driver=qcow2,backing.node-name=base,backing.file.driver=file,"
         "backing.file.filename=b.qcow2,overlap-check=none,cache-size=2M,refcount-cache-size=64k",
         R"({"driver":"qcow2","node-name":"top","read-only":true,"force-share":true,
             "file":{"driver":"file","filename":"t.qcow2"},
             "backing":{"driver":"qcow2","node-name":"base",
                        "file":{"driver":"file","filename":"b.qcow2"}},
             "overlap-check":"none","cache-size":2097152,"refcount-cache-size":65536})"},
        {"blkdebug,image=img,align=512,inject-error.0.event=flush_to_disk,inject-error.0.errno=5,"
         "inject-error.0.iotype=flush,set-state.0.event=write_aio,set-state.0.new_state=1",
         R"({"driver":"blkdebug","image":"img","align":512,
             "inject-error":[{"event":"flush_to_disk","errno":5,"iotype":"flush"}],
             "set-state":[{"event":"write_aio","new_state":1}]})"},
        {"raw,file=f,offset=0x200,size=1k,discard=unmap,detect-zeroes=on",
         R"({"driver":"raw","file":"f","offset":512,"size":1024,"discard":"unmap",
             "detect-zeroes":"on"})"},
        {"null-co,size=16M,read-zeroes=false,latency-ns=5",
         R"({"driver":"null-co","size":16777216,"read-zeroes":false,"latency-ns":5})"},
    };
    for (const auto &c : cases) {
        BlockdevOptions a = parse_ok(c.kv);
        BlockdevOptions b = parse_ok(c.js);
        ck_assert_opts_eq(a, b);
        // And the JSON text through blockdev_options_from_tree directly.
        auto t = blockdev_options_from_tree(json::parse(c.js), false);
        ck_assert_result_ok(t);
        ck_assert_opts_eq(a, t.value());
    }
    // JSON after leading white space.
    BlockdevOptions ws = parse_ok("  \n{\"driver\":\"null-co\"}");
    ck_assert_str_eq(ws.driver.c_str(), "null-co");
}
END_TEST

// ---------------------------------------------------------------- errors

struct ErrCase {
    const char *arg;
    const char *msg;
};

static void check_errors(const ErrCase *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        auto r = parse_blockdev_arg(cases[i].arg);
        ck_assert_msg(!r.ok(), "'%s': expected failure", cases[i].arg);
        ck_assert_msg(r.msg() == cases[i].msg, "'%s':\n  got  %s\n  want %s", cases[i].arg,
                      r.msg().c_str(), cases[i].msg);
        ck_assert_int_eq(r.err(), EINVAL);
    }
}

START_TEST(test_errors_structure)
{
    const ErrCase cases[] = {
        {"node-name=d", "blockdev 'd': missing required key 'driver'"},
        {"", "blockdev: missing required key 'driver'"},
        {"xyz,node-name=d", "blockdev 'd': unknown driver 'xyz'"},
        {R"({"driver":1,"node-name":"d"})", "blockdev 'd': driver: expected a string"},
        {"file,node-name=d,filename=x,foo=1", "blockdev 'd': unknown key 'foo'"},
        {"file,filename=x,foo=1", "blockdev: unknown key 'foo'"},
        {"raw,node-name=d,file.driver=file,file.filename=x,file.foo=1",
         "blockdev 'd': file: unknown key 'foo'"},
        {"raw,node-name=d,file.filename=x", "blockdev 'd': file: missing required key 'driver'"},
        {"raw,node-name=d,file.driver=xyz", "blockdev 'd': file: unknown driver 'xyz'"},
        {"raw,node-name=d", "blockdev 'd': missing required key 'file'"},
        {"file,node-name=d", "blockdev 'd': missing required key 'filename'"},
        {"blkdebug,node-name=d", "blockdev 'd': missing required key 'image'"},
        {"qcow2,node-name=d", "blockdev 'd': missing required key 'file'"},
        // qcow2 options do not belong to other drivers.
        {"raw,node-name=d,file=f,backing=b", "blockdev 'd': unknown key 'backing'"},
        {"file,node-name=d,filename=x,cache.writeback=on", "blockdev 'd': cache: unknown key 'writeback'"},
        {"file,node-name=d,filename=x,cache=none", "blockdev 'd': cache: expected an object"},
        {R"({"driver":"qcow2","node-name":"d","file":{"driver":"file","filename":1}})",
         "blockdev 'd': file.filename: expected a string"},
        {"qcow2,node-name=d,file.driver=file,file.filename.x=1",
         "blockdev 'd': file.filename: expected a string"},
        {R"({"driver":"raw","node-name":"d","file":null})",
         "blockdev 'd': file: expected a string or an object"},
        {R"({"driver":"qcow2","node-name":"d","file":"f","backing":1})",
         "blockdev 'd': backing: expected a string, an object or null"},
        {R"({"driver":"qcow2","node-name":"d","file":"f","data-file":null})",
         "blockdev 'd': data-file: expected a string or an object"},
        {"raw,node-name=d,file=", "blockdev 'd': file: empty node reference"},
        {"qcow2,node-name=d,file=f,backing=",
         "blockdev 'd': backing: empty node reference (to open no backing file, use JSON with "
         "\"backing\": null)"},
        {"file,node-name=d,filename=", "blockdev 'd': filename: must not be empty"},
        {"file,node-name=d,filename=file:", "blockdev 'd': filename: must not be empty"},
        {"blkdebug,node-name=d,image=i,inject-error=x", "blockdev 'd': inject-error: expected a list"},
        {R"({"driver":"blkdebug","node-name":"d","image":"i","inject-error":["x"]})",
         "blockdev 'd': inject-error.0: expected an object"},
        {"blkdebug,node-name=d,image=i,inject-error.0.foo=1",
         "blockdev 'd': inject-error.0: unknown key 'foo'"},
        {"blkdebug,node-name=d,image=i,set-state.0.new_state=1",
         "blockdev 'd': set-state.0: missing required key 'event'"},
        {"blkdebug,node-name=d,image=i,set-state.0.event=e",
         "blockdev 'd': set-state.0: missing required key 'new_state'"},
        {"blkdebug,node-name=d,image=i,inject-error.0.event=",
         "blockdev 'd': inject-error.0.event: must not be empty"},
        {"qcow2,node-name=d,file=f,snapshot=x", "blockdev 'd': snapshot: expected an object"},
        {"qcow2,node-name=d,file=f,snapshot.foo=x", "blockdev 'd': snapshot: unknown key 'foo'"},
        {R"({"driver":"qcow2","node-name":"d","file":"f","read-only":true,"snapshot.id":"a","snapshot":{"id":"b"}})",
         "blockdev 'd': snapshot.id: given twice"},
        {"[1]", "blockdev: unknown driver '[1]'"},
        {"file,file name=x", "keyval: invalid character ' ' in key 'file name'"},
        {"{\"driver\":", "JSON: syntax error while parsing value - unexpected end of input; "
                         "expected '[', '{', or a literal at position 10"},
        {"file,filename=x,filename=y", "keyval: duplicate key 'filename'"},
    };
    check_errors(cases, sizeof(cases) / sizeof(cases[0]));
    // The tree itself must be an object.
    ck_assert_error(blockdev_options_from_tree(json::array(), false), "blockdev: expected an object");
}
END_TEST

START_TEST(test_errors_types)
{
    const ErrCase cases[] = {
        // JSON typing is exact.
        {R"({"driver":"file","node-name":"d","filename":"x","read-only":"on"})",
         "blockdev 'd': read-only: expected a boolean"},
        {R"({"driver":"file","node-name":"d","filename":"x","read-only":1})",
         "blockdev 'd': read-only: expected a boolean"},
        {R"({"driver":"null-co","node-name":"d","size":"1G"})", "blockdev 'd': size: expected an integer"},
        {R"({"driver":"null-co","node-name":"d","size":1.5})", "blockdev 'd': size: expected an integer"},
        {R"({"driver":"null-co","node-name":"d","size":-1})", "blockdev 'd': size: '-1' is not a valid size"},
        {R"({"driver":"null-co","node-name":"d","latency-ns":"5"})",
         "blockdev 'd': latency-ns: expected an integer"},
        {R"({"driver":"file","node-name":"d","filename":"x","aio":1})", "blockdev 'd': aio: expected a string"},
        {R"({"driver":"file","node-name":"d","filename":"x","cache":{"direct":"on"}})",
         "blockdev 'd': cache.direct: expected a boolean"},
        // keyval conversions.
        {"null-co,node-name=d,size=abc", "blockdev 'd': size: 'abc' is not a valid size"},
        {"null-co,node-name=d,size=-1", "blockdev 'd': size: '-1' is not a valid size"},
        {"null-co,node-name=d,size=1.5", "blockdev 'd': size: '1.5' is not a valid size"},
        {"null-co,node-name=d,size=16E", "blockdev 'd': size: '16E' is not a valid size"},
        {"null-co,node-name=d,size=8E",
         "blockdev 'd': size: 9223372036854775808 is out of range (0 to 9223372036854775807)"},
        {"null-co,node-name=d,latency-ns=1k", "blockdev 'd': latency-ns: '1k' is not a valid integer"},
        {"null-co,node-name=d,latency-ns=-1",
         "blockdev 'd': latency-ns: -1 is out of range (0 to 18446744073709551615)"},
        {"null-co,node-name=d,latency-ns=0x", "blockdev 'd': latency-ns: '0x' is not a valid integer"},
        {"null-co,node-name=d,latency-ns=", "blockdev 'd': latency-ns: '' is not a valid integer"},
        {"null-co,node-name=d,latency-ns=99999999999999999999",
         "blockdev 'd': latency-ns: '99999999999999999999' is not a valid integer"},
        {"null-co,node-name=d,read-zeroes=maybe",
         "blockdev 'd': read-zeroes: 'maybe' is not a valid boolean (on, off, true, false, yes, no)"},
        {"null-co,node-name=d,read-zeroes=ON",
         "blockdev 'd': read-zeroes: 'ON' is not a valid boolean (on, off, true, false, yes, no)"},
        {"null-co,node-name=d,read-zeroes.x=on", "blockdev 'd': read-zeroes: expected a boolean"},
        // Enums.
        {"file,node-name=d,filename=x,aio=xyz",
         "blockdev 'd': aio: 'xyz' is not one of: threads, native, io_uring"},
        {"file,node-name=d,filename=x,locking=maybe",
         "blockdev 'd': locking: 'maybe' is not one of: on, off, auto"},
        {"file,node-name=d,filename=x,discard=trim",
         "blockdev 'd': discard: 'trim' is not one of: ignore, unmap"},
        {"file,node-name=d,filename=x,detect-zeroes=yes",
         "blockdev 'd': detect-zeroes: 'yes' is not one of: off, on, unmap"},
        {"qcow2,node-name=d,file=f,overlap-check=some",
         "blockdev 'd': overlap-check: 'some' is not one of: none, constant, cached, all"},
        {"qcow2,node-name=d,file=f,overlap-check.template=all",
         "blockdev 'd': overlap-check: only the string form (none, constant, cached, all) is "
         "supported, not an object of per-structure flags"},
        {R"({"driver":"qcow2","node-name":"d","file":"f","overlap-check":{"template":"all"}})",
         "blockdev 'd': overlap-check: only the string form (none, constant, cached, all) is "
         "supported, not an object of per-structure flags"},
        {"blkdebug,node-name=d,image=i,inject-error.0.iotype=write_zeroes",
         "blockdev 'd': inject-error.0.iotype: 'write_zeroes' is not one of: read, write, "
         "write-zeroes, discard, flush, block-status, truncate"},
    };
    check_errors(cases, sizeof(cases) / sizeof(cases[0]));
}
END_TEST

START_TEST(test_errors_values)
{
    const ErrCase cases[] = {
        {"file,node-name=x y,filename=f",
         "blockdev: node-name: 'x y' is not a valid node name (letters, digits, '-', '.', '_', "
         "starting with a letter, at most 31 characters)"},
        {"file,node-name=1abc,filename=f",
         "blockdev: node-name: '1abc' is not a valid node name (letters, digits, '-', '.', '_', "
         "starting with a letter, at most 31 characters)"},
        {"file,node-name=a23456789012345678901234567890123,filename=f",
         "blockdev: node-name: 'a23456789012345678901234567890123' is not a valid node name "
         "(letters, digits, '-', '.', '_', starting with a letter, at most 31 characters)"},
        {"file,node-name=,filename=f",
         "blockdev: node-name: '' is not a valid node name (letters, digits, '-', '.', '_', "
         "starting with a letter, at most 31 characters)"},
        {"raw,node-name=d,file.driver=file,file.filename=f,file.node-name=#x",
         "blockdev 'd': file.node-name: '#x' is not a valid node name (letters, digits, '-', "
         "'.', '_', starting with a letter, at most 31 characters)"},
        {"raw,node-name=d,file.driver=file,file.filename=f,file.node-name=d",
         "blockdev 'd': file.node-name: node name 'd' is used more than once"},
        {"file,node-name=d,filename=x,force-share=on", "blockdev 'd': force-share=on requires read-only=on"},
        {"raw,node-name=d,file.driver=null-co,file.force-share=on",
         "blockdev 'd': file: force-share=on requires read-only=on"},
        {"file,node-name=d,filename=x,detect-zeroes=unmap",
         "blockdev 'd': detect-zeroes=unmap requires discard=unmap"},
        {"file,node-name=d,filename=x,aio=native",
         "blockdev 'd': aio=native was specified, but it requires cache.direct=on, which was not "
         "specified."},
        {"file,node-name=d,filename=x,aio-max-batch=0x80000000",
         "blockdev 'd': aio-max-batch: 2147483648 is out of range (0 to 2147483647)"},
        {"raw,node-name=d,file=f,size=1000", "blockdev 'd': size: Specified size is not multiple of 512"},
        {"raw,node-name=d,file.driver=raw,file.file=g,file.size=100",
         "blockdev 'd': file.size: Specified size is not multiple of 512"},
        {"blkdebug,node-name=d,image=i,config=/etc/blkdebug.conf",
         "blockdev 'd': config: config files are not supported; use inject-error"},
        {"blkdebug,node-name=d,image=i,align=3", "blockdev 'd': align: 3 is not a power of two"},
        {"blkdebug,node-name=d,image=i,align=2G",
         "blockdev 'd': align: 2147483648 is out of range (0 to 2147483646)"},
        {"blkdebug,node-name=d,image=i,align=4k,max-transfer=6k",
         "blockdev 'd': max-transfer: 6144 is not a multiple of align (4096)"},
        {"blkdebug,node-name=d,image=i,opt-write-zero=8k,max-write-zero=12k,align=4k",
         "blockdev 'd': max-write-zero: 12288 is not a multiple of opt-write-zero (8192)"},
        {"blkdebug,node-name=d,image=i,align=512,max-discard=1000",
         "blockdev 'd': max-discard: 1000 is not a multiple of align (512)"},
        {"blkdebug,node-name=d,image=i,inject-error.0.errno=0",
         "blockdev 'd': inject-error.0.errno: 0 is out of range (1 to 4095)"},
        {"blkdebug,node-name=d,image=i,inject-error.0.errno=4096",
         "blockdev 'd': inject-error.0.errno: 4096 is out of range (1 to 4095)"},
        {R"({"driver":"blkdebug","node-name":"d","image":"i","inject-error":[{"errno":-5}]})",
         "blockdev 'd': inject-error.0.errno: -5 is out of range (1 to 4095)"},
        {"blkdebug,node-name=d,image=i,inject-error.0.sector=-2",
         "blockdev 'd': inject-error.0.sector: -2 is out of range (-1 to 9223372036854775807)"},
        {"blkdebug,node-name=d,image=i,inject-error.0.bytes=4k",
         "blockdev 'd': inject-error.0.bytes: requires offset"},
        {"blkdebug,node-name=d,image=i,inject-error.0.state=-1",
         "blockdev 'd': inject-error.0.state: -1 is out of range (0 to 9223372036854775807)"},
        {"qcow2,node-name=d,file=f,cache-size=1M,l2-cache-size=512k,refcount-cache-size=64k",
         "blockdev 'd': cache-size, l2-cache-size and refcount-cache-size may not be set at the "
         "same time"},
        {"qcow2,node-name=d,file=f,cache-size=1M,l2-cache-size=2M",
         "blockdev 'd': l2-cache-size may not exceed cache-size"},
        {"qcow2,node-name=d,file=f,cache-size=1M,refcount-cache-size=2M",
         "blockdev 'd': refcount-cache-size may not exceed cache-size"},
        {"qcow2,node-name=d,file=f,l2-cache-entry-size=1000",
         "blockdev 'd': l2-cache-entry-size: L2 cache entry size must be a power of two between "
         "512 and the cluster size"},
        {"qcow2,node-name=d,file=f,l2-cache-entry-size=256",
         "blockdev 'd': l2-cache-entry-size: L2 cache entry size must be a power of two between "
         "512 and the cluster size"},
        {"qcow2,node-name=d,file=f,cache-clean-interval=0x100000000",
         "blockdev 'd': cache-clean-interval: 4294967296 is out of range (0 to 4294967295)"},
        {"qcow2,node-name=d,file=f,snapshot.id=1",
         "blockdev 'd': snapshot.id and snapshot.name require read-only=on"},
    };
    check_errors(cases, sizeof(cases) / sizeof(cases[0]));
}
END_TEST

// ---------------------------------------------------------------- encoding

START_TEST(test_to_json)
{
    BlockdevOptions o = parse_ok("qcow2,node-name=q,file.driver=file,file.filename=a,,b,"
                                 "backing=base,cache-size=1M,overlap-check=none");
    json j = blockdev_options_to_json(o);
    ck_assert_json_eq(j, R"({"driver":"qcow2","node-name":"q","file":{"driver":"file","filename":"a,b"},
                             "backing":"base","cache-size":1048576,"overlap-check":"none"})");
    std::string kv = blockdev_options_to_keyval(o);
    ck_assert_str_eq(kv.c_str(), "driver=qcow2,node-name=q,backing=base,cache-size=1048576,"
                                 "file.driver=file,file.filename=a,,b,overlap-check=none");

    // Defaults are left out; required members stay.
    ck_assert_json_eq(blockdev_options_to_json(parse_ok("null-co")), R"({"driver":"null-co"})");
    ck_assert_json_eq(blockdev_options_to_json(parse_ok("raw,file=f")), R"({"driver":"raw","file":"f"})");
    // A null backing.
    o = parse_ok(R"({"driver":"qcow2","file":"f","backing":null})");
    ck_assert_json_eq(blockdev_options_to_json(o), R"({"driver":"qcow2","file":"f","backing":null})");
    kv = blockdev_options_to_keyval(o);
    ck_assert_str_eq(kv.c_str(), "driver=qcow2,backing=,file=f");
    ck_assert(!parse_blockdev_arg(blockdev_options_to_keyval(o)).ok());
    // A file name that really starts with "file:" survives.
    o = parse_ok("file,filename=file:file:x");
    ck_assert_str_eq(o.as<BlockdevOptionsFile>()->filename.c_str(), "file:x");
    ck_assert_json_eq(blockdev_options_to_json(o), R"({"driver":"file","filename":"file:file:x"})");
    ck_assert_opts_eq(parse_ok(blockdev_options_to_keyval(o)), o);
}
END_TEST

// A deterministic pseudo-random generator of valid options.
class Gen {
  public:
    explicit Gen(uint64_t seed) : s_(seed * 2654435761ULL + 1) {}

    uint64_t next()
    {
        s_ ^= s_ << 13;
        s_ ^= s_ >> 7;
        s_ ^= s_ << 17;
        return s_;
    }
    uint64_t below(uint64_t n) { return next() % n; }
    bool coin() { return next() & 1; }

    std::string text()
    {
        static const char chars[] = "abcXYZ019 ,,=.:-_/\"\\{}[]";
        std::string s;
        size_t n = 1 + below(10);
        for (size_t i = 0; i < n; i++) s += chars[below(sizeof(chars) - 1)];
        return s;
    }

    std::string node_name() { return "n" + std::to_string(names_++) + (coin() ? "_x.y-z" : ""); }

    BlockdevRef ref(int depth, bool allow_null)
    {
        BlockdevRef r;
        uint64_t k = below(depth > 2 ? 2 : 3);
        if (k == 0) {
            r.kind = BlockdevRef::Kind::kReference;
            r.reference = coin() ? node_name() : "#block" + std::to_string(below(100));
        } else if (k == 1 && allow_null) {
            r.kind = BlockdevRef::Kind::kNull;
            has_null_ = true;
        } else if (k == 1) {
            r.kind = BlockdevRef::Kind::kReference;
            r.reference = text();
        } else {
            r.kind = BlockdevRef::Kind::kInline;
            r.def = std::make_shared<BlockdevOptions>(options(depth + 1));
        }
        return r;
    }

    std::optional<uint64_t> opt_size(uint64_t unit)
    {
        if (coin()) return std::nullopt;
        return below(1 << 20) * unit;
    }

    BlockdevOptions options(int depth)
    {
        BlockdevOptions o;
        if (coin()) o.node_name = node_name();
        o.read_only = coin();
        o.auto_read_only = coin();
        o.force_share = o.read_only && coin();
        o.discard = coin() ? BlockdevDiscardOptions::kUnmap : BlockdevDiscardOptions::kIgnore;
        o.detect_zeroes = static_cast<BlockdevDetectZeroes>(below(3));
        if (o.detect_zeroes == BlockdevDetectZeroes::kUnmap) o.discard = BlockdevDiscardOptions::kUnmap;
        o.cache_direct = coin();
        o.cache_no_flush = coin();
        switch (below(depth > 3 ? 2 : 5)) {
        case 0: {
            o.driver = "file";
            BlockdevOptionsFile f;
            f.filename = (coin() ? "file:" : "") + text();
            f.aio = static_cast<BlockdevAioOptions>(below(3));
            if (f.aio == BlockdevAioOptions::kNative) o.cache_direct = true;
            f.locking = static_cast<OnOffAuto>(below(3));
            f.aio_max_batch = static_cast<uint32_t>(below(3) ? 0 : below(INT32_MAX));
            f.drop_cache = coin();
            o.opts = f;
            break;
        }
        case 1: {
            o.driver = coin() ? "null-co" : "null-aio";
            BlockdevOptionsNull n;
            n.size = coin() ? n.size : below(1ULL << 50);
            n.latency_ns = coin() ? 0 : next();
            n.read_zeroes = coin();
            o.opts = n;
            break;
        }
        case 2: {
            o.driver = "raw";
            BlockdevOptionsRaw r;
            r.file = ref(depth, false);
            r.offset = opt_size(1);
            r.size = opt_size(512);
            o.opts = r;
            break;
        }
        case 3: {
            o.driver = "blkdebug";
            BlockdevOptionsBlkdebug b;
            b.image = ref(depth, false);
            b.align = coin() ? 0 : 1u << below(20);
            uint32_t a = b.align ? b.align : 1;
            b.max_transfer = coin() ? 0 : a * static_cast<uint32_t>(below(16));
            b.opt_write_zero = coin() ? 0 : a * static_cast<uint32_t>(1 + below(4));
            uint32_t wz = b.opt_write_zero > a ? b.opt_write_zero : a;
            b.max_write_zero = coin() ? 0 : wz * static_cast<uint32_t>(below(4));
            b.opt_discard = coin() ? 0 : a * static_cast<uint32_t>(below(4));
            uint32_t d = b.opt_discard > a ? b.opt_discard : a;
            b.max_discard = coin() ? 0 : d * static_cast<uint32_t>(below(4));
            size_t ne = below(4);
            for (size_t i = 0; i < ne; i++) {
                BlkdebugInjectError e;
                if (coin()) e.event = text();
                if (coin()) e.iotype = static_cast<BlkdebugIoType>(below(7));
                e.err = static_cast<int>(1 + below(4095));
                e.sector = static_cast<int64_t>(below(1000)) - 1;
                if (coin()) {
                    e.offset = below(1ULL << 40);
                    if (coin()) e.bytes = below(1ULL << 40);
                }
                e.after = coin() ? 0 : next();
                e.once = coin();
                e.immediately = coin();
                e.state = static_cast<int64_t>(below(5));
                b.inject_error.push_back(e);
            }
            size_t ns = below(3);
            for (size_t i = 0; i < ns; i++) {
                BlkdebugSetState s;
                s.event = text();
                s.state = static_cast<int64_t>(below(5));
                s.new_state = static_cast<int64_t>(below(5));
                b.set_state.push_back(s);
            }
            o.opts = b;
            break;
        }
        default: {
            o.driver = "qcow2";
            BlockdevOptionsQcow2 q;
            q.file = ref(depth, false);
            if (coin()) q.backing = ref(depth, true);
            if (coin()) q.data_file = ref(depth, false);
            q.lazy_refcounts_set = coin();
            q.lazy_refcounts = q.lazy_refcounts_set && coin();
            q.pass_discard_request = coin();
            q.pass_discard_snapshot = coin();
            q.pass_discard_other = coin();
            q.discard_no_unref = coin();
            q.overlap_check = static_cast<Qcow2OverlapCheckMode>(below(4));
            switch (below(4)) {
            case 0: break;
            case 1: q.cache_size = 1 << 20; q.l2_cache_size = below(1 << 20); break;
            case 2: q.cache_size = 1 << 20; q.refcount_cache_size = below(1 << 20); break;
            default: q.l2_cache_size = opt_size(1); q.refcount_cache_size = opt_size(1); break;
            }
            if (coin()) q.l2_cache_entry_size = 512ULL << below(13);
            q.cache_clean_interval = coin() ? 600 : below(1ULL << 32);
            if (coin()) {
                o.read_only = true;
                if (coin()) q.snapshot_id = text();
                else q.snapshot_name = text();
            }
            o.opts = q;
            break;
        }
        }
        return o;
    }

    bool has_null() const { return has_null_; }
    void reset() { has_null_ = false; names_ = 0; }

  private:
    uint64_t s_;
    int names_ = 0;
    bool has_null_ = false;
};

// from_tree(to_json(x)) == x, and the same through JSON text, keyval text
// and json: filenames.
START_TEST(test_round_trip)
{
    Gen g(42);
    int keyval_checked = 0;
    for (int i = 0; i < 2000; i++) {
        g.reset();
        BlockdevOptions o = g.options(0);
        json j = blockdev_options_to_json(o);

        auto t = blockdev_options_from_tree(j, false);
        ck_assert_msg(t.ok(), "iteration %d: %s\n%s", i, t.ok() ? "" : t.msg().c_str(), j.dump().c_str());
        ck_assert_opts_eq(t.value(), o);

        std::string text = j.dump();
        auto p = parse_blockdev_arg(text);
        ck_assert_msg(p.ok(), "iteration %d: %s", i, p.ok() ? "" : p.msg().c_str());
        ck_assert_opts_eq(p.value(), o);

        auto f = parse_json_filename("json:" + text);
        ck_assert_msg(f.ok(), "iteration %d: %s", i, f.ok() ? "" : f.msg().c_str());
        ck_assert_opts_eq(f.value(), o);

        std::string kv = blockdev_options_to_keyval(o);
        auto k = parse_blockdev_arg(kv);
        if (g.has_null()) {
            // Keyval cannot express a null backing: refused, not misread.
            ck_assert_msg(!k.ok(), "iteration %d: null backing accepted: %s", i, kv.c_str());
        } else {
            ck_assert_msg(k.ok(), "iteration %d: %s\n%s", i, k.ok() ? "" : k.msg().c_str(), kv.c_str());
            ck_assert_opts_eq(k.value(), o);
            keyval_checked++;
        }
    }
    ck_assert_int_gt(keyval_checked, 1000);
}
END_TEST

// ---------------------------------------------------------------- json:

START_TEST(test_json_filename)
{
    auto r = parse_json_filename(
        R"(json:{"driver":"qcow2","file.driver":"file","file.filename":"/x.qcow2","backing":null,)"
        R"("cache.direct":true,"read-only":true,"snapshot.id":"1"})");
    ck_assert_result_ok(r);
    BlockdevOptions o = r.value();
    auto *q = o.as<BlockdevOptionsQcow2>();
    ck_assert_ptr_nonnull(q);
    ck_assert(o.cache_direct);
    ck_assert(q->backing.kind == BlockdevRef::Kind::kNull);
    ck_assert_str_eq(q->file.def->as<BlockdevOptionsFile>()->filename.c_str(), "/x.qcow2");
    ck_assert_str_eq(q->snapshot_id->c_str(), "1");

    // Flattened and nested forms mix, and give what --blockdev gives.
    r = parse_json_filename(R"(json:{"driver":"blkdebug","image":{"driver":"null-co"},)"
                            R"("image.size":4096,"inject-error.0.event":"read_aio","inject-error.0.errno":28})");
    ck_assert_result_ok(r);
    ck_assert_opts_eq(r.value(),
                      parse_ok("blkdebug,image.driver=null-co,image.size=4k,"
                               "inject-error.0.event=read_aio,inject-error.0.errno=28"));

    ck_assert_error(parse_json_filename(R"({"driver":"null-co"})"),
                    "json: filename must start with 'json:'");
    ck_assert_error(parse_json_filename("json:{"),
                    "JSON: syntax error while parsing object key - unexpected end of input; "
                    "expected string literal at position 1");
    ck_assert_error(parse_json_filename(R"(json:{"driver":"raw","file":"f","file.driver":"x"})"),
                    "JSON: 'file' is used both as a value and as an object prefix");
    ck_assert_error(parse_json_filename(R"(json:{"driver":"raw","node-name":"d","file.driver":"file"})"),
                    "blockdev 'd': file: missing required key 'filename'");
    // JSON typing still applies.
    ck_assert_error(parse_json_filename(R"(json:{"driver":"null-co","size":"1G"})"),
                    "blockdev: size: expected an integer");
}
END_TEST

// ---------------------------------------------------------------- suite

static Suite *qapi_suite()
{
    Suite *s = suite_create("qapi");
    TCase *tc = tcase_create("size");
    tcase_add_test(tc, test_size_valid);
    tcase_add_test(tc, test_size_invalid);
    suite_add_tcase(s, tc);

    tc = tcase_create("keyval");
    tcase_add_test(tc, test_keyval_basic);
    tcase_add_test(tc, test_keyval_escapes);
    tcase_add_test(tc, test_keyval_implied);
    tcase_add_test(tc, test_keyval_arrays);
    tcase_add_test(tc, test_keyval_errors);
    tcase_add_test(tc, test_keyval_format);
    suite_add_tcase(s, tc);

    tc = tcase_create("json");
    tcase_add_test(tc, test_json_object);
    tcase_add_test(tc, test_json_unflatten);
    tcase_add_test(tc, test_json_filename);
    suite_add_tcase(s, tc);

    tc = tcase_create("decode");
    tcase_add_test(tc, test_decode_file);
    tcase_add_test(tc, test_decode_raw_null);
    tcase_add_test(tc, test_decode_blkdebug);
    tcase_add_test(tc, test_decode_qcow2);
    tcase_add_test(tc, test_both_syntaxes);
    tcase_add_test(tc, test_errors_structure);
    tcase_add_test(tc, test_errors_types);
    tcase_add_test(tc, test_errors_values);
    suite_add_tcase(s, tc);

    tc = tcase_create("encode");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_to_json);
    tcase_add_test(tc, test_round_trip);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(qapi_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

// Unit tests for qapi/: size parsing, keyval and JSON syntax, the typed
// BlockdevOptions decoder (every error class with its exact message; each
// driver decodes its own keys), the encoders and their round-trip property
// over every driver's keys, json: pseudo-filenames.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "block/block.h"
#include "qapi/block-options.h"
#include "qapi/block-parse.h"
#include "qapi/json-quotes.h"
#include "qapi/keyval.h"
#include "qapi/size.h"
#include "tests/unit/testdrv.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;
using nlohmann::json;

namespace {

// ------------------------------------------------------------ helpers

// Equality: the generic members field by field, then the whole options as
// JSON (each driver encodes its own members, children included; a decoded
// member that the encoder dropped is caught by the tests that compare the
// JSON with an expected text). *why names the first difference.
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
    EQ_FIELD(!a.drv, !b.drv, "driver options present");
    const json ja = blockdev_options_to_json(a), jb = blockdev_options_to_json(b);
    if (ja != jb) {
        *why = "JSON " + ja.dump() + " != " + jb.dump();
        return false;
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

// The schema of these tests: the built-in drivers.
const DriverRegistry &schema() { return builtin_drivers(); }

BlockdevOptions parse_ok(const std::string &arg)
{
    auto r = parse_blockdev_arg(schema(), arg);
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

// The options of arg, encoded, are exactly text.
#define ck_assert_encodes(arg, text) ck_assert_json_eq(blockdev_options_to_json(parse_ok(arg)), text)

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
        {"0.1k", 102},                  // 102.4: rounded to the nearest byte
        {"1.00048k", 1024}, {"1.00049k", 1025}, {"1.0009k", 1025},   // 1024.49, 1024.50, 1024.92
        {"1.9999999999999999999999k", 1024},   // the fraction is 1.0 as a double: QEMU drops it
        {" 1", 1}, {"\t\n2k", 2048}, {"+1", 1}, {"+0x10", 16}, {"010", 10}, {"0x1b", 27},
        {"0x1G", 1ULL << 30}, {"1.0b", 1}, {"1.0000000000000000000001b", 1},
    };
    for (const auto &c : cases) {
        auto r = parse_size(c.in);
        ck_assert_msg(r.ok(), "%s: %s", c.in, r.ok() ? "" : r.msg().c_str());
        ck_assert_msg(r.value() == c.out, "%s: got %llu", c.in, (unsigned long long)r.value());
    }
}
END_TEST

START_TEST(test_strtosz_codes)
{
    // -EINVAL for malformed text, -ERANGE for a well-formed number that is
    // too large; a number followed by anything is malformed even if large.
    struct { const char *in; int rc; bool hex_suffix; } cases[] = {
        {"16E", -ERANGE, false}, {"18446744073709551616", -ERANGE, false},
        {"99999999999999999999k", -EINVAL, false}, {"16Ex", -EINVAL, false},
        {"0x10000000000000000", -ERANGE, false}, {"0xffffffffffffffffk", -ERANGE, true},
        {"0x1k", 0, true}, {"0x1kx", -EINVAL, true}, {"0x1b", 0, false}, {"1k", 0, false},
        {"-99", -EINVAL, false}, {"15.99999999E", 0, false},
    };
    for (const auto &c : cases) {
        uint64_t v = 0;
        bool hex = false;
        ck_assert_msg(strtosz(c.in, &v, &hex) == c.rc, "%s: got %d", c.in, strtosz(c.in, &v, &hex));
        ck_assert_msg(hex == c.hex_suffix, "%s: hex_suffix %d", c.in, hex);
    }
    uint64_t v = 0;
    ck_assert_int_eq(strtosz(std::string("1\0k", 3), &v), -EINVAL);
}
END_TEST

START_TEST(test_size_invalid)
{
    const char *cases[] = {"", "abc", "-1", "-0", " -1", "+-1", "1 ", "4k ", "1.5", "1.5B",
                           "16E", "18446744073709551616", "0x", "0x10000000000000000", "0x1.5k",
                           "1KB", "1Q", ".5M", "1..5M", "1e3", "1.0e1k", "1.5e-1k", "k", "1-"};
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
    ck_assert_ptr_nonnull(o.drv.get());
    ck_assert_json_eq(blockdev_options_to_json(o),
                      R"({"driver":"file","node-name":"f","filename":"/tmp/a,b.img","aio":"threads",
                          "locking":"off","aio-max-batch":16,"drop-cache":false,"read-only":true,
                          "auto-read-only":true,"force-share":true,"discard":"unmap",
                          "detect-zeroes":"unmap","cache":{"direct":true,"no-flush":true}})");

    // Defaults: only the required member is encoded, and giving the
    // defaults explicitly changes nothing.
    o = parse_ok("file,filename=x");
    ck_assert(o.node_name.empty() && !o.read_only && !o.cache_direct);
    ck_assert(o.discard == BlockdevDiscardOptions::kIgnore);
    ck_assert_json_eq(blockdev_options_to_json(o), R"({"driver":"file","filename":"x"})");
    ck_assert_opts_eq(parse_ok("file,filename=x,aio=io_uring,locking=auto,drop-cache=on,aio-max-batch=0"), o);

    // QEMU's discard aliases.
    ck_assert(parse_ok("file,filename=x,discard=on").discard == BlockdevDiscardOptions::kUnmap);
    ck_assert(parse_ok("file,filename=x,discard=off").discard == BlockdevDiscardOptions::kIgnore);
    ck_assert(parse_ok(R"({"driver":"file","filename":"x","discard":"on"})").discard ==
              BlockdevDiscardOptions::kUnmap);
    // aio=native with O_DIRECT.
    ck_assert_encodes("file,filename=x,aio=native,cache.direct=on",
                      R"({"driver":"file","filename":"x","aio":"native","cache":{"direct":true}})");
    ck_assert_encodes("file,filename=x,aio=io_uring", R"({"driver":"file","filename":"x"})");
}
END_TEST

START_TEST(test_decode_raw_null)
{
    ck_assert_encodes("raw,node-name=r,file=f0,offset=1M,size=4k",
                      R"({"driver":"raw","node-name":"r","file":"f0","offset":1048576,"size":4096})");
    // An explicit offset of 0 is kept (it is not "absent").
    ck_assert_encodes("raw,file=f0,offset=0", R"({"driver":"raw","file":"f0","offset":0})");
    // An inline child, decoded by its own driver (1G: null's default).
    ck_assert_encodes("raw,file.driver=null-co,file.size=1G", R"({"driver":"raw","file":{"driver":"null-co"}})");
    ck_assert_encodes("raw,file.driver=null-co,file.size=2G",
                      R"({"driver":"raw","file":{"driver":"null-co","size":2147483648}})");

    BlockdevOptions o = parse_ok("null-aio,size=0x1000,latency-ns=100,read-zeroes=off");
    ck_assert_str_eq(o.driver.c_str(), "null-aio");
    ck_assert_json_eq(blockdev_options_to_json(o),
                      R"({"driver":"null-aio","size":4096,"latency-ns":100,"read-zeroes":false})");
    ck_assert_encodes("null-co", R"({"driver":"null-co"})");
    ck_assert_opts_eq(parse_ok("null-co,size=1G,read-zeroes=on,latency-ns=0"), parse_ok("null-co"));
}
END_TEST

START_TEST(test_decode_blkdebug)
{
    ck_assert_encodes(
        "blkdebug,node-name=b,image.driver=null-co,align=4k,max-transfer=64k,opt-write-zero=8k,"
        "max-write-zero=1M,opt-discard=4k,max-discard=8k,"
        "inject-error.0.event=l2_update,inject-error.0.errno=28,inject-error.0.once=on,"
        "inject-error.0.state=2,inject-error.0.immediately=on,"
        "inject-error.1.iotype=write-zeroes,inject-error.1.sector=-1,inject-error.1.offset=1M,"
        "inject-error.1.bytes=4k,inject-error.1.after=3,"
        "set-state.0.event=l1_update,set-state.0.new_state=2,"
        "set-state.1.event=read_aio,set-state.1.state=2,set-state.1.new_state=3",
        R"({"driver":"blkdebug","node-name":"b","image":{"driver":"null-co"},"align":4096,
            "max-transfer":65536,"opt-write-zero":8192,"max-write-zero":1048576,"opt-discard":4096,
            "max-discard":8192,
            "inject-error":[{"event":"l2_update","errno":28,"once":true,"state":2,"immediately":true},
                            {"iotype":"write-zeroes","offset":1048576,"bytes":4096,"after":3}],
            "set-state":[{"event":"l1_update","new_state":2},
                         {"event":"read_aio","state":2,"new_state":3}]})");
    // The defaults of a rule (errno 5, sector -1, any iotype) are not encoded.
    ck_assert_opts_eq(parse_ok("blkdebug,image=x,inject-error.0.errno=5,inject-error.0.sector=-1,"
                               "inject-error.0.once=off,inject-error.0.after=0,inject-error.0.state=0"),
                      parse_ok(R"({"driver":"blkdebug","image":"x","inject-error":[{}]})"));
    ck_assert_encodes("blkdebug,image=x,inject-error.0.sector=7",
                      R"({"driver":"blkdebug","image":"x","inject-error":[{"sector":7}]})");

    const char *iotypes[] = {"read", "write", "write-zeroes", "discard", "flush", "block-status", "truncate"};
    for (const char *t : iotypes) {
        std::string arg = std::string("blkdebug,image=x,inject-error.0.iotype=") + t;
        json j = blockdev_options_to_json(parse_ok(arg));
        const std::string got = j["inject-error"][0]["iotype"].get<std::string>();   // outlives the check
        ck_assert_str_eq(got.c_str(), t);
    }
}
END_TEST

START_TEST(test_decode_qcow2)
{
    ck_assert_encodes(
        "qcow2,node-name=q,file.driver=file,file.filename=a.qcow2,backing=base,data-file=df,"
        "lazy-refcounts=on,pass-discard-request=off,pass-discard-snapshot=off,"
        "pass-discard-other=on,discard-no-unref=on,overlap-check=all,cache-size=4M,"
        "l2-cache-size=1M,l2-cache-entry-size=4k,cache-clean-interval=0,read-only=on,"
        "snapshot.id=1,snapshot.name=snap",
        R"({"driver":"qcow2","node-name":"q","read-only":true,
            "file":{"driver":"file","filename":"a.qcow2"},"backing":"base","data-file":"df",
            "lazy-refcounts":true,"pass-discard-request":false,"pass-discard-snapshot":false,
            "pass-discard-other":true,"discard-no-unref":true,"overlap-check":"all",
            "cache-size":4194304,"l2-cache-size":1048576,"l2-cache-entry-size":4096,
            "cache-clean-interval":0,"snapshot.id":"1","snapshot.name":"snap"})");

    // Defaults; an explicit lazy-refcounts=off is kept (it overrides the
    // image), so is an explicit pass-discard-request (it overrides discard).
    ck_assert_encodes("qcow2,file=f", R"({"driver":"qcow2","file":"f"})");
    ck_assert_encodes("qcow2,file=f,pass-discard-request=on",
                      R"({"driver":"qcow2","file":"f","pass-discard-request":true})");
    ck_assert_opts_eq(parse_ok("qcow2,file=f,pass-discard-snapshot=on,"
                               "pass-discard-other=off,discard-no-unref=off,overlap-check=cached,"
                               "cache-clean-interval=600"),
                      parse_ok("qcow2,file=f"));
    ck_assert_encodes("qcow2,file=f,lazy-refcounts=off", R"({"driver":"qcow2","file":"f","lazy-refcounts":false})");
    ck_assert_encodes("qcow2,file=f,refcount-cache-size=64k",
                      R"({"driver":"qcow2","file":"f","refcount-cache-size":65536})");

    // JSON: backing null; snapshot as literal dotted keys or nested.
    ck_assert_encodes(R"({"driver":"qcow2","file":"f","backing":null,"read-only":true,"snapshot.id":"3"})",
                      R"({"driver":"qcow2","file":"f","backing":null,"read-only":true,"snapshot.id":"3"})");
    ck_assert_encodes(R"({"driver":"qcow2","file":"f","read-only":true,"snapshot":{"name":"s"}})",
                      R"({"driver":"qcow2","file":"f","read-only":true,"snapshot.name":"s"})");
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
        auto t = blockdev_options_from_tree(schema(), json::parse(c.js), false);
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
        auto r = parse_blockdev_arg(schema(), cases[i].arg);
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
    ck_assert_error(blockdev_options_from_tree(schema(), json::array(), false), "blockdev: expected an object");
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
        // blkdebug's limit rules are checked at open (test-blkdebug).
        {"blkdebug,node-name=d,image=i,align=4G",
         "blockdev 'd': align: 4294967296 is out of range (0 to 4294967295)"},
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
    ck_assert(!parse_blockdev_arg(schema(), blockdev_options_to_keyval(o)).ok());
    // A file name that really starts with "file:" survives.
    o = parse_ok("file,filename=file:file:x");
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

    // A child: a reference, null (allow_null), or an inline definition.
    // Sets in[key] (what is decoded) and canon[key] (what must be encoded).
    void ref(json &in, json &canon, const char *key, int depth, bool allow_null)
    {
        uint64_t k = below(depth > 2 ? 2 : 3);
        if (k == 0) {
            in[key] = canon[key] = coin() ? node_name() : "#block" + std::to_string(below(100));
        } else if (k == 1 && allow_null) {
            in[key] = canon[key] = nullptr;
            has_null_ = true;
        } else if (k == 1) {
            in[key] = canon[key] = text();
        } else {
            json c;
            in[key] = options(depth + 1, &c);
            canon[key] = c;
        }
    }

    // Sets key in both to a value, or leaves it out (the default).
    template <typename T> void maybe(json &in, json &canon, const char *key, const T &value)
    {
        if (coin()) in[key] = canon[key] = value;
    }

    // Valid options over every driver's keys in canonical form: a member
    // is present only with a value other than its default, enums by their
    // canonical names. Returns the tree to decode; *canon is what encoding
    // the decoded options must give (they differ where the input uses an
    // alias: a "file:" prefix, an explicit default).
    json options(int depth, json *canon)
    {
        json in = json::object();
        json &c = *canon = json::object();
        if (coin()) in["node-name"] = c["node-name"] = node_name();
        const bool ro = coin();
        if (ro) in["read-only"] = c["read-only"] = true;
        if (coin()) in["auto-read-only"] = c["auto-read-only"] = true;
        if (ro && coin()) in["force-share"] = c["force-share"] = true;
        bool unmap = coin();
        const uint64_t dz = below(3);
        if (dz == 2) unmap = true;
        if (unmap) in["discard"] = c["discard"] = "unmap";
        if (dz) in["detect-zeroes"] = c["detect-zeroes"] = dz == 1 ? "on" : "unmap";
        bool direct = coin();
        const bool no_flush = coin();
        switch (below(depth > 3 ? 3 : 11)) {
        case 0: {
            in["driver"] = c["driver"] = "file";
            std::string name = text();
            c["filename"] = name;
            in["filename"] = (coin() ? "file:" : "") + name;
            const char *aio[] = {"threads", "native", "io_uring"};
            const uint64_t a = below(3);
            if (a == 1) direct = true;
            if (a != 2) in["aio"] = c["aio"] = aio[a];
            else if (coin()) in["aio"] = "io_uring";
            const char *locking[] = {"on", "off"};
            if (coin()) in["locking"] = c["locking"] = locking[below(2)];
            if (!below(3)) in["aio-max-batch"] = c["aio-max-batch"] = 1 + below(INT32_MAX - 1);
            if (coin()) in["drop-cache"] = c["drop-cache"] = false;
            break;
        }
        case 1: {
            in["driver"] = c["driver"] = coin() ? "null-co" : "null-aio";
            if (coin()) in["size"] = c["size"] = below(1ULL << 50);
            if (coin()) in["latency-ns"] = c["latency-ns"] = 1 + below(INT64_MAX);
            if (coin()) in["read-zeroes"] = c["read-zeroes"] = false;
            break;
        }
        case 2: {
            in["driver"] = c["driver"] = "test-mem";
            const uint64_t align = 1ULL << below(13);
            if (align > 1) in["align"] = c["align"] = align;
            if (coin()) in["size"] = c["size"] = below(1ULL << 40);
            if (coin()) in["max-transfer"] = c["max-transfer"] = align * (1 + below(64));
            if (coin()) in["zero-align"] = c["zero-align"] = align << below(4);
            if (coin()) in["write-zeroes"] = c["write-zeroes"] = false;
            if (coin()) ref(in, c, "file", depth, false);
            break;
        }
        case 3: {
            in["driver"] = c["driver"] = "raw";
            ref(in, c, "file", depth, false);
            maybe(in, c, "offset", below(1 << 20));
            maybe(in, c, "size", below(1 << 20) * 512);
            break;
        }
        case 4:
            blkdebug(in, c, depth);
            break;
        case 5:
            nbd(in, c);
            break;
        case 6: {
            // The jobs' own filters, whose only option is their child
            // (commit_top's is "backing", as QEMU's), and copy-on-read
            // with its bottom.
            static const char *const filters[] = {"copy-on-read", "commit_top", "mirror_top"};
            const char *f = filters[below(3)];
            if (!builtin_drivers().find(f)) f = filters[0];
            in["driver"] = c["driver"] = f;
            ref(in, c, f == filters[1] ? "backing" : "file", depth, false);
            if (f == filters[0] && coin()) in["bottom"] = c["bottom"] = node_name();
            break;
        }
        case 7:
            rbd(in, c);
            break;
        case 8:
            in["driver"] = c["driver"] = "copy-before-write";
            ref(in, c, "file", depth, false);
            ref(in, c, "target", depth, false);
            if (coin()) in["bitmap"] = c["bitmap"] = {{"node", node_name()}, {"name", text()}};
            if (coin()) in["on-cbw-error"] = c["on-cbw-error"] = "break-snapshot";
            if (coin()) in["cbw-timeout"] = c["cbw-timeout"] = 1 + below(UINT32_MAX - 1);
            if (coin()) in["min-cluster-size"] = c["min-cluster-size"] = uint64_t(512) << below(20);
            break;
        case 9:
            in["driver"] = c["driver"] = "blklogwrites";
            ref(in, c, "file", depth, false);
            ref(in, c, "log", depth, false);
            if (coin()) in["log-sector-size"] = c["log-sector-size"] = uint64_t(1) << below(24);
            if (coin()) in["log-append"] = c["log-append"] = true;
            if (coin()) in["log-super-update-interval"] = c["log-super-update-interval"] = 1 + below(1 << 20);
            break;
        default:
            qcow2(in, c, depth, ro);
            break;
        }
        if (direct || no_flush) {
            json cache = json::object();
            if (direct) cache["direct"] = true;
            if (no_flush) cache["no-flush"] = true;
            in["cache"] = c["cache"] = cache;
        }
        return in;
    }

    void blkdebug(json &in, json &c, int depth)
    {
        in["driver"] = c["driver"] = "blkdebug";
        ref(in, c, "image", depth, false);
        const uint64_t align = coin() ? 0 : 1ULL << below(20);
        if (align) in["align"] = c["align"] = align;
        const uint64_t a = align ? align : 1;
        if (coin()) in["max-transfer"] = c["max-transfer"] = a * (1 + below(15));
        uint64_t owz = coin() ? 0 : a * (1 + below(4));
        if (owz) in["opt-write-zero"] = c["opt-write-zero"] = owz;
        const uint64_t wz = owz > a ? owz : a;
        if (coin()) in["max-write-zero"] = c["max-write-zero"] = wz * (1 + below(3));
        uint64_t od = coin() ? 0 : a * (1 + below(3));
        if (od) in["opt-discard"] = c["opt-discard"] = od;
        const uint64_t d = od > a ? od : a;
        if (coin()) in["max-discard"] = c["max-discard"] = d * (1 + below(3));
        const char *iotypes[] = {"read", "write", "write-zeroes", "discard", "flush", "block-status", "truncate"};
        size_t ne = below(4);
        if (ne) in["inject-error"] = c["inject-error"] = json::array();
        for (size_t i = 0; i < ne; i++) {
            json e = json::object(), ec = json::object();
            if (coin()) e["event"] = ec["event"] = text();
            if (coin()) e["iotype"] = ec["iotype"] = iotypes[below(7)];
            const int64_t err = static_cast<int64_t>(1 + below(4095));
            if (err != 5) e["errno"] = ec["errno"] = err;
            else if (coin()) e["errno"] = 5;
            const int64_t sector = static_cast<int64_t>(below(1000));
            if (coin()) e["sector"] = ec["sector"] = sector;
            if (coin()) {
                e["offset"] = ec["offset"] = below(1ULL << 40);
                if (coin()) e["bytes"] = ec["bytes"] = 1 + below(1ULL << 40);
            }
            if (coin()) e["after"] = ec["after"] = 1 + below(UINT64_MAX - 1);
            if (coin()) e["once"] = ec["once"] = true;
            if (coin()) e["immediately"] = ec["immediately"] = true;
            if (coin()) e["state"] = ec["state"] = static_cast<int64_t>(1 + below(4));
            in["inject-error"].push_back(e);
            c["inject-error"].push_back(ec);
        }
        size_t ns = below(3);
        if (ns) in["set-state"] = c["set-state"] = json::array();
        for (size_t i = 0; i < ns; i++) {
            json x = {{"event", text()}, {"new_state", static_cast<int64_t>(below(5))}};
            if (coin()) x["state"] = static_cast<int64_t>(1 + below(4));
            in["set-state"].push_back(x);
            c["set-state"].push_back(x);
        }
    }

    void nbd(json &in, json &c)
    {
        in["driver"] = c["driver"] = "nbd";
        json srv = coin() ? json{{"type", "unix"}, {"path", text()}}
                          : json{{"type", "inet"}, {"host", text()}, {"port", std::to_string(below(65536))}};
        in["server"] = c["server"] = srv;
        if (coin()) in["export"] = c["export"] = coin() ? text() : "";
        if (coin()) in["tls-creds"] = c["tls-creds"] = text();
        if (coin()) in["tls-hostname"] = c["tls-hostname"] = text();
        if (coin()) in["x-dirty-bitmap"] = c["x-dirty-bitmap"] = "qemu:dirty-bitmap:" + text();
        if (coin()) in["reconnect-delay"] = c["reconnect-delay"] = 1 + below(3600);
        if (coin()) in["open-timeout"] = c["open-timeout"] = 1 + below(3600);
    }

    void rbd(json &in, json &c)
    {
        in["driver"] = c["driver"] = "rbd";
        in["pool"] = c["pool"] = "p" + text();
        in["image"] = c["image"] = "i" + text();
        for (const char *k : {"namespace", "snapshot", "conf", "user", "key-secret"}) {
            if (coin()) in[k] = c[k] = "v" + text();
        }
        if (coin()) in["auth-client-required"] = c["auth-client-required"] = json{"cephx", "none"};
        if (coin()) {
            json srv = json::array({{{"host", text()}, {"port", std::to_string(below(65536))}}});
            in["server"] = c["server"] = srv;
        }
        // "=keyvalue-pairs" (what a file name's extra keys become) is left
        // out: like QEMU's, keyval cannot write a key starting with '='.
    }

    void qcow2(json &in, json &c, int depth, bool ro)
    {
        in["driver"] = c["driver"] = "qcow2";
        ref(in, c, "file", depth, false);
        if (coin()) ref(in, c, "backing", depth, true);
        if (coin()) ref(in, c, "data-file", depth, false);
        maybe(in, c, "lazy-refcounts", coin());
        if (coin()) in["pass-discard-request"] = c["pass-discard-request"] = false;
        if (coin()) in["pass-discard-snapshot"] = c["pass-discard-snapshot"] = false;
        if (coin()) in["pass-discard-other"] = c["pass-discard-other"] = true;
        if (coin()) in["discard-no-unref"] = c["discard-no-unref"] = true;
        const char *overlap[] = {"none", "constant", "all"};
        if (coin()) in["overlap-check"] = c["overlap-check"] = overlap[below(3)];
        switch (below(4)) {
        case 0: break;
        case 1:
            in["cache-size"] = c["cache-size"] = 1 << 20;
            in["l2-cache-size"] = c["l2-cache-size"] = below(1 << 20);
            break;
        case 2:
            in["cache-size"] = c["cache-size"] = 1 << 20;
            in["refcount-cache-size"] = c["refcount-cache-size"] = below(1 << 20);
            break;
        default:
            maybe(in, c, "l2-cache-size", below(1 << 20));
            maybe(in, c, "refcount-cache-size", below(1 << 20));
            break;
        }
        if (coin()) in["l2-cache-entry-size"] = c["l2-cache-entry-size"] = 512ULL << below(13);
        if (coin()) {
            uint64_t v = below(1ULL << 32);
            if (v != 600) in["cache-clean-interval"] = c["cache-clean-interval"] = v;
        }
        if (ro && coin()) {
            const char *key = coin() ? "snapshot.id" : "snapshot.name";
            in[key] = c[key] = text();
        }
    }

    bool has_null() const { return has_null_; }
    void reset() { has_null_ = false; names_ = 0; }

  private:
    uint64_t s_;
    int names_ = 0;
    bool has_null_ = false;
};

// Over random valid options of every driver (the built-in ones and
// test-mem): decoding gives options that encode to exactly the canonical
// JSON (no member lost or invented by a driver's decoder or encoder), and
// from_tree(to_json(x)) == x, also through JSON text, keyval text and json:
// filenames.
START_TEST(test_round_trip)
{
    const DriverRegistry &reg = test_registry();
    Gen g(42);
    int keyval_checked = 0;
    std::set<std::string> drivers;
    for (int i = 0; i < 2000; i++) {
        g.reset();
        json canon;
        json in = g.options(0, &canon);
        auto d = blockdev_options_from_tree(reg, in, false);
        ck_assert_msg(d.ok(), "iteration %d: %s\n%s", i, d.ok() ? "" : d.msg().c_str(), in.dump().c_str());
        const BlockdevOptions &o = d.value();
        drivers.insert(o.driver);
        json j = blockdev_options_to_json(o);
        ck_assert_msg(j == canon, "iteration %d:\n  input   %s\n  encoded %s\n  want    %s", i, in.dump().c_str(),
                      j.dump().c_str(), canon.dump().c_str());

        auto t = blockdev_options_from_tree(reg, j, false);
        ck_assert_msg(t.ok(), "iteration %d: %s\n%s", i, t.ok() ? "" : t.msg().c_str(), j.dump().c_str());
        ck_assert_opts_eq(t.value(), o);

        std::string text = j.dump();
        auto p = parse_blockdev_arg(reg, text);
        ck_assert_msg(p.ok(), "iteration %d: %s", i, p.ok() ? "" : p.msg().c_str());
        ck_assert_opts_eq(p.value(), o);

        auto f = parse_json_filename(reg, "json:" + text);
        ck_assert_msg(f.ok(), "iteration %d: %s", i, f.ok() ? "" : f.msg().c_str());
        ck_assert_opts_eq(f.value(), o);

        std::string kv = blockdev_options_to_keyval(o);
        auto k = parse_blockdev_arg(reg, kv);
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
    // Every driver of the schema took part (at the top level).
    for (const BlockDriver *drv : reg.all()) {
        ck_assert_msg(drivers.count(drv->name), "driver %s never generated", drv->name);
    }
}
END_TEST

// ---------------------------------------------------------------- json:

START_TEST(test_json_quotes)
{
    struct Case {
        const char *in, *out;
    } cases[] = {
        {"", ""},
        {R"({"a": 1})", R"({"a": 1})"},                       // standard JSON unchanged
        {R"({'a': 'b'})", R"({"a": "b"})"},
        {R"(['x"y'])", R"(["x\"y"])"},                         // bare " inside '...'
        {R"(["x'y"])", R"(["x'y"])"},                          // bare ' inside "..."
        {R"(['it\'s'])", R"(["it's"])"},                       // \' inside '...'
        {R"(["it\'s"])", R"(["it's"])"},                       // \' inside "..."
        {R"(['a\"b'])", R"(["a\"b"])"},                        // \" kept
        {R"(['a\\'])", R"(["a\\"])"},                          // \\ then the closing quote
        {R"(['\\\''])", R"(["\\'"])"},
        {R"(['\n\t\u0041\/'])", R"(["\n\t\u0041\/"])"},        // other escapes copied
        {R"(['\q'])", R"(["\q"])"},                            // invalid: the parser's to refuse
        {R"({'k': "v", "k2": 'v2'})", R"({"k": "v", "k2": "v2"})"},
        {R"(['', ""])", R"(["", ""])"},
        {"{ 'a' :true,'b':null }", R"({ "a" :true,"b":null })"},
    };
    for (const Case &c : cases) {
        auto r = json_translate_quotes(c.in);
        ck_assert_msg(r.ok(), "%s: %s", c.in, r.ok() ? "" : r.msg().c_str());
        ck_assert_str_eq(r.value().c_str(), c.out);
    }
    ck_assert_error(json_translate_quotes("{'a"), "JSON: unterminated string starting at position 1");
    ck_assert_error(json_translate_quotes(R"({"a": "b)"), "JSON: unterminated string starting at position 6");
    ck_assert_error(json_translate_quotes(R"(['a\')"), "JSON: unterminated string starting at position 1");
    ck_assert_error(json_translate_quotes(R"(['a\)"), "JSON: unterminated string starting at position 1");

    // Through the object parser: the values, and errors.
    auto j = parse_json_object(R"({'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'a"b\'c'}})");
    ck_assert_result_ok(j);
    const std::string filename = j.value()["file"]["filename"].get<std::string>();
    ck_assert_str_eq(filename.c_str(), "a\"b'c");
    ck_assert_error(parse_json_object("{'a': 'b}"), "JSON: unterminated string starting at position 6");
    ck_assert_error(parse_json_object("{'a': 'b', 'a': 1}"), "JSON: duplicate key 'a'");
    ck_assert(!parse_json_object(R"({'a': '\q'})").ok());
}
END_TEST

START_TEST(test_json_filename)
{
    auto r = parse_json_filename(schema(), 
        R"(json:{"driver":"qcow2","file.driver":"file","file.filename":"/x.qcow2","backing":null,)"
        R"("cache.direct":true,"read-only":true,"snapshot.id":"1"})");
    ck_assert_result_ok(r);
    BlockdevOptions o = r.value();
    ck_assert(o.cache_direct);
    ck_assert_json_eq(blockdev_options_to_json(o),
                      R"({"driver":"qcow2","file":{"driver":"file","filename":"/x.qcow2"},"backing":null,
                          "cache":{"direct":true},"read-only":true,"snapshot.id":"1"})");

    // Flattened and nested forms mix, and give what --blockdev gives.
    r = parse_json_filename(schema(), R"(json:{"driver":"blkdebug","image":{"driver":"null-co"},)"
                            R"("image.size":4096,"inject-error.0.event":"read_aio","inject-error.0.errno":28})");
    ck_assert_result_ok(r);
    ck_assert_opts_eq(r.value(),
                      parse_ok("blkdebug,image.driver=null-co,image.size=4k,"
                               "inject-error.0.event=read_aio,inject-error.0.errno=28"));

    // Single-quoted strings give the same options.
    r = parse_json_filename(schema(), "json:{'driver': 'blkdebug', 'image': {'driver': 'null-co'}, "
                                      "'image.size': 4096, 'inject-error.0.event': 'read_aio', "
                                      "'inject-error.0.errno': 28}");
    ck_assert_result_ok(r);
    ck_assert_opts_eq(r.value(),
                      parse_ok("blkdebug,image.driver=null-co,image.size=4k,"
                               "inject-error.0.event=read_aio,inject-error.0.errno=28"));

    // So do the daemon's JSON --blockdev arguments.
    ck_assert_opts_eq(parse_ok("{'driver': 'null-co', 'node-name': 'n', 'size': 4096, 'read-only': true}"),
                      parse_ok("null-co,node-name=n,size=4k,read-only=on"));

    ck_assert_error(parse_json_filename(schema(), R"({"driver":"null-co"})"),
                    "json: filename must start with 'json:'");
    ck_assert_error(parse_json_filename(schema(), "json:{"),
                    "JSON: syntax error while parsing object key - unexpected end of input; "
                    "expected string literal at position 1");
    ck_assert_error(parse_json_filename(schema(), R"(json:{"driver":"raw","file":"f","file.driver":"x"})"),
                    "JSON: 'file' is used both as a value and as an object prefix");
    ck_assert_error(parse_json_filename(schema(), R"(json:{"driver":"raw","node-name":"d","file.driver":"file"})"),
                    "blockdev 'd': file: missing required key 'filename'");
    // JSON typing still applies.
    ck_assert_error(parse_json_filename(schema(), R"(json:{"driver":"null-co","size":"1G"})"),
                    "blockdev: size: expected an integer");
}
END_TEST

START_TEST(test_filename_forms)
{
    // File names as QEMU reads them: the part before a ':' that comes before
    // any '/' is a protocol prefix.
    struct {
        const char *in, *out;
    } cases[] = {
        {"a.qcow2", R"({"driver":"file","filename":"a.qcow2"})"},
        {"dir/a:b.qcow2", R"({"driver":"file","filename":"dir/a:b.qcow2"})"},
        {"./image:top.qcow2", R"({"driver":"file","filename":"./image:top.qcow2"})"},
        {"/abs/x:y", R"({"driver":"file","filename":"/abs/x:y"})"},
        {"file:dir/a:b.qcow2", R"({"driver":"file","filename":"dir/a:b.qcow2"})"},
        {"file:image:top.qcow2", R"({"driver":"file","filename":"./image:top.qcow2"})"},
        {"file:file:x", R"({"driver":"file","filename":"./file:x"})"},
        {"file:", R"({"driver":"file","filename":""})"},
        {"nbd+unix:///e?socket=/s", R"({"driver":"nbd","filename":"nbd+unix:///e?socket=/s"})"},
        {"blkdebug::x", R"({"driver":"blkdebug","image":{"driver":"file","filename":"x"}})"},
    };
    for (const auto &c : cases) {
        auto r = filename_node_options(c.in);
        ck_assert_msg(r.ok(), "%s: %s", c.in, r.ok() ? "" : r.msg().c_str());
        ck_assert_json_eq(r.value(), c.out);
    }
    ck_assert_error(filename_node_options("image:top.qcow2"), "Unknown protocol 'image'");
    ck_assert_error(filename_node_options(":x"), "Unknown protocol ''");
    ck_assert_error(filename_node_options("null-co:x"), "Unknown protocol 'null-co'");
    // Names known to be good: an error falls back to the plain file.
    ck_assert_json_eq(protocol_node_options("image:top.qcow2"), R"({"driver":"file","filename":"image:top.qcow2"})");
    ck_assert_json_eq(protocol_node_options("file:a:b"), R"({"driver":"file","filename":"./a:b"})");
    ck_assert_str_eq(protocol_driver_for(schema(), "image:x")->name, "file");
    ck_assert_str_eq(protocol_driver_for(schema(), "file:nbd:x")->name, "file");
    ck_assert_str_eq(protocol_driver_for(schema(), "nbd:localhost:10809")->name, "nbd");
    ck_assert_str_eq(protocol_driver_for(schema(), "blkdebug:c:x")->name, "blkdebug");
}
END_TEST

// rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][:KEY=VALUE...], '\\' escaping, as
// QEMU's rbd driver reads it: decoded into the driver's members.
START_TEST(test_rbd_filename)
{
    struct {
        const char *name, *out;
    } cases[] = {
        {"rbd:p/i", R"({"driver":"rbd","pool":"p","image":"i"})"},
        {"rbd:p/ns/i@s", R"({"driver":"rbd","pool":"p","namespace":"ns","image":"i","snapshot":"s"})"},
        {R"(rbd:p\/q/i\:j\@k:conf=/etc/c\:x:id=u)", R"({"driver":"rbd","pool":"p/q","image":"i:j@k","conf":"/etc/c:x","user":"u"})"},
        {"rbd:p/i:rbd_cache=false:mon_host=h",
         R"({"driver":"rbd","pool":"p","image":"i","=keyvalue-pairs":"[\"rbd_cache\",\"false\",\"mon_host\",\"h\"]"})"},
    };
    for (const auto &c : cases) {
        auto tree = filename_node_options(c.name);
        ck_assert_result_ok(tree);
        auto o = blockdev_options_from_tree(schema(), tree.value(), false);
        ck_assert_msg(o.ok(), "%s: %s", c.name, o.ok() ? "" : o.msg().c_str());
        ck_assert_json_eq(blockdev_options_to_json(o.value()), c.out);
    }
    auto bad = [](const char *name) {
        return blockdev_options_from_tree(schema(), filename_node_options(name).value(), false);
    };
    ck_assert_error(bad("rbd:p"), "Pool name is required");
    ck_assert_error(bad("rbd:p/i:conf"), "conf option conf has no value");
    ck_assert_error(bad("rbd:p/"), "blockdev: image: Image name is required");
}
END_TEST

// ---------------------------------------------------------------- suite

static Suite *qapi_suite()
{
    Suite *s = suite_create("qapi");
    TCase *tc = tcase_create("size");
    tcase_add_test(tc, test_size_valid);
    tcase_add_test(tc, test_size_invalid);
    tcase_add_test(tc, test_strtosz_codes);
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
    tcase_add_test(tc, test_json_quotes);
    tcase_add_test(tc, test_json_unflatten);
    tcase_add_test(tc, test_json_filename);
    tcase_add_test(tc, test_filename_forms);
    tcase_add_test(tc, test_rbd_filename);
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

// libFuzzer target: the option parsers a user's command line and JSON reach
// (qapi/): --blockdev in keyval and JSON form, json: pseudo-filenames,
// --export, --object, --nbd-server, and the keyval and JSON parsers under
// them.
//
// The first input byte picks the parser, the rest is the text. Checked
// besides ASan/UBSan/leaks (every parser returns a Result and must never
// throw or crash on any text):
//   - blockdev options that decode re-encode to JSON that decodes to the
//     same options (blockdev_options_to_json's documented property), and
//     their keyval form parses back to the same options too (unless a null
//     backing, which keyval cannot express, is involved);
//   - a keyval text that parses formats back (keyval_format) to text that
//     parses to the same tree, where keyval_format's precondition holds
//     (no member name containing '.', ',' or '=' and no empty object or
//     list, which keyval cannot express).
//
// Build and run: make fuzz / make check-fuzz (tests/fuzz/fuzz.mk).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "block/block.h"
#include "qapi/block-parse.h"
#include "qapi/export-parse.h"
#include "qapi/keyval.h"
#include "util/log.h"

using namespace bg;

namespace {

[[noreturn]] void die(const char *what, const std::string &a, const std::string &b)
{
    fprintf(stderr, "fuzz-options: %s\n  first:  %s\n  second: %s\n", what, a.c_str(), b.c_str());
    abort();
}

std::string dump(const nlohmann::json &j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

// True if keyval can express obj: member names without '.', ',' or '=' (and
// not empty), no empty objects or lists.
bool keyval_expressible(const nlohmann::json &obj)
{
    if (obj.is_object()) {
        if (obj.empty()) return false;
        for (auto it = obj.begin(); it != obj.end(); ++it) {
            const std::string &k = it.key();
            if (k.empty() || k.find_first_of(".,=") != std::string::npos) return false;
            if (!keyval_expressible(it.value())) return false;
        }
    } else if (obj.is_array()) {
        if (obj.empty()) return false;
        for (const auto &v : obj) {
            if (!keyval_expressible(v)) return false;
        }
    }
    return true;
}

bool has_null(const nlohmann::json &j)
{
    if (j.is_null()) return true;
    if (j.is_structured()) {
        for (const auto &v : j) {
            if (has_null(v)) return true;
        }
    }
    return false;
}

void check_blockdev_roundtrip(const BlockdevOptions &o)
{
    const DriverRegistry &reg = builtin_drivers();
    nlohmann::json j = blockdev_options_to_json(o);
    Result<BlockdevOptions> again = blockdev_options_from_tree(reg, j, false);
    if (!again) die("encoded options do not decode", dump(j), again.error().msg);
    nlohmann::json j2 = blockdev_options_to_json(again.value());
    if (j2 != j) die("JSON round trip changed the options", dump(j), dump(j2));
    if (has_null(j) || !keyval_expressible(j)) return;
    std::string kv = blockdev_options_to_keyval(o);
    if (!kv.empty() && kv.find_first_not_of(" \t\r\n") != std::string::npos && kv[kv.find_first_not_of(" \t\r\n")] == '{')
        return;   // would be read as JSON
    Result<BlockdevOptions> k = parse_blockdev_arg(reg, kv);
    if (!k) die("keyval form does not parse", kv, k.error().msg);
    nlohmann::json j3 = blockdev_options_to_json(k.value());
    if (j3 != j) die("keyval round trip changed the options", dump(j), dump(j3));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init = [] {
        log_set_level(LogLevel::kError);
        return true;
    }();
    (void)init;
    if (size < 1) return 0;
    const std::string text(reinterpret_cast<const char *>(data + 1), size - 1);
    const DriverRegistry &reg = builtin_drivers();
    switch (data[0] % 7) {
    case 0: {
        Result<BlockdevOptions> o = parse_blockdev_arg(reg, text);
        if (o) check_blockdev_roundtrip(o.value());
        break;
    }
    case 1: {
        Result<BlockdevOptions> o = parse_json_filename(reg, "json:" + text);
        if (o) check_blockdev_roundtrip(o.value());
        break;
    }
    case 2: (void)parse_export_arg(text); break;
    case 3: (void)parse_object_arg(text); break;
    case 4: (void)parse_nbd_server_arg(text); break;
    case 5: {
        Result<nlohmann::json> t = keyval_parse(text, "driver");
        if (t && keyval_expressible(t.value())) {
            std::string again = keyval_format(t.value());
            Result<nlohmann::json> t2 = keyval_parse(again, nullptr);
            if (!t2) die("formatted keyval does not parse", again, t2.error().msg);
            if (t2.value() != t.value()) die("keyval round trip changed the tree", dump(t.value()), dump(t2.value()));
        }
        break;
    }
    case 6: {
        Result<nlohmann::json> t = parse_json_object(text);
        if (t) (void)json_unflatten(t.value());
        break;
    }
    }
    return 0;
}

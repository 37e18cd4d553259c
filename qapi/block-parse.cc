#include "qapi/block-parse.h"

#include <algorithm>
#include <climits>
#include <new>

#include "qapi/keyval.h"
#include "qapi/option-reader.h"
#include "qapi/size.h"

namespace bg {

using nlohmann::json;

void DriverOptions::for_each_child(const std::function<void(const char *, BlockdevRef &)> &) {}

void DriverOptions::for_each_child(const std::function<void(const char *, const BlockdevRef &)> &fn) const
{
    // The mutable walk on a const object: the callback only reads.
    const_cast<DriverOptions *>(this)->for_each_child(
        [&fn](const char *key, BlockdevRef &ref) { fn(key, ref); });
}

// State shared by the readers of one decode: the schema, the input typing,
// the node names seen so far (each may appear once per tree).
struct OptionDecodeContext {
    const BlockdevSchema *schema;
    std::string prefix;                         // "blockdev 'd'" or "blockdev"
    bool from_keyval;
    std::set<std::string> node_names;

    Result<BlockdevOptions> node(const json &obj, const std::string &path, int depth);
};

namespace {

constexpr int kMaxNesting = 128;                // inline child definitions

std::string sub(const std::string &path, const std::string &key)
{
    return path.empty() ? key : path + "." + key;
}

constexpr EnumName<BlockdevDiscardOptions> kDiscardNames[] = {
    {"ignore", BlockdevDiscardOptions::kIgnore},
    {"unmap", BlockdevDiscardOptions::kUnmap},
    {"off", BlockdevDiscardOptions::kIgnore},
    {"on", BlockdevDiscardOptions::kUnmap},
};
constexpr size_t kDiscardCanonical = 2;     // names listed in errors

constexpr EnumName<BlockdevDetectZeroes> kDetectZeroesNames[] = {
    {"off", BlockdevDetectZeroes::kOff},
    {"on", BlockdevDetectZeroes::kOn},
    {"unmap", BlockdevDetectZeroes::kUnmap},
};


// A parsed integer as sign and magnitude, so that the whole int64 and
// uint64 ranges can be range-checked in one place.
struct IntVal {
    bool neg = false;
    uint64_t mag = 0;

    std::string str() const { return (neg ? "-" : "") + std::to_string(mag); }
};

// Keyval integer text: optional '-', then decimal digits or 0x hex digits.
bool parse_int_text(const std::string &s, IntVal *out)
{
    size_t i = 0;
    out->neg = false;
    out->mag = 0;
    if (i < s.size() && s[i] == '-') {
        out->neg = true;
        i++;
    }
    unsigned base = 10;
    if (s.size() - i > 2 && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X')) {
        base = 16;
        i += 2;
    }
    if (i == s.size()) return false;
    for (; i < s.size(); i++) {
        char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (base == 16 && c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (base == 16 && c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return false;
        if (out->mag > (UINT64_MAX - d) / base) return false;
        out->mag = out->mag * base + d;
    }
    if (out->neg && out->mag == 0) out->neg = false;
    return true;
}

// Decodes the members common to every node into o.
Status decode_generic(OptionReader &r, OptionDecodeContext *ctx, BlockdevOptions &o)
{
    if (r.has("node-name")) {
        BG_TRY(r.get("node-name", &o.node_name));
        if (!is_valid_node_name(o.node_name)) {
            return r.error("node-name", "'" + o.node_name +
                                            "' is not a valid node name (letters, digits, '-', '.', '_', "
                                            "starting with a letter, at most 31 characters)");
        }
        if (!ctx->node_names.insert(o.node_name).second) {
            return r.error("node-name", "node name '" + o.node_name + "' is used more than once");
        }
    }
    BG_TRY(r.get("read-only", &o.read_only));
    BG_TRY(r.get("auto-read-only", &o.auto_read_only));
    BG_TRY(r.get("force-share", &o.force_share));
    BG_TRY(r.get_enum("discard", &o.discard, kDiscardNames, kDiscardCanonical));
    o.discard_set = r.has("discard");
    BG_TRY(r.get_enum("detect-zeroes", &o.detect_zeroes, kDetectZeroesNames));
    return r.get_object("cache", [&o](OptionReader &c) -> Status {
        BG_TRY(c.get("direct", &o.cache_direct));
        return c.get("no-flush", &o.cache_no_flush);
    });
}

} // namespace

Result<BlockdevOptions> OptionDecodeContext::node(const json &obj, const std::string &path, int depth)
{
    OptionReader r(this, obj, path, depth);
    if (depth > kMaxNesting) {
        return r.error("", "child definitions nested deeper than " + std::to_string(kMaxNesting) + " levels");
    }
    BlockdevOptions o;
    BG_TRY(r.require("driver", &o.driver));
    DriverOptionsDecoder decode = schema->options_decoder(o.driver);
    if (!decode) {
        return r.error("", "unknown driver '" + o.driver + "'").with_qemu_text("Unknown driver '" + o.driver + "'");
    }
    BG_TRY(decode_generic(r, this, o));
    auto d = decode(r, o);
    if (!d) return d.error();
    o.drv = std::move(d.value());
    BG_TRY(r.check_all_known());
    if (o.force_share && !o.read_only) return r.error("", "force-share=on requires read-only=on");
    if (o.detect_zeroes == BlockdevDetectZeroes::kUnmap && o.discard != BlockdevDiscardOptions::kUnmap) {
        return r.error("", "detect-zeroes=unmap requires discard=unmap");
    }
    return o;
}

// ------------------------------------------------------------ OptionReader

OptionReader::OptionReader(OptionDecodeContext *ctx, const json &obj, std::string path, int depth)
    : ctx_(ctx), obj_(obj), path_(std::move(path)), depth_(depth)
{
}

std::string OptionReader::path_of(const std::string &key) const { return sub(path_, key); }

Error OptionReader::error(const std::string &key, const std::string &msg) const
{
    // The node path is context (Error::prefixed); a key names what the
    // message is about, so it stays in the QEMU-worded text too.
    Error e{EINVAL, key.empty() ? msg : path_of(key) + ": " + msg};
    if (key.empty() && !path_.empty()) e = e.prefixed(path_);
    return e.prefixed(ctx_->prefix);
}

const json *OptionReader::take(const char *key)
{
    auto it = obj_.find(key);
    if (it == obj_.end()) return nullptr;
    known_.insert(key);
    return &*it;
}

Status OptionReader::check_all_known() const
{
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
        if (known_.count(it.key())) continue;
        Error e = error("", "unknown key '" + it.key() + "'");
        // QEMU's words name the node's driver, a protocol (a driver that
        // opens a file name or a connection itself) or a format.
        auto drv = obj_.find("driver");
        if (drv == obj_.end() || !drv->is_string()) return e;
        const std::string d = drv->get<std::string>();
        static const char *const kProtocols[] = {"file", "host_device", "nbd", "null-co", "null-aio", "blkdebug"};
        bool protocol = std::find(std::begin(kProtocols), std::end(kProtocols), d) != std::end(kProtocols);
        return e.with_qemu_text(std::string(protocol ? "Block protocol '" : "Block format '") + d +
                                (protocol ? "' doesn't" : "' does not") + " support the option '" + it.key() + "'");
    }
    return {};
}

Status OptionReader::string_value(const json &v, const std::string &key, std::string *out) const
{
    if (!v.is_string()) return error(key, "expected a string");
    *out = v.get<std::string>();
    return {};
}

Status OptionReader::get(const char *key, std::string *out)
{
    const json *v = take(key);
    return v ? string_value(*v, key, out) : Status();
}

Status OptionReader::require(const char *key, std::string *out)
{
    if (!has(key)) return error("", std::string("missing required key '") + key + "'");
    return get(key, out);
}

Status OptionReader::get(const char *key, bool *out)
{
    const json *v = take(key);
    if (!v) return {};
    if (v->is_boolean()) {
        *out = v->get<bool>();
        return {};
    }
    if (ctx_->from_keyval && v->is_string()) {
        const std::string &s = v->get_ref<const std::string &>();
        if (s == "on" || s == "true" || s == "yes") {
            *out = true;
            return {};
        }
        if (s == "off" || s == "false" || s == "no") {
            *out = false;
            return {};
        }
        return error(key, "'" + s + "' is not a valid boolean (on, off, true, false, yes, no)");
    }
    return error(key, "expected a boolean");
}

Status OptionReader::get(const char *key, std::optional<bool> *out)
{
    if (!has(key)) return {};
    bool b = false;
    BG_TRY(get(key, &b));
    *out = b;
    return {};
}

// The value as sign and magnitude, so that the whole int64 and uint64
// ranges are range-checked in one place.
Result<uint64_t> OptionReader::magnitude(const json &v, const std::string &key, bool *neg) const
{
    IntVal iv;
    if (ctx_->from_keyval && v.is_string()) {
        const std::string &s = v.get_ref<const std::string &>();
        if (!parse_int_text(s, &iv)) return error(key, "'" + s + "' is not a valid integer");
    } else if (v.is_number_unsigned()) {
        iv.mag = v.get<uint64_t>();
    } else if (v.is_number_integer()) {
        int64_t x = v.get<int64_t>();
        iv.neg = x < 0;
        iv.mag = iv.neg ? 0 - static_cast<uint64_t>(x) : static_cast<uint64_t>(x);
    } else {
        return error(key, "expected an integer");
    }
    *neg = iv.neg;
    return iv.mag;
}

Status OptionReader::get_int(const char *key, int64_t *out, int64_t min, int64_t max)
{
    const json *v = take(key);
    if (!v) return {};
    bool neg = false;
    auto m = magnitude(*v, key, &neg);
    if (!m) return m.error();
    uint64_t mag = m.value();
    bool ok;
    int64_t x = 0;
    if (neg) {
        ok = mag <= static_cast<uint64_t>(INT64_MAX) + 1;
        if (ok) x = static_cast<int64_t>(0 - mag);
    } else {
        ok = mag <= static_cast<uint64_t>(INT64_MAX);
        if (ok) x = static_cast<int64_t>(mag);
    }
    if (!ok || x < min || x > max) {
        return error(key, (neg ? "-" : "") + std::to_string(mag) + " is out of range (" + std::to_string(min) +
                              " to " + std::to_string(max) + ")");
    }
    *out = x;
    return {};
}

Status OptionReader::get_uint(const char *key, uint64_t *out, uint64_t max)
{
    const json *v = take(key);
    if (!v) return {};
    bool neg = false;
    auto m = magnitude(*v, key, &neg);
    if (!m) return m.error();
    if (neg || m.value() > max) {
        return error(key, (neg ? "-" : "") + std::to_string(m.value()) + " is out of range (0 to " +
                              std::to_string(max) + ")");
    }
    *out = m.value();
    return {};
}

Status OptionReader::get_uint(const char *key, uint32_t *out, uint32_t max)
{
    uint64_t x = *out;
    BG_TRY(get_uint(key, &x, static_cast<uint64_t>(max)));
    *out = static_cast<uint32_t>(x);
    return {};
}

Status OptionReader::size_value(const json &v, const std::string &key, uint64_t max, uint64_t *out) const
{
    uint64_t x;
    if (ctx_->from_keyval && v.is_string()) {
        auto r = parse_size(v.get_ref<const std::string &>());
        if (!r) return error(key, r.msg());
        x = r.value();
    } else if (v.is_number_unsigned()) {
        x = v.get<uint64_t>();
    } else if (v.is_number_integer()) {
        int64_t s = v.get<int64_t>();
        if (s < 0) return error(key, "'" + std::to_string(s) + "' is not a valid size");
        x = static_cast<uint64_t>(s);
    } else {
        return error(key, "expected an integer");
    }
    if (x > max) return error(key, std::to_string(x) + " is out of range (0 to " + std::to_string(max) + ")");
    *out = x;
    return {};
}

Status OptionReader::get_size(const char *key, uint64_t *out, uint64_t max)
{
    const json *v = take(key);
    return v ? size_value(*v, key, max, out) : Status();
}

Status OptionReader::get_size(const char *key, std::optional<uint64_t> *out, uint64_t max)
{
    const json *v = take(key);
    if (!v) return {};
    uint64_t x = 0;
    BG_TRY(size_value(*v, key, max, &x));
    *out = x;
    return {};
}

Status OptionReader::get_ref(const char *key, BlockdevRef *out, RefMode mode)
{
    const json *v = take(key);
    const bool allow_null = mode == RefMode::kNullable;
    if (!v) {
        if (mode == RefMode::kRequired) return error("", std::string("missing required key '") + key + "'");
        return {};
    }
    BlockdevRef r;
    if (v->is_string()) {
        r.kind = BlockdevRef::Kind::kReference;
        r.reference = v->get<std::string>();
        if (r.reference.empty()) {
            return error(key, allow_null ? "empty node reference (to open no backing file, use JSON with "
                                           "\"backing\": null)"
                                         : "empty node reference");
        }
    } else if (v->is_object()) {
        r.kind = BlockdevRef::Kind::kInline;
        auto n = ctx_->node(*v, path_of(key), depth_ + 1);
        if (!n) return n.error();
        r.def = std::make_shared<BlockdevOptions>(std::move(n.value()));
    } else if (v->is_null() && allow_null) {
        r.kind = BlockdevRef::Kind::kNull;
    } else {
        return error(key, allow_null ? "expected a string, an object or null" : "expected a string or an object");
    }
    *out = std::move(r);
    return {};
}

Status OptionReader::get_object(const char *key, const std::function<Status(OptionReader &)> &fn)
{
    const json *v = take(key);
    if (!v) return {};
    if (!v->is_object()) return error(key, "expected an object");
    OptionReader inner(ctx_, *v, path_of(key), depth_);
    // Unknown keys first, as the keys of a nested object are few and fixed.
    BG_TRY(fn(inner));
    return inner.check_all_known();
}

Status OptionReader::get_object_list(const char *key, const std::function<Status(OptionReader &)> &fn)
{
    const json *v = take(key);
    if (!v) return {};
    if (!v->is_array()) return error(key, "expected a list");
    for (size_t i = 0; i < v->size(); i++) {
        std::string p = path_of(key) + "." + std::to_string(i);
        const json &e = (*v)[i];
        OptionReader inner(ctx_, e, p, depth_);
        if (!e.is_object()) return inner.error("", "expected an object");
        BG_TRY(fn(inner));
        BG_TRY(inner.check_all_known());
    }
    return {};
}

// ------------------------------------------------------------ encoder

void put_ref(json &j, const char *key, const BlockdevRef &r)
{
    switch (r.kind) {
    case BlockdevRef::Kind::kNone: return;
    case BlockdevRef::Kind::kReference: j[key] = r.reference; return;
    case BlockdevRef::Kind::kInline: assert(r.def); j[key] = blockdev_options_to_json(*r.def); return;
    case BlockdevRef::Kind::kNull: j[key] = nullptr; return;
    }
}

json blockdev_options_to_json(const BlockdevOptions &o) noexcept
{
    json j = json::object();
    j["driver"] = o.driver;
    if (!o.node_name.empty()) j["node-name"] = o.node_name;
    if (o.read_only) j["read-only"] = true;
    if (o.auto_read_only) j["auto-read-only"] = true;
    if (o.force_share) j["force-share"] = true;
    if (o.discard_set || o.discard != BlockdevDiscardOptions::kIgnore) j["discard"] = enum_name(kDiscardNames, o.discard);
    if (o.detect_zeroes != BlockdevDetectZeroes::kOff) {
        j["detect-zeroes"] = enum_name(kDetectZeroesNames, o.detect_zeroes);
    }
    if (o.cache_direct || o.cache_no_flush) {
        json c = json::object();
        if (o.cache_direct) c["direct"] = true;
        if (o.cache_no_flush) c["no-flush"] = true;
        j["cache"] = std::move(c);
    }
    if (o.drv) o.drv->encode(j);
    return j;
}

std::string blockdev_options_to_keyval(const BlockdevOptions &o) noexcept
{
    return keyval_format(blockdev_options_to_json(o));
}

// ------------------------------------------------------------ entry points

namespace {

template <typename F>
Result<BlockdevOptions> guarded(const char *what, F &&f)
{
    try {
        return f();
    } catch (const std::bad_alloc &) {
        return make_error(ENOMEM, "%s: out of memory", what);
    } catch (const std::exception &e) {
        return make_error(EINVAL, "%s: internal error: %s", what, e.what());
    }
}

Result<BlockdevOptions> from_tree(const BlockdevSchema &schema, const json &tree, bool from_keyval)
{
    OptionDecodeContext ctx{&schema, "blockdev", from_keyval, {}};
    if (tree.is_object()) {
        auto it = tree.find("node-name");
        if (it != tree.end() && it->is_string() && is_valid_node_name(it->get<std::string>())) {
            ctx.prefix += " '" + it->get<std::string>() + "'";
        }
    }
    if (!tree.is_object()) return Error{EINVAL, ctx.prefix + ": expected an object"};
    return ctx.node(tree, "", 0);
}

} // namespace

bool parse_prealloc_mode(const std::string &name, PreallocMode *out)
{
    static constexpr EnumName<PreallocMode> kNames[] = {
        {"off", PreallocMode::kOff},
        {"metadata", PreallocMode::kMetadata},
        {"falloc", PreallocMode::kFalloc},
        {"full", PreallocMode::kFull},
    };
    for (const auto &e : kNames) {
        if (name == e.name) {
            *out = e.value;
            return true;
        }
    }
    return false;
}

bool is_valid_node_name(const std::string &name)
{
    if (name.empty() || name.size() > 31) return false;
    auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    if (!alpha(name[0])) return false;
    for (char c : name) {
        if (!alpha(c) && !(c >= '0' && c <= '9') && c != '-' && c != '.' && c != '_') return false;
    }
    return true;
}

Result<BlockdevOptions> blockdev_options_from_tree(const BlockdevSchema &schema, const json &tree,
                                                   bool from_keyval)
{
    return guarded("blockdev", [&] { return from_tree(schema, tree, from_keyval); });
}

Result<BlockdevOptions> parse_blockdev_arg(const BlockdevSchema &schema, const std::string &arg)
{
    return guarded("blockdev", [&]() -> Result<BlockdevOptions> {
        size_t i = arg.find_first_not_of(" \t\n\r");
        if (i != std::string::npos && arg[i] == '{') {
            auto t = parse_json_object(arg);
            if (!t) return t.error();
            return from_tree(schema, t.value(), false);
        }
        auto t = keyval_parse(arg, "driver");
        if (!t) return t.error();
        return from_tree(schema, t.value(), true);
    });
}

Result<BlockdevOptions> parse_json_filename(const BlockdevSchema &schema, const std::string &s)
{
    return guarded("json", [&]() -> Result<BlockdevOptions> {
        if (s.compare(0, 5, "json:") != 0) return make_error(EINVAL, "json: filename must start with 'json:'");
        auto t = parse_json_object(s.substr(5));
        if (!t) return t.error();
        auto u = json_unflatten(t.value());
        if (!u) return u.error();
        return from_tree(schema, u.value(), false);
    });
}

const char *detect_zeroes_name(BlockdevDetectZeroes dz)
{
    return enum_name(kDetectZeroesNames, dz);
}

} // namespace bg

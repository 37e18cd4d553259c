#include "qapi/block-parse.h"

#include <cinttypes>
#include <climits>
#include <cstdio>
#include <initializer_list>
#include <new>
#include <set>

#include "qapi/keyval.h"
#include "qapi/size.h"

namespace bg {

using nlohmann::json;

namespace {

constexpr int kMaxNesting = 128;                // inline child definitions
constexpr uint64_t kMaxBlkdebugLimit = INT_MAX - 1;   // QEMU: ">= INT_MAX" fails

std::string sub(const std::string &path, const std::string &key)
{
    return path.empty() ? key : path + "." + key;
}

// ------------------------------------------------------------ enum tables
// The first entry for a value is its canonical name (used when encoding);
// later entries are aliases.

template <typename E>
struct EnumName {
    const char *name;
    E value;
};

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

constexpr EnumName<BlockdevAioOptions> kAioNames[] = {
    {"threads", BlockdevAioOptions::kThreads},
    {"native", BlockdevAioOptions::kNative},
    {"io_uring", BlockdevAioOptions::kIoUring},
};

constexpr EnumName<OnOffAuto> kOnOffAutoNames[] = {
    {"on", OnOffAuto::kOn},
    {"off", OnOffAuto::kOff},
    {"auto", OnOffAuto::kAuto},
};

constexpr EnumName<Qcow2OverlapCheckMode> kOverlapNames[] = {
    {"none", Qcow2OverlapCheckMode::kNone},
    {"constant", Qcow2OverlapCheckMode::kConstant},
    {"cached", Qcow2OverlapCheckMode::kCached},
    {"all", Qcow2OverlapCheckMode::kAll},
};

constexpr EnumName<BlkdebugIoType> kIoTypeNames[] = {
    {"read", BlkdebugIoType::kRead},
    {"write", BlkdebugIoType::kWrite},
    {"write-zeroes", BlkdebugIoType::kWriteZeroes},
    {"discard", BlkdebugIoType::kDiscard},
    {"flush", BlkdebugIoType::kFlush},
    {"block-status", BlkdebugIoType::kBlockStatus},
    {"truncate", BlkdebugIoType::kTruncate},
};

template <typename E, size_t N>
const char *enum_name(const EnumName<E> (&table)[N], E value)
{
    for (const auto &e : table) {
        if (e.value == value) return e.name;
    }
    return "?";
}

// ------------------------------------------------------------ keys

using KeyList = std::initializer_list<const char *>;

const KeyList kGenericKeys = {"driver", "node-name", "read-only", "auto-read-only", "force-share",
                              "discard", "detect-zeroes", "cache"};
const KeyList kFileKeys = {"filename", "aio", "locking", "aio-max-batch", "drop-cache"};
const KeyList kRawKeys = {"file", "offset", "size"};
const KeyList kNullKeys = {"size", "latency-ns", "read-zeroes"};
const KeyList kBlkdebugKeys = {"image", "config", "align", "max-transfer", "opt-write-zero",
                               "max-write-zero", "opt-discard", "max-discard", "inject-error",
                               "set-state"};
const KeyList kQcow2Keys = {"file", "backing", "data-file", "lazy-refcounts",
                            "pass-discard-request", "pass-discard-snapshot",
                            "pass-discard-other", "discard-no-unref", "overlap-check",
                            "cache-size", "l2-cache-size", "l2-cache-entry-size",
                            "refcount-cache-size", "cache-clean-interval", "snapshot",
                            "snapshot.id", "snapshot.name"};
const KeyList kCacheKeys = {"direct", "no-flush"};
const KeyList kSnapshotKeys = {"id", "name"};
const KeyList kInjectErrorKeys = {"event", "iotype", "errno", "sector", "offset", "bytes",
                                  "after", "once", "immediately", "state"};
const KeyList kSetStateKeys = {"event", "state", "new_state"};

enum class DriverKind { kFile, kRaw, kNull, kBlkdebug, kQcow2 };

struct DriverDesc {
    const char *name;
    DriverKind kind;
    const KeyList *keys;
};

const DriverDesc kDrivers[] = {
    {"file", DriverKind::kFile, &kFileKeys},
    {"raw", DriverKind::kRaw, &kRawKeys},
    {"null-co", DriverKind::kNull, &kNullKeys},
    {"null-aio", DriverKind::kNull, &kNullKeys},
    {"blkdebug", DriverKind::kBlkdebug, &kBlkdebugKeys},
    {"qcow2", DriverKind::kQcow2, &kQcow2Keys},
};

const DriverDesc *find_driver(const std::string &name)
{
    for (const auto &d : kDrivers) {
        if (name == d.name) return &d;
    }
    return nullptr;
}

bool in_list(const KeyList &list, const std::string &key)
{
    for (const char *k : list) {
        if (key == k) return true;
    }
    return false;
}

bool is_power_of_2(uint64_t v) { return v && !(v & (v - 1)); }

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

// ------------------------------------------------------------ decoder

#define TRY_SET(lhs, expr)                                                  \
    do {                                                                    \
        auto try_r_ = (expr);                                               \
        if (!try_r_.ok()) return try_r_.error();                            \
        lhs = std::move(try_r_.value());                                    \
    } while (0)

class Decoder {
  public:
    Decoder(std::string prefix, bool from_keyval) : prefix_(std::move(prefix)), kv_(from_keyval) {}

    // "<prefix>: <path>: <msg>", or "<prefix>: <msg>" at the top level.
    Error err(const std::string &path, const std::string &msg) const
    {
        std::string m = prefix_ + ": ";
        if (!path.empty()) m += path + ": ";
        return Error{EINVAL, m + msg};
    }

    // Decodes one node definition; obj is an object; path is its dotted
    // path ("" at the top).
    Result<BlockdevOptions> node(const json &obj, const std::string &path, int depth);

  private:
    const json *find(const json &obj, const char *key) const
    {
        auto it = obj.find(key);
        return it == obj.end() ? nullptr : &*it;
    }

    Status check_keys(const json &obj, const std::string &path, const KeyList &a,
                      const KeyList *b = nullptr) const
    {
        for (auto it = obj.begin(); it != obj.end(); ++it) {
            if (!in_list(a, it.key()) && !(b && in_list(*b, it.key()))) {
                return err(path, "unknown key '" + it.key() + "'");
            }
        }
        return Status();
    }

    Result<std::string> str(const json &v, const std::string &path) const
    {
        if (!v.is_string()) return err(path, "expected a string");
        return v.get<std::string>();
    }

    Result<bool> boolean(const json &v, const std::string &path) const
    {
        if (v.is_boolean()) return v.get<bool>();
        if (kv_ && v.is_string()) {
            const std::string &s = v.get_ref<const std::string &>();
            if (s == "on" || s == "true" || s == "yes") return true;
            if (s == "off" || s == "false" || s == "no") return false;
            return err(path, "'" + s + "' is not a valid boolean (on, off, true, false, yes, no)");
        }
        return err(path, "expected a boolean");
    }

    Result<IntVal> int_val(const json &v, const std::string &path) const
    {
        IntVal iv;
        if (kv_ && v.is_string()) {
            const std::string &s = v.get_ref<const std::string &>();
            if (!parse_int_text(s, &iv)) return err(path, "'" + s + "' is not a valid integer");
            return iv;
        }
        if (v.is_number_unsigned()) {
            iv.mag = v.get<uint64_t>();
            return iv;
        }
        if (v.is_number_integer()) {
            int64_t x = v.get<int64_t>();
            iv.neg = x < 0;
            iv.mag = iv.neg ? 0 - static_cast<uint64_t>(x) : static_cast<uint64_t>(x);
            return iv;
        }
        return err(path, "expected an integer");
    }

    Result<int64_t> integer(const json &v, const std::string &path, int64_t min, int64_t max) const
    {
        IntVal iv;
        TRY_SET(iv, int_val(v, path));
        bool ok;
        int64_t x = 0;
        if (iv.neg) {
            ok = iv.mag <= static_cast<uint64_t>(INT64_MAX) + 1;
            if (ok) x = static_cast<int64_t>(0 - iv.mag);
        } else {
            ok = iv.mag <= static_cast<uint64_t>(INT64_MAX);
            if (ok) x = static_cast<int64_t>(iv.mag);
        }
        if (!ok || x < min || x > max) {
            return err(path, iv.str() + " is out of range (" + std::to_string(min) + " to " +
                                 std::to_string(max) + ")");
        }
        return x;
    }

    Result<uint64_t> uinteger(const json &v, const std::string &path, uint64_t max) const
    {
        IntVal iv;
        TRY_SET(iv, int_val(v, path));
        if (iv.neg || iv.mag > max) {
            return err(path, iv.str() + " is out of range (0 to " + std::to_string(max) + ")");
        }
        return iv.mag;
    }

    // A byte count: parse_size() syntax in keyval mode, a non-negative
    // integer in JSON.
    Result<uint64_t> size(const json &v, const std::string &path, uint64_t max = UINT64_MAX) const
    {
        uint64_t x;
        if (kv_ && v.is_string()) {
            auto r = parse_size(v.get_ref<const std::string &>());
            if (!r) return err(path, r.msg());
            x = r.value();
        } else if (v.is_number_unsigned()) {
            x = v.get<uint64_t>();
        } else if (v.is_number_integer()) {
            int64_t s = v.get<int64_t>();
            if (s < 0) return err(path, "'" + std::to_string(s) + "' is not a valid size");
            x = static_cast<uint64_t>(s);
        } else {
            return err(path, "expected an integer");
        }
        if (x > max) {
            return err(path, std::to_string(x) + " is out of range (0 to " + std::to_string(max) + ")");
        }
        return x;
    }

    template <typename E, size_t N>
    Result<E> enumeration(const json &v, const std::string &path, const EnumName<E> (&table)[N],
                          size_t listed = N) const
    {
        if (!v.is_string()) return err(path, "expected a string");
        const std::string &s = v.get_ref<const std::string &>();
        for (const auto &e : table) {
            if (s == e.name) return e.value;
        }
        std::string names;
        for (size_t i = 0; i < listed; i++) {
            names += i ? ", " : "";
            names += table[i].name;
        }
        return err(path, "'" + s + "' is not one of: " + names);
    }

    Result<BlockdevRef> ref(const json &v, const std::string &path, bool allow_null, int depth)
    {
        BlockdevRef r;
        if (v.is_string()) {
            r.kind = BlockdevRef::Kind::kReference;
            r.reference = v.get<std::string>();
            if (r.reference.empty()) {
                return err(path, allow_null ? "empty node reference (to open no backing file, use "
                                              "JSON with \"backing\": null)"
                                            : "empty node reference");
            }
        } else if (v.is_object()) {
            r.kind = BlockdevRef::Kind::kInline;
            auto n = node(v, path, depth + 1);
            if (!n) return n.error();
            r.def = std::make_shared<BlockdevOptions>(std::move(n.value()));
        } else if (v.is_null() && allow_null) {
            r.kind = BlockdevRef::Kind::kNull;
        } else {
            return err(path, allow_null ? "expected a string, an object or null"
                                        : "expected a string or an object");
        }
        return r;
    }

    // A required child reference.
    Result<BlockdevRef> required_ref(const json &obj, const std::string &path, const char *key,
                                     int depth)
    {
        const json *v = find(obj, key);
        if (!v) return err(path, std::string("missing required key '") + key + "'");
        return ref(*v, sub(path, key), false, depth);
    }

    Status generic(const json &obj, const std::string &path, BlockdevOptions &o);
    Status file(const json &obj, const std::string &path, BlockdevOptions &o);
    Status raw(const json &obj, const std::string &path, int depth, BlockdevOptions &o);
    Status null(const json &obj, const std::string &path, BlockdevOptions &o);
    Status blkdebug(const json &obj, const std::string &path, int depth, BlockdevOptions &o);
    Result<BlkdebugInjectError> inject_error(const json &v, const std::string &path);
    Result<BlkdebugSetState> set_state(const json &v, const std::string &path);
    Status qcow2(const json &obj, const std::string &path, int depth, BlockdevOptions &o);

    std::string prefix_;
    bool kv_;
    std::set<std::string> node_names_;      // seen so far in this tree
};

Result<BlockdevOptions> Decoder::node(const json &obj, const std::string &path, int depth)
{
    if (depth > kMaxNesting) {
        return err(path, "child definitions nested deeper than " + std::to_string(kMaxNesting) +
                             " levels");
    }
    BlockdevOptions o;
    const json *d = find(obj, "driver");
    if (!d) return err(path, "missing required key 'driver'");
    TRY_SET(o.driver, str(*d, sub(path, "driver")));
    const DriverDesc *desc = find_driver(o.driver);
    if (!desc) return err(path, "unknown driver '" + o.driver + "'");
    BG_TRY(check_keys(obj, path, kGenericKeys, desc->keys));
    BG_TRY(generic(obj, path, o));

    switch (desc->kind) {
    case DriverKind::kFile: BG_TRY(file(obj, path, o)); break;
    case DriverKind::kRaw: BG_TRY(raw(obj, path, depth, o)); break;
    case DriverKind::kNull: BG_TRY(null(obj, path, o)); break;
    case DriverKind::kBlkdebug: BG_TRY(blkdebug(obj, path, depth, o)); break;
    case DriverKind::kQcow2: BG_TRY(qcow2(obj, path, depth, o)); break;
    }

    if (o.force_share && !o.read_only) return err(path, "force-share=on requires read-only=on");
    if (o.detect_zeroes == BlockdevDetectZeroes::kUnmap &&
        o.discard != BlockdevDiscardOptions::kUnmap) {
        return err(path, "detect-zeroes=unmap requires discard=unmap");
    }
    return o;
}

Status Decoder::generic(const json &obj, const std::string &path, BlockdevOptions &o)
{
    if (const json *v = find(obj, "node-name")) {
        std::string p = sub(path, "node-name");
        TRY_SET(o.node_name, str(*v, p));
        if (!is_valid_node_name(o.node_name)) {
            return err(p, "'" + o.node_name + "' is not a valid node name (letters, digits, '-', "
                                              "'.', '_', starting with a letter, at most 31 "
                                              "characters)");
        }
        if (!node_names_.insert(o.node_name).second) {
            return err(p, "node name '" + o.node_name + "' is used more than once");
        }
    }
    if (const json *v = find(obj, "read-only")) TRY_SET(o.read_only, boolean(*v, sub(path, "read-only")));
    if (const json *v = find(obj, "auto-read-only")) {
        TRY_SET(o.auto_read_only, boolean(*v, sub(path, "auto-read-only")));
    }
    if (const json *v = find(obj, "force-share")) TRY_SET(o.force_share, boolean(*v, sub(path, "force-share")));
    if (const json *v = find(obj, "discard")) {
        TRY_SET(o.discard, enumeration(*v, sub(path, "discard"), kDiscardNames, kDiscardCanonical));
    }
    if (const json *v = find(obj, "detect-zeroes")) {
        TRY_SET(o.detect_zeroes, enumeration(*v, sub(path, "detect-zeroes"), kDetectZeroesNames));
    }
    if (const json *v = find(obj, "cache")) {
        std::string p = sub(path, "cache");
        if (!v->is_object()) return err(p, "expected an object");
        BG_TRY(check_keys(*v, p, kCacheKeys));
        if (const json *c = find(*v, "direct")) TRY_SET(o.cache_direct, boolean(*c, sub(p, "direct")));
        if (const json *c = find(*v, "no-flush")) TRY_SET(o.cache_no_flush, boolean(*c, sub(p, "no-flush")));
    }
    return Status();
}

Status Decoder::file(const json &obj, const std::string &path, BlockdevOptions &o)
{
    BlockdevOptionsFile f;
    const json *v = find(obj, "filename");
    if (!v) return err(path, "missing required key 'filename'");
    TRY_SET(f.filename, str(*v, sub(path, "filename")));
    if (f.filename.compare(0, 5, "file:") == 0) f.filename.erase(0, 5);
    if (f.filename.empty()) return err(sub(path, "filename"), "must not be empty");
    if ((v = find(obj, "aio"))) TRY_SET(f.aio, enumeration(*v, sub(path, "aio"), kAioNames));
    if ((v = find(obj, "locking"))) TRY_SET(f.locking, enumeration(*v, sub(path, "locking"), kOnOffAutoNames));
    if ((v = find(obj, "aio-max-batch"))) {
        TRY_SET(f.aio_max_batch, uinteger(*v, sub(path, "aio-max-batch"), INT_MAX));
    }
    if ((v = find(obj, "drop-cache"))) TRY_SET(f.drop_cache, boolean(*v, sub(path, "drop-cache")));
    if (f.aio == BlockdevAioOptions::kNative && !o.cache_direct) {
        return err(path, "aio=native was specified, but it requires cache.direct=on, which was "
                         "not specified.");
    }
    o.opts = std::move(f);
    return Status();
}

Status Decoder::raw(const json &obj, const std::string &path, int depth, BlockdevOptions &o)
{
    BlockdevOptionsRaw r;
    TRY_SET(r.file, required_ref(obj, path, "file", depth));
    const json *v;
    if ((v = find(obj, "offset"))) TRY_SET(r.offset, size(*v, sub(path, "offset"), INT64_MAX));
    if ((v = find(obj, "size"))) {
        TRY_SET(r.size, size(*v, sub(path, "size"), INT64_MAX));
        if (*r.size % 512) return err(sub(path, "size"), "Specified size is not multiple of 512");
    }
    o.opts = std::move(r);
    return Status();
}

Status Decoder::null(const json &obj, const std::string &path, BlockdevOptions &o)
{
    BlockdevOptionsNull n;
    const json *v;
    if ((v = find(obj, "size"))) TRY_SET(n.size, size(*v, sub(path, "size"), INT64_MAX));
    if ((v = find(obj, "latency-ns"))) TRY_SET(n.latency_ns, uinteger(*v, sub(path, "latency-ns"), UINT64_MAX));
    if ((v = find(obj, "read-zeroes"))) TRY_SET(n.read_zeroes, boolean(*v, sub(path, "read-zeroes")));
    o.opts = std::move(n);
    return Status();
}

Result<BlkdebugInjectError> Decoder::inject_error(const json &obj, const std::string &path)
{
    BlkdebugInjectError e;
    if (!obj.is_object()) return err(path, "expected an object");
    BG_TRY(check_keys(obj, path, kInjectErrorKeys));
    const json *v;
    if ((v = find(obj, "event"))) {
        TRY_SET(e.event, str(*v, sub(path, "event")));
        if (e.event.empty()) return err(sub(path, "event"), "must not be empty");
    }
    if ((v = find(obj, "iotype"))) TRY_SET(e.iotype, enumeration(*v, sub(path, "iotype"), kIoTypeNames));
    if ((v = find(obj, "errno"))) TRY_SET(e.err, integer(*v, sub(path, "errno"), 1, 4095));
    if ((v = find(obj, "sector"))) TRY_SET(e.sector, integer(*v, sub(path, "sector"), -1, INT64_MAX));
    if ((v = find(obj, "offset"))) TRY_SET(e.offset, size(*v, sub(path, "offset"), INT64_MAX));
    if ((v = find(obj, "bytes"))) {
        TRY_SET(e.bytes, size(*v, sub(path, "bytes"), INT64_MAX));
        if (!e.offset) return err(sub(path, "bytes"), "requires offset");
    }
    if ((v = find(obj, "after"))) TRY_SET(e.after, uinteger(*v, sub(path, "after"), UINT64_MAX));
    if ((v = find(obj, "once"))) TRY_SET(e.once, boolean(*v, sub(path, "once")));
    if ((v = find(obj, "immediately"))) TRY_SET(e.immediately, boolean(*v, sub(path, "immediately")));
    if ((v = find(obj, "state"))) TRY_SET(e.state, integer(*v, sub(path, "state"), 0, INT64_MAX));
    return e;
}

Result<BlkdebugSetState> Decoder::set_state(const json &obj, const std::string &path)
{
    BlkdebugSetState s;
    if (!obj.is_object()) return err(path, "expected an object");
    BG_TRY(check_keys(obj, path, kSetStateKeys));
    const json *v = find(obj, "event");
    if (!v) return err(path, "missing required key 'event'");
    TRY_SET(s.event, str(*v, sub(path, "event")));
    if (s.event.empty()) return err(sub(path, "event"), "must not be empty");
    if ((v = find(obj, "state"))) TRY_SET(s.state, integer(*v, sub(path, "state"), 0, INT64_MAX));
    v = find(obj, "new_state");
    if (!v) return err(path, "missing required key 'new_state'");
    TRY_SET(s.new_state, integer(*v, sub(path, "new_state"), 0, INT64_MAX));
    return s;
}

Status Decoder::blkdebug(const json &obj, const std::string &path, int depth, BlockdevOptions &o)
{
    BlockdevOptionsBlkdebug b;
    TRY_SET(b.image, required_ref(obj, path, "image", depth));
    const json *v;
    if ((v = find(obj, "config"))) {
        std::string p = sub(path, "config");
        TRY_SET(b.config, str(*v, p));
        return err(p, "config files are not supported; use inject-error");
    }

    // Limits: QEMU's blkdebug_open() rules, with align standing in for the
    // child's request alignment (checked again at open).
    if ((v = find(obj, "align"))) {
        std::string p = sub(path, "align");
        uint64_t x;
        TRY_SET(x, size(*v, p, kMaxBlkdebugLimit));
        if (x && !is_power_of_2(x)) return err(p, std::to_string(x) + " is not a power of two");
        b.align = static_cast<uint32_t>(x);
    }
    struct Limit {
        const char *key;
        uint32_t *field;
        const uint32_t *base;        // must be a multiple of this (if set)...
        const char *base_key;
        const uint32_t *base2;       // ...or of this one when it is set and larger
        const char *base2_key;
    };
    const Limit limits[] = {
        {"max-transfer", &b.max_transfer, &b.align, "align", nullptr, nullptr},
        {"opt-write-zero", &b.opt_write_zero, &b.align, "align", nullptr, nullptr},
        {"max-write-zero", &b.max_write_zero, &b.align, "align", &b.opt_write_zero, "opt-write-zero"},
        {"opt-discard", &b.opt_discard, &b.align, "align", nullptr, nullptr},
        {"max-discard", &b.max_discard, &b.align, "align", &b.opt_discard, "opt-discard"},
    };
    for (const Limit &l : limits) {
        if (!(v = find(obj, l.key))) continue;
        std::string p = sub(path, l.key);
        uint64_t x;
        TRY_SET(x, size(*v, p, kMaxBlkdebugLimit));
        uint32_t base = *l.base;
        const char *base_key = l.base_key;
        if (l.base2 && *l.base2 > base) {
            base = *l.base2;
            base_key = l.base2_key;
        }
        if (x && base && x % base) {
            return err(p, std::to_string(x) + " is not a multiple of " + base_key + " (" +
                              std::to_string(base) + ")");
        }
        *l.field = static_cast<uint32_t>(x);
    }

    if ((v = find(obj, "inject-error"))) {
        std::string p = sub(path, "inject-error");
        if (!v->is_array()) return err(p, "expected a list");
        for (size_t i = 0; i < v->size(); i++) {
            BlkdebugInjectError e;
            TRY_SET(e, inject_error((*v)[i], sub(p, std::to_string(i))));
            b.inject_error.push_back(std::move(e));
        }
    }
    if ((v = find(obj, "set-state"))) {
        std::string p = sub(path, "set-state");
        if (!v->is_array()) return err(p, "expected a list");
        for (size_t i = 0; i < v->size(); i++) {
            BlkdebugSetState s;
            TRY_SET(s, set_state((*v)[i], sub(p, std::to_string(i))));
            b.set_state.push_back(std::move(s));
        }
    }
    o.opts = std::move(b);
    return Status();
}

Status Decoder::qcow2(const json &obj, const std::string &path, int depth, BlockdevOptions &o)
{
    BlockdevOptionsQcow2 q;
    TRY_SET(q.file, required_ref(obj, path, "file", depth));
    const json *v;
    if ((v = find(obj, "backing"))) TRY_SET(q.backing, ref(*v, sub(path, "backing"), true, depth));
    if ((v = find(obj, "data-file"))) TRY_SET(q.data_file, ref(*v, sub(path, "data-file"), false, depth));
    if ((v = find(obj, "lazy-refcounts"))) {
        TRY_SET(q.lazy_refcounts, boolean(*v, sub(path, "lazy-refcounts")));
        q.lazy_refcounts_set = true;
    }
    struct BoolOpt {
        const char *key;
        bool *field;
    };
    const BoolOpt bools[] = {
        {"pass-discard-request", &q.pass_discard_request},
        {"pass-discard-snapshot", &q.pass_discard_snapshot},
        {"pass-discard-other", &q.pass_discard_other},
        {"discard-no-unref", &q.discard_no_unref},
    };
    for (const BoolOpt &b : bools) {
        if ((v = find(obj, b.key))) TRY_SET(*b.field, boolean(*v, sub(path, b.key)));
    }
    if ((v = find(obj, "overlap-check"))) {
        std::string p = sub(path, "overlap-check");
        if (v->is_object()) {
            return err(p, "only the string form (none, constant, cached, all) is supported, not "
                          "an object of per-structure flags");
        }
        TRY_SET(q.overlap_check, enumeration(*v, p, kOverlapNames));
    }
    if ((v = find(obj, "cache-size"))) TRY_SET(q.cache_size, size(*v, sub(path, "cache-size"), INT64_MAX));
    if ((v = find(obj, "l2-cache-size"))) TRY_SET(q.l2_cache_size, size(*v, sub(path, "l2-cache-size"), INT64_MAX));
    if ((v = find(obj, "refcount-cache-size"))) {
        TRY_SET(q.refcount_cache_size, size(*v, sub(path, "refcount-cache-size"), INT64_MAX));
    }
    if ((v = find(obj, "l2-cache-entry-size"))) {
        std::string p = sub(path, "l2-cache-entry-size");
        TRY_SET(q.l2_cache_entry_size, size(*v, p, INT64_MAX));
        uint64_t x = *q.l2_cache_entry_size;
        if (!is_power_of_2(x) || x < 512 || x > (2u << 20)) {
            return err(p, "L2 cache entry size must be a power of two between 512 and the cluster "
                          "size");
        }
    }
    if ((v = find(obj, "cache-clean-interval"))) {
        TRY_SET(q.cache_clean_interval, uinteger(*v, sub(path, "cache-clean-interval"), UINT_MAX));
    }

    // snapshot.id / snapshot.name: literal dotted keys or a nested object.
    const json *snap = find(obj, "snapshot");
    if (snap) {
        if (!snap->is_object()) return err(sub(path, "snapshot"), "expected an object");
        BG_TRY(check_keys(*snap, sub(path, "snapshot"), kSnapshotKeys));
    }
    for (const char *k : {"id", "name"}) {
        std::string dotted = std::string("snapshot.") + k;
        const json *lit = find(obj, dotted.c_str());
        const json *nested = snap ? find(*snap, k) : nullptr;
        if (lit && nested) return err(sub(path, dotted), "given twice");
        if (!lit && !nested) continue;
        std::string s;
        TRY_SET(s, str(lit ? *lit : *nested, sub(path, dotted)));
        (k[0] == 'i' ? q.snapshot_id : q.snapshot_name) = std::move(s);
    }

    if (q.cache_size) {
        if (q.l2_cache_size && q.refcount_cache_size) {
            return err(path, "cache-size, l2-cache-size and refcount-cache-size may not be set at "
                             "the same time");
        }
        if (q.l2_cache_size && *q.l2_cache_size > *q.cache_size) {
            return err(path, "l2-cache-size may not exceed cache-size");
        }
        if (q.refcount_cache_size && *q.refcount_cache_size > *q.cache_size) {
            return err(path, "refcount-cache-size may not exceed cache-size");
        }
    }
    if ((q.snapshot_id || q.snapshot_name) && !o.read_only) {
        return err(path, "snapshot.id and snapshot.name require read-only=on");
    }
    o.opts = std::move(q);
    return Status();
}

// ------------------------------------------------------------ encoder

json ref_to_json(const BlockdevRef &r);

json to_json(const BlockdevOptions &o)
{
    json j = json::object();
    j["driver"] = o.driver;
    if (!o.node_name.empty()) j["node-name"] = o.node_name;
    if (o.read_only) j["read-only"] = true;
    if (o.auto_read_only) j["auto-read-only"] = true;
    if (o.force_share) j["force-share"] = true;
    if (o.discard != BlockdevDiscardOptions::kIgnore) j["discard"] = enum_name(kDiscardNames, o.discard);
    if (o.detect_zeroes != BlockdevDetectZeroes::kOff) {
        j["detect-zeroes"] = enum_name(kDetectZeroesNames, o.detect_zeroes);
    }
    if (o.cache_direct || o.cache_no_flush) {
        json c = json::object();
        if (o.cache_direct) c["direct"] = true;
        if (o.cache_no_flush) c["no-flush"] = true;
        j["cache"] = std::move(c);
    }
    auto put_ref = [&j](const char *key, const BlockdevRef &r) {
        if (r.present()) j[key] = ref_to_json(r);
    };

    if (const auto *f = o.as<BlockdevOptionsFile>()) {
        // Keep a literal "file:" at the start of the name: the decoder
        // strips one prefix.
        j["filename"] = f->filename.compare(0, 5, "file:") == 0 ? "file:" + f->filename : f->filename;
        if (f->aio != BlockdevAioOptions::kIoUring) j["aio"] = enum_name(kAioNames, f->aio);
        if (f->locking != OnOffAuto::kAuto) j["locking"] = enum_name(kOnOffAutoNames, f->locking);
        if (f->aio_max_batch) j["aio-max-batch"] = f->aio_max_batch;
        if (!f->drop_cache) j["drop-cache"] = false;
    } else if (const auto *r = o.as<BlockdevOptionsRaw>()) {
        put_ref("file", r->file);
        if (r->offset) j["offset"] = *r->offset;
        if (r->size) j["size"] = *r->size;
    } else if (const auto *n = o.as<BlockdevOptionsNull>()) {
        if (n->size != BlockdevOptionsNull{}.size) j["size"] = n->size;
        if (n->latency_ns) j["latency-ns"] = n->latency_ns;
        if (!n->read_zeroes) j["read-zeroes"] = false;
    } else if (const auto *b = o.as<BlockdevOptionsBlkdebug>()) {
        put_ref("image", b->image);
        if (!b->config.empty()) j["config"] = b->config;
        if (b->align) j["align"] = b->align;
        if (b->max_transfer) j["max-transfer"] = b->max_transfer;
        if (b->opt_write_zero) j["opt-write-zero"] = b->opt_write_zero;
        if (b->max_write_zero) j["max-write-zero"] = b->max_write_zero;
        if (b->opt_discard) j["opt-discard"] = b->opt_discard;
        if (b->max_discard) j["max-discard"] = b->max_discard;
        if (!b->inject_error.empty()) {
            json list = json::array();
            const BlkdebugInjectError def;
            for (const auto &e : b->inject_error) {
                json x = json::object();
                if (!e.event.empty()) x["event"] = e.event;
                if (e.iotype) x["iotype"] = enum_name(kIoTypeNames, *e.iotype);
                if (e.err != def.err) x["errno"] = e.err;
                if (e.sector != def.sector) x["sector"] = e.sector;
                if (e.offset) x["offset"] = *e.offset;
                if (e.bytes) x["bytes"] = *e.bytes;
                if (e.after) x["after"] = e.after;
                if (e.once) x["once"] = true;
                if (e.immediately) x["immediately"] = true;
                if (e.state) x["state"] = e.state;
                list.push_back(std::move(x));
            }
            j["inject-error"] = std::move(list);
        }
        if (!b->set_state.empty()) {
            json list = json::array();
            for (const auto &s : b->set_state) {
                json x = json::object();
                x["event"] = s.event;
                if (s.state) x["state"] = s.state;
                x["new_state"] = s.new_state;
                list.push_back(std::move(x));
            }
            j["set-state"] = std::move(list);
        }
    } else if (const auto *q = o.as<BlockdevOptionsQcow2>()) {
        const BlockdevOptionsQcow2 def;
        put_ref("file", q->file);
        put_ref("backing", q->backing);
        put_ref("data-file", q->data_file);
        if (q->lazy_refcounts_set) j["lazy-refcounts"] = q->lazy_refcounts;
        auto put_bool = [&j](const char *key, bool value, bool dflt) {
            if (value != dflt) j[key] = value;
        };
        put_bool("pass-discard-request", q->pass_discard_request, def.pass_discard_request);
        put_bool("pass-discard-snapshot", q->pass_discard_snapshot, def.pass_discard_snapshot);
        put_bool("pass-discard-other", q->pass_discard_other, def.pass_discard_other);
        put_bool("discard-no-unref", q->discard_no_unref, def.discard_no_unref);
        if (q->overlap_check != def.overlap_check) {
            j["overlap-check"] = enum_name(kOverlapNames, q->overlap_check);
        }
        if (q->cache_size) j["cache-size"] = *q->cache_size;
        if (q->l2_cache_size) j["l2-cache-size"] = *q->l2_cache_size;
        if (q->l2_cache_entry_size) j["l2-cache-entry-size"] = *q->l2_cache_entry_size;
        if (q->refcount_cache_size) j["refcount-cache-size"] = *q->refcount_cache_size;
        if (q->cache_clean_interval != def.cache_clean_interval) {
            j["cache-clean-interval"] = q->cache_clean_interval;
        }
        if (q->snapshot_id) j["snapshot.id"] = *q->snapshot_id;
        if (q->snapshot_name) j["snapshot.name"] = *q->snapshot_name;
    }
    return j;
}

json ref_to_json(const BlockdevRef &r)
{
    switch (r.kind) {
    case BlockdevRef::Kind::kReference: return r.reference;
    case BlockdevRef::Kind::kInline: assert(r.def); return to_json(*r.def);
    case BlockdevRef::Kind::kNull:
    case BlockdevRef::Kind::kNone: break;
    }
    return nullptr;
}

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

Result<BlockdevOptions> from_tree(const json &tree, bool from_keyval)
{
    std::string prefix = "blockdev";
    if (tree.is_object()) {
        auto it = tree.find("node-name");
        if (it != tree.end() && it->is_string() && is_valid_node_name(it->get<std::string>())) {
            prefix += " '" + it->get<std::string>() + "'";
        }
    }
    Decoder d(prefix, from_keyval);
    if (!tree.is_object()) return d.err("", "expected an object");
    return d.node(tree, "", 0);
}

} // namespace

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

Result<BlockdevOptions> blockdev_options_from_tree(const json &tree, bool from_keyval)
{
    return guarded("blockdev", [&] { return from_tree(tree, from_keyval); });
}

Result<BlockdevOptions> parse_blockdev_arg(const std::string &arg)
{
    return guarded("blockdev", [&]() -> Result<BlockdevOptions> {
        size_t i = arg.find_first_not_of(" \t\n\r");
        if (i != std::string::npos && arg[i] == '{') {
            auto t = parse_json_object(arg);
            if (!t) return t.error();
            return from_tree(t.value(), false);
        }
        auto t = keyval_parse(arg, "driver");
        if (!t) return t.error();
        return from_tree(t.value(), true);
    });
}

Result<BlockdevOptions> parse_json_filename(const std::string &s)
{
    return guarded("json", [&]() -> Result<BlockdevOptions> {
        if (s.compare(0, 5, "json:") != 0) {
            return make_error(EINVAL, "json: filename must start with 'json:'");
        }
        auto t = parse_json_object(s.substr(5));
        if (!t) return t.error();
        auto u = json_unflatten(t.value());
        if (!u) return u.error();
        return from_tree(u.value(), false);
    });
}

json blockdev_options_to_json(const BlockdevOptions &o) noexcept
{
    return to_json(o);
}

std::string blockdev_options_to_keyval(const BlockdevOptions &o) noexcept
{
    return keyval_format(to_json(o));
}

} // namespace bg

// The toolkit a driver decodes its own options with, and encodes them back.
//
// The generic decoder (qapi/block-parse.cc) hands a driver's decoder an
// OptionReader over the node's JSON object. Each get*() looks up one key,
// marks it as known, converts and range-checks its value, and stores it;
// an absent key leaves the destination untouched (its default). After the
// driver's decoder returns, every key of the object that no get*() asked
// for is an error ("unknown key 'x'"), so a driver never lists its keys
// twice.
//
// Values are typed as the input was: from JSON exactly (strings, integers,
// true/false, objects, arrays, null); from keyval every scalar is a string
// and is converted (integers in decimal or 0x hex, sizes with "1G" suffixes,
// booleans on/off/true/false/yes/no).
//
// Every error is EINVAL with a message "<prefix>: <dotted.path>: <what>",
// e.g. "blockdev 'd': file.filename: expected a string". No function here
// throws but for std::bad_alloc.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "qapi/block-options.h"
#include "util/error.h"

namespace bg {

// One name of an enum value. In a table, the first entry for a value is its
// canonical name (used when encoding); later entries are aliases.
template <typename E>
struct EnumName {
    const char *name;
    E value;
};

template <typename E, size_t N>
const char *enum_name(const EnumName<E> (&table)[N], E value)
{
    for (const auto &e : table) {
        if (e.value == value) return e.name;
    }
    return "?";
}

struct OptionDecodeContext;

class OptionReader {
  public:
    // For the generic decoder: a reader over obj (an object) at path.
    OptionReader(OptionDecodeContext *ctx, const nlohmann::json &obj, std::string path, int depth);

    // The dotted path of key below this object ("file.filename").
    std::string path_of(const std::string &key) const;
    // An EINVAL error about key (or, with an empty key, the object itself).
    Error error(const std::string &key, const std::string &msg) const;

    // The raw value of key, marked as known; nullptr if absent.
    const nlohmann::json *take(const char *key);
    bool has(const char *key) const { return obj_.contains(key); }

    // Optional keys: absent leaves *out unchanged.
    Status get(const char *key, std::string *out);
    Status get(const char *key, bool *out);
    Status get(const char *key, std::optional<bool> *out);
    // An integer in [min, max].
    Status get_int(const char *key, int64_t *out, int64_t min, int64_t max);
    Status get_uint(const char *key, uint64_t *out, uint64_t max);
    Status get_uint(const char *key, uint32_t *out, uint32_t max);
    // A byte count (keyval: "64k", "1G"; JSON: a non-negative integer) <= max.
    Status get_size(const char *key, uint64_t *out, uint64_t max);
    Status get_size(const char *key, std::optional<uint64_t> *out, uint64_t max);
    // A required string key: "missing required key 'x'" if absent.
    Status require(const char *key, std::string *out);

    template <typename E, size_t N>
    Status get_enum(const char *key, E *out, const EnumName<E> (&table)[N], size_t listed = N)
    {
        const nlohmann::json *v = take(key);
        if (!v) return {};
        std::string s;
        BG_TRY(string_value(*v, key, &s));
        for (const auto &e : table) {
            if (s == e.name) {
                *out = e.value;
                return {};
            }
        }
        std::string names;
        for (size_t i = 0; i < listed && i < N; i++) {
            names += i ? ", " : "";
            names += table[i].name;
        }
        return error(key, "'" + s + "' is not one of: " + names);
    }
    template <typename E, size_t N>
    Status get_enum(const char *key, std::optional<E> *out, const EnumName<E> (&table)[N])
    {
        if (!has(key)) return {};
        E e{};
        BG_TRY(get_enum(key, &e, table));
        *out = e;
        return {};
    }

    // A child: a node-name string, an inline definition (decoded with the
    // schema), or, with kNullable, JSON null. kRequired fails when absent.
    enum class RefMode { kOptional, kRequired, kNullable };
    Status get_ref(const char *key, BlockdevRef *out, RefMode mode);

    // A nested object: fn reads its keys with its own reader; unknown keys
    // inside are errors. Absent: fn is not called.
    Status get_object(const char *key, const std::function<Status(OptionReader &)> &fn);
    // A list of objects: fn is called for each element (path "key.N").
    Status get_object_list(const char *key, const std::function<Status(OptionReader &)> &fn);

    // For the generic decoder: the first key nobody asked for, if any.
    Status check_all_known() const;

  private:
    Status string_value(const nlohmann::json &v, const std::string &key, std::string *out) const;
    Result<uint64_t> magnitude(const nlohmann::json &v, const std::string &key, bool *neg) const;
    Status size_value(const nlohmann::json &v, const std::string &key, uint64_t max, uint64_t *out) const;

    OptionDecodeContext *ctx_;
    const nlohmann::json &obj_;
    std::string path_;
    int depth_;
    std::set<std::string> known_;
};

// Encoding helpers for DriverOptions::encode: writes ref under key when it
// is present (a reference as a string, an inline definition as an object,
// null as null).
void put_ref(nlohmann::json &j, const char *key, const BlockdevRef &ref);

} // namespace bg

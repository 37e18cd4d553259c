#include "qapi/keyval.h"

#include "qapi/json-quotes.h"

#include <map>
#include <memory>
#include <new>
#include <set>
#include <vector>

namespace bg {

using nlohmann::json;

namespace {

constexpr size_t kMaxSegments = 64;     // keyval key segments / un-flatten depth
constexpr int kMaxJsonDepth = 128;

bool is_digits(const std::string &s)
{
    if (s.empty()) return false;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
    }
    return true;
}

bool is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-';
}

std::string join(const std::vector<std::string> &segs, size_t count)
{
    std::string s;
    for (size_t i = 0; i < count; i++) {
        if (i) s += '.';
        s += segs[i];
    }
    return s;
}

// Builds a nested tree from (dotted key, value) pairs, detecting duplicate
// keys and keys used both as a value and as a prefix, then turns objects
// whose members are all list indices into arrays.
class TreeBuilder {
  public:
    explicit TreeBuilder(const char *what) : what_(what) { root_.kind = Node::kObject; }

    // Splits key at '.' and checks the segments. strict_chars: only
    // [A-Za-z0-9_-] allowed (keyval); JSON member names may hold anything.
    Result<std::vector<std::string>> split(const std::string &key, bool strict_chars) const
    {
        std::vector<std::string> segs;
        if (strict_chars) {
            for (char c : key) {
                if (c != '.' && !is_key_char(c)) {
                    return make_error(EINVAL, "%s: invalid character '%c' in key '%s'", what_, c,
                                      key.c_str());
                }
            }
        }
        size_t start = 0;
        for (;;) {
            size_t dot = key.find('.', start);
            std::string seg = key.substr(start, dot == std::string::npos ? std::string::npos
                                                                         : dot - start);
            if (seg.empty()) {
                return make_error(EINVAL, "%s: empty segment in key '%s'", what_, key.c_str());
            }
            segs.push_back(std::move(seg));
            if (dot == std::string::npos) break;
            start = dot + 1;
        }
        return segs;
    }

    // Inserts value at the path prefix + segs. full_key names the pair in
    // messages. ensure_object: value is ignored; make sure an (empty) object
    // exists there.
    Status insert(const std::vector<std::string> &segs, json value, bool ensure_object)
    {
        if (segs.empty()) return Status();
        std::string full = join(segs, segs.size());
        if (segs.size() > kMaxSegments) {
            return make_error(EINVAL, "%s: key '%.40s(...)' is nested too deeply", what_,
                              full.c_str());
        }
        for (size_t i = 0; i < segs.size(); i++) {
            if (is_digits(segs[i])) {
                if (i == 0) {
                    return make_error(EINVAL, "%s: invalid key '%s' (a list index cannot come first)",
                                      what_, full.c_str());
                }
                if (segs[i].size() > 1 && segs[i][0] == '0') {
                    return make_error(EINVAL, "%s: invalid list index '%s' in key '%s'", what_,
                                      segs[i].c_str(), full.c_str());
                }
                if (segs[i].size() > 9) {
                    return make_error(EINVAL, "%s: invalid list index '%s' in key '%s'", what_,
                                      segs[i].c_str(), full.c_str());
                }
            }
        }
        Node *cur = &root_;
        for (size_t i = 0; i < segs.size(); i++) {
            auto &slot = cur->children[segs[i]];
            if (!slot) slot = std::make_unique<Node>();
            Node *child = slot.get();
            bool last = i + 1 == segs.size();
            if (!last || ensure_object) {
                if (child->kind == Node::kLeaf) {
                    return make_error(EINVAL, "%s: '%s' is used both as a value and as an object prefix",
                                      what_, join(segs, i + 1).c_str());
                }
                child->kind = Node::kObject;
            } else {
                if (child->kind == Node::kLeaf) {
                    return make_error(EINVAL, "%s: duplicate key '%s'", what_, full.c_str());
                }
                if (child->kind == Node::kObject) {
                    return make_error(EINVAL, "%s: '%s' is used both as a value and as an object prefix",
                                      what_, full.c_str());
                }
                child->kind = Node::kLeaf;
                child->leaf = std::move(value);
            }
            cur = child;
        }
        return Status();
    }

    // The finished tree: an object (the root is never turned into a list).
    Result<json> finish() const { return to_json(root_, "", true); }

  private:
    struct Node {
        enum Kind { kUnset, kLeaf, kObject };
        Kind kind = kUnset;           // every node but the root is set on insert
        json leaf;
        std::map<std::string, std::unique_ptr<Node>> children;
    };

    // Recursion depth is bounded by kMaxSegments.
    Result<json> to_json(const Node &n, const std::string &path, bool root) const
    {
        if (n.kind == Node::kLeaf) return n.leaf;
        bool any_index = false, any_name = false;
        for (auto &[k, c] : n.children) {
            (is_digits(k) ? any_index : any_name) = true;
        }
        if (!root && any_index && any_name) {
            return make_error(EINVAL, "%s: '%s' mixes list indices and member names", what_,
                              path.c_str());
        }
        if (!root && any_index) {
            json arr = json::array();
            for (size_t i = 0; i < n.children.size(); i++) {
                std::string k = std::to_string(i);
                std::string sub = path + "." + k;
                auto it = n.children.find(k);
                if (it == n.children.end()) {
                    return make_error(EINVAL,
                                      "%s: missing key '%s' (list indices must be contiguous from 0)",
                                      what_, sub.c_str());
                }
                auto r = to_json(*it->second, sub, false);
                if (!r) return r.error();
                arr.push_back(std::move(r.value()));
            }
            return arr;
        }
        json obj = json::object();
        for (auto &[k, c] : n.children) {
            auto r = to_json(*c, path.empty() ? k : path + "." + k, false);
            if (!r) return r.error();
            obj[k] = std::move(r.value());
        }
        return obj;
    }

    const char *what_;
    Node root_;
};

Error internal_error(const char *what, const char *detail)
{
    return make_error(EINVAL, "%s: internal error: %s", what, detail);
}

// ---------------------------------------------------------------- keyval

Result<json> do_keyval_parse(const std::string &s, const char *implied_key)
{
    TreeBuilder tb("keyval");
    const size_t n = s.size();
    size_t pos = 0;
    bool first = true;
    while (pos < n) {
        size_t start = pos;
        size_t key_end = s.find_first_of("=,", pos);
        if (key_end == std::string::npos) key_end = n;
        std::string key, value;
        if (key_end > start && (key_end == n || s[key_end] == ',')) {
            if (!first || !implied_key) {
                return make_error(EINVAL, "keyval: expected '=' after '%s'",
                                  s.substr(start, key_end - start).c_str());
            }
            key = implied_key;
            value = s.substr(start, key_end - start);
            pos = key_end < n ? key_end + 1 : n;
        } else {
            if (key_end == start) {
                return make_error(EINVAL, "keyval: empty key at position %zu", start);
            }
            key = s.substr(start, key_end - start);
            pos = key_end + 1;                 // past '='
            while (pos < n) {
                if (s[pos] == ',') {
                    if (pos + 1 < n && s[pos + 1] == ',') {
                        value += ',';
                        pos += 2;
                        continue;
                    }
                    pos++;
                    break;
                }
                value += s[pos++];
            }
        }
        auto segs = tb.split(key, true);
        if (!segs) return segs.error();
        BG_TRY(tb.insert(segs.value(), json(std::move(value)), false));
        first = false;
    }
    return tb.finish();
}

// ---------------------------------------------------------------- JSON

// nlohmann's messages look like "[json.exception.parse_error.101] parse
// error at line 1, column 2: syntax error while parsing ...": keep the part
// after the location.
std::string parse_error_text(const std::string &what)
{
    size_t col = what.find("column ");
    size_t colon = col == std::string::npos ? std::string::npos : what.find(": ", col);
    if (colon != std::string::npos) return what.substr(colon + 2);
    size_t bracket = what.find("] ");
    return bracket == std::string::npos ? what : what.substr(bracket + 2);
}

Result<json> do_parse_json_object(const std::string &s)
{
    // Member names seen, per open object (arrays push an unused set).
    std::vector<std::set<std::string>> open;
    std::string duplicate;
    bool too_deep = false;
    json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json &parsed) -> bool {
        switch (ev) {
        case json::parse_event_t::object_start:
        case json::parse_event_t::array_start:
            if (depth >= kMaxJsonDepth) too_deep = true;
            open.emplace_back();
            break;
        case json::parse_event_t::object_end:
        case json::parse_event_t::array_end:
            if (!open.empty()) open.pop_back();
            break;
        case json::parse_event_t::key:
            if (!open.empty() && parsed.is_string() && duplicate.empty()) {
                const std::string &k = parsed.get_ref<const std::string &>();
                if (!open.back().insert(k).second) duplicate = k;
            }
            break;
        case json::parse_event_t::value:
            break;
        }
        return true;
    };
    Result<std::string> text = json_translate_quotes(s);
    if (!text) return text.error();
    json j;
    try {
        j = json::parse(text.value(), cb, true, false);
    } catch (const json::parse_error &e) {
        size_t pos = e.byte > 0 ? e.byte - 1 : 0;
        return make_error(EINVAL, "JSON: %s at position %zu", parse_error_text(e.what()).c_str(), pos);
    }
    if (too_deep) return make_error(EINVAL, "JSON: nesting deeper than %d levels", kMaxJsonDepth);
    if (!duplicate.empty()) return make_error(EINVAL, "JSON: duplicate key '%s'", duplicate.c_str());
    if (!j.is_object()) return make_error(EINVAL, "JSON: expected an object");
    return j;
}

Result<json> unflatten_value(const json &v, int depth);

// Adds the members of obj below prefix to tb.
Status unflatten_into(TreeBuilder &tb, const json &obj, const std::vector<std::string> &prefix,
                      int depth)
{
    if (depth > static_cast<int>(kMaxSegments)) {
        return make_error(EINVAL, "JSON: key '%.40s(...)' is nested too deeply",
                          join(prefix, prefix.size()).c_str());
    }
    for (auto it = obj.begin(); it != obj.end(); ++it) {
        auto segs = tb.split(it.key(), false);
        if (!segs) return segs.error();
        std::vector<std::string> path = prefix;
        path.insert(path.end(), segs.value().begin(), segs.value().end());
        const json &v = it.value();
        if (v.is_object()) {
            if (v.empty()) {
                BG_TRY(tb.insert(path, json(), true));
            } else {
                BG_TRY(unflatten_into(tb, v, path, depth + 1));
            }
        } else if (v.is_array()) {
            auto r = unflatten_value(v, depth + 1);
            if (!r) return r.error();
            BG_TRY(tb.insert(path, std::move(r.value()), false));
        } else {
            BG_TRY(tb.insert(path, v, false));
        }
    }
    return Status();
}

// Un-flattens objects inside v (an array or an object); other values are
// returned as they are.
Result<json> unflatten_value(const json &v, int depth)
{
    if (depth > static_cast<int>(kMaxSegments)) {
        return make_error(EINVAL, "JSON: nesting deeper than %zu levels", kMaxSegments);
    }
    if (v.is_array()) {
        json arr = json::array();
        for (const json &e : v) {
            auto r = unflatten_value(e, depth + 1);
            if (!r) return r.error();
            arr.push_back(std::move(r.value()));
        }
        return arr;
    }
    if (v.is_object()) {
        TreeBuilder tb("JSON");
        BG_TRY(unflatten_into(tb, v, {}, depth));
        return tb.finish();
    }
    return v;
}

// ---------------------------------------------------------------- format

void format_into(std::string &out, const json &v, const std::string &key)
{
    auto emit = [&](const std::string &value) {
        if (!out.empty()) out += ',';
        out += key;
        out += '=';
        out += keyval_escape(value);
    };
    auto sub = [&](const std::string &k) { return key.empty() ? k : key + "." + k; };
    switch (v.type()) {
    case json::value_t::object: {
        auto d = v.find("driver");
        if (d != v.end()) format_into(out, *d, sub("driver"));
        auto nn = v.find("node-name");
        if (nn != v.end()) format_into(out, *nn, sub("node-name"));
        for (auto it = v.begin(); it != v.end(); ++it) {
            if (it.key() == "driver" || it.key() == "node-name") continue;
            format_into(out, it.value(), sub(it.key()));
        }
        break;
    }
    case json::value_t::array:
        for (size_t i = 0; i < v.size(); i++) format_into(out, v[i], sub(std::to_string(i)));
        break;
    case json::value_t::string:
        emit(v.get_ref<const std::string &>());
        break;
    case json::value_t::boolean:
        emit(v.get<bool>() ? "on" : "off");
        break;
    case json::value_t::number_integer:
        emit(std::to_string(v.get<int64_t>()));
        break;
    case json::value_t::number_unsigned:
        emit(std::to_string(v.get<uint64_t>()));
        break;
    case json::value_t::number_float:
        emit(v.dump());
        break;
    case json::value_t::null:
        emit("");
        break;
    case json::value_t::binary:
    case json::value_t::discarded:
        break;
    }
}

} // namespace

Result<json> keyval_parse(const std::string &s, const char *implied_key)
{
    try {
        return do_keyval_parse(s, implied_key);
    } catch (const std::bad_alloc &) {
        return make_error(ENOMEM, "keyval: out of memory");
    } catch (const std::exception &e) {
        return internal_error("keyval", e.what());
    }
}

Result<json> parse_json_object(const std::string &s)
{
    try {
        return do_parse_json_object(s);
    } catch (const std::bad_alloc &) {
        return make_error(ENOMEM, "JSON: out of memory");
    } catch (const std::exception &e) {
        return internal_error("JSON", e.what());
    }
}

Result<json> json_unflatten(const json &obj)
{
    try {
        if (!obj.is_object()) return make_error(EINVAL, "JSON: expected an object");
        return unflatten_value(obj, 0);
    } catch (const std::bad_alloc &) {
        return make_error(ENOMEM, "JSON: out of memory");
    } catch (const std::exception &e) {
        return internal_error("JSON", e.what());
    }
}

std::string keyval_format(const json &obj) noexcept
{
    std::string out;
    format_into(out, obj, "");
    return out;
}

std::string keyval_escape(const std::string &value)
{
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        out += c;
        if (c == ',') out += ',';
    }
    return out;
}

} // namespace bg

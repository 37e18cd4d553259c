// qapi/config-file.cc -- see config-file.h.
#include "qapi/config-file.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace bg {

namespace {

// QEMU reads keys and group names into fixed buffers of these sizes.
constexpr size_t kMaxName = 63;
constexpr size_t kMaxValue = 1023;

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// "[NAME \"ID\"]": true with *name and *id set.
bool group_with_id(const std::string &line, std::string *name, std::string *id)
{
    if (line.empty() || line[0] != '[') return false;
    size_t i = 1;
    while (i < line.size() && is_blank(line[i])) i++;
    size_t start = i;
    while (i < line.size() && !is_blank(line[i]) && i - start < kMaxName) i++;
    if (i == start) return false;
    std::string n = line.substr(start, i - start);
    while (i < line.size() && is_blank(line[i])) i++;
    if (i >= line.size() || line[i] != '"') return false;
    size_t id_start = ++i;
    while (i < line.size() && line[i] != '"' && i - id_start < kMaxName) i++;
    if (i == id_start) return false;
    *name = std::move(n);
    *id = line.substr(id_start, i - id_start);
    return true;
}

// "[NAME]" (or "[NAME" to the end of the line): true with *name set.
bool group_plain(const std::string &line, std::string *name)
{
    if (line.empty() || line[0] != '[') return false;
    size_t end = line.find(']', 1);
    size_t len = (end == std::string::npos ? line.size() : end) - 1;
    if (len == 0) return false;
    *name = line.substr(1, len < kMaxName ? len : kMaxName);
    return true;
}

// A key line: false for a line of blanks.
bool key_value(const std::string &line, std::string *key, std::string *value)
{
    size_t i = 0;
    while (i < line.size() && is_blank(line[i])) i++;
    size_t start = i;
    while (i < line.size() && !is_blank(line[i]) && i - start < kMaxName) i++;
    if (i == start) return false;
    *key = line.substr(start, i - start);
    value->clear();
    while (i < line.size() && is_blank(line[i])) i++;
    if (i >= line.size() || line[i] != '=') return true;
    i++;
    while (i < line.size() && is_blank(line[i])) i++;
    if (i >= line.size() || line[i] != '"') return true;
    size_t v = ++i;
    while (i < line.size() && line[i] != '"' && i - v < kMaxValue) i++;
    *value = line.substr(v, i - v);
    return true;
}

const ConfigGroupSchema *find_group(std::span<const ConfigGroupSchema> schema, const std::string &name)
{
    for (const ConfigGroupSchema &g : schema) {
        if (name == g.name) return &g;
    }
    return nullptr;
}

Status check_value(const ConfigGroupSchema &g, const std::string &key, const std::string &value)
{
    for (const ConfigKeySchema &k : g.keys) {
        if (key != k.name) continue;
        if (k.type == ConfigValueType::kNumber) {
            Result<uint64_t> n = parse_config_number(key, value);
            if (!n) return n.error();
        } else if (k.type == ConfigValueType::kBool) {
            Result<bool> b = parse_config_bool(key, value);
            if (!b) return b.error();
        }
        return {};
    }
    return make_error(EINVAL, "Invalid parameter '%s'", key.c_str());
}

} // namespace

Result<uint64_t> parse_config_number(const std::string &key, const std::string &value)
{
    errno = 0;
    char *end = nullptr;
    const unsigned long long n = std::strtoull(value.c_str(), &end, 0);
    if (errno == ERANGE) {
        return make_error(EINVAL, "Value '%s' is too large for parameter '%s'", value.c_str(), key.c_str());
    }
    if (end == value.c_str() || *end != '\0') {
        return make_error(EINVAL, "Parameter '%s' expects a number", key.c_str());
    }
    return static_cast<uint64_t>(n);
}

Result<bool> parse_config_bool(const std::string &key, const std::string &value)
{
    for (const char *t : {"on", "yes", "true", "y"}) {
        if (value == t) return true;
    }
    for (const char *f : {"off", "no", "false", "n"}) {
        if (value == f) return false;
    }
    return make_error(EINVAL, "Parameter '%s' expects 'on' or 'off'", key.c_str());
}

Result<std::vector<ConfigGroup>> parse_config_file(const std::string &text,
                                                   std::span<const ConfigGroupSchema> schema)
{
    std::vector<ConfigGroup> groups;
    const ConfigGroupSchema *current = nullptr;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        size_t end = nl == std::string::npos ? text.size() : nl + 1;
        const std::string line = text.substr(pos, end - pos);   // with its newline
        pos = end;
        if (line[0] == '\n' || line[0] == '#') continue;
        std::string name, id;
        if (group_with_id(line, &name, &id) || group_plain(line, &name)) {
            current = find_group(schema, name);
            if (!current) return make_error(EINVAL, "There is no option group '%s'", name.c_str());
            groups.push_back(ConfigGroup{name, id, {}});
            continue;
        }
        std::string key, value;
        if (!key_value(line, &key, &value)) return make_error(EINVAL, "parse error");
        if (!current) return make_error(EINVAL, "no group defined");
        BG_TRY(check_value(*current, key, value));
        groups.back().values[key] = value;
    }
    return groups;
}

} // namespace bg

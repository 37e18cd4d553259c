#include "qapi/user-object.h"

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <glib.h>
#include <linux/keyctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <deque>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "qapi/export-parse.h"
#include "util/tls.h"
#include "util/user-objects.h"

namespace bg {

using nlohmann::json;

namespace {

enum class Kind { kStr, kBool, kInt, kInt32, kEnum, kAny, kLimits, kRules };

struct Member {
    const char *name;
    Kind kind;
    bool required = false;
    std::vector<const char *> values = {};   // kEnum
};

struct TypeSchema {
    const char *type;
    std::vector<Member> members;
    const char *help;   // the lines after "TYPE options:"
};

const std::vector<Member> kCredsMembers = {{"verify-peer", Kind::kBool},
                                           {"dir", Kind::kStr},
                                           {"endpoint", Kind::kEnum, false, {"client", "server"}},
                                           {"priority", Kind::kStr}};

std::vector<Member> creds_plus(std::vector<Member> extra)
{
    std::vector<Member> m = kCredsMembers;
    m.insert(m.end(), extra.begin(), extra.end());
    return m;
}

const char *const kBucketNames[6] = {"bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write"};

std::vector<Member> throttle_members(const char *prefix)
{
    std::vector<Member> m;
    static std::deque<std::string> names;   // keeps the names' storage (a deque never moves its elements)
    for (const char *b : kBucketNames) {
        for (const char *suffix : {"", "-max", "-max-length"}) {
            names.push_back(std::string(prefix) + b + suffix);
        }
    }
    names.push_back(std::string(prefix) + "iops-size");
    for (size_t i = names.size() - 19; i < names.size(); i++) m.push_back({names[i].c_str(), Kind::kInt});
    return m;
}

const std::vector<Member> &limits_members()
{
    static const std::vector<Member> m = throttle_members("");
    return m;
}

const std::vector<Member> kRuleMembers = {{"match", Kind::kStr, true},
                                          {"policy", Kind::kEnum, true, {"deny", "allow"}},
                                          {"format", Kind::kEnum, false, {"exact", "glob"}}};

const char kCredsHelp[] = "  dir=<string>\n  endpoint=<QCryptoTLSCredsEndpoint>\n  priority=<string>\n  verify-peer=<bool>\n";

const std::vector<TypeSchema> &schemas()
{
    static const std::vector<TypeSchema> s = [] {
        std::vector<Member> throttle = throttle_members("x-");
        throttle.insert(throttle.begin(), Member{"limits", Kind::kLimits});
        return std::vector<TypeSchema>{
            {"authz-list",
             {{"policy", Kind::kEnum, false, {"deny", "allow"}}, {"rules", Kind::kRules}},
             "  policy=<QAuthZListPolicy>\n  rules=<QAuthZListRule>\n"},
            {"authz-list-file", {}, "  filename=<string>\n  refresh=<bool>\n"},
            {"authz-simple", {{"identity", Kind::kStr, true}}, "  identity=<string>\n"},
            {"main-loop",
             {{"aio-max-batch", Kind::kInt}, {"thread-pool-min", Kind::kInt}, {"thread-pool-max", Kind::kInt}},
             "  aio-max-batch=<int>\n  thread-pool-max=<int>\n  thread-pool-min=<int>\n"},
            {"pr-manager-helper", {{"path", Kind::kStr, true}}, "  path=<string>\n"},
            {"secret",
             {{"format", Kind::kEnum, false, {"raw", "base64"}},
              {"keyid", Kind::kStr},
              {"iv", Kind::kStr},
              {"data", Kind::kStr},
              {"file", Kind::kStr}},
             "  data=<string>\n  file=<string>\n  format=<QCryptoSecretFormat>\n  iv=<string>\n  keyid=<string>\n"},
            {"secret_keyring",
             {{"format", Kind::kEnum, false, {"raw", "base64"}},
              {"keyid", Kind::kStr},
              {"iv", Kind::kStr},
              {"serial", Kind::kInt32, true}},
             "  format=<QCryptoSecretFormat>\n  iv=<string>\n  keyid=<string>\n  serial=<int32_t>\n"},
            {"thread-context",
             {{"cpu-affinity", Kind::kAny}, {"node-affinity", Kind::kAny}},
             "  cpu-affinity=<int>\n  node-affinity=<int>\n"},
            {"throttle-group", throttle, nullptr},
            {"tls-cipher-suites", kCredsMembers, kCredsHelp},
            {"tls-creds-anon", kCredsMembers, kCredsHelp},
            {"tls-creds-psk", creds_plus({{"username", Kind::kStr}}),
             "  dir=<string>\n  endpoint=<QCryptoTLSCredsEndpoint>\n  priority=<string>\n  username=<string>\n"
             "  verify-peer=<bool>\n"},
            {"tls-creds-x509", creds_plus({{"sanity-check", Kind::kBool}, {"passwordid", Kind::kStr}}),
             "  dir=<string>\n  endpoint=<QCryptoTLSCredsEndpoint>\n  passwordid=<string>\n  priority=<string>\n"
             "  sanity-check=<bool>\n  verify-peer=<bool>\n"},
        };
    }();
    return s;
}

const TypeSchema *find_schema(const std::string &type)
{
    for (const TypeSchema &t : schemas()) {
        if (type == t.type) return &t;
    }
    return nullptr;
}

std::string throttle_help()
{
    std::vector<std::string> lines = {"  limits=<ThrottleLimits>"};
    for (const Member &m : throttle_members("x-")) lines.push_back(std::string("  ") + m.name + "=<int>");
    std::sort(lines.begin() + 1, lines.end());
    std::string out;
    for (auto &l : lines) out += l + "\n";
    return out;
}

// ---- schema checks, in QEMU's words ----

Error param_err(const char *fmt, const std::string &a, const std::string &b = "")
{
    char buf[512];
    std::snprintf(buf, sizeof buf, fmt, a.c_str(), b.c_str());
    return Error{EINVAL, buf};
}

bool parse_int(const std::string &s, int64_t *out)
{
    if (s.empty()) return false;
    errno = 0;
    char *end = nullptr;
    long long v = std::strtoll(s.c_str(), &end, 0);
    if (errno != 0 || *end != '\0') return false;
    *out = v;
    return true;
}

Status check_members(const json &tree, const std::vector<Member> &members, const std::string &prefix, bool kv);

Status check_member(const json &v, const Member &m, const std::string &path, bool kv)
{
    const char *json_type = nullptr;
    switch (m.kind) {
    case Kind::kStr:
        if (!v.is_string()) json_type = "string";
        break;
    case Kind::kEnum:
        if (!v.is_string()) {
            json_type = "string";
            break;
        }
        for (const char *e : m.values) {
            if (v.get<std::string>() == e) return {};
        }
        return param_err("Parameter '%s' does not accept value '%s'", m.name, v.get<std::string>());
    case Kind::kBool:
        if (kv && v.is_string()) {
            static const char *const ok[] = {"on", "yes", "true", "y", "off", "no", "false", "n"};
            for (const char *w : ok) {
                if (v.get<std::string>() == w) return {};
            }
            return param_err("Parameter '%s' expects 'on' or 'off'", path);
        }
        if (!v.is_boolean()) json_type = "boolean";
        break;
    case Kind::kInt:
    case Kind::kInt32: {
        int64_t n = 0;
        if (kv && v.is_string()) {
            if (!parse_int(v.get<std::string>(), &n)) return param_err("Parameter '%s' expects integer", path);
        } else if (v.is_number_integer()) {
            n = v.get<int64_t>();
        } else {
            json_type = "integer";
            break;
        }
        if (m.kind == Kind::kInt32 && (n < INT32_MIN || n > INT32_MAX)) {
            return param_err("Parameter '%s' expects int32_t", path);
        }
        break;
    }
    case Kind::kAny:
        break;
    case Kind::kLimits:
        if (!v.is_object()) {
            json_type = "object";
            break;
        }
        return check_members(v, limits_members(), path + ".", kv);
    case Kind::kRules:
        if (!v.is_array()) {
            json_type = "array";
            break;
        }
        for (size_t i = 0; i < v.size(); i++) {
            const std::string p = path + "." + std::to_string(i);
            if (!v[i].is_object()) return param_err("Invalid parameter type for '%s', expected: object", p);
            BG_TRY(check_members(v[i], kRuleMembers, p + ".", kv));
        }
        break;
    }
    if (json_type) return param_err("Invalid parameter type for '%s', expected: %s", path, json_type);
    return {};
}

// Members in schema order (the first missing or bad one is reported), then
// the first key the schema does not have.
Status check_members(const json &tree, const std::vector<Member> &members, const std::string &prefix, bool kv)
{
    for (const Member &m : members) {
        auto it = tree.find(m.name);
        if (it == tree.end()) {
            if (m.required) return param_err("Parameter '%s' is missing", prefix + m.name);
            continue;
        }
        BG_TRY(check_member(*it, m, prefix + m.name, kv));
    }
    for (auto it = tree.begin(); it != tree.end(); ++it) {
        bool known = prefix.empty() && (it.key() == "qom-type" || it.key() == "id");
        for (const Member &m : members) known = known || it.key() == m.name;
        if (!known) return param_err("Parameter '%s' is unexpected", prefix + it.key());
    }
    return {};
}

// ---- values of a checked tree ----

std::string str_of(const json &tree, const char *key, const std::string &dflt = "")
{
    auto it = tree.find(key);
    return it == tree.end() ? dflt : it->get<std::string>();
}

int64_t int_of(const json &v)
{
    if (v.is_number_integer()) return v.get<int64_t>();
    int64_t n = 0;
    parse_int(v.get<std::string>(), &n);
    return n;
}

bool has(const json &tree, const char *key)
{
    return tree.find(key) != tree.end();
}

// ---- secrets ----

Result<std::string> read_secret_file(const std::string &path)
{
    gchar *data = nullptr;
    gsize len = 0;
    GError *gerr = nullptr;
    if (!g_file_get_contents(path.c_str(), &data, &len, &gerr)) {
        Error e{EIO, "Unable to read " + path + ": " + gerr->message};
        g_error_free(gerr);
        return e;
    }
    std::string out(data, len);
    g_free(data);
    return out;
}

Result<std::string> read_keyring(int32_t serial)
{
    std::string buf(256, '\0');
    for (;;) {
        long n = syscall(SYS_keyctl, KEYCTL_READ, static_cast<long>(serial), buf.data(), buf.size(), 0L);
        if (n < 0) {
            return make_error(errno, "Unable to read serial key %08x: %s", static_cast<unsigned>(serial),
                              std::strerror(errno));
        }
        if (static_cast<size_t>(n) <= buf.size()) {
            buf.resize(static_cast<size_t>(n));
            return buf;
        }
        buf.assign(static_cast<size_t>(n), '\0');
    }
}

Result<std::string> complete_secret(const json &tree, bool keyring)
{
    std::string input;
    if (keyring) {
        auto r = read_keyring(static_cast<int32_t>(int_of(tree["serial"])));
        if (!r) return r.error();
        input = std::move(r.value());
    } else if (has(tree, "file") && has(tree, "data")) {
        return make_error(EINVAL, "'file' and 'data' are mutually exclusive");
    } else if (has(tree, "file")) {
        auto r = read_secret_file(str_of(tree, "file"));
        if (!r) return r.error();
        input = std::move(r.value());
    } else if (has(tree, "data")) {
        input = str_of(tree, "data");
    } else {
        return make_error(EINVAL, "Either 'file' or 'data' must be provided");
    }
    const bool base64 = str_of(tree, "format", "raw") == "base64";
    if (has(tree, "keyid")) {
        const std::string keyid = str_of(tree, "keyid");
        if (keyid == str_of(tree, "id")) return make_error(EINVAL, "Secret with id '%s' has no data", keyid.c_str());
        auto key = secret_lookup(keyid);
        if (!key) return key.error();
        if (key.value().size() != 32) return make_error(EINVAL, "Key should be 32 bytes in length");
        if (!has(tree, "iv")) return make_error(EINVAL, "IV is required to decrypt secret");
        return secret_decrypt(key.value(), str_of(tree, "iv"), input, base64);
    }
    return base64 ? secret_base64_decode(input) : Result<std::string>(input);
}

// ---- throttle-group ----

// The x-* properties as QEMU's setters take them, then limits.*, then the
// checks of the complete configuration.
Status complete_throttle(const json &tree, UserObject *o)
{
    auto apply = [o](const json &src, const std::string &prefix, bool props) -> Status {
        for (int b = 0; b < 6; b++) {
            const std::string base = prefix + kBucketNames[b];
            for (int f = 0; f < 3; f++) {
                const std::string name = base + (f == 0 ? "" : f == 1 ? "-max" : "-max-length");
                auto it = src.find(name);
                if (it == src.end()) continue;
                const int64_t v = int_of(*it);
                if (props && v < 0) return make_error(EINVAL, "Property values cannot be negative");
                if (f == 2 && v > static_cast<int64_t>(UINT_MAX)) {
                    return make_error(EINVAL, props ? "%s value must be in therange [0, %u]"
                                                    : "%s value must be in the range [0, %u]",
                                      name.c_str(), UINT_MAX);
                }
                ThrottleBucket &bk = o->buckets[b];
                if (f == 0) bk.avg = v;
                else if (f == 1) bk.max = v;
                else bk.burst_length = static_cast<uint32_t>(v);
            }
        }
        auto it = src.find(prefix + "iops-size");
        if (it != src.end()) {
            if (props && int_of(*it) < 0) return make_error(EINVAL, "Property values cannot be negative");
            o->iops_size = int_of(*it);
        }
        return {};
    };
    BG_TRY(apply(tree, "x-", true));
    if (has(tree, "limits")) BG_TRY(apply(tree["limits"], "", false));
    const ThrottleBucket *k = o->buckets;
    auto mixed = [k](int t, bool max) {
        auto val = [&](int i) { return max ? k[i].max : k[i].avg; };
        return val(t) != 0 && (val(t + 1) != 0 || val(t + 2) != 0);
    };
    if (mixed(0, false) || mixed(3, false) || mixed(0, true) || mixed(3, true)) {
        return make_error(EINVAL, "bps/iops/max total values and read/write values cannot be used at the same time");
    }
    if (o->iops_size && !k[3].avg && !k[4].avg && !k[5].avg) {
        return make_error(EINVAL, "iops size requires an iops value to be set");
    }
    const int64_t kMax = 1000000000000000LL;
    for (const ThrottleBucket &b : o->buckets) {
        if (b.avg < 0 || b.max < 0 || b.avg > kMax || b.max > kMax) {
            return make_error(EINVAL, "bps/iops/max values must be within [0, %lld]", static_cast<long long>(kMax));
        }
        if (b.burst_length == 0) return make_error(EINVAL, "the burst length cannot be 0");
        if (b.burst_length > 1 && !b.max) return make_error(EINVAL, "burst length set without burst rate");
        if (b.max && b.burst_length > static_cast<uint64_t>(kMax / b.max)) {
            return make_error(EINVAL, "burst length too high for this burst rate");
        }
        if (b.max && !b.avg) return make_error(EINVAL, "bps_max/iops_max require corresponding bps/iops values");
        if (b.max && b.max < b.avg) return make_error(EINVAL, "bps_max/iops_max cannot be lower than bps/iops");
    }
    return {};
}

} // namespace

std::string object_help_text(const std::string &spec, bool daemon)
{
    std::vector<std::string> elems;
    std::string cur;
    for (size_t i = 0; i <= spec.size(); i++) {
        if (i == spec.size() || (spec[i] == ',' && !(i + 1 < spec.size() && spec[i + 1] == ','))) {
            elems.push_back(cur);
            cur.clear();
        } else {
            cur += spec[i];
            if (spec[i] == ',') i++;
        }
    }
    const size_t first = spec.find_first_not_of(" \t\r\n");
    if (first != std::string::npos && spec[first] == '{') return "";   // JSON asks for no help
    std::string type;
    bool help = false;
    for (size_t i = 0; i < elems.size(); i++) {
        const std::string &e = elems[i];
        if (e == "help" || e == "?") help = true;
        if (i == 0 && e.find('=') == std::string::npos) type = e;
        if (e.rfind("qom-type=", 0) == 0) type = e.substr(9);
    }
    if (type == "help" || type == "?") help = true, type.clear();
    if (!help) return "";
    const TypeSchema *t = find_schema(type);
    if (t) return type + " options:\n" + (t->help ? std::string(t->help) : throttle_help());
    std::string out = "List of user creatable objects:\n";
    for (const TypeSchema &s : schemas()) {
        if (daemon && std::strcmp(s.type, "main-loop") == 0) out += "  iothread\n";
        out += std::string("  ") + s.type + "\n";
    }
    return out;
}

Status object_check_schema(const json &tree, bool from_keyval)
{
    if (!tree.is_object()) return make_error(EINVAL, "Invalid parameter type, expected: object");
    auto t = tree.find("qom-type");
    if (t == tree.end()) return make_error(EINVAL, "Parameter 'qom-type' is missing");
    if (!t->is_string()) return make_error(EINVAL, "Invalid parameter type for 'qom-type', expected: string");
    const std::string type = t->get<std::string>();
    const TypeSchema *s = find_schema(type);
    // authz-list-file is listed by "help" but QEMU 7.2's tools refuse it.
    if ((!s || type == "authz-list-file") && type != "iothread") {
        return make_error(EINVAL, "Parameter 'qom-type' does not accept value '%s'", type.c_str());
    }
    auto id = tree.find("id");
    if (id == tree.end()) return make_error(EINVAL, "Parameter 'id' is missing");
    if (!id->is_string()) return make_error(EINVAL, "Invalid parameter type for 'id', expected: string");
    if (s) BG_TRY(check_members(tree, s->members, "", from_keyval));
    if (!is_valid_qapi_id(id->get<std::string>())) {
        return make_error(EINVAL, "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, "
                                  "'-', '.', '_', starting with a letter.");
    }
    return {};
}

bool is_user_object_type(const std::string &type)
{
    return type == "secret" || type == "secret_keyring" || type == "tls-creds-anon" || type == "tls-cipher-suites" ||
           type == "authz-list" || type == "throttle-group";
}

Status user_object_add_tree(const json &tree, bool from_keyval)
{
    (void)from_keyval;
    UserObject o;
    o.type = tree["qom-type"].get<std::string>();
    o.id = tree["id"].get<std::string>();
    if (o.type == "throttle-group") BG_TRY(complete_throttle(tree, &o));
    if (tls_object_exists(o.id)) {
        return make_error(EEXIST, "attempt to add duplicate property '%s' to object (type 'container')",
                          o.id.c_str());
    }
    if (o.type == "secret" || o.type == "secret_keyring") {
        auto r = complete_secret(tree, o.type == "secret_keyring");
        if (!r) return r.error();
        o.secret = std::move(r.value());
    } else if (o.type == "tls-cipher-suites" && !has(tree, "priority")) {
        return make_error(EINVAL, "'priority' property is not set");
    } else if (o.type == "authz-list") {
        o.authz_allow = str_of(tree, "policy", "deny") == "allow";
        if (has(tree, "rules")) {
            for (const json &r : tree["rules"]) {
                o.rules.push_back({str_of(r, "match"), str_of(r, "policy") == "allow", str_of(r, "format") == "glob"});
            }
        }
    }
    return user_object_add(std::move(o));
}

Result<std::string> secret_base64_decode(const std::string &in)
{
    static const char kValid[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n";
    if (in.find('\0') != std::string::npos) return make_error(EINVAL, "Base64 data contains embedded NUL characters");
    if (in.find_first_not_of(kValid) != std::string::npos) {
        return make_error(EINVAL, "Base64 data contains invalid characters");
    }
    gsize len = 0;
    guchar *out = g_base64_decode(in.c_str(), &len);
    std::string s(reinterpret_cast<char *>(out), len);
    g_free(out);
    return s;
}

Result<std::string> secret_decrypt(const std::string &key, const std::string &iv_b64, const std::string &input,
                                   bool base64_input)
{
    auto iv = secret_base64_decode(iv_b64);
    if (!iv) return iv.error();
    if (iv.value().size() != 16) {
        return make_error(EINVAL, "IV should be 16 bytes in length not %zu", iv.value().size());
    }
    std::string text = input;
    if (base64_input) {
        auto d = secret_base64_decode(input);
        if (!d) return d.error();
        text = std::move(d.value());
    }
    if (text.size() % 16 != 0) {
        return make_error(EINVAL, "Length %zu must be a multiple of block size 16", text.size());
    }
    gnutls_datum_t k{reinterpret_cast<unsigned char *>(const_cast<char *>(key.data())), 32};
    gnutls_datum_t v{reinterpret_cast<unsigned char *>(iv.value().data()), 16};
    gnutls_cipher_hd_t h = nullptr;
    if (gnutls_cipher_init(&h, GNUTLS_CIPHER_AES_256_CBC, &k, &v) < 0) {
        return make_error(EIO, "Cannot initialize cipher");
    }
    int rc = text.empty() ? 0 : gnutls_cipher_decrypt(h, text.data(), text.size());
    gnutls_cipher_deinit(h);
    if (rc < 0) return make_error(EIO, "Cannot decrypt data: %s", gnutls_strerror(rc));
    // QEMU reads the byte before an empty buffer; an empty text is refused.
    const unsigned pad = text.empty() ? 0 : static_cast<unsigned char>(text.back());
    if (text.empty() || pad > 16 || pad > text.size()) {
        return make_error(EINVAL, "Incorrect number of padding bytes (%u) found on decrypted data", pad);
    }
    text.resize(text.size() - pad);
    return text;
}

} // namespace bg

#include "qapi/export-parse.h"

#include <climits>
#include <cstdint>
#include <initializer_list>
#include <new>
#include <set>

#include "qapi/keyval.h"

namespace bg {

using nlohmann::json;

namespace {

using KeyList = std::initializer_list<const char *>;

const KeyList kExportCommonKeys = {"type",     "id",       "node-name",      "writable",
                                   "writethrough", "iothread", "fixed-iothread", "allow-inactive"};
const KeyList kExportFuseKeys = {"mountpoint", "growable", "allow-other", "io-uring", "passthrough"};
const KeyList kExportNbdKeys = {"name", "description", "bitmaps", "allocation-depth"};
const KeyList kNbdServerKeys = {"addr", "tls-creds", "tls-authz", "max-connections"};
const KeyList kIoThreadKeys = {"qom-type",      "id",           "poll-max-ns",     "poll-grow",
                               "poll-shrink",   "aio-max-batch", "thread-pool-min", "thread-pool-max"};

bool in_list(const KeyList &list, const std::string &key)
{
    for (const char *k : list) {
        if (key == k) return true;
    }
    return false;
}

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool looks_like_json(const std::string &s)
{
    for (char c : s) {
        if (!is_blank(c)) return c == '{';
    }
    return false;
}

// Decodes scalars of one tree; errors are "<prefix>: [<key>: ]<msg>".
class Decoder {
  public:
    Decoder(std::string prefix, bool from_keyval) : prefix_(std::move(prefix)), kv_(from_keyval) {}

    Error err(const std::string &key, const std::string &msg) const
    {
        return Error{EINVAL, prefix_ + ": " + (key.empty() ? "" : key + ": ") + msg};
    }

    static const json *find(const json &obj, const char *key)
    {
        auto it = obj.find(key);
        return it == obj.end() ? nullptr : &*it;
    }

    Status check_keys(const json &obj, const KeyList &a, const KeyList *b = nullptr) const
    {
        for (auto it = obj.begin(); it != obj.end(); ++it) {
            if (!in_list(a, it.key()) && !(b && in_list(*b, it.key()))) {
                return err("", "unknown key '" + it.key() + "'");
            }
        }
        return Status();
    }

    Result<std::string> str(const json &obj, const char *key, bool required, bool nonempty) const
    {
        const json *v = find(obj, key);
        if (!v) {
            if (required) return err("", std::string("missing required key '") + key + "'");
            return std::string();
        }
        if (!v->is_string()) return err(key, "expected a string");
        std::string s = v->get<std::string>();
        if (nonempty && s.empty()) return err(key, "must not be empty");
        return s;
    }

    // Absent keys leave *out unchanged.
    Status boolean(const json &obj, const char *key, bool *out) const
    {
        const json *v = find(obj, key);
        if (!v) return Status();
        if (v->is_boolean()) {
            *out = v->get<bool>();
            return Status();
        }
        if (kv_ && v->is_string()) {
            const std::string &s = v->get_ref<const std::string &>();
            if (s == "on" || s == "true" || s == "yes") {
                *out = true;
                return Status();
            }
            if (s == "off" || s == "false" || s == "no") {
                *out = false;
                return Status();
            }
            return err(key, "'" + s + "' is not a valid boolean (on, off, true, false, yes, no)");
        }
        return err(key, "expected a boolean");
    }

    Status on_off_auto(const json &obj, const char *key, OnOffAuto *out) const
    {
        const json *v = find(obj, key);
        if (!v) return Status();
        if (!v->is_string()) return err(key, "expected a string");
        const std::string &s = v->get_ref<const std::string &>();
        if (s == "on") *out = OnOffAuto::kOn;
        else if (s == "off") *out = OnOffAuto::kOff;
        else if (s == "auto") *out = OnOffAuto::kAuto;
        else return err(key, "'" + s + "' is not one of: on, off, auto");
        return Status();
    }

    // An integer in [0, max]: decimal or 0x hex text in keyval, a JSON
    // integer otherwise. Absent keys are fine (out untouched).
    Status uinteger(const json &obj, const char *key, uint64_t max, uint64_t *out = nullptr) const
    {
        const json *v = find(obj, key);
        if (!v) return Status();
        bool neg = false;
        uint64_t mag = 0;
        if (kv_ && v->is_string()) {
            const std::string &s = v->get_ref<const std::string &>();
            if (!parse_int_text(s, &neg, &mag)) return err(key, "'" + s + "' is not a valid integer");
        } else if (v->is_number_unsigned()) {
            mag = v->get<uint64_t>();
        } else if (v->is_number_integer()) {
            int64_t x = v->get<int64_t>();
            neg = x < 0;
            mag = neg ? 0 - static_cast<uint64_t>(x) : static_cast<uint64_t>(x);
        } else {
            return err(key, "expected an integer");
        }
        if (neg || mag > max) {
            return err(key, (neg ? "-" : "") + std::to_string(mag) + " is out of range (0 to " +
                                std::to_string(max) + ")");
        }
        if (out) *out = mag;
        return Status();
    }

    bool from_keyval() const { return kv_; }

  private:
    static bool parse_int_text(const std::string &s, bool *neg, uint64_t *mag)
    {
        size_t i = 0;
        *neg = false;
        *mag = 0;
        if (i < s.size() && s[i] == '-') {
            *neg = true;
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
            if (*mag > (UINT64_MAX - d) / base) return false;
            *mag = *mag * base + d;
        }
        if (*neg && *mag == 0) *neg = false;
        return true;
    }

    std::string prefix_;
    bool kv_;
};

// "<what> '<id>'" if the tree has a string id, else "<what>".
std::string prefix_for(const json &tree, const char *what)
{
    std::string p = what;
    if (tree.is_object()) {
        auto it = tree.find("id");
        if (it != tree.end() && it->is_string()) p += " '" + it->get<std::string>() + "'";
    }
    return p;
}

const char kIdRule[] = "invalid id (a letter first, then letters, digits, '-', '.', '_')";

Status decode_iothreads(const Decoder &d, const json &obj, BlockExportOptions *o, bool *is_list)
{
    *is_list = false;
    const json *v = Decoder::find(obj, "iothread");
    if (!v) return Status();
    if (v->is_string()) {
        std::string name = v->get<std::string>();
        if (name.empty()) return d.err("iothread", "must not be empty");
        o->iothreads.push_back(std::move(name));
        return Status();
    }
    if (!v->is_array()) return d.err("iothread", "expected a string or a list of strings");
    *is_list = true;
    if (v->empty()) return d.err("iothread", "the list is empty");
    std::set<std::string> seen;
    for (const json &e : *v) {
        if (!e.is_string()) return d.err("iothread", "expected a string or a list of strings");
        std::string name = e.get<std::string>();
        if (name.empty()) return d.err("iothread", "must not be empty");
        if (!seen.insert(name).second) return d.err("iothread", "'" + name + "' is listed twice");
        o->iothreads.push_back(std::move(name));
    }
    return Status();
}

// "bitmaps": a list of names or {node, name} objects.
Status decode_nbd_bitmaps(const Decoder &d, const json &obj, BlockExportOptionsNbd *o)
{
    const json *v = Decoder::find(obj, "bitmaps");
    if (!v) return Status();
    if (!v->is_array()) return d.err("bitmaps", "expected a list");
    for (const json &e : *v) {
        BlockExportOptionsNbd::Bitmap b;
        if (e.is_string()) {
            b.name = e.get<std::string>();
        } else if (e.is_object()) {
            for (auto it = e.begin(); it != e.end(); ++it) {
                if (it.key() != "node" && it.key() != "name") return d.err("bitmaps", "unknown key '" + it.key() + "'");
            }
            auto node = d.str(e, "node", true, false);
            if (!node) return node.error();
            auto name = d.str(e, "name", true, false);
            if (!name) return name.error();
            b.node = std::move(node.value());
            b.name = std::move(name.value());
            b.pair = true;
        } else {
            return d.err("bitmaps", "expected a string or an object with 'node' and 'name'");
        }
        o->bitmaps.push_back(std::move(b));
    }
    return Status();
}

Status decode_nbd_export(const Decoder &d, const json &tree, BlockExportOptionsNbd *o)
{
    if (Decoder::find(tree, "name")) {
        auto name = d.str(tree, "name", false, false);
        if (!name) return name.error();
        o->name = std::move(name.value());
    }
    auto desc = d.str(tree, "description", false, false);
    if (!desc) return desc.error();
    o->description = std::move(desc.value());
    BG_TRY(decode_nbd_bitmaps(d, tree, o));
    return d.boolean(tree, "allocation-depth", &o->allocation_depth);
}

Result<BlockExportOptions> export_from_tree(const json &tree, bool from_keyval)
{
    Decoder d(prefix_for(tree, "export"), from_keyval);
    if (!tree.is_object()) return d.err("", "expected an object");

    BlockExportOptions o;
    auto type = d.str(tree, "type", true, false);
    if (!type) return type.error();
    o.type = std::move(type.value());
    if (o.type != "fuse" && o.type != "nbd") return d.err("", "unknown export type '" + o.type + "'");
    const bool nbd = o.type == "nbd";
    BG_TRY(d.check_keys(tree, kExportCommonKeys, nbd ? &kExportNbdKeys : &kExportFuseKeys));

    auto id = d.str(tree, "id", true, false);
    if (!id) return id.error();
    o.id = std::move(id.value());
    if (!is_valid_qapi_id(o.id)) return d.err("", kIdRule);

    auto node = d.str(tree, "node-name", true, true);
    if (!node) return node.error();
    o.node_name = std::move(node.value());

    if (nbd) {
        BG_TRY(decode_nbd_export(d, tree, &o.nbd));
    } else {
        auto mp = d.str(tree, "mountpoint", true, true);
        if (!mp) return mp.error();
        o.fuse.mountpoint = std::move(mp.value());
        BG_TRY(d.boolean(tree, "growable", &o.fuse.growable));
        BG_TRY(d.on_off_auto(tree, "allow-other", &o.fuse.allow_other));
        BG_TRY(d.on_off_auto(tree, "io-uring", &o.fuse.io_uring));
        BG_TRY(d.on_off_auto(tree, "passthrough", &o.fuse.passthrough));
    }

    BG_TRY(d.boolean(tree, "writable", &o.writable));
    BG_TRY(d.boolean(tree, "writethrough", &o.writethrough));
    BG_TRY(d.boolean(tree, "fixed-iothread", &o.fixed_iothread));
    bool allow_inactive = false;   // accepted for QSD command lines; every node is active
    BG_TRY(d.boolean(tree, "allow-inactive", &allow_inactive));

    bool is_list = false;
    BG_TRY(decode_iothreads(d, tree, &o, &is_list));
    if (o.fixed_iothread && is_list) {
        return d.err("", "fixed-iothread=on cannot be used with a list of iothreads");
    }
    return o;
}

// addr: the flat SocketAddress ({type, host, port} / {type, path}), or
// with legacy, QMP's SocketAddressLegacy ({type, data: {...}}) as well.
Status decode_socket_address(const Decoder &d, const json &a, bool legacy, SocketAddress *out)
{
    if (!a.is_object()) return d.err("addr", "expected an object");
    auto type = d.str(a, "type", true, false);
    if (!type) return d.err("", "Parameter 'addr.type' is missing");
    const json *src = &a;
    const bool nested = legacy && Decoder::find(a, "data") != nullptr;
    if (nested) {
        src = Decoder::find(a, "data");
        if (!src->is_object()) return d.err("addr.data", "expected an object");
        for (auto it = a.begin(); it != a.end(); ++it) {
            if (it.key() != "type" && it.key() != "data") return d.err("", "Parameter 'addr." + it.key() + "' is unexpected");
        }
    }
    const std::string pre = nested ? "addr.data." : "addr.";
    auto need = [&](const char *key, std::string *dst) -> Status {
        const json *v = Decoder::find(*src, key);
        if (!v) return d.err("", "Parameter '" + pre + key + "' is missing");
        if (!v->is_string()) return d.err("", "Invalid parameter type for '" + pre + key + "', expected: string");
        *dst = v->get<std::string>();
        return Status();
    };
    auto only = [&](std::initializer_list<const char *> keys) -> Status {
        for (auto it = src->begin(); it != src->end(); ++it) {
            bool ok = nested ? false : it.key() == "type";
            for (const char *k : keys) ok = ok || it.key() == k;
            // Accepted and ignored: the inet tuning members QEMU has.
            for (const char *k : {"numeric", "to", "ipv4", "ipv6", "keep-alive", "mptcp", "abstract", "tight"}) {
                ok = ok || it.key() == k;
            }
            if (!ok) return d.err("", "Parameter '" + pre + it.key() + "' is unexpected");
        }
        return Status();
    };
    if (type.value() == "inet") {
        out->type = SocketAddress::Type::kInet;
        BG_TRY(need("host", &out->host));
        BG_TRY(need("port", &out->port));
        return only({"host", "port"});
    }
    if (type.value() == "unix") {
        out->type = SocketAddress::Type::kUnix;
        BG_TRY(need("path", &out->path));
        return only({"path"});
    }
    return d.err("", "Parameter 'addr.type' does not accept value '" + type.value() + "'");
}

Result<NbdServerOptions> nbd_server_from_tree(const json &tree, bool from_keyval, bool legacy)
{
    Decoder d("nbd-server", from_keyval);
    if (!tree.is_object()) return d.err("", "expected an object");
    for (auto it = tree.begin(); it != tree.end(); ++it) {
        if (!in_list(kNbdServerKeys, it.key())) return d.err("", "Parameter '" + it.key() + "' is unexpected");
    }
    NbdServerOptions o;
    const json *a = Decoder::find(tree, "addr");
    if (!a) return d.err("", "Parameter 'addr' is missing");
    BG_TRY(decode_socket_address(d, *a, legacy, &o.addr));
    auto creds = d.str(tree, "tls-creds", false, false);
    if (!creds) return creds.error();
    o.tls_creds = std::move(creds.value());
    auto authz = d.str(tree, "tls-authz", false, false);
    if (!authz) return authz.error();
    o.tls_authz = std::move(authz.value());
    uint64_t maxc = 0;
    if (!d.uinteger(tree, "max-connections", UINT32_MAX, &maxc).ok()) {
        return d.err("", from_keyval ? "Parameter 'max-connections' expects integer"
                                     : "Parameter 'max-connections' expects uint32_t");
    }
    o.max_connections = static_cast<uint32_t>(maxc);
    return o;
}

Result<NbdServerOptions> nbd_server_from_keyval(const json &tree, bool from_keyval)
{
    return nbd_server_from_tree(tree, from_keyval, false);
}

Result<IoThreadOptions> object_from_tree(const json &tree, bool from_keyval)
{
    Decoder d(prefix_for(tree, "object"), from_keyval);
    if (!tree.is_object()) return d.err("", "expected an object");
    auto type = d.str(tree, "qom-type", true, false);
    if (!type) return type.error();
    if (type.value() != "iothread") {
        return make_error(EINVAL, "object type '%s' is not supported", type.value().c_str());
    }
    IoThreadOptions o;
    auto id = d.str(tree, "id", true, false);
    if (!id) return id.error();
    o.id = std::move(id.value());
    if (!is_valid_qapi_id(o.id)) return d.err("", kIdRule);
    BG_TRY(d.check_keys(tree, kIoThreadKeys));
    uint64_t max_ns = UINT64_MAX;
    BG_TRY(d.uinteger(tree, "poll-max-ns", INT64_MAX, &max_ns));
    if (max_ns != UINT64_MAX) o.poll.max_ns = max_ns;
    BG_TRY(d.uinteger(tree, "poll-grow", INT64_MAX, &o.poll.grow));
    BG_TRY(d.uinteger(tree, "poll-shrink", INT64_MAX, &o.poll.shrink));
    BG_TRY(d.uinteger(tree, "aio-max-batch", INT64_MAX, &o.aio_max_batch));
    BG_TRY(d.uinteger(tree, "thread-pool-min", INT_MAX));
    BG_TRY(d.uinteger(tree, "thread-pool-max", INT_MAX));
    return o;
}

template <typename T, typename F>
Result<T> guarded(const char *what, F &&f)
{
    try {
        return f();
    } catch (const std::bad_alloc &) {
        return make_error(ENOMEM, "%s: out of memory", what);
    } catch (const std::exception &e) {
        return make_error(EINVAL, "%s: internal error: %s", what, e.what());
    }
}

// JSON if the first non-blank character is '{', else keyval with implied_key.
template <typename T>
Result<T> parse_arg(const std::string &arg, const char *implied_key,
                    Result<T> (*decode)(const json &, bool))
{
    if (looks_like_json(arg)) {
        auto t = parse_json_object(arg);
        if (!t) return t.error();
        return decode(t.value(), false);
    }
    auto t = keyval_parse(arg, implied_key);
    if (!t) return t.error();
    return decode(t.value(), true);
}

} // namespace

bool is_valid_qapi_id(const std::string &id)
{
    if (id.empty()) return false;
    auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    if (!alpha(id[0])) return false;
    for (char c : id) {
        if (!alpha(c) && !(c >= '0' && c <= '9') && c != '-' && c != '.' && c != '_') return false;
    }
    return true;
}

Result<BlockExportOptions> export_options_from_tree(const json &tree, bool from_keyval)
{
    return guarded<BlockExportOptions>("export", [&] { return export_from_tree(tree, from_keyval); });
}

Result<BlockExportOptions> parse_export_arg(const std::string &arg)
{
    return guarded<BlockExportOptions>("export", [&] { return parse_arg(arg, "type", &export_from_tree); });
}

Result<IoThreadOptions> object_options_from_tree(const json &tree, bool from_keyval)
{
    return guarded<IoThreadOptions>("object", [&] { return object_from_tree(tree, from_keyval); });
}

Result<NbdServerOptions> nbd_server_options_from_tree(const json &tree, bool from_keyval, bool legacy_addr)
{
    return guarded<NbdServerOptions>("nbd-server",
                                     [&] { return nbd_server_from_tree(tree, from_keyval, legacy_addr); });
}

Result<NbdServerOptions> parse_nbd_server_arg(const std::string &arg)
{
    return guarded<NbdServerOptions>("nbd-server", [&] { return parse_arg(arg, nullptr, &nbd_server_from_keyval); });
}

Result<IoThreadOptions> parse_object_arg(const std::string &arg)
{
    return guarded<IoThreadOptions>("object", [&] { return parse_arg(arg, "qom-type", &object_from_tree); });
}

} // namespace bg

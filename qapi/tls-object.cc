#include "qapi/tls-object.h"

#include <initializer_list>
#include <new>

#include "qapi/export-parse.h"
#include "qapi/keyval.h"
#include "qapi/user-object.h"

namespace bg {

using nlohmann::json;

namespace {

using Keys = std::initializer_list<const char *>;

const Keys kX509Keys = {"qom-type", "id", "dir", "endpoint", "verify-peer", "priority"};
const Keys kPskKeys = {"qom-type", "id", "dir", "endpoint", "username", "priority"};
const Keys kAuthzKeys = {"qom-type", "id", "identity"};

// Reads the scalars of one object tree; errors "object 'ID': [key: ]what".
class Reader {
  public:
    Reader(const json &tree, bool from_keyval) : tree_(tree), kv_(from_keyval)
    {
        auto it = tree.find("id");
        prefix_ = "object";
        if (it != tree.end() && it->is_string()) prefix_ += " '" + it->get<std::string>() + "'";
    }

    Error err(const std::string &key, const std::string &msg) const
    {
        return Error{EINVAL, prefix_ + ": " + (key.empty() ? "" : key + ": ") + msg};
    }

    Status check_keys(const Keys &keys) const
    {
        for (auto it = tree_.begin(); it != tree_.end(); ++it) {
            bool known = false;
            for (const char *k : keys) known = known || it.key() == k;
            if (!known) return err("", "unknown key '" + it.key() + "'");
        }
        return {};
    }

    // Absent leaves *out alone unless required.
    Status str(const char *key, std::string *out, bool required) const
    {
        auto it = tree_.find(key);
        if (it == tree_.end()) {
            if (required) return err("", std::string("missing required key '") + key + "'");
            return {};
        }
        if (!it->is_string()) return err(key, "expected a string");
        *out = it->get<std::string>();
        return {};
    }

    Status boolean(const char *key, bool *out) const
    {
        auto it = tree_.find(key);
        if (it == tree_.end()) return {};
        if (it->is_boolean() && !kv_) {
            *out = it->get<bool>();
            return {};
        }
        if (!it->is_string() || !kv_) return err(key, "expected a boolean");
        const std::string s = it->get<std::string>();
        if (s == "on" || s == "true" || s == "yes") *out = true;
        else if (s == "off" || s == "false" || s == "no") *out = false;
        else return err(key, "'" + s + "' is not a valid boolean (on, off, true, false, yes, no)");
        return {};
    }

    Status endpoint(bool *server) const
    {
        std::string e = "client";
        BG_TRY(str("endpoint", &e, false));
        if (e != "server" && e != "client") return err("endpoint", "'" + e + "' is not one of: server, client");
        *server = e == "server";
        return {};
    }

  private:
    const json &tree_;
    bool kv_;
    std::string prefix_;
};

Result<TlsObjectOptions> decode(const json &tree, bool from_keyval)
{
    Reader r(tree, from_keyval);
    if (!tree.is_object()) return r.err("", "expected an object");
    TlsObjectOptions o;
    BG_TRY(r.str("qom-type", &o.type, true));
    if (!is_tls_object_type(o.type)) {
        return make_error(EINVAL, "object type '%s' is not supported", o.type.c_str());
    }
    std::string id;
    BG_TRY(r.str("id", &id, true));
    if (!is_valid_qapi_id(id)) return r.err("", "invalid id (a letter first, then letters, digits, '-', '.', '_')");
    if (o.type == "authz-simple") {
        BG_TRY(r.check_keys(kAuthzKeys));
        o.authz.id = id;
        BG_TRY(r.str("identity", &o.authz.identity, true));
        return o;
    }
    const bool psk = o.type == "tls-creds-psk";
    BG_TRY(r.check_keys(psk ? kPskKeys : kX509Keys));
    o.creds.kind = psk ? TlsCredsOptions::Kind::kPsk : TlsCredsOptions::Kind::kX509;
    o.creds.id = id;
    // A missing dir is TlsCreds::create()'s error, in QEMU's words.
    BG_TRY(r.str("dir", &o.creds.dir, false));
    BG_TRY(r.endpoint(&o.creds.server));
    BG_TRY(r.str("priority", &o.creds.priority, false));
    if (psk) {
        BG_TRY(r.str("username", &o.creds.username, false));
    } else {
        BG_TRY(r.boolean("verify-peer", &o.creds.verify_peer));
    }
    return o;
}

bool looks_like_json(const std::string &s)
{
    size_t i = s.find_first_not_of(" \t\r\n");
    return i != std::string::npos && s[i] == '{';
}

Result<json> parse_tree(const std::string &arg, bool *from_keyval)
{
    *from_keyval = !looks_like_json(arg);
    return *from_keyval ? keyval_parse(arg, "qom-type") : parse_json_object(arg);
}

} // namespace

bool is_tls_object_type(const std::string &type)
{
    return type == "tls-creds-x509" || type == "tls-creds-psk" || type == "authz-simple";
}

std::string object_arg_type(const std::string &arg)
{
    try {
        bool kv = false;
        auto t = parse_tree(arg, &kv);
        if (!t || !t.value().is_object()) return "";
        auto it = t.value().find("qom-type");
        return it != t.value().end() && it->is_string() ? it->get<std::string>() : "";
    } catch (const std::exception &) {
        return "";
    }
}

Result<TlsObjectOptions> tls_object_options_from_tree(const json &tree, bool from_keyval)
{
    try {
        return decode(tree, from_keyval);
    } catch (const std::bad_alloc &) {
        return make_error(ENOMEM, "object: out of memory");
    } catch (const std::exception &e) {
        return make_error(EINVAL, "object: internal error: %s", e.what());
    }
}

Result<TlsObjectOptions> parse_tls_object_arg(const std::string &arg)
{
    bool kv = false;
    auto t = parse_tree(arg, &kv);
    if (!t) return t.error();
    return tls_object_options_from_tree(t.value(), kv);
}

Status tls_object_add(const TlsObjectOptions &o)
{
    if (tls_object_exists(o.id())) {
        return make_error(EEXIST, "attempt to add duplicate property '%s' to object (type 'container')",
                          o.id().c_str());
    }
    if (o.type == "authz-simple") return authz_add(o.authz);
    auto c = TlsCreds::create(o.creds);
    if (!c) return c.error();
    return tls_creds_add(std::move(c.value()));
}

Status tls_object_del(const std::string &id)
{
    if (tls_creds_find(id)) return tls_creds_remove(id);
    return authz_remove(id);
}

Result<json> parse_object_tree(const std::string &arg, bool *from_keyval)
{
    return parse_tree(arg, from_keyval);
}

Status tls_object_add_checked(json tree, bool from_keyval)
{
    const std::string type = tree["qom-type"].get<std::string>();
    // Accepted as QEMU accepts them, without effect here.
    if (type == "tls-creds-psk") tree.erase("verify-peer");
    if (type == "tls-creds-x509") tree.erase("sanity-check");
    if (type == "tls-creds-x509" && tree.contains("passwordid")) {
        return make_error(ENOTSUP, "object '%s': passwordid (an encrypted private key) is not supported",
                          tree["id"].get<std::string>().c_str());
    }
    auto o = tls_object_options_from_tree(tree, from_keyval);
    if (!o) return o.error();
    return tls_object_add(o.value());
}

Status object_add_from_keyval(const std::string &spec)
{
    bool kv = false;
    auto t = parse_tree(spec, &kv);
    if (!t) return t.error();
    BG_TRY(object_check_schema(t.value(), kv));
    const std::string type = t.value()["qom-type"].get<std::string>();
    if (type == "iothread") return make_error(ENOTSUP, "invalid object type: %s", type.c_str());
    if (is_user_object_type(type)) return user_object_add_tree(t.value(), kv);
    if (!is_tls_object_type(type)) return make_error(ENOTSUP, "object type '%s' is not supported", type.c_str());
    return tls_object_add_checked(std::move(t.value()), kv);
}

} // namespace bg

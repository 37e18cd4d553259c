#include "util/user-objects.h"

#include <fnmatch.h>

#include <map>

#include "util/tls.h"

namespace bg {

namespace {

std::map<std::string, UserObject> &table()
{
    static std::map<std::string, UserObject> t;
    return t;
}

} // namespace

Status user_object_add(UserObject o)
{
    if (table().count(o.id) != 0 || tls_object_exists(o.id)) {
        return make_error(EEXIST, "attempt to add duplicate property '%s' to object (type 'container')",
                          o.id.c_str());
    }
    std::string id = o.id;
    table().emplace(std::move(id), std::move(o));
    return {};
}

const UserObject *user_object_find(const std::string &id)
{
    auto it = table().find(id);
    return it == table().end() ? nullptr : &it->second;
}

Status user_object_del(const std::string &id)
{
    if (table().erase(id) == 0) return make_error(ENOENT, "object '%s' not found", id.c_str());
    return {};
}

std::vector<const UserObject *> user_objects()
{
    std::vector<const UserObject *> out;
    for (auto &kv : table()) out.push_back(&kv.second);
    return out;
}

Result<std::string> secret_lookup(const std::string &id)
{
    const UserObject *o = user_object_find(id);
    if (!o) {
        if (tls_object_exists(id)) return make_error(EINVAL, "Object with id '%s' is not a secret", id.c_str());
        return make_error(ENOENT, "No secret with id '%s'", id.c_str());
    }
    if (o->type != "secret" && o->type != "secret_keyring") {
        return make_error(EINVAL, "Object with id '%s' is not a secret", id.c_str());
    }
    return o->secret;
}

Result<bool> authz_list_check(const std::string &id, const std::string &identity)
{
    const UserObject *o = user_object_find(id);
    if (!o || o->type != "authz-list") return make_error(ENOENT, "Cannot find QAuthZ object ID %s", id.c_str());
    for (const AuthzListRule &r : o->rules) {
        const bool hit = r.glob ? fnmatch(r.match.c_str(), identity.c_str(), 0) == 0 : r.match == identity;
        if (hit) return r.allow;
    }
    return o->authz_allow;
}

} // namespace bg

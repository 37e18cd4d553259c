// The TLS objects of --object and object-add: tls-creds-x509,
// tls-creds-psk and authz-simple (QEMU's ObjectOptions for them), parsed
// and added to the process-wide table of util/tls.h.
//
//   tls-creds-x509,id=ID,dir=DIR[,endpoint=server|client][,verify-peer=on|off]
//       [,priority=STR]
//   tls-creds-psk,id=ID,dir=DIR[,endpoint=server|client][,username=NAME][,priority=STR]
//   authz-simple,id=ID,identity=NAME
//
// endpoint defaults to client, as in QEMU.
// Parse errors are EINVAL "object 'ID': [key: ]what", like the iothread
// object's (qapi/export-parse.h):
//   object 'a': missing required key 'identity'
//   object 't': endpoint: 'foo' is not one of: server, client
//   object 't': verify-peer: 'x' is not a valid boolean (on, off, true, false, yes, no)
//   object 't': unknown key 'foo'
// Loading errors are TlsCreds::create()'s (QEMU's texts, no prefix).
// Main thread only.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/tls.h"

namespace bg {

struct TlsObjectOptions {
    std::string type;         // "tls-creds-x509", "tls-creds-psk" or "authz-simple"
    TlsCredsOptions creds;    // the creds types
    AuthzSimple authz;        // authz-simple
    const std::string &id() const { return type == "authz-simple" ? authz.id : creds.id; }
};

// Whether type is one of the three object types handled here.
bool is_tls_object_type(const std::string &type);
// The qom-type of an --object argument (keyval with qom-type implied, or
// JSON); "" when it has none or does not parse.
std::string object_arg_type(const std::string &arg);

Result<TlsObjectOptions> tls_object_options_from_tree(const nlohmann::json &tree, bool from_keyval);
Result<TlsObjectOptions> parse_tls_object_arg(const std::string &arg);

// Loads the credentials (or takes the authz) and adds the object to the
// table. Errors: TlsCreds::create()'s; EEXIST "attempt to add duplicate
// property 'ID' to object (type 'container')".
Status tls_object_add(const TlsObjectOptions &o);
// Removes a TLS object. Connections using credentials keep them (they hold
// a reference); new users no longer find the id. ENOENT "object 'ID' not
// found".
Status tls_object_del(const std::string &id);

// Parses an --object argument (keyval with qom-type implied, or JSON).
Result<nlohmann::json> parse_object_tree(const std::string &arg, bool *from_keyval);
// Adds a TLS object from a tree that passed qapi/user-object.h's
// object_check_schema(): QEMU's members that have no effect here
// (tls-creds-psk verify-peer, tls-creds-x509 sanity-check) are dropped;
// passwordid fails (ENOTSUP); then tls_object_add().
Status tls_object_add_checked(nlohmann::json tree, bool from_keyval);

// --object for the tools without a daemon (img, io, nbd): checks the
// argument against QEMU's schema (qapi/user-object.h's messages), then adds
// a TLS object (tls_object_add_checked()) or one of util/user-objects.h's
// (user_object_add_tree()). iothread fails with ENOTSUP "invalid object
// type: iothread" (qemu-img's text; iothreads are the daemon's), the other
// types QEMU knows (main-loop, thread-context, pr-manager-helper) with
// ENOTSUP "object type 'T' is not supported".
Status object_add_from_keyval(const std::string &spec);

} // namespace bg

// qapi/user-object.h -- --object and object-add as QEMU 7.2's tools check
// them: the type list, "help", the schema of every type (QEMU's messages),
// and the objects of util/user-objects.h (secret, secret_keyring,
// tls-creds-anon, tls-cipher-suites, authz-list, throttle-group), which are
// completed here:
//
//   secret,id=ID,(data=STR|file=PATH)[,format=raw|base64][,keyid=KEY,iv=IV]
//   secret_keyring,id=ID,serial=N[,format=...][,keyid=KEY,iv=IV]
//       (KEY: a 32-byte secret; IV: 16 bytes in base64; the data is then
//       AES-256-CBC ciphertext, raw or base64 as format says, PKCS#7 padded)
//   tls-creds-anon,id=ID[,dir=D][,endpoint=client|server][,priority=P][,verify-peer=B]
//   tls-cipher-suites,id=ID,priority=P[,...the same]
//   authz-list,id=ID[,policy=allow|deny][,rules.N.match=S,rules.N.policy=allow|deny
//       [,rules.N.format=exact|glob]]...
//   throttle-group,id=ID[,x-bps-total=N,...][,limits.bps-total=N,...]
//
// Errors are QEMU's texts ("Parameter 'qom-type' does not accept value
// 'T'", "Parameter 'id' is missing", "Parameter 'K' is unexpected",
// "Either 'file' or 'data' must be provided", "bps_max/iops_max cannot be
// lower than bps/iops", ...). Main thread only.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace bg {

// If the keyval SPEC asks for help ("help", "?", "TYPE,help"), the text
// qemu-img prints for it (the type list, or "TYPE options:" and one line per
// property); else "". daemon: the list has iothread too (as
// qemu-storage-daemon's).
std::string object_help_text(const std::string &spec, bool daemon = false);

// Checks TREE (from keyval when from_keyval: every scalar a string)
// against QEMU's schema for its qom-type, including the id. Errors:
// "Parameter 'qom-type' is missing", "Parameter 'qom-type' does not accept
// value 'T'", "Parameter 'id' is missing", "Parameter 'id' expects an
// identifier\nIdentifiers consist of ...", "Parameter 'P' is missing",
// "Parameter 'P' expects integer", "Parameter 'P' expects 'on' or 'off'",
// "Invalid parameter type for 'P', expected: T", "Parameter 'P' is
// unexpected", "Parameter 'P' does not accept value 'V'".
Status object_check_schema(const nlohmann::json &tree, bool from_keyval);

// Whether TYPE is one of util/user-objects.h's types.
bool is_user_object_type(const std::string &type);

// Completes and adds an object of one of those types from a tree that
// passed object_check_schema(). Errors: the duplicate-id text, then the
// type's own (QEMU's texts).
Status user_object_add_tree(const nlohmann::json &tree, bool from_keyval);

// secret decoding, for tests: base64 as QEMU decodes it ("Base64 data
// contains invalid characters"), and the AES-256-CBC decryption of an
// encrypted secret (input raw or base64 per base64_input; KEY 32 bytes,
// IV_B64 base64 of 16 bytes). Errors: QEMU's texts.
Result<std::string> secret_base64_decode(const std::string &in);
Result<std::string> secret_decrypt(const std::string &key, const std::string &iv_b64, const std::string &input,
                                   bool base64_input);

} // namespace bg

// From user input to typed BlockExportOptions and IoThreadOptions
// (qapi/export-options.h): the arguments of --export and --object.
//
// Input is QEMU's keyval syntax or a JSON object (first non-blank character
// '{'), turned into a tree by qapi/keyval.h and decoded strictly, like
// qapi/block-parse.h: unknown keys, wrong types and bad values are errors.
// Nothing is looked up: whether the node, the iothreads and the mountpoint
// exist is for the daemon and the export to check.
//
// Every error is EINVAL with a one-line message; the syntax layer's
// messages ("keyval: ...", "JSON: ...") are returned unchanged.
// No function here throws (allocation failure becomes ENOMEM).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "qapi/export-options.h"
#include "util/error.h"

namespace bg {

// Parses the argument of --export, QEMU's BlockExportOptions (fuse or nbd):
//   [type=]fuse,id=ID,node-name=NODE,mountpoint=FILE[,writable=on|off]
//     [,writethrough=on|off][,growable=on|off][,allow-other=on|off|auto]
//     [,iothread=NAME | ,iothread.0=NAME,iothread.1=NAME...]
//     [,fixed-iothread=on|off][,allow-inactive=on|off]
// or the same as a JSON object ("iothread" a string or an array of strings,
// booleans true/false). Keyval booleans: on/off, true/false, yes/no.
// "allow-inactive" is accepted and ignored (every node is active).
//
// Messages start with "export '<id>'" when "id" is a string (even an
// invalid one), else "export":
//   export: missing required key 'type'
//   export 'e': unknown export type 'nbd'
//   export 'e': unknown key 'foo'
//   export: missing required key 'id'
//   export '1x': invalid id (a letter first, then letters, digits, '-', '.', '_')
//   export 'e': missing required key 'node-name'
//   export 'e': missing required key 'mountpoint'
//   export 'e': node-name: expected a string
//   export 'e': node-name: must not be empty
//   export 'e': writable: 'maybe' is not a valid boolean (on, off, true, false, yes, no)
//   export 'e': writable: expected a boolean                   (JSON)
//   export 'e': allow-other: 'x' is not one of: on, off, auto
//   export 'e': iothread: expected a string or a list of strings
//   export 'e': iothread: the list is empty
//   export 'e': iothread: 'a' is listed twice
//   export 'e': fixed-iothread=on cannot be used with a list of iothreads
Result<BlockExportOptions> parse_export_arg(const std::string &arg);

// type=nbd takes, instead of the FUSE members:
//   [,name=NAME][,description=TEXT][,allocation-depth=on|off]
//   [,bitmaps.0=NAME,...] (JSON: a list of names or {"node","name"} objects)
// Messages as above, and "export 'e': bitmaps: expected a list".
//
// The same for an already parsed tree (from_keyval: every scalar is a
// string and converted, as in blockdev_options_from_tree()).
Result<BlockExportOptions> export_options_from_tree(const nlohmann::json &tree, bool from_keyval);

// Parses the argument of --object (QEMU's ObjectOptions): only iothread:
//   [qom-type=]iothread,id=NAME[,poll-max-ns=N][,poll-grow=N]
//     [,poll-shrink=N][,aio-max-batch=N][,thread-pool-min=N]
//     [,thread-pool-max=N]
// or the JSON object. The tuning members are checked (integers, >= 0; the
// thread-pool ones up to INT_MAX) and otherwise ignored.
// Messages:
//   object: missing required key 'qom-type'
//   object type 'secret' is not supported
//   object: missing required key 'id'
//   object '1x': invalid id (a letter first, then letters, digits, '-', '.', '_')
//   object 'io0': unknown key 'foo'
//   object 'io0': poll-max-ns: 'x' is not a valid integer
//   object 'io0': poll-max-ns: -1 is out of range (0 to 9223372036854775807)
Result<IoThreadOptions> parse_object_arg(const std::string &arg);
// The same for an already parsed tree (object-add's arguments).
Result<IoThreadOptions> object_options_from_tree(const nlohmann::json &tree, bool from_keyval);

// Parses the argument of --nbd-server (QEMU's NbdServerOptions):
//   addr.type=inet,addr.host=H,addr.port=P | addr.type=unix,addr.path=P
//   [,tls-creds=ID][,tls-authz=ID][,max-connections=N]
// or the JSON object. Messages (QEMU's, after "nbd-server: "):
//   Parameter 'addr' is missing / Parameter 'addr.path' is missing
//   Parameter 'foo' is unexpected / Parameter 'addr.foo' is unexpected
//   Parameter 'addr.type' does not accept value 'vsock'
//   Parameter 'max-connections' expects integer (keyval) / expects uint32_t (JSON)
Result<NbdServerOptions> parse_nbd_server_arg(const std::string &arg);
// The same for a parsed tree (nbd-server-start's arguments). legacy_addr:
// addr may also be QMP's SocketAddressLegacy ({"type": "unix", "data":
// {"path": P}}), which is what qemu-storage-daemon's nbd-server-start takes.
Result<NbdServerOptions> nbd_server_options_from_tree(const nlohmann::json &tree, bool from_keyval,
                                                      bool legacy_addr);

// QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'.
bool is_valid_qapi_id(const std::string &id);

} // namespace bg

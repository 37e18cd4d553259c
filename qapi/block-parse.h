// From user input to typed BlockdevOptions (qapi/block-options.h) and back.
// The decoders take the schema that knows the drivers (block/'s registry,
// see block/block.h builtin_drivers()); the generic members are decoded
// here, each driver's own members by the driver (qapi/option-reader.h).
//
// Input comes as QEMU's keyval syntax ("qcow2,node-name=d,file.driver=file,
// file.filename=a.img") or as a JSON object ({"driver":"qcow2",...}); both
// are first turned into a plain tree by qapi/keyval.h and then decoded here,
// strictly: unknown keys, wrong types, bad values and inconsistent
// combinations are errors. Nothing is opened and no node is looked up:
// references to other nodes are only checked to be non-empty.
//
// Every error is EINVAL, with a message that starts with "blockdev '<name>'"
// (the top-level node-name, when given and valid) or "blockdev", followed
// by the dotted path of the offending key where there is one:
//   blockdev 'd': file.filename: expected a string
//   blockdev 'd': unknown key 'foo'
//   blockdev 'd': file: missing required key 'driver'
//   blockdev 'd': file: unknown driver 'xyz'
//   blockdev 'd': size: 'abc' is not a valid size
// The syntax layer's messages ("keyval: ...", "JSON: ...") are returned
// unchanged. docs/configuration.md lists every member and error.
//
// No function here throws; the decoders turn allocation failure into
// ENOMEM, the encoders are noexcept (allocation failure terminates).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "qapi/block-options.h"
#include "util/error.h"

namespace bg {

// Decodes a tree (a JSON object) into options.
// from_keyval = false: JSON typing, exact: strings, integers (JSON numbers
// without fraction or exponent), true/false, objects, arrays, null (only
// for "backing").
// from_keyval = true: the tree came from keyval_parse, every scalar is a
// string and is converted: integers in decimal or 0x hex (with '-' where
// negative values are allowed), byte counts with parse_size() syntax ("1G"),
// booleans on/off, true/false, yes/no. (Native JSON scalars are also
// accepted in this mode.)
// Errors: see the file comment and docs/configuration.md.
Result<BlockdevOptions> blockdev_options_from_tree(const BlockdevSchema &schema, const nlohmann::json &tree,
                                                   bool from_keyval);

// Parses the argument of a --blockdev option: JSON if its first character
// other than white space is '{', otherwise keyval with the implied key
// "driver" ("file,filename=a.img").
Result<BlockdevOptions> parse_blockdev_arg(const BlockdevSchema &schema, const std::string &arg);

// Parses a QEMU "json:{...}" pseudo-filename. Dotted member names are
// expanded first, as QEMU does ({"file.filename":"a"} is {"file":
// {"filename":"a"}}); then it is decoded with JSON typing.
// Errors: "json: filename must start with 'json:'", those of
// parse_json_object() and json_unflatten(), and the decoder's.
Result<BlockdevOptions> parse_json_filename(const BlockdevSchema &schema, const std::string &s);

// Encodes options as QEMU-shaped JSON: "driver", "node-name" when not empty,
// required members, and every other member whose value differs from the
// default (the driver's DriverOptions::encode writes its own members).
// Children: a reference is a string, an inline definition a nested object, a
// null backing JSON null. The open flags (check_repair, probed) are not
// options and are never written.
// Precondition: every kInline reference has a def.
// Property: blockdev_options_from_tree(blockdev_options_to_json(o), false)
// gives options equal to o, for any o that the decoder accepts.
// Strings are copied byte for byte; file names need not be UTF-8, so dump()
// the result with nlohmann::json::error_handler_t::replace where that
// matters (the default handler throws).
nlohmann::json blockdev_options_to_json(const BlockdevOptions &o) noexcept;

// The same in keyval syntax, "driver=..." first (keyval_format() of the
// JSON form; ',' in values doubled). Keyval has no null: a null "backing" is
// written as "backing=", which parse_blockdev_arg() rejects (an empty node
// reference) rather than silently opening the backing file named in the
// image; use the JSON form for such options.
std::string blockdev_options_to_keyval(const BlockdevOptions &o) noexcept;

// A preallocation mode by its QEMU name (off, metadata, falloc, full);
// false if name is none of them.
bool parse_prealloc_mode(const std::string &name, PreallocMode *out);

// QEMU's node-name rule: a letter, then letters, digits, '-', '.', '_'; at
// most 31 characters.
bool is_valid_node_name(const std::string &name);

// The option value naming dz ("off", "on", "unmap").
const char *detect_zeroes_name(BlockdevDetectZeroes dz);

} // namespace bg

// User input syntaxes turned into a plain-data tree (nlohmann::json):
// QEMU's dotted keyval syntax ("driver=qcow2,file.filename=a.img"), strict
// JSON objects, and conversions between the dotted ("flat") and nested
// shapes. The typed decoding of the tree is in qapi/block-parse.h.
//
// None of these functions throws; errors are EINVAL with a one-line message.
// Positions in messages are 0-based character offsets into the input.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace bg {

// Parses QEMU keyval syntax into a JSON object whose scalars are all strings.
//
//   a=1,b.c=x,b.d=y              -> {"a":"1","b":{"c":"x","d":"y"}}
//   v=a,,b                       -> {"v":"a,b"}          (",," is a literal comma)
//   l.0.e=x,l.1.e=y              -> {"l":[{"e":"x"},{"e":"y"}]}
//   file,node-name=f  (implied "driver") -> {"driver":"file","node-name":"f"}
//
// Syntax: elements separated by ','; an element is key=value. A value runs to
// the next single ','; ",," stands for one ','. A key is one or more segments
// separated by '.', each made of [A-Za-z0-9_-]. A segment of digits only is a
// list index: written without leading zeros, never the first segment, and
// under one prefix either every segment is an index or none is; the indices
// must be 0..n-1. If implied_key is non-null and the first element contains
// no '=' before its first ',', that element (up to the ',', no escapes) is the
// value of implied_key. A trailing ',' is ignored; "" gives {}.
//
// Errors (EINVAL), each naming the key:
//   "keyval: empty key at position N"
//   "keyval: expected '=' after 'foo'"
//   "keyval: invalid character ' ' in key 'a b'"
//   "keyval: empty segment in key 'a..b'"
//   "keyval: invalid key '0.a' (a list index cannot come first)"
//   "keyval: invalid list index '01' in key 'l.01'"
//   "keyval: duplicate key 'node-name'"
//   "keyval: 'file' is used both as a value and as an object prefix"
//   "keyval: 'l' mixes list indices and member names"
//   "keyval: missing key 'l.1' (list indices must be contiguous from 0)"
//   "keyval: key 'a.a.(...)' is nested too deeply" (more than 64 segments)
Result<nlohmann::json> keyval_parse(const std::string &s, const char *implied_key);

// Parses a strict JSON text (RFC 8259: no comments, no trailing commas,
// valid UTF-8) that must be an object, in QEMU's dialect: strings may also be
// single-quoted, and \' is an escape (see qapi/json-quotes.h). Duplicate
// member names are an error.
// Errors (EINVAL):
//   "JSON: unterminated string starting at position N"
//   "JSON: <what> at position N" (syntax errors)
//   "JSON: duplicate key 'k'"
//   "JSON: nesting deeper than 128 levels"
//   "JSON: expected an object"
Result<nlohmann::json> parse_json_object(const std::string &s);

// Expands dotted member names in a JSON object, at every level, the way QEMU
// treats flattened options in json: filenames:
//   {"file.filename":"x","file":{"driver":"file"}} -> {"file":{"driver":"file","filename":"x"}}
// Segments of digits become list indices as in keyval_parse; values keep
// their JSON types; arrays are kept and their object elements expanded.
// Errors: those of keyval_parse about keys, with "JSON:" in place of
// "keyval:" (e.g. "JSON: duplicate key 'file.filename'"), and
// "JSON: expected an object" if obj is not one.
Result<nlohmann::json> json_unflatten(const nlohmann::json &obj);

// Formats a JSON object as keyval text, the inverse of keyval_parse: nested
// objects and lists become dotted keys; at each level "driver" comes first
// and "node-name" second, then the other keys in sorted order; strings have
// ',' doubled, booleans become on/off, numbers decimal, null the empty
// string. Empty objects and lists cannot be expressed and are left out.
// Precondition: obj is an object and no member name contains '.', ',' or
// '='. Allocation failure terminates (noexcept).
std::string keyval_format(const nlohmann::json &obj) noexcept;

// Returns value with every ',' doubled.
std::string keyval_escape(const std::string &value);

} // namespace bg

// QEMU's configuration file syntax (the one blkdebug's config file uses):
//
//   # a comment (a '#' in the first column)
//   [group]
//   key = "value"
//   [group "id"]
//   other = ""
//
// parsed against a schema of groups and their typed keys. Line rules, as
// QEMU 7.2 applies them: a line that is only a newline, or starts with '#',
// is skipped; "[NAME \"ID\"]" and "[NAME]" start a group (NAME is the text
// up to ']'; a group without a closing ']' takes the rest of the line, which
// then names no known group); any other line with a word on it is a key:
// the word is the key, and "= \"VALUE\"" after it (blanks allowed around
// '=') gives the value, otherwise the value is empty. Text after the closing
// quote is ignored. A line of blanks only is a syntax error.
//
// Errors (EINVAL), QEMU's texts, the first in file order:
//   "parse error"                           a line of blanks
//   "no group defined"                      a key before any group
//   "There is no option group 'NAME'"
//   "Invalid parameter 'KEY'"               a key the group does not have
//   "Parameter 'KEY' expects a number"      (kNumber: see below)
//   "Value 'VALUE' is too large for parameter 'KEY'"
//   "Parameter 'KEY' expects 'on' or 'off'" (kBool: on/yes/true/y, off/no/false/n)
// Numbers are unsigned 64-bit: decimal, 0x hex or 0 octal, optional
// leading blanks and sign ('-' negates modulo 2^64), nothing after.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "util/error.h"

namespace bg {

enum class ConfigValueType { kString, kNumber, kBool };

struct ConfigKeySchema {
    const char *name;
    ConfigValueType type;
};

struct ConfigGroupSchema {
    const char *name;
    std::span<const ConfigKeySchema> keys;
};

// One group of a file, values as written (already checked against their
// types). A key given twice keeps its last value.
struct ConfigGroup {
    std::string name;
    std::string id;                              // "" without one
    std::map<std::string, std::string> values;
};

// Parses text (a whole file). Groups come in file order.
Result<std::vector<ConfigGroup>> parse_config_file(const std::string &text,
                                                   std::span<const ConfigGroupSchema> schema);

// QEMU's number syntax for option values (see above). Errors: those above
// for key and value.
Result<uint64_t> parse_config_number(const std::string &key, const std::string &value);

// QEMU's boolean option values: true for on/yes/true/y, false for
// off/no/false/n. Errors: the one above for key.
Result<bool> parse_config_bool(const std::string &key, const std::string &value);

} // namespace bg

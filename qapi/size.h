// Byte-count parsing with QEMU's size syntax (qemu_strtosz), shared by the
// keyval option decoder and the tools' command lines.
#pragma once

#include <cstdint>
#include <string>

#include "util/error.h"

namespace bg {

// QEMU's byte-count syntax (its qemu_strtosz), exactly:
//   - optional leading white space, an optional '+', decimal digits
//     ("010" is ten), then optionally one unit suffix, case-insensitive:
//     b/B (1), k/K (2^10), m/M (2^20), g/G (2^30), t/T (2^40), p/P (2^50),
//     e/E (2^60);
//   - a decimal fraction before a unit other than B ("1.5M" = 1572864); the
//     byte count is rounded to the nearest integer, halves up ("0.1k" = 102,
//     "1.00049k" = 1025); a fraction without a unit or with B must be zero
//     ("1.0", "1.k"); no exponent ("1.0e1k" is invalid);
//   - "0x" and hexadecimal digits, without a fraction; a unit suffix after
//     it is accepted (QEMU warns that this is deprecated: *hex_suffix is set
//     then);
//   - no '-' anywhere, nothing after the suffix (not even blanks).
// Returns 0 with *out set, -EINVAL for malformed text (including a valid
// number followed by anything), -ERANGE for a well-formed number above
// UINT64_MAX.
int strtosz(const std::string &s, uint64_t *out, bool *hex_suffix = nullptr);

// strtosz() with an error message: EINVAL "'<s>' is not a valid size" for
// anything strtosz() refuses.
Result<uint64_t> parse_size(const std::string &s);

} // namespace bg

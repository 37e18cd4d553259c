// Byte-count parsing with QEMU's size syntax (qemu_strtosz), shared by the
// keyval option decoder and the tools' command lines.
#pragma once

#include <cstdint>
#include <string>

#include "util/error.h"

namespace bg {

// Parses a byte count:
//   - decimal digits, optionally followed by one unit suffix, case-insensitive:
//     b/B (1), k/K (2^10), m/M (2^20), g/G (2^30), t/T (2^40), p/P (2^50),
//     e/E (2^60);
//   - a decimal fraction is allowed with a unit other than B ("1.5M" =
//     1572864; the fractional byte count is truncated), a zero fraction
//     also without one ("1.0");
//   - "0x" followed by hexadecimal digits, without a suffix.
// No sign, no white space, nothing after the suffix.
// Errors: EINVAL "'<s>' is not a valid size" for anything else, including
// negative numbers and values above UINT64_MAX.
Result<uint64_t> parse_size(const std::string &s);

} // namespace bg

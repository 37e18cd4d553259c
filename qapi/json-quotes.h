// QEMU's JSON dialect accepts strings in single quotes ('abc') besides the
// standard double-quoted ones, and the escape \' in both kinds. The JSON
// library we use parses standard JSON only; this translation turns the
// dialect into standard JSON text before parsing. Every JSON entry point
// (json: pseudo-filenames, JSON --blockdev/--object/--export arguments, QMP)
// goes through it.
#pragma once

#include <string>

#include "util/error.h"

namespace bg {

// Rewrites every single-quoted string of text as a double-quoted one with the
// same value, and \' (in either kind of string) as a plain '. Inside a
// single-quoted string a bare '"' becomes \"; every other byte and escape
// (\" \\ \/ \b \f \n \r \t \uXXXX, and invalid ones, left for the parser to
// refuse) is copied as it is. Text outside strings is copied unchanged, so
// syntax errors there are still the parser's to report.
//
//   {'a': 'x"y'}     -> {"a": "x\"y"}
//   {"a": "it\'s"}   -> {"a": "it's"}
//   {'a': 'it\'s'}   -> {"a": "it's"}
//
// Positions the parser reports afterwards are offsets into the translated
// text, which differs in length from text only where a '"' was escaped or a
// \' shortened.
//
// Errors (EINVAL): a string still open at the end of text, naming where it
// started: "JSON: unterminated string starting at position N" (0-based).
Result<std::string> json_translate_quotes(const std::string &text);

} // namespace bg

// qapi/json-quotes.cc -- see json-quotes.h.
#include "qapi/json-quotes.h"

namespace bg {

Result<std::string> json_translate_quotes(const std::string &text)
{
    std::string out;
    out.reserve(text.size() + 8);
    char quote = 0;          // the open string's quote character, or 0
    size_t start = 0;        // where the open string started
    for (size_t i = 0; i < text.size(); i++) {
        const char c = text[i];
        if (!quote) {
            if (c == '\'' || c == '"') {
                quote = c;
                start = i;
                out += '"';
            } else {
                out += c;
            }
            continue;
        }
        if (c == '\\') {
            if (i + 1 == text.size()) break;   // unterminated
            const char n = text[++i];
            if (n == '\'') {
                out += '\'';
            } else {
                out += '\\';
                out += n;
            }
        } else if (c == quote) {
            out += '"';
            quote = 0;
        } else if (c == '"') {
            out += "\\\"";   // a bare '"' inside '...'
        } else {
            out += c;
        }
    }
    if (quote) return make_error(EINVAL, "JSON: unterminated string starting at position %zu", start);
    return out;
}

} // namespace bg

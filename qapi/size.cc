#include "qapi/size.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace bg {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Multiplier for a unit suffix, 0 if c is not one.
uint64_t suffix_mul(char c)
{
    switch (c) {
    case 'b': case 'B': return 1;
    case 'k': case 'K': return 1ULL << 10;
    case 'm': case 'M': return 1ULL << 20;
    case 'g': case 'G': return 1ULL << 30;
    case 't': case 'T': return 1ULL << 40;
    case 'p': case 'P': return 1ULL << 50;
    case 'e': case 'E': return 1ULL << 60;
    default: return 0;
    }
}

} // namespace

int strtosz(const std::string &s, uint64_t *out, bool *hex_suffix)
{
    if (hex_suffix) *hex_suffix = false;
    const char *const start = s.c_str();
    if (std::strlen(start) != s.size()) return -EINVAL;   // an embedded NUL

    // The integer part, decimal (leading blanks and '+' allowed; a '-' is
    // refused, here or, being no digit nor suffix, anywhere after).
    errno = 0;
    char *end = nullptr;
    uint64_t val = std::strtoull(start, &end, 10);
    if (end == start) return -EINVAL;
    if (errno == ERANGE) return *end ? -EINVAL : -ERANGE;
    if (std::memchr(start, '-', static_cast<size_t>(end - start))) return -EINVAL;

    // The fraction, as a 64-bit binary fixed-point number.
    uint64_t valf = 0;
    bool hex = false;
    if (val == 0 && (*end == 'x' || *end == 'X')) {
        errno = 0;
        val = std::strtoull(start, &end, 16);
        if (errno == ERANGE) return *end ? -EINVAL : -ERANGE;
        if (*end == '.') return -EINVAL;
        hex = true;
    } else if (*end == '.') {
        if (!is_digit(end[1])) {
            end++;   // "1.k": no fraction digits
        } else {
            char *fend = nullptr;
            errno = 0;
            const double fraction = std::strtod(end, &fend);
            if (fend == end) return -EINVAL;
            for (const char *p = end; p < fend; p++) {
                if (*p == 'e' || *p == 'E') return -EINVAL;   // no exponent
            }
            end = fend;
            // An underflow still counts as a (tiny) non-zero fraction.
            const double scaled = fraction * 0x1p64;
            valf = errno == ERANGE ? 1 : scaled >= 0x1p64 ? 0 : static_cast<uint64_t>(scaled);
        }
    }

    uint64_t mul = suffix_mul(*end);
    if (mul) {
        if (hex && hex_suffix) *hex_suffix = true;
        end++;
    } else {
        mul = 1;
    }
    uint64_t result = val;
    if (mul == 1) {
        if (valf) return -EINVAL;   // a fraction needs a unit above bytes
    } else {
        // val * mul + valf * mul / 2^64, rounded half up, in 128 bits.
        const unsigned __int128 whole = static_cast<unsigned __int128>(val) * mul;
        const unsigned __int128 part = static_cast<unsigned __int128>(valf) * mul;
        const unsigned __int128 total = whole + (part >> 64) + ((part >> 63) & 1);
        if (total >> 64) return *end ? -EINVAL : -ERANGE;
        result = static_cast<uint64_t>(total);
    }
    if (*end) return -EINVAL;
    *out = result;
    return 0;
}

Result<uint64_t> parse_size(const std::string &s)
{
    uint64_t v = 0;
    if (strtosz(s, &v) != 0) return make_error(EINVAL, "'%s' is not a valid size", s.c_str());
    return v;
}

} // namespace bg

#include "qapi/size.h"

namespace bg {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

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

Result<uint64_t> parse_size(const std::string &s)
{
    auto bad = [&s]() { return make_error(EINVAL, "'%s' is not a valid size", s.c_str()); };
    const size_t n = s.size();
    if (n == 0 || !is_digit(s[0])) return bad();

    uint64_t val = 0;
    size_t i = 0;
    if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        if (n == 2) return bad();
        for (i = 2; i < n; i++) {
            int d = hex_value(s[i]);
            if (d < 0 || val > (UINT64_MAX >> 4)) return bad();
            val = (val << 4) | static_cast<uint64_t>(d);
        }
        return val;
    }

    for (; i < n && is_digit(s[i]); i++) {
        uint64_t d = static_cast<uint64_t>(s[i] - '0');
        if (val > (UINT64_MAX - d) / 10) return bad();
        val = val * 10 + d;
    }

    // Fraction: keep at most 18 digits (below 2^60, so the product with a
    // multiplier fits in 128 bits); later digits only need to be digits.
    unsigned __int128 frac_num = 0;
    uint64_t frac_den = 1;
    if (i < n && s[i] == '.') {
        for (i++; i < n && is_digit(s[i]); i++) {
            if (frac_den < 1000000000000000000ULL) {
                frac_num = frac_num * 10 + static_cast<unsigned>(s[i] - '0');
                frac_den *= 10;
            }
        }
    }

    uint64_t mul = 1;
    if (i < n) {
        mul = suffix_mul(s[i]);
        if (mul == 0) return bad();
        i++;
    }
    if (i != n) return bad();

    if (mul == 1) {
        if (frac_num != 0) return bad();     // a fraction needs a unit
        return val;
    }
    uint64_t frac_bytes = static_cast<uint64_t>(frac_num * mul / frac_den);
    if (val > (UINT64_MAX - frac_bytes) / mul) return bad();
    return val * mul + frac_bytes;
}

} // namespace bg

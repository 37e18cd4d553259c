// util/bits.h -- bit ranges in byte vectors, least significant bit first
// (bit i is bit i % 8 of byte i / 8), as dirty bitmaps store them.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace bg {

// Sets bits [first, last] (inclusive) of b. REQUIRES last / 8 < b.size().
inline void bits_set_range(std::vector<uint8_t> &b, uint64_t first, uint64_t last)
{
    while (first <= last && (first & 7)) {
        b[first >> 3] |= static_cast<uint8_t>(1u << (first & 7));
        first++;
    }
    if (first > last) return;
    const uint64_t full_end = (last + 1) & ~uint64_t{7};
    if (full_end > first) {
        std::memset(b.data() + (first >> 3), 0xff, (full_end - first) >> 3);
        first = full_end;
    }
    for (; first <= last; first++) b[first >> 3] |= static_cast<uint8_t>(1u << (first & 7));
}

// Zeroes the bits at and past nb_bits in the last byte of b.
inline void bits_clear_tail(std::vector<uint8_t> &b, uint64_t nb_bits)
{
    if ((nb_bits & 7) && !b.empty()) b.back() &= static_cast<uint8_t>((1u << (nb_bits & 7)) - 1);
}

} // namespace bg

// util/ratelimit.cc -- see ratelimit.h.
#include "util/ratelimit.h"

namespace bg {

int64_t RateLimit::account(uint64_t n, int64_t now_ns)
{
    if (!rate_) return 0;
    std::lock_guard<std::mutex> g(mu_);
    if (paid_until_ns_ < now_ns) paid_until_ns_ = now_ns;
    const int64_t wait = paid_until_ns_ - now_ns;
    const unsigned __int128 cost = static_cast<unsigned __int128>(n) * 1000000000U / rate_;
    const int64_t room = INT64_MAX - paid_until_ns_;
    paid_until_ns_ += cost > static_cast<unsigned __int128>(room) ? room : static_cast<int64_t>(cost);
    return wait;
}

} // namespace bg

// util/ratelimit.h -- a byte-rate limit for copy loops (qemu-img convert -r,
// commit -r).
//
// The model is a ledger of time: every dispatched byte costs 1/rate seconds,
// paid from the moment the ledger was last caught up. account(n, now) books
// n bytes and says how long to wait before dispatching them: the first
// request after an idle spell goes at once, later ones wait until the
// bytes booked before them are paid for. Over any run the average rate is at
// most `rate`; a single request may be larger than one second's worth (it
// then delays the next one accordingly). Time is whatever clock the caller
// passes in (nanoseconds), so the arithmetic is testable without sleeping.
//
// Threading model: thread-safe (one mutex); account() never blocks.
#pragma once

#include <cstdint>
#include <mutex>

namespace bg {

class RateLimit {
  public:
    // bytes_per_second: 0 means no limit.
    explicit RateLimit(uint64_t bytes_per_second = 0) : rate_(bytes_per_second) {}

    bool enabled() const { return rate_ != 0; }

    // Books n bytes dispatched at or after now_ns; returns the nanoseconds
    // to wait before dispatching them (0: go now).
    int64_t account(uint64_t n, int64_t now_ns);

  private:
    uint64_t rate_;
    std::mutex mu_;
    int64_t paid_until_ns_ = INT64_MIN;   // the time the booked bytes are paid for
};

} // namespace bg

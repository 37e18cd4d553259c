// The unit tests' in-memory driver "test-mem", and helpers that build
// options from text.
//
// "test-mem" is an ordinary driver: one descriptor (kTestDriver), options
// decoded by its own decoder, registered with one line
// (registry.add(&kTestDriver), or test_registry() for the built-in drivers
// plus this one). Its options:
//   size=N          protocol mode: bytes of zeros it starts with (default
//                   1 MiB); pass-through mode: the length it reports instead
//                   of its child's (requests beyond the child's end are
//                   passed on; the child decides)
//   align=N         request_alignment (power of two, default 1)
//   max-transfer=N  max_transfer (multiple of align; 0 = no limit)
//   zero-align=N    pwrite_zeroes_alignment (0 = align)
//   write-zeroes=B  on (default): native write-zeroes (honours MAY_UNMAP);
//                   off: -ENOTSUP (not counted), so the generic layer writes
//                   zero buffers
//   file=REF        optional child: the node becomes a pass-through
//                   recorder over it (role FILTERED|PRIMARY) instead of
//                   holding data itself
//
// What a test sets on an opened node (TestNode::from(node)):
//   - counting: per-operation calls and bytes, a log of requests
//     (opt-in), requests that violated the node's own limits, overlaps in
//     the driver where a write is involved (overlapping_writes());
//   - failing: an errno for matching requests, always or the next N times;
//   - delaying: a fixed (plus random) latency per operation type, and
//     holding matching requests until release();
//   - on_close: called with the node's name when it is closed.
// A request goes through, in order: counting/logging, hold, latency,
// failure, then the data (or the child).
//
// A request is "in the driver" from the start of its hook until the hook
// returns, held and delayed time included.
//
// Threading: counters, log, failure rules and the set of requests in the
// driver are guarded by a mutex, so requests may come from coroutines of
// several threads (stress tests); the data is not: concurrent writes from
// different threads to overlapping ranges are the test's business (and
// show in overlapping_writes()). Holding works within one AioContext.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block-driver.h"
#include "qapi/block-parse.h"
#include "util/coroutine-lock.h"

namespace bg {

extern const BlockDriver kTestDriver;

// The built-in drivers plus "test-mem" (built on first use).
const DriverRegistry &test_registry();

// Options from --blockdev text (keyval or JSON) / a JSON tree; the test
// fails (ck_assert) if they do not decode.
BlockdevOptions must_parse(const std::string &arg, const BlockdevSchema &schema = test_registry());
BlockdevOptions must_parse_json(const nlohmann::json &tree, const BlockdevSchema &schema = test_registry());
// A child given by node-name / defined inline.
BlockdevRef ref_to(const std::string &node_name);
BlockdevRef inline_ref(const BlockdevOptions &def);

enum class TestOp : unsigned { kRead, kWrite, kZeroes, kDiscard, kFlush, kTruncate };
constexpr unsigned kTestOpCount = 6;
using TestOpMask = unsigned;
constexpr TestOpMask test_op_bit(TestOp op) { return 1u << static_cast<unsigned>(op); }
constexpr TestOpMask kTestAllOps = (1u << kTestOpCount) - 1;

// One request as the driver saw it (kFlush: flush to disk, i.e. one that
// the generic layer did not skip; offset/bytes 0).
struct TestRequest {
    TestOp op;
    int64_t offset;
    int64_t bytes;
    ReqFlags flags;
};

// Which requests a rule applies to: an operation in ops that overlaps
// [offset, offset+bytes) (bytes < 0: up to the end). Flushes match any
// range.
struct TestMatch {
    TestOpMask ops = kTestAllOps;
    int64_t offset = 0;
    int64_t bytes = -1;
    bool matches(const TestRequest &r) const;
};

class TestNode final : public FilterNode {
  public:
    // The node as a TestNode (nullptr if it is another driver's).
    static TestNode *from(BlockNode *node);

    // Protocol mode: the bytes. Tests may read and change them between
    // requests. Pass-through mode: empty.
    std::vector<uint8_t> data;

    struct Counter {
        uint64_t calls = 0;
        uint64_t bytes = 0;
    };
    Counter count(TestOp op) const;
    // Requests whose offset or length violated align / max-transfer /
    // zero-align (the generic layer must never send those).
    uint64_t misaligned() const;
    // How many times a request began while an overlapping request was in
    // the driver and at least one of the two writes (kWrite, kZeroes or
    // kDiscard). Where the generic layer serialises every write (e.g. all
    // are unaligned, hence read-modify-write) this must stay 0.
    uint64_t overlapping_writes() const;
    // Zeroes the counters and clears the log.
    void reset_counters();
    // Logging is off until enabled (stress tests would grow it without end).
    void set_logging(bool on);
    std::vector<TestRequest> log() const;

    // Fails matching requests with -err: the next `times` of them, or all
    // (times < 0). Rules are tried in the order added; an exhausted rule
    // no longer matches.
    void inject_error(const TestMatch &m, int err, int times = -1);
    void clear_failures();

    // Every request of an operation in ops of at least min_bytes bytes
    // sleeps ns plus a random [0, jitter_ns) (seeded, reproducible) before
    // it is served.
    void set_latency(TestOpMask ops, int64_t ns, int64_t jitter_ns = 0, int64_t min_bytes = 0);
    // Matching requests wait (in the driver, counted as in flight) until
    // release(). One hold at a time; a new one replaces the range.
    void hold(const TestMatch &m);
    void release();
    int held() const { return held_; }

    std::function<void(const std::string &node_name)> on_close;

    std::string filename() const override;
    int64_t allocated_file_size() override;

  protected:
    Status open(const BlockdevOptions &opts) override;
    void close() override;
    void refresh_limits(BlockLimits *bl) override;
    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override;
    int coroutine_fn do_co_flush_to_disk() override;
    int coroutine_fn do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags) override;
    int64_t do_getlength() override;

  private:
    struct FailRule {
        TestMatch match;
        int err;
        int times;
    };
    // A request in the driver: entered by begin(), left when the hook
    // returns (the destructor).
    class InDriver;
    // Enters the request into in_driver_ (through in), counts, logs,
    // holds, delays; returns 0 or the injected -errno.
    int coroutine_fn begin(TestOp op, int64_t offset, int64_t bytes, ReqFlags flags, InDriver &in);
    // extra_align: 0 for reads/writes (max-transfer applies), else the
    // write-zeroes alignment. REQUIRES lock_.
    void check_limits(int64_t offset, int64_t bytes, uint32_t extra_align);

    bool pass_ = false;                 // a "file" child was given
    int64_t size_override_ = -1;        // pass-through: "size"
    uint32_t align_ = 1;
    uint64_t max_transfer_ = 0;
    uint32_t zero_align_ = 0;
    bool write_zeroes_ = true;

    mutable std::mutex lock_;
    Counter counters_[kTestOpCount];
    uint64_t misaligned_ = 0;
    bool logging_ = false;
    std::vector<TestRequest> log_;
    std::vector<FailRule> fail_rules_;
    TestOpMask latency_ops_ = 0;
    int64_t latency_ns_ = 0, jitter_ns_ = 0, latency_min_bytes_ = 0;
    std::mt19937 rng_{1234};
    std::list<TestRequest> in_driver_;
    uint64_t overlapping_writes_ = 0;

    bool holding_ = false;
    TestMatch hold_match_;
    int held_ = 0;
    CoQueue hold_q_;
};

} // namespace bg

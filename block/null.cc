// The null-co and null-aio protocol drivers (QEMU block/null.c): a device
// of a configured size that discards writes and reads as zeros (or, with
// read-zeroes=off, leaves the read buffer untouched). For tests and
// benchmarks of the layers above.
//
// null-co completes every request in the calling coroutine; null-aio
// completes it from a bottom half of the current AioContext (one yield per
// request), like an asynchronous backend would. latency-ns > 0 adds a
// co_sleep_ns() of that many nanoseconds to every request.
//
// Threading: a node holds only immutable options after open; requests may
// come from any thread's coroutines.
#include <cerrno>

#include "block/block-driver.h"
#include "qapi/option-reader.h"

namespace bg {

namespace {

// The options of null-co and null-aio (QEMU's BlockdevOptionsNull).
struct NullOptions : DriverOptionsOf<NullOptions> {
    static constexpr uint64_t kDefaultSize = 1ULL << 30;   // QEMU's default 1 GiB
    uint64_t size = kDefaultSize;               // bytes
    uint64_t latency_ns = 0;                    // "latency-ns"
    bool read_zeroes = true;                    // "read-zeroes"; off: reads leave the buffer untouched

    void encode(nlohmann::json &j) const override
    {
        if (size != kDefaultSize) j["size"] = size;
        if (latency_ns) j["latency-ns"] = latency_ns;
        if (!read_zeroes) j["read-zeroes"] = false;
    }
};

Result<std::unique_ptr<DriverOptions>> decode_null_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<NullOptions>();
    BG_TRY(r.get_size("size", &o->size, INT64_MAX));
    BG_TRY(r.get_uint("latency-ns", &o->latency_ns, UINT64_MAX));
    BG_TRY(r.get("read-zeroes", &o->read_zeroes));
    return std::unique_ptr<DriverOptions>(std::move(o));
}

class NullNode final : public BlockNode {
  public:
    explicit NullNode(bool aio) : aio_(aio) {}

    std::string filename() const override { return aio_ ? "null-aio://" : "null-co://"; }
    int64_t allocated_file_size() override { return 0; }

  protected:
    Status open(const BlockdevOptions &opts) override
    {
        const auto *o = opts.as<NullOptions>();
        if (!o) return node_error(EINVAL, "options are not null-co/null-aio options");
        if (o->size > static_cast<uint64_t>(kMaxLength)) {
            return node_error(EINVAL, "size " + std::to_string(o->size) + " is too large");
        }
        size_ = static_cast<int64_t>(o->size);
        latency_ns_ = static_cast<int64_t>(o->latency_ns);
        read_zeroes_ = o->read_zeroes;
        supports_fua_ = true;
        supported_zero_flags_ = kReqMayUnmap | kReqFua | kReqNoFallback;
        return {};
    }

    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override
    {
        (void)offset;
        (void)flags;
        if (read_zeroes_) qiov.memset(0, 0, static_cast<size_t>(bytes));
        return complete();
    }

    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override
    {
        (void)offset;
        (void)bytes;
        (void)qiov;
        (void)flags;
        return complete();
    }

    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override
    {
        (void)offset;
        (void)bytes;
        (void)flags;
        return complete();
    }

    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override
    {
        (void)offset;
        (void)bytes;
        return complete();
    }

    int coroutine_fn do_co_flush_to_disk() override { return complete(); }

    // QEMU's null driver cannot be resized.
    int coroutine_fn do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags) override
    {
        (void)offset;
        (void)exact;
        (void)prealloc;
        (void)flags;
        return -ENOTSUP;
    }

    // read-zeroes=on: ZERO; off: DATA (the content is whatever the buffer
    // held). Always OFFSET_VALID at the same offset on this node.
    int coroutine_fn do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                        int64_t *map, BlockNode **file) override
    {
        (void)want_zero;
        *pnum = bytes;
        *map = offset;
        *file = this;
        return (read_zeroes_ ? kStatusZero : kStatusData) | kStatusOffsetValid;
    }

    int64_t do_getlength() override { return size_; }

  private:
    // Waits as configured, then returns 0. Yields unless null-co without latency.
    int coroutine_fn complete()
    {
        if (latency_ns_ > 0) {
            co_sleep_ns(latency_ns_);
        } else if (aio_) {
            AioContext::current()->co_schedule(coroutine_self());
            coroutine_yield();
        }
        return 0;
    }

    const bool aio_;
    int64_t size_ = 0;          // bytes
    int64_t latency_ns_ = 0;    // per request; 0 = none
    bool read_zeroes_ = true;
};

std::unique_ptr<BlockNode> create_null_co() { return std::make_unique<NullNode>(false); }
std::unique_ptr<BlockNode> create_null_aio() { return std::make_unique<NullNode>(true); }

} // namespace

constexpr DriverCaps kNullCaps = kCapWrite | kCapWriteZeroes | kCapDiscard | kCapDropsWrites;

extern const BlockDriver kDriverNullCo = {
    "null-co", BlockDriverKind::kProtocol, kNullCaps,
    "discards writes, reads zeros; completes in the calling coroutine",
    decode_null_options, create_null_co, nullptr,
};

extern const BlockDriver kDriverNullAio = {
    "null-aio", BlockDriverKind::kProtocol, kNullCaps,
    "discards writes, reads zeros; completes from a bottom half",
    decode_null_options, create_null_aio, nullptr,
};

} // namespace bg

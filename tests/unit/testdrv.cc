// The unit tests' in-memory driver "test-mem"; see testdrv.h.
#include "tests/unit/testdrv.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "qapi/option-reader.h"
#include "util/aio.h"

#include <check.h>

namespace bg {

namespace {

constexpr uint64_t kDefaultSize = 1 << 20;
constexpr uint64_t kMaxLimit = 1ULL << 30;

struct TestOptions : DriverOptionsOf<TestOptions> {
    std::optional<uint64_t> size;
    uint64_t align = 1;
    uint64_t max_transfer = 0;
    uint64_t zero_align = 0;
    bool write_zeroes = true;
    BlockdevRef file;

    void encode(nlohmann::json &j) const override
    {
        if (size) j["size"] = *size;
        if (align != 1) j["align"] = align;
        if (max_transfer) j["max-transfer"] = max_transfer;
        if (zero_align) j["zero-align"] = zero_align;
        if (!write_zeroes) j["write-zeroes"] = false;
        put_ref(j, "file", file);
    }
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override { fn("file", file); }
};

bool pow2(uint64_t x) { return x && !(x & (x - 1)); }

Result<std::unique_ptr<DriverOptions>> decode_test_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<TestOptions>();
    BG_TRY(r.get_size("size", &o->size, INT64_MAX));
    BG_TRY(r.get_size("align", &o->align, kMaxLimit));
    if (!pow2(o->align)) return r.error("align", "must be a power of two");
    BG_TRY(r.get_size("max-transfer", &o->max_transfer, kMaxLimit));
    if (o->max_transfer % o->align) return r.error("max-transfer", "must be a multiple of align");
    BG_TRY(r.get_size("zero-align", &o->zero_align, kMaxLimit));
    if (o->zero_align && (!pow2(o->zero_align) || o->zero_align % o->align)) {
        return r.error("zero-align", "must be a power of two and a multiple of align");
    }
    BG_TRY(r.get("write-zeroes", &o->write_zeroes));
    BG_TRY(r.get_ref("file", &o->file, OptionReader::RefMode::kOptional));
    return std::unique_ptr<DriverOptions>(std::move(o));
}

} // namespace

const BlockDriver kTestDriver = {
    "test-mem",
    BlockDriverKind::kProtocol,
    kCapWrite | kCapDiscard | kCapWriteZeroes | kCapResize | kCapShrink | kCapFlush,
    "test: bytes in memory, with request counting, failing and delaying",
    decode_test_options,
    []() -> std::unique_ptr<BlockNode> { return std::make_unique<TestNode>(); },
    nullptr,
};

const DriverRegistry &test_registry()
{
    static const DriverRegistry reg = [] {
        DriverRegistry r = builtin_drivers();
        r.add(&kTestDriver);
        return r;
    }();
    return reg;
}

BlockdevOptions must_parse(const std::string &arg, const BlockdevSchema &schema)
{
    auto r = parse_blockdev_arg(schema, arg);
    ck_assert_msg(r.ok(), "%s: %s", arg.c_str(), r.ok() ? "" : r.msg().c_str());
    return std::move(r.value());
}

BlockdevOptions must_parse_json(const nlohmann::json &tree, const BlockdevSchema &schema)
{
    auto r = blockdev_options_from_tree(schema, tree, false);
    ck_assert_msg(r.ok(), "%s: %s", tree.dump().c_str(), r.ok() ? "" : r.msg().c_str());
    return std::move(r.value());
}

BlockdevRef ref_to(const std::string &node_name)
{
    BlockdevRef r;
    r.kind = BlockdevRef::Kind::kReference;
    r.reference = node_name;
    return r;
}

BlockdevRef inline_ref(const BlockdevOptions &def)
{
    BlockdevRef r;
    r.kind = BlockdevRef::Kind::kInline;
    r.def = std::make_shared<BlockdevOptions>(def);
    return r;
}

bool TestMatch::matches(const TestRequest &r) const
{
    if (!(ops & test_op_bit(r.op))) return false;
    if (r.op == TestOp::kFlush) return true;
    if (r.offset + std::max<int64_t>(r.bytes, 1) <= offset) return false;
    return bytes < 0 || r.offset < offset + bytes;
}

// ---------------------------------------------------------------- test API

TestNode *TestNode::from(BlockNode *node)
{
    return node && node->driver() == &kTestDriver ? static_cast<TestNode *>(node) : nullptr;
}

TestNode::Counter TestNode::count(TestOp op) const
{
    std::lock_guard<std::mutex> g(lock_);
    return counters_[static_cast<unsigned>(op)];
}

uint64_t TestNode::misaligned() const
{
    std::lock_guard<std::mutex> g(lock_);
    return misaligned_;
}

uint64_t TestNode::overlapping_writes() const
{
    std::lock_guard<std::mutex> g(lock_);
    return overlapping_writes_;
}

void TestNode::reset_counters()
{
    std::lock_guard<std::mutex> g(lock_);
    for (auto &c : counters_) c = Counter{};
    misaligned_ = 0;
    overlapping_writes_ = 0;
    log_.clear();
}

void TestNode::set_logging(bool on)
{
    std::lock_guard<std::mutex> g(lock_);
    logging_ = on;
}

std::vector<TestRequest> TestNode::log() const
{
    std::lock_guard<std::mutex> g(lock_);
    return log_;
}

void TestNode::inject_error(const TestMatch &m, int err, int times)
{
    std::lock_guard<std::mutex> g(lock_);
    fail_rules_.push_back({m, err, times});
}

void TestNode::clear_failures()
{
    std::lock_guard<std::mutex> g(lock_);
    fail_rules_.clear();
}

void TestNode::set_latency(TestOpMask ops, int64_t ns, int64_t jitter_ns, int64_t min_bytes)
{
    std::lock_guard<std::mutex> g(lock_);
    latency_ops_ = ops;
    latency_ns_ = ns;
    jitter_ns_ = jitter_ns;
    latency_min_bytes_ = min_bytes;
}

void TestNode::hold(const TestMatch &m)
{
    hold_match_ = m;
    holding_ = true;
}

void TestNode::release()
{
    holding_ = false;
    hold_q_.restart_all();
}

// ---------------------------------------------------------------- the node

Status TestNode::open(const BlockdevOptions &opts)
{
    const auto *o = opts.as<TestOptions>();
    if (!o) return node_error(EINVAL, "options are not test-mem options");
    align_ = static_cast<uint32_t>(o->align);
    max_transfer_ = o->max_transfer;
    zero_align_ = static_cast<uint32_t>(o->zero_align);
    write_zeroes_ = o->write_zeroes;
    supported_zero_flags_ = kReqMayUnmap;
    if (o->file.present()) {
        pass_ = true;
        size_override_ = o->size ? static_cast<int64_t>(*o->size) : -1;
        return open_filtered("file", o->file);
    }
    data.assign(o->size.value_or(kDefaultSize), 0);
    return {};
}

void TestNode::close()
{
    if (on_close) on_close(node_name());
}

std::string TestNode::filename() const
{
    return pass_ ? FilterNode::filename() : "test-mem:" + node_name();
}

int64_t TestNode::allocated_file_size()
{
    return pass_ ? FilterNode::allocated_file_size() : static_cast<int64_t>(data.size());
}

void TestNode::refresh_limits(BlockLimits *bl)
{
    bl->request_alignment = std::max(bl->request_alignment, align_);
    if (max_transfer_) bl->max_transfer = max_transfer_;
    if (zero_align_) bl->pwrite_zeroes_alignment = zero_align_;
}

void TestNode::check_limits(int64_t offset, int64_t bytes, uint32_t extra_align)
{
    bool bad = offset % align_ || bytes % align_;
    // max_transfer bounds reads and writes; write-zeroes has its own limit.
    if (!extra_align && max_transfer_ && static_cast<uint64_t>(bytes) > max_transfer_) bad = true;
    if (extra_align && (offset % extra_align || bytes % extra_align)) bad = true;
    if (bad) misaligned_++;
}

// Lives on the stack of a hook; the request is in in_driver_ from begin()
// until the hook returns.
class TestNode::InDriver {
  public:
    explicit InDriver(TestNode *node) : node_(node) {}
    InDriver(const InDriver &) = delete;
    InDriver &operator=(const InDriver &) = delete;
    ~InDriver()
    {
        if (!entered_) return;
        std::lock_guard<std::mutex> g(node_->lock_);
        node_->in_driver_.erase(it_);
    }
    // REQUIRES node_->lock_.
    void enter(const TestRequest &req)
    {
        for (const TestRequest &o : node_->in_driver_) {
            const bool overlap = req.offset < o.offset + o.bytes && o.offset < req.offset + req.bytes;
            if (overlap && (writes(req.op) || writes(o.op))) node_->overlapping_writes_++;
        }
        it_ = node_->in_driver_.insert(node_->in_driver_.end(), req);
        entered_ = true;
    }

  private:
    static bool writes(TestOp op) { return op == TestOp::kWrite || op == TestOp::kZeroes || op == TestOp::kDiscard; }

    TestNode *node_;
    bool entered_ = false;
    std::list<TestRequest>::iterator it_;
};

int TestNode::begin(TestOp op, int64_t offset, int64_t bytes, ReqFlags flags, InDriver &in)
{
    const TestRequest req{op, offset, bytes, flags};
    int64_t sleep_ns = 0;
    {
        std::lock_guard<std::mutex> g(lock_);
        in.enter(req);
        Counter &c = counters_[static_cast<unsigned>(op)];
        c.calls++;
        c.bytes += static_cast<uint64_t>(bytes);
        if (op == TestOp::kRead || op == TestOp::kWrite) check_limits(offset, bytes, 0);
        if (op == TestOp::kZeroes) check_limits(offset, bytes, zero_align_ ? zero_align_ : align_);
        if (logging_) log_.push_back(req);
        if ((latency_ops_ & test_op_bit(op)) && bytes >= latency_min_bytes_) {
            sleep_ns = latency_ns_;
            if (jitter_ns_ > 0) sleep_ns += static_cast<int64_t>(rng_() % static_cast<uint64_t>(jitter_ns_));
        }
    }
    if (holding_ && hold_match_.matches(req)) {
        held_++;
        while (holding_ && hold_match_.matches(req)) hold_q_.wait();
        held_--;
    }
    if (sleep_ns > 0) co_sleep_ns(sleep_ns);
    std::lock_guard<std::mutex> g(lock_);
    for (FailRule &f : fail_rules_) {
        if (f.times == 0 || !f.match.matches(req)) continue;
        if (f.times > 0) f.times--;
        return -f.err;
    }
    return 0;
}

int TestNode::do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    InDriver in(this);
    int r = begin(TestOp::kRead, offset, bytes, flags, in);
    if (r < 0) return r;
    if (pass_) return FilterNode::do_co_preadv(offset, bytes, qiov, flags);
    const int64_t size = static_cast<int64_t>(data.size());
    const int64_t n = offset < size ? std::min(bytes, size - offset) : 0;
    if (n > 0) qiov.from_buf(0, data.data() + offset, static_cast<size_t>(n));
    if (n < bytes) qiov.memset(static_cast<size_t>(n), 0, static_cast<size_t>(bytes - n));
    return 0;
}

int TestNode::do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    // Copy the data first and store it after the delay: a lost update
    // shows if the layer above lets overlapping read-modify-writes race.
    std::vector<uint8_t> tmp;
    if (!pass_) {
        tmp.resize(static_cast<size_t>(bytes));
        qiov.to_buf(0, tmp.data(), static_cast<size_t>(bytes));
    }
    InDriver in(this);
    int r = begin(TestOp::kWrite, offset, bytes, flags, in);
    if (r < 0) return r;
    if (pass_) return FilterNode::do_co_pwritev(offset, bytes, qiov, flags);
    if (offset + bytes > static_cast<int64_t>(data.size())) data.resize(static_cast<size_t>(offset + bytes));
    if (bytes) memcpy(data.data() + offset, tmp.data(), static_cast<size_t>(bytes));
    return 0;
}

int TestNode::do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags)
{
    if (!write_zeroes_) return -ENOTSUP;
    InDriver in(this);
    int r = begin(TestOp::kZeroes, offset, bytes, flags, in);
    if (r < 0) return r;
    if (pass_) return FilterNode::do_co_pwrite_zeroes(offset, bytes, flags);
    if (offset + bytes > static_cast<int64_t>(data.size())) data.resize(static_cast<size_t>(offset + bytes));
    memset(data.data() + offset, 0, static_cast<size_t>(bytes));
    return 0;
}

int TestNode::do_co_pdiscard(int64_t offset, int64_t bytes)
{
    InDriver in(this);
    int r = begin(TestOp::kDiscard, offset, bytes, 0, in);
    if (r < 0) return r;
    if (pass_) return FilterNode::do_co_pdiscard(offset, bytes);
    return 0;
}

int TestNode::do_co_flush_to_disk()
{
    InDriver in(this);
    return begin(TestOp::kFlush, 0, 0, 0, in);
}

int TestNode::do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags)
{
    InDriver in(this);
    int r = begin(TestOp::kTruncate, offset, 0, flags, in);
    if (r < 0) return r;
    if (pass_) return FilterNode::do_co_truncate(offset, exact, prealloc, flags);
    data.resize(static_cast<size_t>(offset));
    return 0;
}

int64_t TestNode::do_getlength()
{
    if (!pass_) return static_cast<int64_t>(data.size());
    return size_override_ >= 0 ? size_override_ : FilterNode::do_getlength();
}

} // namespace bg

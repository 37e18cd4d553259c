// block/copy.cc -- see copy.h.
#include "block/copy.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>

#include "util/aio.h"
#include "util/coroutine-lock.h"
#include "util/iov.h"
#include "util/ratelimit.h"

namespace bg {

namespace {

constexpr int64_t kDefaultChunk = 2 << 20;
constexpr int64_t kSector = 512;
// Zero and skipped ranges need no buffer; they are still cut so that
// progress moves and write-zeroes requests stay reasonable.
constexpr int64_t kMaxNoDataChunk = 1LL << 30;

enum class ChunkKind { kSkip, kZero, kData };

struct Chunk {
    uint64_t seq = 0;
    size_t src = 0;
    int64_t src_offset = 0;   // offset in the source
    int64_t dst_offset = 0;   // offset in the destination
    int64_t bytes = 0;
    ChunkKind kind = ChunkKind::kData;
};

int64_t align_down(int64_t v, int64_t a) { return v / a * a; }
int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

class CopyRun {
  public:
    CopyRun(const std::vector<CopySource> &srcs, BlockBackend *dst, const CopyOptions &opts)
        : srcs_(srcs), dst_(dst), opts_(opts), limit_(opts.rate_limit)
    {
    }

    Status coroutine_fn setup();
    void coroutine_fn run();
    const CopyStats &stats() const { return stats_; }
    bool failed() const { return failed_.load(); }
    const Error &error() const { return error_; }

  private:
    std::string dst_name() const { return dst_->node() ? dst_->node()->filename() : ""; }
    // Writes only what differs from a diff base (a backend, or zeros).
    bool diffing() const { return opts_.diff_against || opts_.diff_against_zeros; }
    static void worker_entry(void *opaque);
    void coroutine_fn worker();
    bool coroutine_fn plan(Chunk *c);
    int coroutine_fn plan_status(size_t i, int64_t soff, int64_t max, ChunkKind *kind, int64_t *n);
    int coroutine_fn read_source(const Chunk &c, uint8_t *buf, Error *e);
    int coroutine_fn salvage_source(const Chunk &c, int64_t in, uint8_t *buf);
    int coroutine_fn read_diff_base(int64_t offset, int64_t bytes, uint8_t *buf, Error *e);
    int coroutine_fn write_chunk(const Chunk &c, uint8_t *buf, uint8_t *cmp, Error *e);
    int coroutine_fn write_data(int64_t offset, int64_t bytes, uint8_t *buf, Error *e);
    int coroutine_fn write_zero_range(int64_t offset, int64_t bytes, Error *e);
    // An I/O error of chunk c: the on_error hook's decision, else kFail.
    // kFail also fails the copy with e.
    CopyErrorAction coroutine_fn io_error(const Chunk &c, bool is_read, int ret, Error e);
    // before_chunk; false (after failing the copy) when it says stop.
    bool coroutine_fn pre_chunk(int64_t data_bytes);
    void fail(Error e);

    const std::vector<CopySource> &srcs_;
    BlockBackend *dst_;
    CopyOptions opts_;
    RateLimit limit_;
    int64_t chunk_size_ = kDefaultChunk;
    int64_t align_ = 1;
    std::vector<int64_t> src_len_;     // bytes of each source in the destination
    std::vector<int64_t> blk_len_;     // each source backend's own length
    std::vector<int64_t> src_start_;   // destination offset of each source
    int64_t total_ = 0;

    CoMutex plan_lock_;
    int64_t next_offset_ = 0;
    uint64_t next_seq_ = 0;
    // Status cache: [cache_start_, cache_end_) of source cache_src_ is cache_kind_.
    size_t cache_src_ = SIZE_MAX;
    int64_t cache_start_ = 0, cache_end_ = 0;
    ChunkKind cache_kind_ = ChunkKind::kData;

    bool ordered_ = true;      // writes in chunk order
    CoMutex write_lock_;       // guards write_seq_
    uint64_t write_seq_ = 0;   // in order: the chunk whose write may go next
    CoQueue write_queue_;

    std::atomic<bool> failed_{false};
    std::mutex mu_;            // guards error_, stats_, progress_ and progress calls (never held across a yield)
    Error error_;
    CopyStats stats_;
    CopyProgress progress_;
    std::atomic<int> running_{0};
    Coroutine *waiter_ = nullptr;
};

void CopyRun::fail(Error e)
{
    {
        std::lock_guard<std::mutex> g(mu_);
        if (!failed_.load()) {
            error_ = std::move(e);
            failed_.store(true);
        }
    }
    write_queue_.restart_all();
}

Status CopyRun::setup()
{
    if (opts_.max_workers < 1 || opts_.max_workers > kCopyMaxWorkers) {
        return make_error(EINVAL, "number of parallel requests must be between 1 and %d", kCopyMaxWorkers);
    }
    if (opts_.alignment < 1) return make_error(EINVAL, "copy alignment must be positive");
    align_ = opts_.alignment;
    if (opts_.sparse_size < 0 || opts_.sparse_size % kSector) {
        return make_error(EINVAL, "sparse size must be a multiple of 512");
    }
    chunk_size_ = opts_.chunk_size > 0 ? opts_.chunk_size : kDefaultChunk;
    if (opts_.compress) chunk_size_ = std::max<int64_t>(align_, align_down(chunk_size_, align_));
    if (chunk_size_ < opts_.sparse_size) chunk_size_ = align_up(opts_.sparse_size, kSector);
    for (const CopySource &s : srcs_) {
        int64_t bl = s.blk->getlength();
        if (bl < 0) return make_error(static_cast<int>(-bl), "could not get the length of '%s'", s.name.c_str());
        int64_t l = s.length >= 0 ? s.length : bl;
        src_start_.push_back(total_);
        src_len_.push_back(l);
        blk_len_.push_back(bl);
        total_ += l;
    }
    if (opts_.read_only) {
        if (opts_.compress || diffing()) return make_error(EINVAL, "a read-only copy cannot compress or compare");
    } else if (!dst_ || dst_->getlength() < total_) {
        if (!dst_) return make_error(EINVAL, "no destination");
        return make_error(EINVAL, "destination too short: %lld bytes for %lld bytes of data",
                          static_cast<long long>(dst_->getlength()), static_cast<long long>(total_));
    }
    progress_.total = total_;
    return {};
}

// Status of source i at soff for at most max bytes; sets *kind and *n.
int CopyRun::plan_status(size_t i, int64_t soff, int64_t max, ChunkKind *kind, int64_t *n)
{
    const CopySource &s = srcs_[i];
    if (cache_src_ == i && soff >= cache_start_ && soff < cache_end_) {
        *kind = cache_kind_;
        *n = std::min(max, cache_end_ - soff);
        return 0;
    }
    if (soff >= blk_len_[i]) {
        // Past the backend's end: zeros.
        *kind = ChunkKind::kZero;
        *n = max;
        return 0;
    }
    int64_t want = std::min(max, blk_len_[i] - soff);
    int64_t pnum = 0;
    ChunkKind k;
    if (opts_.sparse_size == 0 && !s.top_only && !s.base && !s.allocated_only) {
        // No scanning: every byte is written as data.
        k = ChunkKind::kData;
        pnum = want;
    } else {
        int ret;
        if (s.top_only) {
            ret = s.blk->co_block_status(opts_.sparse_size > 0, soff, want, &pnum, nullptr, nullptr);
        } else {
            ret = s.blk->co_block_status_above(s.base, opts_.sparse_size > 0, soff, want, &pnum, nullptr, nullptr,
                                               nullptr);
        }
        if (ret < 0) return ret;
        if (pnum <= 0) {
            k = ChunkKind::kZero;
            pnum = want;
        } else if ((s.top_only || s.base || s.allocated_only) && !(ret & kStatusAllocated)) {
            k = ChunkKind::kSkip;
        } else if (ret & kStatusZero) {
            k = ChunkKind::kZero;
        } else {
            k = ChunkKind::kData;
        }
    }
    cache_src_ = i;
    cache_start_ = soff;
    cache_end_ = soff + pnum;
    cache_kind_ = k;
    *kind = k;
    *n = std::min(max, pnum);
    return 0;
}

bool CopyRun::plan(Chunk *c)
{
    CoMutexGuard g(plan_lock_);
    if (failed_.load() || next_offset_ >= total_) return false;
    size_t i = 0;
    while (i + 1 < srcs_.size() && next_offset_ >= src_start_[i] + src_len_[i]) i++;
    const int64_t src_end = src_start_[i] + src_len_[i];   // destination offset
    const int64_t soff = next_offset_ - src_start_[i];
    int64_t max = std::min(src_end - next_offset_, kMaxNoDataChunk);
    ChunkKind kind;
    int64_t n;
    int ret = plan_status(i, soff, max, &kind, &n);
    if (ret < 0) {
        fail(make_error(-ret, "error while reading block status at byte %lld of '%s': %s",
                        static_cast<long long>(soff), srcs_[i].name.c_str(), std::strerror(-ret)));
        return false;
    }
    if (opts_.sparse_size == 0 && kind == ChunkKind::kZero) kind = ChunkKind::kData;
    if (kind != ChunkKind::kSkip && opts_.skip_allocated_in) {
        int64_t pnum = 0;
        int r = opts_.skip_allocated_in->co_block_status(false, next_offset_, n, &pnum, nullptr, nullptr);
        if (r < 0) {
            fail(make_error(-r, "error while reading block status at byte %lld of '%s': %s",
                            static_cast<long long>(next_offset_), opts_.skip_allocated_in->filename().c_str(),
                            std::strerror(-r)));
            return false;
        }
        if (pnum > 0) {
            n = std::min(n, pnum);
            if (r & kStatusAllocated) kind = ChunkKind::kSkip;
        }
    }
    if ((diffing() || opts_.read_only) && kind == ChunkKind::kZero) kind = ChunkKind::kData;
    if (kind == ChunkKind::kData) n = std::min(n, chunk_size_);

    int64_t end = next_offset_ + n;
    if (align_ > 1 && end < src_end) {
        int64_t a = align_down(end, align_);
        if (a > next_offset_) {
            end = a;
        } else if (opts_.compress && kind != ChunkKind::kSkip) {
            // A compressed cluster is written whole: read what it holds.
            end = std::min(align_up(next_offset_ + 1, align_), src_end);
            kind = ChunkKind::kData;
        }
    }
    c->seq = next_seq_++;
    c->src = i;
    c->src_offset = soff;
    c->dst_offset = next_offset_;
    c->bytes = end - next_offset_;
    c->kind = kind;
    next_offset_ = end;
    return true;
}

int CopyRun::read_source(const Chunk &c, uint8_t *buf, Error *e)
{
    const CopySource &s = srcs_[c.src];
    int64_t in = std::max<int64_t>(0, std::min(c.bytes, blk_len_[c.src] - c.src_offset));
    if (in > 0) {
        int ret = s.blk->co_pread(c.src_offset, in, buf, s.read_flags);
        if (ret < 0 && opts_.salvage) ret = salvage_source(c, in, buf);
        if (ret < 0) {
            *e = make_error(-ret, "error while reading at byte %lld of '%s': %s", static_cast<long long>(c.src_offset),
                            s.name.c_str(), std::strerror(-ret));
            return ret;
        }
        std::lock_guard<std::mutex> g(mu_);
        stats_.bytes_read += in;
    }
    if (in < c.bytes) std::memset(buf + in, 0, static_cast<size_t>(c.bytes - in));
    return 0;
}

// The chunk's read failed: sector by sector, unreadable ones as zeros.
int CopyRun::salvage_source(const Chunk &c, int64_t in, uint8_t *buf)
{
    const CopySource &s = srcs_[c.src];
    for (int64_t pos = 0; pos < in; pos += kSector) {
        const int64_t n = std::min(kSector, in - pos);
        int ret = s.blk->co_pread(c.src_offset + pos, n, buf + pos, s.read_flags);
        if (ret >= 0) continue;
        std::memset(buf + pos, 0, static_cast<size_t>(n));
        std::lock_guard<std::mutex> g(mu_);
        stats_.bytes_salvaged += n;
        if (opts_.salvaged) opts_.salvaged(c.dst_offset + pos, -ret);
    }
    return 0;
}

int CopyRun::read_diff_base(int64_t offset, int64_t bytes, uint8_t *buf, Error *e)
{
    BlockBackend *b = opts_.diff_against;
    if (!b) {
        std::memset(buf, 0, static_cast<size_t>(bytes));
        return 0;
    }
    int64_t len = b->getlength();
    int64_t in = std::max<int64_t>(0, std::min(bytes, len - offset));
    if (in > 0) {
        int ret = b->co_pread(offset, in, buf);
        if (ret < 0) {
            *e = make_error(-ret, "error while reading at byte %lld of '%s': %s", static_cast<long long>(offset),
                            b->node() ? b->node()->filename().c_str() : "", std::strerror(-ret));
            return ret;
        }
    }
    if (in < bytes) std::memset(buf + in, 0, static_cast<size_t>(bytes - in));
    return 0;
}

int CopyRun::write_data(int64_t offset, int64_t bytes, uint8_t *buf, Error *e)
{
    int ret = dst_->co_pwrite(offset, bytes, buf, opts_.compress ? kReqWriteCompressed : 0);
    if (ret < 0) {
        *e = make_error(-ret, "error while writing at byte %lld of '%s': %s", static_cast<long long>(offset),
                        dst_name().c_str(), std::strerror(-ret));
        return ret;
    }
    std::lock_guard<std::mutex> g(mu_);
    stats_.bytes_written += bytes;
    return 0;
}

int CopyRun::write_zero_range(int64_t offset, int64_t bytes, Error *e)
{
    if (opts_.dest_is_zero) {
        std::lock_guard<std::mutex> g(mu_);
        stats_.bytes_skipped += bytes;
        return 0;
    }
    int ret = dst_->co_pwrite_zeroes(offset, bytes, kReqMayUnmap);
    if (ret < 0) {
        *e = make_error(-ret, "error while writing at byte %lld of '%s': %s", static_cast<long long>(offset),
                        dst_name().c_str(), std::strerror(-ret));
        return ret;
    }
    std::lock_guard<std::mutex> g(mu_);
    stats_.bytes_zeroed += bytes;
    return 0;
}

int CopyRun::write_chunk(const Chunk &c, uint8_t *buf, uint8_t *cmp, Error *e)
{
    switch (c.kind) {
    case ChunkKind::kSkip: {
        std::lock_guard<std::mutex> g(mu_);
        stats_.bytes_skipped += c.bytes;
        return 0;
    }
    case ChunkKind::kZero:
        if (opts_.read_only) return 0;
        return write_zero_range(c.dst_offset, c.bytes, e);
    case ChunkKind::kData:
        break;
    }
    if (opts_.read_only) return 0;
    if (cmp) {
        // Only what differs from the comparison backend.
        int64_t pos = 0;
        while (pos < c.bytes) {
            bool same;
            int64_t run = compare_sectors(buf + pos, cmp + pos, c.bytes - pos, &same);
            if (same) {
                std::lock_guard<std::mutex> g(mu_);
                stats_.bytes_skipped += run;
            } else {
                int ret = write_data(c.dst_offset + pos, run, buf + pos, e);
                if (ret < 0) return ret;
            }
            pos += run;
        }
        return 0;
    }
    if (opts_.compress) {
        for (int64_t pos = 0; pos < c.bytes; pos += align_) {
            int64_t len = std::min(align_, c.bytes - pos);
            int ret = buffer_is_zero(buf + pos, static_cast<size_t>(len))
                          ? write_zero_range(c.dst_offset + pos, len, e)
                          : write_data(c.dst_offset + pos, len, buf + pos, e);
            if (ret < 0) return ret;
        }
        return 0;
    }
    if (opts_.sparse_size == 0 || !opts_.scan_data_for_zeroes) return write_data(c.dst_offset, c.bytes, buf, e);
    // Sparse: runs of zero sectors of at least sparse_size bytes are not
    // written as data; shorter ones are part of the surrounding data.
    int64_t pos = 0, data_start = -1;
    while (pos < c.bytes) {
        int64_t zlen = 0;
        while (pos + zlen < c.bytes) {
            int64_t s = std::min(kSector, c.bytes - pos - zlen);
            if (!buffer_is_zero(buf + pos + zlen, static_cast<size_t>(s))) break;
            zlen += s;
        }
        if (zlen >= opts_.sparse_size || (zlen > 0 && pos + zlen == c.bytes && data_start < 0)) {
            if (data_start >= 0) {
                int ret = write_data(c.dst_offset + data_start, pos - data_start, buf + data_start, e);
                if (ret < 0) return ret;
                data_start = -1;
            }
            int ret = write_zero_range(c.dst_offset + pos, zlen, e);
            if (ret < 0) return ret;
            pos += zlen;
            continue;
        }
        if (data_start < 0) data_start = pos;
        pos += zlen > 0 ? zlen : std::min(kSector, c.bytes - pos);
    }
    if (data_start >= 0) return write_data(c.dst_offset + data_start, c.bytes - data_start, buf + data_start, e);
    return 0;
}

CopyErrorAction CopyRun::io_error(const Chunk &c, bool is_read, int ret, Error e)
{
    CopyErrorAction a = CopyErrorAction::kFail;
    if (opts_.on_error && !failed_.load()) {
        a = opts_.on_error(CopyIoError{c.dst_offset, c.bytes, is_read, -ret, e.msg});
    }
    if (a == CopyErrorAction::kFail) fail(std::move(e));
    return a;
}

bool CopyRun::pre_chunk(int64_t data_bytes)
{
    if (!opts_.before_chunk) return true;
    int r = opts_.before_chunk(data_bytes);
    if (r >= 0) return !failed_.load();
    fail(make_error(-r, "%s", std::strerror(-r)));
    return false;
}

void CopyRun::worker()
{
    AlignedBuf buf, cmp;
    Chunk c;
    while (plan(&c)) {
        // Read (data chunks), retried as the error hook says.
        bool skip = false;
        for (int attempt = 0;; attempt++) {
            if (!pre_chunk(attempt == 0 && c.kind == ChunkKind::kData ? c.bytes : 0)) return;
            if (c.kind != ChunkKind::kData) break;
            if (limit_.enabled() && attempt == 0) {
                const int64_t wait = limit_.account(static_cast<uint64_t>(c.bytes), clock_ns());
                if (wait > 0) co_sleep_ns(wait);
                if (failed_.load()) return;
            }
            if (!buf) buf = aligned_alloc_buf(4096, static_cast<size_t>(chunk_size_));
            Error e;
            int ret = read_source(c, buf.get(), &e);
            if (ret >= 0 && diffing()) {
                if (!cmp) cmp = aligned_alloc_buf(4096, static_cast<size_t>(chunk_size_));
                ret = read_diff_base(c.dst_offset, c.bytes, cmp.get(), &e);
            }
            if (ret >= 0) break;
            CopyErrorAction a = io_error(c, true, ret, std::move(e));
            if (a == CopyErrorAction::kFail) return;
            if (a == CopyErrorAction::kSkip) {
                skip = true;
                break;
            }
        }
        if (ordered_) {
            write_lock_.lock();
            while (!failed_.load() && write_seq_ != c.seq) write_queue_.wait(&write_lock_);
            write_lock_.unlock();
            if (failed_.load()) return;
        }
        bool ok = true;
        while (!skip) {
            Error e;
            int ret = write_chunk(c, buf.get(), diffing() ? cmp.get() : nullptr, &e);
            if (ret >= 0) break;
            CopyErrorAction a = io_error(c, false, ret, std::move(e));
            if (a == CopyErrorAction::kFail) {
                ok = false;
                break;
            }
            if (a == CopyErrorAction::kSkip) break;
            if (!pre_chunk(0)) {
                ok = false;
                break;
            }
        }
        if (ordered_) {
            write_lock_.lock();
            write_seq_++;
            write_lock_.unlock();
            write_queue_.restart_all();
        }
        if (!ok) return;
        std::lock_guard<std::mutex> g(mu_);
        progress_.done += c.bytes;
        if (opts_.progress) opts_.progress(progress_);
    }
}

void CopyRun::worker_entry(void *opaque)
{
    auto *run = static_cast<CopyRun *>(opaque);
    run->worker();
    // The last worker wakes the caller (possibly in another thread).
    if (run->running_.fetch_sub(1) == 1) aio_co_wake(run->waiter_);
}

void CopyRun::run()
{
    AioContext *home = AioContext::current();
    const int n = opts_.max_workers;
    ordered_ = !opts_.out_of_order && !opts_.compress;
    if (n == 1 && opts_.contexts.empty()) {
        // One worker: the caller's coroutine is the worker (the hooks then
        // run in it).
        ordered_ = false;
        worker();
    } else {
        waiter_ = coroutine_self();
        running_.store(n);
        for (int i = 0; i < n; i++) {
            AioContext *ctx =
                opts_.contexts.empty() ? home : opts_.contexts[static_cast<size_t>(i) % opts_.contexts.size()];
            ctx->co_schedule(coroutine_create(&CopyRun::worker_entry, this));
        }
        coroutine_yield();
    }
    std::lock_guard<std::mutex> g(mu_);
    if (!failed_.load() && opts_.progress && progress_.done != total_) {
        progress_.done = total_;
        opts_.progress(progress_);
    }
}

} // namespace

int64_t compare_sectors(const uint8_t *a, const uint8_t *b, int64_t len, bool *same)
{
    int64_t first = std::min(len, kSector);
    bool s = std::memcmp(a, b, static_cast<size_t>(first)) == 0;
    int64_t i = first;
    while (i < len) {
        int64_t l = std::min(len - i, kSector);
        if ((std::memcmp(a + i, b + i, static_cast<size_t>(l)) == 0) != s) break;
        i += l;
    }
    *same = s;
    return i;
}

Result<CopyStats> co_copy(const std::vector<CopySource> &sources, BlockBackend *dst, const CopyOptions &opts)
{
    if (sources.empty()) return CopyStats{};
    CopyRun run(sources, dst, opts);
    BG_TRY(run.setup());
    run.run();
    if (run.failed()) return run.error();
    return run.stats();
}

Result<CopyStats> copy_sync(const std::vector<CopySource> &sources, BlockBackend *dst, const CopyOptions &opts)
{
    return run_in_coroutine([&]() { return co_copy(sources, dst, opts); });
}

} // namespace bg

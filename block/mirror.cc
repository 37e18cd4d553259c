// block/mirror.cc -- the mirror job (blockdev-mirror) and active commit,
// with the mirror_top filter they insert above the source.
//
// How it works. The start function opens a mirror_top filter on the source
// and moves every parent of the source (exports, parent nodes) onto it.
// The filter forwards all I/O; every write, write-zeroes and discard it
// forwards is recorded, once it completed, in the job's dirty bitmap (one
// bit per granularity bytes). The job first marks what the sync mode asks
// to copy (full: everything; top: what the source's own layer allocates;
// active commit: what lies above base; none: nothing), then copies dirty
// chunks source -> target, up to buf-size bytes in flight, each chunk a run
// of dirty granules of at most max(buf-size / 16, 1 MiB). A chunk's bits
// are cleared before it is read, so a write that lands meanwhile marks it
// again and it is copied once more. Copies and write-blocking guest writes
// are "operations" over a byte range; one never starts while an
// overlapping one runs, so an older copy cannot overwrite newer data.
//
// With the bitmap empty, nothing in flight and the target flushed the job
// is READY and keeps copying new writes (polling every 100 ms). job-complete
// drains the filter, copies what is left, and the finalization (prepare())
// removes the filter and moves every parent of `replaces` onto the target.
// A soft cancel of a ready job ends the same way without that switch (the
// target is a consistent copy of the source at that moment); a force
// cancel or a failure removes the filter only.
//
// copy-mode=write-blocking: a guest write through the filter waits for
// operations over its range, goes to the source, then the same data goes
// to the target, and the granules it covers entirely are clean; a failed
// target write marks them dirty (and actively-synced turns false).
//
// mirror_top is not user-creatable: its open() only succeeds while this
// file creates one (blockdev-add gets QEMU's "does not accept value").
//
// Threading model: main loop only (the job's coroutines and the filter's
// requests all run in the main AioContext).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <mutex>

#include "block/block-driver.h"
#include "block/jobs.h"

namespace bg {

namespace {

constexpr int64_t kDefaultBufSize = 16 << 20;
constexpr int64_t kMaxChunk = 1 << 20;
constexpr int64_t kMaxInFlight = 16;
constexpr int64_t kReadyPollNs = 100000000;   // 100 ms, as QEMU's slice

class MirrorJob;

// One bit per granule of the source.
class Bitmap {
  public:
    void init(int64_t length, int64_t granularity)
    {
        std::lock_guard<std::mutex> g(lock_);
        gran_ = granularity;
        length_ = length;
        nbits_ = (length + granularity - 1) / granularity;
        words_.assign(static_cast<size_t>((nbits_ + 63) / 64), 0);
        count_ = 0;
    }
    int64_t granularity() const { return gran_; }
    int64_t nbits() const { return nbits_; }
    void set(int64_t off, int64_t bytes) { change(off, bytes, true, false); }
    // Clears the granules [off, off+bytes) touches (whole ones only if inner).
    void clear(int64_t off, int64_t bytes, bool whole_only = false) { change(off, bytes, false, whole_only); }
    bool get(int64_t bit)
    {
        std::lock_guard<std::mutex> g(lock_);
        return get_locked(bit);
    }
    // Dirty bytes.
    int64_t count_bytes()
    {
        std::lock_guard<std::mutex> g(lock_);
        return std::min(count_ * gran_, length_);
    }
    // First dirty bit at or after from (wrapping), -1 if none.
    int64_t next_dirty(int64_t from)
    {
        std::lock_guard<std::mutex> g(lock_);
        if (count_ == 0) return -1;
        for (int pass = 0; pass < 2; pass++) {
            int64_t b = pass ? 0 : from;
            int64_t end = pass ? from : nbits_;
            while (b < end) {
                uint64_t w = words_[static_cast<size_t>(b / 64)] >> (b % 64);
                if (w == 0) {
                    b = (b / 64 + 1) * 64;
                    continue;
                }
                b += __builtin_ctzll(w);
                return b < end ? b : -1;
            }
        }
        return -1;
    }

  private:
    bool get_locked(int64_t bit) const { return (words_[static_cast<size_t>(bit / 64)] >> (bit % 64)) & 1; }
    void change(int64_t off, int64_t bytes, bool value, bool whole_only)
    {
        std::lock_guard<std::mutex> g(lock_);
        if (bytes <= 0 || gran_ == 0 || off >= length_) return;
        int64_t first = off / gran_;
        int64_t last = (std::min(off + bytes, length_) - 1) / gran_;
        if (whole_only) {
            if (off % gran_) first++;
            int64_t end = off + bytes;
            if (end < length_ && end % gran_) last--;
        }
        for (int64_t b = first; b <= last && b < nbits_; b++) {
            uint64_t &w = words_[static_cast<size_t>(b / 64)];
            uint64_t m = uint64_t(1) << (b % 64);
            bool cur = (w & m) != 0;
            if (cur == value) continue;
            if (value) {
                w |= m;
                count_++;
            } else {
                w &= ~m;
                count_--;
            }
        }
    }
    std::mutex lock_;
    int64_t gran_ = 0, length_ = 0, nbits_ = 0, count_ = 0;
    std::vector<uint64_t> words_;
};

// What open() of a mirror_top node needs; set only by this file around
// its own add_node_json() (so that blockdev-add cannot create one).
struct MirrorTopConfig {
    bool is_commit = false;
};
MirrorTopConfig *g_opening = nullptr;

struct MirrorTopOptions : DriverOptionsOf<MirrorTopOptions> {
    BlockdevRef file;
    void encode(nlohmann::json &j) const override { put_ref(j, "file", file); }
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override { fn("file", file); }
};

Result<std::unique_ptr<DriverOptions>> decode_mirror_top_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<MirrorTopOptions>();
    BG_TRY(r.get_ref("file", &o->file, OptionReader::RefMode::kRequired));
    return std::unique_ptr<DriverOptions>(std::move(o));
}

enum class WriteKind { kData, kZeroes, kDiscard };

class MirrorTopNode final : public FilterNode {
  public:
    MirrorJob *job_ = nullptr;
    bool is_commit_ = false;

  protected:
    Status open(const BlockdevOptions &opts) override
    {
        if (!g_opening) return make_error(EINVAL, "Parameter 'driver' does not accept value 'mirror_top'");
        is_commit_ = g_opening->is_commit;
        const auto *o = opts.as<MirrorTopOptions>();
        if (!o) return node_error(EINVAL, "options are not mirror_top options");
        BG_TRY(open_filtered("file", o->file));
        return {};
    }

    void child_perm(ChildRole role, BlockPerm parent_perm, BlockPerm parent_shared, BlockPerm *nperm,
                    BlockPerm *nshared) override
    {
        (void)role;
        // The job reads the source through this edge. Active commit writes
        // base, below the source: writes must be shared down the chain.
        *nperm = parent_perm | kPermConsistentRead;
        *nshared = parent_shared;
        if (is_commit_) *nshared |= kPermWrite | kPermResize;
    }

    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override;

    // The job copies a source of a fixed length (QEMU's job unshares
    // RESIZE on it).
    int coroutine_fn do_co_truncate(int64_t, bool, PreallocMode, ReqFlags) override { return -EPERM; }

    // The kernel writing the host file would bypass the bitmap.
    int do_passthrough_fd(bool write, std::string *why) override
    {
        (void)write;
        *why = "node '" + node_name() + "' (mirror_top) records the writes of a block job";
        return -1;
    }

  private:
    int coroutine_fn write(WriteKind kind, int64_t offset, int64_t bytes, IOVector *qiov, ReqFlags flags);
};

std::unique_ptr<BlockNode> create_mirror_top() { return std::make_unique<MirrorTopNode>(); }

// A range being copied (background) or written through (write-blocking).
struct Op {
    int64_t offset, bytes;
    bool active;   // a guest write in write-blocking mode
};

class MirrorJob final : public Job {
  public:
    MirrorJob(JobManager &mgr, const JobCommonOptions &common, BlockGraph &graph, bool is_commit)
        : Job(mgr, common), graph_(graph), is_commit_(is_commit)
    {
    }
    ~MirrorJob() override
    {
        if (filter_) filter_->job_ = nullptr;
    }

    const char *type() const override { return is_commit_ ? "commit" : "mirror"; }
    void block(BlockNode *n) { block_node(n); }
    void remove_filter();

    BlockGraph &graph_;
    bool is_commit_;
    BlockNode *source_ = nullptr, *target_ = nullptr;
    BlockNode *base_ = nullptr;          // copy only what lies above it (top, commit); nullptr: all
    MirrorTopNode *filter_ = nullptr;
    std::string replaces_;
    MirrorSync sync_ = MirrorSync::kFull;
    int64_t granularity_ = 0, buf_size_ = 0, max_chunk_ = 0;
    MirrorCopyMode copy_mode_ = MirrorCopyMode::kBackground;
    BlockdevOnError on_source_error_ = BlockdevOnError::kReport, on_target_error_ = BlockdevOnError::kReport;
    bool unmap_ = true;
    bool base_was_ro_ = false;
    std::unique_ptr<BlockBackend> target_blk_;

    Bitmap bitmap_;
    std::list<Op> ops_;
    CoQueue ops_changed_;
    int64_t in_flight_bytes_ = 0;
    int in_flight_copies_ = 0;
    int64_t cursor_ = 0;
    int failed_ret_ = 0;
    bool should_complete_ = false;
    bool drained_ = false;               // run() left the filter drained for prepare()
    bool actively_synced_ = false;
    bool recording_ = false;

    // The filter's recording of a completed write.
    void mark(int64_t offset, int64_t bytes)
    {
        if (recording_) bitmap_.set(offset, bytes);
    }
    bool write_blocking() const { return copy_mode_ == MirrorCopyMode::kWriteBlocking; }

    bool overlaps(int64_t offset, int64_t bytes) const
    {
        for (const Op &o : ops_) {
            if (o.offset < offset + bytes && offset < o.offset + o.bytes) return true;
        }
        return false;
    }
    void coroutine_fn wait_conflicts(int64_t offset, int64_t bytes)
    {
        while (overlaps(offset, bytes)) ops_changed_.wait();
    }
    void end_op(std::list<Op>::iterator it)
    {
        ops_.erase(it);
        ops_changed_.restart_all();
    }

    // A guest write in write-blocking mode (the filter's request coroutine).
    int coroutine_fn active_write(BdrvChild *src, WriteKind kind, int64_t offset, int64_t bytes, IOVector *qiov,
                                  ReqFlags flags)
    {
        wait_conflicts(offset, bytes);
        auto it = ops_.insert(ops_.end(), Op{offset, bytes, true});
        int r = kind == WriteKind::kData     ? src->co_pwritev(offset, bytes, *qiov, flags)
                : kind == WriteKind::kZeroes ? src->co_pwrite_zeroes(offset, bytes, flags)
                                             : src->co_pdiscard(offset, bytes);
        if (r < 0 || kind == WriteKind::kDiscard || !recording_ || !target_blk_) {
            // Discarded data is unspecified on both: let the copy settle it.
            mark(offset, bytes);
            end_op(it);
            return r;
        }
        int t = kind == WriteKind::kData
                    ? target_blk_->co_pwritev(offset, bytes, *qiov, flags & kReqFua)
                    : target_blk_->co_pwrite_zeroes(offset, bytes, unmap_ ? (flags & kReqMayUnmap) : 0);
        if (t < 0) {
            bitmap_.set(offset, bytes);
            actively_synced_ = false;
        } else {
            // Granules partly written keep their state: clean ones were
            // equal before and got the same bytes on both sides.
            bitmap_.clear(offset, bytes, true);
        }
        end_op(it);
        return r;
    }

  protected:
    int coroutine_fn run() override;
    Status prepare() override;
    void abort() override;
    void clean() override { target_blk_.reset(); }
    Status do_complete() override
    {
        if (!replaces_.empty() && !graph_.find(replaces_)) {
            return make_error(ENOENT, "Node name '%s' not found", replaces_.c_str());
        }
        should_complete_ = true;
        return {};
    }
    bool soft_cancel() override { return true; }
    Status do_change(const nlohmann::json &opts) override
    {
        if (!opts.contains("copy-mode")) return {};
        const std::string m = opts["copy-mode"].is_string() ? opts["copy-mode"].get<std::string>() : "";
        if (m != "write-blocking" && m != "background") {
            return make_error(EINVAL, "Parameter 'copy-mode' does not accept value '%s'", m.c_str());
        }
        // QEMU 8.2's texts: only background -> write-blocking.
        if (m != "write-blocking") return make_error(EINVAL, "Change to copy mode '%s' is not implemented", m.c_str());
        if (write_blocking()) {
            return make_error(EINVAL, "Expected current copy mode 'background', got 'write-blocking'");
        }
        copy_mode_ = MirrorCopyMode::kWriteBlocking;
        return {};
    }
    void query_extra(nlohmann::json &j) const override
    {
        if (!is_commit_) j["actively-synced"] = actively_synced_ && write_blocking() && is_ready();
    }

  private:
    int coroutine_fn init_bitmap();
    bool coroutine_fn issue_chunk();
    static void copy_entry(void *opaque);
    void coroutine_fn copy_op(std::list<Op>::iterator it);
    void restore_base_ro();
};

int coroutine_fn MirrorTopNode::write(WriteKind kind, int64_t offset, int64_t bytes, IOVector *qiov, ReqFlags flags)
{
    MirrorJob *j = job_;
    if (j && j->write_blocking()) return j->active_write(filtered_, kind, offset, bytes, qiov, flags);
    int r = kind == WriteKind::kData     ? filtered_->co_pwritev(offset, bytes, *qiov, flags)
            : kind == WriteKind::kZeroes ? filtered_->co_pwrite_zeroes(offset, bytes, flags)
                                         : filtered_->co_pdiscard(offset, bytes);
    // Recorded once done (also when it failed: the data is unknown), so a
    // copy that cleared the bits before reading copies it again.
    if (job_) job_->mark(offset, bytes);
    return r;
}

int coroutine_fn MirrorTopNode::do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    return write(WriteKind::kData, offset, bytes, &qiov, flags);
}

int coroutine_fn MirrorTopNode::do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags)
{
    return write(WriteKind::kZeroes, offset, bytes, nullptr, flags);
}

int coroutine_fn MirrorTopNode::do_co_pdiscard(int64_t offset, int64_t bytes)
{
    return write(WriteKind::kDiscard, offset, bytes, nullptr, 0);
}

// ---------------------------------------------------------------- the job

int coroutine_fn MirrorJob::init_bitmap()
{
    const int64_t len = source_->getlength();
    if (sync_ == MirrorSync::kNone) return 0;
    if (sync_ == MirrorSync::kFull && !base_) {
        bitmap_.set(0, len);
        return 0;
    }
    // What the layers above base allocate.
    for (int64_t off = 0; off < len;) {
        if (is_cancelled()) return -ECANCELED;
        int64_t pnum = 0;
        int r = source_->co_block_status_above(base_, false, off, len - off, &pnum, nullptr, nullptr, nullptr);
        if (r < 0) return r;
        if (pnum <= 0) break;
        if (r & kStatusAllocated) bitmap_.set(off, pnum);
        off += pnum;
    }
    return 0;
}

void MirrorJob::copy_entry(void *opaque)
{
    auto *p = static_cast<std::pair<MirrorJob *, std::list<Op>::iterator> *>(opaque);
    MirrorJob *j = p->first;
    auto it = p->second;
    delete p;
    j->copy_op(it);
}

// Copies one chunk (its bits already cleared) source -> target.
void coroutine_fn MirrorJob::copy_op(std::list<Op>::iterator it)
{
    const int64_t off = it->offset, bytes = it->bytes;
    int r = 0;
    bool zero = false;
    {
        int64_t pnum = 0;
        int st = source_->co_block_status_above(base_, true, off, bytes, &pnum, nullptr, nullptr, nullptr);
        zero = st >= 0 && (st & kStatusZero) && pnum >= bytes && (!base_ || (st & kStatusAllocated));
    }
    if (zero) {
        r = target_blk_->co_pwrite_zeroes(off, bytes, unmap_ ? kReqMayUnmap : 0);
        if (r < 0) {
            BlockErrorAction a = error_action(on_target_error_, false, r);
            if (a == BlockErrorAction::kReport) failed_ret_ = r;
            bitmap_.set(off, bytes);
        }
    } else {
        AlignedBuf buf = aligned_alloc_buf(4096, static_cast<size_t>(bytes));
        IOVector qiov(buf.get(), static_cast<size_t>(bytes));
        r = filter_->filtered_child()->co_preadv(off, bytes, qiov);
        if (r < 0) {
            BlockErrorAction a = error_action(on_source_error_, true, r);
            if (a == BlockErrorAction::kReport) failed_ret_ = r;
            bitmap_.set(off, bytes);
        } else {
            r = target_blk_->co_pwritev(off, bytes, qiov);
            if (r < 0) {
                BlockErrorAction a = error_action(on_target_error_, false, r);
                if (a == BlockErrorAction::kReport) failed_ret_ = r;
                bitmap_.set(off, bytes);
            }
        }
    }
    if (r >= 0) progress_add(bytes);
    in_flight_bytes_ -= bytes;
    in_flight_copies_--;
    end_op(it);
}

// Starts the copy of the next dirty chunk. False if there is none that
// can start now (nothing dirty, or it waited for a conflict: look again).
bool coroutine_fn MirrorJob::issue_chunk()
{
    int64_t bit = bitmap_.next_dirty(cursor_);
    if (bit < 0) return false;
    const int64_t len = source_->getlength();
    int64_t off = bit * granularity_;
    int64_t end = std::min(off + granularity_, len);
    while (end < len && end - off + granularity_ <= max_chunk_ && bitmap_.get(end / granularity_)) {
        end = std::min(end + granularity_, len);
    }
    int64_t bytes = end - off;
    if (overlaps(off, bytes)) {
        ops_changed_.wait();
        return true;
    }
    rate_limit(bytes);
    if (is_cancelled()) return false;
    // Paused or slept: the chunk may have changed meanwhile.
    if (overlaps(off, bytes) || !bitmap_.get(bit)) return true;
    bitmap_.clear(off, bytes);
    cursor_ = end / granularity_;
    if (cursor_ >= bitmap_.nbits()) cursor_ = 0;
    auto it = ops_.insert(ops_.end(), Op{off, bytes, false});
    in_flight_bytes_ += bytes;
    in_flight_copies_++;
    Coroutine *co = coroutine_create(&MirrorJob::copy_entry, new std::pair<MirrorJob *, std::list<Op>::iterator>(this, it));
    AioContext::current()->co_schedule(co);
    return true;
}

int coroutine_fn MirrorJob::run()
{
    const int64_t len = source_->getlength();
    if (is_commit_ && target_->getlength() < len) {
        int r = target_blk_->co_truncate(len, false, PreallocMode::kOff, 0);
        if (r < 0) {
            set_error(std::string("Could not resize base: ") + strerror(-r));
            return r;
        }
    }
    int r = init_bitmap();
    if (r < 0) return r;
    progress_set_total(bitmap_.count_bytes());
    int ret = 0;
    for (;;) {
        if (is_cancelled()) {
            ret = -ECANCELED;
            break;
        }
        if (failed_ret_) {
            ret = failed_ret_;
            break;
        }
        int64_t dirty = bitmap_.count_bytes();
        progress_set_total(progress_current() + dirty + in_flight_bytes_);
        if (dirty > 0 && in_flight_bytes_ < buf_size_ && !paused()) {
            if (issue_chunk()) continue;
        }
        if (in_flight_copies_ > 0) {
            ops_changed_.wait();
            pause_point();
            continue;
        }
        if (dirty > 0) {
            // Everything dirty is held by write-blocking writes, or paused.
            sleep_ns(0);
            continue;
        }
        // In sync.
        if (write_blocking()) actively_synced_ = true;
        if (!is_ready()) {
            int f = target_blk_->co_flush();
            if (f < 0) {
                if (error_action(on_target_error_, false, f) == BlockErrorAction::kReport) {
                    ret = f;
                    break;
                }
                pause_point();
                continue;
            }
            actively_synced_ = write_blocking();
            set_ready();
        }
        if (should_complete_ || cancel_requested()) {
            // No more guest writes: copy what they left, then finish.
            filter_->drained_begin();
            drained_ = true;
            if (bitmap_.count_bytes() > 0) {
                filter_->drained_end();
                drained_ = false;
                continue;
            }
            int f = target_blk_->co_flush();
            if (f < 0) {
                filter_->drained_end();
                drained_ = false;
                if (error_action(on_target_error_, false, f) == BlockErrorAction::kReport) {
                    ret = f;
                    break;
                }
                pause_point();
                continue;
            }
            break;
        }
        sleep_ns(kReadyPollNs);
    }
    while (in_flight_copies_ > 0) ops_changed_.wait();
    if (ret < 0 && drained_) {
        filter_->drained_end();
        drained_ = false;
    }
    if (ret == 0 && is_cancelled()) ret = -ECANCELED;
    return ret;
}

// Takes the filter out: its parents go back to the source. Nothing may
// be in flight through it (the caller drained the source).
void MirrorJob::remove_filter()
{
    if (!filter_) return;
    recording_ = false;
    filter_->job_ = nullptr;
    Status s = graph_.replace_node(filter_, source_);
    if (!s.ok()) fprintf(stderr, "mirror: could not remove the filter: %s\n", s.error().msg.c_str());
    if (drained_) {
        filter_->drained_end();
        drained_ = false;
    }
    std::string name = filter_->node_name();
    filter_ = nullptr;
    if (s.ok()) (void)graph_.remove_node(name);
}

void MirrorJob::restore_base_ro()
{
    if (base_was_ro_ && target_ && !target_->read_only()) {
        target_blk_.reset();
        (void)graph_.set_read_only(target_, true);
    }
    base_was_ro_ = false;
}

Status MirrorJob::prepare()
{
    BlockNode *src = source_;
    src->drained_begin();
    // The job's writer of the target goes before the graph changes (as
    // QEMU's mirror_exit_common): once the filter is gone, the chain above
    // an active commit's base no longer shares WRITE on it.
    target_blk_.reset();
    remove_filter();
    Status st;
    if (should_complete_ && !cancel_requested()) {
        BlockNode *rep = replaces_.empty() ? src : graph_.find(replaces_);
        if (!rep) {
            st = make_error(ENOENT, "Node name '%s' not found", replaces_.c_str());
        } else {
            // The job's own edge shares everything; it goes first anyway.
            target_blk_.reset();
            st = graph_.replace_node(rep, target_);
        }
    }
    // (A soft cancel of an active commit leaves base read-write, as QEMU.)
    src->drained_end();
    return st;
}

void MirrorJob::abort()
{
    if (filter_) {
        BlockNode *src = source_;
        src->drained_begin();
        target_blk_.reset();
        remove_filter();
        src->drained_end();
    }
    if (is_commit_) restore_base_ro();
}

Result<MirrorTopNode *> insert_filter(BlockGraph &graph, BlockNode *source, const std::string &name, bool is_commit)
{
    nlohmann::json tree = {{"driver", "mirror_top"}, {"file", source->node_name()}};
    if (!name.empty()) tree["node-name"] = name;
    MirrorTopConfig cfg{is_commit};
    g_opening = &cfg;
    Result<BlockNode *> n = graph.add_node_json(tree);
    g_opening = nullptr;
    if (!n) return n.error();
    auto *f = static_cast<MirrorTopNode *>(n.value());
    Status s = graph.replace_node(source, f);
    if (!s.ok()) {
        (void)graph.remove_node(f->node_name());
        return s.error();
    }
    return f;
}

int64_t default_granularity(BlockNode *target)
{
    Result<ImageInfo> info = target->get_info();
    if (info && info.value().cluster_size) {
        int64_t c = static_cast<int64_t>(*info.value().cluster_size);
        return std::clamp<int64_t>(c, 4096, 65536);
    }
    return 65536;
}

// The common part: checks the job id and the nodes, builds the job,
// inserts the filter and starts it.
Result<Job *> start_job(JobManager &mgr, BlockGraph &graph, std::unique_ptr<MirrorJob> job,
                        const std::string &filter_name)
{
    MirrorJob *j = job.get();
    if (j->granularity_ == 0) j->granularity_ = default_granularity(j->target_);
    if (j->buf_size_ == 0) j->buf_size_ = kDefaultBufSize;
    j->max_chunk_ = std::max(j->buf_size_ / kMaxInFlight, kMaxChunk);
    j->max_chunk_ = std::max(j->granularity_, j->max_chunk_ / j->granularity_ * j->granularity_);
    j->bitmap_.init(j->source_->getlength(), j->granularity_);

    if (j->is_commit_ && j->target_->read_only()) {
        BG_TRY(graph.set_read_only(j->target_, false));
        j->base_was_ro_ = true;
    }
    // The filter first: for active commit it is what shares writes on
    // the chain down to base.
    Result<MirrorTopNode *> f = insert_filter(graph, j->source_, filter_name, j->is_commit_);
    if (!f) {
        if (j->base_was_ro_) (void)graph.set_read_only(j->target_, true);
        return f.error();
    }
    j->filter_ = f.value();
    // The target: written by the job; everything shared, since at the
    // switch the source's users (writers) move onto it.
    BlockPerm perm = kPermWrite | (j->is_commit_ ? kPermResize : 0);
    Result<std::unique_ptr<BlockBackend>> blk =
        BlockBackend::create(j->target_, perm, kPermAll, "block job '" + j->id() + "'");
    if (!blk) {
        j->source_->drained_begin();
        j->remove_filter();
        j->source_->drained_end();
        if (j->base_was_ro_) (void)graph.set_read_only(j->target_, true);
        return blk.error();
    }
    j->target_blk_ = std::move(blk.value());
    j->filter_->job_ = j;
    j->recording_ = true;
    j->block(j->source_);
    j->block(j->target_);
    Job *added = mgr.add(std::move(job));
    added->start();
    return added;
}

Result<BlockNode *> lookup(BlockGraph &graph, const std::string &name)
{
    BlockNode *n = graph.find(name);
    if (!n) return make_error(ENOENT, "Cannot find device='%s' nor node-name='%s'", name.c_str(), name.c_str());
    return n;
}

} // namespace

extern const BlockDriver kDriverMirrorTop = {
    .name = "mirror_top",
    .kind = BlockDriverKind::kFilter,
    .caps = kCapWrite | kCapDiscard | kCapWriteZeroes | kCapResize | kCapBlockStatus | kCapFlush | kCapPersistent |
        kCapPassthrough,
    .summary = "records the writes of a mirror job (internal filter, not for --blockdev)",
    .decode_options = decode_mirror_top_options,
    .create = create_mirror_top,
    .probe = nullptr,
    .create_opts = {},
    .create_image = nullptr,
    .measure = nullptr,
    .stores_bitmaps = nullptr,
    .protocol_prefixes = nullptr,
    .parse_filename = nullptr,
};

Result<Job *> blockdev_mirror_start(JobManager &mgr, BlockGraph &graph, const MirrorJobOptions &opts)
{
    if (opts.granularity != 0 && (opts.granularity < 512 || opts.granularity > (int64_t(64) << 20))) {
        return make_error(EINVAL, "Parameter 'granularity' expects a value in range [512B, 64MB]");
    }
    if (opts.granularity & (opts.granularity - 1)) {
        return make_error(EINVAL, "Parameter 'granularity' expects a power of 2");
    }
    if (opts.buf_size < 0) return make_error(EINVAL, "Parameter 'buf-size' expects a positive value");
    BG_TRY_ASSIGN(BlockNode *source, lookup(graph, opts.device));
    BG_TRY_ASSIGN(BlockNode *target, lookup(graph, opts.target));
    BG_TRY(mgr.check_node_free(source));
    BG_TRY(mgr.check_node_free(target));
    BG_TRY(mgr.check_new_id(opts.common.id));
    if (source == target) return make_error(EINVAL, "Can't mirror node into itself");
    if (source->reaches(target) || target->reaches(source)) {
        return make_error(EINVAL, "Can't mirror node into itself");
    }
    if (source->getlength() != target->getlength()) {
        return make_error(EINVAL, "Source and target image have different sizes");
    }
    if (!opts.replaces.empty()) {
        BlockNode *rep = graph.find(opts.replaces);
        if (!rep) return make_error(ENOENT, "Node name '%s' not found", opts.replaces.c_str());
        if (rep != source && !rep->reaches(source)) {
            return make_error(EINVAL,
                              "Cannot replace '%s' by a node mirrored from '%s', because it cannot be guaranteed "
                              "that doing so would not lead to an abrupt change of visible data",
                              opts.replaces.c_str(), opts.device.c_str());
        }
        if (rep->getlength() != target->getlength()) {
            return make_error(EINVAL, "Replacing node ('%s') and target ('%s') do not have the same size",
                              opts.replaces.c_str(), opts.target.c_str());
        }
    }
    auto job = std::make_unique<MirrorJob>(mgr, opts.common, graph, false);
    job->source_ = source;
    job->target_ = target;
    job->sync_ = opts.sync;
    if (opts.sync == MirrorSync::kTop) {
        BdrvChild *b = source->backing_child();
        if (b) {
            job->base_ = b->node();
        } else {
            job->sync_ = MirrorSync::kFull;   // top without a backing file is full
        }
    }
    job->replaces_ = opts.replaces;
    job->granularity_ = opts.granularity;
    job->buf_size_ = opts.buf_size;
    job->copy_mode_ = opts.copy_mode;
    job->on_source_error_ = opts.on_source_error;
    job->on_target_error_ = opts.on_target_error;
    job->unmap_ = opts.unmap;
    return start_job(mgr, graph, std::move(job), opts.filter_node_name);
}

Result<Job *> mirror_active_commit_start(JobManager &mgr, BlockGraph &graph, const CommitJobOptions &opts,
                                         BlockNode *top, BlockNode *base)
{
    if (top == base) return make_error(EINVAL, "cannot commit an image into itself");
    BG_TRY(mgr.check_node_free(top));
    BG_TRY(mgr.check_node_free(base));
    BG_TRY(mgr.check_new_id(opts.common.id));
    auto job = std::make_unique<MirrorJob>(mgr, opts.common, graph, true);
    job->source_ = top;
    job->target_ = base;
    job->base_ = base;
    job->sync_ = MirrorSync::kFull;
    job->on_source_error_ = opts.on_error;
    job->on_target_error_ = opts.on_error;
    job->unmap_ = true;
    // The nodes between top and base belong to the job too.
    for (BdrvChild *b = top->backing_child(); b && b->node() != base; b = b->node()->backing_child()) {
        BG_TRY(mgr.check_node_free(b->node()));
        job->block(b->node());
    }
    return start_job(mgr, graph, std::move(job), opts.filter_node_name);
}

} // namespace bg

// block/backup.cc -- the blockdev-backup job (QEMU's backup job): a
// copy-before-write filter (block/copy-before-write.cc) goes above the
// source for the job's life, so that what a client overwrites is first
// copied to the target, and the job copies the rest of the copy set in
// the background; the target ends up holding the source as it was when the
// job started.
//
// Copy set by sync mode: full: everything; top: what the source's top
// layer holds (top without a backing file is full); bitmap (incremental:
// bitmap + on-success): the clusters the bitmap marks; none: everything,
// but only the filter copies (old data of overwritten clusters), and the
// job runs until it is cancelled, which is its normal end (CANCELLED).
//
// The bitmap (QEMU's frozen bitmap and successor): at the start its bits
// are taken as the copy set and it is cleared, so that from then on it
// records the new writes (our "successor"); it is busy meanwhile. At the
// end: on-success keeps only the new writes after a success and merges the
// taken bits back after a failure; never always merges them back (in fact
// the bitmap is then not cleared at all); always keeps the new writes plus
// the taken bits of the clusters that were not copied.
//
// Copying: the job walks the copy set in chunks of max-chunk (default
// 1 MiB, at least one cluster), each booked against the speed limit, with
// up to max-workers chunks in flight. A failed chunk stops the pass; once
// the chunks in flight are done the on-source-error / on-target-error
// policy decides: report fails the job, ignore goes on, stop pauses the job
// until it is resumed; the clusters not copied stay in the set and the next
// pass copies them.
//
// Threading model: main loop only (block/job.h).
#include <algorithm>
#include <cerrno>

#include "block/block.h"
#include "block/copy-before-write.h"
#include "block/jobs.h"
#include "util/aio.h"

namespace bg {

namespace {

// ORs b into a (same granularity and size).
void bits_or(DirtyBitmapData &a, const DirtyBitmapData &b)
{
    for (size_t i = 0; i < a.bytes.size() && i < b.bytes.size(); i++) a.bytes[i] |= b.bytes[i];
}

class BackupJob final : public Job {
  public:
    BackupJob(JobManager &mgr, BlockGraph &graph, const BackupJobOptions &o, BlockNode *source, BlockNode *filter,
              BlockCopyState *bcs, bool bitmap_cleared, DirtyBitmapData frozen)
        : Job(mgr, o.common), graph_(graph), opts_(o), source_(source), target_(bcs->target()->node()),
          filter_(filter), bcs_(bcs),
          bitmap_cleared_(bitmap_cleared), frozen_(std::move(frozen))
    {
        progress_set_total(o.sync == BackupSync::kNone ? 0 : bcs->dirty_bytes());
        bcs->on_progress = [this](int64_t n) { progress_add(n); };
    }

    const char *type() const override { return "backup"; }
    using Job::block_node;

  protected:
    int coroutine_fn run() override
    {
        int r = copy_all();
        // The filter goes now, in the job's coroutine: removing it drains
        // and flushes, which the finalization hooks (run from a bottom
        // half, where a nested loop dispatches nothing of ours) cannot.
        detach_filter();
        return r;
    }

    int coroutine_fn copy_all()
    {
        // QEMU's backup pauses once right after it starts (a drained
        // section of its setup): JOB_STATUS_CHANGE paused, then running.
        if (pause().ok()) {
            AioContext::current()->schedule_oneshot([](void *j) { (void)static_cast<Job *>(j)->resume(); }, this);
            pause_point();
        }
        if (opts_.sync == BackupSync::kNone) {
            // Copy-on-write only: the filter does the work until cancel.
            while (!is_cancelled()) {
                if (bcs_->snapshot_error) return bcs_->snapshot_error;
                sleep_ns(-1);
            }
            return -ECANCELED;
        }
        const int64_t cs = bcs_->cluster_size();
        const int64_t per = opts_.compress ? 1
                                           : std::max<int64_t>(1, (opts_.max_chunk > 0 ? opts_.max_chunk : 1 << 20) / cs);
        const int max_workers = std::max(1, opts_.max_workers);
        for (;;) {
            for (int64_t c = 0; !is_cancelled() && err_ == 0 && (c = bcs_->next_dirty(c)) >= 0;) {
                int64_t n = 1;
                while (n < per && c + n < bcs_->nb_clusters() && bcs_->is_dirty(c + n)) n++;
                rate_limit(n * cs);
                if (is_cancelled() || err_) break;
                while (active_ >= max_workers) wait_workers();
                if (err_) break;
                spawn(c, n);
                c += n;
            }
            while (active_ > 0) wait_workers();
            if (is_cancelled()) return -ECANCELED;
            if (bcs_->snapshot_error) return bcs_->snapshot_error;
            if (err_) {
                const int err = err_;
                const bool is_read = err_is_read_;
                err_ = 0;
                BlockErrorAction a =
                    error_action(is_read ? opts_.on_source_error : opts_.on_target_error, is_read, err);
                if (a == BlockErrorAction::kReport) return err;
                if (a == BlockErrorAction::kStop) pause_point();
                if (is_cancelled()) return -ECANCELED;
                continue;
            }
            if (bcs_->dirty_count() == 0) break;
            // Clusters left by failed guest writes' copies: one more pass.
            pause_point();
        }
        int r = bcs_->target()->co_flush();
        if (r < 0) {
            BlockErrorAction a = error_action(opts_.on_target_error, false, r);
            if (a == BlockErrorAction::kReport) return r;
        }
        return 0;
    }

    void commit() override { finish_bitmap(true); }
    void abort() override { finish_bitmap(false); }

    void clean() override
    {
        if (!filter_) return;
        if (in_coroutine()) {
            detach_filter();   // a transaction's rollback (QMP coroutine)
            return;
        }
        // Not from here (see run()): in a coroutine of its own.
        BlockGraph *g = &graph_;
        BlockNode *filter = filter_, *source = source_;
        bcs_->on_progress = nullptr;
        bcs_ = nullptr;
        filter_ = nullptr;
        unblock_nodes();
        coroutine_enter(coroutine_create_fn([g, filter, source] { remove_filter(*g, filter, source); }));
    }

  private:
    static void remove_filter(BlockGraph &g, BlockNode *filter, BlockNode *source)
    {
        // The filter's parents go back to the source, then the filter goes.
        Status st = g.replace_node(filter, source);
        if (st.ok()) st = g.remove_node(filter->node_name());
        (void)st;
    }

    // Keeps what the bitmap handling needs of the copy set, then removes
    // the filter (which owns it).
    void detach_filter()
    {
        if (!filter_) return;
        cluster_ = bcs_->cluster_size();
        length_ = bcs_->length();
        left_.resize(static_cast<size_t>(bcs_->nb_clusters()));
        for (int64_t c = 0; c < bcs_->nb_clusters(); c++) left_[static_cast<size_t>(c)] = bcs_->is_dirty(c);
        bcs_->on_progress = nullptr;
        bcs_ = nullptr;
        remove_filter(graph_, filter_, source_);
        filter_ = nullptr;
        // The filter is gone: only the target stays the job's.
        unblock_nodes();
        block_node(target_);
    }

    void coroutine_fn wait_workers()
    {
        waiter_ = coroutine_self();
        coroutine_yield();
    }

    void spawn(int64_t c, int64_t n)
    {
        active_++;
        Coroutine *co = coroutine_create_fn([this, c, n] {
            bool is_read = false;
            int r = bcs_->copy(c, n, &is_read);
            if (r < 0 && err_ == 0) {
                err_ = r;
                err_is_read_ = is_read;
            }
            active_--;
            if (Coroutine *w = waiter_) {
                waiter_ = nullptr;
                coroutine_wake(w);
            }
        });
        coroutine_enter(co);
    }

    // The bitmap at the end of the job (see the file comment). Called from
    // a bottom half: a persistent bitmap's change may drain, so the work
    // runs in a coroutine of its own (done at once unless it must wait).
    void finish_bitmap(bool success)
    {
        if (opts_.bitmap.empty() || bitmap_done_) return;
        bitmap_done_ = true;
        struct Work {
            BlockNode *source;
            std::string name;
            bool restore;
            DirtyBitmapData add;   // ORed into the bitmap when restore
        };
        auto w = std::make_shared<Work>(Work{source_, opts_.bitmap, false, {}});
        const BitmapSyncMode mode = opts_.bitmap_mode.value_or(BitmapSyncMode::kOnSuccess);
        if (bitmap_cleared_ && !(success && mode != BitmapSyncMode::kNever)) {
            w->restore = true;
            w->add = frozen_;
            if (mode == BitmapSyncMode::kAlways && cluster_ > 0) {
                // Only the taken bits whose clusters were not copied.
                DirtyBitmapData &left = w->add;
                const uint64_t g = left.granularity;
                const int64_t cs = cluster_;
                const int64_t nb = static_cast<int64_t>(left_.size());
                for (uint64_t i = 0; i < left.nb_bits; i++) {
                    if (!(left.bytes[i / 8] & (1u << (i % 8)))) continue;
                    const int64_t start = static_cast<int64_t>(i * g);
                    const int64_t end = std::min(length_, static_cast<int64_t>((i + 1) * g));
                    bool still = false;
                    for (int64_t c = start / cs; c * cs < end && c < nb; c++) {
                        if (left_[static_cast<size_t>(c)]) still = true;
                    }
                    if (!still) left.bytes[i / 8] &= static_cast<uint8_t>(~(1u << (i % 8)));
                }
            }
        }
        auto fn = [w] {
            (void)w->source->dirty_bitmap_set_busy(w->name, false);
            if (!w->restore) return;
            Result<DirtyBitmapData> cur = w->source->dirty_bitmap_get(w->name);
            if (!cur) return;
            DirtyBitmapData bits = std::move(cur.value());
            bits_or(bits, w->add);
            (void)w->source->dirty_bitmap_restore(w->name, bits);
        };
        if (in_coroutine()) fn();
        else coroutine_enter(coroutine_create_fn(fn));
    }

    BlockGraph &graph_;
    BackupJobOptions opts_;
    BlockNode *source_;
    BlockNode *target_;
    BlockNode *filter_;
    BlockCopyState *bcs_;
    bool bitmap_cleared_;
    DirtyBitmapData frozen_;
    bool bitmap_done_ = false;
    // The copy set as the filter left it (detach_filter()).
    int64_t cluster_ = 0, length_ = 0;
    std::vector<bool> left_;
    int active_ = 0;
    Coroutine *waiter_ = nullptr;
    int err_ = 0;
    bool err_is_read_ = false;
};

const char *sync_name(BackupSync s)
{
    switch (s) {
    case BackupSync::kFull: return "full";
    case BackupSync::kTop: return "top";
    case BackupSync::kNone: return "none";
    case BackupSync::kBitmap: return "bitmap";
    case BackupSync::kIncremental: return "incremental";
    }
    return "?";
}

// The first node below n (n included) that is not a filter.
BlockNode *skip_filters(BlockNode *n)
{
    while (n && n->driver() && n->driver()->kind == BlockDriverKind::kFilter && n->filtered_child()) {
        n = n->filtered_child()->node();
    }
    return n;
}

} // namespace

Result<Job *> blockdev_backup_start(JobManager &mgr, BlockGraph &graph, const BackupJobOptions &opts_in,
                                    const std::shared_ptr<JobTxn> &txn, bool start)
{
    BackupJobOptions o = opts_in;
    BlockNode *source = graph.find(o.device);
    if (!source) {
        return make_error(ENOENT, "Cannot find device='%s' nor node-name='%s'", o.device.c_str(), o.device.c_str());
    }
    BlockNode *target = graph.find(o.target);
    if (!target) {
        return make_error(ENOENT, "Cannot find device='%s' nor node-name='%s'", o.target.c_str(), o.target.c_str());
    }

    // The bitmap arguments, in QEMU's order.
    if ((o.sync == BackupSync::kBitmap || o.sync == BackupSync::kIncremental) && o.bitmap.empty()) {
        return make_error(EINVAL, "must provide a valid bitmap name for '%s' sync mode", sync_name(o.sync));
    }
    if (o.sync == BackupSync::kIncremental) {
        if (o.bitmap_mode && *o.bitmap_mode != BitmapSyncMode::kOnSuccess) {
            return make_error(EINVAL, "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'");
        }
        o.sync = BackupSync::kBitmap;
        o.bitmap_mode = BitmapSyncMode::kOnSuccess;
    }
    std::optional<DirtyBitmapInfo> bm_info;
    if (!o.bitmap.empty()) {
        for (const DirtyBitmapInfo &i : source->dirty_bitmaps()) {
            if (i.name == o.bitmap) bm_info = i;
        }
        if (!bm_info) return make_error(ENOENT, "Bitmap '%s' could not be found", o.bitmap.c_str());
        if (!o.bitmap_mode) return make_error(EINVAL, "Bitmap sync mode must be given when providing a bitmap");
        if (bm_info->busy) {
            return make_error(EBUSY, "Bitmap '%s' is currently in use by another operation and cannot be used",
                              o.bitmap.c_str());
        }
        if (bm_info->inconsistent) {
            return make_error(EINVAL, "Bitmap '%s' is inconsistent and cannot be used", o.bitmap.c_str());
        }
        if (o.sync == BackupSync::kNone) {
            return make_error(EINVAL, "sync mode 'none' does not produce meaningful bitmap outputs");
        }
        if (*o.bitmap_mode == BitmapSyncMode::kNever && o.sync != BackupSync::kBitmap) {
            return make_error(EINVAL, "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '%s'",
                              sync_name(o.sync));
        }
    } else if (o.bitmap_mode) {
        return make_error(EINVAL, "Cannot specify bitmap sync mode without a bitmap");
    }

    if (source == target) return make_error(EINVAL, "Source and target cannot be the same");
    if (o.compress) {
        BlockNode *t = skip_filters(target);
        if (!t || !t->driver() || !(t->driver()->caps & kCapWriteCompressed)) {
            return make_error(ENOTSUP, "Compression is not supported for this drive %s", "");
        }
    }
    // (Only other jobs block a source: a backup blocks its filter.)
    BG_TRY(mgr.check_node_free(source));
    BG_TRY(mgr.check_node_free(target));
    if (o.max_workers < 1) return make_error(EINVAL, "max-workers must be between 1 and %d", INT32_MAX);
    if (o.max_chunk < 0) return make_error(EINVAL, "max-chunk must be zero (which means no limit) or positive");
    if (bm_info && *o.bitmap_mode != BitmapSyncMode::kNever && source->read_only() && bm_info->persistent) {
        return make_error(EPERM, "Bitmap '%s' is readonly and cannot be modified", o.bitmap.c_str());
    }
    if (source->getlength() != target->getlength()) {
        return make_error(EINVAL, "Source and target image have different sizes");
    }
    // (QEMU checks the job id last, when it creates the job.)
    BG_TRY(mgr.check_new_id(o.common.id));
    if (o.sync == BackupSync::kTop && !source->backing_child()) o.sync = BackupSync::kFull;

    // The filter, above the source for every parent of it.
    nlohmann::json fj = {{"driver", "copy-before-write"},
                         {"file", source->node_name()},
                         {"target", target->node_name()},
                         {"discard", "unmap"}};
    if (!o.filter_node_name.empty()) fj["node-name"] = o.filter_node_name;
    if (o.min_cluster_size > 0) fj["min-cluster-size"] = o.min_cluster_size;
    source->drained_begin();
    Result<BlockNode *> fr = graph.add_node_json(fj);
    if (!fr) {
        source->drained_end();
        return fr.error();
    }
    BlockNode *filter = fr.value();
    auto drop_filter = [&graph, filter] { (void)graph.remove_node(filter->node_name()); };
    BlockCopyState *bcs = cbw_block_copy(filter);
    if (o.max_chunk && o.max_chunk < bcs->cluster_size()) {
        drop_filter();
        source->drained_end();
        return make_error(EINVAL, "Required max-chunk (%lld) is less than backup cluster size (%lld)",
                          static_cast<long long>(o.max_chunk), static_cast<long long>(bcs->cluster_size()));
    }
    Status st = graph.replace_node(source, filter);
    if (!st.ok()) {
        drop_filter();
        source->drained_end();
        return st.error();
    }
    auto undo = [&] {
        (void)graph.replace_node(filter, source);
        drop_filter();
        source->drained_end();
    };

    // The copy set, and the bitmap frozen.
    bool cleared = false;
    DirtyBitmapData frozen;
    if (o.sync == BackupSync::kTop) bcs->skip_unallocated = true;
    bcs->compress = o.compress;
    bcs->max_chunk = o.max_chunk;
    if (!o.bitmap.empty()) {
        if (*o.bitmap_mode == BitmapSyncMode::kNever) {
            Result<DirtyBitmapData> d = source->dirty_bitmap_get(o.bitmap);
            if (!d) {
                undo();
                return d.error();
            }
            frozen = std::move(d.value());
        } else {
            st = source->dirty_bitmap_clear(o.bitmap, &frozen);
            if (!st.ok()) {
                undo();
                return st.error();
            }
            cleared = true;
        }
        (void)source->dirty_bitmap_set_busy(o.bitmap, true);
        if (o.sync == BackupSync::kBitmap) bcs->set_from_bitmap(frozen);
    }
    source->drained_end();

    auto job = std::make_unique<BackupJob>(mgr, graph, o, source, filter, bcs, cleared, std::move(frozen));
    // As QEMU: the filter and the target are the job's; the source may
    // be backed up again meanwhile (a second filter goes above it).
    job->block_node(filter);
    job->block_node(target);
    Job *j = mgr.add(std::move(job), txn);
    if (start) j->start();
    return j;
}

} // namespace bg

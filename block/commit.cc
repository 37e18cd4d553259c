// block/commit.cc -- block-commit (QEMU's block/commit.c): the argument
// checks of both kinds of commit, the intermediate commit job and its
// commit_top filter. Active commit (top is the active layer) runs on the
// mirror code (mirror_active_commit_start, block/mirror.cc).
//
// Intermediate commit of top into base (chain: overlay <- top <- ... <-
// base):
//   start   base is reopened read-write if needed; a commit_top filter is
//           inserted above top (every parent of top, the overlay's backing
//           edge included, now points at it). It takes no permission on
//           top and shares everything, so the chain below may be written
//           by the job while the overlay keeps reading through it.
//   run     the copy engine (block/copy.h) copies what top..above-base
//           allocate into base in 512 KiB chunks, one at a time, with the
//           job's pause points, speed limit and on-error policy
//           (ignore/stop retry the chunk). base grows to top's length.
//   prepare every overlay of the filter gets its header's backing file
//           rewritten (backing-file, else base's file name) and every
//           parent of the filter is re-pointed at base; the filter goes,
//           and with it top..above-base unless the user added them.
//   abort   the filter is dropped: the chain is as before.
//   clean   base goes back to read-only if it was.
//
// Threading model: main loop; run() in the job's coroutine, the hooks
// outside coroutines.
#include <cerrno>
#include <cstring>

#include "block/block-driver.h"
#include "block/copy.h"
#include "block/job-chain.h"
#include "block/jobs.h"
#include "util/log.h"

namespace bg {

namespace {

constexpr int64_t kCommitChunk = 512 * 1024;

// ---------------------------------------------------------------- the commit_top filter

struct CommitTopOptions : DriverOptionsOf<CommitTopOptions> {
    BlockdevRef backing;   // required

    void encode(nlohmann::json &j) const override { put_ref(j, "backing", backing); }
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override
    {
        fn("backing", backing);
    }
};

Result<std::unique_ptr<DriverOptions>> decode_commit_top_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<CommitTopOptions>();
    BG_TRY(r.get_ref("backing", &o->backing, OptionReader::RefMode::kRequired));
    return std::unique_ptr<DriverOptions>(std::move(o));
}

// Reads pass to top; it takes nothing of top and shares everything (QEMU's
// commit_top): the nodes below may change while the job runs.
class CommitTopNode final : public FilterNode {
  protected:
    Status open(const BlockdevOptions &opts) override
    {
        const auto *o = opts.as<CommitTopOptions>();
        if (!o) return node_error(EINVAL, "options are not commit_top options");
        return open_filtered("backing", o->backing);
    }

    void child_perm(ChildRole, BlockPerm, BlockPerm, BlockPerm *nperm, BlockPerm *nshared) override
    {
        *nperm = 0;
        *nshared = kPermAll;
    }
};

std::unique_ptr<BlockNode> create_commit_top() { return std::make_unique<CommitTopNode>(); }

// ---------------------------------------------------------------- the job

class CommitJob final : public Job {
  public:
    CommitJob(JobManager &mgr, BlockGraph &graph, const CommitJobOptions &o)
        : Job(mgr, o.common), graph_(graph), on_error_(o.on_error), backing_file_(o.backing_file),
          mask_protocol_(o.backing_mask_protocol)
    {
    }
    const char *type() const override { return "commit"; }

    // Builds the graph side; on failure undoes it.
    Status setup(BlockNode *device, BlockNode *top, BlockNode *base, const std::string &filter_name);

  protected:
    int coroutine_fn run() override;
    Status prepare() override;
    void abort() override;
    void clean() override;

  private:
    void drop_filter();

    BlockGraph &graph_;
    BlockdevOnError on_error_;
    std::optional<std::string> backing_file_;
    bool mask_protocol_;
    BlockNode *top_ = nullptr, *base_ = nullptr;
    std::string filter_name_;   // the commit_top node, while it exists
    bool base_was_ro_ = false;
    std::unique_ptr<BlockBackend> top_blk_, base_blk_;
};

Status CommitJob::setup(BlockNode *device, BlockNode *top, BlockNode *base, const std::string &filter_name)
{
    top_ = top;
    base_ = base;
    if (base->read_only()) {
        BG_TRY(graph_.set_read_only(base, false));
        base_was_ro_ = true;
    }
    nlohmann::json f = {{"driver", "commit_top"}, {"backing", top->node_name()}};
    if (!filter_name.empty()) f["node-name"] = filter_name;
    Result<BlockNode *> fn = graph_.add_node_json(f);
    if (!fn) {
        clean();
        std::string m = fn.msg();
        // add_node's "blockdev 'x': " context is ours, not QEMU's.
        if (auto p = m.find("': "); m.rfind("blockdev", 0) == 0 && p != std::string::npos) m = m.substr(p + 3);
        return make_error(fn.error().err, "%s", m.c_str());
    }
    BlockNode *filter = fn.value();
    filter_name_ = filter->node_name();
    Status s = graph_.replace_node(top, filter);
    if (s.ok()) {
        auto b = BlockBackend::create(base, kPermConsistentRead | kPermWrite | kPermResize,
                                      kPermConsistentRead | kPermWriteUnchanged, "commit job '" + id() + "'");
        if (b) base_blk_ = std::move(b.value());
        else s = b.error();
    }
    if (s.ok()) {
        auto t = BlockBackend::create(top, kPermConsistentRead, kPermAll, "commit job '" + id() + "'");
        if (t) top_blk_ = std::move(t.value());
        else s = t.error();
    }
    if (!s.ok()) {
        abort();
        clean();
        return s;
    }
    block_node(device);
    block_node(filter);
    for (BlockNode *n = top; n && n != base; n = chain_next(n)) block_node(n);
    block_node(base);
    return {};
}

int CommitJob::run()
{
    const int64_t len = top_blk_->getlength();
    if (len < 0) return static_cast<int>(len);
    progress_set_total(len);
    if (base_blk_->getlength() < len) {
        int r = base_blk_->co_truncate(len, false, PreallocMode::kOff, 0);
        if (r < 0) return r;
    }
    CopySource src;
    src.blk = top_blk_.get();
    src.base = base_;
    src.name = top_->filename();
    CopyOptions co;
    co.max_workers = 1;   // the hooks run in this coroutine
    co.chunk_size = kCommitChunk;
    co.scan_data_for_zeroes = false;   // allocated data is copied as it is
    follow_copy(co);
    co.on_error = [this](const CopyIoError &e) {
        switch (error_action(on_error_, e.is_read, e.err)) {
        case BlockErrorAction::kReport: return CopyErrorAction::kFail;
        case BlockErrorAction::kIgnore: return CopyErrorAction::kRetry;
        case BlockErrorAction::kStop: pause_point(); return CopyErrorAction::kRetry;
        }
        return CopyErrorAction::kFail;
    };
    Result<CopyStats> r = co_copy({src}, base_blk_.get(), co);
    if (is_cancelled()) return -ECANCELED;
    if (!r) return -r.error().err;
    int f = base_blk_->co_flush();
    return f < 0 ? f : 0;
}

Status CommitJob::prepare()
{
    // The writer of base goes before the chain is re-linked.
    base_blk_.reset();
    top_blk_.reset();
    BlockNode *filter = graph_.find(filter_name_);
    if (!filter) return make_error(EIO, "the commit filter is gone");
    std::string file, fmt;
    backing_reference(base_, backing_file_, mask_protocol_, &file, &fmt);
    struct Rewritten {
        BlockNode *overlay;
        std::string old_file, old_fmt;
    };
    std::vector<Rewritten> done;
    auto restore = [&] {
        for (Rewritten &r : done) (void)rewrite_backing_file(graph_, r.overlay, r.old_file, r.old_fmt);
    };
    for (BdrvChild *p : std::vector<BdrvChild *>(filter->parents())) {
        BlockNode *overlay = p->parent_node();
        if (!overlay || !(p->role() & kRoleCow)) continue;
        Rewritten r{overlay, recorded_backing_file(overlay), recorded_backing_format(overlay)};
        Status s = rewrite_backing_file(graph_, overlay, file, fmt);
        if (!s.ok()) {
            restore();
            return s;
        }
        done.push_back(std::move(r));
    }
    Status s = graph_.replace_node(filter, base_);
    if (!s.ok()) {
        restore();
        return s;
    }
    unblock_nodes();
    filter_name_.clear();
    (void)graph_.remove_node(filter->node_name());
    return {};
}

void CommitJob::drop_filter()
{
    BlockNode *filter = filter_name_.empty() ? nullptr : graph_.find(filter_name_);
    if (!filter) return;
    Status s = graph_.replace_node(filter, top_);
    if (!s.ok()) log_warn("commit job '%s': cannot drop its filter: %s", id().c_str(), s.msg().c_str());
    if (filter->parents().empty()) {
        (void)graph_.remove_node(filter->node_name());
        filter_name_.clear();
    }
}

void CommitJob::abort()
{
    base_blk_.reset();
    top_blk_.reset();
    drop_filter();
}

void CommitJob::clean()
{
    base_blk_.reset();
    top_blk_.reset();
    unblock_nodes();
    if (base_was_ro_ && base_ && graph_.find(base_->node_name()) == base_) {
        Status s = graph_.set_read_only(base_, true);
        (void)s;
        base_was_ro_ = false;
    }
}

// The root of device: a node without parent nodes (QEMU's qmp_get_root_bs).
bool is_root(const BlockNode *n)
{
    for (BdrvChild *p : n->parents()) {
        if (p->parent_node()) return false;
    }
    return true;
}

} // namespace

extern const BlockDriver kDriverCommitTop = {
    .name = "commit_top",
    .kind = BlockDriverKind::kFilter,
    .caps = kCapBlockStatus | kCapPassthrough,
    .summary = "a commit job's filter above the image it commits (filter; child \"backing\")",
    .decode_options = decode_commit_top_options,
    .create = create_commit_top,
    .probe = nullptr,
    .create_opts = {},
    .create_image = nullptr,
    .measure = nullptr,
    .stores_bitmaps = nullptr,
    .protocol_prefixes = nullptr,
    .parse_filename = nullptr,
};

Result<Job *> block_commit_start(JobManager &mgr, BlockGraph &graph, const CommitJobOptions &opts)
{
    // The device first (libvirt tells DeviceNotFound apart).
    BlockNode *bs = graph.find(opts.device);
    if (!bs) return make_error(ENODEV, "Device '%s' not found", opts.device.c_str());
    // A node a job works on is not a root for QEMU (the job is a parent).
    if (!is_root(bs) || !mgr.check_node_free(bs).ok()) return make_error(EINVAL, "Need a root block node");

    BlockNode *top = bs;
    if (!opts.top_node.empty() && !opts.top.empty()) {
        return make_error(EINVAL, "'top-node' and 'top' are mutually exclusive");
    } else if (!opts.top_node.empty()) {
        top = graph.find(opts.top_node);
        if (!top) return make_error(ENOENT, "Cannot find device='' nor node-name='%s'", opts.top_node.c_str());
        if (!chain_contains(bs, top)) {
            return make_error(EINVAL, "'%s' is not in this backing file chain", opts.top_node.c_str());
        }
    } else if (!opts.top.empty()) {
        if (bs->filename() != opts.top) top = find_backing_image(bs, opts.top);
    }
    if (!top) return make_error(ENOENT, "Top image file %s not found", opts.top.c_str());

    BlockNode *base = nullptr;
    if (!opts.base_node.empty() && !opts.base.empty()) {
        return make_error(EINVAL, "'base-node' and 'base' are mutually exclusive");
    } else if (!opts.base_node.empty()) {
        base = graph.find(opts.base_node);
        if (!base) return make_error(ENOENT, "Cannot find device='' nor node-name='%s'", opts.base_node.c_str());
        if (!chain_contains(top, base)) {
            return make_error(EINVAL, "'%s' is not in this backing file chain", opts.base_node.c_str());
        }
    } else if (!opts.base.empty()) {
        base = find_backing_image(top, opts.base);
        if (!base) return make_error(ENOENT, "Can't find '%s' in the backing chain", opts.base.c_str());
    } else {
        base = find_overlay(top, nullptr);
        if (!base) return make_error(ENOENT, "There is no backimg image");
    }
    for (BlockNode *n = top; n; n = chain_next(n)) BG_TRY(mgr.check_node_free(n));
    if (top == base) return make_error(EINVAL, "cannot commit an image into itself");

    const bool active = skip_filters(top) == skip_filters(bs);
    if (active || (top->cumulative_perm() & kPermWrite)) {
        if (opts.backing_file) {
            return make_error(EINVAL, active ? "'backing-file' specified, but 'top' is the active layer"
                                             : "'backing-file' specified, but 'top' has a writer on it");
        }
        return mirror_active_commit_start(mgr, graph, opts, top, base);
    }
    if (skip_filters(top) == skip_filters(base)) {
        return make_error(EINVAL, "Invalid files for merge: top and base are the same");
    }
    BG_TRY(mgr.check_new_id(opts.common.id));
    if (opts.common.speed < 0) return make_error(EINVAL, "Parameter 'speed' expects a non-negative value");
    auto job = std::make_unique<CommitJob>(mgr, graph, opts);
    BG_TRY(job->setup(bs, top, base, opts.filter_node_name));
    Job *j = mgr.add(std::move(job));
    j->start();
    return j;
}

} // namespace bg

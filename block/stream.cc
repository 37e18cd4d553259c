// block/stream.cc -- block-stream (QEMU's block/stream.c): copies the data
// a node reads from its backing chain above base into the node itself,
// then drops those layers from its chain.
//
//   start   the node is reopened read-write if needed; a copy-on-read
//           filter ("copy-on-read" driver, bottom = the last layer to copy
//           from) is inserted above it: every parent of the node (an
//           export...) now reads through it.
//   run     the copy engine (block/copy.h) reads, through the filter, the
//           ranges the chain above base allocates and the node does not,
//           in 512 KiB chunks, one at a time: the filter writes what it
//           reads into the node (under a serialising request, so a guest
//           write to the same range waits and is never overwritten by old
//           data). Pause points, speed limit, on-error (stop retries,
//           ignore goes on and fails the job at the end, as QEMU).
//   prepare the node's header names base (backing-file, else base's file
//           name) or no backing file, and its backing edge goes to base
//           (or away): the layers above base leave the chain.
//   clean   the filter is removed (its parents point at the node again)
//           and the node goes back to read-only if it was.
//
// Threading model: main loop; run() in the job's coroutine, the hooks
// outside coroutines.
#include <cerrno>
#include <cstring>

#include "block/copy.h"
#include "block/job-chain.h"
#include "block/jobs.h"
#include "util/log.h"

namespace bg {

namespace {

constexpr int64_t kStreamChunk = 512 * 1024;

class StreamJob final : public Job {
  public:
    StreamJob(JobManager &mgr, BlockGraph &graph, const StreamJobOptions &o)
        : Job(mgr, o.common), graph_(graph), on_error_(o.on_error), backing_file_(o.backing_file),
          mask_protocol_(o.backing_mask_protocol)
    {
    }
    const char *type() const override { return "stream"; }

    Status setup(BlockNode *target, BlockNode *base, BlockNode *base_overlay, const std::string &filter_name);

  protected:
    int coroutine_fn run() override;
    Status prepare() override;
    void clean() override;

  private:
    BlockGraph &graph_;
    BlockdevOnError on_error_;
    std::optional<std::string> backing_file_;
    bool mask_protocol_;
    BlockNode *target_ = nullptr;        // device
    BlockNode *base_ = nullptr;          // nullptr: the whole chain
    BlockNode *base_overlay_ = nullptr;  // the last layer copied from
    std::string filter_name_;
    bool target_was_ro_ = false;
    std::unique_ptr<BlockBackend> blk_;   // on the filter
};

Status StreamJob::setup(BlockNode *target, BlockNode *base, BlockNode *base_overlay, const std::string &filter_name)
{
    target_ = target;
    base_ = base;
    base_overlay_ = base_overlay;
    if (target->read_only()) {
        BG_TRY(graph_.set_read_only(target, false));
        target_was_ro_ = true;
    }
    nlohmann::json f = {{"driver", "copy-on-read"}, {"file", target->node_name()},
                        {"bottom", base_overlay->node_name()}};
    if (!filter_name.empty()) f["node-name"] = filter_name;
    Result<BlockNode *> fn = graph_.add_node_json(f);
    if (!fn) {
        clean();
        std::string m = fn.msg();
        if (auto p = m.find("': "); m.rfind("blockdev", 0) == 0 && p != std::string::npos) m = m.substr(p + 3);
        return make_error(fn.error().err, "%s", m.c_str());
    }
    BlockNode *filter = fn.value();
    filter_name_ = filter->node_name();
    Status s = graph_.replace_node(target, filter);
    if (s.ok()) {
        auto b = BlockBackend::create(filter, kPermConsistentRead, kPermAll, "stream job '" + id() + "'");
        if (b) blk_ = std::move(b.value());
        else s = b.error();
    }
    if (!s.ok()) {
        clean();
        return s;
    }
    block_node(filter);
    for (BlockNode *n = target; n && n != base; n = chain_next(n)) block_node(n);
    return {};
}

int StreamJob::run()
{
    BlockNode *unfiltered = skip_filters(target_);
    if (unfiltered == base_overlay_) return 0;   // nothing to stream
    const int64_t len = blk_->getlength();
    if (len < 0) return static_cast<int>(len);
    progress_set_total(len);
    CopySource src;
    src.blk = blk_.get();
    src.base = base_;
    src.allocated_only = true;
    src.name = target_->filename();
    CopyOptions co;
    co.max_workers = 1;   // the hooks run in this coroutine
    co.chunk_size = kStreamChunk;
    co.sparse_size = 0;
    co.read_only = true;   // the filter's copy-on-read does the writes
    co.skip_allocated_in = unfiltered;
    follow_copy(co);
    int error = 0;
    co.on_error = [this, &error](const CopyIoError &e) {
        // QEMU's stream reports every error as a read error.
        switch (error_action(on_error_, true, e.err)) {
        case BlockErrorAction::kReport: return CopyErrorAction::kFail;
        case BlockErrorAction::kIgnore:
            if (!error) error = -e.err;
            return CopyErrorAction::kSkip;
        case BlockErrorAction::kStop: pause_point(); return CopyErrorAction::kRetry;
        }
        return CopyErrorAction::kFail;
    };
    Result<CopyStats> r = co_copy({src}, nullptr, co);
    if (is_cancelled()) return -ECANCELED;
    if (!r) return -r.error().err;
    // An ignored error keeps the backing file (the data is not all there).
    return error;
}

Status StreamJob::prepare()
{
    BlockNode *unfiltered = skip_filters(target_);
    if (!unfiltered->backing_child()) return {};
    std::string file, fmt;
    if (base_) backing_reference(base_, backing_file_, mask_protocol_, &file, &fmt);
    const std::string old_file = recorded_backing_file(unfiltered), old_fmt = recorded_backing_format(unfiltered);
    BG_TRY(rewrite_backing_file(graph_, unfiltered, file, fmt));
    BlockdevOptions o = unfiltered->dump_options();
    bool found = false;
    if (o.drv) {
        o.drv->for_each_child([&](const char *key, BlockdevRef &ref) {
            if (std::strcmp(key, "backing") != 0) return;
            found = true;
            ref.def.reset();
            if (base_) {
                ref.kind = BlockdevRef::Kind::kReference;
                ref.reference = base_->node_name();
            } else {
                ref.kind = BlockdevRef::Kind::kNull;
            }
        });
    }
    Status s = found ? graph_.reopen({o}) : make_error(EINVAL, "'%s' has no backing option",
                                                        unfiltered->node_name().c_str());
    if (!s.ok()) {
        (void)rewrite_backing_file(graph_, unfiltered, old_file, old_fmt);
        return s;
    }
    return {};
}

void StreamJob::clean()
{
    blk_.reset();
    unblock_nodes();
    BlockNode *filter = filter_name_.empty() ? nullptr : graph_.find(filter_name_);
    if (filter) {
        Status s = graph_.replace_node(filter, target_);
        if (!s.ok()) log_warn("stream job '%s': cannot drop its filter: %s", id().c_str(), s.msg().c_str());
        Status r = filter->parents().empty() ? graph_.remove_node(filter->node_name())
                                             : make_error(EBUSY, "still in use by %s",
                                                          filter->parents().front()->parent_desc().c_str());
        if (!r.ok()) log_warn("stream job '%s': cannot remove its filter: %s", id().c_str(), r.msg().c_str());
        filter_name_.clear();
    }
    if (target_was_ro_) {
        (void)graph_.set_read_only(target_, true);
        target_was_ro_ = false;
    }
}

} // namespace

Result<Job *> block_stream_start(JobManager &mgr, BlockGraph &graph, const StreamJobOptions &opts)
{
    const bool has_base = !opts.base.empty(), has_base_node = !opts.base_node.empty(),
               has_bottom = !opts.bottom.empty();
    if (has_base && has_base_node) {
        return make_error(EINVAL, "'base' and 'base-node' cannot be specified at the same time");
    }
    if (has_base && has_bottom) return make_error(EINVAL, "'base' and 'bottom' cannot be specified at the same time");
    if (has_bottom && has_base_node) {
        return make_error(EINVAL, "'bottom' and 'base-node' cannot be specified at the same time");
    }
    BlockNode *bs = graph.find(opts.device);
    if (!bs) {
        return make_error(ENOENT, "Cannot find device='%s' nor node-name='%s'", opts.device.c_str(),
                          opts.device.c_str());
    }
    BlockNode *base = nullptr, *bottom = nullptr;
    if (has_base) {
        base = find_backing_image(bs, opts.base);
        if (!base) return make_error(ENOENT, "Can't find '%s' in the backing chain", opts.base.c_str());
    }
    if (has_base_node) {
        base = graph.find(opts.base_node);
        if (!base) return make_error(ENOENT, "Cannot find device='' nor node-name='%s'", opts.base_node.c_str());
        if (bs == base || !chain_contains(bs, base)) {
            return make_error(EINVAL, "Node '%s' is not a backing image of '%s'", opts.base_node.c_str(),
                              opts.device.c_str());
        }
    }
    if (has_bottom) {
        bottom = graph.find(opts.bottom);
        if (!bottom) return make_error(ENOENT, "Cannot find device='' nor node-name='%s'", opts.bottom.c_str());
        if (node_is_filter(bottom)) {
            return make_error(EINVAL, "Node '%s' is a filter, use a non-filter node as 'bottom'", opts.bottom.c_str());
        }
        if (!chain_contains(bs, bottom)) {
            return make_error(EINVAL, "Node '%s' is not in a chain starting from '%s'", opts.bottom.c_str(),
                              opts.device.c_str());
        }
    }
    BlockNode *end = bottom ? chain_next(bottom) : base;
    for (BlockNode *n = bs; n && n != end; n = chain_next(n)) BG_TRY(mgr.check_node_free(n));
    if (!base && !bottom && opts.backing_file) {
        return make_error(EINVAL, "backing file specified, but streaming the entire chain");
    }
    BlockNode *base_overlay;
    if (bottom) {
        base_overlay = bottom;
        base = backing_chain_next(bottom);
    } else {
        base_overlay = find_overlay(bs, base);
        if (!base_overlay) {
            return make_error(EINVAL, "'%s' is not in the backing chain of '%s'",
                              base ? base->node_name().c_str() : "", bs->node_name().c_str());
        }
    }
    BG_TRY(mgr.check_new_id(opts.common.id));
    if (opts.common.speed < 0) return make_error(EINVAL, "Parameter 'speed' expects a non-negative value");
    auto job = std::make_unique<StreamJob>(mgr, graph, opts);
    BG_TRY(job->setup(bs, base, base_overlay, opts.filter_node_name));
    Job *j = mgr.add(std::move(job));
    j->start();
    return j;
}

} // namespace bg

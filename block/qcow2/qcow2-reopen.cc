// qcow2 reopen hooks (blockdev-reopen; the contract is in
// block/driver-hooks.h): read-only <-> read-write and the write path's
// options.
#include <cerrno>
#include <cstring>

#include "block/qcow2/qcow2.h"
#include "util/coroutine-lock.h"
#include "util/log.h"

namespace bg {

// What a close writes, for a node that stays open: the caches written back
// in order, optionally the persistent bitmaps stored (they are no longer
// tracked afterwards), then the dirty bit cleared. 0 or negative errno.
int coroutine_fn Qcow2Node::co_reopen_clean(bool store_bitmaps)
{
    CoMutexGuard g(lock_);
    int r = co_flush_caches_locked();
    if (r < 0) return r;
    if (store_bitmaps) {
        r = co_store_bitmaps_locked();
        if (r < 0) return r;
        reopen_stored_bitmaps_ = true;
    }
    if (h_.incompatible_features & qcow2::kIncompatDirty) r = co_update_incompat_locked(0, qcow2::kIncompatDirty);
    return r;
}

Status Qcow2Node::reopen_prepare(const BlockdevOptions &opts)
{
    static const std::vector<std::string> kChangeable = {"lazy-refcounts", "pass-discard-request",
                                                         "pass-discard-snapshot", "pass-discard-other",
                                                         "overlap-check", "discard-no-unref"};
    const auto *o = opts.as<BlockdevOptionsQcow2>();
    if (!o) return node_error(EINVAL, "options are not qcow2 options");
    if (auto k = changed_driver_option(opts, kChangeable)) {
        return node_error(EINVAL, "Cannot change the option '" + *k + "'");
    }
    reopen_was_ro_ = read_only_;
    reopen_stored_bitmaps_ = false;
    if (!opts.read_only) {
        if (view_snapshot_) return qcow2::herr(EINVAL, name_, "snapshot.id and snapshot.name require read-only=on");
        if (h_.incompatible_features & qcow2::kIncompatCorrupt) {
            return qcow2::herr(EACCES, name_, "the image is corrupt; cannot be made writable (use 'img check -r')");
        }
        BG_TRY(check_write_options(*o));
    }
    const bool image_lazy = h_.compatible_features & qcow2::kCompatLazyRefcounts;
    const bool lazy_after = !opts.read_only && (o->lazy_refcounts_set ? o->lazy_refcounts : image_lazy);
    // Going read-only, or dropping lazy refcounts: the image must be clean
    // before the file turns read-only / before refcounts are kept eagerly.
    if (!read_only_ && (opts.read_only || (lazy_refcounts_ && !lazy_after))) {
        const bool to_ro = opts.read_only;
        int r = run_in_coroutine([this, to_ro] { return co_reopen_clean(to_ro); });
        if (r < 0) return node_error(-r, "Could not reopen qcow2 layer: " + std::string(strerror(-r)));
    }
    reopen_opts_ = std::make_unique<BlockdevOptionsQcow2>(*o);
    return {};
}

void Qcow2Node::reopen_commit()
{
    std::unique_ptr<BlockdevOptionsQcow2> o = std::move(reopen_opts_);
    reopen_stored_bitmaps_ = false;
    if (!o || read_only_) return;
    if (!reopen_was_ro_) {
        set_write_options(*o);
        return;
    }
    Status s = run_in_coroutine([&] { return co_open_writable(*o); });
    if (!s.ok()) {
        // Writing on could damage the image: refuse writes instead.
        log_error("qcow2: %s: reopening read-write failed, writes are refused: %s", name_.c_str(), s.msg().c_str());
        write_stopped_.store(true);
    }
}

void Qcow2Node::reopen_abort()
{
    reopen_opts_.reset();
    if (!reopen_stored_bitmaps_) return;
    reopen_stored_bitmaps_ = false;
    // The bitmaps were stored for a read-only switch that is not happening:
    // take them over again, as the writable open did.
    Status s = run_in_coroutine([this]() -> Status {
        CoMutexGuard g(lock_);
        return co_load_bitmaps_locked();
    });
    if (!s.ok()) log_error("qcow2: %s: cannot take the persistent bitmaps back: %s", name_.c_str(), s.msg().c_str());
}

} // namespace bg

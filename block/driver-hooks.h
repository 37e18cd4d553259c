// The driver's side of a block node: every hook a driver implements, and
// the state and helpers it may use, documented one by one. For driver
// authors, who include block/block-driver.h (which brings this header);
// consumers never include it: block/block.h includes it only because
// BlockNode derives from DriverHooks, and everything here is protected.
//
// The generic layer (block/io.cc, block/graph.cc, block/image-mgmt.cc) owns
// the invariants, so a hook never re-checks them. Before any I/O hook runs:
//   - the request lies inside [0, length] (writes may extend protocol
//     nodes), its offset and length are multiples of
//     bl_.request_alignment, and it is no longer than bl_.max_transfer;
//     qiov holds exactly `bytes` bytes in at most bl_.max_iov pieces;
//   - the caller's edge holds the permission the request needs, and a
//     write to a read-only node has been refused;
//   - the request is counted in flight (drain waits for it) and, when it
//     overlaps a serialising request, has waited for it.
// A hook returns 0 (or what it says) on success and a negative errno on
// failure, never throws, and may yield only where marked coroutine_fn.
//
// Threading: open, close, refresh_limits, the permission hooks and
// debug_event run in the graph's thread with no request of this node in
// flight unless said. The I/O hooks may run concurrently, from coroutines
// of several threads (multi-queue exports): a driver guards its own shared
// state (a CoMutex across yields, atomics or a std::mutex otherwise).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "block/block-common.h"
#include "block/image-mgmt.h"
#include "qapi/block-options.h"
#include "util/coroutine.h"
#include "util/error.h"
#include "util/iov.h"

namespace bg {

class BdrvChild;
class BlockNode;

class DriverHooks {
  public:
    virtual ~DriverHooks() = default;

  protected:
    // ---------------------------------------------------------------- life

    // Opens the node. opts holds the generic members (already applied to
    // read_only_ and the generic layer's state) and, in opts.drv, the
    // options the driver's own decode_options produced: read them with
    // opts.as<TheDriversOptions>(). Open or look up children with
    // open_child(), read their data through the edge it returns, and set
    // bl_, supports_fua_, supported_zero_flags_. Runs in the graph's thread,
    // inside or outside a coroutine (REQUIRES AioContext::current(); do I/O
    // through run_in_coroutine(), which works in both). On error the node is destroyed without
    // close(); children attached so far are detached by the generic layer.
    // Errors name what is at fault ("Could not open 'x': ...").
    virtual Status open(const BlockdevOptions &opts) = 0;
    // Called once before an opened node is destroyed, after the generic
    // layer flushed it and with nothing in flight. Must not fail.
    virtual void close() {}

    // ---------------------------------------------------------------- I/O

    // Reads [offset, offset+bytes) into qiov. Must fill every byte (a short
    // read of a protocol is retried or zero-filled by the driver). flags:
    // kReqSerialising and kReqCopyOnRead have been handled; others are advisory.
    virtual int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) = 0;
    // Writes qiov to [offset, offset+bytes). flags may hold kReqFua only if
    // supports_fua_ (otherwise the generic layer flushes after the write),
    // kReqWriteCompressed only if the descriptor has kCapWriteCompressed,
    // kReqWriteUnchanged. A protocol node may be written past its end (it
    // grows). Default: -ENOTSUP (read-only drivers).
    virtual int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags);
    // Makes [offset, offset+bytes) read as zeros, aligned to
    // bl_.pwrite_zeroes_alignment where the request allows. flags: only the
    // bits of supported_zero_flags_ (kReqMayUnmap: may deallocate;
    // kReqFua; kReqNoFallback: fail with -ENOTSUP rather than write data).
    // Default -ENOTSUP: the generic layer then writes zero buffers (unless
    // the caller said kReqNoFallback).
    virtual int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags);
    // Deallocates [offset, offset+bytes), aligned to bl_.pdiscard_alignment
    // and no longer than bl_.max_pdiscard. Only called with discard=unmap.
    // Advisory: the data afterwards is unspecified unless the descriptor
    // has kCapDiscardZeroes. Default (and -ENOTSUP): treated as success.
    virtual int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes);
    // Writes the driver's own caches (metadata) to its children; the
    // generic layer then flushes the children. Serialised per node. Not
    // called on read-only nodes. Default: nothing to do.
    virtual int coroutine_fn do_co_flush_to_os();
    // Makes everything written so far stable on the host (fdatasync). Only
    // on nodes that talk to storage themselves (protocols); skipped with
    // cache.no-flush and when nothing was written since the last successful
    // flush. Default: nothing to do.
    virtual int coroutine_fn do_co_flush_to_disk();
    // Changes the length to offset (exact: not rounded up; prealloc: how to
    // allocate a grown tail; flags: kReqZeroWrite if a grown tail must read
    // as zeros). Runs as a serialising request over everything from the old
    // or new end on; the node is writable. The generic layer re-reads the
    // length with do_getlength() afterwards. Default: -ENOTSUP.
    virtual int coroutine_fn do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags);
    // Describes a prefix of [offset, offset+bytes): sets *pnum (> 0, at most
    // bytes) and returns kStatus* flags; with kStatusOffsetValid also *map
    // (the offset in *file) and *file (the node holding the data, usually a
    // child's node). want_zero: the caller wants zero ranges told apart
    // (false: a fast answer will do). The generic layer resolves
    // kStatusRaw, adds ALLOCATED and EOF. Default: filters answer RAW at the
    // same offset in filtered_child(); other nodes DATA|OFFSET_VALID.
    virtual int coroutine_fn do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                                int64_t *map, BlockNode **file);
    // Reads (write false) or writes [pos, pos+bytes) of the image's VM
    // state, an area outside the guest-visible disk (QEMU's load_vmstate /
    // save_vmstate; qemu-io read -b / write -b). Called by
    // BlockNode::co_vmstate, which counted it in flight, checked pos and
    // bytes for overflow only and refused writes to a read-only node; not
    // serialised with other requests. Default: the primary child's answer
    // (filters, raw), -ENOTSUP without one.
    virtual int coroutine_fn do_co_vmstate(bool write, int64_t pos, int64_t bytes, IOVector &qiov);
    // The length in bytes, or a negative errno. Not a coroutine: must not
    // yield. Called after open and after truncate; the generic layer caches
    // the value (BlockNode::getlength()).
    virtual int64_t do_getlength() = 0;

    // ---------------------------------------------------------------- limits, permissions, events

    // Sets the driver's own request limits in *bl, which already holds the
    // merge of the children's limits (largest alignments, smallest maxima).
    // Called after open and whenever a child changes. Default: keep them.
    virtual void refresh_limits(BlockLimits *bl) { (void)bl; }
    // What this node needs (*nperm) and shares (*nshared) on a child of the
    // given role, given what its parents need and share of it. The default
    // implements QEMU's rules for filtered, data, metadata and COW
    // children; override only for unusual children.
    virtual void child_perm(ChildRole role, BlockPerm parent_perm, BlockPerm parent_shared, BlockPerm *nperm,
                            BlockPerm *nshared);
    // A permission transaction on the node's own resources (image locks):
    // check_perm takes what perm/shared need, or fails with a message
    // naming the conflict; then either set_perm (commit: drop what is no
    // longer needed) or abort_perm (roll back to the previous state)
    // follows. abort_perm is also called on the node whose own check_perm
    // failed, so it must be safe after a failed or partial check_perm.
    // Defaults: nothing to lock.
    virtual Status check_perm(BlockPerm perm, BlockPerm shared);
    virtual void set_perm(BlockPerm perm, BlockPerm shared);
    virtual void abort_perm();
    // A driver event from a parent (blkdebug's "event" rules: QEMU's
    // BlkdebugEvent names such as "l2_update"). May come from any thread;
    // must not yield, except at a blkdebug breakpoint (below). Default:
    // passes it on to every child.
    virtual void debug_event(const char *event);
    // Breakpoints (BlockNode::debug_set_breakpoint etc.; same contracts).
    // Defaults: ask the primary child (file_child()), or -ENOTSUP / false
    // without one. A driver with breakpoints (blkdebug) suspends a request
    // in debug_event(), which then yields: only there, and only when
    // called from a request's coroutine.
    virtual int do_debug_set_breakpoint(const std::string &event, const std::string &tag);
    virtual int do_debug_remove_breakpoint(const std::string &tag);
    virtual int do_debug_resume_request(const std::string &tag);
    virtual bool do_debug_is_suspended(const std::string &tag);
    // The host file descriptor whose bytes are this node's 1:1, for
    // BlockNode::passthrough_fd() (which has checked detect-zeroes is off
    // here); for write, a descriptor open for writing. Filters ask their
    // filtered child's passthrough_fd(); a node owning a file answers its
    // own descriptor (it stays the node's). Otherwise -1 with the reason in
    // *why. Main loop; must not yield. Default: -1, "stores its data in a
    // layout of its own".
    virtual int do_passthrough_fd(bool write, std::string *why);

    // ---------------------------------------------------------------- reopen (blockdev-reopen)
    // BlockGraph::reopen() changes the options of opened nodes as one
    // transaction: reopen_prepare on every node concerned (in the order
    // given, an inline child after its parent), then either reopen_commit
    // on each (children before parents) or reopen_abort on each prepared
    // one (reverse order). All three run in the graph's thread, outside a
    // coroutine (do I/O through run_in_coroutine()), with every node of
    // the transaction drained.
    //
    // reopen_prepare: opts are the node's complete new options (members
    // left out are at their defaults; child references were resolved by
    // the generic layer, which also applies read-only, discard,
    // detect-zeroes and cache.no-flush itself and refuses other generic
    // changes). read_only_ still holds the old value; opts.read_only the
    // new one. Check that the driver can switch to opts and take what the
    // switch needs (a new descriptor) without giving up what the node uses
    // now: the node must keep working unchanged if reopen_abort follows.
    // Work that needs the children still in their old state (writing
    // caches back before the node goes read-only) belongs here. An option
    // the driver cannot change: an error "Cannot change the option 'KEY'"
    // (changed_driver_option() finds it). Default: accepts opts when the
    // driver's own options are unchanged (child references aside).
    virtual Status reopen_prepare(const BlockdevOptions &opts);
    // Switches to the options prepared; read_only_ and the children hold
    // their new state (children were committed first). Must not fail:
    // what can still go wrong is logged, and the node then refuses writes
    // rather than risk the image. Default: nothing.
    virtual void reopen_commit() {}
    // Drops what reopen_prepare took and undoes what it did, leaving the
    // node as it was. Also called when reopen_prepare of this node failed,
    // so it must be safe after a failed or partial prepare. Must not fail.
    // Default: nothing.
    virtual void reopen_abort() {}

    // ---------------------------------------------------------------- image management
    // Called in a coroutine by BlockNode's public wrappers of the same name
    // (block/block.h), which have drained the node, checked that it is
    // writable where the operation writes, and turn a driver's ENOTSUP into
    // qemu-img's message (and, for filters, into the filtered node's
    // answer). Defaults: co_get_info fills nothing; co_inactivate does
    // nothing; the others return ENOTSUP.

    // Fills what the format knows: cluster size, dirty flag, recorded
    // backing file and format, snapshots, format-specific data.
    virtual Status coroutine_fn co_get_info(ImageInfo *info);
    // Checks the image (*res was reset); with fix bits set, repairs. Counts
    // problems in *res; an error Status only if the check could not run.
    virtual Status coroutine_fn co_check(CheckResult *res, CheckFix fix);
    // Internal snapshots: list; create (sn->id empty: pick the next free
    // numeric id and store it; EEXIST if taken); revert to the snapshot
    // whose id, else name, matches (ENOENT if none); delete the one
    // matching id and/or name (both must match when both are given).
    virtual Result<std::vector<SnapshotInfo>> coroutine_fn co_snapshot_list();
    virtual Status coroutine_fn co_snapshot_create(SnapshotInfo *sn);
    virtual Status coroutine_fn co_snapshot_goto(const std::string &id_or_name);
    virtual Status coroutine_fn co_snapshot_delete(const std::optional<std::string> &id,
                                                   const std::optional<std::string> &name);
    // Changes creation options the format allows changing (qemu-img amend);
    // an option it cannot change: ENOTSUP naming it. progress may be empty.
    virtual Status coroutine_fn co_amend(const CreateOptions &opts, bool force, const ProgressFn &progress);
    // Makes every cluster unallocated, keeping internal snapshots (what
    // qemu-img commit does to the top image).
    virtual Status coroutine_fn co_make_empty();
    // Persistent dirty bitmaps stored in the image: list, read one (ENOENT
    // "Dirty bitmap 'x' not found"; EINVAL when in use), change one (the
    // change is stored at close or inactivate).
    virtual Result<std::vector<PersistentBitmapInfo>> coroutine_fn co_persistent_bitmaps();
    virtual Result<DirtyBitmapData> coroutine_fn co_bitmap_data(const std::string &name);
    virtual Status coroutine_fn co_bitmap_change(const BitmapChange &c);
    // Writes back what close would write (caches, bitmaps) and reports
    // whether that worked, so a tool can fail its command before closing.
    virtual Status coroutine_fn co_inactivate();

    // ---------------------------------------------------------------- helpers for drivers (block/graph.cc)

    // Opens (inline definition) or looks up (node-name reference) the child
    // ref names and attaches it as child `name` with role; the edge gets its
    // permissions from child_perm(). An absent ref: an error naming the key
    // if required, else nullptr. Call from open() only.
    Result<BdrvChild *> open_child(const std::string &name, const BlockdevRef &ref, ChildRole role,
                                   bool required = true);
    // Attaches an existing node as child (open_child does this for you).
    Result<BdrvChild *> attach_child(BlockNode *child, const std::string &name, ChildRole role);
    // Detaches and frees the edge c (a child attached by this node).
    void detach_child(BdrvChild *c);
    // For reopen_prepare: the first key of the driver's own options whose
    // value differs between the node's current options and next (child
    // members aside), ignoring the keys in changeable; nullopt if none.
    std::optional<std::string> changed_driver_option(const BlockdevOptions &next,
                                                     const std::vector<std::string> &changeable = {}) const;
    // An error with this message, for open() and the management hooks.
    Error node_error(int err, const std::string &msg) const;
    // Records that data was written (flush generations). The generic write
    // path does this; a driver writing on its own (metadata) need not.
    void mark_dirty();

    // State the driver sets in open() (and refresh_limits):
    BlockLimits bl_;                    // the node's request limits
    bool read_only_ = false;            // set from the options before open(); a driver may set it
    bool supports_fua_ = false;         // do_co_pwritev honours kReqFua itself
    ReqFlags supported_zero_flags_ = 0; // flags do_co_pwrite_zeroes honours (kReqMayUnmap, kReqFua, kReqNoFallback)
    int64_t copy_granularity_ = 0;      // power of 2: the unit a copy-on-read copies (a format's
                                        // (sub)cluster); 0 = bl_.request_alignment

  private:
    BlockNode *self();
    const BlockNode *self() const;
};

} // namespace bg

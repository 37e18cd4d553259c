// The block graph, for consumers (exports, tools): the graph, its nodes'
// public side, edges, backends, and the driver registry with its queries
// (names, kinds, capability bits, format probing, protocol lookup). Driver
// authors include block/block-driver.h, which adds the hooks.
//
// A BlockGraph owns BlockNodes. Each node is an instance of a driver (file,
// raw, qcow2, ...) and reaches its children only through BdrvChild edges.
// Consumers never call a node directly: they hold a BlockBackend (the "root"
// edge, with its permissions), and do I/O through it.
//
// Threading model: a graph is created, changed and torn down from one thread
// (the main loop's). I/O may be issued from coroutines of several threads at
// once (multi-queue exports): request bookkeeping (in-flight counters, tracked
// requests) is thread-safe; each driver states what it guarantees. Graph
// changes (add/remove nodes, permission updates) happen only while the nodes
// concerned have no requests in flight (drained) or have no consumers yet.
//
// Errors: I/O methods return 0 (or a byte count) or a negative errno and never
// throw. Control methods return Result/Status with a message naming the node.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block-common.h"
#include "block/dirty-bitmap.h"
#include "block/driver-hooks.h"
#include "block/image-mgmt.h"
#include "qapi/block-options.h"
#include "util/aio.h"
#include "util/coroutine-lock.h"
#include "util/error.h"
#include "util/iov.h"

namespace bg {

struct BlockDriver;
class BlockGraph;
class BlockNode;
class BlockBackend;
class DriverRegistry;
struct TrackedRequest;
class DirtyBitmapSet;
// block/dirty-bitmap.cc: a node's in-memory bitmaps (opaque here).
DirtyBitmapSet *dirty_bitmap_set_new();
struct DirtyBitmapSetDeleter {
    void operator()(DirtyBitmapSet *s) const;
};

// An edge of the graph: parent (a node or a backend) -> child node.
class BdrvChild {
  public:
    const std::string &name() const { return name_; }   // "file", "backing", "data-file", "root", "image"
    BlockNode *node() const { return bs_; }
    BlockNode *parent_node() const { return parent_node_; }     // nullptr for a backend's root edge
    BlockBackend *parent_backend() const { return parent_backend_; }
    ChildRole role() const { return role_; }
    BlockPerm perm() const { return perm_; }
    BlockPerm shared() const { return shared_; }
    // Describes the parent for error messages: "node 'q'" or "export 'e'".
    std::string parent_desc() const;

    // I/O on the child node through this edge. The edge must hold the
    // permission the operation needs (write: WRITE, or WRITE_UNCHANGED with
    // kReqWriteUnchanged; truncate: RESIZE); otherwise -EPERM. Yield.
    // A read with kReqCopyOnRead also copies into the child node what it
    // reads from below it (ranges its block status calls unallocated,
    // widened to its copy granularity, the cluster) as writes of unchanged
    // data (zero ranges as write-zeroes), under a serialising request, so
    // an overlapping write or copy waits; the flag is ignored where the
    // edge holds neither WRITE nor WRITE_UNCHANGED or the node is
    // read-only.
    int coroutine_fn co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags = 0);
    int coroutine_fn co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags = 0);
    int coroutine_fn co_pread(int64_t offset, int64_t bytes, void *buf, ReqFlags flags = 0);
    int coroutine_fn co_pwrite(int64_t offset, int64_t bytes, const void *buf, ReqFlags flags = 0);
    int coroutine_fn co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags = 0);
    int coroutine_fn co_pdiscard(int64_t offset, int64_t bytes);
    int coroutine_fn co_flush();
    int coroutine_fn co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags = 0);
    int coroutine_fn co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                     int64_t *map, BlockNode **file);
    int64_t getlength() const;
    // Tells the nodes below of a driver event (blkdebug's "event" rules).
    void debug_event(const char *event);

  private:
    friend class BlockNode;
    friend class BlockGraph;
    friend class BlockBackend;
    std::string name_;
    BlockNode *bs_ = nullptr;
    BlockNode *parent_node_ = nullptr;
    BlockBackend *parent_backend_ = nullptr;
    ChildRole role_ = 0;
    BlockPerm perm_ = 0;
    BlockPerm shared_ = kPermAll;
};

// A node of the graph. Consumers use its public part. Drivers subclass it
// and implement the protected hooks of DriverHooks (block/driver-hooks.h,
// for driver authors), which the generic layer calls after bounds checks,
// alignment, splitting, request tracking and in-flight accounting.
class BlockNode : public DriverHooks {
  public:
    virtual ~BlockNode();
    BlockNode(const BlockNode &) = delete;
    BlockNode &operator=(const BlockNode &) = delete;

    const std::string &node_name() const { return node_name_; }
    const BlockDriver *driver() const { return drv_; }
    const char *driver_name() const;
    BlockGraph *graph() const { return graph_; }
    bool read_only() const { return read_only_; }
    bool implicit() const { return implicit_; }   // created inline as another node's child
    const BlockLimits &limits() const { return bl_; }
    const BlockdevOptions &options() const { return opts_; }
    // The options with every child given by node-name (what a user would
    // pass as --blockdev to rebuild this node on top of its children).
    BlockdevOptions dump_options() const;
    // Human-readable name of what the node accesses (a file name, or for
    // formats their file child's); used in messages and by tools.
    virtual std::string filename() const;

    // Length in bytes (cached; refreshed by truncate and refresh_length()).
    int64_t getlength() const { return total_bytes_.load(std::memory_order_relaxed); }
    // Re-reads the length from the driver. 0 or negative errno.
    int refresh_length();
    // Bytes the node occupies on the host (for "disk size"), or negative errno.
    virtual int64_t allocated_file_size();

    const std::vector<BdrvChild *> &children() const { return children_; }
    const std::vector<BdrvChild *> &parents() const { return parents_; }
    BdrvChild *child(const std::string &name) const;
    BdrvChild *file_child() const;      // the primary (file/image) child, or nullptr
    BdrvChild *backing_child() const;   // the COW child, or nullptr
    // True if n is this node or a node below it (through any child).
    bool reaches(const BlockNode *n) const;
    // The node whose data this node filters (filters only), else nullptr.
    virtual BdrvChild *filtered_child() const;

    // blkdebug breakpoints (qemu-io's break, remove_break, resume,
    // wait_break): the first node down the chain of primary children whose
    // driver has breakpoints answers. Main loop, outside the requests; do
    // not yield, except that resuming enters the suspended request's
    // coroutine, which runs until it yields or completes. Return 0 or a
    // negative errno: -ENOTSUP without such a node; blkdebug's -ENOENT for
    // an unknown event name or tag.
    //   debug_set_breakpoint: the next request (of any kind) that raises
    //     event at that node is suspended and tagged tag (one-shot).
    //   debug_remove_breakpoint: removes tag's breakpoints and resumes the
    //     requests suspended at it; -ENOENT if no breakpoint was removed.
    //   debug_resume_request: resumes one request suspended at tag.
    //   debug_is_suspended: whether a request is suspended at tag.
    int debug_set_breakpoint(const std::string &event, const std::string &tag);
    int debug_remove_breakpoint(const std::string &tag);
    int debug_resume_request(const std::string &tag);
    bool debug_is_suspended(const std::string &tag);
    // A host file descriptor whose bytes are this node's 1:1 (same offsets,
    // same length, through the host page cache), for consumers that hand
    // the file to the kernel (FUSE passthrough); for write, one open for
    // writing. The descriptor stays the node's: do not close it, dup it to
    // keep it. Returns -1 with the reason in *why where there is none
    // (detect-zeroes is on here or below, the driver has its own layout,
    // ...). Main loop; does not yield.
    int passthrough_fd(bool write, std::string *why);

    // Cumulative permissions held on this node by all its parents.
    BlockPerm cumulative_perm() const;
    BlockPerm cumulative_shared() const;

    // Quiesces the node and everything above it: consumers stop submitting
    // (their new requests wait) and this returns once nothing is in flight.
    // Calls nest. From a coroutine or from outside; never fails.
    void drained_begin();
    void drained_end();
    bool quiesced() const { return quiesce_counter_.load() > 0; }
    uint64_t in_flight() const { return in_flight_.load(); }

    // Block status of [offset, offset+bytes) on this node alone, with the
    // generic post-processing (RAW resolution, ALLOCATED, EOF, RECURSE).
    // Returns flags, *pnum > 0 bytes described (0 only at/after EOF), and
    // where OFFSET_VALID is set *map / *file; or a negative errno. Yields.
    int coroutine_fn co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                     int64_t *map, BlockNode **file);
    // Block status through the backing chain down to (not including) base.
    // *depth: 0 = this node, 1 = its backing node, ...; for unallocated
    // ranges at every layer *depth is the chain length and the result is
    // ZERO (reads as zeros).
    int coroutine_fn co_block_status_above(BlockNode *base, bool want_zero, int64_t offset, int64_t bytes,
                                           int64_t *pnum, int64_t *map, BlockNode **file, int *depth);

    // The VM state stored with the image (qemu-io read -b / write -b):
    // reads into / writes from qiov [pos, pos+bytes) of it. 0 or a negative
    // errno: -ENOTSUP where the format stores none (raw, file: qemu-io
    // prints "read failed: Operation not supported"), -EPERM for a write
    // to a read-only node, -EIO for a range that overflows. Filters pass
    // it to their child. Yields.
    int coroutine_fn co_vmstate(bool write, int64_t pos, int64_t bytes, IOVector &qiov);

    // Number of requests this node's driver hooks have served, for stats.
    uint64_t requests_served() const { return requests_served_.load(std::memory_order_relaxed); }

    // ---- image management (qemu-img info/check/snapshot/amend; block/image-mgmt.cc) ----
    // Each may be called from a coroutine (it then yields) or from outside
    // one (it runs the driver hook in a coroutine of AioContext::current()).
    // Operations that change the image drain the node first and need it
    // writable (EACCES "Image is read-only" otherwise). Errors carry a
    // message; ENOTSUP with qemu-img's wording when the format lacks the
    // operation.
    //
    // Format information: cluster size, dirty flag, backing file as
    // recorded, snapshots, format-specific data. Nodes without any answer
    // an empty ImageInfo.
    Result<ImageInfo> get_info();
    // Consistency check; with fix, repairs (kCheckFixLeaks, kCheckFixErrors).
    // *res is reset first. The Status is an error only when the check could
    // not run at all (ENOTSUP "This image format does not support checks");
    // problems found are counted in *res.
    Status check(CheckResult *res, CheckFix fix);
    // Internal snapshots. Filters (and raw without offset/size) pass these
    // to the node they filter, as QEMU does. ENOTSUP if nothing below
    // supports snapshots.
    Result<std::vector<SnapshotInfo>> snapshot_list();
    // Creates a snapshot of the current state; sn->id empty: the driver
    // picks the next free numeric id and stores it in sn->id. EEXIST if
    // the id is in use.
    Status snapshot_create(SnapshotInfo *sn);
    // Reverts the image to the snapshot whose id, else name, is id_or_name.
    // ENOENT if there is none.
    Status snapshot_goto(const std::string &id_or_name);
    // Deletes the snapshot matching id and/or name (at least one given;
    // both must match when both are). ENOENT if there is none.
    Status snapshot_delete(const std::optional<std::string> &id, const std::optional<std::string> &name);
    // qemu-img amend: changes the image's create options that the format
    // allows changing (qcow2: compat, lazy_refcounts, refcount_bits,
    // backing_file/backing_fmt, data_file/data_file_raw, size). Options the
    // format cannot change fail with ENOTSUP naming the option. progress
    // may be empty.
    Status amend(const CreateOptions &opts, bool force, const ProgressFn &progress);
    // Makes every cluster of the image unallocated (reads then come from
    // the backing file), keeping internal snapshots: what qemu-img commit
    // does to the top image after copying it down (QEMU bdrv_make_empty).
    // ENOTSUP "<format> does not support emptying nodes" elsewhere.
    Status make_empty();
    // Persistent dirty bitmaps stored in the image. ENOTSUP if the format
    // cannot store any (measure then reports no "bitmaps" size).
    Result<std::vector<PersistentBitmapInfo>> persistent_bitmaps();
    // The bits of one persistent bitmap (ENOENT "Dirty bitmap 'NAME' not
    // found"; EINVAL if it is inconsistent, i.e. in use).
    Result<DirtyBitmapData> bitmap_data(const std::string &name);
    // Changes the persistent bitmaps of a writable node (stored at close).
    Status bitmap_change(const BitmapChange &c);
    // Writes back what closing the node would write (qcow2: metadata
    // caches, persistent bitmaps) and reports whether that worked, so that a
    // tool about to close the image can fail its command (QEMU's
    // bdrv_inactivate). The node may be read afterwards; writes after it are
    // no longer recorded in persistent bitmaps.
    Status inactivate();

    // ---- dirty bitmaps (QEMU's block-dirty-bitmap-*; block/dirty-bitmap.cc) ----
    // In-memory and persistent bitmaps by name (block/dirty-bitmap.h). Main
    // loop, outside or inside a coroutine (they may run driver hooks, then
    // yield; changes to persistent bitmaps drain the node). Writes in other
    // threads may run meanwhile: a write racing with a change may or may not
    // be recorded by it. Errors (EINVAL unless said) carry QEMU's texts:
    //   ENOENT "Dirty bitmap 'NAME' not found";
    //   EBUSY  "Bitmap 'NAME' is currently in use by another operation and cannot be used";
    //   EROFS  "Bitmap 'NAME' is readonly and cannot be modified" (a
    //          persistent bitmap of a read-only node);
    //   EINVAL "Bitmap 'NAME' is inconsistent and cannot be used".
    // Every bitmap, newest first (bitmaps the image held at open last, in
    // reverse order of the image's directory), as query-named-block-nodes lists them.
    std::vector<DirtyBitmapInfo> dirty_bitmaps();
    // block-dirty-bitmap-add. granularity: a power of two >= 512, else
    // "Granularity must be power of 2 and at least 512"; default the
    // cluster size within [4 KiB, 64 KiB], 64 KiB without one. Errors:
    // "Bitmap name cannot be empty", EEXIST "Bitmap already exists: NAME",
    // "Bitmap name too long: NAME" (over kDirtyBitmapMaxName); persistent:
    // ENOTSUP "Can't store persistent bitmaps to NODE: Operation not supported"
    // (the driver stores none), "Can't make bitmap 'NAME' persistent in
    // 'NODE': REASON" (REASON: "Name length exceeds maximum (1023
    // characters)", "Maximum number of persistent bitmaps is already
    // reached", "Not enough space in the bitmap directory", the driver's:
    // "Cannot store dirty bitmaps in qcow2 v2 files"). A persistent bitmap
    // added to a read-only node is kept in memory only (QEMU loses it at close too).
    Status dirty_bitmap_add(const std::string &name, std::optional<uint32_t> granularity, bool persistent,
                            bool disabled);
    // block-dirty-bitmap-remove (also of an inconsistent bitmap; a
    // persistent one leaves the image when the node closes). Errors: not
    // found, busy, readonly.
    Status dirty_bitmap_remove(const std::string &name);
    // block-dirty-bitmap-clear. Errors: not found, busy, readonly,
    // inconsistent. backup: the bits before (for dirty_bitmap_restore).
    Status dirty_bitmap_clear(const std::string &name, DirtyBitmapData *backup = nullptr);
    // block-dirty-bitmap-enable / -disable (a read-only node's persistent
    // bitmaps too, in memory only). Errors: not found, busy, inconsistent.
    Status dirty_bitmap_enable(const std::string &name);
    Status dirty_bitmap_disable(const std::string &name);
    // A copy of the bits (DirtyBitmapData, block/image-mgmt.h); enabled is
    // "recording". Errors: not found, inconsistent.
    Result<DirtyBitmapData> dirty_bitmap_get(const std::string &name);
    // block-dirty-bitmap-merge: ORs every source into target, all or
    // nothing; granularities may differ (a source bit sets every target bit
    // its range touches). Errors, in QEMU's order: target not found; per
    // source "Node 'N' not found", not found, busy, inconsistent, "Bitmaps
    // are of different sizes (destination size is D, source size is S) and
    // can't be merged" (sizes: the node length rounded up to 512); then the
    // target busy, readonly, inconsistent. backup: the target's bits before.
    Status dirty_bitmap_merge(const std::string &target, const std::vector<DirtyBitmapSource> &sources,
                              DirtyBitmapData *backup = nullptr);
    // Sets the bits of name to bits exactly (a backup from clear or merge:
    // a transaction's rollback). Errors: not found; EINVAL when bits'
    // granularity is not the bitmap's.
    Status dirty_bitmap_restore(const std::string &name, const DirtyBitmapData &bits);
    // Marks a bitmap busy (an operation such as a job or an export uses
    // it) or not busy. Errors: not found.
    Status dirty_bitmap_set_busy(const std::string &name, bool busy);

  protected:
    BlockNode();

  private:
    friend class DriverHooks;
    friend class BlockGraph;
    friend class BdrvChild;
    friend class BlockBackend;
    friend struct TrackedRequestGuard;

    // Generic request path (block/io.cc; reads and writes start in
    // BdrvChild::co_preadv / co_pwritev).
    int co_pwrite_zeroes_generic(int64_t offset, int64_t bytes, ReqFlags flags);
    int co_pdiscard_generic(int64_t offset, int64_t bytes);
    int co_flush_generic();
    int co_truncate_generic(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags);
    int co_aligned_preadv(TrackedRequest *req, int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags);
    int co_aligned_pwritev(TrackedRequest *req, int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags);
    int co_do_zero_pwritev(TrackedRequest *req, int64_t offset, int64_t bytes, ReqFlags flags);
    int co_rmw_pwritev(TrackedRequest *req, int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags);
    int co_copy_on_readv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags);
    int co_copy_range(TrackedRequest *req, int64_t pos, int64_t n, bool allocated, int64_t offset, int64_t bytes,
                      IOVector &qiov, ReqFlags flags);
    void drained_begin_no_poll();
    void inc_in_flight();
    void dec_in_flight();
    void coroutine_fn request_begin(TrackedRequest *req);
    void coroutine_fn request_end(TrackedRequest *req);
    void coroutine_fn untracked_end();
    void coroutine_fn wait_untracked_drained();
    void tracked_begin(TrackedRequest *req);
    void tracked_end(TrackedRequest *req);
    void coroutine_fn wait_serialising(TrackedRequest *req);
    void refresh_limits_all();
    bool drain_busy() const;

    // In-memory dirty bitmaps (block/dirty-bitmap.cc). The generic write
    // path calls dirty_bitmaps_mark() after the driver wrote (even when it
    // failed) and dirty_bitmaps_resize() when the node's length changed
    // (grow_only: a write past the end, which may race with another).
    // Any thread; no yield.
    void dirty_bitmaps_mark(int64_t offset, int64_t bytes)
    {
        if (bitmaps_recording_.load(std::memory_order_acquire) > 0) dirty_bitmaps_mark_slow(offset, bytes);
    }
    void dirty_bitmaps_mark_slow(int64_t offset, int64_t bytes);
    void dirty_bitmaps_resize(int64_t new_length, bool grow_only);
    Status persistent_bitmap_add(const std::string &name, uint32_t granularity, bool disabled);
    void grow_to(int64_t end);

    // Graph bookkeeping (block/graph.cc); DriverHooks' helpers call these.
    // The graph-change primitives (graph_move_parent, graph_link_child,
    // graph_unlink_child, graph_relink_child) change edges only: no
    // permission refresh, no limits; the caller (BlockGraph) refreshes
    // both and undoes on failure. They keep drain counts consistent: a
    // parent is drained as often as the node its edge now points at.
    void graph_move_parent(BdrvChild *c);     // c (an edge to another node) now points at this node
    BdrvChild *graph_link_child(BlockNode *child, const std::string &name, ChildRole role);
    size_t graph_unlink_child(BdrvChild *c);  // out of both lists, not freed; returns its index in children_
    void graph_relink_child(BdrvChild *c, size_t index);
    static void shift_parent_drain(BdrvChild *c, int delta);
    Result<BdrvChild *> graph_open_child(const std::string &name, const BlockdevRef &ref, ChildRole role,
                                         bool required);
    Result<BdrvChild *> graph_attach_child(BlockNode *child, const std::string &name, ChildRole role);
    void graph_detach_child(BdrvChild *c);
    Status update_perms(std::vector<std::pair<BdrvChild *, std::pair<BlockPerm, BlockPerm>>> *undo,
                        std::vector<BlockNode *> *checked);

    const BlockDriver *drv_ = nullptr;
    BlockGraph *graph_ = nullptr;
    std::string node_name_;
    BlockdevOptions opts_;
    bool implicit_ = false;
    bool opened_ = false;
    bool no_flush_ = false;            // cache.no-flush
    bool unmap_ = false;               // discard=unmap
    BlockdevDetectZeroes detect_zeroes_ = BlockdevDetectZeroes::kOff;
    bool force_share_ = false;
    // Set by BlockGraph::reopen() on a node it turns read-only, for QEMU's
    // message when a parent still needs to write.
    bool reopen_dropping_write_ = false;
    std::vector<BdrvChild *> children_;   // owned
    std::vector<BdrvChild *> parents_;    // not owned
    std::atomic<int64_t> total_bytes_{0};
    std::atomic<uint64_t> in_flight_{0};
    std::atomic<int> quiesce_counter_{0};
    std::atomic<uint64_t> requests_served_{0};
    AioContext *drain_waiter_ctx_ = nullptr;

    // Request tracking (block/io.cc explains the scheme): requests run
    // untracked while no serialising request may be in flight, else they
    // go on the list, in order of arrival.
    std::atomic<int> serialising_{0};         // serialising requests begun, not yet ended
    std::atomic<uint64_t> untracked_{0};      // requests running untracked
    CoMutex reqs_lock_;                       // the list, and the wait for untracked_ == 0
    CoQueue untracked_drained_;               // serialising requests waiting for untracked_ == 0
    TrackedRequest *reqs_head_ = nullptr, *reqs_tail_ = nullptr;

    // Flush generations: flush_to_disk is skipped when flushed == write.
    std::atomic<uint64_t> write_gen_{0};
    uint64_t flushed_gen_ = 0;
    bool flush_active_ = false;
    CoQueue flush_queue_;
    CoMutex flush_lock_;

    // In-memory dirty bitmaps; bitmaps_recording_ counts the enabled ones
    // (the write path's fast check).
    std::unique_ptr<DirtyBitmapSet, DirtyBitmapSetDeleter> bitmaps_{dirty_bitmap_set_new()};
    std::atomic<int> bitmaps_recording_{0};
};

// DriverHooks' access to its node, inline: mark_dirty() runs on every write.
inline BlockNode *DriverHooks::self() { return static_cast<BlockNode *>(this); }
inline const BlockNode *DriverHooks::self() const { return static_cast<const BlockNode *>(this); }
inline void DriverHooks::mark_dirty() { self()->write_gen_.fetch_add(1, std::memory_order_relaxed); }

// The consumer handle: holds the root edge to a node with its own
// permissions, counts requests, queues them while drained, and emulates
// writethrough (a flush after each write).
class BlockBackend {
  public:
    // Attaches to root needing perm and sharing shared. desc names the
    // consumer in conflict messages ("export 'e'", "qemu-img"...).
    static Result<std::unique_ptr<BlockBackend>> create(BlockNode *root, BlockPerm perm, BlockPerm shared,
                                                        const std::string &desc);
    ~BlockBackend();

    BlockNode *node() const { return root_ ? root_->node() : nullptr; }
    BdrvChild *root() const { return root_; }
    const std::string &desc() const { return desc_; }
    Status set_perm(BlockPerm perm, BlockPerm shared);

    // Writethrough: every write is followed by a flush before it completes.
    void set_writethrough(bool on) { writethrough_ = on; }
    bool writethrough() const { return writethrough_; }

    // I/O. Requests outside [0, length) fail with -EIO (like QEMU's
    // BlockBackend); writes to a backend without WRITE permission -EPERM.
    // Each yields; each waits while the node is drained.
    int coroutine_fn co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags = 0);
    int coroutine_fn co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags = 0);
    int coroutine_fn co_pread(int64_t offset, int64_t bytes, void *buf, ReqFlags flags = 0);
    int coroutine_fn co_pwrite(int64_t offset, int64_t bytes, const void *buf, ReqFlags flags = 0);
    int coroutine_fn co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags = 0);
    int coroutine_fn co_pdiscard(int64_t offset, int64_t bytes);
    int coroutine_fn co_flush();
    int coroutine_fn co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags = 0);
    int coroutine_fn co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                     int64_t *map, BlockNode **file);
    // BlockNode::co_block_status_above() on the root, counted and held
    // while drained like every other request of this backend.
    int coroutine_fn co_block_status_above(BlockNode *base, bool want_zero, int64_t offset, int64_t bytes,
                                           int64_t *pnum, int64_t *map, BlockNode **file, int *depth);
    int64_t getlength() const;

    uint64_t in_flight() const { return in_flight_.load(); }
    // Drains the root node (and so this backend).
    void drain();

  private:
    friend class BlockNode;
    BlockBackend() = default;
    void coroutine_fn wait_while_quiesced();
    void inc_in_flight() { in_flight_.fetch_add(1); }
    void dec_in_flight();
    void drained_end();
    struct RequestScope;
    int check_range(int64_t offset, int64_t bytes) const;

    BdrvChild *root_ = nullptr;
    std::string desc_;
    bool writethrough_ = false;
    std::atomic<uint64_t> in_flight_{0};
    std::atomic<int> quiesce_counter_{0};
    // Requests waiting for drained_end. queue_lock_ makes "still quiesced?"
    // and "enqueue" one step against drained_end's "last drain over? take
    // the queue" (drained_end may run in another thread than the waiter).
    struct QueuedRequest;
    std::mutex queue_lock_;
    QueuedRequest *queue_head_ = nullptr, *queue_tail_ = nullptr;
};

// Owns the nodes. See the file comment for the threading model.
class BlockGraph {
  public:
    // Uses the built-in driver registry unless one is given.
    explicit BlockGraph(const DriverRegistry *registry = nullptr);
    ~BlockGraph();   // close_all()

    // blockdev-add: opens a node (and its inline children) from options.
    // On failure nothing stays open and the message names the node and key.
    Result<BlockNode *> add_node(const BlockdevOptions &opts);
    // The same from a JSON tree ({"driver": "qcow2", "file": {...}}), decoded
    // with this graph's registry and JSON typing (qapi/block-parse.h).
    Result<BlockNode *> add_node_json(const nlohmann::json &tree);
    // blockdev-del: removes a node no one uses (no parents); inline children
    // it created go with it.
    Status remove_node(const std::string &node_name);
    BlockNode *find(const std::string &node_name) const;
    // All nodes, in creation order.
    std::vector<BlockNode *> nodes() const;
    // Flushes and closes every node, parents before children.
    void close_all();

    // ---- graph changes (block/graph.cc). Main loop, outside a coroutine
    // (they drain and may run flushes through run_in_coroutine();
    // REQUIRES AioContext::current()). Each is all or nothing: on failure
    // the graph, the permissions and the image locks are as before.

    // blockdev-snapshot: overlay (a node with a backing-capable format and
    // no backing child, e.g. a qcow2 added with "backing": null) takes
    // node's place for every parent of node (the exports' backends and
    // parent nodes), and node becomes overlay's backing child (role COW).
    // node is drained meanwhile and flushed if writable. Errors, in the
    // order checked:
    //   EBUSY "Node 'N' is busy: node is used as backing hd of 'P'"
    //   EBUSY "The overlay is already in use" (someone reads overlay)
    //   EINVAL "Filters cannot be used as overlays"
    //   EINVAL "The overlay already has a backing image"
    //   EINVAL "The overlay does not support backing images"
    //   EINVAL "Making 'N' a backing child of 'O' would create a cycle"
    //   EIO "An IO error has occurred" (the flush of node failed)
    //   permission conflicts (e.g. "Block node is read-only" when a
    //   writer moves to a read-only overlay).
    // QEMU then makes node read-only once the transaction commits: the
    // caller does that with set_read_only(node, true), ignoring a failure.
    Status snapshot_overlay(BlockNode *node, BlockNode *overlay);
    // Undoes a successful snapshot_overlay(node, overlay) that nothing has
    // changed since (transaction rollback): overlay's backing edge goes,
    // and every parent of overlay points at node again. Cannot fail.
    void snapshot_overlay_undo(BlockNode *node, BlockNode *overlay);
    // Every parent of from, except to itself and nodes below to, points at
    // to instead (the edges keep their names and roles). Both are drained
    // meanwhile. Permission conflicts fail with QEMU's texts (below).
    Status replace_node(BlockNode *from, BlockNode *to);
    // blockdev-reopen: gives each named node the options given, atomically
    // over all of them (see docs/architecture.md, "Graph changes").
    // Options left out go back to their defaults. Implicit (inline)
    // children follow their parent's read-only unless listed themselves.
    // Errors:
    //   ENOENT "Failed to find node with node-name='x'"
    //   EINVAL "Cannot change the option 'KEY'" (driver, force-share, a
    //          child other than file/backing, or a driver option the
    //          driver cannot change)
    //   EINVAL "force-share=on can only be used with read-only images"
    //   EINVAL "backing is missing for 'x'" (backing left out of a node
    //          that has one; null detaches it)
    //   ENOENT "Cannot find device='' nor node-name='x'" (a child reference)
    //   EINVAL "Making 'C' a backing child of 'N' would create a cycle"
    //          (or "a file child")
    //   EPERM "Read-only block node 'x' cannot support read-write users"
    //         (a parent such as a writable export still needs WRITE)
    //   EPERM "Block node is read-only" (made writable above a read-only node)
    //   EPERM "Permission conflict on node 'x': permissions 'write, resize'
    //         are both required by node 'a' (uses node 'x' as 'file' child)
    //         and unshared by node 'b' (uses node 'x' as 'file' child)."
    //         (the same text for every graph change here; a backend is
    //         named by its description, e.g. "export 'e' (uses ... 'root'
    //         child)")
    //   EIO etc. "Error flushing drive: ..." (a writable node's flush)
    //   a driver's own error (file: "Could not reopen '/path': <strerror>";
    //   raw: open's window checks; qcow2: "Could not reopen qcow2 layer:
    //   ..." when writing back before read-only fails).
    Status reopen(const std::vector<BlockdevOptions> &opts);
    // Reopens node with its current options but read_only (QEMU's
    // bdrv_reopen_set_read_only); its implicit children follow.
    Status set_read_only(BlockNode *node, bool read_only);

    const DriverRegistry &registry() const { return *registry_; }

  private:
    friend class BlockNode;
    friend class BlockBackend;
    Result<BlockNode *> open_node(const BlockdevOptions &opts, bool implicit);
    // Recomputes permissions below node after an edge changed; all or nothing.
    Status refresh_perms(BlockNode *node);
    // The same for several nodes as one transaction.
    Status refresh_perms(const std::vector<BlockNode *> &nodes);
    // reopen()'s steps (block/graph.cc).
    struct ReopenEntry;
    struct ReopenTxn;
    Status reopen_plan(const std::vector<BlockdevOptions> &opts, ReopenTxn *t);
    Status reopen_plan_entry(size_t i, ReopenTxn *t);
    Status reopen_plan_child(size_t i, const char *key, BlockdevRef &ref, ReopenTxn *t);
    Status reopen_apply(ReopenTxn *t);
    void reopen_undo_edges(ReopenTxn *t);
    void reopen_commit(ReopenTxn *t);
    void destroy_node(BlockNode *n);
    std::string generate_node_name();

    const DriverRegistry *registry_;
    // While a graph change runs: a read-only node with writers is refused
    // with QEMU's reopen texts rather than the open-time one.
    bool change_texts_ = false;
    std::vector<std::unique_ptr<BlockNode>> nodes_;
    uint64_t auto_name_seq_ = 0;
};

// ---------------------------------------------------------------- drivers

enum class BlockDriverKind { kProtocol, kFormat, kFilter };

// Capability flags a driver declares; the conformance suite skips cases by
// them (a skip is reported as a skip).
using DriverCaps = uint32_t;
constexpr DriverCaps kCapWrite = 1 << 0;        // can be opened writable
constexpr DriverCaps kCapDiscard = 1 << 1;      // discard frees/zeroes data
constexpr DriverCaps kCapWriteZeroes = 1 << 2;  // efficient write-zeroes
constexpr DriverCaps kCapResize = 1 << 3;       // truncate (grow)
constexpr DriverCaps kCapShrink = 1 << 4;       // truncate (shrink)
constexpr DriverCaps kCapBacking = 1 << 5;      // has a backing (COW) child
constexpr DriverCaps kCapBlockStatus = 1 << 6;  // reports holes/zeroes
constexpr DriverCaps kCapFlush = 1 << 7;        // flush reaches stable storage
constexpr DriverCaps kCapDiscardZeroes = 1 << 8;// discarded ranges read back as zeros
constexpr DriverCaps kCapPersistent = 1 << 9;   // data survives close/reopen
constexpr DriverCaps kCapWriteCompressed = 1 << 10; // honours kReqWriteCompressed (else -ENOTSUP)
// Bits the conformance suite (tests/conformance/, docs/conformance.md) uses:
constexpr DriverCaps kCapPassthrough = 1 << 11; // data is the primary child's bytes 1:1 (raw, filters): the
                                                // stack's capabilities are this driver's AND its child's
constexpr DriverCaps kCapDropsWrites = 1 << 12; // writes succeed but are not stored; reads return zeros (null-co)
constexpr DriverCaps kCapDebugEvents = 1 << 13; // fires QEMU's blkdebug events (l1_update, l2_update,
                                                // refblock_update_part, ...) to its file child on metadata paths
constexpr DriverCaps kCapLocking = 1 << 14;     // image locks: other graphs/processes see conflicts

// A driver's descriptor: a constant each driver defines in its own source
// file and registers with one line in block/drivers.cc. Consumers read it
// through the registry (name, kind, capabilities, create options); the
// function pointers are for the generic layer (block/graph.cc,
// block/image-mgmt.cc).
struct BlockDriver {
    const char *name;                       // the "driver" option value
    BlockDriverKind kind;
    DriverCaps caps;
    const char *summary;                    // one line for --help
    // Decodes the driver's own option keys (the generic ones are done) into
    // the driver's DriverOptions subclass, which open() then reads with
    // opts.as<ThatClass>(). Required. See qapi/option-reader.h.
    DriverOptionsDecoder decode_options;
    // Creates an unopened node of this driver.
    std::unique_ptr<BlockNode> (*create)();
    // Format probe: score for the first bytes of an image (0 = not this
    // format; raw answers 1, qcow2 100). nullptr: never probed.
    int (*probe)(const uint8_t *buf, size_t len);

    // ---- image management (block/image-mgmt.h); optional, nullptr or
    // empty = not supported: img_create / img_measure then fail with
    // ENOTSUP and qemu-img's message.
    // Options create_image accepts (this driver's own, in the order the
    // "Formatting" line prints them; img_create merges the protocol's).
    std::span<const CreateOptionDesc> create_opts;
    // Creates the image filename (formats create their file through the
    // "file" driver's create_image). opts was validated against the merged
    // options and holds "size"; unknown keys are the protocol's. Does not
    // need a coroutine; REQUIRES AioContext::current() (opens nodes).
    // Errors name the file; EFBIG for a size the format cannot hold.
    Status (*create_image)(const std::string &filename, const CreateOptions &opts);
    // qemu-img measure: file sizes for an image created with opts holding
    // src's data (src == nullptr: "size" from opts). src is any node (read
    // through co_block_status_above); may yield when called in a coroutine.
    Result<MeasureInfo> (*measure)(const CreateOptions &opts, BlockNode *src);
    // Whether an image created with opts can store persistent dirty
    // bitmaps (qemu-img convert --bitmaps checks before creating the
    // target). nullptr: never.
    bool (*stores_bitmaps)(const CreateOptions &opts);

    // ---- protocol file names (protocol drivers; optional) ----
    // The URI schemes / prefixes this driver serves, nullptr-terminated
    // (e.g. {"nbd", "nbd+unix", nullptr}): a file name whose part before
    // the first ':' is one of them (and holds no '/') opens with this
    // driver as {"driver": NAME, "filename": FILENAME}, so the driver's
    // options decoder must accept "filename" and decode the name itself
    // (EINVAL naming it when it is malformed). nullptr: plain paths only.
    const char *const *protocol_prefixes;
    // A legacy file name syntax "NAME:..." (NAME being this driver's name),
    // optional: turns such a file name into the node's options tree (e.g.
    // "blkdebug:CONFIG:IMAGE" -> {"driver": "blkdebug", "config": ...,
    // "image": {...}}). Errors: EINVAL with QEMU's message for a malformed
    // name. Pure (no I/O); may call filename_node_options() for the names
    // it contains.
    Result<nlohmann::json> (*parse_filename)(const std::string &filename, const DriverRegistry &registry);

    // ---- blockdev-create of a format (optional) ----
    // Formats an open node as a new image (QEMU's bdrv_co_create with
    // BlockdevCreateOptions): file holds the image, data_file (nullptr:
    // none) its external data. opts has create_image's keys ("size" set;
    // "data_file" names data_file as the header records it); the same
    // checks and messages as create_image. The nodes stay open and keep
    // their lengths' new values. Runs in a coroutine (the create job's).
    // nullptr: the format cannot be created on a node.
    Status (*create_on_node)(BlockNode *file, BlockNode *data_file, const CreateOptions &opts);
};

// The drivers a graph can instantiate: one explicit list (block/drivers.cc
// builds the built-in one), no registration by static constructors. It is
// also the schema the option decoders look drivers up in. Immutable once
// built; safe to share between threads.
class DriverRegistry : public BlockdevSchema {
  public:
    DriverOptionsDecoder options_decoder(const std::string &driver) const override;
    void add(const BlockDriver *drv) { drivers_.push_back(drv); }
    const BlockDriver *find(const std::string &name) const;
    const std::vector<const BlockDriver *> &all() const { return drivers_; }
    // The format whose probe scores highest for the first bytes of an image
    // (kProbeBufSize of them, fewer for a shorter image); on a tie the one
    // registered first. nullptr if no probe scores > 0 (with raw registered,
    // never: raw scores 1 for anything).
    const BlockDriver *probe_format(const uint8_t *buf, size_t len) const;
    // True if a first sector holding these kProbeBufSize bytes would be
    // probed as a format that recognises it (a probe scoring > 1, i.e. more
    // than "anything at all"): what a probed raw image must not be turned
    // into by a guest write.
    bool probe_recognises(const uint8_t *sector0) const;
    // Reads the first kProbeBufSize bytes of node (zeros past its end) and
    // returns probe_format()'s pick. Uses a temporary read-only BlockBackend
    // on node; outside a coroutine it runs one through run_in_coroutine()
    // (REQUIRES AioContext::current()); inside one it yields.
    // Errors: those of the read ("Could not read image for determining its
    // format: ..."); ENOENT when no registered format matches.
    Result<const BlockDriver *> probe_node_format(BlockNode *node) const;

  private:
    std::vector<const BlockDriver *> drivers_;
};

// block/drivers.cc: every built-in driver, added one line each.
void register_builtin_drivers(DriverRegistry *registry);
// The registry with every built-in driver (built on first use; thread-safe).
const DriverRegistry &builtin_drivers();

// File names, as QEMU reads them: a name has a protocol prefix when it holds
// a ':' before any '/'; the prefix is the part before that ':'. "file:" is
// the default protocol's own prefix and is stripped ("file:a:b" opens the
// file "./a:b", "./" being added when the rest would itself look prefixed);
// a driver's protocol_prefixes or its parse_filename hook claim others; a
// name without a prefix is a path for the default "file" driver.

// True if filename has a protocol prefix (a ':' before any '/'). Such a name
// is absolute: a backing file name with one is not made relative to the
// image's directory.
bool filename_has_protocol(const std::string &filename);

// The driver that serves filename: the one whose protocol_prefixes hold the
// name's prefix ("nbd://h/x" -> nbd), or whose parse_filename hook and name
// match it ("blkdebug::x" -> blkdebug), else (plain paths, "file:" names,
// unknown prefixes) the default "file" driver; nullptr if the registry has
// none.
const BlockDriver *protocol_driver_for(const DriverRegistry &registry, const std::string &filename);
// The options tree of the node that opening filename gives, e.g.
// {"driver": "file", "filename": "a:b"} for "file:a:b", {"driver": "nbd",
// "filename": "nbd://h/x"}, or a parse_filename hook's tree; for
// BlockGraph::add_node_json.
// Errors (EINVAL): "Unknown protocol 'P'" when no driver claims the prefix
// P; the parse_filename hook's.
Result<nlohmann::json> filename_node_options(const std::string &filename,
                                             const DriverRegistry &registry = builtin_drivers());
// filename_node_options() for names known to be good (ones an image stores,
// or that the caller checked): on an error it gives {"driver": "file",
// "filename": filename}, so that the open reports the file's own error.
nlohmann::json protocol_node_options(const std::string &filename, const DriverRegistry &registry = builtin_drivers());
// True if drv's format probe claims any data at all (raw): probing picks it
// only when nothing else recognises the image, so writes that would make
// the image look like another format must be refused on a probed node, and
// tools warn (QEMU's "probing guessed raw"). Probes must accept len 0.
bool probe_is_catch_all(const BlockDriver *drv);

// Bytes of an image's start that format probes look at (QEMU's
// BLOCK_PROBE_BUF_SIZE).
constexpr size_t kProbeBufSize = 512;

// Checks a node name against QEMU's rules (letter first, then letters,
// digits, '-', '.', '_', at most 31 characters).
bool node_name_valid(const std::string &name);

} // namespace bg

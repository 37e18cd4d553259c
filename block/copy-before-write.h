// block/copy-before-write.h -- the state the copy-before-write filter
// (block/copy-before-write.cc) shares with the backup job (block/backup.cc):
// the "copy set", the clusters whose old contents are still to be copied
// from the filter's source ("file" child) to its "target" child, and the
// one copy routine both use, so that a cluster is copied once, by whoever
// comes first, and a guest write to it waits until the copy is done.
//
// A cluster is max(the target's cluster size, 64 KiB), or min-cluster-size
// when that is larger. The filter, before passing a write, write-zeroes or
// discard on, copies the affected clusters of the set; the backup job
// copies the rest in the background. A cluster leaves the set only once its
// data is on the target, so a write that finds it out of the set may go
// ahead at once.
//
// Threading model: main loop only (the filter's requests and the job run
// in coroutines of the main loop's AioContext).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "util/coroutine-lock.h"
#include "util/coroutine.h"

namespace bg {

class BdrvChild;
class BlockNode;
struct DirtyBitmapData;

class BlockCopyState {
  public:
    BlockCopyState(BdrvChild *source, BdrvChild *target, int64_t cluster_size);
    BlockCopyState(const BlockCopyState &) = delete;
    BlockCopyState &operator=(const BlockCopyState &) = delete;

    BdrvChild *source() const { return source_; }
    BdrvChild *target() const { return target_; }
    int64_t cluster_size() const { return cluster_; }
    int64_t length() const { return length_; }
    int64_t nb_clusters() const { return static_cast<int64_t>(dirty_.size()); }
    // Bytes of cluster c that lie inside the source (the last one may be short).
    int64_t cluster_bytes(int64_t c) const;

    // ---- the copy set
    void set_all(bool dirty);
    // Only the clusters that a set bit of bm touches stay in the set.
    void set_from_bitmap(const DirtyBitmapData &bm);
    bool is_dirty(int64_t c) const { return dirty_[static_cast<size_t>(c)] != 0; }
    int64_t dirty_count() const { return dirty_count_; }
    // Bytes the set covers.
    int64_t dirty_bytes() const;
    // The first cluster of the set at or after c, or -1.
    int64_t next_dirty(int64_t c) const;

    // ---- how clusters are copied
    // sync=top: a cluster the source's top layer does not hold is dropped
    // from the set without copying (the target shares the backing chain).
    bool skip_unallocated = false;
    // Writes compressed (kReqWriteCompressed), one cluster a request.
    bool compress = false;
    // Largest run copied by one request pair (0: 1 MiB).
    int64_t max_chunk = 0;
    // Called with the bytes of each cluster that left the set (copied or
    // skipped), whoever copied it.
    std::function<void(int64_t bytes)> on_progress;

    // Copies the clusters of [c, c + count) that are in the set, waiting
    // for the ones another copy holds. 0, or a negative errno with
    // *is_read telling whether reading the source or writing the target
    // failed; clusters not copied stay in the set.
    int coroutine_fn copy(int64_t c, int64_t count, bool *is_read);
    // The same for the clusters a byte range touches (the filter's path).
    int coroutine_fn copy_range(int64_t offset, int64_t bytes, bool *is_read);

    // break-snapshot: a copy failed and the guest write went through, so the
    // target no longer holds a point-in-time copy (negative errno; 0 = fine).
    int snapshot_error = 0;

  private:
    int coroutine_fn copy_run(int64_t c, int64_t count, bool *is_read);
    void clear(int64_t c, int64_t count);

    BdrvChild *source_, *target_;
    int64_t cluster_, length_;
    std::vector<uint8_t> dirty_, busy_;
    int64_t dirty_count_ = 0;
    CoQueue waiters_;
};

// The copy state of a copy-before-write node, nullptr for any other node.
BlockCopyState *cbw_block_copy(BlockNode *n);

} // namespace bg

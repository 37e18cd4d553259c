// qcow2 refcounts (QEMU block/qcow2-refcount.c; qcow2.md 1.8): the
// refcount table (held in memory, at most kMaxRefTableBytes) and refcount
// blocks read through the refcount cache, for every refcount width from 1
// to 64 bits.
//
// Reads need refcounts only to detect metadata preallocation (block status,
// as QEMU). PART 2: update_refcount, cluster allocation (free-cluster
// search from a cursor), refcount table growth (qcow2.md 2.3 item 7),
// flush dependencies with the L2 cache, and the dirty-bit refcount rebuild
// on a writable open of a dirty image go here.
#include <cerrno>
#include <cinttypes>

#include "block/qcow2/qcow2.h"

namespace bg {

namespace {

// Entry index of a refcount block of the given order.
uint64_t refcount_entry(const uint8_t *block, uint64_t index, uint32_t order)
{
    switch (order) {
    case 0:
    case 1:
    case 2: {
        const uint32_t bits = 1u << order;
        const uint64_t bit = index * bits;
        return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
    case 3: return block[index];
    case 4: return qcow2::be16(block + index * 2);
    case 5: return qcow2::be32(block + index * 4);
    default: return qcow2::be64(block + index * 8);
    }
}

} // namespace

Status coroutine_fn Qcow2Node::co_load_refcount_table()
{
    // parse_header checked: aligned, inside the file, <= kMaxRefTableBytes.
    const uint64_t bytes = static_cast<uint64_t>(h_.refcount_table_clusters) << cluster_bits_;
    std::vector<uint8_t> raw(bytes);
    int r = file_->co_pread(static_cast<int64_t>(h_.refcount_table_offset), static_cast<int64_t>(bytes), raw.data());
    if (r < 0) return errno_error(-r, name_ + ": cannot read the refcount table");
    refcount_table_.resize(bytes / 8);
    for (size_t i = 0; i < refcount_table_.size(); i++) refcount_table_[i] = qcow2::be64(raw.data() + i * 8);
    return {};
}

int coroutine_fn Qcow2Node::co_get_refcount(uint64_t cluster_index, uint64_t *refcount)
{
    CoMutexGuard g(lock_);
    return co_get_refcount_locked(cluster_index, refcount);
}

int coroutine_fn Qcow2Node::co_get_refcount_locked(uint64_t cluster_index, uint64_t *refcount)
{
    *refcount = 0;
    const uint32_t block_bits = cluster_bits_ + 3 - h_.refcount_order;   // log2 entries per block
    const uint64_t rt_index = cluster_index >> block_bits;
    if (rt_index >= refcount_table_.size()) return 0;
    const uint64_t block_off = refcount_table_[rt_index] & qcow2::kReftOffsetMask;
    if (!block_off) return 0;
    if (block_off & (cluster_size_ - 1)) {
        return corruption("refcount block offset 0x%" PRIx64 " is not aligned to the cluster size (refcount table index 0x%" PRIx64 ")",
                          block_off, rt_index);
    }
    const int64_t flen = file_->getlength();
    if (flen < 0) return static_cast<int>(flen);
    if (block_off + cluster_size_ > static_cast<uint64_t>(flen)) {
        return corruption("refcount block offset 0x%" PRIx64 " (refcount table index 0x%" PRIx64
                          ") is beyond the end of the file",
                          block_off, rt_index);
    }
    const uint8_t *block;
    int r = refcount_cache_->co_get(file_, block_off, &block);
    if (r < 0) return r;
    *refcount = refcount_entry(block, cluster_index & ((1ULL << block_bits) - 1), h_.refcount_order);
    refcount_cache_->release(block_off);
    return 0;
}

// QEMU's qcow2_detect_metadata_preallocation: the image was preallocated
// with preallocation=metadata if clearly more clusters are in use (refcount
// != 0) than the file has allocated on the host. Then block status asks the
// file for holes in data clusters (RECURSE). 1 = yes, 0 = no, negative
// errno. The scan stops at the threshold, so it costs at most a little more
// than the number of host clusters allocated.
int coroutine_fn Qcow2Node::co_detect_metadata_preallocation_locked()
{
    const int64_t flen = file_->getlength();
    if (flen < 0) return static_cast<int>(flen);
    const int64_t real = file_->node()->allocated_file_size();
    if (real < 0) return static_cast<int>(real);
    const uint64_t real_clusters = static_cast<uint64_t>(real) / cluster_size_;
    const uint64_t threshold = std::max(real_clusters * 10 / 9, real_clusters + 2);
    const uint64_t end_cluster = (static_cast<uint64_t>(flen) + cluster_size_ - 1) >> cluster_bits_;
    const uint32_t block_bits = cluster_bits_ + 3 - h_.refcount_order;
    uint64_t in_use = 0;
    for (uint64_t i = 0; i < end_cluster && in_use < threshold; i++) {
        // A missing refcount block: all its clusters are free.
        const uint64_t rt_index = i >> block_bits;
        if (rt_index >= refcount_table_.size()) break;
        if (!(refcount_table_[rt_index] & qcow2::kReftOffsetMask)) {
            i = ((rt_index + 1) << block_bits) - 1;
            continue;
        }
        uint64_t rc;
        int r = co_get_refcount_locked(i, &rc);
        if (r < 0) return r;
        in_use += rc != 0;
    }
    return in_use >= threshold ? 1 : 0;
}

} // namespace bg

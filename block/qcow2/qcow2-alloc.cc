// qcow2 metadata bookkeeping for the write path: header feature bits
// (dirty, corrupt), overlap checks, and the active L1 table (entry writes,
// growth). Every function here REQUIRES lock_ held.
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "block/qcow2/qcow2.h"
#include "util/log.h"

namespace bg {

namespace {

using qcow2::put_be64;

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) { return a < b + blen && b < a + alen; }

} // namespace

int coroutine_fn Qcow2Node::co_update_incompat_locked(uint64_t set, uint64_t clear)
{
    if (h_.version < 3) return (set & ~qcow2::kIncompatCorrupt) ? -ENOTSUP : 0;
    const uint64_t nv = (h_.incompatible_features | set) & ~clear;
    if (nv == h_.incompatible_features) return 0;
    uint8_t be[8];
    put_be64(be, nv);
    // Everything before must be on disk (clearing dirty: the caches).
    int r = file_->co_flush();
    if (r < 0) return r;
    r = file_->co_pwrite(72, 8, be);
    if (r < 0) return r;
    r = file_->co_flush();
    if (r < 0) return r;
    h_.incompatible_features = nv;
    return 0;
}

int coroutine_fn Qcow2Node::co_mark_dirty_locked()
{
    if (!lazy_refcounts_ || (h_.incompatible_features & qcow2::kIncompatDirty)) return 0;
    return co_update_incompat_locked(qcow2::kIncompatDirty, 0);
}

int coroutine_fn Qcow2Node::co_signal_corruption_locked(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    bool first;
    {
        std::lock_guard<std::mutex> g(corrupt_lock_);
        first = corrupt_msg_.empty();
        if (first) corrupt_msg_ = name_ + ": " + buf;
    }
    if (!read_only_ && !write_stopped_.exchange(true)) {
        log_error("qcow2: %s: marking image as corrupt: %s; further writes are refused", name_.c_str(), buf);
        co_update_incompat_locked(qcow2::kIncompatCorrupt, 0);
    } else if (first) {
        log_error("qcow2: %s: image is corrupt: %s", name_.c_str(), buf);
    }
    return -EIO;
}

int coroutine_fn Qcow2Node::co_overlap_check_locked(int ign, uint64_t offset, uint64_t bytes)
{
    const int chk = overlap_check_ & ~ign;
    if (!chk || !bytes) return 0;
    const uint64_t cs = cluster_size_;
    if ((chk & qcow2::kOlMainHeader) && offset < cs) return qcow2::kOlMainHeader;
    if ((chk & qcow2::kOlActiveL1) && h_.l1_size &&
        overlaps(offset, bytes, h_.l1_table_offset, static_cast<uint64_t>(h_.l1_size) * 8)) {
        return qcow2::kOlActiveL1;
    }
    if ((chk & qcow2::kOlRefcountTable) &&
        overlaps(offset, bytes, h_.refcount_table_offset, static_cast<uint64_t>(h_.refcount_table_clusters) * cs)) {
        return qcow2::kOlRefcountTable;
    }
    if ((chk & qcow2::kOlSnapshotTable) && h_.nb_snapshots && overlaps(offset, bytes, h_.snapshots_offset, cs)) {
        return qcow2::kOlSnapshotTable;
    }
    if ((chk & qcow2::kOlBitmapDirectory) && h_.bitmaps &&
        overlaps(offset, bytes, h_.bitmaps->directory_offset, h_.bitmaps->directory_size)) {
        return qcow2::kOlBitmapDirectory;
    }
    if (chk & qcow2::kOlActiveL2) {
        for (uint64_t e : l1_) {
            const uint64_t l2 = e & qcow2::kL1eOffsetMask;
            if (l2 && overlaps(offset, bytes, l2, cs)) return qcow2::kOlActiveL2;
        }
    }
    if (chk & qcow2::kOlRefcountBlock) {
        for (size_t i = 0; i < reftable_used_; i++) {
            const uint64_t b = refcount_table_[i] & qcow2::kReftOffsetMask;
            if (b && overlaps(offset, bytes, b, cs)) return qcow2::kOlRefcountBlock;
        }
    }
    if (chk & (qcow2::kOlInactiveL1 | qcow2::kOlInactiveL2)) {
        for (const auto &sn : snapshots_) {
            const uint64_t l1b = static_cast<uint64_t>(sn.l1_size) * 8;
            if ((chk & qcow2::kOlInactiveL1) && l1b && overlaps(offset, bytes, sn.l1_table_offset, l1b)) {
                return qcow2::kOlInactiveL1;
            }
            if ((chk & qcow2::kOlInactiveL2) && l1b) {
                std::vector<uint8_t> raw(l1b);
                int r = file_->co_pread(static_cast<int64_t>(sn.l1_table_offset), static_cast<int64_t>(l1b), raw.data());
                if (r < 0) return r;
                for (uint64_t i = 0; i < sn.l1_size; i++) {
                    const uint64_t l2 = qcow2::be64(raw.data() + i * 8) & qcow2::kL1eOffsetMask;
                    if (l2 && overlaps(offset, bytes, l2, cs)) return qcow2::kOlInactiveL2;
                }
            }
        }
    }
    return 0;
}

int coroutine_fn Qcow2Node::co_write_l1_entry_locked(uint64_t index)
{
    // The 512-byte sector holding the entry (64 entries), written whole.
    const uint64_t first = index & ~uint64_t{63};
    const uint64_t n = std::min<uint64_t>(64, l1_.size() - first);
    uint8_t buf[512] = {};
    for (uint64_t i = 0; i < n; i++) put_be64(buf + i * 8, l1_[first + i]);
    const uint64_t off = h_.l1_table_offset + first * 8;
    int ol = co_overlap_check_locked(qcow2::kOlActiveL1, off, n * 8);
    if (ol) {
        return ol < 0 ? ol
                      : co_signal_corruption_locked("L1 table write at 0x%" PRIx64 " would overwrite metadata (%d)", off,
                                                    ol);
    }
    file_->debug_event("l1_update");
    return file_->co_pwrite(static_cast<int64_t>(off), static_cast<int64_t>(n * 8), buf);
}

// QEMU's qcow2_grow_l1_table: the new table is allocated, written and
// flushed; the header is switched (l1_size and l1_table_offset, one
// 12-byte write) and flushed; the old table is freed.
int coroutine_fn Qcow2Node::co_grow_l1_locked(uint64_t min_size)
{
    if (min_size <= l1_.size()) return 0;
    if (min_size * 8 > qcow2::kMaxL1Bytes) return -EFBIG;
    uint64_t new_size = std::max<uint64_t>(min_size, l1_.size() + l1_.size() / 2);
    new_size = std::min<uint64_t>(new_size, qcow2::kMaxL1Bytes / 8);
    // Whole clusters: round the entry count up to fill them.
    const uint64_t bytes = (new_size * 8 + cluster_size_ - 1) & ~(cluster_size_ - 1);
    new_size = std::min<uint64_t>(bytes / 8, qcow2::kMaxL1Bytes / 8);
    // Everything the old table points at must be on disk first.
    int r = l2_cache_->co_flush();
    if (r < 0) return r;
    file_->debug_event("l1_grow_alloc_table");
    int64_t off = co_alloc_clusters_locked(bytes);
    if (off < 0) return static_cast<int>(off);
    std::vector<uint8_t> raw(bytes, 0);
    for (size_t i = 0; i < l1_.size(); i++) put_be64(raw.data() + i * 8, l1_[i]);
    r = refcount_cache_->co_flush();
    if (r >= 0) {
        int ol = co_overlap_check_locked(0, static_cast<uint64_t>(off), bytes);
        if (ol) {
            r = ol < 0 ? ol : co_signal_corruption_locked("new L1 table at 0x%" PRIx64 " overlaps metadata", off);
        }
    }
    if (r >= 0) {
        file_->debug_event("l1_grow_write_table");
        r = file_->co_pwrite(off, static_cast<int64_t>(bytes), raw.data());
    }
    if (r >= 0) r = file_->co_flush();
    if (r < 0) {
        co_free_clusters_locked(static_cast<uint64_t>(off), bytes, qcow2::DiscardType::kOther);
        return r;
    }
    uint8_t hdr[12];
    const uint32_t sz = static_cast<uint32_t>(new_size);
    hdr[0] = static_cast<uint8_t>(sz >> 24);
    hdr[1] = static_cast<uint8_t>(sz >> 16);
    hdr[2] = static_cast<uint8_t>(sz >> 8);
    hdr[3] = static_cast<uint8_t>(sz);
    put_be64(hdr + 4, static_cast<uint64_t>(off));
    file_->debug_event("l1_grow_activate_table");
    r = file_->co_pwrite(36, 12, hdr);
    if (r >= 0) r = file_->co_flush();
    if (r < 0) {
        co_free_clusters_locked(static_cast<uint64_t>(off), bytes, qcow2::DiscardType::kOther);
        return r;
    }
    const uint64_t old_off = h_.l1_table_offset;
    const uint64_t old_bytes = static_cast<uint64_t>(h_.l1_size) * 8;
    h_.l1_table_offset = static_cast<uint64_t>(off);
    h_.l1_size = sz;
    l1_.resize(new_size, 0);
    if (old_bytes) co_free_clusters_locked(old_off, old_bytes, qcow2::DiscardType::kOther);
    return 0;
}

} // namespace bg

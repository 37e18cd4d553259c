// qcow2 refcounts (QEMU block/qcow2-refcount.c; qcow2.md 1.8, 2.3): the
// refcount table (held in memory, at most kMaxRefTableBytes) and refcount
// blocks read and written through the refcount cache, for every refcount
// width from 1 to 64 bits; cluster allocation (free-cluster search from a
// cursor, byte-granular allocation for compressed data), refcount block
// allocation, refcount table growth, deferred discards of freed clusters,
// and the refcount rebuild that repairs a dirty (lazy refcounts) image.
//
// Ordering (docs/qcow2.md "Ordering rules"):
//  - a new refcount block is written and flushed before the refcount table
//    entry pointing at it;
//  - a grown refcount table (and the refcount blocks covering it) is written
//    and flushed, then the header is switched and flushed, then the old
//    table is freed;
//  - a decrement makes the refcount cache depend on the L2 cache, so the
//    pointer removal reaches the disk before the refcount that frees it;
//  - freed clusters are discarded in the file only after the caches are
//    written and synced (co_process_discards_locked from co_flush_caches_locked).
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "block/qcow2/qcow2.h"
#include "util/log.h"

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

using qcow2::put_be;

void set_refcount_entry(uint8_t *block, uint64_t index, uint32_t order, uint64_t value)
{
    switch (order) {
    case 0:
    case 1:
    case 2: {
        const uint32_t bits = 1u << order;
        const uint64_t bit = index * bits;
        const uint8_t mask = static_cast<uint8_t>(((1u << bits) - 1) << (bit % 8));
        block[bit / 8] = static_cast<uint8_t>((block[bit / 8] & ~mask) | ((value << (bit % 8)) & mask));
        break;
    }
    case 3: block[index] = static_cast<uint8_t>(value); break;
    case 4: put_be(block + index * 2, value, 2); break;
    case 5: put_be(block + index * 4, value, 4); break;
    default: put_be(block + index * 8, value, 8); break;
    }
}

} // namespace

void qcow2::self_covering_refcounts(uint64_t nb_clusters, uint32_t cluster_bits, uint32_t refcount_order,
                                    uint64_t *table_clusters, uint64_t *nb_blocks)
{
    const uint64_t cs = 1ULL << cluster_bits;
    const uint64_t per_block = 1ULL << (cluster_bits + 3 - refcount_order);
    uint64_t tbl = 1, blocks = 1;
    for (;;) {
        const uint64_t total = nb_clusters + tbl + blocks;
        const uint64_t need_blocks = (total + per_block - 1) / per_block;
        const uint64_t need_tbl = (need_blocks * 8 + cs - 1) / cs;
        if (need_blocks <= blocks && need_tbl <= tbl) break;
        blocks = std::max(blocks, need_blocks);
        tbl = std::max(tbl, need_tbl);
    }
    *table_clusters = tbl;
    *nb_blocks = blocks;
}

Status coroutine_fn Qcow2Node::co_load_refcount_table()
{
    // parse_header checked: aligned, inside the file, <= kMaxRefTableBytes.
    const uint64_t bytes = static_cast<uint64_t>(h_.refcount_table_clusters) << cluster_bits_;
    std::vector<uint8_t> raw(bytes);
    file_->debug_event("reftable_load");
    int r = file_->co_pread(static_cast<int64_t>(h_.refcount_table_offset), static_cast<int64_t>(bytes), raw.data());
    if (r < 0) return errno_error(-r, name_ + ": cannot read the refcount table");
    refcount_table_.resize(bytes / 8);
    for (size_t i = 0; i < refcount_table_.size(); i++) refcount_table_[i] = qcow2::be64(raw.data() + i * 8);
    reftable_changed();
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

// Sets the refcount of one cluster whose refcount block exists.
int coroutine_fn Qcow2Node::co_set_refcount_locked(uint64_t cluster_index, uint64_t value)
{
    const uint32_t block_bits = cluster_bits_ + 3 - h_.refcount_order;
    const uint64_t rt_index = cluster_index >> block_bits;
    if (rt_index >= refcount_table_.size() || !(refcount_table_[rt_index] & qcow2::kReftOffsetMask)) {
        int r = co_ensure_refblock_ex_locked(cluster_index, cluster_index, cluster_index + 1);
        if (r < 0) return r;
    }
    const uint64_t block_off = refcount_table_[rt_index] & qcow2::kReftOffsetMask;
    const uint8_t *block;
    // Like QEMU: the update path fires refblock_load (cached or not), the
    // lookups of the allocator do not.
    file_->debug_event("refblock_load");
    int r = refcount_cache_->co_get(file_, block_off, &block);
    if (r < 0) return r;
    uint8_t *w = refcount_cache_->mutable_data(block_off);
    set_refcount_entry(w, cluster_index & ((1ULL << block_bits) - 1), h_.refcount_order, value);
    refcount_cache_->release(block_off);
    return 0;
}

bool Qcow2Node::inflight(uint64_t cluster_index) const
{
    std::lock_guard<std::mutex> g(inflight_lock_);
    return inflight_host_.count(cluster_index) != 0;
}

void Qcow2Node::inflight_inc(uint64_t host, uint64_t bytes)
{
    if (data_file_ != file_) return;   // data file clusters are never reallocated
    std::lock_guard<std::mutex> g(inflight_lock_);
    for (uint64_t c = host >> cluster_bits_; c < (host + bytes + cluster_size_ - 1) >> cluster_bits_; c++) {
        inflight_host_[c]++;
    }
}

void Qcow2Node::inflight_dec(uint64_t host, uint64_t bytes)
{
    if (data_file_ != file_) return;
    std::lock_guard<std::mutex> g(inflight_lock_);
    for (uint64_t c = host >> cluster_bits_; c < (host + bytes + cluster_size_ - 1) >> cluster_bits_; c++) {
        auto it = inflight_host_.find(c);
        if (it != inflight_host_.end() && --it->second == 0) inflight_host_.erase(it);
    }
}

// Makes sure the refcount block covering cluster_index exists. A new block
// goes to a free cluster inside the range it covers (so it counts itself)
// outside the excluded clusters [ex_start, ex_end), or, when there is none,
// to a cluster allocated elsewhere. The block is written and flushed before
// the table entry pointing at it.
int coroutine_fn Qcow2Node::co_ensure_refblock_ex_locked(uint64_t cluster_index, uint64_t ex_start, uint64_t ex_end)
{
    const uint32_t block_bits = cluster_bits_ + 3 - h_.refcount_order;
    const uint64_t rt_index = cluster_index >> block_bits;
    if (rt_index >= refcount_table_.size()) {
        int r = co_grow_refcount_table_locked(rt_index + 1);
        if (r < 0) return r;
        if (refcount_table_[rt_index] & qcow2::kReftOffsetMask) return 0;   // the growth area covered it
    } else if (refcount_table_[rt_index] & qcow2::kReftOffsetMask) {
        return 0;
    }
    file_->debug_event("refblock_alloc");
    const uint64_t first = rt_index << block_bits, entries = 1ULL << block_bits;
    uint64_t block_cluster = UINT64_MAX;
    for (uint64_t c = first; c < first + entries; c++) {
        if (c >= ex_start && c < ex_end) continue;
        if (inflight(c)) continue;
        block_cluster = c;   // no block: every cluster in the range is free
        break;
    }
    const bool self = block_cluster != UINT64_MAX;
    if (!self) {
        uint64_t got;
        int64_t off = co_alloc_run_locked(1, true, &got);
        if (off < 0) return static_cast<int>(off);
        if (refcount_table_[rt_index] & qcow2::kReftOffsetMask) {
            // The allocation created this very block (it searched inside
            // our range): use that one.
            co_free_clusters_locked(static_cast<uint64_t>(off), cluster_size_, qcow2::DiscardType::kNever);
            return 0;
        }
        block_cluster = static_cast<uint64_t>(off) >> cluster_bits_;
    }
    const uint64_t block_off = block_cluster << cluster_bits_;
    // The block in the cache: zeros, plus its own refcount if it counts itself.
    uint8_t *data;
    refcount_cache_->discard(block_off);
    int r = refcount_cache_->co_get_empty(block_off, &data);
    if (r < 0) return r;
    if (self) set_refcount_entry(data, block_cluster - first, h_.refcount_order, 1);
    // Written and flushed before the table points at it. The write goes
    // through the cache (overlap check, event); flushing the whole cache is
    // fine: other dirty blocks may be written early, never late.
    file_->debug_event("refblock_alloc_write");
    r = refcount_cache_->co_flush_and_sync();
    refcount_cache_->release(block_off);
    if (r < 0) {
        refcount_cache_->discard(block_off);
        if (!self) co_free_clusters_locked(block_off, cluster_size_, qcow2::DiscardType::kNever);
        return r;
    }
    uint8_t be[8];
    put_be(be, block_off, 8);
    file_->debug_event("refblock_alloc_hookup");
    r = file_->co_pwrite(static_cast<int64_t>(h_.refcount_table_offset + rt_index * 8), 8, be);
    if (r < 0) {
        refcount_cache_->discard(block_off);
        if (!self) co_free_clusters_locked(block_off, cluster_size_, qcow2::DiscardType::kNever);
        return r;
    }
    refcount_table_[rt_index] = block_off;
    reftable_changed();
    return 0;
}

// Grows the refcount table to at least min_entries (QEMU's
// qcow2_refcount_area): a new table and the refcount blocks that cover it
// are placed together in free space, written and flushed; then the header
// is switched and flushed; then the old table is freed.
int coroutine_fn Qcow2Node::co_grow_refcount_table_locked(uint64_t min_entries)
{
    file_->debug_event("reftable_grow");
    const uint32_t block_bits = cluster_bits_ + 3 - h_.refcount_order;
    const uint64_t per_cluster = cluster_size_ / 8;
    const uint64_t old_entries = refcount_table_.size();
    uint64_t want = std::max<uint64_t>(min_entries, old_entries + old_entries / 2 + 1);
    uint64_t nb_blocks = 1;   // new refcount blocks, placed after the table
    // Free space for the table and the blocks: from the end of the file on
    // (clusters allocated there but not yet written are skipped below).
    const int64_t flen = file_->getlength();
    if (flen < 0) return static_cast<int>(flen);
    uint64_t start = (static_cast<uint64_t>(flen) + cluster_size_ - 1) >> cluster_bits_;
    for (int attempt = 0; attempt < 100000; attempt++) {
        const uint64_t tbl_clusters = (want + per_cluster - 1) / per_cluster;
        if (tbl_clusters * cluster_size_ > qcow2::kMaxRefTableBytes) return -EFBIG;
        const uint64_t area = tbl_clusters + nb_blocks;
        bool busy = false;
        for (uint64_t c = start; c < start + area && !busy; c++) {
            uint64_t rc;
            int r = co_get_refcount_locked(c, &rc);
            if (r < 0) return r;
            if (!cluster_free_locked(c, rc)) {
                start = c + 1;
                busy = true;
            }
        }
        if (busy) continue;
        // Refcount blocks the area needs (ranges without a block).
        std::vector<uint64_t> need;
        uint64_t max_rt = 0;
        for (uint64_t rt = start >> block_bits; rt <= (start + area - 1) >> block_bits; rt++) {
            max_rt = rt;
            if (rt >= old_entries || !(refcount_table_[rt] & qcow2::kReftOffsetMask)) need.push_back(rt);
        }
        if (need.size() > nb_blocks) {
            nb_blocks = need.size();
            continue;
        }
        const uint64_t new_entries = tbl_clusters * per_cluster;
        if (max_rt >= new_entries) {
            want = max_rt + 1;
            continue;
        }
        // Only the blocks needed are placed (and counted).
        nb_blocks = need.size();
        const uint64_t used = tbl_clusters + nb_blocks;
        // Build the new blocks: refcount 1 for every area cluster they cover.
        const uint64_t tbl_off = start << cluster_bits_;
        std::vector<uint64_t> table(new_entries, 0);
        std::copy(refcount_table_.begin(), refcount_table_.end(), table.begin());
        std::vector<AlignedBuf> blocks;
        const size_t align = std::max<size_t>(file_->node()->limits().opt_mem_alignment, 64);
        for (size_t i = 0; i < nb_blocks; i++) {
            blocks.push_back(aligned_alloc_buf(align, cluster_size_));
            memset(blocks.back().get(), 0, cluster_size_);
        }
        for (size_t i = 0; i < need.size(); i++) table[need[i]] = (start + tbl_clusters + i) << cluster_bits_;
        for (uint64_t c = start; c < start + used; c++) {
            const uint64_t rt = c >> block_bits;
            auto it = std::find(need.begin(), need.end(), rt);
            if (it == need.end()) continue;
            set_refcount_entry(blocks[it - need.begin()].get(), c & ((1ULL << block_bits) - 1), h_.refcount_order, 1);
        }
        // Area clusters in ranges that already have a block: through the cache.
        std::vector<uint64_t> counted;
        // Until the header is switched nothing refers to the area: a failure
        // before that takes these refcounts back (else they would leak; QEMU
        // places the area in ranges without blocks and leaks nothing).
        auto undo = [&](int err) {
            for (uint64_t c : counted) co_set_refcount_locked(c, 0);
            return err;
        };
        for (uint64_t c = start; c < start + used; c++) {
            const uint64_t rt = c >> block_bits;
            if (std::find(need.begin(), need.end(), rt) != need.end()) continue;
            int r = co_set_refcount_locked(c, 1);
            if (r < 0) return undo(r);
            counted.push_back(c);
        }
        // Write: blocks, table; flush (with the refcount cache).
        file_->debug_event("refblock_alloc_write_blocks");
        for (size_t i = 0; i < nb_blocks; i++) {
            const uint64_t off = (start + tbl_clusters + i) << cluster_bits_;
            int r = file_->co_pwrite(static_cast<int64_t>(off), static_cast<int64_t>(cluster_size_), blocks[i].get());
            if (r < 0) return undo(r);
        }
        file_->debug_event("refblock_alloc_write_table");
        std::vector<uint8_t> raw(new_entries * 8);
        for (uint64_t i = 0; i < new_entries; i++) put_be(raw.data() + i * 8, table[i], 8);
        int r = file_->co_pwrite(static_cast<int64_t>(tbl_off), static_cast<int64_t>(raw.size()), raw.data());
        if (r < 0) return undo(r);
        r = refcount_cache_->co_flush_and_sync();
        if (r < 0) return undo(r);
        // Switch the header (refcount_table_offset and _clusters: bytes 48..59).
        file_->debug_event("refblock_alloc_switch_table");
        uint8_t hdr[12];
        put_be(hdr, tbl_off, 8);
        put_be(hdr + 8, tbl_clusters, 4);
        // From here on a failure keeps the area's refcounts: the header may
        // have reached the disk even though the write reported an error,
        // and then the new table and blocks are in use (a leak is the price).
        r = file_->co_pwrite(48, 12, hdr);
        if (r < 0) return r;
        r = file_->co_flush();
        if (r < 0) return r;
        const uint64_t old_off = h_.refcount_table_offset;
        const uint64_t old_bytes = static_cast<uint64_t>(h_.refcount_table_clusters) << cluster_bits_;
        h_.refcount_table_offset = tbl_off;
        h_.refcount_table_clusters = static_cast<uint32_t>(tbl_clusters);
        refcount_table_ = std::move(table);
        reftable_changed();
        // The old table is unused now.
        co_free_clusters_locked(old_off, old_bytes, qcow2::DiscardType::kOther);
        return 0;
    }
    return -ENOSPC;
}

int64_t coroutine_fn Qcow2Node::co_alloc_run_locked(uint64_t max_clusters, bool exact, uint64_t *got,
                                                    bool *fresh)
{
    *got = 0;
    if (fresh) *fresh = false;
    if (max_clusters == 0) return -EINVAL;
    int r = co_mark_dirty_locked();
    if (r < 0) return r;
    file_->debug_event("cluster_alloc");
    // Find the run: scan from the cursor; clusters beyond the file are free.
    uint64_t start = 0, n = 0, first_zero = UINT64_MAX;
    for (int attempt = 0;; attempt++) {
        if (attempt > 1000) return -ENOSPC;
        n = 0;
        first_zero = UINT64_MAX;
        for (uint64_t c = free_cluster_index_;; c++) {
            uint64_t rc;
            r = co_get_refcount_locked(c, &rc);
            if (r < 0) return r;
            if (rc == 0 && first_zero == UINT64_MAX) first_zero = c;
            if (!cluster_free_locked(c, rc)) {
                if (n && !exact) break;
                n = 0;
                continue;
            }
            if (n == 0) start = c;
            n++;
            if (n == max_clusters) break;
        }
        if ((start << cluster_bits_) + (n << cluster_bits_) > (1ULL << 56)) return -EFBIG;
        // Refcount blocks for the run (placed outside it). Creating them may
        // grow the refcount table or allocate elsewhere, which may take
        // clusters of the run: then search again.
        for (uint64_t i = start; i < start + n; i++) {
            r = co_ensure_refblock_ex_locked(i, start, start + n);
            if (r < 0) return r;
        }
        bool still_free = true;
        for (uint64_t i = start; i < start + n && still_free; i++) {
            uint64_t rc;
            r = co_get_refcount_locked(i, &rc);
            if (r < 0) return r;
            still_free = cluster_free_locked(i, rc);
        }
        if (still_free) break;
    }
    for (uint64_t i = start; i < start + n; i++) {
        r = co_set_refcount_locked(i, 1);
        if (r < 0) {
            for (uint64_t j = start; j < i; j++) co_set_refcount_locked(j, 0);
            return r;
        }
    }
    const uint64_t run_end = (start + n) << cluster_bits_;
    if (fresh) {
        // Past the mark and past the file's end: nothing (not even a write
        // that did not raise the mark) can have left bytes there.
        const int64_t flen = file_->getlength();
        const uint64_t file_end = flen < 0 ? UINT64_MAX
                                           : (static_cast<uint64_t>(flen) + cluster_size_ - 1) & ~(cluster_size_ - 1);
        *fresh = (start << cluster_bits_) >= host_zero_from_ && (start << cluster_bits_) >= file_end;
    }
    raise_host_zero_from(run_end);
    // Everything before the first cluster with refcount 0 is in use (a
    // freed cluster under I/O has refcount 0: the cursor stops there).
    if (first_zero == start) free_cluster_index_ = start + n;
    else if (first_zero != UINT64_MAX && first_zero > free_cluster_index_) free_cluster_index_ = first_zero;
    *got = n;
    return static_cast<int64_t>(start << cluster_bits_);
}

int64_t coroutine_fn Qcow2Node::co_alloc_clusters_locked(uint64_t bytes)
{
    const uint64_t n = (bytes + cluster_size_ - 1) >> cluster_bits_;
    uint64_t got;
    return co_alloc_run_locked(n ? n : 1, true, &got);
}

int64_t coroutine_fn Qcow2Node::co_alloc_clusters_at_locked(uint64_t offset, uint64_t nb_clusters)
{
    int r = co_mark_dirty_locked();
    if (r < 0) return r;
    const uint64_t first = offset >> cluster_bits_;
    uint64_t n = 0;
    for (; n < nb_clusters; n++) {
        uint64_t rc;
        r = co_get_refcount_locked(first + n, &rc);
        if (r < 0) return r;
        if (!cluster_free_locked(first + n, rc)) break;
    }
    for (uint64_t i = first; i < first + n; i++) {
        r = co_ensure_refblock_ex_locked(i, first, first + n);
        if (r < 0) return r;
    }
    // Refcount block creation may have taken some of them.
    uint64_t ok = 0;
    for (; ok < n; ok++) {
        uint64_t rc;
        r = co_get_refcount_locked(first + ok, &rc);
        if (r < 0) return r;
        if (!cluster_free_locked(first + ok, rc)) break;
    }
    n = ok;
    for (uint64_t i = first; i < first + n; i++) {
        r = co_set_refcount_locked(i, 1);
        if (r < 0) return r;
    }
    raise_host_zero_from((first + n) << cluster_bits_);
    return static_cast<int64_t>(n);
}

int64_t coroutine_fn Qcow2Node::co_alloc_bytes_locked(uint64_t bytes)
{
    if (bytes == 0 || bytes >= cluster_size_) return -EINVAL;
    file_->debug_event("cluster_alloc_bytes");
    uint64_t off = free_byte_offset_;
    if (off && (off & (cluster_size_ - 1))) {
        const uint64_t cur = off & ~(cluster_size_ - 1);
        const uint64_t end = off + bytes;
        // A refcount at its maximum (e.g. 1-bit refcounts): a new cluster.
        uint64_t rc;
        int r = co_get_refcount_locked(cur >> cluster_bits_, &rc);
        if (r < 0) return r;
        if (rc >= refcount_max()) {
            off = 0;
        } else if (end <= cur + cluster_size_) {
            r = co_update_refcount_locked(cur, 1, 1, qcow2::DiscardType::kNever);
            if (r < 0) return r;
            free_byte_offset_ = end & (cluster_size_ - 1) ? end : 0;
            return static_cast<int64_t>(off);
        } else {
            // Spills into the next cluster: only if that one is free.
            int64_t got = co_alloc_clusters_at_locked(cur + cluster_size_, 1);
            if (got < 0) return got;
            if (got == 1) {
                r = co_update_refcount_locked(cur, 1, 1, qcow2::DiscardType::kNever);
                if (r < 0) {
                    co_free_clusters_locked(cur + cluster_size_, cluster_size_, qcow2::DiscardType::kNever);
                    return r;
                }
                free_byte_offset_ = end & (cluster_size_ - 1) ? end : 0;
                return static_cast<int64_t>(off);
            }
        }
    }
    int64_t n = co_alloc_clusters_locked(cluster_size_);
    if (n < 0) return n;
    free_byte_offset_ = static_cast<uint64_t>(n) + bytes;
    return n;
}

int coroutine_fn Qcow2Node::co_update_refcount_locked(uint64_t offset, uint64_t length, int64_t addend,
                                                      qcow2::DiscardType type)
{
    if (length == 0 || addend == 0) return 0;
    int r = co_mark_dirty_locked();
    if (r < 0) return r;
    const uint64_t first = offset >> cluster_bits_;
    const uint64_t last = (offset + length - 1) >> cluster_bits_;
    const uint64_t max = refcount_max();
    // Check every cluster first, so that nothing changes on an error.
    for (uint64_t c = first; c <= last; c++) {
        uint64_t rc;
        r = co_get_refcount_locked(c, &rc);
        if (r < 0) return r;
        if (addend < 0 && rc < static_cast<uint64_t>(-addend)) {
            return co_signal_corruption_locked("refcount of cluster 0x%" PRIx64 " would drop below 0",
                                               c << cluster_bits_);
        }
        if (addend > 0 && max - rc < static_cast<uint64_t>(addend)) return -ERANGE;
    }
    if (addend < 0) {
        file_->debug_event("cluster_free");
        // The reference (an L2 entry or table pointer) goes away on disk
        // first (QEMU: refcount cache depends on the L2 cache).
        r = refcount_cache_->co_set_dependency(l2_cache_.get());
        if (r < 0) return r;
    }
    for (uint64_t c = first; c <= last; c++) {
        uint64_t rc;
        r = co_get_refcount_locked(c, &rc);
        if (r < 0) return r;
        const uint64_t nv = rc + static_cast<uint64_t>(addend);
        r = co_set_refcount_locked(c, nv);
        if (r < 0) return r;
        if (nv == 0) {
            const uint64_t off = c << cluster_bits_;
            if (c < free_cluster_index_) free_cluster_index_ = c;
            if (free_byte_offset_ && (free_byte_offset_ & ~(cluster_size_ - 1)) == off) free_byte_offset_ = 0;
            // A freed L2 table must not be written back later (the cluster
            // may be reused for data).
            for (uint64_t so = off; so < off + cluster_size_; so += l2_cache_->slice_size()) l2_cache_->discard(so);
            refcount_cache_->discard(off);
            if (passes_discard(type)) {
                if (!pending_discards_.empty() && pending_discards_.back().first + pending_discards_.back().second == off) {
                    pending_discards_.back().second += cluster_size_;
                } else {
                    pending_discards_.emplace_back(off, cluster_size_);
                }
            }
        }
    }
    return 0;
}

void coroutine_fn Qcow2Node::co_free_clusters_locked(uint64_t offset, uint64_t length, qcow2::DiscardType type)
{
    int r = co_update_refcount_locked(offset, length, -1, type);
    if (r < 0) {
        // A leak at worst (qemu-img check -r leaks).
        log_error("qcow2: %s: cannot free clusters at 0x%" PRIx64 " (%" PRIu64 " bytes): %s; they leak",
                  name_.c_str(), offset, length, strerror(-r));
    }
}

int coroutine_fn Qcow2Node::co_process_discards_locked()
{
    auto list = std::move(pending_discards_);
    pending_discards_.clear();
    for (auto &d : list) {
        // Only clusters still free and not in flight (they may have been
        // reallocated since).
        for (uint64_t off = d.first; off < d.first + d.second; off += cluster_size_) {
            uint64_t rc;
            int r = co_get_refcount_locked(off >> cluster_bits_, &rc);
            if (r < 0 || !cluster_free_locked(off >> cluster_bits_, rc)) continue;
            file_->co_pdiscard(static_cast<int64_t>(off), static_cast<int64_t>(cluster_size_));
        }
    }
    return 0;
}

int coroutine_fn Qcow2Node::co_flush_caches_locked()
{
    // L2 first: with lazy refcounts nothing orders them, and a freed
    // cluster's refcount must not reach the disk before the L2 update.
    int r = l2_cache_->co_flush();
    if (r < 0) return r;
    r = refcount_cache_->co_flush();
    if (r < 0) return r;
    r = file_->co_flush();
    if (r < 0) return r;
    return co_process_discards_locked();
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

// ---------------------------------------------------------------- rebuild

// References counted in memory for a rebuild: one counter per host
// cluster of the file; a reference past the file or beyond the refcount
// width is remembered, not counted.
struct Qcow2Node::RefCounter {
    std::vector<uint64_t> refs;
    uint32_t cluster_bits = 0;
    uint64_t max = 0;
    bool overflow = false, outside = false;
    // One more reference to every cluster touched by [off, off + len).
    void inc(uint64_t off, uint64_t len)
    {
        for (uint64_t c = off >> cluster_bits; c <= (off + len - 1) >> cluster_bits; c++) {
            if (c >= refs.size()) {
                outside = true;
                continue;
            }
            if (refs[c] == max) overflow = true;
            else refs[c]++;
        }
    }
};

int coroutine_fn Qcow2Node::co_count_l1_refs_locked(RefCounter &rc, uint64_t l1_off, uint64_t l1_size)
{
    const uint64_t cs = cluster_size_;
    if (!l1_size) return 0;
    rc.inc(l1_off, l1_size * 8);
    std::vector<uint8_t> raw(l1_size * 8);
    int r = file_->co_pread(static_cast<int64_t>(l1_off), static_cast<int64_t>(raw.size()), raw.data());
    if (r < 0) return r;
    std::vector<uint8_t> l2(cs);
    for (uint64_t i = 0; i < l1_size; i++) {
        const uint64_t l2_off = qcow2::be64(raw.data() + i * 8) & qcow2::kL1eOffsetMask;
        if (!l2_off) continue;
        if (l2_off & (cs - 1) || l2_off + cs > rc.refs.size() * cs) return -EIO;
        rc.inc(l2_off, cs);
        r = file_->co_pread(static_cast<int64_t>(l2_off), static_cast<int64_t>(cs), l2.data());
        if (r < 0) return r;
        for (uint64_t j = 0; j < (1ULL << l2_bits_); j++) {
            const uint64_t e = qcow2::be64(l2.data() + j * l2_entry_size_);
            if (e & qcow2::kOflagCompressed) {
                const uint64_t coff = e & comp_offset_mask_;
                const uint64_t nsec = ((e >> csize_shift_) & csize_mask_) + 1;
                const uint64_t cbytes = nsec * 512 - (coff & 511);
                rc.inc(coff, cbytes);
                continue;
            }
            const uint64_t host = e & qcow2::kL2eOffsetMask;
            if (host && !h_.has_data_file()) rc.inc(host, cs);
        }
    }
    return 0;
}

int coroutine_fn Qcow2Node::co_count_bitmap_refs_locked(RefCounter &rc)
{
    const uint64_t cs = cluster_size_;
    // Bitmap directory, tables and data clusters (QEMU counts them too).
    auto dir = co_read_bitmap_directory();
    if (!dir) return -EIO;
    rc.inc(h_.bitmaps->directory_offset, h_.bitmaps->directory_size);
    const uint64_t flen = rc.refs.size() * cs;
    for (const qcow2::BitmapEntry &e : dir.value()) {
        if (!e.table_size) continue;
        const uint64_t tb = static_cast<uint64_t>(e.table_size) * 8;
        if ((e.table_offset & (cs - 1)) || !e.table_offset || e.table_offset > flen || tb > flen - e.table_offset ||
            e.table_size > qcow2::kMaxBitmapBytes / 512) {
            return -EIO;
        }
        rc.inc(e.table_offset, tb);
        std::vector<uint8_t> t(tb);
        int r = file_->co_pread(static_cast<int64_t>(e.table_offset), static_cast<int64_t>(tb), t.data());
        if (r < 0) return r;
        for (uint64_t k = 0; k < e.table_size; k++) {
            const uint64_t off = qcow2::be64(t.data() + k * 8) & ~qcow2::kBitmapTableReserved & ~uint64_t{1};
            if (!off) continue;
            if ((off & (cs - 1)) || off + cs > flen) return -EIO;
            rc.inc(off, cs);
        }
    }
    return 0;
}

int coroutine_fn Qcow2Node::co_write_rebuilt_refcounts_locked(std::vector<uint64_t> refs)
{
    const uint64_t cs = cluster_size_;
    const uint64_t nb = refs.size();
    // Place the new structure at the end: table + blocks covering everything.
    const uint64_t per_block = 1ULL << (cluster_bits_ + 3 - h_.refcount_order);
    uint64_t tbl_clusters, nb_blocks;
    qcow2::self_covering_refcounts(nb, cluster_bits_, h_.refcount_order, &tbl_clusters, &nb_blocks);
    if (tbl_clusters * cs > qcow2::kMaxRefTableBytes) return -EFBIG;
    const uint64_t tbl_start = nb, blk_start = nb + tbl_clusters;
    refs.resize(nb + tbl_clusters + nb_blocks, 0);
    for (uint64_t c = tbl_start; c < refs.size(); c++) refs[c] = 1;
    std::vector<uint64_t> table(tbl_clusters * cs / 8, 0);
    AlignedBuf blk = aligned_alloc_buf(std::max<size_t>(file_->node()->limits().opt_mem_alignment, 64), cs);
    int r;
    for (uint64_t b = 0; b < nb_blocks; b++) {
        memset(blk.get(), 0, cs);
        for (uint64_t i = 0; i < per_block && b * per_block + i < refs.size(); i++) {
            if (refs[b * per_block + i]) {
                set_refcount_entry(blk.get(), i, h_.refcount_order, refs[b * per_block + i]);
            }
        }
        const uint64_t off = (blk_start + b) << cluster_bits_;
        r = file_->co_pwrite(static_cast<int64_t>(off), static_cast<int64_t>(cs), blk.get());
        if (r < 0) return r;
        table[b] = off;
    }
    std::vector<uint8_t> raw(table.size() * 8);
    for (size_t i = 0; i < table.size(); i++) put_be(raw.data() + i * 8, table[i], 8);
    r = file_->co_pwrite(static_cast<int64_t>(tbl_start << cluster_bits_), static_cast<int64_t>(raw.size()), raw.data());
    if (r < 0) return r;
    r = file_->co_flush();
    if (r < 0) return r;
    uint8_t hdr[12];
    put_be(hdr, tbl_start << cluster_bits_, 8);
    put_be(hdr + 8, tbl_clusters, 4);
    r = file_->co_pwrite(48, 12, hdr);
    if (r < 0) return r;
    r = file_->co_flush();
    if (r < 0) return r;
    h_.refcount_table_offset = tbl_start << cluster_bits_;
    h_.refcount_table_clusters = static_cast<uint32_t>(tbl_clusters);
    refcount_table_ = std::move(table);
    reftable_changed();
    // Drop every cached refcount block (clean: flushed above).
    refcount_cache_->invalidate();
    free_cluster_index_ = 0;
    free_byte_offset_ = 0;
    return 0;
}

// QEMU's rebuild_refcount_structure, minimal: counts every reference the
// metadata makes (header, L1 tables, L2 tables, data clusters, compressed
// bytes, snapshot table, snapshot L1/L2 tables, bitmap directory, tables
// and data) and writes a fresh refcount
// table and blocks in free space at the end of the file. The old refcount
// structures become unreferenced (free). Order: blocks and table written
// and flushed, then the header switched and flushed.
int coroutine_fn Qcow2Node::co_rebuild_refcounts_locked()
{
    const int64_t flen_s = file_->getlength();
    if (flen_s < 0) return static_cast<int>(flen_s);
    const uint64_t cs = cluster_size_;
    const uint64_t nb = (static_cast<uint64_t>(flen_s) + cs - 1) >> cluster_bits_;
    RefCounter rc;
    rc.refs.assign(nb, 0);
    rc.cluster_bits = cluster_bits_;
    rc.max = refcount_max();
    rc.inc(0, cs);
    int r = co_flush_caches_locked();
    if (r < 0) return r;
    r = co_count_l1_refs_locked(rc, h_.l1_table_offset, h_.l1_size);
    if (r < 0) return r;
    if (h_.nb_snapshots) {
        // The snapshot table's size: entries as read at open.
        uint64_t tbl = 0;
        for (const auto &sn : snapshots_) {
            uint64_t e = qcow2::kSnapshotHeaderSize + sn.extra_data.size() + sn.id.size() + sn.name.size();
            tbl += (e + 7) & ~uint64_t{7};
            r = co_count_l1_refs_locked(rc, sn.l1_table_offset, sn.l1_size);
            if (r < 0) return r;
        }
        if (tbl) rc.inc(h_.snapshots_offset, tbl);
    }
    if (h_.bitmaps) {
        r = co_count_bitmap_refs_locked(rc);
        if (r < 0) return r;
    }
    if (rc.overflow) {
        log_error("qcow2: %s: cannot rebuild refcounts: a refcount exceeds %u bits", name_.c_str(),
                  1u << h_.refcount_order);
        return -ERANGE;
    }
    if (rc.outside) return -EIO;
    return co_write_rebuilt_refcounts_locked(std::move(rc.refs));
}

} // namespace bg

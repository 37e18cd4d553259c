// qcow2 metadata cache (QEMU block/qcow2-cache.c; qcow2.md 2.2): an LRU
// cache of slices of L2 tables or of refcount blocks, with pins so that a
// slice in use survives the loading of another.
//
// Lookups are a hash map probe; a miss scans for the least recently used
// unpinned entry (misses cost a read anyway).
#include <cassert>
#include <cerrno>

#include "block/qcow2/qcow2.h"

namespace bg {
namespace qcow2 {

MetadataCache::MetadataCache(size_t slice_size, size_t max_entries, size_t mem_align)
    : slice_size_(slice_size), mem_align_(mem_align < 64 ? 64 : mem_align), entries_(max_entries ? max_entries : 1)
{
    assert(slice_size >= 512 && (slice_size & (slice_size - 1)) == 0);
    index_.reserve(entries_.size());
}

int coroutine_fn MetadataCache::co_get(BdrvChild *file, uint64_t offset, const uint8_t **data)
{
    assert(offset % slice_size_ == 0);
    auto it = index_.find(offset);
    if (it != index_.end()) {
        Entry &e = entries_[it->second];
        e.pins++;
        e.last_used = ++lru_clock_;
        hits_++;
        *data = e.data.get();
        return 0;
    }
    // Miss: a free entry, else the least recently used unpinned one.
    size_t victim = entries_.size();
    for (size_t i = 0; i < entries_.size(); i++) {
        const Entry &e = entries_[i];
        if (e.pins) continue;
        if (!e.valid) {
            victim = i;
            break;
        }
        if (victim == entries_.size() || e.last_used < entries_[victim].last_used) victim = i;
    }
    if (victim == entries_.size()) return -EBUSY;
    Entry &e = entries_[victim];
    if (e.valid) {
        // PART 2: a dirty victim is written back first (after its dependencies).
        index_.erase(e.offset);
        e.valid = false;
    }
    if (!e.data) e.data = aligned_alloc_buf(mem_align_, slice_size_);
    misses_++;
    // Pinned while the read yields, so that nobody else takes this entry.
    e.pins++;
    e.offset = offset;
    int r = file->co_pread(static_cast<int64_t>(offset), static_cast<int64_t>(slice_size_), e.data.get());
    if (r < 0) {
        e.pins--;
        return r;
    }
    e.valid = true;
    e.last_used = ++lru_clock_;
    index_[offset] = victim;
    *data = e.data.get();
    return 0;
}

void MetadataCache::release(uint64_t offset)
{
    auto it = index_.find(offset);
    assert(it != index_.end());
    Entry &e = entries_[it->second];
    assert(e.pins > 0);
    e.pins--;
}

size_t MetadataCache::clean_unused()
{
    size_t freed = 0;
    for (Entry &e : entries_) {
        if (e.pins || !e.data) continue;
        if (!e.valid || e.last_used == e.used_at_clean) {
            if (e.valid) index_.erase(e.offset);
            e.valid = false;
            e.data.reset();
            freed++;
        }
        e.used_at_clean = e.last_used;
    }
    return freed;
}

void MetadataCache::invalidate()
{
    for (Entry &e : entries_) {
        if (e.pins || !e.valid) continue;
        index_.erase(e.offset);
        e.valid = false;
    }
}

} // namespace qcow2
} // namespace bg

// qcow2 metadata cache (QEMU block/qcow2-cache.c; qcow2.md 2.2): an LRU
// cache of slices of L2 tables or of refcount blocks, with pins so that a
// slice in use survives the loading of another, dirty entries written back
// on flush or eviction, and the flush dependencies that order metadata
// writes for crash consistency (docs/qcow2.md "Ordering rules").
//
// Lookups are a hash map probe; a miss scans for the least recently used
// unpinned entry (misses cost a read anyway), preferring clean victims.
#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>

#include "block/qcow2/qcow2.h"

namespace bg {
namespace qcow2 {

MetadataCache::MetadataCache(size_t slice_size, size_t max_entries, size_t mem_align)
    : slice_size_(slice_size), mem_align_(mem_align < 64 ? 64 : mem_align), entries_(max_entries ? max_entries : 1)
{
    assert(slice_size >= 512 && (slice_size & (slice_size - 1)) == 0);
    index_.reserve(entries_.size());
}

bool MetadataCache::dirty() const
{
    for (const Entry &e : entries_) {
        if (e.valid && e.dirty) return true;
    }
    return false;
}

int coroutine_fn MetadataCache::co_flush_dependency()
{
    MetadataCache *dep = depends_;
    int r = dep->co_flush_and_sync();
    if (r < 0) return r;
    depends_ = nullptr;
    depends_on_flush_ = false;
    return 0;
}

int coroutine_fn MetadataCache::co_set_dependency(MetadataCache *dep)
{
    if (test_ignore_deps_) return 0;   // the test-only misordering (qcow2.h)
    if (dep->depends_) {
        // dep waits for another cache (this one): flush that first so that
        // no cycle of dependencies can form.
        int r = dep->co_flush_dependency();
        if (r < 0) return r;
    }
    if (depends_ && depends_ != dep) {
        int r = co_flush_dependency();
        if (r < 0) return r;
    }
    depends_ = dep;
    return 0;
}

int coroutine_fn MetadataCache::co_write_entry(Entry &e)
{
    if (!e.dirty) return 0;
    assert(file_);
    int r;
    if (depends_) {
        r = co_flush_dependency();
        if (r < 0) return r;
    } else if (depends_on_flush_) {
        r = file_->co_flush();
        if (r < 0) return r;
        depends_on_flush_ = false;
    }
    // The entry may have been written by a concurrent flush meanwhile.
    if (!e.dirty) return 0;
    const uint64_t off = e.offset;
    if (hook_) {
        r = hook_(off, slice_size_);
        if (r < 0) return r;
    }
    if (write_event_) file_->debug_event(write_event_);
    // Pinned while the write yields; a modification meanwhile re-dirties it.
    e.pins++;
    e.dirty = false;
    r = file_->co_pwrite(static_cast<int64_t>(off), static_cast<int64_t>(slice_size_), e.data.get());
    e.pins--;
    if (r < 0) e.dirty = true;
    return r < 0 ? r : 0;
}

int coroutine_fn MetadataCache::co_flush()
{
    // Offset order: sequential for the file.
    std::vector<std::pair<uint64_t, size_t>> dirty;
    for (size_t i = 0; i < entries_.size(); i++) {
        if (entries_[i].valid && entries_[i].dirty) dirty.emplace_back(entries_[i].offset, i);
    }
    std::sort(dirty.begin(), dirty.end());
    int ret = 0;
    for (auto &d : dirty) {
        Entry &e = entries_[d.second];
        if (!e.valid || e.offset != d.first) continue;
        int r = co_write_entry(e);
        if (r < 0 && ret == 0) ret = r;
    }
    return ret;
}

int coroutine_fn MetadataCache::co_flush_and_sync()
{
    int r = co_flush();
    if (r < 0) return r;
    return file_->co_flush();
}

int coroutine_fn MetadataCache::co_find_victim(size_t *victim)
{
    for (;;) {
        size_t best = entries_.size(), best_clean = entries_.size();
        for (size_t i = 0; i < entries_.size(); i++) {
            const Entry &e = entries_[i];
            if (e.pins) continue;
            if (!e.valid) {
                *victim = i;
                return 0;
            }
            if (best == entries_.size() || e.last_used < entries_[best].last_used) best = i;
            if (!e.dirty && (best_clean == entries_.size() || e.last_used < entries_[best_clean].last_used)) {
                best_clean = i;
            }
        }
        if (best == entries_.size()) return -EBUSY;
        if (best_clean != entries_.size()) {
            *victim = best_clean;
            return 0;
        }
        // Every candidate is dirty: write the oldest back, then look again
        // (the write yields; the cache may have changed).
        int r = co_write_entry(entries_[best]);
        if (r < 0) return r;
    }
}

int coroutine_fn MetadataCache::co_get(BdrvChild *file, uint64_t offset, const uint8_t **data)
{
    assert(offset % slice_size_ == 0);
    if (!file_) file_ = file;
    for (;;) {
        auto it = index_.find(offset);
        if (it != index_.end()) {
            Entry &e = entries_[it->second];
            e.pins++;
            e.last_used = ++lru_clock_;
            hits_++;
            *data = e.data.get();
            return 0;
        }
        size_t victim;
        int r = co_find_victim(&victim);
        if (r < 0) return r;
        // Writing back a victim yields: someone may have loaded offset
        // meanwhile, or taken the victim.
        if (index_.count(offset) || entries_[victim].pins || (entries_[victim].valid && entries_[victim].dirty)) continue;
        Entry &e = entries_[victim];
        if (e.valid) {
            index_.erase(e.offset);
            e.valid = false;
        }
        if (!e.data) e.data = aligned_alloc_buf(mem_align_, slice_size_);
        misses_++;
        // Pinned while the read yields, so that nobody else takes this entry.
        e.pins++;
        e.offset = offset;
        if (load_event_) file->debug_event(load_event_);
        r = file->co_pread(static_cast<int64_t>(offset), static_cast<int64_t>(slice_size_), e.data.get());
        if (r < 0) {
            e.pins--;
            return r;
        }
        if (index_.count(offset)) {
            // Loaded concurrently by another coroutine: use that one.
            e.pins--;
            continue;
        }
        e.valid = true;
        e.dirty = false;
        e.last_used = ++lru_clock_;
        index_[offset] = victim;
        *data = e.data.get();
        return 0;
    }
}

int coroutine_fn MetadataCache::co_get_empty(uint64_t offset, uint8_t **data)
{
    assert(offset % slice_size_ == 0);
    for (;;) {
        auto it = index_.find(offset);
        Entry *e;
        if (it != index_.end()) {
            e = &entries_[it->second];
        } else {
            size_t victim;
            int r = co_find_victim(&victim);
            if (r < 0) return r;
            if (index_.count(offset) || entries_[victim].pins || (entries_[victim].valid && entries_[victim].dirty)) continue;
            e = &entries_[victim];
            if (e->valid) index_.erase(e->offset);
            if (!e->data) e->data = aligned_alloc_buf(mem_align_, slice_size_);
            e->offset = offset;
            e->valid = true;
            index_[offset] = victim;
        }
        memset(e->data.get(), 0, slice_size_);
        e->pins++;
        e->dirty = true;
        e->last_used = ++lru_clock_;
        *data = e->data.get();
        return 0;
    }
}

uint8_t *MetadataCache::mutable_data(uint64_t offset)
{
    auto it = index_.find(offset);
    assert(it != index_.end());
    Entry &e = entries_[it->second];
    assert(e.pins > 0);
    e.dirty = true;
    return e.data.get();
}

void MetadataCache::release(uint64_t offset)
{
    auto it = index_.find(offset);
    assert(it != index_.end());
    Entry &e = entries_[it->second];
    assert(e.pins > 0);
    e.pins--;
}

void MetadataCache::discard(uint64_t offset)
{
    auto it = index_.find(offset);
    if (it == index_.end()) return;
    Entry &e = entries_[it->second];
    if (e.pins) return;
    e.valid = false;
    e.dirty = false;
    index_.erase(it);
}

size_t MetadataCache::clean_unused()
{
    size_t freed = 0;
    for (Entry &e : entries_) {
        if (e.pins || !e.data || (e.valid && e.dirty)) continue;
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
        if (e.pins || !e.valid || e.dirty) continue;
        index_.erase(e.offset);
        e.valid = false;
    }
}

} // namespace qcow2
} // namespace bg

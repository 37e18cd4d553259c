// qcow2 cluster mapping (QEMU block/qcow2-cluster.c; qcow2.md 1.6-1.7):
// guest offset -> L1 entry -> L2 slice (through the L2 cache) -> cluster or
// subcluster type and host offset, with the number of following bytes that
// map the same way (contiguous on the host where there is a host offset).
//
// Every entry read from the image is checked before use: L2 table offsets
// aligned and inside the file, host cluster offsets aligned (and equal to
// the guest offset with an external data file), compressed descriptors
// inside the file, extended-L2 bitmaps consistent. A violation is a
// corruption: the request fails with -EIO and the message is recorded.
//
// PART 2: allocation (qcow2_alloc_host_offset), L2 updates through the cache
// with COPIED flags, zeroing and discard of clusters go here.
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "block/qcow2/qcow2.h"

namespace bg {

using qcow2::HostMapping;
using qcow2::SubclusterType;

namespace {

constexpr uint64_t kSectorSize = 512;   // unit of compressed lengths

// Type of subcluster sc of an L2 entry, and how many subclusters from sc on
// (within this cluster) share it. Returns false for an invalid entry.
bool subcluster_range(uint64_t entry, uint64_t bitmap, uint32_t sc, uint32_t sc_per_cluster, bool extended,
                      bool data_file, SubclusterType *type, uint32_t *count)
{
    if (entry & qcow2::kOflagCompressed) {
        *type = SubclusterType::kCompressed;
        *count = sc_per_cluster - sc;
        return true;
    }
    const uint64_t host = entry & qcow2::kL2eOffsetMask;
    // With an external data file, COPIED marks an allocated cluster even at
    // host offset 0.
    const bool allocated = host != 0 || (data_file && (entry & qcow2::kOflagCopied));
    if (!extended) {
        if (entry & qcow2::kOflagZero) *type = host ? SubclusterType::kZeroAlloc : SubclusterType::kZeroPlain;
        else *type = allocated ? SubclusterType::kNormal : SubclusterType::kUnallocatedPlain;
        *count = 1;
        return true;
    }
    const uint32_t alloc = static_cast<uint32_t>(bitmap);
    const uint32_t zero = static_cast<uint32_t>(bitmap >> 32);
    if (allocated) {
        if (alloc & zero) return false;
    } else if (alloc) {
        return false;
    }
    auto type_of = [&](uint32_t i) {
        if (zero & (1u << i)) return allocated ? SubclusterType::kZeroAlloc : SubclusterType::kZeroPlain;
        if (alloc & (1u << i)) return SubclusterType::kNormal;
        return allocated ? SubclusterType::kUnallocatedAlloc : SubclusterType::kUnallocatedPlain;
    };
    *type = type_of(sc);
    uint32_t i = sc + 1;
    while (i < sc_per_cluster && type_of(i) == *type) i++;
    *count = i - sc;
    return true;
}

bool has_host_cluster(SubclusterType t)
{
    return t == SubclusterType::kNormal || t == SubclusterType::kZeroAlloc || t == SubclusterType::kUnallocatedAlloc;
}

} // namespace

int coroutine_fn Qcow2Node::co_get_mapping(uint64_t offset, uint64_t bytes, HostMapping *m)
{
    CoMutexGuard g(lock_);
    return co_get_mapping_locked(offset, bytes, m);
}

// Where one mapping lookup stands: the guest offset, the L2 table entry it
// falls in, and how many bytes the answer may describe.
struct Qcow2Node::MapLookup {
    uint64_t offset = 0;        // guest offset looked up
    uint64_t in_cluster = 0;    // its offset inside its cluster
    uint64_t want = 0;          // bytes the answer may cover (within the slice)
    uint64_t l2_offset = 0;     // the L2 table (host offset)
    uint32_t l2_index = 0;      // entry index in the L2 table
    uint32_t idx = 0;           // entry index in its slice
    uint64_t flen = 0;          // image file length
};

int Qcow2Node::map_compressed(uint64_t entry, const MapLookup &q, HostMapping *m)
{
    const uint64_t cs = cluster_size_;
    if (h_.has_data_file()) {
        return corruption("compressed cluster in an image with an external data file (L2 offset 0x%" PRIx64
                          ", L2 index 0x%" PRIx32 ")",
                          q.l2_offset, q.l2_index);
    }
    const uint64_t coff = entry & comp_offset_mask_;
    const uint64_t nb_sectors = ((entry >> csize_shift_) & csize_mask_) + 1;
    const uint64_t cbytes = nb_sectors * kSectorSize - (coff & (kSectorSize - 1));
    // The stream starts inside the file. The sectors the descriptor names
    // may run past the file's end (QEMU reads them as zeros, and the
    // decompressor stops at the stream's end): only the part inside the
    // file is read.
    if (coff < cs || coff >= q.flen) {
        return corruption("compressed cluster at host offset 0x%" PRIx64 " (%" PRIu64
                          " bytes) is outside the file (guest offset 0x%" PRIx64 ")",
                          coff, cbytes, q.offset - q.in_cluster);
    }
    m->type = SubclusterType::kCompressed;
    m->comp_offset = coff;
    m->comp_bytes = std::min(cbytes, q.flen - coff);
    m->bytes = std::min(q.want, cs - q.in_cluster);
    return 0;
}

int Qcow2Node::map_in_slice(const uint8_t *slice, const MapLookup &q, HostMapping *m)
{
    const uint64_t cs = cluster_size_;
    const bool extended = sc_per_cluster_ > 1;
    const bool data_file = h_.has_data_file();
    auto entry_at = [&](uint32_t i) { return qcow2::be64(slice + static_cast<size_t>(i) * l2_entry_size_); };
    auto bitmap_at = [&](uint32_t i) {
        return extended ? qcow2::be64(slice + static_cast<size_t>(i) * l2_entry_size_ + 8) : 0;
    };

    const uint32_t sc_index = static_cast<uint32_t>(q.in_cluster >> subcluster_bits_);
    const uint64_t nb_clusters = (q.in_cluster + q.want + cs - 1) >> cluster_bits_;   // <= slice_entries - idx
    SubclusterType first_type = SubclusterType::kUnallocatedPlain;
    uint64_t expected_host = 0;
    uint64_t nb_sc = 0;                  // subclusters counted from sc_index
    for (uint64_t i = 0; i < nb_clusters; i++) {
        const uint32_t e = q.idx + static_cast<uint32_t>(i);
        const uint64_t entry = entry_at(e);
        const uint32_t first_sc = i == 0 ? sc_index : 0;
        SubclusterType t;
        uint32_t count;
        if (!subcluster_range(entry, bitmap_at(e), first_sc, sc_per_cluster_, extended, data_file, &t, &count)) {
            if (i > 0) break;   // reported when a lookup starts there
            return corruption("invalid extended L2 entry 0x%016" PRIx64 " bitmap 0x%016" PRIx64
                              " (L2 offset 0x%" PRIx64 ", L2 index 0x%" PRIx32 ")",
                              entry, bitmap_at(e), q.l2_offset, q.l2_index + static_cast<uint32_t>(i));
        }
        const uint64_t host = entry & qcow2::kL2eOffsetMask;
        if (i == 0) {
            first_type = t;
            if (t == SubclusterType::kCompressed) return map_compressed(entry, q, m);
            if (has_host_cluster(t)) {
                if (host & (cs - 1)) {
                    return corruption("cluster offset 0x%" PRIx64 " is not aligned to the cluster size (L2 offset 0x%" PRIx64
                                      ", L2 index 0x%" PRIx32 ")",
                                      host, q.l2_offset, q.l2_index);
                }
                if (data_file && host != q.offset - q.in_cluster) {
                    return corruption("external data file cluster offset 0x%" PRIx64
                                      " does not match the guest offset 0x%" PRIx64 " (L2 index 0x%" PRIx32 ")",
                                      host, q.offset - q.in_cluster, q.l2_index);
                }
                m->host_offset = host + q.in_cluster;
                expected_host = host;
            }
        } else if (t != first_type) {
            break;
        } else if (has_host_cluster(t)) {
            expected_host += cs;
            if (host != expected_host) break;
        }
        nb_sc += count;
        if (first_sc + count < sc_per_cluster_) break;   // the type changes inside this cluster
    }

    const uint64_t start_in_sc = q.in_cluster - (static_cast<uint64_t>(sc_index) << subcluster_bits_);
    m->type = first_type;
    m->bytes = std::min(q.want, (nb_sc << subcluster_bits_) - start_in_sc);
    return 0;
}

int coroutine_fn Qcow2Node::co_get_mapping_locked(uint64_t offset, uint64_t bytes, HostMapping *m)
{
    *m = HostMapping{};
    const uint64_t cs = cluster_size_;
    MapLookup q;
    q.offset = offset;
    q.in_cluster = offset & (cs - 1);
    const uint64_t cluster_index = offset >> cluster_bits_;
    const uint64_t l1_index = cluster_index >> l2_bits_;
    q.l2_index = static_cast<uint32_t>(cluster_index & ((1ULL << l2_bits_) - 1));
    const uint32_t slice_entries = static_cast<uint32_t>(l2_cache_->slice_size() / l2_entry_size_);
    q.idx = q.l2_index & (slice_entries - 1);   // entry within its slice
    // One lookup describes at most the clusters of one L2 slice.
    const uint64_t avail = (static_cast<uint64_t>(slice_entries - q.idx) << cluster_bits_) - q.in_cluster;
    q.want = std::min(bytes, avail);

    q.l2_offset = l1_index < l1_.size() ? l1_[l1_index] & qcow2::kL1eOffsetMask : 0;
    if (!q.l2_offset) {
        // No L2 table: unallocated up to the end of this L1 entry's range,
        // and on through following L1 entries without one (a cheap answer
        // for large sparse images).
        const uint64_t l1_range = 1ULL << (cluster_bits_ + l2_bits_);
        uint64_t n = l1_range - (offset & (l1_range - 1));
        for (uint64_t i = l1_index + 1; n < bytes; i++) {
            if (i < l1_.size() && (l1_[i] & qcow2::kL1eOffsetMask)) break;
            if (i >= l1_.size()) {
                n = bytes;
                break;
            }
            n += l1_range;
        }
        m->type = SubclusterType::kUnallocatedPlain;
        m->bytes = std::min(n, bytes);
        return 0;
    }
    if (q.l2_offset & (cs - 1)) {
        return corruption("L2 table offset 0x%" PRIx64 " is not aligned to the cluster size (L1 index 0x%" PRIx64 ")",
                          q.l2_offset, l1_index);
    }
    const uint64_t slice_off = q.l2_offset + static_cast<uint64_t>(q.l2_index - q.idx) * l2_entry_size_;
    const int64_t flen = file_->getlength();
    if (flen < 0) return static_cast<int>(flen);
    q.flen = static_cast<uint64_t>(flen);
    if (slice_off + l2_cache_->slice_size() > q.flen) {
        return corruption("L2 table offset 0x%" PRIx64 " (L1 index 0x%" PRIx64 ") is beyond the end of the file",
                          q.l2_offset, l1_index);
    }
    const uint8_t *slice;
    int r = l2_cache_->co_get(file_, slice_off, &slice);
    if (r < 0) return r;
    r = map_in_slice(slice, q, m);
    l2_cache_->release(slice_off);
    return r;
}

} // namespace bg

namespace bg {

int coroutine_fn Qcow2Node::co_get_l2_slice_for_write_locked(uint64_t cluster_index, uint64_t *slice_off,
                                                             uint32_t *idx)
{
    const uint64_t cs = cluster_size_;
    const uint64_t l1_index = cluster_index >> l2_bits_;
    if (l1_index >= l1_.size()) {
        int r = co_grow_l1_locked(l1_index + 1);
        if (r < 0) return r;
    }
    const uint64_t l1e = l1_[l1_index];
    uint64_t l2_offset = l1e & qcow2::kL1eOffsetMask;
    const int64_t flen = file_->getlength();
    if (flen < 0) return static_cast<int>(flen);
    if (l2_offset && ((l2_offset & (cs - 1)) || l2_offset + cs > static_cast<uint64_t>(flen))) {
        return co_signal_corruption_locked("L2 table offset 0x%" PRIx64 " (L1 index 0x%" PRIx64
                                           ") is unaligned or beyond the end of the file",
                                           l2_offset, l1_index);
    }
    const size_t ss = l2_cache_->slice_size();
    if (!l2_offset || !(l1e & qcow2::kOflagCopied)) {
        // A new L2 table: empty, or a copy of the shared one (QEMU's
        // l2_allocate). Written and flushed (after the refcounts that
        // count it), then the L1 entry points at it, then the old table
        // loses this reference.
        int64_t n = co_alloc_clusters_locked(cs);
        if (n < 0) return static_cast<int>(n);
        const uint64_t new_off = static_cast<uint64_t>(n);
        int ol = co_overlap_check_locked(qcow2::kOlActiveL2, new_off, cs);
        if (ol) {
            co_free_clusters_locked(new_off, cs, qcow2::DiscardType::kNever);
            return ol < 0 ? ol : co_signal_corruption_locked("new L2 table at 0x%" PRIx64 " overlaps metadata", new_off);
        }
        int r = 0;
        for (uint64_t s = 0; s < cs && r >= 0; s += ss) {
            uint8_t *dst;
            l2_cache_->discard(new_off + s);
            r = l2_cache_->co_get_empty(new_off + s, &dst);
            if (r < 0) break;
            if (l2_offset) {
                file_->debug_event("l2_alloc_cow_read");
                const uint8_t *src;
                r = l2_cache_->co_get(file_, l2_offset + s, &src);
                if (r >= 0) {
                    memcpy(l2_cache_->mutable_data(new_off + s), src, ss);
                    l2_cache_->release(l2_offset + s);
                }
            }
            l2_cache_->release(new_off + s);
        }
        if (r >= 0 && !lazy_refcounts_) r = l2_cache_->co_set_dependency(refcount_cache_.get());
        if (r >= 0) {
            file_->debug_event("l2_alloc_write");
            r = l2_cache_->co_flush_and_sync();
        }
        if (r < 0) {
            for (uint64_t s = 0; s < cs; s += ss) l2_cache_->discard(new_off + s);
            co_free_clusters_locked(new_off, cs, qcow2::DiscardType::kNever);
            return r;
        }
        const uint64_t old = l1_[l1_index];
        l1_[l1_index] = new_off | qcow2::kOflagCopied;
        r = co_write_l1_entry_locked(l1_index);
        if (r < 0) {
            l1_[l1_index] = old;
            for (uint64_t s = 0; s < cs; s += ss) l2_cache_->discard(new_off + s);
            co_free_clusters_locked(new_off, cs, qcow2::DiscardType::kNever);
            return r;
        }
        if (l2_offset) {
            // The L1 write must be on disk before the old table's refcount drops.
            r = file_->co_flush();
            if (r < 0) return r;
            co_free_clusters_locked(l2_offset, cs, qcow2::DiscardType::kOther);
        }
        l2_offset = new_off;
    }
    const uint32_t slice_entries = static_cast<uint32_t>(ss / l2_entry_size_);
    const uint32_t l2_index = static_cast<uint32_t>(cluster_index & ((1ULL << l2_bits_) - 1));
    *idx = l2_index & (slice_entries - 1);
    *slice_off = l2_offset + static_cast<uint64_t>(l2_index - *idx) * l2_entry_size_;
    const uint8_t *slice;
    return l2_cache_->co_get(file_, *slice_off, &slice);
}

} // namespace bg

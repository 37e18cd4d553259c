// qcow2 write path (QEMU qcow2_co_pwritev_part, qcow2_alloc_host_offset,
// perform_cow, qcow2_alloc_cluster_link_l2, qcow2_subcluster_zeroize,
// qcow2_cluster_discard, qcow2_co_pwritev_compressed, qcow2_co_truncate).
//
// A write is cut into plans, each within one L2 slice, made under the
// metadata lock (co_plan_write_locked):
//   in place  clusters allocated with COPIED (refcount 1) and, on extended
//             L2 images, every written subcluster allocated: the data is
//             written to the host clusters with the lock released;
//   allocate  anything else: new host clusters (unallocated, zero, shared,
//             compressed), or the same host cluster with new subclusters
//             (extended L2) or without its ZERO flag. The plan is registered
//             as an in-flight ClusterAlloc; head and tail COW data are read
//             through the guest read path (backing, zeros, old cluster,
//             decompressed data) and written with the guest data as one host
//             write; then, under the lock, the L2 entries are switched and
//             the old clusters freed.
// Requests touching a guest cluster with an allocation in flight wait for
// it; host clusters with data I/O in flight are never reallocated (a
// discard racing a rewrite frees the cluster, but the allocator skips it
// until the write has completed).
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "block/qcow2/qcow2.h"
#include "util/iov.h"
#include "util/log.h"

namespace bg {

using qcow2::ClusterAlloc;

namespace {

constexpr uint64_t kAllZeroBits = 0xffffffff00000000ULL;

using qcow2::put_be64;

// Bits of the subclusters [s, e) (bytes in the cluster) in a 32-bit mask.
uint32_t sc_mask(uint64_t s, uint64_t e, uint32_t sc_bits)
{
    const uint32_t a = static_cast<uint32_t>(s >> sc_bits);
    const uint32_t b = static_cast<uint32_t>((e + (1ULL << sc_bits) - 1) >> sc_bits);
    const uint64_t m = ((b >= 32 ? ~0ULL : (1ULL << b) - 1) & ~((1ULL << a) - 1)) & 0xffffffffULL;
    return static_cast<uint32_t>(m);
}

} // namespace

struct Qcow2Node::WritePlan {
    enum Kind { kInPlace, kAlloc } kind = kInPlace;
    uint64_t offset = 0, bytes = 0;   // the guest range of the request this plan covers
    uint64_t host = 0;                // host offset of `offset` (in place) / of first_cluster (alloc)
    // Allocations:
    uint64_t first_cluster = 0, nb_clusters = 0;   // guest cluster index and count
    bool new_host = false;            // host clusters newly allocated here
    bool zero_host = false;           // ... in never-written host space: they read as zeros
    uint64_t cow_start = 0, cow_end = 0;   // guest bytes written to the host (head + data + tail)
    ClusterAlloc alloc;
};

ClusterAlloc *Qcow2Node::find_alloc(uint64_t start, uint64_t end)
{
    for (ClusterAlloc *a : allocs_) {
        if (a->guest_start < end && start < a->guest_end) return a;
    }
    return nullptr;
}

int coroutine_fn Qcow2Node::co_wait_allocs_locked(uint64_t start, uint64_t end)
{
    while (ClusterAlloc *a = find_alloc(start, end)) a->waiters.wait(&lock_);
    return 0;
}

// The L2 entries of one pinned slice as seen by the planner of a write of
// guest bytes [offset, end) whose first cluster is c0 (entry idx of the
// slice); max_n clusters of the request lie in the slice.
struct Qcow2Node::PlanSlice {
    enum Class { kInPlace, kReuse, kNew };
    const uint8_t *slice = nullptr;
    uint32_t idx = 0;
    uint64_t c0 = 0, offset = 0, end = 0, max_n = 0;
    uint32_t cluster_bits = 0, sc_bits = 0, entry_size = 8;
    bool ext = false, dfile = false;

    uint64_t entry_at(uint64_t i) const { return qcow2::be64(slice + (idx + i) * entry_size); }
    uint64_t bitmap_at(uint64_t i) const { return ext ? qcow2::be64(slice + (idx + i) * entry_size + 8) : 0; }
    // Byte range of the request inside cluster i of the run.
    void range_in(uint64_t i, uint64_t *s, uint64_t *e) const
    {
        const uint64_t cs = 1ULL << cluster_bits;
        const uint64_t cstart = (c0 + i) << cluster_bits;
        *s = std::max(offset, cstart) - cstart;
        *e = std::min(end, cstart + cs) - cstart;
    }
    // kInPlace: the data may be written over the host cluster as it is;
    // kReuse: the same host cluster, with a new L2 entry (zero flag,
    // subclusters, data file); kNew: a new host cluster.
    Class classify(uint64_t i) const
    {
        const uint64_t e = entry_at(i), bm = bitmap_at(i);
        if (e & qcow2::kOflagCompressed) return kNew;
        const uint64_t host = e & qcow2::kL2eOffsetMask;
        const bool copied = e & qcow2::kOflagCopied;
        if (dfile) {
            if (!host && !copied) return kReuse;   // unallocated: host = guest offset
        } else {
            if (!host || !copied) return kNew;
        }
        if (!ext) return (e & qcow2::kOflagZero) ? kReuse : kInPlace;
        uint64_t s, en;
        range_in(i, &s, &en);
        const uint32_t m = sc_mask(s, en, sc_bits);
        return (static_cast<uint32_t>(bm) & m) == m ? kInPlace : kReuse;
    }
};

int coroutine_fn Qcow2Node::co_plan_in_place_locked(const PlanSlice &v, uint64_t slice_off, WritePlan *p)
{
    const uint64_t cs = cluster_size_;
    const uint64_t c0 = v.c0;
    const uint64_t host0 = v.dfile ? (c0 << cluster_bits_) : (v.entry_at(0) & qcow2::kL2eOffsetMask);
    uint64_t s0, e0;
    v.range_in(0, &s0, &e0);
    uint64_t n = 1;
    while (n < v.max_n && v.classify(n) == PlanSlice::kInPlace &&
           (v.dfile || (v.entry_at(n) & qcow2::kL2eOffsetMask) == host0 + n * cs) &&
           !find_alloc((c0 + n) << cluster_bits_, (c0 + n + 1) << cluster_bits_)) {
        n++;
    }
    l2_cache_->release(slice_off);
    p->kind = WritePlan::kInPlace;
    p->offset = v.offset;
    p->bytes = std::min(v.end, (c0 + n) << cluster_bits_) - v.offset;
    p->host = host0 + s0;
    inflight_inc(p->host, p->bytes);
    if (data_file_ == file_) {
        raise_host_zero_from(p->host + p->bytes);
        int ol = co_overlap_check_locked(0, p->host, p->bytes);
        if (ol) {
            inflight_dec(p->host, p->bytes);
            return ol < 0 ? ol
                          : co_signal_corruption_locked("data write at host offset 0x%" PRIx64
                                                        " would overwrite metadata (overlap check %d)",
                                                        p->host, ol);
        }
    }
    return 0;
}

int coroutine_fn Qcow2Node::co_plan_reuse_locked(const PlanSlice &v, uint64_t slice_off, WritePlan *p)
{
    const uint64_t cs = cluster_size_;
    const uint64_t c0 = v.c0;
    uint64_t s0, e0;
    v.range_in(0, &s0, &e0);
    // Same host cluster: ZERO_ALLOC (standard L2), new subclusters
    // (extended L2), or a data file cluster. Wait for data I/O on it
    // (an in-place write started before it was zeroed) to end.
    const uint64_t host0 = v.dfile ? (c0 << cluster_bits_) : (v.entry_at(0) & qcow2::kL2eOffsetMask);
    l2_cache_->release(slice_off);
    if (inflight(host0 >> cluster_bits_) && data_file_ == file_) {
        // Rare: yield until it drains, then plan again.
        lock_.unlock();
        co_sleep_ns(100 * 1000);
        lock_.lock();
        return kPlanAgain;
    }
    p->nb_clusters = 1;
    p->new_host = false;
    p->host = host0;
    if (data_file_ == file_) raise_host_zero_from(host0 + cs);
    p->bytes = std::min(v.end, (c0 + 1) << cluster_bits_) - v.offset;
    const uint64_t cstart = c0 << cluster_bits_;
    if (v.ext) {
        const uint64_t scs = 1ULL << subcluster_bits_;
        p->cow_start = cstart + (s0 & ~(scs - 1));
        p->cow_end = cstart + std::min<uint64_t>(cs, (e0 + scs - 1) & ~(scs - 1));
    } else {
        p->cow_start = cstart;
        p->cow_end = cstart + cs;
    }
    return 0;
}

int coroutine_fn Qcow2Node::co_plan_new_locked(const PlanSlice &v, uint64_t slice_off, WritePlan *p)
{
    const uint64_t cs = cluster_size_;
    const uint64_t c0 = v.c0;
    uint64_t s0, e0;
    v.range_in(0, &s0, &e0);
    uint64_t n = 1;
    while (n < v.max_n && v.classify(n) == PlanSlice::kNew &&
           !find_alloc((c0 + n) << cluster_bits_, (c0 + n + 1) << cluster_bits_)) {
        n++;
    }
    // Whether each cluster's old content must be copied in whole (a
    // data source) or only up to subcluster boundaries.
    std::vector<bool> src(n);
    for (uint64_t i = 0; i < n; i++) {
        const uint64_t e = v.entry_at(i);
        src[i] = !v.ext || (e & qcow2::kOflagCompressed) || (e & qcow2::kL2eOffsetMask);
    }
    l2_cache_->release(slice_off);
    uint64_t got;
    bool fresh = false;
    int64_t host = co_alloc_run_locked(n, false, &got, &fresh);
    if (host < 0) return static_cast<int>(host);
    // The allocation yields: someone may have started allocating one
    // of our clusters meanwhile. Then give back and plan again.
    if (find_alloc(c0 << cluster_bits_, (c0 + got) << cluster_bits_)) {
        co_free_clusters_locked(static_cast<uint64_t>(host), got << cluster_bits_, qcow2::DiscardType::kNever);
        return kPlanAgain;
    }
    n = got;
    p->nb_clusters = n;
    p->new_host = true;
    p->zero_host = fresh && data_file_ == file_;
    p->host = static_cast<uint64_t>(host);
    p->bytes = std::min(v.end, (c0 + n) << cluster_bits_) - v.offset;
    const uint64_t cstart = c0 << cluster_bits_;
    const uint64_t scs = 1ULL << subcluster_bits_;
    p->cow_start = src[0] ? cstart : cstart + (s0 & ~(scs - 1));
    const uint64_t lstart = (c0 + n - 1) << cluster_bits_;
    const uint64_t lend = std::min(v.end, lstart + cs) - lstart;
    p->cow_end = src[n - 1] ? lstart + cs : lstart + std::min<uint64_t>(cs, (lend + scs - 1) & ~(scs - 1));
    return 0;
}

int coroutine_fn Qcow2Node::co_register_alloc_locked(WritePlan *p)
{
    const uint64_t c0 = p->first_cluster;
    p->alloc.guest_start = c0 << cluster_bits_;
    p->alloc.guest_end = (c0 + p->nb_clusters) << cluster_bits_;
    allocs_.push_back(&p->alloc);
    if (data_file_ == file_) {
        const uint64_t hs = p->host + (p->cow_start - (c0 << cluster_bits_));
        int ol = co_overlap_check_locked(0, hs, p->cow_end - p->cow_start);
        if (ol) {
            abort_alloc_locked(p);
            return ol < 0 ? ol
                          : co_signal_corruption_locked("data write at host offset 0x%" PRIx64
                                                        " would overwrite metadata (overlap check %d)",
                                                        hs, ol);
        }
    }
    return 0;
}

int coroutine_fn Qcow2Node::co_plan_write_locked(uint64_t offset, uint64_t bytes, WritePlan *p)
{
    const uint64_t end = offset + bytes;
    for (;;) {
        const uint64_t c0 = offset >> cluster_bits_;
        co_wait_allocs_locked(c0 << cluster_bits_, (c0 + 1) << cluster_bits_);
        uint64_t slice_off;
        uint32_t idx;
        int r = co_get_l2_slice_for_write_locked(c0, &slice_off, &idx);
        if (r < 0) return r;
        // Waiting and L2 allocation yield: check again.
        if (find_alloc(c0 << cluster_bits_, (c0 + 1) << cluster_bits_)) {
            l2_cache_->release(slice_off);
            continue;
        }
        const uint8_t *slice;
        l2_cache_->co_get(file_, slice_off, &slice);   // pinned twice now; cached, cannot fail
        l2_cache_->release(slice_off);
        const uint32_t slice_entries = static_cast<uint32_t>(l2_cache_->slice_size() / l2_entry_size_);
        const uint64_t last_cluster = (end - 1) >> cluster_bits_;
        PlanSlice v;
        v.slice = slice;
        v.idx = idx;
        v.c0 = c0;
        v.offset = offset;
        v.end = end;
        v.max_n = std::min<uint64_t>(slice_entries - idx, last_cluster - c0 + 1);
        v.cluster_bits = cluster_bits_;
        v.sc_bits = subcluster_bits_;
        v.entry_size = l2_entry_size_;
        v.ext = sc_per_cluster_ > 1;
        v.dfile = h_.has_data_file();
        const PlanSlice::Class k0 = v.classify(0);
        // Each planner releases the slice.
        if (k0 == PlanSlice::kInPlace) return co_plan_in_place_locked(v, slice_off, p);
        p->kind = WritePlan::kAlloc;
        p->offset = offset;
        p->first_cluster = c0;
        r = k0 == PlanSlice::kReuse ? co_plan_reuse_locked(v, slice_off, p) : co_plan_new_locked(v, slice_off, p);
        if (r < 0) return r;
        if (r == kPlanAgain) continue;
        return co_register_alloc_locked(p);
    }
}

void coroutine_fn Qcow2Node::abort_alloc_locked(WritePlan *p)
{
    if (p->new_host) co_free_clusters_locked(p->host, p->nb_clusters << cluster_bits_, qcow2::DiscardType::kNever);
    allocs_.erase(std::find(allocs_.begin(), allocs_.end(), &p->alloc));
    p->alloc.waiters.restart_all();
}

// Links the written clusters into the L2 table (QEMU's
// qcow2_alloc_cluster_link_l2) and frees what they replace.
int coroutine_fn Qcow2Node::co_finish_alloc_locked(WritePlan *p)
{
    const uint64_t cs = cluster_size_;
    const bool ext = sc_per_cluster_ > 1;
    const bool dfile = h_.has_data_file();
    uint64_t slice_off;
    uint32_t idx;
    int r = co_get_l2_slice_for_write_locked(p->first_cluster, &slice_off, &idx);
    if (r < 0) return r;
    // The L2 entries reach the disk after the refcounts of the new clusters
    // (unless lazy) and after the data (a flush of the file).
    if (!lazy_refcounts_ && p->new_host) {
        r = l2_cache_->co_set_dependency(refcount_cache_.get());
        if (r < 0) {
            l2_cache_->release(slice_off);
            return r;
        }
    }
    l2_cache_->depends_on_flush();
    data_flush_needed_ = true;
    uint8_t *s = l2_cache_->mutable_data(slice_off);
    struct Free {
        uint64_t off, len;
    };
    std::vector<Free> frees;
    for (uint64_t i = 0; i < p->nb_clusters; i++) {
        uint8_t *ep = s + (idx + i) * l2_entry_size_;
        const uint64_t old = qcow2::be64(ep);
        const uint64_t cstart = (p->first_cluster + i) << cluster_bits_;
        const uint64_t host = dfile ? cstart : p->host + i * cs;
        if (old & qcow2::kOflagCompressed) {
            const uint64_t coff = old & comp_offset_mask_;
            const uint64_t nsec = ((old >> csize_shift_) & csize_mask_) + 1;
            frees.push_back({coff, nsec * 512 - (coff & 511)});
        } else if ((old & qcow2::kL2eOffsetMask) && (old & qcow2::kL2eOffsetMask) != host && !dfile) {
            frees.push_back({old & qcow2::kL2eOffsetMask, cs});
        }
        put_be64(ep, host | qcow2::kOflagCopied);
        if (ext) {
            const uint64_t old_bm = (old & qcow2::kOflagCompressed) ? 0 : qcow2::be64(ep + 8);
            uint64_t alloc = static_cast<uint32_t>(old_bm), zero = old_bm >> 32;
            if (old & qcow2::kOflagCompressed) alloc = 0xffffffffu, zero = 0;
            // Written subclusters, plus whatever the COW range filled.
            const uint64_t ws = std::max(p->cow_start, cstart) - cstart;
            const uint64_t we = std::min(p->cow_end, cstart + cs) - cstart;
            const uint32_t m = sc_mask(ws, we, subcluster_bits_);
            // COW'ed subclusters keep their meaning: copied data is data;
            // copied zeros/backing become allocated data with that content.
            alloc |= m;
            zero &= ~static_cast<uint64_t>(m);
            put_be64(ep + 8, (zero << 32) | alloc);
        }
    }
    l2_cache_->release(slice_off);
    for (const Free &f : frees) co_update_refcount_locked(f.off, f.len, -1, qcow2::DiscardType::kNever);
    allocs_.erase(std::find(allocs_.begin(), allocs_.end(), &p->alloc));
    p->alloc.waiters.restart_all();
    return 0;
}

int coroutine_fn Qcow2Node::do_co_pwritev(int64_t offset_s, int64_t bytes_s, IOVector &qiov, ReqFlags flags)
{
    if (write_stopped_.load() || inactive_.load()) return -EIO;
    const uint64_t offset = static_cast<uint64_t>(offset_s), bytes = static_cast<uint64_t>(bytes_s);
    bitmaps_mark(offset, bytes);
    if (flags & kReqWriteCompressed) return co_pwritev_compressed(offset, bytes, qiov);
    const size_t memalign = std::max<size_t>(data_file_->node()->limits().opt_mem_alignment, 64);
    for (uint64_t pos = offset; pos < offset + bytes;) {
        WritePlan p;
        lock_.lock();
        int r = co_plan_write_locked(pos, offset + bytes - pos, &p);
        lock_.unlock();
        if (r < 0) return r;
        IOVector data;
        data.add_slice(qiov, pos - offset, p.bytes);
        if (p.kind == WritePlan::kInPlace) {
            file_->debug_event("write_aio");
            r = data_file_->co_pwritev(static_cast<int64_t>(p.host), static_cast<int64_t>(p.bytes), data);
            inflight_dec(p.host, p.bytes);   // needs no lock_
            if (r < 0) return r;
            pos += p.bytes;
            continue;
        }
        // Allocation: head COW + data + tail COW in one host write. On
        // never-written host clusters (zero_host) a COW part that reads as
        // zeros is not written, as far as the file's alignment allows: the
        // file reads zeros there already (QEMU zero-writes such parts).
        const uint64_t head = p.offset - p.cow_start;
        const uint64_t tail = p.cow_end - (p.offset + p.bytes);
        const uint64_t falign = std::max<uint64_t>(data_file_->node()->limits().request_alignment, 1);
        uint64_t wstart = p.cow_start;     // guest offset of the first byte written
        bool zero_skipped = false;         // a zero COW part is left to the file
        AlignedBuf hb, tb;
        IOVector v;
        if (head) {
            hb = aligned_alloc_buf(memalign, head);
            IOVector hv(hb.get(), head);
            file_->debug_event("cow_read");
            r = do_co_preadv(static_cast<int64_t>(p.cow_start), static_cast<int64_t>(head), hv, 0);
            const uint64_t skip = p.zero_host ? head & ~(falign - 1) : 0;
            if (r >= 0 && skip && buffer_is_zero(hb.get(), skip)) wstart += skip;
            v.add(hb.get() + (wstart - p.cow_start), head - (wstart - p.cow_start));
        }
        v.concat(data);
        if (r >= 0 && tail) {
            tb = aligned_alloc_buf(memalign, tail);
            IOVector tv(tb.get(), tail);
            file_->debug_event("cow_read");
            // Past the end of the image (last partial cluster): zeros.
            const uint64_t tstart = p.offset + p.bytes;
            const uint64_t in_img = tstart < size_ ? std::min(tail, size_ - tstart) : 0;
            if (in_img) {
                IOVector tvi(tb.get(), in_img);
                r = do_co_preadv(static_cast<int64_t>(tstart), static_cast<int64_t>(in_img), tvi, 0);
            }
            if (in_img < tail) memset(tb.get() + in_img, 0, tail - in_img);
            // Bytes kept: up to the next aligned offset (cow_end is aligned).
            uint64_t keep = tail;
            if (p.zero_host) {
                const uint64_t rel = tstart - p.cow_start;
                keep = std::min(tail, ((rel + falign - 1) & ~(falign - 1)) - rel);
                if (!buffer_is_zero(tb.get() + keep, tail - keep)) keep = tail;
            }
            v.add(tb.get(), keep);
            // The file's end a QEMU zero-write of the tail would leave
            // (co_close() extends the file to it).
            if (keep < tail) zero_skipped = true;
            if (keep < tail && !h_.has_data_file()) {
                skipped_tail_end_ = std::max(skipped_tail_end_, p.host + (p.cow_end - (p.first_cluster << cluster_bits_)));
            }
        }
        if (r >= 0) {
            // Where QEMU zero-writes the new clusters before the data
            // (handle_alloc_space), its event: a rule armed by it fails the
            // allocating write, as in QEMU.
            if (zero_skipped || wstart > p.cow_start) file_->debug_event("cluster_alloc_space");
            file_->debug_event(v.size() > p.bytes ? "cow_write" : "write_aio");
            const uint64_t hs = h_.has_data_file() ? wstart
                                                   : p.host + (wstart - (p.first_cluster << cluster_bits_));
            r = data_file_->co_pwritev(static_cast<int64_t>(hs), static_cast<int64_t>(v.size()), v);
        }
        lock_.lock();
        if (r >= 0) {
            r = co_finish_alloc_locked(&p);
            if (r < 0) abort_alloc_locked(&p);
        } else {
            abort_alloc_locked(&p);
        }
        lock_.unlock();
        if (r < 0) return r;
        pos += p.bytes;
    }
    return 0;
}

// ---------------------------------------------------------------- compressed

int coroutine_fn Qcow2Node::co_pwritev_compressed(uint64_t offset, uint64_t bytes, IOVector &qiov)
{
    const uint64_t cs = cluster_size_;
    if (h_.has_data_file()) return -ENOTSUP;
    // Whole clusters, or the last partial cluster of the image.
    if (offset & (cs - 1)) return -EINVAL;
    if ((bytes & (cs - 1)) && offset + bytes != size_) return -EINVAL;
    AlignedBuf in = aligned_alloc_buf(64, cs), out = aligned_alloc_buf(64, cs);
    for (uint64_t pos = offset; pos < offset + bytes; pos += cs) {
        const uint64_t n = std::min(cs, offset + bytes - pos);
        qiov.to_buf(pos - offset, in.get(), n);
        if (n < cs) memset(in.get() + n, 0, cs - n);
        int64_t clen = qcow2::compress_cluster(h_.compression_type, in.get(), cs, out.get(), cs - 1);
        if (clen == -ENOSPC) {
            // Does not compress: stored plain (QEMU does the same).
            IOVector v(in.get(), n);
            int r = do_co_pwritev(static_cast<int64_t>(pos), static_cast<int64_t>(n), v, 0);
            if (r < 0) return r;
            continue;
        }
        if (clen < 0) return static_cast<int>(clen);
        WritePlan p;
        lock_.lock();
        co_wait_allocs_locked(pos, pos + cs);
        int64_t off = co_alloc_bytes_locked(static_cast<uint64_t>(clen));
        if (off < 0) {
            lock_.unlock();
            return static_cast<int>(off);
        }
        int ol = co_overlap_check_locked(0, static_cast<uint64_t>(off), static_cast<uint64_t>(clen));
        if (ol) {
            co_update_refcount_locked(static_cast<uint64_t>(off), static_cast<uint64_t>(clen), -1,
                                      qcow2::DiscardType::kNever);
            int r = ol < 0 ? ol : co_signal_corruption_locked("compressed write at 0x%" PRIx64 " overlaps metadata", off);
            lock_.unlock();
            return r;
        }
        co_wait_allocs_locked(pos, pos + cs);
        p.alloc.guest_start = pos;
        p.alloc.guest_end = pos + cs;
        allocs_.push_back(&p.alloc);
        inflight_inc(static_cast<uint64_t>(off), static_cast<uint64_t>(clen));
        lock_.unlock();
        file_->debug_event("write_compressed");
        int r = file_->co_pwrite(off, clen, out.get());
        lock_.lock();
        inflight_dec(static_cast<uint64_t>(off), static_cast<uint64_t>(clen));
        uint64_t slice_off = 0;
        uint32_t idx = 0;
        if (r >= 0) r = co_get_l2_slice_for_write_locked(pos >> cluster_bits_, &slice_off, &idx);
        if (r < 0) {
            co_update_refcount_locked(static_cast<uint64_t>(off), static_cast<uint64_t>(clen), -1,
                                      qcow2::DiscardType::kNever);
        } else {
            if (!lazy_refcounts_) r = l2_cache_->co_set_dependency(refcount_cache_.get());
            l2_cache_->depends_on_flush();
            uint8_t *ep = l2_cache_->mutable_data(slice_off) + static_cast<size_t>(idx) * l2_entry_size_;
            const uint64_t old = qcow2::be64(ep);
            const uint64_t uoff = static_cast<uint64_t>(off);
            const uint64_t nsec = ((uoff + static_cast<uint64_t>(clen) - 1) >> 9) - (uoff >> 9);
            file_->debug_event("l2_update_compressed");
            put_be64(ep, uoff | (nsec << csize_shift_) | qcow2::kOflagCompressed);
            if (sc_per_cluster_ > 1) put_be64(ep + 8, 0);
            l2_cache_->release(slice_off);
            if (old & qcow2::kOflagCompressed) {
                const uint64_t coff = old & comp_offset_mask_;
                const uint64_t ns = ((old >> csize_shift_) & csize_mask_) + 1;
                co_update_refcount_locked(coff, ns * 512 - (coff & 511), -1, qcow2::DiscardType::kNever);
            } else if (old & qcow2::kL2eOffsetMask) {
                co_update_refcount_locked(old & qcow2::kL2eOffsetMask, cs, -1, qcow2::DiscardType::kNever);
            }
            r = 0;
        }
        allocs_.erase(std::find(allocs_.begin(), allocs_.end(), &p.alloc));
        p.alloc.waiters.restart_all();
        lock_.unlock();
        if (r < 0) return r;
    }
    return 0;
}

// ---------------------------------------------------------------- zeroes and discard

// What a zero / discard request asks for (see co_zero_or_discard_locked).
struct Qcow2Node::ZeroDiscardOp {
    bool zero = false, unmap = false, full_discard = false;
    qcow2::DiscardType type = qcow2::DiscardType::kNever;
};

// What is left to do after the L2 entries of a slice were changed.
struct Qcow2Node::ZeroDiscardWork {
    struct Free {
        uint64_t off, len;
    };
    std::vector<Free> frees;                                    // refcounts to drop
    std::vector<std::pair<uint64_t, uint64_t>> file_discards;   // keep_host: discard in the file, keep the ref
    std::vector<std::pair<uint64_t, uint64_t>> raw_zero;        // data_file_raw: real zeros
};

bool Qcow2Node::zero_or_discard_entry_locked(uint8_t *ep, uint64_t cp, uint64_t ce, const ZeroDiscardOp &op,
                                             ZeroDiscardWork *w)
{
    const uint64_t cs = cluster_size_;
    const bool ext = sc_per_cluster_ > 1;
    const bool dfile = h_.has_data_file();
    const bool v3 = h_.version >= 3;
    const bool keep_host = discard_no_unref_ && !op.full_discard;   // discard-no-unref
    const uint64_t cstart = cp & ~(cs - 1);
    const bool whole = cp == cstart && (ce == cstart + cs || ce >= size_);
    const uint64_t old = qcow2::be64(ep);
    const uint64_t old_bm = ext ? qcow2::be64(ep + 8) : 0;
    const bool compressed = old & qcow2::kOflagCompressed;
    const uint64_t host = compressed ? 0 : (old & qcow2::kL2eOffsetMask);
    const bool copied = old & qcow2::kOflagCopied;
    const bool allocated = compressed || host || (dfile && copied);
    const bool owned = !compressed && allocated && copied;   // refcount 1 (or data file)
    auto free_old = [&]() {
        if (compressed) {
            const uint64_t coff = old & comp_offset_mask_;
            const uint64_t ns = ((old >> csize_shift_) & csize_mask_) + 1;
            w->frees.push_back({coff, ns * 512 - (coff & 511)});
        } else if (host && !dfile) {
            w->frees.push_back({host, cs});
        } else if (dfile && allocated && (op.type == qcow2::DiscardType::kRequest || op.unmap) &&
                   passes_discard(op.type) && !h_.data_file_raw()) {
            w->file_discards.push_back({cstart, cs});
        }
    };
    if (!whole) {
        // Partial cluster: extended L2 subclusters only (zero).
        if (!ext || !op.zero || compressed || (allocated && !owned)) return false;
        const uint32_t m = sc_mask(cp - cstart, ce - cstart, subcluster_bits_);
        uint64_t alloc = static_cast<uint32_t>(old_bm) & ~m, zb = (old_bm >> 32) | m;
        put_be64(ep + 8, (zb << 32) | alloc);
        if (dfile && h_.data_file_raw()) w->raw_zero.push_back({cp, ce - cp});
        return true;
    }
    uint64_t ne = 0, nbm = 0;
    if (op.zero) {
        const bool keep = owned && (!op.unmap || discard_no_unref_);
        if (keep) {
            ne = (old & (qcow2::kL2eOffsetMask | qcow2::kOflagCopied)) | (ext ? 0 : qcow2::kOflagZero);
            if (op.unmap && discard_no_unref_ && !dfile) w->file_discards.push_back({host, cs});
        } else {
            free_old();
            ne = ext ? 0 : qcow2::kOflagZero;
            if (dfile && allocated) ne = (old & (qcow2::kL2eOffsetMask | qcow2::kOflagCopied)) | (ext ? 0 : qcow2::kOflagZero);
        }
        nbm = kAllZeroBits;
        if (dfile && h_.data_file_raw()) w->raw_zero.push_back({cstart, cs});
    } else {
        if (!op.full_discard && !v3 && backing()) return true;   // v2 cannot hide the backing file: leave it
        if (keep_host && owned) {
            ne = (old & (qcow2::kL2eOffsetMask | qcow2::kOflagCopied)) | (ext || !v3 ? 0 : qcow2::kOflagZero);
            nbm = kAllZeroBits;
            if (!dfile && passes_discard(op.type)) w->file_discards.push_back({host, cs});
            if (!v3) ne = old;   // v2: cannot mark zero; only the file discard
        } else {
            free_old();
            ne = (!op.full_discard && v3 && !ext) ? qcow2::kOflagZero : 0;
            nbm = (!op.full_discard && v3) ? kAllZeroBits : 0;
        }
    }
    put_be64(ep, ne);
    if (ext) put_be64(ep + 8, nbm);
    return true;
}

int coroutine_fn Qcow2Node::co_finish_zero_or_discard_locked(const ZeroDiscardWork &w, qcow2::DiscardType type)
{
    const bool dfile = h_.has_data_file();
    for (const ZeroDiscardWork::Free &f : w.frees) co_update_refcount_locked(f.off, f.len, -1, type);
    for (auto &d : w.file_discards) {
        // Clusters that stay referenced (discard-no-unref, data file):
        // their content is dropped now, still under the lock, so no
        // write can reuse them first; a crash before the L2 update
        // reaches the disk leaves a discarded range reading zeros.
        // Clusters with I/O in flight are left alone.
        if (dfile) {
            data_file_->co_pdiscard(static_cast<int64_t>(d.first), static_cast<int64_t>(d.second));
        } else if (!inflight(d.first >> cluster_bits_)) {
            file_->co_pdiscard(static_cast<int64_t>(d.first), static_cast<int64_t>(d.second));
        }
    }
    if (!w.raw_zero.empty()) {
        int r = l2_cache_->co_flush();
        if (r < 0) return r;
        for (auto &z : w.raw_zero) {
            r = data_file_->co_pwrite_zeroes(static_cast<int64_t>(z.first), static_cast<int64_t>(z.second), 0);
            if (r < 0) return r;
        }
    }
    return 0;
}

// Zeroes or discards the whole clusters / subclusters of [offset,
// offset+bytes) in the L2 tables (QEMU's zero_in_l2_slice /
// discard_in_l2_slice). offset and bytes are subcluster-aligned (zero) or
// cluster-aligned (discard; the end may be the end of the image).
//   zero:         reads back as zeros afterwards; unmap frees host clusters
//   full_discard: entries become unallocated (shrink), else discarded
//                 clusters read as zeros (v3) or from the backing file (v2
//                 without backing only; with a backing file nothing is done)
int coroutine_fn Qcow2Node::co_zero_or_discard_locked(uint64_t offset, uint64_t bytes, bool zero, bool unmap,
                                                       bool full_discard, qcow2::DiscardType type)
{
    const uint64_t cs = cluster_size_;
    const bool v3 = h_.version >= 3;
    const uint64_t end = offset + bytes;
    ZeroDiscardOp op;
    op.zero = zero;
    op.unmap = unmap;
    op.full_discard = full_discard;
    op.type = type;
    for (uint64_t pos = offset; pos < end;) {
        const uint64_t c0 = pos >> cluster_bits_;
        const uint64_t l1_index = c0 >> l2_bits_;
        const uint64_t l1_range = 1ULL << (cluster_bits_ + l2_bits_);
        // No L2 table: nothing to free. Zeros get zero entries (a table is
        // allocated, as QEMU does); a discard needs them only when a
        // backing file could show through.
        const bool need_entry = !full_discard && (zero || (v3 && backing()));
        if ((l1_index >= l1_.size() || !(l1_[l1_index] & qcow2::kL1eOffsetMask)) && !need_entry) {
            pos = std::min(end, (l1_index + 1) * l1_range);
            continue;
        }
        co_wait_allocs_locked(pos & ~(cs - 1), std::min(end + cs - 1, (l1_index + 1) * l1_range) & ~(cs - 1));
        uint64_t slice_off;
        uint32_t idx;
        int r = co_get_l2_slice_for_write_locked(c0, &slice_off, &idx);
        if (r < 0) return r;
        const uint32_t slice_entries = static_cast<uint32_t>(l2_cache_->slice_size() / l2_entry_size_);
        const uint64_t slice_end = std::min(end, (c0 + slice_entries - idx) << cluster_bits_);
        if (find_alloc(pos & ~(cs - 1), (slice_end + cs - 1) & ~(cs - 1))) {
            l2_cache_->release(slice_off);
            continue;   // an allocation started while we loaded the slice
        }
        // Entries are changed on a copy; the slice is dirtied (and later
        // written) only if one of them really changes (QEMU: a zero write
        // over clusters that already read as zeros writes no metadata).
        const uint8_t *cur = nullptr;
        r = l2_cache_->co_get(file_, slice_off, &cur);   // pinned already: a hit, no yield
        if (r < 0) {
            l2_cache_->release(slice_off);
            return r;
        }
        l2_cache_->release(slice_off);
        uint8_t *s = nullptr;
        ZeroDiscardWork w;
        bool unsupported = false;
        for (uint64_t cp = pos; cp < slice_end;) {
            const uint64_t c = cp >> cluster_bits_;
            const uint64_t ce = std::min(slice_end, (c << cluster_bits_) + cs);
            const size_t eoff = (idx + (c - c0)) * l2_entry_size_;
            uint8_t e[16];
            std::memcpy(e, (s ? s : cur) + eoff, l2_entry_size_);
            if (!zero_or_discard_entry_locked(e, cp, ce, op, &w)) {
                unsupported = true;
                break;
            }
            if (std::memcmp(e, (s ? s : cur) + eoff, l2_entry_size_) != 0) {
                if (!s) s = l2_cache_->mutable_data(slice_off);
                std::memcpy(s + eoff, e, l2_entry_size_);
            }
            cp = ce;
        }
        l2_cache_->release(slice_off);
        r = co_finish_zero_or_discard_locked(w, type);
        if (r < 0) return r;
        if (unsupported) return -ENOTSUP;
        pos = slice_end;
    }
    return 0;
}

// Whether guest [offset, end) reads as zeros through the whole chain
// (QEMU's is_zero: block status only, data is never read).
bool coroutine_fn Qcow2Node::co_reads_as_zero(uint64_t offset, uint64_t end)
{
    while (offset < end) {
        int64_t pnum = 0;
        const int ret = co_block_status_above(nullptr, true, static_cast<int64_t>(offset),
                                              static_cast<int64_t>(end - offset), &pnum, nullptr, nullptr, nullptr);
        if (ret < 0 || !(ret & kStatusZero) || pnum <= 0) return false;
        offset += static_cast<uint64_t>(pnum);
    }
    return true;
}

// Zeroes [offset, end), which lies inside one subcluster without covering
// it (the image end counts as its end): as QEMU does, when the rest of the
// subcluster reads as zeros and it holds no data, the whole subcluster
// becomes zero; otherwise zero data is written (-ENOTSUP with
// kReqNoFallback). Takes lock_.
int coroutine_fn Qcow2Node::co_zero_partial(uint64_t offset, uint64_t end, ReqFlags flags)
{
    const uint64_t sc = 1ULL << subcluster_bits_;
    const uint64_t s0 = offset & ~(sc - 1);
    const uint64_t e0 = std::min(s0 + sc, size_);
    if (co_reads_as_zero(s0, offset) && co_reads_as_zero(end, e0)) {
        CoMutexGuard g(lock_);
        qcow2::HostMapping m;
        int r = co_get_mapping_locked(s0, e0 - s0, &m);
        if (r < 0) return r;
        using qcow2::SubclusterType;
        if (m.bytes >= e0 - s0 && m.type != SubclusterType::kNormal && m.type != SubclusterType::kCompressed) {
            r = co_zero_or_discard_locked(s0, e0 - s0, true, flags & kReqMayUnmap, false, qcow2::DiscardType::kRequest);
            if (r != -ENOTSUP) return r;
        }
    }
    if (flags & kReqNoFallback) return -ENOTSUP;
    std::vector<uint8_t> z(end - offset, 0);
    IOVector v(z.data(), z.size());
    return do_co_pwritev(static_cast<int64_t>(offset), static_cast<int64_t>(z.size()), v, 0);
}

// The generic layer passes whole requests (pwrite_zeroes_alignment 1):
// partial subclusters at either end go through co_zero_partial, the
// subclusters between (and a partial last cluster of the image) get zero
// entries.
int coroutine_fn Qcow2Node::do_co_pwrite_zeroes(int64_t offset_s, int64_t bytes_s, ReqFlags flags)
{
    if (write_stopped_.load() || inactive_.load()) return -EIO;
    if (h_.version < 3) return -ENOTSUP;   // no ZERO flag: the generic layer writes zeros
    uint64_t offset = static_cast<uint64_t>(offset_s);
    const uint64_t end = offset + static_cast<uint64_t>(bytes_s);
    const uint64_t sc = 1ULL << subcluster_bits_;
    bitmaps_mark(offset, end - offset);
    int r = 0;
    if (offset & (sc - 1)) {
        const uint64_t pe = std::min(end, (offset + sc) & ~(sc - 1));
        r = co_zero_partial(offset, pe, flags);
        if (r < 0) return r;
        offset = pe;
    }
    if (offset >= end) return 0;
    const uint64_t mid_end = end >= size_ ? end : end & ~(sc - 1);
    if (mid_end > offset) {
        CoMutexGuard g(lock_);
        r = co_zero_or_discard_locked(offset, mid_end - offset, true, flags & kReqMayUnmap, false,
                                      qcow2::DiscardType::kRequest);
        if (r < 0) return r;
        offset = mid_end;
    }
    if (offset < end) r = co_zero_partial(offset, end, flags);
    return r;
}

int coroutine_fn Qcow2Node::do_co_pdiscard(int64_t offset, int64_t bytes)
{
    if (write_stopped_.load() || inactive_.load()) return -EIO;
    bitmaps_mark(static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes));
    CoMutexGuard g(lock_);
    // A discard with pending file discards: processed at the next flush.
    return co_zero_or_discard_locked(static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes), false, true, false,
                                     qcow2::DiscardType::kRequest);
}

// ---------------------------------------------------------------- truncate

// Preallocation of [offset, offset+bytes) (cluster-aligned start): host
// clusters linked into the L2 tables. metadata: their content zeroed in the
// file cheaply (write-zeroes; reused clusters must not show old data);
// falloc / full: the space is reserved too (zeros written for full).
int coroutine_fn Qcow2Node::co_preallocate_locked(uint64_t offset, uint64_t bytes, PreallocMode mode)
{
    const uint64_t cs = cluster_size_;
    const bool dfile = h_.has_data_file();
    const bool ext = sc_per_cluster_ > 1;
    for (uint64_t pos = offset; pos < offset + bytes;) {
        const uint64_t c0 = pos >> cluster_bits_;
        uint64_t slice_off;
        uint32_t idx;
        int r = co_get_l2_slice_for_write_locked(c0, &slice_off, &idx);
        if (r < 0) return r;
        const uint32_t slice_entries = static_cast<uint32_t>(l2_cache_->slice_size() / l2_entry_size_);
        const uint64_t n_max = std::min<uint64_t>(slice_entries - idx, (offset + bytes - pos + cs - 1) >> cluster_bits_);
        l2_cache_->release(slice_off);
        uint64_t got = n_max;
        uint64_t host = pos;
        if (!dfile) {
            int64_t h = co_alloc_run_locked(n_max, false, &got);
            if (h < 0) return static_cast<int>(h);
            host = static_cast<uint64_t>(h);
        }
        // The clusters read as zeros before they are linked: inside the
        // file (reused clusters) they are zeroed; beyond its end the file
        // grows (with the preallocation mode for falloc / full).
        const int64_t flen_s = data_file_->getlength();
        if (flen_s < 0) r = static_cast<int>(flen_s);
        const uint64_t flen = flen_s < 0 ? 0 : static_cast<uint64_t>(flen_s);
        const uint64_t hend = host + got * cs;
        const uint64_t in_end = std::min(hend, std::max(flen, host));
        if (r >= 0 && in_end > host) {
            if (mode == PreallocMode::kFull) {
                std::vector<uint8_t> z(std::min<uint64_t>(in_end - host, 1 << 20), 0);
                for (uint64_t d = host; d < in_end && r >= 0; d += z.size()) {
                    const uint64_t n = std::min<uint64_t>(z.size(), in_end - d);
                    r = data_file_->co_pwrite(static_cast<int64_t>(d), static_cast<int64_t>(n), z.data());
                }
            } else {
                r = data_file_->co_pwrite_zeroes(static_cast<int64_t>(host), static_cast<int64_t>(in_end - host),
                                                 mode == PreallocMode::kMetadata ? kReqMayUnmap : 0);
            }
        }
        if (r >= 0 && hend > flen) {
            r = data_file_->co_truncate(static_cast<int64_t>(hend), false,
                                        mode == PreallocMode::kMetadata ? PreallocMode::kOff : mode);
        }
        if (r < 0) {
            if (!dfile) co_free_clusters_locked(host, got * cs, qcow2::DiscardType::kNever);
            return r;
        }
        r = co_get_l2_slice_for_write_locked(c0, &slice_off, &idx);
        if (r < 0) return r;
        if (!lazy_refcounts_) l2_cache_->co_set_dependency(refcount_cache_.get());
        l2_cache_->depends_on_flush();
        uint8_t *s = l2_cache_->mutable_data(slice_off);
        for (uint64_t i = 0; i < got; i++) {
            uint8_t *ep = s + (idx + i) * l2_entry_size_;
            put_be64(ep, (host + i * cs) | qcow2::kOflagCopied);
            if (ext) put_be64(ep + 8, qcow2::kL2BitmapAllAlloc);
        }
        l2_cache_->release(slice_off);
        pos = (c0 + got) << cluster_bits_;
    }
    return 0;
}

// After a shrink: the image file is cut after its last cluster in use (with
// a non-zero refcount, or under a read in flight), as QEMU does. Failing to
// cut only wastes space: a warning, not an error.
void coroutine_fn Qcow2Node::co_trim_file_tail_locked()
{
    const int64_t len = file_->getlength();
    if (len <= 0) return;
    uint64_t end = (static_cast<uint64_t>(len) + cluster_size_ - 1) >> cluster_bits_;
    while (end > 0) {
        uint64_t rc = 0;
        if (co_get_refcount_locked(end - 1, &rc) < 0) return;
        if (rc || inflight(end - 1)) break;
        end--;
    }
    const uint64_t cut = end << cluster_bits_;
    if (cut >= static_cast<uint64_t>(len)) return;
    int r = file_->co_truncate(static_cast<int64_t>(cut), false, PreallocMode::kOff);
    if (r < 0) {
        log_warn("qcow2: %s: cannot cut the image file's unused tail after the shrink: %s", name_.c_str(),
                 strerror(-r));
        return;
    }
    host_zero_from_ = std::min(host_zero_from_, cut);
}

int coroutine_fn Qcow2Node::co_shrink_locked(uint64_t new_size, PreallocMode prealloc)
{
    const uint64_t cs = cluster_size_;
    const uint64_t old = size_;
    if (prealloc != PreallocMode::kOff) return -ENOTSUP;
    if (!snapshots_.empty()) {
        log_error("qcow2: %s: can't shrink an image with internal snapshots", name_.c_str());
        return -ENOTSUP;
    }
    co_wait_allocs_locked(new_size & ~(cs - 1), UINT64_MAX);
    int r = 0;
    const uint64_t from = (new_size + cs - 1) & ~(cs - 1);
    if (from < old) {
        r = co_zero_or_discard_locked(from, old - from, false, true, true, qcow2::DiscardType::kOther);
    }
    // L2 tables wholly beyond the new end.
    const uint64_t l1_range = 1ULL << (cluster_bits_ + l2_bits_);
    if (r >= 0) r = co_unlink_l2_tables_locked((new_size + l1_range - 1) / l1_range);
    return r;
}

int coroutine_fn Qcow2Node::co_unlink_l2_tables_locked(uint64_t first_l1)
{
    const uint64_t cs = cluster_size_;
    int r = 0;
    for (uint64_t i = first_l1; r >= 0 && i < l1_.size(); i++) {
        const uint64_t l2 = l1_[i] & qcow2::kL1eOffsetMask;
        if (!l2) continue;
        r = l2_cache_->co_flush();
        if (r < 0) break;
        l1_[i] = 0;
        file_->debug_event("l1_shrink_write_table");
        r = co_write_l1_entry_locked(i);
        if (r >= 0) r = file_->co_flush();
        if (r < 0) {
            l1_[i] = l2 | qcow2::kOflagCopied;
            break;
        }
        file_->debug_event("l1_shrink_free_l2_clusters");
        co_free_clusters_locked(l2, cs, qcow2::DiscardType::kOther);
    }
    return r;
}

int coroutine_fn Qcow2Node::co_grow_locked(uint64_t new_size, PreallocMode prealloc)
{
    const uint64_t cs = cluster_size_;
    const uint64_t old = size_;
    const uint64_t l1_need = qcow2::size_to_l1(new_size, cluster_bits_, l2_bits_);
    int r = co_grow_l1_locked(l1_need);
    if (r >= 0 && prealloc != PreallocMode::kOff) {
        const uint64_t from = (old + cs - 1) & ~(cs - 1);
        if (from < new_size) r = co_preallocate_locked(from, new_size - from, prealloc);
        if (r >= 0) r = co_flush_caches_locked();
    }
    if (r >= 0 && h_.has_data_file()) {
        const int64_t dlen = data_file_->getlength();
        if (dlen >= 0 && static_cast<uint64_t>(dlen) < new_size) {
            r = data_file_->co_truncate(static_cast<int64_t>(new_size), false,
                                        prealloc == PreallocMode::kMetadata ? PreallocMode::kOff : prealloc);
        }
    }
    return r;
}

int coroutine_fn Qcow2Node::co_zero_grown_part(uint64_t old, uint64_t new_size)
{
    const uint64_t cs = cluster_size_;
    int r = 0;
    // The tail may map several ways (extended L2: one run of subclusters
    // per type), so every run of it is looked at, not only the first.
    const uint64_t tail_end = std::min(new_size, (old + cs - 1) & ~(cs - 1));
    for (uint64_t pos = old; pos < tail_end;) {
        qcow2::HostMapping m;
        r = co_get_mapping(pos, tail_end - pos, &m);
        if (r < 0) return r;
        const bool unallocated = m.type == qcow2::SubclusterType::kUnallocatedPlain ||
                                 m.type == qcow2::SubclusterType::kUnallocatedAlloc;
        if (m.type != qcow2::SubclusterType::kZeroPlain && m.type != qcow2::SubclusterType::kZeroAlloc &&
            !(unallocated && !backing())) {
            std::vector<uint8_t> z(m.bytes, 0);
            IOVector v(z.data(), z.size());
            r = do_co_pwritev(static_cast<int64_t>(pos), static_cast<int64_t>(z.size()), v, 0);
            if (r < 0) return r;
        }
        pos += m.bytes;
    }
    if (backing()) {
        const int64_t blen = backing()->getlength();
        const uint64_t from = tail_end;
        if (blen > 0 && static_cast<uint64_t>(blen) > from && from < new_size) {
            const uint64_t to = std::min<uint64_t>(new_size, (static_cast<uint64_t>(blen) + cs - 1) & ~(cs - 1));
            if (h_.version >= 3) {
                CoMutexGuard g(lock_);
                r = co_zero_or_discard_locked(from, to - from, true, false, false, qcow2::DiscardType::kRequest);
            } else {
                std::vector<uint8_t> z(std::min<uint64_t>(to - from, 1 << 20), 0);
                for (uint64_t d = from; d < to && r >= 0; d += z.size()) {
                    const uint64_t n = std::min<uint64_t>(z.size(), to - d);
                    IOVector v(z.data(), n);
                    r = do_co_pwritev(static_cast<int64_t>(d), static_cast<int64_t>(n), v, 0);
                }
            }
        }
    }
    return r;
}

int coroutine_fn Qcow2Node::do_co_truncate(int64_t offset_s, bool exact, PreallocMode prealloc, ReqFlags flags)
{
    (void)exact;
    (void)flags;
    if (write_stopped_.load() || inactive_.load()) return -EIO;
    const uint64_t new_size = static_cast<uint64_t>(offset_s);
    if (new_size & 511) {
        log_error("qcow2: %s: the new size must be a multiple of 512", name_.c_str());
        return -EINVAL;
    }
    lock_.lock();
    const uint64_t old = size_;
    int r = 0;
    if (new_size != old && (r = bitmaps_resize_check(new_size)) < 0) {
        lock_.unlock();
        return r;
    }
    if (new_size < old) {
        r = co_shrink_locked(new_size, prealloc);
    } else if (new_size > old) {
        r = co_grow_locked(new_size, prealloc);
    }
    if (r >= 0 && new_size != old) {
        // Everything the new size depends on is on disk; then the header.
        r = co_flush_caches_locked();
        if (r >= 0) {
            uint8_t be[8];
            put_be64(be, new_size);
            r = file_->co_pwrite(24, 8, be);
        }
        if (r >= 0) r = file_->co_flush();
        if (r >= 0) {
            h_.size = new_size;
            size_ = new_size;
            bitmaps_resize(new_size);
        }
        if (r >= 0 && new_size < old) co_trim_file_tail_locked();
    }
    lock_.unlock();
    if (r < 0 || new_size <= old) return r;
    // The grown part must read as zeros: the old last cluster's tail (it
    // may hold data from before a shrink) and whatever a backing file
    // longer than the old size would show.
    if (prealloc == PreallocMode::kOff) r = co_zero_grown_part(old, new_size);
    return r;
}

// ---------------------------------------------------------------- flush

// qemu-img commit's "empty the top image" (QEMU qcow2_make_empty): every
// cluster becomes unallocated (a full discard, not zero clusters, so the
// backing file shows through again); clusters a snapshot still holds stay.
// Then the metadata is written back and the file flushed. A v3 image with
// nothing else in it (no snapshots, bitmaps or data file) also loses its
// L2 tables and the file is cut after its last cluster in use, leaving
// header, refcount structure and L1 table as QEMU's complete emptying
// does (QEMU rewrites the image under the dirty bit; here each step keeps
// the image consistent: pointers written and flushed before the clusters
// are freed).
Status coroutine_fn Qcow2Node::co_make_empty()
{
    if (write_stopped_.load()) return make_error(EIO, "%s: image is corrupt; cannot empty it", filename().c_str());
    int r;
    {
        CoMutexGuard g(lock_);
        const uint64_t end = (size_ + cluster_size_ - 1) & ~(cluster_size_ - 1);
        r = co_zero_or_discard_locked(0, end, false, true, true, qcow2::DiscardType::kSnapshot);
        const bool whole = h_.version >= 3 && snapshots_.empty() && !h_.bitmaps && bitmaps_.empty() &&
                           !h_.has_data_file();
        if (r == 0 && whole) r = co_unlink_l2_tables_locked(0);
        if (r == 0) r = co_flush_caches_locked();
        if (r == 0 && whole) co_trim_file_tail_locked();
    }
    if (r == 0) r = file_->co_flush();
    if (r == 0 && data_file_ != file_) r = data_file_->co_flush();
    if (r < 0) return make_error(-r, "%s: cannot empty the image: %s", filename().c_str(), std::strerror(-r));
    return {};
}

int coroutine_fn Qcow2Node::do_co_flush_to_os()
{
    if (read_only_) return 0;
    CoMutexGuard g(lock_);
    return co_flush_caches_locked();
}

} // namespace bg

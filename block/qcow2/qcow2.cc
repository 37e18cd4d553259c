// The qcow2 node: open (header, snapshots, L1 and refcount tables, caches,
// children), the read path and the driver descriptor.
//
// Read path. A request is cut into runs by co_get_mapping() (under the
// metadata lock, at most one L2 slice per lookup); consecutive runs read the
// same way are merged (clusters contiguous on the host become one request
// to the data file, unallocated ranges one request to the backing node,
// zero ranges one memset), and the data is read with the lock released, so
// requests run in parallel. Compressed clusters are read and decompressed
// one at a time.
#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "block/block-driver.h"
#include "block/qcow2/qcow2-mgmt.h"
#include "util/log.h"

namespace bg {

using qcow2::HostMapping;
using qcow2::SubclusterType;

namespace {

constexpr uint64_t kDefaultL2CacheMax = 32ULL << 20;   // DEFAULT_L2_CACHE_MAX_SIZE (Linux)
constexpr uint64_t kMinL2CacheEntries = 2;             // MIN_L2_CACHE_SIZE
constexpr uint64_t kMinRefcountCacheClusters = 4;      // MIN_REFCOUNT_CACHE_SIZE

bool is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

} // namespace

Qcow2Node::~Qcow2Node() { clean_timer_.reset(); }

std::string Qcow2Node::corruption_message() const
{
    std::lock_guard<std::mutex> g(corrupt_lock_);
    return corrupt_msg_;
}

int Qcow2Node::corruption(const char *fmt, ...)
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
    // Found by a read: writes stop (a write would trust the same bad
    // metadata). The corrupt bit is set by co_signal_corruption_locked when
    // the write path finds corruption (it holds the metadata lock).
    if (!read_only_) write_stopped_.store(true);
    if (first) log_error("qcow2: %s: image is corrupt: %s; further corruption is not reported", name_.c_str(), buf);
    return -EIO;
}

// ---------------------------------------------------------------- open

Status Qcow2Node::open(const BlockdevOptions &opts)
{
    const auto *o = opts.as<BlockdevOptionsQcow2>();
    if (!o) return node_error(EINVAL, "options are not qcow2 options");
    // With an external data file the file child holds metadata only; the
    // role cannot be narrowed after attaching, and METADATA already asks
    // for everything DATA would.
    auto c = open_child("file", o->file, kRoleImage);
    if (!c) return c.error();
    file_ = c.value();
    name_ = file_->node()->filename();
    if (name_.empty()) name_ = node_name();
    check_repair_ = opts.check_repair;
    probed_ = opts.probed;

    BG_TRY(run_in_coroutine([&] { return co_open_image(*o); }));
    BG_TRY(setup_caches(*o));
    BG_TRY(open_data_file(*o, opts));
    BG_TRY(open_backing(*o, opts));
    if (!read_only_) BG_TRY(run_in_coroutine([&] { return co_open_writable(*o); }));
    start_cache_cleaner(o->cache_clean_interval);
    return {};
}

// The write path's options (lazy refcounts, discard passing, overlap
// checks), checked against the image / applied. Neither does I/O.
Status Qcow2Node::check_write_options(const BlockdevOptionsQcow2 &o) const
{
    const bool image_lazy = h_.compatible_features & qcow2::kCompatLazyRefcounts;
    if ((o.lazy_refcounts_set ? o.lazy_refcounts : image_lazy) && h_.version < 3) {
        return qcow2::herr(EINVAL, name_,
                           "lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level");
    }
    return {};
}

void Qcow2Node::set_write_options(const BlockdevOptionsQcow2 &o)
{
    const bool image_lazy = h_.compatible_features & qcow2::kCompatLazyRefcounts;
    lazy_refcounts_ = o.lazy_refcounts_set ? o.lazy_refcounts : image_lazy;
    discard_passthrough_[static_cast<int>(qcow2::DiscardType::kNever)] = false;
    discard_passthrough_[static_cast<int>(qcow2::DiscardType::kRequest)] = o.pass_discard_request;
    discard_request_set_ = o.pass_discard_request_set;
    discard_passthrough_[static_cast<int>(qcow2::DiscardType::kSnapshot)] = o.pass_discard_snapshot;
    discard_passthrough_[static_cast<int>(qcow2::DiscardType::kOther)] = o.pass_discard_other;
    discard_no_unref_ = o.discard_no_unref;
    switch (o.overlap_check) {
    case Qcow2OverlapCheckMode::kNone: overlap_check_ = 0; break;
    case Qcow2OverlapCheckMode::kConstant: overlap_check_ = qcow2::kOlConstant; break;
    case Qcow2OverlapCheckMode::kCached: overlap_check_ = qcow2::kOlCached; break;
    case Qcow2OverlapCheckMode::kAll: overlap_check_ = qcow2::kOlAll; break;
    }
    supported_zero_flags_ = h_.version >= 3 ? kReqMayUnmap | kReqNoFallback : 0;
}

// A writable open (qcow2.md 2.3), also run when a reopen makes the node
// writable: options of the write path; a dirty image (lazy refcounts, not
// closed cleanly) gets its refcounts rebuilt before anything is written,
// unless the open is for "img check -r", which repairs and reports them
// itself; autoclear bits we do not maintain are cleared; persistent bitmaps
// are taken over (marked in use).
Status coroutine_fn Qcow2Node::co_open_writable(const BlockdevOptionsQcow2 &o)
{
    BG_TRY(check_write_options(o));
    set_write_options(o);
    for (qcow2::MetadataCache *c : {l2_cache_.get(), refcount_cache_.get()}) c->set_file(file_);
    l2_cache_->set_events("l2_load", "l2_update");
    refcount_cache_->set_events(nullptr, "refblock_update_part");
    // Overlap checks of cache write-backs (the hooks run with lock_ held).
    l2_cache_->set_write_hook([this](uint64_t off, size_t len) {
        // An external data file: its data reaches the disk before the L2
        // entries that map it (the cache's own flush covers the image file).
        if (data_flush_needed_ && data_file_ != file_) {
            int r = data_file_->co_flush();
            if (r < 0) return r;
            data_flush_needed_ = false;
        }
        int ol = co_overlap_check_locked(qcow2::kOlActiveL2, off, len);
        if (!ol) return 0;
        return ol < 0 ? ol : co_signal_corruption_locked("L2 table write at 0x%" PRIx64 " would overwrite metadata (%d)", off, ol);
    });
    refcount_cache_->set_write_hook([this](uint64_t off, size_t len) {
        int ol = co_overlap_check_locked(qcow2::kOlRefcountBlock, off, len);
        if (!ol) return 0;
        return ol < 0 ? ol
                      : co_signal_corruption_locked("refcount block write at 0x%" PRIx64 " would overwrite metadata (%d)",
                                                    off, ol);
    });
    CoMutexGuard g(lock_);
    if ((h_.incompatible_features & qcow2::kIncompatDirty) && !check_repair_) {
        // QEMU: qcow2_co_check_locked(FIX_ERRORS | FIX_LEAKS) on open.
        int r = co_rebuild_refcounts_locked();
        if (r < 0) return errno_error(-r, name_ + ": cannot repair the refcounts of the dirty image");
        r = co_update_incompat_locked(0, qcow2::kIncompatDirty);
        if (r < 0) return errno_error(-r, name_ + ": cannot clear the dirty bit");
        log_info("qcow2: %s: repaired the refcounts of an image that was not closed cleanly", name_.c_str());
    }
    // Autoclear: we keep the raw-data-file bit and the bitmaps bit (we keep
    // the bitmaps up to date, or with check -r leave them alone); unknown
    // bits are cleared, as the spec says.
    uint64_t keep = h_.autoclear_features & qcow2::kAutoclearDataFileRaw;
    if (h_.bitmaps) keep |= h_.autoclear_features & qcow2::kAutoclearBitmaps;
    if (h_.autoclear_features != keep) {
        uint8_t be[8];
        for (int i = 0; i < 8; i++) be[i] = static_cast<uint8_t>(keep >> (56 - 8 * i));
        int r = file_->co_pwrite(88, 8, be);
        if (r >= 0) r = file_->co_flush();
        if (r < 0) return errno_error(-r, name_ + ": cannot update the header");
        h_.autoclear_features = keep;
        if (!(keep & qcow2::kAutoclearBitmaps)) h_.bitmaps.reset();
    }
    // Persistent dirty bitmaps: taken over (qcow2-bitmap.cc).
    BG_TRY(co_load_bitmaps_locked());
    return {};
}

// Clean close: caches written back in order, then the dirty bit cleared.
int coroutine_fn Qcow2Node::co_close()
{
    if (read_only_) return 0;
    CoMutexGuard g(lock_);
    closing_ = true;
    // A fresh cluster's zero tail is not written (qcow2-write.cc), so the
    // file may end inside a cluster this open allocated. QEMU's zero-write
    // of that tail leaves the file at the cluster's end; ours gets there
    // now (a hole, no data). Only then: a file that ends mid-cluster for
    // another reason (compressed data) is left as it is.
    if (skipped_tail_end_ && data_file_ == file_ && static_cast<int64_t>(skipped_tail_end_) > file_->getlength()) {
        int e = file_->co_truncate(static_cast<int64_t>(skipped_tail_end_), false, PreallocMode::kOff);
        if (e < 0) log_warn("qcow2: %s: cannot extend the file to its last cluster's end: %s", name_.c_str(),
                            strerror(-e));
    }
    int r = co_flush_caches_locked();
    if (r < 0) {
        log_error("qcow2: %s: cannot write back metadata on close: %s", name_.c_str(), strerror(-r));
        return r;
    }
    r = co_store_bitmaps_locked();
    if (r < 0) {
        log_error("qcow2: %s: cannot store the persistent dirty bitmaps (they stay marked in use): %s",
                  name_.c_str(), strerror(-r));
        return r;
    }
    if (h_.incompatible_features & qcow2::kIncompatDirty) {
        r = co_update_incompat_locked(0, qcow2::kIncompatDirty);
        if (r < 0) log_error("qcow2: %s: cannot clear the dirty bit on close: %s", name_.c_str(), strerror(-r));
    }
    return r;
}

void Qcow2Node::close()
{
    clean_timer_.reset();
    run_in_coroutine([&] { return co_close(); });
}

Status coroutine_fn Qcow2Node::co_open_image(const BlockdevOptionsQcow2 &o)
{
    const int64_t flen_s = file_->getlength();
    if (flen_s < 0) return errno_error(static_cast<int>(-flen_s), name_ + ": cannot get the file size");
    const uint64_t flen = static_cast<uint64_t>(flen_s);

    // The first cluster: 4 KiB first, then all of it once its size is known.
    std::vector<uint8_t> buf(4096, 0);
    size_t have = static_cast<size_t>(std::min<uint64_t>(flen, buf.size()));
    if (have) {
        int r = file_->co_pread(0, static_cast<int64_t>(have), buf.data());
        if (r < 0) return errno_error(-r, name_ + ": cannot read the qcow2 header");
    }
    const uint64_t cs_hint = qcow2::header_cluster_size(buf.data(), have);
    if (cs_hint > have && flen > have) {
        buf.assign(cs_hint, 0);
        have = static_cast<size_t>(std::min<uint64_t>(flen, cs_hint));
        int r = file_->co_pread(0, static_cast<int64_t>(have), buf.data());
        if (r < 0) return errno_error(-r, name_ + ": cannot read the qcow2 header");
    }
    // The probe takes every version from 1 as QEMU's does (version 1 is the
    // older qcow format, which QEMU's qcow driver claims; there is none here).
    if (probed_ && have >= 8 && qcow2::be32(buf.data()) == qcow2::kMagic && qcow2::be32(buf.data() + 4) == 1) {
        return Error{ENOTSUP, "Unsupported image format 'qcow' (qcow version 1): only qcow2 (versions 2 and 3) "
                              "is supported"};
    }
    auto hr = qcow2::parse_header(buf.data(), have, flen, name_, !read_only_ && !check_repair_);
    if (!hr) return hr.error();
    h_ = std::move(hr.value());

    cluster_bits_ = h_.cluster_bits;
    cluster_size_ = h_.cluster_size();
    host_zero_from_ = (flen + cluster_size_ - 1) & ~(cluster_size_ - 1);
    l2_bits_ = h_.l2_bits();
    l2_entry_size_ = h_.l2_entry_size();
    sc_per_cluster_ = h_.extended_l2() ? qcow2::kSubclustersPerCluster : 1;
    subcluster_bits_ = h_.extended_l2() ? cluster_bits_ - 5 : cluster_bits_;
    copy_granularity_ = int64_t{1} << subcluster_bits_;
    csize_shift_ = 62 - (cluster_bits_ - 8);
    csize_mask_ = (1ULL << (cluster_bits_ - 8)) - 1;
    comp_offset_mask_ = (1ULL << csize_shift_) - 1;

    // Snapshot table (read and validated even when no snapshot is used).
    qcow2::ByteReader reader = [this](uint64_t off, size_t len, uint8_t *out) {
        return file_->co_pread(static_cast<int64_t>(off), static_cast<int64_t>(len), out);
    };
    auto sr = qcow2::read_snapshot_table(reader, h_, flen, name_);
    if (!sr) return sr.error();
    snapshots_ = std::move(sr.value());

    // The virtual size is rounded down to whole 512-byte sectors, as QEMU
    // does (bs->total_sectors); qemu-img never writes anything else.
    uint64_t l1_offset = h_.l1_table_offset;
    uint32_t l1_size = h_.l1_size;
    size_ = h_.size & ~uint64_t{511};
    if (o.snapshot_id || o.snapshot_name) {
        // A read-only view of the snapshot (the parser requires read-only).
        if (!read_only_) return qcow2::herr(EINVAL, name_, "snapshot.id and snapshot.name require read-only=on");
        auto f = qcow2::find_snapshot(snapshots_, o.snapshot_id, o.snapshot_name, name_);
        if (!f) return f.error();
        view_snapshot_ = f.value();
        l1_offset = view_snapshot_->l1_table_offset;
        l1_size = view_snapshot_->l1_size;
        size_ = view_snapshot_->disk_size & ~uint64_t{511};
    }

    // L1 table: range-checked by parse_header / read_snapshot_table (inside
    // the file, at most kMaxL1Bytes).
    if (l1_size) {
        std::vector<uint8_t> raw(static_cast<size_t>(l1_size) * 8);
        int r = file_->co_pread(static_cast<int64_t>(l1_offset), static_cast<int64_t>(raw.size()), raw.data());
        if (r < 0) return errno_error(-r, name_ + ": cannot read the L1 table");
        l1_.resize(l1_size);
        for (size_t i = 0; i < l1_.size(); i++) l1_[i] = qcow2::be64(raw.data() + i * 8);
    }
    BG_TRY(co_load_refcount_table());

    // Dirty images (lazy refcounts) open read-only as they are; a writable
    // open repairs them (co_open_writable).
    return {};
}

// QEMU's cache sizing (read_cache_sizes, qcow2.md 2.1): l2-cache-size
// defaults to what covers the whole image, at most 32 MiB; cache-size is
// split between the L2 and refcount caches; l2-cache-entry-size (default:
// the cluster size) is the slice size. Entries are allocated on first use,
// and never more than what covers the image are created.
Status Qcow2Node::setup_caches(const BlockdevOptionsQcow2 &o)
{
    const uint64_t cs = cluster_size_;
    const uint64_t entry_size = o.l2_cache_entry_size.value_or(cs);
    if (entry_size < 512 || entry_size > cs || !is_pow2(entry_size)) {
        return qcow2::herr(EINVAL, name_,
                           "L2 cache entry size must be a power of two between 512 and the cluster size (%" PRIu64
                           ")",
                           cs);
    }
    const uint64_t min_refcount_cache = kMinRefcountCacheClusters * cs;
    const uint64_t l2_tables = (size_ + cs - 1) >> cluster_bits_;   // L2 entries needed
    const uint64_t max_l2_cache = ((l2_tables * l2_entry_size_) + cs - 1) & ~(cs - 1);
    uint64_t l2_bytes, rc_bytes;
    if (o.cache_size) {
        const uint64_t combined = *o.cache_size;
        if (o.l2_cache_size && o.refcount_cache_size) {
            return qcow2::herr(EINVAL, name_, "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time");
        }
        if (o.l2_cache_size && *o.l2_cache_size > combined) {
            return qcow2::herr(EINVAL, name_, "l2-cache-size may not exceed cache-size");
        }
        if (o.refcount_cache_size && *o.refcount_cache_size > combined) {
            return qcow2::herr(EINVAL, name_, "refcount-cache-size may not exceed cache-size");
        }
        if (o.l2_cache_size) {
            l2_bytes = *o.l2_cache_size;
            rc_bytes = combined - l2_bytes;
        } else if (o.refcount_cache_size) {
            rc_bytes = *o.refcount_cache_size;
            l2_bytes = combined - rc_bytes;
        } else if (combined >= max_l2_cache + min_refcount_cache) {
            l2_bytes = max_l2_cache;
            rc_bytes = combined - l2_bytes;
        } else {
            rc_bytes = std::min(combined, min_refcount_cache);
            l2_bytes = combined - rc_bytes;
        }
    } else {
        l2_bytes = o.l2_cache_size.value_or(std::min(max_l2_cache, kDefaultL2CacheMax));
        rc_bytes = o.refcount_cache_size.value_or(min_refcount_cache);
    }
    uint64_t l2_entries = std::max(l2_bytes / entry_size, kMinL2CacheEntries);
    if (l2_entries > INT_MAX) return qcow2::herr(EINVAL, name_, "L2 cache size too big");
    // More slices than the image has cannot be used.
    l2_entries = std::min(l2_entries, std::max(kMinL2CacheEntries, (max_l2_cache + entry_size - 1) / entry_size));
    uint64_t rc_entries = std::max(rc_bytes / cs, kMinRefcountCacheClusters);
    rc_entries = std::min<uint64_t>(rc_entries, std::max<uint64_t>(kMinRefcountCacheClusters, refcount_table_.size()));
    const size_t align = file_->node()->limits().opt_mem_alignment;
    l2_cache_ = std::make_unique<qcow2::MetadataCache>(entry_size, l2_entries, align);
    refcount_cache_ = std::make_unique<qcow2::MetadataCache>(cs, rc_entries, align);
    // TEST ONLY: BLOCKGRAPH_TEST_QCOW2_MISORDER=l2-before-refcount lets L2
    // entries reach the disk before the refcount updates of the clusters
    // they point to (no refcount flush in between), the ordering bug that
    // tests/powerloss/ must detect (docs/reliability.md). Read once.
    static const bool misorder = [] {
        const char *m = getenv("BLOCKGRAPH_TEST_QCOW2_MISORDER");
        return m && strcmp(m, "l2-before-refcount") == 0;
    }();
    if (misorder) l2_cache_->test_ignore_dependencies();
    return {};
}

void Qcow2Node::start_cache_cleaner(uint64_t interval_s)
{
    AioContext *ctx = AioContext::current();
    if (!interval_s || !ctx) return;
    clean_interval_ns_ = interval_s * 1000000000ULL;
    clean_timer_ = std::make_unique<Timer>(ctx, cache_clean_cb, this);
    clean_timer_->mod_in(static_cast<int64_t>(clean_interval_ns_));
}

// Frees cache entries unused for a whole interval. Runs in the opening
// thread's loop (not a coroutine): skips a round when the metadata lock is
// busy rather than wait.
void Qcow2Node::cache_clean_cb(void *opaque)
{
    auto *s = static_cast<Qcow2Node *>(opaque);
    if (s->lock_.try_lock()) {
        s->l2_cache_->clean_unused();
        s->refcount_cache_->clean_unused();
        s->lock_.unlock();
    }
    s->clean_timer_->mod_in(static_cast<int64_t>(s->clean_interval_ns_));
}

// ---------------------------------------------------------------- reads

// Unallocated range: from the backing node where it has data, zeros past its
// end (or without one).
int coroutine_fn Qcow2Node::co_read_backing(uint64_t offset, uint64_t bytes, IOVector &qiov, size_t qoff)
{
    uint64_t n = 0;
    if (backing()) {
        const int64_t blen = backing()->getlength();
        if (blen > 0 && offset < static_cast<uint64_t>(blen)) n = std::min(bytes, static_cast<uint64_t>(blen) - offset);
    }
    if (n) {
        IOVector part;
        part.add_slice(qiov, qoff, n);
        file_->debug_event("read_backing_aio");
        int r = backing()->co_preadv(static_cast<int64_t>(offset), static_cast<int64_t>(n), part);
        if (r < 0) return r;
    }
    if (n < bytes) qiov.memset(qoff + n, 0, bytes - n);
    return 0;
}

int coroutine_fn Qcow2Node::co_read_compressed(uint64_t offset, const HostMapping &m, uint64_t bytes, IOVector &qiov,
                                               size_t qoff)
{
    // comp_bytes <= 2 clusters (co_get_mapping_locked checked it is inside the file).
    const size_t align = std::max<size_t>(file_->node()->limits().opt_mem_alignment, 64);
    AlignedBuf in = aligned_alloc_buf(align, m.comp_bytes);
    file_->debug_event("read_compressed");
    int r = file_->co_pread(static_cast<int64_t>(m.comp_offset), static_cast<int64_t>(m.comp_bytes), in.get());
    if (r < 0) return r;
    AlignedBuf out = aligned_alloc_buf(64, cluster_size_);
    r = qcow2::decompress_cluster(h_.compression_type, in.get(), m.comp_bytes, out.get(), cluster_size_);
    if (r < 0) {
        return corruption("compressed cluster at host offset 0x%" PRIx64 " (guest offset 0x%" PRIx64
                          ") cannot be decompressed",
                          m.comp_offset, offset & ~(cluster_size_ - 1));
    }
    qiov.from_buf(qoff, out.get() + (offset & (cluster_size_ - 1)), bytes);
    return 0;
}

int64_t coroutine_fn Qcow2Node::co_map_read_locked(uint64_t pos, uint64_t end, std::vector<ReadExtent> *out,
                                                   std::vector<std::pair<uint64_t, uint64_t>> *held)
{
    out->clear();
    while (pos < end && out->size() < kReadBatch) {
        ReadExtent x;
        int r = co_get_mapping_locked(pos, end - pos, &x.m);
        if (r < 0) return r;
        if (x.m.bytes == 0) return -EIO;   // cannot happen; never loop forever
        x.pos = pos;
        x.bytes = std::min(x.m.bytes, end - pos);
        if (data_file_ == file_ && x.m.type == SubclusterType::kNormal) {
            inflight_inc(x.m.host_offset, x.bytes);
            held->emplace_back(x.m.host_offset, x.bytes);
        } else if (x.m.type == SubclusterType::kCompressed) {
            inflight_inc(x.m.comp_offset, x.m.comp_bytes);
            held->emplace_back(x.m.comp_offset, x.m.comp_bytes);
        }
        out->push_back(x);
        pos += x.bytes;
    }
    return static_cast<int64_t>(pos);
}

int coroutine_fn Qcow2Node::do_co_vmstate(bool write, int64_t pos, int64_t bytes, IOVector &qiov)
{
    const uint64_t base = qcow2::size_to_l1(size_, cluster_bits_, l2_bits_) << (cluster_bits_ + l2_bits_);
    if (base > static_cast<uint64_t>(kMaxLength) - static_cast<uint64_t>(pos + bytes)) return -EIO;
    const int64_t off = static_cast<int64_t>(base) + pos;
    return write ? do_co_pwritev(off, bytes, qiov, 0) : do_co_preadv(off, bytes, qiov, 0);
}

// A read takes the metadata lock once (per kReadBatch extents): every
// extent is looked up, and its host range counted in flight, in one hold;
// the data I/O then runs without the lock, and the in-flight counts are
// dropped (without the lock) when the read is done.
int coroutine_fn Qcow2Node::do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    (void)flags;
    enum class Kind { kNone, kData, kBacking, kZero };
    // The pending run: [run_start, run_start + run_len) of the guest, read
    // the same way; for kData at run_host in the data file.
    Kind kind = Kind::kNone;
    uint64_t run_start = 0, run_host = 0, run_len = 0;
    const uint64_t start = static_cast<uint64_t>(offset);
    const uint64_t end = start + static_cast<uint64_t>(bytes);

    auto flush = [&]() -> int {
        int r = 0;
        const size_t qoff = static_cast<size_t>(run_start - start);
        switch (kind) {
        case Kind::kNone: break;
        case Kind::kData: {
            IOVector part;
            part.add_slice(qiov, qoff, run_len);
            file_->debug_event("read_aio");
            r = data_file_->co_preadv(static_cast<int64_t>(run_host), static_cast<int64_t>(run_len), part);
            break;
        }
        case Kind::kBacking: r = co_read_backing(run_start, run_len, qiov, qoff); break;
        case Kind::kZero: qiov.memset(qoff, 0, run_len); break;
        }
        kind = Kind::kNone;
        run_len = 0;
        return r;
    };

    // Host ranges this read has I/O on: counted in flight (under the lock,
    // with the lookup) so that a concurrent discard cannot let the
    // allocator hand them to another write before the read is done.
    std::vector<std::pair<uint64_t, uint64_t>> inflight_ranges;
    struct InflightRelease {
        Qcow2Node *s;
        std::vector<std::pair<uint64_t, uint64_t>> *v;
        ~InflightRelease()
        {
            for (auto &x : *v) s->inflight_dec(x.first, x.second);
        }
    } release{this, &inflight_ranges};

    std::vector<ReadExtent> extents;
    for (uint64_t pos = start; pos < end;) {
        int64_t next;
        {
            CoMutexGuard g(lock_);
            next = co_map_read_locked(pos, end, &extents, &inflight_ranges);
        }
        if (next < 0) return static_cast<int>(next);
        for (const ReadExtent &x : extents) {
            int r;
            Kind k = Kind::kZero;
            uint64_t host = 0;
            switch (x.m.type) {
            case SubclusterType::kUnallocatedPlain:
            case SubclusterType::kUnallocatedAlloc: k = backing() ? Kind::kBacking : Kind::kZero; break;
            case SubclusterType::kZeroPlain:
            case SubclusterType::kZeroAlloc: k = Kind::kZero; break;
            case SubclusterType::kNormal:
                k = Kind::kData;
                host = x.m.host_offset;
                break;
            case SubclusterType::kCompressed:
                r = flush();
                if (r < 0) return r;
                r = co_read_compressed(x.pos, x.m, x.bytes, qiov, static_cast<size_t>(x.pos - start));
                if (r < 0) return r;
                continue;
            }
            if (kind == k && (k != Kind::kData || run_host + run_len == host)) {
                run_len += x.bytes;
            } else {
                r = flush();
                if (r < 0) return r;
                kind = k;
                run_start = x.pos;
                run_host = host;
                run_len = x.bytes;
            }
        }
        pos = static_cast<uint64_t>(next);
    }
    return flush();
}

int64_t Qcow2Node::do_getlength() { return static_cast<int64_t>(size_); }

void Qcow2Node::refresh_limits(BlockLimits *bl)
{
    // Sub-cluster and unaligned reads are handled here (runs of any byte
    // length); child requests are split by the children's own limits.
    bl->request_alignment = 1;
    bl->max_transfer = 0;
    bl->pdiscard_alignment = static_cast<uint32_t>(cluster_size_);
    // Write-zeroes of any alignment come whole: partial subclusters are
    // handled by the driver (do_co_pwrite_zeroes), as QEMU's qcow2 does.
    bl->pwrite_zeroes_alignment = 1;
}

// ---------------------------------------------------------------- descriptor

namespace {
std::unique_ptr<BlockNode> create_qcow2() { return std::make_unique<Qcow2Node>(); }

// Bitmaps need the version 3 header extensions.
bool qcow2_stores_bitmaps(const CreateOptions &opts)
{
    const std::optional<std::string> compat = opts.get("compat");
    return !(compat && (*compat == "0.10" || *compat == "v2"));
}
} // namespace

extern const BlockDriver kDriverQcow2 = {
    "qcow2", BlockDriverKind::kFormat,
    kCapWrite | kCapDiscard | kCapWriteZeroes | kCapResize | kCapShrink | kCapBacking | kCapBlockStatus | kCapFlush |
        kCapPersistent | kCapWriteCompressed | kCapDebugEvents,
    "QEMU copy-on-write image, version 2 and 3",
    decode_qcow2_options, create_qcow2, qcow2::probe,
    qcow2::kCreateOptions, qcow2::create_image, qcow2::measure, qcow2_stores_bitmaps,
    nullptr, nullptr, qcow2::create_on_node,
};

} // namespace bg

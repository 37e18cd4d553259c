// block/qcow2/qcow2-bitmap.cc -- persistent dirty bitmaps (qcow2 spec,
// "Bitmaps"; docs/qcow2.md "Persistent dirty bitmaps").
//
// Life cycle. A writable open of a v3 image reads every bitmap it can use
// into memory (type 1, not in use, no extra data it must understand,
// granularity 512 B .. 2 GiB) and rewrites the directory in place with the
// in-use flag on those, so that a crash leaves them marked inconsistent
// (what QEMU does). While open, every guest write, write-zeroes, discard,
// snapshot switch and resize sets the bits of the enabled ("auto") ones.
// Close stores them: data clusters (all-zero clusters stay unallocated),
// tables and a new directory in new clusters, then the header switched to
// the new directory, then the old clusters freed; a crash in between can
// only leak clusters. An open that changed nothing just puts the original
// directory back. Bitmaps we cannot use are kept exactly as stored.
//
// Threading: bitmaps_mark() runs in request coroutines of any thread
// (bitmap_lock_); the rest runs with lock_ held and no requests in flight
// (open, close, the drained management hooks).
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "block/qcow2/qcow2.h"
#include "util/bits.h"
#include "util/log.h"

namespace bg {
namespace qcow2 {

Result<std::vector<BitmapEntry>> parse_bitmap_directory(const uint8_t *d, size_t len, uint32_t nb,
                                                        const std::string &image)
{
    std::vector<BitmapEntry> out;
    size_t pos = 0;
    for (uint32_t i = 0; i < nb; i++) {
        if (pos + 24 > len) return herr(EINVAL, image, "bitmap directory entry %u is truncated", i);
        BitmapEntry e;
        e.table_offset = be64(d + pos);
        e.table_size = be32(d + pos + 8);
        e.flags = be32(d + pos + 12);
        e.type = d[pos + 16];
        e.granularity_bits = d[pos + 17];
        const uint16_t name_size = be16(d + pos + 18);
        const uint32_t extra = be32(d + pos + 20);
        if (extra > len || pos + 24 + extra + name_size > len || e.granularity_bits > 63) {
            return herr(EINVAL, image, "bitmap directory entry %u is corrupt", i);
        }
        e.dir_pos = pos;
        e.extra.assign(d + pos + 24, d + pos + 24 + extra);
        e.name.assign(reinterpret_cast<const char *>(d + pos + 24 + extra), name_size);
        out.push_back(std::move(e));
        pos += (24 + static_cast<size_t>(extra) + name_size + 7) & ~size_t{7};
    }
    return out;
}

std::vector<uint8_t> build_bitmap_directory(const std::vector<BitmapEntry> &entries)
{
    std::vector<uint8_t> d;
    for (const BitmapEntry &e : entries) {
        const size_t pos = d.size();
        const size_t n = (24 + e.extra.size() + e.name.size() + 7) & ~size_t{7};
        d.resize(pos + n, 0);
        uint8_t *p = d.data() + pos;
        put_be64(p, e.table_offset);
        put_be(p + 8, e.table_size, 4);
        put_be(p + 12, e.flags, 4);
        p[16] = e.type;
        p[17] = e.granularity_bits;
        put_be(p + 18, e.name.size(), 2);
        put_be(p + 20, e.extra.size(), 4);
        if (!e.extra.empty()) std::memcpy(p + 24, e.extra.data(), e.extra.size());   // data() may be null
        std::memcpy(p + 24 + e.extra.size(), e.name.data(), e.name.size());
    }
    return d;
}

} // namespace qcow2

namespace {

bool usable(const qcow2::BitmapEntry &e)
{
    return !e.name.empty() && e.name.size() <= qcow2::kMaxBitmapNameSize && e.type == qcow2::kBitmapTypeDirty && !(e.flags & qcow2::kBitmapInUse) &&
           !(e.flags & ~(qcow2::kBitmapInUse | qcow2::kBitmapAuto | qcow2::kBitmapExtraDataCompatible)) &&
           (e.extra.empty() || (e.flags & qcow2::kBitmapExtraDataCompatible)) && e.granularity_bits >= 9 &&
           e.granularity_bits <= 31;
}

uint64_t nb_bits_for(uint64_t size, uint8_t gbits) { return (size + (1ULL << gbits) - 1) >> gbits; }

bool all_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

} // namespace

Result<std::vector<qcow2::BitmapEntry>> coroutine_fn Qcow2Node::co_read_bitmap_directory()
{
    if (!h_.bitmaps) return std::vector<qcow2::BitmapEntry>{};
    // parse_header bounded the directory (at most kMaxBitmapDirectoryBytes, inside the file).
    std::vector<uint8_t> dir(h_.bitmaps->directory_size);
    int r = file_->co_pread(static_cast<int64_t>(h_.bitmaps->directory_offset), static_cast<int64_t>(dir.size()),
                            dir.data());
    if (r < 0) return errno_error(-r, name_ + ": cannot read the bitmap directory");
    bitmap_dir_raw_ = dir;
    return qcow2::parse_bitmap_directory(dir.data(), dir.size(), h_.bitmaps->nb_bitmaps, name_);
}

// One bitmap's table (validated against the file and the image size) and,
// with want_bits, its data.
Result<Qcow2Node::DirtyBitmap> coroutine_fn Qcow2Node::co_read_bitmap(const qcow2::BitmapEntry &e, bool want_bits,
                                                                      std::vector<uint64_t> *seen)
{
    DirtyBitmap b;
    b.e = e;
    const char *nm = e.name.c_str();
    if (!usable(e)) {
        if (e.flags & qcow2::kBitmapInUse) {
            return qcow2::herr(EINVAL, name_, "Bitmap '%s' is inconsistent and cannot be used", nm);
        }
        return qcow2::herr(ENOTSUP, name_, "bitmap '%s' has a type, flags, extra data or granularity we cannot use",
                           nm);
    }
    const uint64_t cs = cluster_size_;
    b.nb_bits = nb_bits_for(size_, e.granularity_bits);
    const uint64_t data_bytes = (b.nb_bits + 7) / 8;
    if (data_bytes > qcow2::kMaxBitmapBytes) {
        return qcow2::herr(EFBIG, name_, "bitmap '%s' would need %" PRIu64 " bytes of memory (at most %" PRIu64 ")",
                           nm, data_bytes, qcow2::kMaxBitmapBytes);
    }
    // From here on table_size is bounded by the image size (8 MiB of table at most).
    const uint64_t want_entries = (data_bytes + cs - 1) / cs;
    const int64_t flen = file_->getlength();
    if (flen < 0) return errno_error(static_cast<int>(-flen), name_ + ": cannot get the file size");
    const uint64_t table_bytes = static_cast<uint64_t>(e.table_size) * 8;
    if (e.table_size != want_entries || (e.table_offset & (cs - 1)) || (e.table_size && e.table_offset == 0) ||
        e.table_offset > static_cast<uint64_t>(flen) || table_bytes > static_cast<uint64_t>(flen) - e.table_offset) {
        return qcow2::herr(EINVAL, name_, "bitmap '%s' is corrupt: table at 0x%" PRIx64 " with %" PRIu32
                           " entries (expected %" PRIu64 ")", nm, e.table_offset, e.table_size, want_entries);
    }
    // A cluster we may free one day: ours alone (refcount 1, no other
    // metadata there, not used twice).
    auto verify = [&](uint64_t off, uint64_t len) -> Status {
        if (!seen) return {};
        for (uint64_t c = off; c < off + len; c += cs) {
            uint64_t rc = 0;
            int r = co_get_refcount_locked(c >> cluster_bits_, &rc);
            if (r < 0) return errno_error(-r, name_ + ": cannot read the refcounts of bitmap '" + e.name + "'");
            if (rc != 1 || std::find(seen->begin(), seen->end(), c) != seen->end() ||
                co_overlap_check_locked(0, c, cs) != 0) {
                return qcow2::herr(EINVAL, name_, "bitmap '%s' is corrupt: cluster 0x%" PRIx64 " is not its own", nm,
                                   c);
            }
            seen->push_back(c);
        }
        return {};
    };
    std::vector<uint8_t> table(table_bytes);
    if (table_bytes) {
        BG_TRY(verify(e.table_offset, table_bytes));
        int r = file_->co_pread(static_cast<int64_t>(e.table_offset), static_cast<int64_t>(table_bytes), table.data());
        if (r < 0) return errno_error(-r, name_ + ": cannot read the table of bitmap '" + e.name + "'");
    }
    if (want_bits) b.bits.assign(data_bytes, 0);
    for (uint64_t i = 0; i < e.table_size; i++) {
        const uint64_t ent = qcow2::be64(table.data() + i * 8);
        const uint64_t off = ent & ~qcow2::kBitmapTableReserved & ~uint64_t{1};
        if ((ent & qcow2::kBitmapTableReserved) || (off && (ent & 1)) || (off & (cs - 1)) ||
            (off && off + cs > static_cast<uint64_t>(flen))) {
            return qcow2::herr(EINVAL, name_, "bitmap '%s' is corrupt: table entry %" PRIu64 " is 0x%016" PRIx64, nm,
                               i, ent);
        }
        if (off) {
            BG_TRY(verify(off, cs));
            b.clusters.push_back(off);
        }
        if (!want_bits) continue;
        const uint64_t n = std::min(cs, data_bytes - i * cs);
        if (off) {
            int r = file_->co_pread(static_cast<int64_t>(off), static_cast<int64_t>(n), b.bits.data() + i * cs);
            if (r < 0) return errno_error(-r, name_ + ": cannot read the data of bitmap '" + e.name + "'");
        } else if (ent & 1) {
            std::memset(b.bits.data() + i * cs, 0xff, n);
        }
    }
    if (want_bits) bits_clear_tail(b.bits, b.nb_bits);
    b.owned = want_bits;
    b.table_known = true;
    return b;
}

Status coroutine_fn Qcow2Node::co_load_bitmaps_locked()
{
    if (h_.version < 3 || check_repair_) return {};
    auto dir = co_read_bitmap_directory();
    if (!dir) return dir.error();
    std::vector<DirtyBitmap> loaded;
    std::vector<uint64_t> seen;
    if (h_.bitmaps) {
        // The directory's clusters are ours too (freed when a new one is stored).
        const uint64_t cs = cluster_size_;
        for (uint64_t c = h_.bitmaps->directory_offset & ~(cs - 1);
             c < h_.bitmaps->directory_offset + h_.bitmaps->directory_size; c += cs) {
            seen.push_back(c);
        }
    }
    uint64_t total = 0;
    std::vector<uint8_t> marked = bitmap_dir_raw_;
    for (const qcow2::BitmapEntry &e : dir.value()) {
        for (const DirtyBitmap &o : loaded) {
            if (!e.name.empty() && o.e.name == e.name) {
                return qcow2::herr(EINVAL, name_, "the bitmap directory names bitmap '%s' twice", e.name.c_str());
            }
        }
        if (!usable(e)) {
            DirtyBitmap keep;
            keep.e = e;
            // Its clusters, if its table is sound, so that --remove can free them.
            if (e.type == qcow2::kBitmapTypeDirty && e.granularity_bits >= 9 && e.granularity_bits <= 31 &&
                !e.name.empty()) {
                qcow2::BitmapEntry probe = e;
                probe.flags = 0;
                probe.extra.clear();
                std::vector<uint64_t> s2 = seen;
                auto t = co_read_bitmap(probe, false, &s2);
                if (t) {
                    keep.clusters = t.value().clusters;
                    keep.table_known = true;
                    seen = std::move(s2);
                }
            }
            loaded.push_back(std::move(keep));
            continue;
        }
        auto b = co_read_bitmap(e, true, &seen);
        if (!b) return b.error();
        total += b.value().bits.size();
        if (total > qcow2::kMaxBitmapBytesTotal) {
            return qcow2::herr(EFBIG, name_, "the bitmaps would need more than %" PRIu64 " bytes of memory",
                               qcow2::kMaxBitmapBytesTotal);
        }
        // In use on disk from now on: a crash leaves it marked inconsistent.
        qcow2::put_be(marked.data() + e.dir_pos + 12, e.flags | qcow2::kBitmapInUse, 4);
        loaded.push_back(std::move(b.value()));
    }
    if (marked != bitmap_dir_raw_) {
        int r = file_->co_pwrite(static_cast<int64_t>(h_.bitmaps->directory_offset),
                                 static_cast<int64_t>(marked.size()), marked.data());
        if (r >= 0) r = file_->co_flush();
        if (r < 0) return errno_error(-r, name_ + ": cannot mark the bitmaps in use");
    }
    std::lock_guard<std::mutex> g(bitmap_lock_);
    bitmaps_ = std::move(loaded);
    bitmaps_loaded_ = true;
    bitmaps_changed_ = false;
    bitmaps_track_.store(std::any_of(bitmaps_.begin(), bitmaps_.end(), [](const DirtyBitmap &b) { return b.enabled(); }));
    return {};
}

int coroutine_fn Qcow2Node::co_store_bitmaps_locked()
{
    if (!bitmaps_loaded_) return 0;
    bool changed;
    {
        std::lock_guard<std::mutex> g(bitmap_lock_);
        changed = bitmaps_changed_;
    }
    // A corrupt image gets no new metadata: the bitmaps stay marked in use.
    // An image without bitmaps has nothing to lose: not an error.
    if (write_stopped_.load()) {
        if (changed || !bitmaps_.empty()) return -EIO;
        std::lock_guard<std::mutex> g(bitmap_lock_);
        bitmaps_loaded_ = false;
        return 0;
    }
    const bool any_owned = std::any_of(bitmaps_.begin(), bitmaps_.end(), [](const DirtyBitmap &b) { return b.owned; });
    // Once stored, the bitmaps are no longer ours (a later store, e.g. at
    // close after inactivate(), does nothing).
    auto done = [this]() {
        std::lock_guard<std::mutex> g(bitmap_lock_);
        bitmaps_loaded_ = false;
        bitmaps_track_.store(false);
        bitmaps_.clear();
        bitmap_orphans_.clear();
        bitmaps_changed_ = false;
    };
    if (!changed) {
        // Nothing changed: the directory as it was before the open.
        if (any_owned && h_.bitmaps) {
            int r = file_->co_pwrite(static_cast<int64_t>(h_.bitmaps->directory_offset),
                                     static_cast<int64_t>(bitmap_dir_raw_.size()), bitmap_dir_raw_.data());
            if (r >= 0) r = file_->co_flush();
            if (r < 0) return r;
        }
        done();
        return 0;
    }
    const uint64_t cs = cluster_size_;
    std::vector<std::pair<uint64_t, uint64_t>> fresh, old;   // (offset, bytes)
    auto undo = [&](int r) {
        for (auto &x : fresh) co_free_clusters_locked(x.first, x.second, qcow2::DiscardType::kOther);
        return r;
    };
    auto alloc_write = [&](const uint8_t *data, size_t n, uint64_t *at) -> int {
        const uint64_t len = (n + cs - 1) & ~(cs - 1);
        const int64_t off = co_alloc_clusters_locked(len);
        if (off < 0) return static_cast<int>(off);
        fresh.emplace_back(static_cast<uint64_t>(off), len);
        std::vector<uint8_t> buf(len, 0);
        std::memcpy(buf.data(), data, n);
        *at = static_cast<uint64_t>(off);
        return file_->co_pwrite(off, static_cast<int64_t>(len), buf.data());
    };
    std::vector<qcow2::BitmapEntry> entries;
    for (const DirtyBitmap &b : bitmaps_) {
        if (!b.owned) {
            entries.push_back(b.e);
            continue;
        }
        for (uint64_t c : b.clusters) old.emplace_back(c, cs);
        if (b.e.table_offset && b.e.table_size) {
            old.emplace_back(b.e.table_offset, static_cast<uint64_t>(b.e.table_size) * 8);
        }
        const uint64_t n_entries = (b.bits.size() + cs - 1) / cs;
        std::vector<uint8_t> table(n_entries * 8, 0);
        for (uint64_t i = 0; i < n_entries; i++) {
            const size_t n = static_cast<size_t>(std::min<uint64_t>(cs, b.bits.size() - i * cs));
            const uint8_t *p = b.bits.data() + i * cs;
            if (all_zero(p, n)) continue;
            uint64_t at;
            int r = alloc_write(p, n, &at);
            if (r < 0) return undo(r);
            qcow2::put_be64(table.data() + i * 8, at);
        }
        qcow2::BitmapEntry e = b.e;
        e.flags &= ~qcow2::kBitmapInUse;
        e.table_size = static_cast<uint32_t>(n_entries);
        e.table_offset = 0;   // an empty image: no table
        if (n_entries) {
            int r = alloc_write(table.data(), table.size(), &e.table_offset);
            if (r < 0) return undo(r);
        }
        entries.push_back(std::move(e));
    }
    qcow2::Header nh = h_;
    if (h_.bitmaps) old.emplace_back(h_.bitmaps->directory_offset, h_.bitmaps->directory_size);
    old.insert(old.end(), bitmap_orphans_.begin(), bitmap_orphans_.end());
    if (entries.empty()) {
        nh.bitmaps.reset();
        nh.autoclear_features &= ~qcow2::kAutoclearBitmaps;
    } else {
        const std::vector<uint8_t> d = qcow2::build_bitmap_directory(entries);
        if (d.size() > qcow2::kMaxBitmapDirectoryBytes) return undo(-EFBIG);
        qcow2::BitmapsExtension x;
        x.nb_bitmaps = static_cast<uint32_t>(entries.size());
        x.directory_size = d.size();
        int r = alloc_write(d.data(), d.size(), &x.directory_offset);
        if (r < 0) return undo(r);
        nh.bitmaps = x;
        nh.autoclear_features |= qcow2::kAutoclearBitmaps;
    }
    // Flushes the refcounts and the new clusters, then switches the header.
    // If that fails, the header may point at the new clusters already: they
    // are kept (a leak at worst), the old ones too.
    int r = co_write_header_locked(nh);
    if (r < 0) return r;
    for (auto &x : old) co_free_clusters_locked(x.first, x.second, qcow2::DiscardType::kOther);
    done();
    return co_flush_caches_locked();
}

Status coroutine_fn Qcow2Node::co_inactivate()
{
    if (read_only_) return {};
    CoMutexGuard g(lock_);
    int r = co_flush_caches_locked();
    if (r < 0) return errno_error(-r, name_ + ": cannot write back metadata");
    r = co_store_bitmaps_locked();
    if (r < 0) return errno_error(-r, name_ + ": cannot store the persistent dirty bitmaps");
    // Writes from now on could not be recorded: refused.
    inactive_.store(true);
    return {};
}

int Qcow2Node::bitmaps_resize_check(uint64_t new_size)
{
    if (!bitmaps_loaded_) return 0;
    std::lock_guard<std::mutex> g(bitmap_lock_);
    uint64_t total = 0;
    for (const DirtyBitmap &b : bitmaps_) {
        if (!b.owned) {
            log_error("qcow2: %s: cannot resize an image with bitmap '%s', which is inconsistent or unknown to us "
                      "(remove it first)", name_.c_str(), b.e.name.c_str());
            return -ENOTSUP;
        }
        const uint64_t bytes = (nb_bits_for(new_size, b.e.granularity_bits) + 7) / 8;
        total += bytes;
        if (bytes > qcow2::kMaxBitmapBytes || total > qcow2::kMaxBitmapBytesTotal) {
            log_error("qcow2: %s: cannot resize: bitmap '%s' would be too large at this size (granularity %u)",
                      name_.c_str(), b.e.name.c_str(), 1u << b.e.granularity_bits);
            return -EFBIG;
        }
    }
    return 0;
}

void Qcow2Node::bitmaps_mark(uint64_t offset, uint64_t bytes)
{
    if (!bytes || !bitmaps_track_.load(std::memory_order_relaxed)) return;
    std::lock_guard<std::mutex> g(bitmap_lock_);
    for (DirtyBitmap &b : bitmaps_) {
        if (!b.enabled() || !b.nb_bits) continue;
        const uint64_t first = offset >> b.e.granularity_bits;
        const uint64_t last = std::min(b.nb_bits - 1, (offset + bytes - 1) >> b.e.granularity_bits);
        if (first <= last) bits_set_range(b.bits, first, last);
    }
    bitmaps_changed_ = true;
}

void Qcow2Node::bitmaps_resize(uint64_t new_size)
{
    if (!bitmaps_loaded_) return;
    std::lock_guard<std::mutex> g(bitmap_lock_);
    for (DirtyBitmap &b : bitmaps_) {
        if (!b.owned) continue;   // (bitmaps_resize_check refused these)
        const uint64_t nb = nb_bits_for(new_size, b.e.granularity_bits);
        if (nb == b.nb_bits) continue;
        b.nb_bits = nb;
        b.bits.resize((b.nb_bits + 7) / 8, 0);
        bits_clear_tail(b.bits, b.nb_bits);
        bitmaps_changed_ = true;
    }
}

// ---------------------------------------------------------------- hooks

Result<DirtyBitmapData> coroutine_fn Qcow2Node::co_bitmap_data(const std::string &name)
{
    DirtyBitmapData out;
    auto fill = [&](const DirtyBitmap &b) {
        out.granularity = 1u << b.e.granularity_bits;
        out.nb_bits = b.nb_bits;
        out.enabled = (b.e.flags & qcow2::kBitmapAuto) != 0;
        out.bytes = b.bits;
    };
    CoMutexGuard g(lock_);
    if (bitmaps_loaded_) {
        std::optional<qcow2::BitmapEntry> unusable;
        {
            std::lock_guard<std::mutex> bg(bitmap_lock_);
            for (const DirtyBitmap &b : bitmaps_) {
                if (b.e.name != name) continue;
                if (b.owned) {
                    fill(b);
                    return out;
                }
                unusable = b.e;
                break;
            }
        }
        if (!unusable) return make_error(ENOENT, "Dirty bitmap '%s' not found", name.c_str());
        auto r = co_read_bitmap(*unusable, true);   // says why it cannot be used
        if (!r) return r.error();
        return make_error(EINVAL, "Bitmap '%s' cannot be used", name.c_str());
    }
    if (h_.version < 3) return make_error(ENOENT, "Dirty bitmap '%s' not found", name.c_str());
    auto dir = co_read_bitmap_directory();
    if (!dir) return dir.error();
    for (const qcow2::BitmapEntry &e : dir.value()) {
        if (e.name != name) continue;
        auto b = co_read_bitmap(e, true);
        if (!b) return b.error();
        fill(b.value());
        return out;
    }
    return make_error(ENOENT, "Dirty bitmap '%s' not found", name.c_str());
}

Status coroutine_fn Qcow2Node::co_bitmap_change(const BitmapChange &c)
{
    using K = BitmapChange::Kind;
    if (h_.version < 3) return make_error(ENOTSUP, "Cannot store dirty bitmaps in qcow2 v2 files");
    if (inactive_.load()) return make_error(EROFS, "%s: the node is inactive (its bitmaps are stored)", name_.c_str());
    if (!bitmaps_loaded_) return make_error(EROFS, "%s: the bitmaps of a read-only image cannot change", name_.c_str());
    CoMutexGuard g(lock_);
    std::lock_guard<std::mutex> bg(bitmap_lock_);
    auto it = std::find_if(bitmaps_.begin(), bitmaps_.end(), [&](const DirtyBitmap &b) { return b.e.name == c.name; });
    if (c.kind == K::kAdd) {
        if (it != bitmaps_.end()) return make_error(EEXIST, "Bitmap already exists: %s", c.name.c_str());
        if (c.name.empty() || c.name.size() > qcow2::kMaxBitmapNameSize) {
            return make_error(EINVAL, "Bitmap name must be 1 to %u bytes long", qcow2::kMaxBitmapNameSize);
        }
        if (bitmaps_.size() >= qcow2::kMaxBitmaps) {
            return make_error(ENOSPC, "Can't store a new bitmap: the image has %u already", qcow2::kMaxBitmaps);
        }
        // QEMU's default: the cluster size, within [4 KiB, 64 KiB].
        uint64_t gran = c.granularity ? c.granularity : std::clamp<uint64_t>(cluster_size_, 4096, 65536);
        if (gran < 512 || (gran & (gran - 1)) || gran > (1ULL << 31)) {
            return make_error(EINVAL, "Granularity must be power of 2 and at least 512");
        }
        DirtyBitmap b;
        b.owned = true;
        b.e.type = qcow2::kBitmapTypeDirty;
        b.e.granularity_bits = static_cast<uint8_t>(__builtin_ctzll(gran));
        b.e.flags = c.disabled ? 0 : qcow2::kBitmapAuto;
        b.e.name = c.name;
        b.nb_bits = nb_bits_for(size_, b.e.granularity_bits);
        if ((b.nb_bits + 7) / 8 > qcow2::kMaxBitmapBytes) {
            return make_error(EFBIG, "Bitmap '%s' would be too large for this image size and granularity",
                              c.name.c_str());
        }
        uint64_t total = (b.nb_bits + 7) / 8;
        for (const DirtyBitmap &o : bitmaps_) total += o.bits.size();
        if (total > qcow2::kMaxBitmapBytesTotal) {
            return make_error(EFBIG, "The bitmaps of this image would need more than %" PRIu64 " bytes of memory",
                              qcow2::kMaxBitmapBytesTotal);
        }
        b.bits.assign((b.nb_bits + 7) / 8, 0);
        b.table_known = true;
        bitmaps_.push_back(std::move(b));
    } else {
        if (it == bitmaps_.end()) return make_error(ENOENT, "Dirty bitmap '%s' not found", c.name.c_str());
        if (c.kind == K::kRemove) {
            // Its clusters are freed once the directory without it is stored
            // (those of a bitmap whose table is unsound stay: a leak).
            if (it->table_known) {
                for (uint64_t x : it->clusters) bitmap_orphans_.emplace_back(x, cluster_size_);
                if (it->e.table_offset) {
                    bitmap_orphans_.emplace_back(it->e.table_offset, static_cast<uint64_t>(it->e.table_size) * 8);
                }
            }
            bitmaps_.erase(it);
        } else if (!it->owned) {
            return make_error(EINVAL, "Bitmap '%s' is inconsistent and cannot be used", c.name.c_str());
        } else if (c.kind == K::kClear) {
            std::fill(it->bits.begin(), it->bits.end(), 0);
        } else if (c.kind == K::kEnable) {
            it->e.flags |= qcow2::kBitmapAuto;
        } else if (c.kind == K::kDisable) {
            it->e.flags &= ~qcow2::kBitmapAuto;
        } else {   // kMerge: every source bit's range, at this bitmap's granularity
            const DirtyBitmapData &s = c.source;
            if (!s.granularity || (s.granularity & (s.granularity - 1))) {
                return make_error(EINVAL, "Merge source has an invalid granularity");
            }
            const uint32_t sg = static_cast<uint32_t>(__builtin_ctz(s.granularity));
            for (uint64_t i = 0; i < s.nb_bits && i / 8 < s.bytes.size(); i++) {
                if (!(s.bytes[i / 8] & (1u << (i & 7)))) continue;
                const uint64_t start = i << sg, end = ((i + 1) << sg) - 1;
                const uint64_t first = start >> it->e.granularity_bits;
                if (first >= it->nb_bits) break;
                const uint64_t last = std::min(it->nb_bits - 1, end >> it->e.granularity_bits);
                bits_set_range(it->bits, first, last);
            }
        }
    }
    bitmaps_changed_ = true;
    bitmaps_track_.store(std::any_of(bitmaps_.begin(), bitmaps_.end(), [](const DirtyBitmap &b) { return b.enabled(); }));
    return {};
}

} // namespace bg

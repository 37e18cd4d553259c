// qcow2 consistency check and repair (QEMU qcow2_co_check_locked /
// qcow2_check_refcounts in block/qcow2-refcount.c), and image information
// (qemu-img info's format-specific data, persistent bitmaps).
//
// The check counts, in memory, every reference the metadata makes (header,
// active and snapshot L1/L2 tables, data and compressed clusters, snapshot
// table, refcount table and blocks, bitmap directory and tables), then
// compares with the on-disk refcounts, cluster by cluster, with qemu-img's
// categories, counts and messages:
//   on-disk < referenced   "ERROR cluster N refcount=a reference=b"  corruption
//   on-disk > referenced   "Leaked cluster N refcount=a reference=b" leak
//   on-disk 0, referenced  the refcount structure must be rebuilt
// then checks the COPIED flags of the active tables. Repairs: kCheckFixLeaks
// decrements leaked refcounts; kCheckFixErrors increments short ones,
// rebuilds the whole refcount structure when needed (co_rebuild_refcounts_
// locked: new table and blocks written, header switched), fixes COPIED
// flags, and finally clears the dirty and corrupt bits.
//
// Everything runs under the metadata lock, after the caches were written
// back; tables are read from the file directly.
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstring>

#include "block/qcow2/qcow2-mgmt.h"

namespace bg {

namespace {

constexpr uint64_t kL1eReservedMask = 0x7f000000000001ffULL;
constexpr uint64_t kL2eStdReservedMask = 0x3f000000000001feULL;
constexpr uint64_t kReftReservedMask = 0x1ffULL;

std::string fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char *f, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
    return buf;
}

} // namespace

// The state of one check: the in-memory refcounts ("references").
struct Qcow2Mgmt {
    struct Check {
        Qcow2Node *s;
        CheckResult *res;
        CheckFix fix;
        std::vector<uint64_t> refs;     // references per host cluster
        bool rebuild = false;
        int64_t highest = -1;

        void msg(std::string m) { res->messages.push_back(std::move(m)); }

        // QEMU qcow2_inc_refcounts_imrt.
        void inc(uint64_t offset, uint64_t size)
        {
            if (!size) return;
            // QEMU: the last cluster may be partly past the end of the file,
            // a reference a whole cluster or more beyond it is an error.
            const int64_t flen = s->file_->getlength();
            if (flen >= 0 && offset + size >= static_cast<uint64_t>(flen) &&
                offset + size - static_cast<uint64_t>(flen) >= s->cluster_size_) {
                msg(fmt("ERROR: counting reference for region exceeding the end of the file by one cluster or more: "
                        "offset 0x%" PRIx64 " size 0x%" PRIx64,
                        offset, size));
                res->corruptions++;
                return;
            }
            const uint32_t cb = s->cluster_bits_;
            const uint64_t max = s->refcount_max();
            for (uint64_t c = offset >> cb; c <= (offset + size - 1) >> cb; c++) {
                if (c >= refs.size()) {
                    if (c > (1ULL << 40)) {   // absurd offset: never allocate for it
                        res->check_errors++;
                        return;
                    }
                    refs.resize(c + 1, 0);
                }
                if (refs[c] == max) {
                    msg(fmt("ERROR: overflow cluster offset=0x%" PRIx64, c << cb));
                    msg("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean "
                        "copy if the image cannot be opened for writing");
                    res->corruptions++;
                    continue;
                }
                refs[c]++;
            }
        }

        int coroutine_fn l2(uint64_t l2_offset, bool frag)
        {
            const uint64_t cs = s->cluster_size_;
            std::vector<uint8_t> t(cs);
            int r = s->file_->co_pread(static_cast<int64_t>(l2_offset), static_cast<int64_t>(cs), t.data());
            if (r < 0) {
                msg("ERROR: I/O error in check_refcounts_l2");
                res->check_errors++;
                return r;
            }
            const bool ext = s->h_.extended_l2();
            const bool df = s->h_.has_data_file();
            uint64_t next_contiguous = 0;
            for (uint64_t i = 0; i < (1ULL << s->l2_bits_); i++) {
                const uint64_t e = qcow2::be64(t.data() + i * s->l2_entry_size_);
                const uint64_t bm = ext ? qcow2::be64(t.data() + i * s->l2_entry_size_ + 8) : 0;
                const uint64_t off = e & qcow2::kL2eOffsetMask;
                if (e & qcow2::kOflagCompressed) {
                    if (e & qcow2::kOflagCopied) {
                        msg(fmt("ERROR: coffset=0x%" PRIx64 ": copied flag must never be set for compressed clusters",
                                e & s->comp_offset_mask_));
                        res->corruptions++;
                    }
                    if (df) {
                        msg(fmt("ERROR compressed cluster %d with data file, entry=0x%" PRIx64, static_cast<int>(i),
                                e & ~qcow2::kOflagCopied));
                        res->corruptions++;
                        continue;
                    }
                    if (bm) {
                        msg(fmt("ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=0x%" PRIx64,
                                static_cast<int>(i), e & ~qcow2::kOflagCopied));
                        res->corruptions++;
                        continue;
                    }
                    const uint64_t coff = e & s->comp_offset_mask_;
                    const uint64_t nsec = ((e >> s->csize_shift_) & s->csize_mask_) + 1;
                    inc(coff, nsec * 512 - (coff & 511));
                    if (frag) {
                        res->allocated_clusters++;
                        res->compressed_clusters++;
                        res->fragmented_clusters++;
                    }
                    continue;
                }
                if (e & kL2eStdReservedMask) {
                    msg(fmt("ERROR found l2 entry with reserved bits set: %" PRIx64, e));
                    res->corruptions++;
                }
                const bool zero_flag = !ext && (e & qcow2::kOflagZero);
                const bool allocated = off || (df && (e & qcow2::kOflagCopied));
                if (zero_flag && !off) continue;   // ZERO_PLAIN
                if (!allocated) {
                    if (bm & qcow2::kL2BitmapAllAlloc) {
                        res->corruptions++;
                        msg("ERROR: Unallocated cluster has non-zero subcluster allocation map");
                    }
                    continue;
                }
                // NORMAL or ZERO_ALLOC.
                if ((bm >> 32) & bm) {
                    res->corruptions++;
                    msg(fmt("ERROR offset=%" PRIx64 ": Allocated cluster has corrupted subcluster allocation bitmap",
                            off));
                }
                if (off & (cs - 1)) {
                    res->corruptions++;
                    const bool data = ext ? (bm & qcow2::kL2BitmapAllAlloc) != 0 : !zero_flag;
                    if (!data) {
                        msg(fmt("ERROR offset=%" PRIx64 ": Preallocated cluster is not properly aligned; L2 entry "
                                "corrupted.",
                                off));
                    } else {
                        msg(fmt("ERROR offset=%" PRIx64 ": Data cluster is not properly aligned; L2 entry corrupted.",
                                off));
                    }
                }
                if (frag) {
                    res->allocated_clusters++;
                    if (next_contiguous && off != next_contiguous) res->fragmented_clusters++;
                    next_contiguous = off + cs;
                }
                if (!df) inc(off, cs);
            }
            return 0;
        }

        int coroutine_fn l1(uint64_t l1_offset, uint64_t l1_size, bool frag)
        {
            if (!l1_size) return 0;
            inc(l1_offset, l1_size * 8);
            std::vector<uint8_t> raw(l1_size * 8);
            int r = s->file_->co_pread(static_cast<int64_t>(l1_offset), static_cast<int64_t>(raw.size()), raw.data());
            if (r < 0) {
                msg("ERROR: I/O error in check_refcounts_l1");
                res->check_errors++;
                return r;
            }
            const int64_t flen = s->file_->getlength();
            for (uint64_t i = 0; i < l1_size; i++) {
                const uint64_t e = qcow2::be64(raw.data() + i * 8);
                if (!e) continue;
                if (e & kL1eReservedMask) {
                    msg(fmt("ERROR found L1 entry with reserved bits set: %" PRIx64, e));
                    res->corruptions++;
                }
                const uint64_t l2_off = e & qcow2::kL1eOffsetMask;
                inc(l2_off, s->cluster_size_);
                if (l2_off & (s->cluster_size_ - 1)) {
                    msg(fmt("ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 entry corrupted", l2_off));
                    res->corruptions++;
                }
                if (flen >= 0 && l2_off >= static_cast<uint64_t>(flen)) {
                    // Reads past the end return zeros: nothing to count.
                    continue;
                }
                r = l2(l2_off & ~(s->cluster_size_ - 1), frag);
                if (r < 0) return r;
            }
            return 0;
        }

        int coroutine_fn refblocks()
        {
            const uint32_t cb = s->cluster_bits_;
            for (size_t i = 0; i < s->refcount_table_.size(); i++) {
                const uint64_t e = s->refcount_table_[i];
                const uint64_t off = e & qcow2::kReftOffsetMask;
                const uint64_t cluster = off >> cb;
                if (e & kReftReservedMask) {
                    msg(fmt("ERROR refcount table entry %zu has reserved bits set", i));
                    res->corruptions++;
                    rebuild = true;
                    continue;
                }
                if (off & (s->cluster_size_ - 1)) {
                    msg(fmt("ERROR refcount block %zu is not cluster aligned; refcount table entry corrupted", i));
                    res->corruptions++;
                    rebuild = true;
                    continue;
                }
                if (off && cluster >= nb_file_clusters()) {
                    res->corruptions++;
                    msg(fmt("%s refcount block %zu is outside image", (fix & kCheckFixErrors) ? "Repairing" : "ERROR", i));
                    if (fix & kCheckFixErrors) {
                        // The block reads as zeros: extend the file over it.
                        int r = s->file_->co_truncate(static_cast<int64_t>(off + s->cluster_size_), false,
                                                      PreallocMode::kOff);
                        if (r < 0) {
                            rebuild = true;
                            msg(fmt("ERROR could not resize image: %s", strerror(-r)));
                            continue;
                        }
                        if (refs.size() < cluster + 1) refs.resize(cluster + 1, 0);
                        res->corruptions--;
                        res->corruptions_fixed++;
                        inc(off, s->cluster_size_);
                    }
                    continue;
                }
                if (off) {
                    inc(off, s->cluster_size_);
                    if (refs[cluster] != 1) {
                        msg(fmt("ERROR refcount block %zu refcount=%" PRIu64, i, refs[cluster]));
                        res->corruptions++;
                        rebuild = true;
                    }
                }
            }
            return 0;
        }

        // The clusters of the refcount table and of the refcount blocks it
        // points at (aligned, inside the file), ascending, without repeats.
        std::vector<uint64_t> refcount_structure_clusters() const
        {
            const uint32_t cb = s->cluster_bits_;
            std::vector<uint64_t> v;
            const uint64_t rt = s->h_.refcount_table_offset >> cb;
            for (uint64_t i = 0; i < s->h_.refcount_table_clusters; i++) v.push_back(rt + i);
            for (uint64_t e : s->refcount_table_) {
                const uint64_t off = e & qcow2::kReftOffsetMask;
                if (off && !(e & kReftReservedMask) && !(off & (s->cluster_size_ - 1)) &&
                    (off >> cb) < nb_file_clusters()) {
                    v.push_back(off >> cb);
                }
            }
            std::sort(v.begin(), v.end());
            v.erase(std::unique(v.begin(), v.end()), v.end());
            return v;
        }

        uint64_t nb_file_clusters() const
        {
            const int64_t flen = s->file_->getlength();
            return flen > 0 ? (static_cast<uint64_t>(flen) + s->cluster_size_ - 1) >> s->cluster_bits_ : 0;
        }

        // QEMU calculate_refcounts.
        int coroutine_fn calculate()
        {
            refs.assign(nb_file_clusters(), 0);
            inc(0, s->cluster_size_);
            int r = l1(s->h_.l1_table_offset, s->h_.l1_size, true);
            if (r < 0) return r;
            if (s->h_.has_data_file() && !s->snapshots_.empty()) {
                msg(fmt("ERROR %zu snapshots in image with data file", s->snapshots_.size()));
                res->corruptions++;
            }
            uint64_t table_end = s->h_.snapshots_offset;
            for (const qcow2::Snapshot &sn : s->snapshots_) {
                table_end = (table_end + 7) & ~7ULL;
                table_end += qcow2::kSnapshotHeaderSize + sn.extra_data.size() + sn.id.size() + sn.name.size();
                r = l1(sn.l1_table_offset, sn.l1_size, false);
                if (r < 0) return r;
            }
            if (!s->snapshots_.empty()) inc(s->h_.snapshots_offset, table_end - s->h_.snapshots_offset);
            inc(s->h_.refcount_table_offset, static_cast<uint64_t>(s->h_.refcount_table_clusters) << s->cluster_bits_);
            r = bitmaps();
            if (r < 0) return r;
            return refblocks();
        }

        // Bitmap directory and tables (qcow2_check_bitmaps_refcounts).
        int coroutine_fn bitmaps()
        {
            if (!s->h_.bitmaps) return 0;
            const qcow2::BitmapsExtension &b = *s->h_.bitmaps;
            inc(b.directory_offset, b.directory_size);
            std::vector<uint8_t> dir(b.directory_size);
            int r = s->file_->co_pread(static_cast<int64_t>(b.directory_offset), static_cast<int64_t>(dir.size()),
                                       dir.data());
            if (r < 0) {
                res->check_errors++;
                return r;
            }
            size_t pos = 0;
            for (uint32_t i = 0; i < b.nb_bitmaps && pos + 24 <= dir.size(); i++) {
                const uint64_t toff = qcow2::be64(dir.data() + pos);
                uint32_t tsize = qcow2::be32(dir.data() + pos + 8);
                const uint16_t name_size = qcow2::be16(dir.data() + pos + 18);
                const uint32_t extra = qcow2::be32(dir.data() + pos + 20);
                inc(toff, static_cast<uint64_t>(tsize) * 8);
                // (inc() counted what lies outside the file; read what is inside.)
                const int64_t flen = s->file_->getlength();
                if (flen < 0 || toff > static_cast<uint64_t>(flen) || tsize > qcow2::kMaxBitmapBytes / 512 ||
                    static_cast<uint64_t>(tsize) * 8 > static_cast<uint64_t>(flen) - toff) {
                    tsize = 0;
                }
                std::vector<uint8_t> t(static_cast<size_t>(tsize) * 8);
                if (tsize && s->file_->co_pread(static_cast<int64_t>(toff), static_cast<int64_t>(t.size()), t.data()) >= 0) {
                    for (uint32_t k = 0; k < tsize; k++) {
                        const uint64_t e = qcow2::be64(t.data() + k * 8) & 0x00fffffffffffe00ULL;
                        if (e) inc(e, s->cluster_size_);
                    }
                }
                pos += (24 + extra + name_size + 7) & ~size_t{7};
            }
            return 0;
        }

        // QEMU compare_refcounts.
        int coroutine_fn compare(CheckFix cfix)
        {
            for (uint64_t i = 0; i < refs.size(); i++) {
                uint64_t on_disk;
                int r = s->co_get_refcount_locked(i, &on_disk);
                if (r < 0) {
                    msg(fmt("Can't get refcount for cluster %" PRIu64 ": %s", i, strerror(-r)));
                    res->check_errors++;
                    continue;
                }
                const uint64_t ref = refs[i];
                if (on_disk > 0 || ref > 0) highest = static_cast<int64_t>(i);
                if (on_disk == ref) continue;
                int64_t *fixed = nullptr;
                if (on_disk == 0) rebuild = true;
                else if (on_disk > ref && (cfix & kCheckFixLeaks)) fixed = &res->leaks_fixed;
                else if (on_disk < ref && (cfix & kCheckFixErrors)) fixed = &res->corruptions_fixed;
                msg(fmt("%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
                        fixed ? "Repairing" : on_disk < ref ? "ERROR" : "Leaked", i, on_disk, ref));
                if (fixed) {
                    const int64_t addend = static_cast<int64_t>(ref) - static_cast<int64_t>(on_disk);
                    r = s->co_update_refcount_locked(i << s->cluster_bits_, 1, addend, qcow2::DiscardType::kOther);
                    if (r >= 0) {
                        (*fixed)++;
                        continue;
                    }
                }
                if (on_disk < ref) res->corruptions++;
                else res->leaks++;
            }
            return 0;
        }

        // QEMU check_oflag_copied.
        int coroutine_fn copied_flags()
        {
            bool repair;
            if (fix & kCheckFixErrors) repair = true;
            else if (fix & kCheckFixLeaks) repair = !res->check_errors && !res->corruptions && !res->leaks;
            else repair = false;
            const uint64_t cs = s->cluster_size_;
            std::vector<uint8_t> t(cs);
            for (size_t i = 0; i < s->l1_.size(); i++) {
                const uint64_t e = s->l1_[i];
                const uint64_t l2_off = e & qcow2::kL1eOffsetMask;
                if (!l2_off) continue;
                uint64_t rc;
                if (s->co_get_refcount_locked(l2_off >> s->cluster_bits_, &rc) < 0) continue;
                if ((rc == 1) != ((e & qcow2::kOflagCopied) != 0)) {
                    res->corruptions++;
                    msg(fmt("%s OFLAG_COPIED L2 cluster: l1_index=%zu l1_entry=%" PRIx64 " refcount=%" PRIu64,
                            repair ? "Repairing" : "ERROR", i, e, rc));
                    if (repair) {
                        s->l1_[i] = rc == 1 ? e | qcow2::kOflagCopied : e & ~qcow2::kOflagCopied;
                        int r = s->co_write_l1_entry_locked(i);
                        if (r < 0) {
                            res->check_errors++;
                            return r;
                        }
                        res->corruptions--;
                        res->corruptions_fixed++;
                    }
                }
                if (l2_off & (cs - 1)) continue;
                int r = s->file_->co_pread(static_cast<int64_t>(l2_off), static_cast<int64_t>(cs), t.data());
                if (r < 0) {
                    msg(fmt("ERROR: Could not read L2 table: %s", strerror(-r)));
                    res->check_errors++;
                    return r;
                }
                int dirty = 0;
                const bool ext = s->h_.extended_l2();
                const bool df = s->h_.has_data_file();
                for (uint64_t j = 0; j < (1ULL << s->l2_bits_); j++) {
                    uint8_t *p = t.data() + j * s->l2_entry_size_;
                    const uint64_t le = qcow2::be64(p);
                    if (le & qcow2::kOflagCompressed) continue;
                    const uint64_t off = le & qcow2::kL2eOffsetMask;
                    const bool normal_or_zero_alloc = off || (df && (le & qcow2::kOflagCopied));
                    if (!normal_or_zero_alloc) continue;
                    (void)ext;
                    uint64_t drc = 1;
                    if (!df && s->co_get_refcount_locked(off >> s->cluster_bits_, &drc) < 0) continue;
                    if ((drc == 1) != ((le & qcow2::kOflagCopied) != 0)) {
                        res->corruptions++;
                        msg(fmt("%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%" PRIu64,
                                repair ? "Repairing" : "ERROR", le, drc));
                        if (repair) {
                            const uint64_t ne = drc == 1 ? le | qcow2::kOflagCopied : le & ~qcow2::kOflagCopied;
                            for (int b = 0; b < 8; b++) p[b] = static_cast<uint8_t>(ne >> (56 - 8 * b));
                            dirty++;
                        }
                    }
                }
                if (dirty) {
                    // The L2 cache may hold this table: write through the
                    // file and drop the cached copy.
                    r = s->co_overlap_check_locked(qcow2::kOlActiveL2, l2_off, cs);
                    if (r != 0) {
                        msg("ERROR: Could not write L2 table; metadata overlap check failed: Input/output error");
                        res->check_errors++;
                        return -EIO;
                    }
                    r = s->file_->co_pwrite(static_cast<int64_t>(l2_off), static_cast<int64_t>(cs), t.data());
                    if (r < 0) {
                        msg(fmt("ERROR: Could not write L2 table: %s", strerror(-r)));
                        res->check_errors++;
                        return r;
                    }
                    s->l2_cache_->invalidate();
                    res->corruptions -= dirty;
                    res->corruptions_fixed += dirty;
                }
            }
            return 0;
        }

        // QEMU qcow2_check_refcounts.
        int coroutine_fn run()
        {
            int r = calculate();
            if (r < 0) return r;
            res->total_clusters = (s->h_.size + s->cluster_size_ - 1) >> s->cluster_bits_;
            const CheckResult pre = *res;
            r = compare(0);
            if (r < 0) return r;
            if (rebuild && (fix & kCheckFixErrors)) {
                const CheckResult old = *res;
                msg("Rebuilding refcount structure");
                const std::vector<uint64_t> old_structure = refcount_structure_clusters();
                r = s->co_rebuild_refcounts_locked();
                if (r < 0) {
                    msg(fmt("ERROR rebuilding the refcount structure: %s", strerror(-r)));
                    res->check_errors++;
                    return r;
                }
                res->corruptions = 0;
                res->leaks = 0;
                rebuild = false;
                const int64_t saved_errors = res->check_errors;
                r = calculate();
                if (r < 0) return r;
                // The rebuild freed the old table and blocks; qemu-img
                // reports each as a leak it repairs.
                if (fix & kCheckFixLeaks) {
                    for (uint64_t c : old_structure) {
                        uint64_t rc = 0;
                        if (c < refs.size() && refs[c] == 0 && s->co_get_refcount_locked(c, &rc) == 0 && rc == 0) {
                            msg(fmt("Repairing cluster %d refcount=1 reference=0", static_cast<int>(c)));
                        }
                    }
                }
                int64_t fresh_leaks = 0;
                if (fix & kCheckFixLeaks) {
                    CheckResult saved = *res;
                    CheckResult tmp;
                    CheckResult *real = res;
                    res = &tmp;
                    r = compare(kCheckFixLeaks);
                    res = real;
                    if (rebuild) msg("ERROR rebuilt refcount structure is still broken");
                    for (std::string &m : tmp.messages) res->messages.push_back(std::move(m));
                    fresh_leaks = tmp.leaks;
                    saved.messages = std::move(res->messages);
                    *res = saved;
                }
                (void)saved_errors;
                if (res->corruptions < old.corruptions) res->corruptions_fixed += old.corruptions - res->corruptions;
                if (res->leaks < old.leaks) res->leaks_fixed += old.leaks - res->leaks;
                res->leaks += fresh_leaks;
            } else if (fix) {
                if (rebuild) {
                    msg("ERROR need to rebuild refcount structures");
                    res->check_errors++;
                    return -EIO;
                }
                if (res->leaks || res->corruptions) {
                    std::vector<std::string> msgs = std::move(res->messages);
                    *res = pre;
                    res->messages = std::move(msgs);
                    r = compare(fix);
                    if (r < 0) return r;
                }
            }
            r = copied_flags();
            if (r < 0) return r;
            res->image_end_offset = (highest + 1) * static_cast<int64_t>(s->cluster_size_);
            return 0;
        }
    };
};

Status coroutine_fn Qcow2Node::co_check(CheckResult *res, CheckFix fix)
{
    CoMutexGuard g(lock_);
    if (fix) {
        int r = co_flush_caches_locked();
        if (r < 0) return errno_error(-r, name_ + ": cannot write back the metadata caches");
    }
    Qcow2Mgmt::Check c{this, res, fix};
    int r = c.run();
    if (r >= 0 && fix) {
        r = co_flush_caches_locked();
        if (r < 0) res->check_errors++;
    }
    if (r >= 0 && fix && res->check_errors == 0 && res->corruptions == 0 &&
        (h_.incompatible_features & (qcow2::kIncompatDirty | qcow2::kIncompatCorrupt))) {
        // qcow2_mark_clean + qcow2_mark_consistent.
        r = co_update_incompat_locked(0, qcow2::kIncompatDirty | qcow2::kIncompatCorrupt);
        if (r < 0) res->check_errors++;
    }
    // Problems found are in *res; the check itself ran.
    return {};
}

// ---------------------------------------------------------------- info

Status coroutine_fn Qcow2Node::co_get_info(ImageInfo *info)
{
    info->cluster_size = cluster_size_;
    info->dirty_flag = (h_.incompatible_features & qcow2::kIncompatDirty) != 0;
    if (!h_.backing_file.empty()) {
        info->backing_filename = h_.backing_file;
        if (backing()) info->full_backing_filename = backing()->node()->filename();
        // A protocol-prefixed name ("file:b.qcow2") is absolute to QEMU: its
        // full name is the name itself.
        if (filename_has_protocol(h_.backing_file)) info->full_backing_filename = h_.backing_file;
        if (h_.backing_format) info->backing_format = *h_.backing_format;
    }
    for (const qcow2::Snapshot &sn : snapshots_) info->snapshots.push_back(qcow2::snapshot_info(sn));
    // qemu-img 7.2's order of ImageInfoSpecificQCow2 members.
    InfoValue data = InfoValue::new_dict();
    data.add("compat", InfoValue::of_string(h_.version >= 3 ? "1.1" : "0.10"));
    if (h_.data_file) data.add("data-file", InfoValue::of_string(*h_.data_file));
    if (h_.has_data_file()) data.add("data-file-raw", InfoValue::of_bool(h_.data_file_raw()));
    if (h_.version >= 3) data.add("extended-l2", InfoValue::of_bool(h_.extended_l2()));
    if (h_.version >= 3) {
        data.add("lazy-refcounts", InfoValue::of_bool((h_.compatible_features & qcow2::kCompatLazyRefcounts) != 0));
    }
    if (h_.version >= 3) {
        // What the image holds now, as QEMU reports it: on a writable node
        // the bitmaps taken over at open show "in-use", and bitmaps added
        // since are not in the image yet.
        // (Read here, not with co_read_bitmap_directory(), which keeps the
        // bytes it read as the directory to restore at close.)
        std::vector<qcow2::BitmapEntry> stored;
        if (h_.bitmaps) {
            std::vector<uint8_t> dir(h_.bitmaps->directory_size);
            if (file_->co_pread(static_cast<int64_t>(h_.bitmaps->directory_offset), static_cast<int64_t>(dir.size()),
                                dir.data()) >= 0) {
                auto d = qcow2::parse_bitmap_directory(dir.data(), dir.size(), h_.bitmaps->nb_bitmaps, name_);
                if (d) stored = std::move(d.value());
            }
        }
        if (!stored.empty()) {
            InfoValue list = InfoValue::new_list();
            for (const qcow2::BitmapEntry &e : stored) {
                InfoValue flags = InfoValue::new_list();
                if (e.flags & qcow2::kBitmapInUse) flags.list.push_back(InfoValue::of_string("in-use"));
                if (e.flags & qcow2::kBitmapAuto) flags.list.push_back(InfoValue::of_string("auto"));
                InfoValue d = InfoValue::new_dict();
                d.add("flags", flags);
                d.add("name", InfoValue::of_string(e.name));
                d.add("granularity", InfoValue::of_int(e.granularity_bits < 32 ? 1LL << e.granularity_bits : 0));
                list.list.push_back(d);
            }
            data.add("bitmaps", list);
        }
    }
    data.add("refcount-bits", InfoValue::of_int(1LL << h_.refcount_order));
    if (h_.version >= 3) data.add("corrupt", InfoValue::of_bool((h_.incompatible_features & qcow2::kIncompatCorrupt) != 0));
    data.add("compression-type", InfoValue::of_string(h_.compression_type == qcow2::kCompressionZstd ? "zstd" : "zlib"));
    InfoValue fs = InfoValue::new_dict();
    fs.add("type", InfoValue::of_string("qcow2"));
    fs.add("data", data);
    info->format_specific = fs;
    return {};
}

// Persistent bitmaps: the bitmap directory (v3 only; qcow2.md 1.4).
Result<std::vector<PersistentBitmapInfo>> coroutine_fn Qcow2Node::co_persistent_bitmaps()
{
    if (h_.version < 3) {
        return make_error(ENOTSUP, "%s: persistent dirty bitmaps need compat=1.1", name_.c_str());
    }
    std::vector<qcow2::BitmapEntry> entries;
    if (bitmaps_loaded_) {
        // A writable open: what close will store (in use only where it was
        // before the open).
        std::lock_guard<std::mutex> g(bitmap_lock_);
        for (const DirtyBitmap &b : bitmaps_) entries.push_back(b.e);
    } else {
        auto d = co_read_bitmap_directory();
        if (!d) return d.error();
        entries = std::move(d.value());
    }
    std::vector<PersistentBitmapInfo> out;
    for (const qcow2::BitmapEntry &e : entries) {
        PersistentBitmapInfo b;
        b.name = e.name;
        b.granularity = e.granularity_bits < 32 ? 1u << e.granularity_bits : 0;
        if (e.flags & qcow2::kBitmapInUse) b.flags.push_back("in-use");
        if (e.flags & qcow2::kBitmapAuto) b.flags.push_back("auto");
        out.push_back(std::move(b));
    }
    return out;
}

} // namespace bg

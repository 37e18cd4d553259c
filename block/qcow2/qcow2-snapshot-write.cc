// qcow2 internal snapshots, write side (QEMU block/qcow2-snapshot.c):
// list, create, apply (goto) and delete, keeping refcounts and COPIED flags
// exact (qcow2.md 1.9, docs/qcow2.md "Internal snapshots").
//
// Crash safety: every operation writes new structures to newly allocated
// clusters and switches the header pointer to them in one sector write;
// what was replaced is freed afterwards. A crash at any point leaves an
// image qemu-img check calls consistent apart from leaked clusters (and,
// while refcounts and COPIED flags of one L2 table are being updated, the
// OFLAG_COPIED mismatches QEMU's own ordering leaves; `check -r all`).
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cstring>
#include <ctime>

#include "block/qcow2/qcow2-mgmt.h"
#include "block/qcow2/qcow2.h"
#include "util/coroutine-lock.h"

namespace bg {

namespace {

using qcow2::put_be;

constexpr size_t kExtraKnown = 24;   // vm_state_size_large, disk_size, icount (QCowSnapshotExtraData)

// The table as QEMU writes it (qcow2_write_snapshots): each entry 8-aligned,
// extra data of at least 24 bytes (unknown trailing extra data kept).
std::vector<uint8_t> serialize_table(const std::vector<qcow2::Snapshot> &snaps)
{
    std::vector<uint8_t> out;
    for (const qcow2::Snapshot &sn : snaps) {
        out.resize((out.size() + 7) & ~size_t{7}, 0);
        const size_t extra = std::max(kExtraKnown, sn.extra_data.size());
        const size_t at = out.size();
        out.resize(at + qcow2::kSnapshotHeaderSize + extra + sn.id.size() + sn.name.size(), 0);
        uint8_t *p = out.data() + at;
        put_be(p, sn.l1_table_offset, 8);
        put_be(p + 8, sn.l1_size, 4);
        put_be(p + 12, sn.id.size(), 2);
        put_be(p + 14, sn.name.size(), 2);
        put_be(p + 16, sn.date_sec, 4);
        put_be(p + 20, sn.date_nsec, 4);
        put_be(p + 24, sn.vm_clock_nsec, 8);
        put_be(p + 32, static_cast<uint32_t>(sn.vm_state_size), 4);
        put_be(p + 36, extra, 4);
        uint8_t *x = p + qcow2::kSnapshotHeaderSize;
        if (sn.extra_data.size() > kExtraKnown) {
            std::memcpy(x + kExtraKnown, sn.extra_data.data() + kExtraKnown, sn.extra_data.size() - kExtraKnown);
        }
        put_be(x, sn.vm_state_size, 8);
        put_be(x + 8, sn.disk_size, 8);
        put_be(x + 16, sn.icount ? *sn.icount : UINT64_MAX, 8);
        std::memcpy(x + extra, sn.id.data(), sn.id.size());
        std::memcpy(x + extra + sn.id.size(), sn.name.data(), sn.name.size());
    }
    return out;
}

Error from_errno(int r, const std::string &image, const char *what)
{
    return qcow2::herr(-r, image, "%s: %s", what, strerror(-r));
}

} // namespace

SnapshotInfo qcow2::snapshot_info(const qcow2::Snapshot &sn)
{
    SnapshotInfo si;
    si.id = sn.id;
    si.name = sn.name;
    si.vm_state_size = sn.vm_state_size;
    si.date_sec = sn.date_sec;
    si.date_nsec = sn.date_nsec;
    si.vm_clock_nsec = sn.vm_clock_nsec;
    si.icount = sn.icount;
    si.disk_size = sn.disk_size;
    return si;
}

// ---------------------------------------------------------------- helpers

int coroutine_fn Qcow2Node::co_update_snapshot_refs_locked(std::vector<uint64_t> &l1, int addend, bool active)
{
    const uint64_t cs = cluster_size_;
    const size_t ss = l2_cache_->slice_size();
    const uint32_t per_slice = static_cast<uint32_t>(ss / l2_entry_size_);
    const int64_t flen = file_->getlength();
    if (flen < 0) return static_cast<int>(flen);
    int r = 0;
    if (addend > 0) {
        // COPIED flags go away on disk before the refcounts rise (QEMU's order).
        r = refcount_cache_->co_set_dependency(l2_cache_.get());
        if (r < 0) return r;
    }
    for (size_t i = 0; i < l1.size(); i++) {
        const uint64_t l2_off = l1[i] & qcow2::kL1eOffsetMask;
        if (!l2_off) continue;
        if ((l2_off & (cs - 1)) || l2_off + cs > static_cast<uint64_t>(flen)) {
            return co_signal_corruption_locked("L2 table offset 0x%" PRIx64 " (L1 index 0x%zx) is unaligned or "
                                               "beyond the end of the file",
                                               l2_off, i);
        }
        for (uint64_t s = 0; s < cs; s += ss) {
            const uint8_t *data;
            r = l2_cache_->co_get(file_, l2_off + s, &data);
            if (r < 0) return r;
            for (uint32_t j = 0; j < per_slice && r >= 0; j++) {
                const uint64_t e = qcow2::be64(data + static_cast<size_t>(j) * l2_entry_size_);
                uint64_t ne = e;
                if (e & qcow2::kOflagCompressed) {
                    if (addend) {
                        const uint64_t coff = e & comp_offset_mask_;
                        const uint64_t nsec = ((e >> csize_shift_) & csize_mask_) + 1;
                        const uint64_t cbytes = nsec * 512 - (coff & 511);
                        r = co_update_refcount_locked(coff, cbytes, addend, qcow2::DiscardType::kSnapshot);
                    }
                } else {
                    const uint64_t host = e & qcow2::kL2eOffsetMask;
                    if (!host) continue;   // unallocated or plain zero
                    if (addend) r = co_update_refcount_locked(host, 1, addend, qcow2::DiscardType::kSnapshot);
                    uint64_t rc = 0;
                    if (r >= 0) r = co_get_refcount_locked(host >> cluster_bits_, &rc);
                    if (r >= 0) ne = rc == 1 ? (e | qcow2::kOflagCopied) : (e & ~qcow2::kOflagCopied);
                }
                if (r >= 0 && ne != e) {
                    uint8_t *w = l2_cache_->mutable_data(l2_off + s);
                    put_be(w + static_cast<size_t>(j) * l2_entry_size_, ne, 8);
                    data = w;
                }
            }
            l2_cache_->release(l2_off + s);
            if (r < 0) return r;
        }
        if (addend) {
            r = co_update_refcount_locked(l2_off, cs, addend, qcow2::DiscardType::kSnapshot);
            if (r < 0) return r;
        }
        uint64_t rc = 0;
        r = co_get_refcount_locked(l2_off >> cluster_bits_, &rc);
        if (r < 0) return r;
        const uint64_t ne = rc == 1 ? (l1[i] | qcow2::kOflagCopied) : (l1[i] & ~qcow2::kOflagCopied);
        if (ne != l1[i]) {
            l1[i] = ne;
            if (active) {
                r = co_write_l1_entry_locked(i);
                if (r < 0) return r;
            }
        }
    }
    return 0;
}

int coroutine_fn Qcow2Node::co_write_snapshot_table_locked(const std::vector<qcow2::Snapshot> &snaps)
{
    const std::vector<uint8_t> table = serialize_table(snaps);
    if (table.size() > qcow2::kMaxSnapshotTableBytes) return -EFBIG;
    // Everything the new table refers to (L1 copies, refcounts) first.
    int r = co_flush_caches_locked();
    if (r < 0) return r;
    int64_t off = 0;
    if (!table.empty()) {
        off = co_alloc_clusters_locked(table.size());
        if (off < 0) return static_cast<int>(off);
        r = co_flush_caches_locked();
        if (r >= 0) {
            int ol = co_overlap_check_locked(0, static_cast<uint64_t>(off), table.size());
            if (ol) {
                r = ol < 0 ? ol
                           : co_signal_corruption_locked("new snapshot table at 0x%" PRIx64 " overlaps metadata", off);
            }
        }
        // No event here: QEMU has none for this write, and blkdebug refuses
        // names outside QEMU's list (a rule with "sector" reaches it).
        if (r >= 0) r = file_->co_pwrite(off, static_cast<int64_t>(table.size()), table.data());
        if (r >= 0) r = file_->co_flush();
        if (r < 0) {
            co_free_clusters_locked(static_cast<uint64_t>(off), table.size(), qcow2::DiscardType::kOther);
            return r;
        }
    }
    // nb_snapshots and snapshots_offset: bytes 60..71, one write.
    uint8_t hdr[12];
    put_be(hdr, snaps.size(), 4);
    put_be(hdr + 4, static_cast<uint64_t>(off), 8);
    r = file_->co_pwrite(60, 12, hdr);
    if (r >= 0) r = file_->co_flush();
    if (r < 0) {
        if (off) co_free_clusters_locked(static_cast<uint64_t>(off), table.size(), qcow2::DiscardType::kOther);
        return r;
    }
    const uint64_t old_off = h_.snapshots_offset;
    const size_t old_size = serialize_table(snapshots_).size();
    h_.nb_snapshots = static_cast<uint32_t>(snaps.size());
    h_.snapshots_offset = static_cast<uint64_t>(off);
    if (old_off && old_size) co_free_clusters_locked(old_off, old_size, qcow2::DiscardType::kSnapshot);
    return 0;
}

// ---------------------------------------------------------------- hooks

Result<std::vector<SnapshotInfo>> coroutine_fn Qcow2Node::co_snapshot_list()
{
    std::vector<SnapshotInfo> out;
    for (const qcow2::Snapshot &sn : snapshots_) out.push_back(qcow2::snapshot_info(sn));
    return out;
}

Status coroutine_fn Qcow2Node::co_snapshot_create(SnapshotInfo *sn)
{
    if (view_snapshot_ || read_only_) return qcow2::herr(EACCES, name_, "Image is read-only");
    if (h_.has_data_file()) {
        return qcow2::herr(ENOTSUP, name_, "internal snapshots are not supported with an external data file");
    }
    CoMutexGuard g(lock_);
    if (write_stopped_.load()) return qcow2::herr(EIO, name_, "image is corrupt; writes are refused");
    if (snapshots_.size() >= qcow2::kMaxSnapshots) {
        return qcow2::herr(EFBIG, name_, "too many snapshots (at most %" PRIu32 ")", qcow2::kMaxSnapshots);
    }
    if (sn->id.empty()) {
        // QEMU find_new_snapshot_id: one past the largest numeric id.
        unsigned long max = 0;
        for (const qcow2::Snapshot &s : snapshots_) max = std::max(max, std::strtoul(s.id.c_str(), nullptr, 10));
        sn->id = std::to_string(max + 1);
    }
    for (const qcow2::Snapshot &s : snapshots_) {
        if (s.id == sn->id) return qcow2::herr(EEXIST, name_, "snapshot id '%s' already exists", sn->id.c_str());
    }
    if (sn->id.size() > UINT16_MAX || sn->name.size() > UINT16_MAX) {
        return qcow2::herr(EINVAL, name_, "snapshot id or name is too long");
    }
    int r = co_mark_dirty_locked();
    if (r >= 0) r = co_flush_caches_locked();
    if (r < 0) return from_errno(r, name_, "cannot flush the image");

    qcow2::Snapshot ns;
    ns.id = sn->id;
    ns.name = sn->name;
    ns.date_sec = sn->date_sec;
    ns.date_nsec = sn->date_nsec;
    ns.vm_clock_nsec = sn->vm_clock_nsec;
    ns.vm_state_size = sn->vm_state_size;
    ns.icount = sn->icount;
    ns.disk_size = size_;
    ns.l1_size = static_cast<uint32_t>(l1_.size());
    ns.extra_data.assign(kExtraKnown, 0);   // filled by serialize_table

    // 1. A copy of the active L1 table in new clusters (COPIED cleared: the
    //    clusters are shared from now on).
    const uint64_t l1_bytes = l1_.size() * 8;
    if (l1_bytes) {
        int64_t off = co_alloc_clusters_locked(l1_bytes);
        if (off < 0) return from_errno(static_cast<int>(off), name_, "cannot allocate the snapshot L1 table");
        std::vector<uint8_t> raw(l1_bytes);
        for (size_t i = 0; i < l1_.size(); i++) put_be(raw.data() + i * 8, l1_[i] & ~qcow2::kOflagCopied, 8);
        r = co_flush_caches_locked();
        if (r >= 0) {
            int ol = co_overlap_check_locked(0, static_cast<uint64_t>(off), l1_bytes);
            if (ol) {
                r = ol < 0 ? ol
                           : co_signal_corruption_locked("new snapshot L1 table at 0x%" PRIx64 " overlaps metadata",
                                                         off);
            }
        }
        if (r >= 0) r = file_->co_pwrite(off, static_cast<int64_t>(l1_bytes), raw.data());
        if (r >= 0) r = file_->co_flush();
        if (r < 0) {
            co_free_clusters_locked(static_cast<uint64_t>(off), l1_bytes, qcow2::DiscardType::kOther);
            return from_errno(r, name_, "cannot write the snapshot L1 table");
        }
        ns.l1_table_offset = static_cast<uint64_t>(off);
    }
    // 2. One more reference to everything reachable from the active L1;
    //    COPIED flags of the active tables cleared.
    r = co_update_snapshot_refs_locked(l1_, 1, true);
    if (r < 0) {
        // The snapshot does not exist: what was counted leaks at worst.
        return from_errno(r, name_, "cannot update the refcounts");
    }
    // 3. The new table, then the header, then the old table freed.
    std::vector<qcow2::Snapshot> snaps = snapshots_;
    snaps.push_back(ns);
    r = co_write_snapshot_table_locked(snaps);
    if (r < 0) return from_errno(r, name_, "cannot write the snapshot table");
    snapshots_ = std::move(snaps);
    r = co_flush_caches_locked();
    if (r < 0) return from_errno(r, name_, "cannot flush the image");
    return {};
}

Status coroutine_fn Qcow2Node::co_snapshot_goto(const std::string &id_or_name)
{
    if (view_snapshot_ || read_only_) return qcow2::herr(EACCES, name_, "Image is read-only");
    if (h_.has_data_file()) {
        return qcow2::herr(ENOTSUP, name_, "internal snapshots are not supported with an external data file");
    }
    CoMutexGuard g(lock_);
    if (write_stopped_.load()) return qcow2::herr(EIO, name_, "image is corrupt; writes are refused");
    // By id, else by name (QEMU find_snapshot_by_id_or_name).
    const qcow2::Snapshot *found = nullptr;
    for (const qcow2::Snapshot &s : snapshots_) {
        if (s.id == id_or_name) {
            found = &s;
            break;
        }
    }
    if (!found) {
        for (const qcow2::Snapshot &s : snapshots_) {
            if (s.name == id_or_name) {
                found = &s;
                break;
            }
        }
    }
    if (!found) return qcow2::herr(ENOENT, name_, "Can't find snapshot '%s'", id_or_name.c_str());
    const qcow2::Snapshot sn = *found;
    if (sn.disk_size & 511) {
        return qcow2::herr(ENOTSUP, name_, "snapshot '%s': disk size %" PRIu64 " is not a multiple of 512",
                           sn.id.c_str(), sn.disk_size);
    }
    if (sn.disk_size != size_ && bitmaps_resize_check(sn.disk_size) < 0) {
        return qcow2::herr(ENOTSUP, name_, "cannot apply snapshot '%s': its size does not suit the bitmaps",
                           sn.id.c_str());
    }
    int r = co_mark_dirty_locked();
    if (r >= 0) r = co_flush_caches_locked();
    if (r < 0) return from_errno(r, name_, "cannot flush the image");

    // The snapshot's L1, at least as large as its disk size needs.
    const uint64_t need = qcow2::size_to_l1(sn.disk_size, cluster_bits_, l2_bits_);
    uint64_t new_size = std::max<uint64_t>(sn.l1_size, need);
    if (new_size * 8 > qcow2::kMaxL1Bytes) return qcow2::herr(EFBIG, name_, "snapshot L1 table is too large");
    std::vector<uint64_t> nl1(new_size, 0);
    if (sn.l1_size) {
        std::vector<uint8_t> raw(static_cast<size_t>(sn.l1_size) * 8);
        r = file_->co_pread(static_cast<int64_t>(sn.l1_table_offset), static_cast<int64_t>(raw.size()), raw.data());
        if (r < 0) return from_errno(r, name_, "cannot read the snapshot L1 table");
        for (uint32_t i = 0; i < sn.l1_size; i++) nl1[i] = qcow2::be64(raw.data() + static_cast<size_t>(i) * 8);
    }
    // 1. One more reference to everything the snapshot reaches (it will be
    //    reachable from both the snapshot and the active L1).
    r = co_update_snapshot_refs_locked(nl1, 1, false);
    if (r < 0) return from_errno(r, name_, "cannot update the refcounts");
    r = co_flush_caches_locked();
    if (r < 0) return from_errno(r, name_, "cannot flush the image");
    // 2. The new active L1 in new clusters.
    const uint64_t bytes = (new_size * 8 + cluster_size_ - 1) & ~(cluster_size_ - 1);
    int64_t off = co_alloc_clusters_locked(bytes);
    if (off < 0) return from_errno(static_cast<int>(off), name_, "cannot allocate the L1 table");
    std::vector<uint8_t> raw(bytes, 0);
    for (size_t i = 0; i < nl1.size(); i++) put_be(raw.data() + i * 8, nl1[i], 8);
    r = co_flush_caches_locked();
    if (r >= 0) {
        int ol = co_overlap_check_locked(0, static_cast<uint64_t>(off), bytes);
        if (ol) r = ol < 0 ? ol : co_signal_corruption_locked("new L1 table at 0x%" PRIx64 " overlaps metadata", off);
    }
    if (r >= 0) r = file_->co_pwrite(off, static_cast<int64_t>(bytes), raw.data());
    if (r >= 0) r = file_->co_flush();
    if (r < 0) {
        co_free_clusters_locked(static_cast<uint64_t>(off), bytes, qcow2::DiscardType::kOther);
        return from_errno(r, name_, "cannot write the L1 table");
    }
    // 3. Header: size, crypt_method, l1_size, l1_table_offset (bytes
    //    24..47) in one write.
    uint8_t hdr[24];
    put_be(hdr, sn.disk_size, 8);
    put_be(hdr + 8, h_.crypt_method, 4);
    put_be(hdr + 12, new_size, 4);
    put_be(hdr + 16, static_cast<uint64_t>(off), 8);
    r = file_->co_pwrite(24, 24, hdr);
    if (r >= 0) r = file_->co_flush();
    if (r < 0) {
        co_free_clusters_locked(static_cast<uint64_t>(off), bytes, qcow2::DiscardType::kOther);
        return from_errno(r, name_, "cannot update the header");
    }
    std::vector<uint64_t> old_l1 = std::move(l1_);
    const uint64_t old_l1_off = h_.l1_table_offset;
    const uint64_t old_l1_bytes = static_cast<uint64_t>(h_.l1_size) * 8;
    l1_ = std::move(nl1);
    h_.l1_table_offset = static_cast<uint64_t>(off);
    h_.l1_size = static_cast<uint32_t>(new_size);
    h_.size = sn.disk_size;
    size_ = sn.disk_size;
    refresh_length();
    // The whole disk may read differently now: every enabled bitmap marks
    // all of it (the spec: auto bitmaps reflect snapshot switching).
    bitmaps_resize(size_);
    bitmaps_mark(0, size_);
    // 4. The old active state loses its reference, its L1 is freed.
    r = co_update_snapshot_refs_locked(old_l1, -1, false);
    if (r >= 0 && old_l1_bytes) co_free_clusters_locked(old_l1_off, old_l1_bytes, qcow2::DiscardType::kOther);
    // 5. COPIED flags of the new active tables from the refcounts.
    if (r >= 0) r = co_update_snapshot_refs_locked(l1_, 0, true);
    if (r >= 0) r = co_flush_caches_locked();
    if (r < 0) return from_errno(r, name_, "cannot update the refcounts (clusters may leak)");
    return {};
}

Status coroutine_fn Qcow2Node::co_snapshot_delete(const std::optional<std::string> &id,
                                                  const std::optional<std::string> &name)
{
    if (view_snapshot_ || read_only_) return qcow2::herr(EACCES, name_, "Image is read-only");
    CoMutexGuard g(lock_);
    if (write_stopped_.load()) return qcow2::herr(EIO, name_, "image is corrupt; writes are refused");
    size_t idx = snapshots_.size();
    for (size_t i = 0; i < snapshots_.size(); i++) {
        if (id && snapshots_[i].id != *id) continue;
        if (name && snapshots_[i].name != *name) continue;
        idx = i;
        break;
    }
    if (idx == snapshots_.size()) {
        auto f = qcow2::find_snapshot(snapshots_, id, name, name_);
        return f.error();
    }
    const qcow2::Snapshot sn = snapshots_[idx];
    int r = co_mark_dirty_locked();
    if (r >= 0) r = co_flush_caches_locked();
    if (r < 0) return from_errno(r, name_, "cannot flush the image");
    // 1. The table without the snapshot (from now on its clusters leak at worst).
    std::vector<qcow2::Snapshot> snaps = snapshots_;
    snaps.erase(snaps.begin() + static_cast<ptrdiff_t>(idx));
    r = co_write_snapshot_table_locked(snaps);
    if (r < 0) return from_errno(r, name_, "cannot write the snapshot table");
    snapshots_ = std::move(snaps);
    // 2. Its references dropped, its L1 freed.
    std::vector<uint64_t> l1(sn.l1_size, 0);
    if (sn.l1_size) {
        std::vector<uint8_t> raw(static_cast<size_t>(sn.l1_size) * 8);
        r = file_->co_pread(static_cast<int64_t>(sn.l1_table_offset), static_cast<int64_t>(raw.size()), raw.data());
        if (r < 0) return from_errno(r, name_, "cannot read the snapshot L1 table (its clusters leak)");
        for (uint32_t i = 0; i < sn.l1_size; i++) l1[i] = qcow2::be64(raw.data() + static_cast<size_t>(i) * 8);
    }
    r = co_update_snapshot_refs_locked(l1, -1, false);
    if (r >= 0 && sn.l1_size) {
        co_free_clusters_locked(sn.l1_table_offset, static_cast<uint64_t>(sn.l1_size) * 8,
                                qcow2::DiscardType::kSnapshot);
    }
    // 3. COPIED flags of the active tables where the refcount is 1 again.
    if (r >= 0) r = co_update_snapshot_refs_locked(l1_, 0, true);
    if (r >= 0) r = co_flush_caches_locked();
    if (r < 0) return from_errno(r, name_, "cannot update the refcounts (clusters may leak)");
    return {};
}

} // namespace bg

// qcow2 option amendment (qemu-img amend; QEMU qcow2_amend_options,
// qcow2_downgrade, qcow2_change_refcount_order, qcow2_expand_zero_clusters):
// compat up/down, lazy_refcounts, refcount_bits, backing_file/backing_fmt,
// data_file/data_file_raw, size. Messages are qemu-img 7.2's.
//
// Crash safety: new structures (refcount table and blocks, allocated zero
// clusters) are written and flushed before the header (one sector write of
// cluster 0's first bytes) switches to them; replaced structures are freed
// afterwards, so a crash leaks clusters at worst.
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "block/qcow2/qcow2-mgmt.h"
#include "block/qcow2/qcow2.h"
#include "util/coroutine-lock.h"

namespace bg {

namespace {

using qcow2::put_be;

Error io_err(int r, const std::string &image, const char *what)
{
    return qcow2::herr(-r, image, "%s: %s", what, strerror(-r));
}

// Options qemu-img amend accepts for qcow2 (the rest of the create options
// are creation-only).
bool amendable(const std::string &k)
{
    static const char *const kAmend[] = {"size", "compat", "backing_file", "backing_fmt", "data_file",
                                         "data_file_raw", "lazy_refcounts", "refcount_bits"};
    for (const char *a : kAmend) {
        if (k == a) return true;
    }
    return false;
}

} // namespace

// ---------------------------------------------------------------- helpers

int coroutine_fn Qcow2Node::co_write_header_locked(const qcow2::Header &nh)
{
    auto hb = qcow2::build_header_cluster(nh, name_);
    if (!hb) return -hb.error().err;
    const int64_t flen = file_->getlength();
    if (flen < 0) return static_cast<int>(flen);
    // Everything the new header points at is on disk first.
    int r = co_flush_caches_locked();
    if (r < 0) return r;
    r = file_->co_pwrite(0, static_cast<int64_t>(hb.value().size()), hb.value().data());
    if (r >= 0) r = file_->co_flush();
    if (r < 0) return r;
    auto ph = qcow2::parse_header(hb.value().data(), hb.value().size(), static_cast<uint64_t>(flen), name_, false);
    if (!ph) return -EIO;
    h_ = ph.value();
    return 0;
}

// QEMU qcow2_expand_zero_clusters: every zero cluster of the active and the
// snapshot L1 tables becomes a normal cluster reading as zeros (v2 has no
// ZERO flag). Plain zero clusters become unallocated without a backing file,
// else a new zeroed cluster; allocated ones are zeroed. The data is written
// and flushed before the L2 entries change.
int coroutine_fn Qcow2Node::co_expand_zero_clusters_locked(const ProgressFn &progress)
{
    const uint64_t cs = cluster_size_;
    const size_t ss = l2_cache_->slice_size();
    const uint32_t per_slice = static_cast<uint32_t>(ss / l2_entry_size_);
    std::vector<std::vector<uint64_t>> tables;
    tables.push_back(l1_);
    for (const qcow2::Snapshot &sn : snapshots_) {
        std::vector<uint64_t> l1(sn.l1_size, 0);
        if (sn.l1_size) {
            std::vector<uint8_t> raw(static_cast<size_t>(sn.l1_size) * 8);
            int r = file_->co_pread(static_cast<int64_t>(sn.l1_table_offset), static_cast<int64_t>(raw.size()),
                                    raw.data());
            if (r < 0) return r;
            for (uint32_t i = 0; i < sn.l1_size; i++) l1[i] = qcow2::be64(raw.data() + static_cast<size_t>(i) * 8);
        }
        tables.push_back(std::move(l1));
    }
    int64_t total = 0, done = 0;
    for (const auto &t : tables) total += static_cast<int64_t>(t.size());
    for (const auto &t : tables) {
        for (uint64_t l1e : t) {
            if (progress) progress(done, total);
            done++;
            const uint64_t l2_off = l1e & qcow2::kL1eOffsetMask;
            if (!l2_off) continue;
            uint64_t l2_rc = 0;
            int r = co_get_refcount_locked(l2_off >> cluster_bits_, &l2_rc);
            if (r < 0) return r;
            if (l2_rc == 0) return co_signal_corruption_locked("L2 table at 0x%" PRIx64 " has refcount 0", l2_off);
            for (uint64_t s = 0; s < cs; s += ss) {
                const uint8_t *data;
                r = l2_cache_->co_get(file_, l2_off + s, &data);
                if (r < 0) return r;
                // Pass 1: the clusters' data; pass 2 (after a flush): the entries.
                std::vector<std::pair<uint32_t, uint64_t>> changes;
                std::vector<uint64_t> drop;   // shared clusters replaced: one reference per path through this L2
                for (uint32_t j = 0; j < per_slice && r >= 0; j++) {
                    const uint64_t e = qcow2::be64(data + static_cast<size_t>(j) * l2_entry_size_);
                    if ((e & qcow2::kOflagCompressed) || !(e & qcow2::kOflagZero)) continue;
                    uint64_t host = e & qcow2::kL2eOffsetMask;
                    if (host) {
                        // Shared with another L2 table (a snapshot that
                        // still reads its data there): a new cluster instead.
                        uint64_t drc = 0;
                        r = co_get_refcount_locked(host >> cluster_bits_, &drc);
                        if (r < 0) break;
                        if (drc > l2_rc) {
                            drop.push_back(host);
                            host = 0;
                        }
                    }
                    if (!host) {
                        if (!backing() && (e & qcow2::kL2eOffsetMask) == 0) {
                            changes.emplace_back(j, 0);
                            continue;
                        }
                        int64_t n = co_alloc_clusters_locked(cs);
                        if (n < 0) {
                            r = static_cast<int>(n);
                            break;
                        }
                        host = static_cast<uint64_t>(n);
                        if (l2_rc > 1) {
                            r = co_update_refcount_locked(host, cs, static_cast<int64_t>(l2_rc - 1),
                                                          qcow2::DiscardType::kNever);
                            if (r < 0) break;
                        }
                    }
                    int ol = co_overlap_check_locked(0, host, cs);
                    if (ol) {
                        r = ol < 0 ? ol
                                   : co_signal_corruption_locked("zero cluster at 0x%" PRIx64 " overlaps metadata",
                                                                 host);
                        break;
                    }
                    r = file_->co_pwrite_zeroes(static_cast<int64_t>(host), static_cast<int64_t>(cs));
                    if (r < 0) break;
                    changes.emplace_back(j, host | (l2_rc == 1 ? qcow2::kOflagCopied : 0));
                }
                if (r >= 0 && !changes.empty()) r = co_flush_caches_locked();
                if (r >= 0) {
                    for (auto &c : changes) {
                        uint8_t *w = l2_cache_->mutable_data(l2_off + s);
                        put_be(w + static_cast<size_t>(c.first) * l2_entry_size_, c.second, 8);
                    }
                }
                l2_cache_->release(l2_off + s);
                if (r < 0) return r;
                if (!drop.empty()) {
                    // The new entries reach the disk before the old clusters lose references.
                    r = co_flush_caches_locked();
                    if (r < 0) return r;
                    for (uint64_t h : drop) {
                        r = co_update_refcount_locked(h, cs, -static_cast<int64_t>(l2_rc), qcow2::DiscardType::kOther);
                        if (r < 0) return r;
                    }
                }
            }
        }
    }
    if (progress) progress(total, total);
    return co_flush_caches_locked();
}

// QEMU qcow2_change_refcount_order: a new refcount table and blocks of the
// new width at the end of the file, holding the current refcounts; then the
// header (refcount_order, table offset and size in one sector) switches;
// then the old structures are freed through the new ones.
Status coroutine_fn Qcow2Node::co_change_refcount_order_locked(uint32_t order)
{
    int r = co_flush_caches_locked();
    if (r < 0) return io_err(r, name_, "cannot flush the image");
    const int64_t flen = file_->getlength();
    if (flen < 0) return io_err(static_cast<int>(flen), name_, "cannot get the file length");
    const uint64_t cs = cluster_size_;
    const uint64_t nb = (static_cast<uint64_t>(flen) + cs - 1) >> cluster_bits_;
    const uint64_t new_max = order == 6 ? ~0ULL : (1ULL << (1u << order)) - 1;
    std::vector<uint64_t> refs(nb, 0);
    for (uint64_t c = 0; c < nb; c++) {
        r = co_get_refcount_locked(c, &refs[c]);
        if (r < 0) return io_err(r, name_, "cannot read the refcounts");
        if (refs[c] > new_max) {
            return make_error(EINVAL,
                              "Cannot decrease refcount entry width to %u bits: Cluster at offset %#" PRIx64
                              " has a refcount of %" PRIu64,
                              1u << order, c << cluster_bits_, refs[c]);
        }
    }
    while (!refs.empty() && refs.back() == 0) refs.pop_back();
    // Layout: the table, then the blocks, from the first cluster past the
    // end of the file; they refcount themselves.
    const uint64_t per_block = 1ULL << (cluster_bits_ + 3 - order);
    uint64_t tbl_clusters, nb_blocks;
    qcow2::self_covering_refcounts(nb, cluster_bits_, order, &tbl_clusters, &nb_blocks);
    if (tbl_clusters * cs > qcow2::kMaxRefTableBytes) {
        return qcow2::herr(EFBIG, name_, "the refcount table would be too large");
    }
    refs.resize(nb + tbl_clusters + nb_blocks, 0);
    for (uint64_t c = nb; c < refs.size(); c++) refs[c] = 1;
    std::vector<uint64_t> table(tbl_clusters * cs / 8, 0);
    std::vector<uint8_t> blk(cs);
    for (uint64_t b = 0; b < nb_blocks; b++) {
        std::fill(blk.begin(), blk.end(), 0);
        for (uint64_t i = 0; i < per_block && b * per_block + i < refs.size(); i++) {
            const uint64_t v = refs[b * per_block + i];
            if (!v) continue;
            // Entry i of 2^order bits, big-endian within the block.
            const uint32_t bits = 1u << order;
            if (bits >= 8) {
                put_be(blk.data() + i * (bits / 8), v, static_cast<int>(bits / 8));
            } else {
                const uint64_t bit = i * bits;
                const uint32_t shift = static_cast<uint32_t>(bit % 8);
                blk[bit / 8] |= static_cast<uint8_t>(v << shift);
            }
        }
        const uint64_t off = (nb + tbl_clusters + b) << cluster_bits_;
        r = file_->co_pwrite(static_cast<int64_t>(off), static_cast<int64_t>(cs), blk.data());
        if (r < 0) return io_err(r, name_, "cannot write the new refcount blocks");
        table[b] = off;
    }
    std::vector<uint8_t> raw(table.size() * 8);
    for (size_t i = 0; i < table.size(); i++) put_be(raw.data() + i * 8, table[i], 8);
    r = file_->co_pwrite(static_cast<int64_t>(nb << cluster_bits_), static_cast<int64_t>(raw.size()), raw.data());
    if (r >= 0) r = file_->co_flush();
    if (r < 0) return io_err(r, name_, "cannot write the new refcount table");

    const uint64_t old_tbl = h_.refcount_table_offset;
    const uint64_t old_tbl_bytes = static_cast<uint64_t>(h_.refcount_table_clusters) * cs;
    std::vector<uint64_t> old_blocks;
    for (uint64_t e : refcount_table_) {
        if (e & qcow2::kReftOffsetMask) old_blocks.push_back(e & qcow2::kReftOffsetMask);
    }
    qcow2::Header nh = h_;
    nh.refcount_order = order;
    nh.refcount_table_offset = nb << cluster_bits_;
    nh.refcount_table_clusters = static_cast<uint32_t>(tbl_clusters);
    r = co_write_header_locked(nh);
    if (r < 0) return io_err(r, name_, "cannot update the header");
    refcount_table_ = std::move(table);
    reftable_changed();
    refcount_cache_->invalidate();
    free_cluster_index_ = 0;
    free_byte_offset_ = 0;
    // The old structures, counted in the new one, are unreferenced now.
    for (uint64_t b : old_blocks) co_free_clusters_locked(b, cs, qcow2::DiscardType::kOther);
    if (old_tbl_bytes) co_free_clusters_locked(old_tbl, old_tbl_bytes, qcow2::DiscardType::kOther);
    r = co_flush_caches_locked();
    if (r < 0) return io_err(r, name_, "cannot flush the image");
    return {};
}

// ---------------------------------------------------------------- amend

// What an amend asks for, parsed and checked against the image.
struct Qcow2Node::AmendRequest {
    uint32_t new_version = 0;
    bool old_lazy = false, lazy = false;
    uint32_t order = 0;                          // refcount order
    std::optional<std::string> data_file;
    bool data_file_raw = false;
    std::optional<std::string> backing_file;
    std::optional<std::string> backing_fmt;
    std::optional<uint64_t> new_size;            // rounded up to 512
};

Status Qcow2Node::parse_amend_options(const CreateOptions &opts, AmendRequest *a) const
{
    for (const auto &kv : opts.opts) {
        if (amendable(kv.first)) continue;
        bool known = false;
        for (const CreateOptionDesc &d : qcow2::kCreateOptions) {
            if (kv.first == d.name) known = true;
        }
        if (known) {
            return make_error(EINVAL, "Invalid parameter '%s'\nThis option is only supported for image creation",
                              kv.first.c_str());
        }
        return make_error(EINVAL, "Invalid parameter '%s'", kv.first.c_str());
    }
    a->new_version = h_.version;
    if (auto v = opts.get("compat")) {
        if (*v == "0.10" || *v == "v2") a->new_version = 2;
        else if (*v == "1.1" || *v == "v3") a->new_version = 3;
        else return make_error(EINVAL, "Unknown compatibility level %s", v->c_str());
    }
    a->old_lazy = (h_.compatible_features & qcow2::kCompatLazyRefcounts) != 0;
    auto lz = opts.get_bool("lazy_refcounts", a->old_lazy);
    if (!lz) return lz.error();
    a->lazy = lz.value();
    a->order = h_.refcount_order;
    if (opts.has("refcount_bits")) {
        auto rb = opts.get_number("refcount_bits", 16);
        if (!rb) return rb.error();
        const uint64_t bits = rb.value();
        if (bits == 0 || bits > 64 || (bits & (bits - 1))) {
            return make_error(EINVAL, "Refcount width must be a power of two and may not exceed 64 bits");
        }
        a->order = static_cast<uint32_t>(__builtin_ctzll(bits));
    }
    if (a->new_version < 3 && a->order != 4 && opts.has("refcount_bits")) {
        return make_error(EINVAL, "Refcount widths other than 16 bits require compatibility level 1.1 or above (use "
                                  "compat=1.1 or greater)");
    }
    if (a->new_version < 3 && a->lazy) {
        return make_error(EINVAL, "Lazy refcounts only supported with compatibility level 1.1 and above (use "
                                  "compat=1.1 or greater)");
    }
    a->data_file = opts.get("data_file");
    if (a->data_file && !h_.has_data_file()) {
        return make_error(EINVAL, "data-file can only be set for images that use an external data file");
    }
    auto dfr = opts.get_bool("data_file_raw", h_.data_file_raw());
    if (!dfr) return dfr.error();
    if (dfr.value() && !h_.data_file_raw()) return make_error(EINVAL, "data-file-raw cannot be set on existing images");
    a->data_file_raw = dfr.value();
    a->backing_file = opts.get("backing_file");
    a->backing_fmt = opts.get("backing_fmt");
    if (a->backing_fmt && !a->backing_file && h_.backing_file.empty()) {
        return make_error(EINVAL, "Cannot set a backing format without a backing file");
    }
    if (opts.has("size")) {
        auto sz = opts.get_size("size", 0);
        if (!sz) return sz.error();
        a->new_size = (sz.value() + 511) & ~uint64_t{511};
        if (*a->new_size < size_ && !snapshots_.empty()) {
            return make_error(ENOTSUP, "Can't shrink an image which has snapshots");
        }
    }
    return {};
}

Status coroutine_fn Qcow2Node::co_amend_names_locked(const AmendRequest &a)
{
    qcow2::Header nh = h_;
    bool changed = false;
    if (a.backing_file && *a.backing_file != h_.backing_file) {
        nh.backing_file = *a.backing_file;
        if (a.backing_file->empty()) nh.backing_format.reset();
        changed = true;
    }
    if (a.backing_fmt && a.backing_fmt->size() > qcow2::kMaxBackingFormatLen) {
        return make_error(EINVAL, "Backing format '%s' is too long", a.backing_fmt->c_str());
    }
    if (a.backing_fmt && !nh.backing_file.empty() && nh.backing_format != a.backing_fmt) {
        if (a.backing_fmt->empty()) nh.backing_format.reset();
        else nh.backing_format = *a.backing_fmt;
        changed = true;
    }
    if (nh.backing_file.size() > qcow2::kMaxBackingNameLen) {
        return make_error(EINVAL, "Backing file name too long");
    }
    if (a.data_file && nh.data_file != a.data_file) {
        nh.data_file = *a.data_file;
        changed = true;
    }
    if (!a.data_file_raw && h_.data_file_raw()) {
        nh.autoclear_features &= ~qcow2::kAutoclearDataFileRaw;
        changed = true;
    }
    if (changed) {
        int r = co_write_header_locked(nh);
        if (r < 0) return io_err(r, name_, "cannot update the header");
    }
    return {};
}

Status coroutine_fn Qcow2Node::co_amend_lazy_locked(bool lazy)
{
    if (lazy && h_.version < 3) {
        return make_error(EINVAL, "Lazy refcounts only supported with compatibility level 1.1 and above "
                                  "(use compat=1.1 or greater)");
    }
    qcow2::Header nh = h_;
    int r;
    if (lazy) {
        nh.compatible_features |= qcow2::kCompatLazyRefcounts;
    } else {
        // Mark clean: everything flushed, then the dirty bit cleared.
        r = co_flush_caches_locked();
        if (r >= 0) r = co_update_incompat_locked(0, qcow2::kIncompatDirty);
        if (r < 0) return io_err(r, name_, "cannot mark the image clean");
        nh = h_;
        nh.compatible_features &= ~qcow2::kCompatLazyRefcounts;
    }
    r = co_write_header_locked(nh);
    if (r < 0) return io_err(r, name_, "cannot update the header");
    lazy_refcounts_ = lazy;
    return {};
}

Result<bool> coroutine_fn Qcow2Node::co_any_compressed_cluster_locked()
{
    bool any = false;
    std::vector<std::pair<uint64_t, uint32_t>> l1s = {{h_.l1_table_offset, h_.l1_size}};
    for (const qcow2::Snapshot &sn : snapshots_) l1s.emplace_back(sn.l1_table_offset, sn.l1_size);
    int r = co_flush_caches_locked();
    std::vector<uint8_t> l2(cluster_size_);
    for (auto &t : l1s) {
        if (r < 0 || any || !t.second) continue;
        std::vector<uint8_t> raw(static_cast<size_t>(t.second) * 8);
        r = file_->co_pread(static_cast<int64_t>(t.first), static_cast<int64_t>(raw.size()), raw.data());
        for (uint32_t i = 0; r >= 0 && !any && i < t.second; i++) {
            const uint64_t l2o = qcow2::be64(raw.data() + static_cast<size_t>(i) * 8) & qcow2::kL1eOffsetMask;
            if (!l2o) continue;
            r = file_->co_pread(static_cast<int64_t>(l2o), static_cast<int64_t>(cluster_size_), l2.data());
            for (uint64_t j = 0; r >= 0 && j < (1ULL << l2_bits_); j++) {
                if (qcow2::be64(l2.data() + j * l2_entry_size_) & qcow2::kOflagCompressed) any = true;
            }
        }
    }
    if (r < 0) return io_err(r, name_, "cannot read the L2 tables");
    return any;
}

Status coroutine_fn Qcow2Node::co_downgrade_locked(const ProgressFn &progress)
{
    if (h_.refcount_order != 4) return make_error(ENOTSUP, "compat=0.10 requires refcount_bits=16");
    if (h_.has_data_file()) return make_error(ENOTSUP, "Cannot downgrade an image with a data file");
    if (h_.bitmaps || !bitmaps_.empty()) {
        // (qemu-img 7.2 drops them, leaking their clusters.)
        return make_error(ENOTSUP, "Cannot downgrade an image with persistent dirty bitmaps; remove them first "
                                   "(img bitmap --remove)");
    }
    for (const qcow2::Snapshot &sn : snapshots_) {
        if (sn.vm_state_size || sn.disk_size != size_) {
            return make_error(ENOTSUP, "Internal snapshots prevent downgrade of image");
        }
    }
    int r;
    if (h_.incompatible_features & qcow2::kIncompatDirty) {
        r = co_flush_caches_locked();
        if (r >= 0) r = co_update_incompat_locked(0, qcow2::kIncompatDirty);
        if (r < 0) return io_err(r, name_, "cannot mark the image clean");
    }
    if (h_.incompatible_features & ~qcow2::kIncompatCompression) {
        return make_error(ENOTSUP, "Cannot downgrade an image with incompatible features %#" PRIx64 " set",
                          h_.incompatible_features);
    }
    if (h_.compression_type != qcow2::kCompressionZlib) {
        // Any compressed cluster reachable from any L1 table?
        auto any = co_any_compressed_cluster_locked();
        if (!any) return any.error();
        if (any.value()) {
            return make_error(EINVAL, "Cannot downgrade an image with zstd compression type and existing "
                                      "compressed clusters");
        }
    }
    r = co_expand_zero_clusters_locked(progress);
    if (r < 0) return io_err(r, name_, "cannot expand the zero clusters");
    qcow2::Header nh = h_;
    nh.version = 2;
    nh.incompatible_features = 0;
    nh.compatible_features = 0;
    nh.autoclear_features = 0;
    nh.bitmaps.reset();
    nh.compression_type = qcow2::kCompressionZlib;
    nh.refcount_order = 4;
    nh.header_length = qcow2::kV2HeaderLength;
    nh.unknown_header_fields.clear();
    nh.feature_names.clear();
    r = co_write_header_locked(nh);
    if (r < 0) return io_err(r, name_, "cannot update the header");
    lazy_refcounts_ = false;
    return {};
}

Status coroutine_fn Qcow2Node::co_amend(const CreateOptions &opts, bool force, const ProgressFn &progress)
{
    (void)force;
    if (view_snapshot_ || read_only_) return qcow2::herr(EACCES, name_, "Image is read-only");
    // Parse and validate everything before changing anything.
    AmendRequest a;
    BG_TRY(parse_amend_options(opts, &a));
    if (write_stopped_.load()) return qcow2::herr(EIO, name_, "image is corrupt; writes are refused");

    int r;
    {
        CoMutexGuard g(lock_);
        // 1. Upgrade first (QEMU's order): the later steps may need v3.
        if (a.new_version > h_.version) {
            qcow2::Header nh = h_;
            nh.version = 3;
            nh.refcount_order = 4;
            nh.header_length = qcow2::kV3MinHeaderLength;
            r = co_write_header_locked(nh);
            if (r < 0) return io_err(r, name_, "cannot update the header");
        }
        // 2. Refcount width.
        if (a.order != h_.refcount_order) {
            if (h_.version < 3) {
                return make_error(EINVAL, "Refcount widths other than 16 bits require compatibility level 1.1 or "
                                          "above (use compat=1.1 or greater)");
            }
            Status s = co_change_refcount_order_locked(a.order);
            if (!s) return s;
        }
        // 3. Backing file, data file name, data_file_raw: a header rewrite.
        BG_TRY(co_amend_names_locked(a));
        // 4. Lazy refcounts.
        if (a.lazy != a.old_lazy) BG_TRY(co_amend_lazy_locked(a.lazy));
    }
    // 5. Size (the truncate takes the lock itself).
    if (a.new_size && *a.new_size != size_) {
        r = do_co_truncate(static_cast<int64_t>(*a.new_size), false, PreallocMode::kOff, 0);
        if (r < 0) {
            if (*a.new_size < size_ && !snapshots_.empty()) {
                return make_error(ENOTSUP, "Can't shrink an image which has snapshots");
            }
            return io_err(r, name_, "cannot resize the image");
        }
        refresh_length();
    }
    // 6. Downgrade last (QEMU qcow2_downgrade).
    if (a.new_version < h_.version) {
        CoMutexGuard g(lock_);
        BG_TRY(co_downgrade_locked(progress));
    }
    if (progress) progress(1, 1);
    return {};
}

} // namespace bg

// The copy-before-write filter (QEMU's "copy-before-write" driver): before
// a write, write-zeroes or discard reaches the "file" child, the old
// contents of the clusters it touches that are still in the copy set are
// copied to the "target" child (block/copy-before-write.h has the copy set
// and the copy routine, which the backup job shares). Reads, flushes and
// block status pass through.
//
// Options: "file", "target" (required), "bitmap" ({node, name}: only the
// clusters that bitmap marks are copied; default all), "on-cbw-error"
// (break-guest-write: a failed copy fails the guest's write; break-snapshot:
// the write goes through and the copy is marked broken), "cbw-timeout"
// (seconds, 0 = none: a copy that took longer counts as failed with
// ETIMEDOUT; it is not interrupted), "min-cluster-size" (a power of 2).
// Errors: "min-cluster-size needs to be a power of 2", the bitmap's
// ("Dirty bitmap 'X' not found", "Node 'X' not found"), "Cannot find
// device='' nor node-name='X'" for a missing child.
//
// Once the filter has parents it unshares WRITE and RESIZE on its source
// (every write must pass through it), as QEMU's.
//
// Threading: main loop only (see the header).
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "block/block-driver.h"
#include "block/copy-before-write.h"
#include "util/aio.h"
#include "util/iov.h"

namespace bg {

// ---------------------------------------------------------------- BlockCopyState

BlockCopyState::BlockCopyState(BdrvChild *source, BdrvChild *target, int64_t cluster_size)
    : source_(source), target_(target), cluster_(cluster_size), length_(source->getlength())
{
    const int64_t n = length_ <= 0 ? 0 : (length_ + cluster_ - 1) / cluster_;
    dirty_.assign(static_cast<size_t>(n), 0);
    busy_.assign(static_cast<size_t>(n), 0);
}

int64_t BlockCopyState::cluster_bytes(int64_t c) const
{
    return std::min(cluster_, length_ - c * cluster_);
}

void BlockCopyState::set_all(bool dirty)
{
    std::fill(dirty_.begin(), dirty_.end(), dirty ? 1 : 0);
    dirty_count_ = dirty ? nb_clusters() : 0;
}

void BlockCopyState::set_from_bitmap(const DirtyBitmapData &bm)
{
    set_all(false);
    const uint64_t g = bm.granularity;
    for (uint64_t i = 0; i < bm.nb_bits; i++) {
        if (!(bm.bytes[i / 8] & (1u << (i % 8)))) continue;
        const int64_t start = static_cast<int64_t>(i * g);
        if (start >= length_) break;
        const int64_t end = std::min(length_, static_cast<int64_t>((i + 1) * g));
        for (int64_t c = start / cluster_; c * cluster_ < end; c++) {
            if (!dirty_[static_cast<size_t>(c)]) {
                dirty_[static_cast<size_t>(c)] = 1;
                dirty_count_++;
            }
        }
    }
}

int64_t BlockCopyState::dirty_bytes() const
{
    int64_t n = dirty_count_ * cluster_;
    if (!dirty_.empty() && dirty_.back()) n -= cluster_ - cluster_bytes(nb_clusters() - 1);
    return n;
}

int64_t BlockCopyState::next_dirty(int64_t c) const
{
    for (; c < nb_clusters(); c++) {
        if (dirty_[static_cast<size_t>(c)]) return c;
    }
    return -1;
}

void BlockCopyState::clear(int64_t c, int64_t count)
{
    int64_t bytes = 0;
    for (int64_t i = c; i < c + count; i++) {
        if (dirty_[static_cast<size_t>(i)]) {
            dirty_[static_cast<size_t>(i)] = 0;
            dirty_count_--;
            bytes += cluster_bytes(i);
        }
    }
    if (bytes && on_progress) on_progress(bytes);
}

int coroutine_fn BlockCopyState::copy_range(int64_t offset, int64_t bytes, bool *is_read)
{
    if (bytes <= 0 || offset >= length_) return 0;
    const int64_t first = offset / cluster_;
    const int64_t last = (std::min(offset + bytes, length_) - 1) / cluster_;
    return copy(first, last - first + 1, is_read);
}

int coroutine_fn BlockCopyState::copy(int64_t c, int64_t count, bool *is_read)
{
    count = std::min(count, nb_clusters() - c);
    for (;;) {
        // Wait until no other copy holds a cluster of the range, then take
        // the ones still in the set; nothing yields in between.
        bool waited = false;
        for (int64_t i = c; i < c + count; i++) {
            if (busy_[static_cast<size_t>(i)]) {
                waiters_.wait();
                waited = true;
                break;
            }
        }
        if (!waited) break;
    }
    std::vector<std::pair<int64_t, int64_t>> runs;
    for (int64_t i = c; i < c + count; i++) {
        if (!dirty_[static_cast<size_t>(i)]) continue;
        busy_[static_cast<size_t>(i)] = 1;
        if (!runs.empty() && runs.back().first + runs.back().second == i) runs.back().second++;
        else runs.push_back({i, 1});
    }
    int ret = 0;
    for (const auto &[start, n] : runs) {
        if (ret == 0) ret = copy_run(start, n, is_read);
        for (int64_t i = start; i < start + n; i++) busy_[static_cast<size_t>(i)] = 0;
    }
    if (!runs.empty()) waiters_.restart_all();
    return ret;
}

// Copies the run [c, c + count) of clusters (taken, in the set).
int coroutine_fn BlockCopyState::copy_run(int64_t c, int64_t count, bool *is_read)
{
    const int64_t chunk_max = compress ? cluster_ : std::max(cluster_, max_chunk > 0 ? max_chunk : int64_t(1) << 20);
    const int64_t per = std::max<int64_t>(1, chunk_max / cluster_);
    AlignedBuf buf;
    for (int64_t i = c; i < c + count;) {
        int64_t n = std::min(per, c + count - i);
        const int64_t off = i * cluster_;
        int64_t bytes = std::min(n * cluster_, length_ - off);
        BlockNode *src = source_->node();
        if (skip_unallocated) {
            // Only what the top layer holds is copied.
            int64_t pnum = 0;
            int st = src->co_block_status(false, off, bytes, &pnum, nullptr, nullptr);
            if (st < 0) {
                *is_read = true;
                return st;
            }
            if (!(st & kStatusAllocated)) {
                // Drop the whole clusters the unallocated run covers.
                int64_t whole = pnum >= bytes ? n : pnum / cluster_;
                if (whole > 0) {
                    clear(i, whole);
                    i += whole;
                    continue;
                }
            } else if (pnum < bytes) {
                // Only the clusters the allocated run touches.
                n = std::min(n, (pnum + cluster_ - 1) / cluster_);
                bytes = std::min(n * cluster_, length_ - off);
            }
        }
        {
            int64_t pnum = 0;
            int st = src->co_block_status(true, off, bytes, &pnum, nullptr, nullptr);
            if (st < 0) {
                // QEMU copies such a range as data; we report the error:
                // an I/O error below the source reaches the writer.
                *is_read = true;
                return st;
            }
            if ((st & kStatusZero) && pnum >= bytes) {
                int r = target_->co_pwrite_zeroes(off, bytes, kReqMayUnmap);
                if (r < 0) {
                    *is_read = false;
                    return r;
                }
                clear(i, n);
                i += n;
                continue;
            }
        }
        if (!buf) buf = aligned_alloc_buf(4096, static_cast<size_t>(per * cluster_));
        int r = source_->co_pread(off, bytes, buf.get());
        if (r < 0) {
            *is_read = true;
            return r;
        }
        r = target_->co_pwrite(off, bytes, buf.get(), compress ? kReqWriteCompressed : 0);
        if (r < 0) {
            *is_read = false;
            return r;
        }
        clear(i, n);
        i += n;
    }
    return 0;
}

// ---------------------------------------------------------------- the filter

namespace {

enum class OnCbwError { kBreakGuestWrite, kBreakSnapshot };
constexpr EnumName<OnCbwError> kOnCbwErrorNames[] = {
    {"break-guest-write", OnCbwError::kBreakGuestWrite},
    {"break-snapshot", OnCbwError::kBreakSnapshot},
};

struct CbwOptions : DriverOptionsOf<CbwOptions> {
    BlockdevRef file, target;
    std::string bitmap_node, bitmap_name;   // empty: no bitmap
    OnCbwError on_cbw_error = OnCbwError::kBreakGuestWrite;
    uint64_t cbw_timeout = 0;
    uint64_t min_cluster_size = 0;

    void encode(nlohmann::json &j) const override
    {
        put_ref(j, "file", file);
        put_ref(j, "target", target);
        if (!bitmap_name.empty()) j["bitmap"] = {{"node", bitmap_node}, {"name", bitmap_name}};
        if (on_cbw_error != OnCbwError::kBreakGuestWrite) j["on-cbw-error"] = enum_name(kOnCbwErrorNames, on_cbw_error);
        if (cbw_timeout) j["cbw-timeout"] = cbw_timeout;
        if (min_cluster_size) j["min-cluster-size"] = min_cluster_size;
    }
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override
    {
        fn("file", file);
        fn("target", target);
    }
};

Result<std::unique_ptr<DriverOptions>> decode_cbw_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<CbwOptions>();
    BG_TRY(r.get_ref("file", &o->file, OptionReader::RefMode::kRequired));
    BG_TRY(r.get_ref("target", &o->target, OptionReader::RefMode::kRequired));
    BG_TRY(r.get_object("bitmap", [&o](OptionReader &b) -> Status {
        BG_TRY(b.get("node", &o->bitmap_node));
        BG_TRY(b.get("name", &o->bitmap_name));
        return {};
    }));
    BG_TRY(r.get_enum("on-cbw-error", &o->on_cbw_error, kOnCbwErrorNames));
    BG_TRY(r.get_uint("cbw-timeout", &o->cbw_timeout, UINT32_MAX));
    BG_TRY(r.get_size("min-cluster-size", &o->min_cluster_size, INT64_MAX));
    return std::unique_ptr<DriverOptions>(std::move(o));
}

constexpr int64_t kDefaultCluster = 64 * 1024;

class CbwNode final : public FilterNode {
  public:
    BlockCopyState *state() { return bcs_.get(); }

  protected:
    Status open(const BlockdevOptions &opts) override
    {
        const auto *o = opts.as<CbwOptions>();
        if (!o) return node_error(EINVAL, "options are not copy-before-write options");
        const uint64_t mcs = o->min_cluster_size;
        if (mcs && (mcs & (mcs - 1))) return make_error(EINVAL, "min-cluster-size needs to be a power of 2");
        if (mcs > (uint64_t(1) << 30)) return make_error(EINVAL, "min-cluster-size must be at most 1 GiB");
        BG_TRY(open_filtered("file", o->file));
        Result<BdrvChild *> t = open_child("target", o->target, kRoleData);
        if (!t) return t.error();
        target_ = t.value();
        if (target_->getlength() < filtered_->getlength()) {
            return make_error(EINVAL, "The target is smaller than the source");
        }
        int64_t cluster = kDefaultCluster;
        Result<ImageInfo> info = target_->node()->get_info();
        if (info && info.value().cluster_size) {
            cluster = std::max<int64_t>(cluster, static_cast<int64_t>(*info.value().cluster_size));
        }
        cluster = std::max<int64_t>(cluster, static_cast<int64_t>(mcs));
        bcs_ = std::make_unique<BlockCopyState>(filtered_, target_, cluster);
        if (!o->bitmap_name.empty()) {
            BlockNode *bn = graph()->find(o->bitmap_node);
            if (!bn) return make_error(ENOENT, "Node '%s' not found", o->bitmap_node.c_str());
            Result<DirtyBitmapData> bm = bn->dirty_bitmap_get(o->bitmap_name);
            if (!bm) return bm.error();
            bcs_->set_from_bitmap(bm.value());
        } else {
            bcs_->set_all(true);
        }
        on_error_ = o->on_cbw_error;
        timeout_ns_ = static_cast<int64_t>(o->cbw_timeout) * 1000000000LL;
        return {};
    }

    void child_perm(ChildRole role, BlockPerm parent_perm, BlockPerm parent_shared, BlockPerm *nperm,
                    BlockPerm *nshared) override
    {
        if (!(role & kRolePrimary)) {
            // The target: we write there; others may read it.
            *nperm = kPermWrite;
            *nshared = kPermConsistentRead | kPermWriteUnchanged;
            return;
        }
        constexpr BlockPerm passed = kPermConsistentRead | kPermWrite | kPermWriteUnchanged | kPermResize;
        *nperm = (parent_perm & passed) | kPermConsistentRead;
        *nshared = (parent_shared & passed) | kPermConsistentRead | kPermWriteUnchanged;
        if (!parents().empty()) *nshared &= ~(kPermWrite | kPermResize);
        else *nshared |= kPermWrite | kPermResize;
    }

    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override
    {
        int r = before_write(offset, bytes);
        if (r < 0) return r;
        return filtered_->co_pwritev(offset, bytes, qiov, flags);
    }

    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override
    {
        int r = before_write(offset, bytes);
        if (r < 0) return r;
        return filtered_->co_pwrite_zeroes(offset, bytes, flags);
    }

    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override
    {
        int r = before_write(offset, bytes);
        if (r < 0) return r;
        return filtered_->co_pdiscard(offset, bytes);
    }

    int coroutine_fn do_co_truncate(int64_t, bool, PreallocMode, ReqFlags) override { return -ENOTSUP; }

    // A writer of the host file would bypass the copy.
    int do_passthrough_fd(bool write, std::string *why) override
    {
        if (!write) return FilterNode::do_passthrough_fd(write, why);
        *why = "node '" + node_name() + "' (copy-before-write) copies before each write";
        return -1;
    }

  private:
    int coroutine_fn before_write(int64_t offset, int64_t bytes)
    {
        if (!bcs_ || bcs_->snapshot_error) return 0;
        bool is_read = false;
        const int64_t t0 = clock_ns();
        int r = bcs_->copy_range(offset, bytes, &is_read);
        if (r == 0 && timeout_ns_ > 0 && clock_ns() - t0 > timeout_ns_) r = -ETIMEDOUT;
        if (r == 0) return 0;
        if (on_error_ == OnCbwError::kBreakSnapshot) {
            bcs_->snapshot_error = r;
            return 0;
        }
        return r;
    }

    BdrvChild *target_ = nullptr;
    std::unique_ptr<BlockCopyState> bcs_;
    OnCbwError on_error_ = OnCbwError::kBreakGuestWrite;
    int64_t timeout_ns_ = 0;
};

std::unique_ptr<BlockNode> create_cbw() { return std::make_unique<CbwNode>(); }

} // namespace

extern const BlockDriver kDriverCopyBeforeWrite;

BlockCopyState *cbw_block_copy(BlockNode *n)
{
    if (!n || n->driver() != &kDriverCopyBeforeWrite) return nullptr;
    return static_cast<CbwNode *>(n)->state();
}

extern const BlockDriver kDriverCopyBeforeWrite = {
    .name = "copy-before-write",
    .kind = BlockDriverKind::kFilter,
    .caps = kCapWrite | kCapDiscard | kCapWriteZeroes | kCapBlockStatus | kCapFlush | kCapPersistent |
        kCapPassthrough | kCapDiscardZeroes,
    .summary = "copies old data to its target before each write (filter; children \"file\", \"target\")",
    .decode_options = decode_cbw_options,
    .create = create_cbw,
    .probe = nullptr,
    .create_opts = {},
    .create_image = nullptr,
    .measure = nullptr,
    .stores_bitmaps = nullptr,
    .protocol_prefixes = nullptr,
    .parse_filename = nullptr,
};

} // namespace bg

// The copy-on-read filter (QEMU's "copy-on-read" driver): reads pass to
// the "file" child with kReqCopyOnRead, so that what the child reads from
// its backing chain is also written into it (its generic layer does the
// copy, cluster by cluster, as unchanged-data writes under a serialising
// request: block/io.cc co_copy_on_readv). Writes, zeroes, discards and
// truncates pass through unchanged (FilterNode).
//
// Options: "file" (required) and "bottom", a node name: then only ranges
// that some layer of the child's backing chain from its first backing node
// down to and including bottom holds are copied (data from below bottom is
// read, not copied). Errors: "Bottom node 'X' not found", "Bottom node 'X'
// is a filter". Whatever parents need, the filter needs WRITE_UNCHANGED on
// its child, so a read-only child fails the open ("Block node is
// read-only").
//
// Threading: the node holds only immutable state after open (bottom_ is
// looked up by name on each read, so a bottom node that has gone away just
// stops limiting the copy); requests may come from any thread.
#include <algorithm>
#include <cerrno>

#include "block/block-driver.h"

namespace bg {

namespace {

struct CorOptions : DriverOptionsOf<CorOptions> {
    BlockdevRef file;            // required
    std::string bottom;          // node name; empty: copy everything

    void encode(nlohmann::json &j) const override
    {
        put_ref(j, "file", file);
        if (!bottom.empty()) j["bottom"] = bottom;
    }
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override { fn("file", file); }
};

Result<std::unique_ptr<DriverOptions>> decode_cor_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<CorOptions>();
    BG_TRY(r.get_ref("file", &o->file, OptionReader::RefMode::kRequired));
    BG_TRY(r.get("bottom", &o->bottom));
    return std::unique_ptr<DriverOptions>(std::move(o));
}

constexpr BlockPerm kPermPassed = kPermConsistentRead | kPermWrite | kPermResize;

// The next layer below n whose data n reads through (backing, else filtered child).
BlockNode *below(BlockNode *n)
{
    if (BdrvChild *b = n->backing_child()) return b->node();
    if (BdrvChild *f = n->filtered_child()) return f->node();
    return nullptr;
}

class CorNode final : public FilterNode {
  protected:
    Status open(const BlockdevOptions &opts) override
    {
        const auto *o = opts.as<CorOptions>();
        if (!o) return node_error(EINVAL, "options are not copy-on-read options");
        if (child_read_only(o->file)) return make_error(EPERM, "Block node is read-only");
        BG_TRY(open_filtered("file", o->file));
        // Looked up once the child is open: bottom may be in its chain.
        if (!o->bottom.empty()) {
            BlockNode *b = graph()->find(o->bottom);
            if (!b) return make_error(ENOENT, "Bottom node '%s' not found", o->bottom.c_str());
            if (b->driver() && b->driver()->kind == BlockDriverKind::kFilter) {
                return make_error(EINVAL, "Bottom node '%s' is a filter", o->bottom.c_str());
            }
            bottom_ = o->bottom;
        }
        return {};
    }

    void child_perm(ChildRole role, BlockPerm parent_perm, BlockPerm parent_shared, BlockPerm *nperm,
                    BlockPerm *nshared) override
    {
        (void)role;
        *nperm = (parent_perm & kPermPassed) | kPermWriteUnchanged;
        *nshared = (parent_shared & kPermPassed) | kPermWriteUnchanged;
    }

    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override
    {
        BlockNode *bottom = bottom_.empty() ? nullptr : graph()->find(bottom_);
        if (!bottom) return filtered_->co_preadv(offset, bytes, qiov, flags | kReqCopyOnRead);
        for (int64_t done = 0; done < bytes;) {
            int64_t n = bytes - done;
            ReqFlags f = flags;
            int r = co_allocated_in_child(offset + done, &n);
            if (r == 0) r = co_allocated_below(bottom, offset + done, &n);
            else if (r > 0) r = 0;   // in the child already: a plain read
            if (r < 0) return r;
            if (r > 0) f |= kReqCopyOnRead;
            IOVector part;
            part.add_slice(qiov, done, n);
            r = filtered_->co_preadv(offset + done, n, part, f);
            if (r < 0) return r;
            done += n;
        }
        return 0;
    }

    // A reader of the node would bypass the copy.
    int do_passthrough_fd(bool write, std::string *why) override
    {
        (void)write;
        *why = "node '" + node_name() + "' (copy-on-read) writes what it reads";
        return -1;
    }

  private:
    // Whether the child ref will be a read-only node (an inline child
    // inherits this node's read-only): WRITE_UNCHANGED cannot be had there.
    bool child_read_only(const BlockdevRef &ref) const
    {
        if (read_only_) return true;
        if (ref.kind == BlockdevRef::Kind::kInline) return ref.def && ref.def->read_only;
        if (ref.kind != BlockdevRef::Kind::kReference) return false;
        BlockNode *n = graph()->find(ref.reference);
        return n && n->read_only();
    }

    // 1 if [off, off + *n) starts allocated in the child node itself, 0 if
    // not; *n is narrowed to the run. Negative errno on error (*n kept).
    int coroutine_fn co_allocated_in_child(int64_t off, int64_t *n)
    {
        int64_t p = 0;
        int st = filtered_->node()->co_block_status(false, off, *n, &p, nullptr, nullptr);
        if (st < 0) return st;
        if (p > 0) *n = std::min(*n, p);
        return (st & kStatusAllocated) ? 1 : 0;
    }

    // Whether a layer from the child's first backing node down to bottom
    // (included) holds the start of [off, off + *n); narrows *n to the run.
    int coroutine_fn co_allocated_below(BlockNode *bottom, int64_t off, int64_t *n)
    {
        BlockNode *top = filtered_->node();
        for (BlockNode *l = below(top); l; l = below(l)) {
            if (l->driver() && l->driver()->kind == BlockDriverKind::kFilter) continue;
            if (off < l->getlength()) {
                int64_t p = 0;
                int st = l->co_block_status(false, off, *n, &p, nullptr, nullptr);
                if (st < 0) return st;
                if (p > 0) *n = std::min(*n, p);
                if (st & kStatusAllocated) return 1;
            }
            if (l == bottom) break;
        }
        return 0;
    }

    std::string bottom_;
};

std::unique_ptr<BlockNode> create_cor() { return std::make_unique<CorNode>(); }

} // namespace

extern const BlockDriver kDriverCopyOnRead = {
    .name = "copy-on-read",
    .kind = BlockDriverKind::kFilter,
    .caps = kCapWrite | kCapDiscard | kCapWriteZeroes | kCapResize | kCapShrink | kCapBlockStatus | kCapFlush |
        kCapPersistent | kCapPassthrough | kCapDiscardZeroes,
    .summary = "copies what it reads from the backing chain into its child (filter; child \"file\")",
    .decode_options = decode_cor_options,
    .create = create_cor,
    .probe = nullptr,
    .create_opts = {},
    .create_image = nullptr,
    .measure = nullptr,
    .stores_bitmaps = nullptr,
    .protocol_prefixes = nullptr,
    .parse_filename = nullptr,
};

} // namespace bg

// block/job-chain.cc -- see job-chain.h.
#include "block/job-chain.h"

#include <climits>
#include <cstdlib>

namespace bg {

bool node_is_filter(const BlockNode *n)
{
    return n->driver() && n->driver()->kind == BlockDriverKind::kFilter;
}

BlockNode *chain_next(const BlockNode *n)
{
    if (BdrvChild *b = n->backing_child()) return b->node();
    if (node_is_filter(n)) {
        if (BdrvChild *f = n->filtered_child()) return f->node();
    }
    return nullptr;
}

BlockNode *skip_filters(BlockNode *n)
{
    while (n && node_is_filter(n)) {
        BdrvChild *f = n->filtered_child();
        n = f ? f->node() : nullptr;
    }
    return n;
}

BlockNode *backing_chain_next(BlockNode *n)
{
    n = skip_filters(n);
    if (!n) return nullptr;
    BdrvChild *b = n->backing_child();
    return b ? skip_filters(b->node()) : nullptr;
}

bool chain_contains(BlockNode *top, const BlockNode *n)
{
    for (BlockNode *i = top; i; i = chain_next(i)) {
        if (i == n) return true;
    }
    return false;
}

BlockNode *find_overlay(BlockNode *active, BlockNode *bs)
{
    bs = skip_filters(bs);
    active = skip_filters(active);
    while (active) {
        BlockNode *next = backing_chain_next(active);
        if (next == bs) return active;
        active = next;
    }
    return nullptr;
}

std::string recorded_backing_file(BlockNode *n)
{
    Result<ImageInfo> info = n->get_info();
    if (!info || !info.value().backing_filename) return "";
    return *info.value().backing_filename;
}

std::string recorded_backing_format(BlockNode *n)
{
    Result<ImageInfo> info = n->get_info();
    if (!info || !info.value().backing_format) return "";
    return *info.value().backing_format;
}

namespace {

std::string canonical(const std::string &p)
{
    char buf[PATH_MAX];
    if (realpath(p.c_str(), buf)) return buf;
    return p;
}

} // namespace

BlockNode *find_backing_image(BlockNode *bs, const std::string &name)
{
    const std::string want = canonical(name);
    BlockNode *overlay = skip_filters(bs);
    while (overlay) {
        BlockNode *next = backing_chain_next(overlay);
        if (!next) return nullptr;
        if (recorded_backing_file(overlay) == name || next->filename() == name || canonical(next->filename()) == want) {
            return next;
        }
        overlay = next;
    }
    return nullptr;
}

void backing_reference(BlockNode *base, const std::optional<std::string> &backing_file, bool mask_protocol,
                       std::string *file, std::string *fmt)
{
    *file = backing_file ? *backing_file : base->filename();
    const BlockDriver *drv = base->driver();
    *fmt = drv ? drv->name : "";
    if (drv && drv->kind == BlockDriverKind::kProtocol && mask_protocol) *fmt = "raw";
}

Status rewrite_backing_file(BlockGraph &graph, BlockNode *overlay, const std::string &file, const std::string &fmt)
{
    const bool ro = overlay->read_only();
    if (ro) BG_TRY(graph.set_read_only(overlay, false));
    CreateOptions o;
    o.set("backing_file", file);
    o.set("backing_fmt", fmt);
    Status s = overlay->amend(o, false, nullptr);
    if (ro) (void)graph.set_read_only(overlay, true);
    if (!s.ok()) return make_error(s.error().err, "Could not update backing file link: %s", s.msg().c_str());
    return {};
}

} // namespace bg

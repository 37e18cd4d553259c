// tools/io-reopen.cc -- "blockgraph io": the 'reopen' command (changes the
// open image's options through BlockGraph::reopen). See tools/io-cmd.h.
#include <getopt.h>

#include <cerrno>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qapi/block-parse.h"
#include "qapi/keyval.h"
#include "tools/io-cmd.h"

namespace bg {
namespace io {

namespace {

using json = nlohmann::json;

// Adds the options of node (with the changes in `changes` merged in) to
// *out, and, for every change given for a child that the node references
// by name, the child's options the same way. A change for an inline child
// cannot happen: dump_options() names every child. Errors: QEMU's
// "Cannot change the option 'KEY'" for options the decoder does not know.
Status collect_reopen(BlockNode *node, const json &changes, std::vector<BlockdevOptions> *out)
{
    BlockGraph *g = node->graph();
    json tree = blockdev_options_to_json(node->dump_options());
    tree.erase("node-name");   // automatic names ("#block1") are not valid in options
    auto drv = changes.find("driver");
    if (drv != changes.end() && *drv != tree["driver"]) return make_error(EINVAL, "Cannot change the option 'driver'");
    for (auto it = changes.begin(); it != changes.end(); ++it) {
        auto cur = tree.find(it.key());
        if (it.value().is_object() && cur != tree.end() && cur->is_string()) {
            BlockNode *child = g->find(cur->get<std::string>());
            if (!child) return make_error(ENOENT, "Cannot find node '%s'", cur->get<std::string>().c_str());
            BG_TRY(collect_reopen(child, it.value(), out));
            continue;
        }
        if (it.value().is_object() && cur != tree.end() && cur->is_object()) {
            cur->update(it.value(), true);
        } else {
            tree[it.key()] = it.value();
        }
    }
    Result<BlockdevOptions> o = blockdev_options_from_tree(g->registry(), tree, true);
    if (!o) {
        // QEMU reports an option that no driver takes as one that cannot change.
        const std::string &m = o.msg();
        static const std::string kUnknown = "unknown key '";
        size_t q = m.find(kUnknown);
        if (q != std::string::npos) {
            size_t s = q + kUnknown.size(), e = m.find('\'', s);
            return make_error(EINVAL, "Cannot change the option '%s'", m.substr(s, e - s).c_str());
        }
        return o.error();
    }
    o.value().node_name = node->node_name();
    out->insert(out->begin(), std::move(o.value()));
    return {};
}

} // namespace

// qemu-io's reopen: -r/-w set read-only (default: as now), -c the cache
// mode (direct and no-flush on the top node and its file child, writethrough
// on the backend), -o options of the top node (child.key=... for a child).
// Requests in flight are drained by the graph change.
int IoShell::cmd_reopen(int argc, char **argv)
{
    json changes = json::object();
    std::optional<bool> ro;
    std::optional<CacheMode> cache;
    int c;
    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c': {
            Result<CacheMode> m = parse_cache_mode(optarg);
            if (!m) {
                std::fprintf(stderr, "%s: %s\n", kProg, m.msg().c_str());
                return -EINVAL;
            }
            cache = m.value();
            break;
        }
        case 'o': {
            Result<json> kv = keyval_parse(optarg, nullptr);
            if (!kv) {
                std::fprintf(stderr, "%s: %s\n", kProg, kv.msg().c_str());
                return -EINVAL;
            }
            changes.update(kv.value(), true);
            break;
        }
        case 'r':
        case 'w':
            if (ro) {
                std::fprintf(stderr, "%s: Only one -r/-w option may be given\n", kProg);
                return -EINVAL;
            }
            ro = c == 'r';
            break;
        default: return usage(&IoShell::cmd_reopen);
        }
    }
    if (optind != argc) return usage(&IoShell::cmd_reopen);

    BlockNode *root = img_->root;
    if (changes.contains("read-only")) {
        if (ro) {
            std::fprintf(stderr, "%s: Cannot set both -r/-w and 'read-only'\n", kProg);
            return -EINVAL;
        }
    } else {
        changes["read-only"] = ro.value_or(root->read_only());
    }
    // The file children below (opened with the image, read-only with -r as
    // it is) follow the top node's read-only state unless -o sets theirs.
    {
        json *level = &changes;
        for (BlockNode *n = root; n;) {
            BdrvChild *file = n->child("file");
            if (!file) break;
            json &sub = (*level)["file"];
            if (sub.is_null()) sub = json::object();
            if (!sub.is_object()) break;
            if (!sub.contains("read-only")) sub["read-only"] = changes["read-only"];
            level = &sub;
            n = file->node();
        }
    }
    const json *cache_opts = changes.contains("cache") ? &changes["cache"] : nullptr;
    if (cache && cache_opts && (cache_opts->contains("direct") || cache_opts->contains("no-flush"))) {
        std::fprintf(stderr, "%s: Cannot set both -c and the cache options\n", kProg);
        return -EINVAL;
    }
    if (cache) {
        json co = {{"direct", cache->direct}, {"no-flush", cache->no_flush}};
        changes["cache"] = co;
        BdrvChild *file = root->child("file");
        if (file && changes["file"].is_object() && !changes["file"].contains("cache")) {
            changes["file"]["cache"] = co;
        }
        blk()->set_writethrough(cache->writethrough);
    }

    std::vector<BlockdevOptions> opts;
    Status st = collect_reopen(root, changes, &opts);
    // Going read-only, the backend first gives up writing (as qemu-io does
    // for the read-only state it asks for with -r or keeps).
    BlockBackend *b = blk();
    const BlockPerm perm = b->root()->perm(), shared = b->root()->shared();
    const bool dropping = ro.value_or(root->read_only()) && (perm & (kPermWrite | kPermWriteUnchanged));
    if (st && dropping) st = b->set_perm(perm & ~(kPermWrite | kPermWriteUnchanged | kPermResize), shared);
    if (st) st = root->graph()->reopen(opts);
    if (!st) {
        if (dropping) (void)b->set_perm(perm, shared);
        std::fprintf(stderr, "%s: %s\n", kProg, st.msg().c_str());
        return -EINVAL;
    }
    return 0;
}

} // namespace io
} // namespace bg

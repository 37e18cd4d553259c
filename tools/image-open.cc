// tools/image-open.cc -- see image-open.h.
//
// Every way of naming an image is first turned into one JSON tree of
// BlockdevOptions (the shape qapi/block-parse.h decodes); the tool-wide
// switches are then written into each node object of the tree where the
// user did not set the key, the format is probed if the tree names none, and
// the tree is decoded and opened with BlockGraph::add_node().
//
// For a plain file name the file node is opened on its own first and the
// format node refers to it by node-name: probing needs the file node before
// the format node exists, and doing it the same way with -f keeps error
// messages alike ("Could not open 'x': ..." as in QEMU, without the
// "blockdev: file: " path that is noise when the user wrote no options).
#include "tools/image-open.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "block/block.h"
#include "block/image-mgmt.h"
#include "qapi/block-parse.h"
#include "qapi/keyval.h"

namespace bg {

namespace {

using json = nlohmann::json;

// Members that hold a child node (inline object, reference or null).
constexpr const char *kChildKeys[] = {"file", "backing", "data-file", "image"};

// Deep merge of src into dst: objects merge member by member, anything else
// replaces.
void merge_into(json &dst, const json &src)
{
    for (auto it = src.begin(); it != src.end(); ++it) {
        if (it.value().is_object() && dst.contains(it.key()) && dst[it.key()].is_object()) {
            merge_into(dst[it.key()], it.value());
        } else {
            dst[it.key()] = it.value();
        }
    }
}

// True if the node object sets force-share to something other than on/true.
bool force_share_off(const json &node)
{
    auto it = node.find("force-share");
    if (it == node.end()) return false;
    if (it->is_boolean()) return !it->get<bool>();
    if (it->is_string()) {
        const std::string &v = it->get_ref<const std::string &>();
        return v != "on" && v != "true" && v != "yes";
    }
    return true;
}

const char *aio_name(BlockdevAioOptions aio)
{
    switch (aio) {
    case BlockdevAioOptions::kThreads: return "threads";
    case BlockdevAioOptions::kNative: return "native";
    case BlockdevAioOptions::kIoUring: return "io_uring";
    }
    return "threads";
}

// True if the node object names a format driver, or names none (the format
// is probed then).
bool is_format_node(const DriverRegistry &registry, const json &node)
{
    auto drv = node.find("driver");
    if (drv == node.end()) return true;
    if (!drv->is_string()) return false;
    const BlockDriver *d = registry.find(drv->get<std::string>());
    return d && d->kind == BlockDriverKind::kFormat;
}

// Writes the tool-wide switches into a node object and its inline children
// where the keys are absent. backing: inline backing nodes default to
// read-only, as QEMU opens them. discard: the unmap policy this node gets
// when its object sets none (the tool's -d for the top node). The data
// children ("file", "data-file") of a format node default to discard=unmap:
// the format node applies the policy for the whole stack, so write-zeroes
// that it lets keep MAY_UNMAP reach the file as a hole punch, as in QEMU.
// Other children (backing, a filter's child) get their parent's policy.
// Returns an error for -U against an explicit force-share=off.
Status apply_defaults(const DriverRegistry &registry, json &node, const ImageOpenSpec &spec, bool is_backing,
                      std::optional<BlockdevDiscardOptions> discard)
{
    if (!node.is_object()) return {};
    // A child with a file name but no driver: the protocol that serves the
    // name (QEMU guesses the protocol from the name too). A legacy name
    // syntax (blkdebug:...) is not read in options: that is a plain file.
    auto fname = node.find("filename");
    const BlockDriver *proto =
        fname != node.end() && fname->is_string() ? protocol_driver_for(registry, fname->get<std::string>()) : nullptr;
    if (proto && proto->parse_filename) proto = registry.find("file");
    if (!node.contains("driver") && proto) node["driver"] = proto->name;

    if (!node.contains("read-only")) node["read-only"] = spec.read_only || is_backing;
    if (spec.force_share) {
        if (force_share_off(node)) return make_error(EINVAL, "-U conflicts with image options");
        node["force-share"] = true;
    }
    json &cache = node["cache"];
    if (cache.is_null()) cache = json::object();
    if (cache.is_object()) {
        if (!cache.contains("direct")) cache["direct"] = spec.cache.direct;
        if (!cache.contains("no-flush")) cache["no-flush"] = spec.cache.no_flush;
    }
    if (discard && !node.contains("discard")) {
        node["discard"] = *discard == BlockdevDiscardOptions::kUnmap ? "unmap" : "ignore";
    }
    // The policy children inherit: this node's (explicit or defaulted).
    std::optional<BlockdevDiscardOptions> own = discard;
    if (auto d = node.find("discard"); d != node.end() && d->is_string()) {
        Result<BlockdevDiscardOptions> m = parse_discard_mode(d->get<std::string>());
        if (m) own = m.value();
    }
    const bool format = is_format_node(registry, node);
    auto drv = node.find("driver");
    if (spec.aio && proto && drv != node.end() && drv->is_string() && drv->get<std::string>() == proto->name &&
        !node.contains("aio")) {
        node["aio"] = aio_name(*spec.aio);
    }
    for (const char *key : kChildKeys) {
        auto it = node.find(key);
        if (it == node.end() || !it->is_object()) continue;
        const bool backing = std::strcmp(key, "backing") == 0;
        const bool data = std::strcmp(key, "file") == 0 || std::strcmp(key, "data-file") == 0;
        BG_TRY(apply_defaults(registry, *it, spec, is_backing || backing,
                              format && data ? std::optional(BlockdevDiscardOptions::kUnmap) : own));
    }
    return {};
}

// Strips the "blockdev: " that BlockGraph::add_node puts in front of errors
// of unnamed nodes: for a plain file name the user wrote no blockdev.
Error plain_error(const Error &e)
{
    static const char kPrefix[] = "blockdev: ";
    if (e.msg.compare(0, sizeof(kPrefix) - 1, kPrefix) == 0) {
        return Error{e.err, e.msg.substr(sizeof(kPrefix) - 1), e.qemu_msg};
    }
    return e;
}

// Decodes and opens one node tree; check_repair and probed are the open
// flags of its top node (BlockdevOptions).
Result<BlockNode *> open_tree(BlockGraph *graph, const json &tree, bool from_keyval, bool check_repair = false,
                              bool probed = false)
{
    Result<BlockdevOptions> opts = blockdev_options_from_tree(graph->registry(), tree, from_keyval);
    if (!opts) return opts.error();
    opts.value().check_repair = check_repair;
    opts.value().probed = probed;
    return graph->add_node(opts.value());
}

// The node the backend of img attaches to: the top node, or with -C a
// copy-on-read filter opened above it.
Result<BlockNode *> backend_node(OpenImage *img, const ImageOpenSpec &spec)
{
    if (!spec.copy_on_read) return img->root;
    if (spec.read_only) return make_error(EINVAL, "Can't use copy-on-read on read-only device");
    return open_tree(img->graph.get(), json{{"driver", "copy-on-read"}, {"file", img->root->node_name()}}, false);
}

} // namespace

Result<CacheMode> parse_cache_mode(const std::string &mode)
{
    CacheMode m;
    if (mode == "none" || mode == "off") {
        m.direct = true;
    } else if (mode == "writeback") {
    } else if (mode == "writethrough") {
        m.writethrough = true;
    } else if (mode == "directsync") {
        m.direct = true;
        m.writethrough = true;
    } else if (mode == "unsafe") {
        m.no_flush = true;
    } else {
        return make_error(EINVAL, "Invalid cache option: %s", mode.c_str());
    }
    return m;
}

Result<BlockdevAioOptions> parse_aio_mode(const std::string &mode)
{
    if (mode == "threads") return BlockdevAioOptions::kThreads;
    if (mode == "native") return BlockdevAioOptions::kNative;
    if (mode == "io_uring") return BlockdevAioOptions::kIoUring;
    return make_error(EINVAL, "Invalid aio option: %s", mode.c_str());
}

Result<BlockdevDiscardOptions> parse_discard_mode(const std::string &mode)
{
    if (mode == "ignore" || mode == "off") return BlockdevDiscardOptions::kIgnore;
    if (mode == "unmap" || mode == "on") return BlockdevDiscardOptions::kUnmap;
    return make_error(EINVAL, "Invalid discard option: %s", mode.c_str());
}

std::string probed_raw_warning(const std::string &name)
{
    return "WARNING: Image format was not specified for '" + name +
           "' and probing guessed raw.\n"
           "         Automatically detecting the format is dangerous for raw images, write operations on "
           "block 0 will be restricted.\n"
           "         Specify the 'raw' format explicitly to remove the restrictions.\n";
}

OpenImage::~OpenImage()
{
    blk.reset();
    graph.reset();
}

Result<BlockNode *> add_temp_overlay(BlockGraph &graph, BlockNode *base, const std::string &node_name,
                                     const json &extra)
{
    const char *tmpdir = getenv("TMPDIR");
    std::string path = std::string(tmpdir && *tmpdir ? tmpdir : "/var/tmp") + "/blockgraph-overlay-XXXXXX";
    int fd = mkstemp(path.data());
    if (fd < 0) return errno_error(errno, "Could not get temporary filename");
    close(fd);
    ImgCreateParams p;
    p.fmt = "qcow2";
    p.filename = path;
    p.opts.opts.emplace_back("size", std::to_string(base->getlength()));
    Status st = img_create(graph.registry(), p);
    if (!st.ok()) {
        unlink(path.c_str());
        return st.error().prefixed("Could not create temporary overlay '" + path + "'");
    }
    json tree = {
        {"driver", "qcow2"},
        {"node-name", node_name},
        {"file", {{"driver", "file"}, {"filename", path}, {"cache", {{"no-flush", true}}}}},
        {"backing", base->node_name()},
    };
    if (extra.is_object()) merge_into(tree, extra);
    Result<BlockNode *> n = graph.add_node_json(tree);
    unlink(path.c_str());   // the open file stays; nothing is left behind at exit
    if (!n) return n.error().prefixed("Could not open temporary overlay");
    return n.value();
}

namespace {

// "backing": null (a tool opening an image without its backing chain)
// means nothing to a driver that has no backing child (no kCapBacking).
void drop_null_backing(const DriverRegistry &registry, json &tree)
{
    auto it = tree.find("backing");
    auto drv = tree.find("driver");
    if (it == tree.end() || !it->is_null() || drv == tree.end() || !drv->is_string()) return;
    const BlockDriver *d = registry.find(drv->get<std::string>());
    if (d && !(d->caps & kCapBacking)) tree.erase(it);
}

// -s: the temporary overlay over img->root becomes the top node. The
// tool-wide switches of spec apply to it and its file as to the image (the
// file keeps skipping flushes to disk).
Status add_snapshot_overlay(OpenImage *img, const ImageOpenSpec &spec)
{
    json extra = {{"driver", "qcow2"},
                  {"file", {{"driver", "file"}, {"filename", "-"}, {"cache", {{"no-flush", true}}}}}};
    BG_TRY(apply_defaults(img->graph->registry(), extra, spec, false, spec.discard));
    extra.erase("driver");
    extra["file"].erase("filename");
    Result<BlockNode *> top = add_temp_overlay(*img->graph, img->root, "snapshot-overlay", extra);
    if (!top) return top.error();
    img->root = top.value();
    img->probed_raw = false;   // the image below is not written
    return {};
}

} // namespace

Result<std::unique_ptr<OpenImage>> open_image(const ImageOpenSpec &spec_in)
{
    ImageOpenSpec spec = spec_in;   // -s: the image is only read (the overlay takes the writes)
    spec.read_only = spec.read_only || spec.snapshot;
    if (spec.image_opts && !spec.format.empty()) {
        return make_error(EINVAL, "--image-opts and -f are mutually exclusive");
    }
    auto img = std::make_unique<OpenImage>();
    img->name = spec.image;
    img->graph = std::make_unique<BlockGraph>();
    const DriverRegistry &registry = img->graph->registry();

    const BlockDriver *fmt_drv = nullptr;
    if (!spec.format.empty()) {
        fmt_drv = registry.find(spec.format);
        if (!fmt_drv) return make_error(EINVAL, "Unknown driver '%s'", spec.format.c_str());
    }

    // 1. The description as a tree.
    json tree;
    bool from_keyval = true;
    const bool plain = !spec.image_opts && spec.image.compare(0, 5, "json:") != 0;
    if (spec.image_opts) {
        size_t first = spec.image.find_first_not_of(" \t\r\n");
        if (first != std::string::npos && spec.image[first] == '{') {
            Result<json> r = parse_json_object(spec.image);
            if (!r) return r.error();
            Result<json> u = json_unflatten(r.value());
            if (!u) return u.error();
            tree = std::move(u.value());
            from_keyval = false;
        } else {
            Result<json> r = keyval_parse(spec.image, "driver");
            if (!r) return r.error();
            tree = std::move(r.value());
        }
    } else if (!plain) {
        Result<json> r = parse_json_object(spec.image.substr(5));
        if (!r) return r.error();
        Result<json> u = json_unflatten(r.value());
        if (!u) return u.error();
        tree = std::move(u.value());
        from_keyval = false;
    } else {
        Result<json> node = filename_node_options(spec.image, registry);
        if (!node) return node.error();
        if (fmt_drv && fmt_drv->kind == BlockDriverKind::kProtocol) {
            // -f file (or another protocol): the protocol node is the image.
            tree = fmt_drv == protocol_driver_for(registry, spec.image) ? std::move(node.value()) : json::object();
        } else {
            tree = json::object();
            tree["file"] = std::move(node.value());
        }
    }
    if (fmt_drv) {
        auto it = tree.find("driver");
        if (it != tree.end() && !(it->is_string() && it->get<std::string>() == fmt_drv->name)) {
            std::string said = it->is_string() ? "'" + it->get<std::string>() + "'" : it->dump();
            return make_error(EINVAL, "Conflicting driver: -f %s, but the image options say %s", fmt_drv->name,
                              said.c_str());
        }
        tree["driver"] = fmt_drv->name;
    }
    if (spec.extra_options.is_object()) {
        merge_into(tree, spec.extra_options);
        from_keyval = true;   // accepts native JSON scalars too
    }

    // 2. The tool-wide switches.
    BG_TRY(apply_defaults(registry, tree, spec, false, spec.discard));
    if (spec.force_share && tree["read-only"] == false) {
        // QEMU's wording (the option decoder has its own).
        return make_error(EINVAL, "force-share=on can only be used with read-only images");
    }

    // 3. The file node on its own when the format must be probed, and always
    // for plain file names (see the file comment).
    const bool need_probe = !tree.contains("driver");
    auto file_it = tree.find("file");
    if (need_probe && (file_it == tree.end() || file_it->is_null())) {
        return make_error(EINVAL, "Parameter 'driver' is missing, and there is no 'file' to probe the format of");
    }
    BlockNode *file_node = nullptr;
    if (file_it != tree.end() && file_it->is_object() && (need_probe || plain)) {
        Result<BlockNode *> f = open_tree(img->graph.get(), *file_it, from_keyval);
        if (!f) return plain ? plain_error(f.error()) : f.error();
        file_node = f.value();
        *file_it = file_node->node_name();
    } else if (need_probe && file_it->is_string()) {
        file_node = img->graph->find(file_it->get<std::string>());
        if (!file_node) {
            return make_error(ENOENT, "blockdev: file: no node named '%s'", file_it->get<std::string>().c_str());
        }
    }
    if (need_probe) {
        Result<const BlockDriver *> d = registry.probe_node_format(file_node);
        if (!d) return d.error();
        tree["driver"] = d.value()->name;
        img->probed_raw = probe_is_catch_all(d.value());
    }

    drop_null_backing(registry, tree);
    // 4. The top node (told when its format was probed).
    Result<BlockNode *> root = open_tree(img->graph.get(), tree, from_keyval, spec.check_repair, need_probe);
    if (!root) return plain ? plain_error(root.error()) : root.error();
    img->root = root.value();
    if (spec_in.snapshot) BG_TRY(add_snapshot_overlay(img.get(), spec_in));
    spec.read_only = spec_in.read_only;

    // 5. The consumer. A description that makes the top node read-only
    // without -r is refused as in QEMU's tools, whose backend asks for write
    // access when the image is opened.
    if (!spec.read_only && img->root->read_only()) return make_error(EPERM, "Block node is read-only");
    Result<BlockNode *> top = backend_node(img.get(), spec);
    if (!top) return top.error();
    bool ro = spec.read_only;
    BlockPerm perm = kPermConsistentRead | (ro ? 0 : kPermWrite | kPermResize);
    BlockPerm shared = spec.force_share ? kPermAll : (kPermConsistentRead | kPermWriteUnchanged);
    if (spec.shared) shared = *spec.shared;
    Result<std::unique_ptr<BlockBackend>> blk = BlockBackend::create(top.value(), perm, shared, spec.consumer);
    if (!blk) return plain ? plain_error(blk.error()) : blk.error();
    img->blk = std::move(blk.value());
    img->blk->set_writethrough(spec.cache.writethrough);
    return img;
}

std::string driver_names_sorted()
{
    std::vector<std::string> names;
    for (const BlockDriver *d : builtin_drivers().all()) names.push_back(d->name);
    std::sort(names.begin(), names.end());
    std::string out;
    for (const std::string &n : names) out += (out.empty() ? "" : " ") + n;
    return out;
}

} // namespace bg

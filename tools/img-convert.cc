// tools/img-convert.cc -- "blockgraph img convert", "commit" and "rebase",
// the subcommands that move data; all three run on the copy engine
// (block/copy.h).
#include <algorithm>
#include <cinttypes>
#include <cstring>

#include "block/block-driver.h"
#include "block/copy.h"
#include "qapi/block-parse.h"
#include "qapi/size.h"
#include "tools/img.h"
#include "util/aio.h"
#include "util/iothread.h"

#include <thread>

namespace bg {
namespace img {

using json = nlohmann::json;

namespace {

enum { kOptImageOpts = 256, kOptTargetImageOpts, kOptTargetIsZero, kOptForceShare, kOptSalvage, kOptBitmaps,
       kOptSkipBroken };

constexpr int64_t kMaxSparse = 16 << 20;

// Directory of base joined with a relative name (QEMU's path_combine).
std::string combine_with_dir(const std::string &base, const std::string &name)
{
    if (name.empty() || name[0] == '/') return name;
    size_t slash = base.rfind('/');
    if (slash == std::string::npos) return name;
    return base.substr(0, slash + 1) + name;
}

// Cluster size of a node (the copy alignment), or 0 when it has none.
int64_t node_cluster_size(BlockNode *n)
{
    Result<ImageInfo> ii = n->get_info();
    if (ii && ii.value().cluster_size) return static_cast<int64_t>(*ii.value().cluster_size);
    return 0;
}

// Progress callback for the copy engine.
std::function<void(const CopyProgress &)> progress_fn(Progress *p)
{
    if (!p->active()) return nullptr;
    return [p](const CopyProgress &cp) {
        p->update(cp.total > 0 ? static_cast<double>(cp.done) / static_cast<double>(cp.total) : 1.0, cp.done);
    };
}

int flush_backend(BlockBackend *blk, const std::string &name)
{
    int r = run_in_coroutine([&]() { return blk->co_flush(); });
    if (r < 0) {
        error("Could not flush '%s': %s", name.c_str(), std::strerror(-r));
        return 1;
    }
    return 0;
}

} // namespace

// ---------------------------------------------------------------- convert

int img_convert(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"target-image-opts", no_argument, nullptr, kOptTargetImageOpts},
        {"target-is-zero", no_argument, nullptr, kOptTargetIsZero},
        {"force-share", no_argument, nullptr, 'U'},
        {"salvage", no_argument, nullptr, kOptSalvage},
        {"bitmaps", no_argument, nullptr, kOptBitmaps},
        {"skip-broken-bitmaps", no_argument, nullptr, kOptSkipBroken},
        {nullptr, 0, nullptr, 0},
    };
    std::string src_fmt, out_fmt = "raw", cache = "writeback", src_cache = "writeback";
    std::optional<SnapshotSpec> snapshot;
    uint64_t rate_limit = 0;
    bool salvage = false, bitmaps = false, skip_broken = false;
    std::optional<std::string> backing, backing_fmt;
    CreateOptions copts;
    bool compress = false, progress = false, skip_create = false, out_of_order = false, image_opts = false,
         target_image_opts = false, target_is_zero = false, force_share = false, have_opts = false;
    int64_t sparse = 4096, workers = 8;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:B:F:co:l:S:pt:T:qnm:WUr:C", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': src_fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'B': backing = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'c': compress = true; break;
        case 'o': {
            Status s = copts.parse_append(optarg);
            if (!s) {
                error("%s", s.msg().c_str());
                return 1;
            }
            have_opts = true;
            break;
        }
        case 'S': {
            Result<uint64_t> r = parse_size(optarg);
            if (!r || r.value() % 512 || r.value() > static_cast<uint64_t>(kMaxSparse)) {
                error("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to "
                      "16777216. Select 0 to disable sparse detection (fully allocates output).");
                return 1;
            }
            sparse = static_cast<int64_t>(r.value());
            break;
        }
        case 'p': progress = true; break;
        case 't': cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'q': g_quiet = true; break;
        case 'n': skip_create = true; break;
        case 'm':
            if (!parse_int(optarg, 1, kCopyMaxWorkers, &workers)) {
                error("Invalid number of coroutines. Allowed number of coroutines is between 1 and %d",
                      kCopyMaxWorkers);
                return 1;
            }
            break;
        case 'W': out_of_order = true; break;
        case 'U': force_share = true; break;
        case 'l':
            if (!parse_snapshot_param(optarg, &snapshot)) return 1;
            break;
        case 'r':
            if (!parse_rate_limit(optarg, &rate_limit)) return 1;
            break;
        case kOptSalvage: salvage = true; break;
        case kOptBitmaps: bitmaps = true; break;
        case kOptSkipBroken: skip_broken = true; break;
        case 'C': error("option -%c is not supported by %s convert", c, kProg); return 1;
        case kOptImageOpts: image_opts = true; break;
        case kOptTargetImageOpts: target_image_opts = true; break;
        case kOptTargetIsZero: target_is_zero = true; break;
        default: return bad_option(argc, argv, "fOBFolSptTmr");
        }
    }
    if (g_quiet) progress = false;
    if (copts.has("help")) return print_create_options_help(out_fmt);
    if (argc - optind < 2) return usage_error("Must specify image file name");
    if (target_image_opts && !skip_create) {
        error("--target-image-opts requires use of -n flag");
        return 1;
    }
    if (target_is_zero && !skip_create) {
        error("--target-is-zero requires use of -n flag");
        return 1;
    }
    if (skip_create && backing) {
        error("-B cannot be used together with -n");
        return 1;
    }
    if (backing_fmt && !backing) {
        error("The -F option requires -B");
        return 1;
    }
    if (skip_broken && !bitmaps) {
        error("Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    {
        Result<CacheMode> r1 = parse_cache_mode(cache);
        if (!r1) {
            error("Invalid cache option: %s", cache.c_str());
            return 1;
        }
        Result<CacheMode> r2 = parse_cache_mode(src_cache);
        if (!r2) {
            error("Invalid source cache option: %s", src_cache.c_str());
            return 1;
        }
    }
    // A backing file given as -o backing_file=... counts as -B (qemu-img).
    if (!backing && copts.get("backing_file") && !copts.get("backing_file")->empty()) {
        backing = *copts.get("backing_file");
        copts.erase("backing_file");
        if (!backing_fmt && copts.get("backing_fmt")) backing_fmt = *copts.get("backing_fmt");
        copts.erase("backing_fmt");
    }
    const std::string out_name = argv[argc - 1];
    std::vector<std::string> src_names(argv + optind, argv + argc - 1);

    // Sources.
    std::vector<std::unique_ptr<OpenImage>> srcs;
    int64_t total = 0;
    auto src_args = [&](const std::string &n) {
        OpenArgs oa;
        oa.name = n;
        oa.format = src_fmt;
        oa.image_opts = image_opts;
        oa.force_share = force_share;
        oa.cache = src_cache;
        return oa;
    };
    for (const std::string &n : src_names) {
        std::unique_ptr<OpenImage> img = open_img(src_args(n));
        if (!img) return 1;
        int64_t len = img->blk->getlength();
        if (len < 0) {
            error("Could not get size of %s: %s", n.c_str(), std::strerror(static_cast<int>(-len)));
            return 1;
        }
        total += len;
        srcs.push_back(std::move(img));
    }
    if (snapshot) {
        // -l: the source again, as a read-only view of the snapshot.
        if (srcs.size() > 1) {
            error("No support for concatenating multiple snapshot");
            return 1;
        }
        srcs.clear();
        std::unique_ptr<OpenImage> img = open_img_snapshot(src_args(src_names[0]), *snapshot);
        if (!img) return 1;
        total = img->blk->getlength();
        srcs.push_back(std::move(img));
    }

    const BlockDriver *drv = builtin_drivers().find(out_fmt);
    if (!target_image_opts && (!drv || drv->kind == BlockDriverKind::kFilter)) {
        error("Unknown file format '%s'", out_fmt.c_str());
        return 1;
    }
    // --bitmaps: checked before anything is created; copied after the data.
    std::vector<PersistentBitmapInfo> src_bitmaps;
    std::vector<DirtyBitmapData> src_bitmap_data;
    if (bitmaps) {
        if (srcs.size() > 1) {
            error("Copying bitmaps only possible with single source");
            return 1;
        }
        const std::optional<std::string> compat = copts.get("compat");
        if (out_fmt != "qcow2" || (compat && (*compat == "0.10" || *compat == "v2"))) {
            error("Format driver '%s' does not support bitmaps", out_fmt.c_str());
            return 1;
        }
        Result<std::vector<PersistentBitmapInfo>> l = srcs[0]->root->persistent_bitmaps();
        if (!l) {
            if (l.err() == ENOTSUP) error("Source lacks bitmap support");
            else error("%s", l.msg().c_str());
            return 1;
        }
        src_bitmaps = std::move(l.value());
        for (auto it = src_bitmaps.begin(); it != src_bitmaps.end();) {
            if (std::find(it->flags.begin(), it->flags.end(), "in-use") == it->flags.end()) {
                ++it;
                continue;
            }
            if (!skip_broken) {
                error("Cannot copy inconsistent bitmap '%s'; try --skip-broken-bitmaps, or use 'bitmap --remove' "
                      "to delete it",
                      it->name.c_str());
                return 1;
            }
            if (!g_quiet) error("warning: Skipping inconsistent bitmap '%s'", it->name.c_str());
            it = src_bitmaps.erase(it);
        }
        // Their bits, read now: a bitmap we cannot read fails the command
        // before anything is created.
        for (const PersistentBitmapInfo &b : src_bitmaps) {
            Result<DirtyBitmapData> d = srcs[0]->root->bitmap_data(b.name);
            if (!d) {
                error("Failed to read bitmap %s: %s", b.name.c_str(), d.msg().c_str());
                return 1;
            }
            src_bitmap_data.push_back(std::move(d.value()));
        }
    }
    if (compress && drv && !(drv->caps & kCapWriteCompressed)) {
        error("Compression not supported for this file format");
        return 1;
    }

    // Target.
    if (!skip_create) {
        ImgCreateParams p;
        p.fmt = out_fmt;
        p.filename = out_name;
        p.opts = copts;
        p.opts.set("size", std::to_string(total));
        p.backing_file = backing;
        p.backing_fmt = backing_fmt;
        Status s = bg::img_create(builtin_drivers(), p);
        if (!s) {
            std::string m = s.msg();
            std::replace(m.begin(), m.end(), '\n', ' ');
            error("%s: %s", out_name.c_str(), m.c_str());
            return 1;
        }
    } else if (have_opts) {
        error("-o has no effect when skipping image creation");
        return 1;
    }
    OpenArgs ta;
    ta.name = out_name;
    ta.image_opts = target_image_opts;
    ta.format = target_image_opts ? "" : out_fmt;
    ta.read_only = false;
    ta.cache = cache;
    std::unique_ptr<OpenImage> dst = open_img(ta);
    if (!dst) return 1;
    if (compress && !(dst->root->driver()->caps & kCapWriteCompressed)) {
        error("Compression not supported for this file format");
        return 1;
    }
    if (bitmaps && !dst->root->persistent_bitmaps()) {
        // (-n into a target that cannot store bitmaps: found before the copy.)
        error("Format driver '%s' does not support bitmaps", dst->root->driver_name());
        return 1;
    }
    if (skip_create && dst->blk->getlength() < total) {
        error("Output image is too small (%" PRId64 " bytes for %" PRId64 " bytes of input)",
              dst->blk->getlength(), total);
        return 1;
    }

    std::vector<CopySource> sources;
    for (size_t i = 0; i < srcs.size(); i++) {
        CopySource s;
        s.blk = srcs[i]->blk.get();
        s.top_only = backing.has_value();
        s.name = src_names[i];
        sources.push_back(s);
    }
    CopyOptions co;
    co.max_workers = static_cast<int>(workers);
    co.out_of_order = out_of_order;
    co.sparse_size = sparse;
    co.compress = compress;
    co.dest_is_zero = skip_create ? target_is_zero : !backing.has_value();
    co.rate_limit = rate_limit;
    co.salvage = salvage;
    co.salvaged = [](int64_t off, int err) {
        if (!g_quiet) error("warning: error while reading offset %" PRId64 ": %s", off, std::strerror(err));
    };
    int64_t cluster = node_cluster_size(dst->root);
    if (cluster > 0) co.alignment = cluster;
    if (compress) {
        if (cluster <= 0) {
            error("Compression not supported for this file format");
            return 1;
        }
        co.chunk_size = cluster;
    }
    // Compression is CPU work done inside the format driver's write: each
    // worker runs in an iothread of its own, so that every core compresses
    // (at least one thread per core; as many as workers, like a thread pool
    // with one job per request, so a loaded machine does not starve us).
    std::vector<std::unique_ptr<IoThread>> iothreads;
    if (compress) {
        unsigned n = std::max({1u, std::thread::hardware_concurrency(), static_cast<unsigned>(workers)});
        for (unsigned i = 0; i < n; i++) {
            Result<std::unique_ptr<IoThread>> t = IoThread::create("convert-" + std::to_string(i));
            if (!t) {
                error("%s", t.msg().c_str());
                return 1;
            }
            co.contexts.push_back(t.value()->ctx());
            iothreads.push_back(std::move(t.value()));
        }
    }
    Progress prog(progress);
    prog.update(0);
    co.progress = progress_fn(&prog);
    Result<CopyStats> r = copy_sync(sources, dst->blk.get(), co);
    iothreads.clear();
    if (!r) {
        error("%s", r.msg().c_str());
        return 1;
    }
    prog.finish();
    if (bitmaps) {
        // Each bitmap: created with the source's granularity and state, then
        // its bits merged in; stored (and checked) before the image closes.
        for (size_t i = 0; i < src_bitmaps.size(); i++) {
            const PersistentBitmapInfo &b = src_bitmaps[i];
            BitmapChange add;
            add.name = b.name;
            add.granularity = b.granularity;
            add.disabled = !src_bitmap_data[i].enabled;
            Status s = dst->root->bitmap_change(add);
            if (s) {
                BitmapChange merge;
                merge.kind = BitmapChange::Kind::kMerge;
                merge.name = b.name;
                merge.source = std::move(src_bitmap_data[i]);
                s = dst->root->bitmap_change(merge);
            }
            if (!s) {
                error("Failed to populate bitmap %s: %s", b.name.c_str(), s.msg().c_str());
                return 1;
            }
        }
        if (int r = flush_backend(dst->blk.get(), out_name)) return r;
        Status s = dst->root->inactivate();
        if (!s) {
            error("%s", s.msg().c_str());
            return 1;
        }
        return 0;
    }
    return flush_backend(dst->blk.get(), out_name);
}

// ---------------------------------------------------------------- commit

namespace {

// Options of one level of a backing chain, rebuilt from the open nodes: the
// node's own options (dump_options(), every child a node-name reference),
// without its node name and read-only as read_only says, each child
// reference replaced by that child rebuilt the same way (a backing child
// always read-only) -- down to, not including, stop, whose reference
// becomes stop_ref.
json chain_tree(BlockNode *n, BlockNode *stop, const std::string &stop_ref, bool read_only)
{
    json j = blockdev_options_to_json(n->dump_options());
    j.erase("node-name");
    j["read-only"] = read_only;
    for (BdrvChild *c : n->children()) {
        auto ref = j.find(c->name());
        if (ref == j.end() || !ref->is_string()) continue;   // not given by reference
        if (c->node() == stop) {
            *ref = stop_ref;
        } else {
            *ref = chain_tree(c->node(), stop, stop_ref, read_only || c == n->backing_child());
        }
    }
    return j;
}

} // namespace

int img_commit(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs oa;
    std::optional<std::string> base_name;
    bool progress = false;
    bool drop = false;   // -d: leave the top image as it is
    uint64_t rate_limit = 0;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 't': oa.cache = optarg; break;
        case 'b':
            base_name = optarg;
            drop = true;          // -b implies -d, as in qemu-img
            break;
        case 'd': drop = true; break;
        case 'p': progress = true; break;
        case 'q': g_quiet = true; break;
        case 'r':
            if (!parse_rate_limit(optarg, &rate_limit)) return 1;
            break;
        case kOptImageOpts: oa.image_opts = true; break;
        default: return bad_option(argc, argv, "ftbr");
        }
    }
    if (g_quiet) progress = false;
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    oa.name = argv[optind];

    // 1. Look at the chain (read-only) to find the base.
    json top_tree, base_tree;
    std::string base_file;
    {
        OpenArgs probe = oa;
        probe.read_only = true;
        std::unique_ptr<OpenImage> img = open_img(probe);
        if (!img) return 1;
        BlockNode *top = img->root;
        BdrvChild *b = top->backing_child();
        if (!b) {
            error("Image does not have a backing file");
            return 1;
        }
        BlockNode *base = nullptr;
        if (!base_name) {
            base = b->node();
        } else {
            std::string want = combine_with_dir(oa.name, *base_name);
            for (BlockNode *n = b->node(); n; n = n->backing_child() ? n->backing_child()->node() : nullptr) {
                std::string f = n->filename();
                if (f == *base_name || f == want) {
                    base = n;
                    break;
                }
                char *r1 = realpath(f.c_str(), nullptr), *r2 = realpath(want.c_str(), nullptr);
                bool same = r1 && r2 && std::strcmp(r1, r2) == 0;
                std::free(r1);
                std::free(r2);
                if (same) {
                    base = n;
                    break;
                }
            }
            if (!base) {
                error("Did not find '%s' in the backing chain of '%s'", base_name->c_str(), oa.name.c_str());
                return 1;
            }
        }
        base_file = base->filename();
        top_tree = chain_tree(top, base, "commit-base", true);
        base_tree = chain_tree(base, nullptr, "", false);
        base_tree["node-name"] = "commit-base";
    }

    // 2. One graph: the base writable (its own node), the chain above it
    // read-only and pointing at it.
    Result<CacheMode> cm = parse_cache_mode(oa.cache);
    if (!cm) {
        error("%s", cm.msg().c_str());
        return 1;
    }
    auto graph = std::make_unique<BlockGraph>();
    for (json *t : {&base_tree, &top_tree}) {
        (*t)["cache"] = {{"direct", cm.value().direct}, {"no-flush", cm.value().no_flush}};
    }
    Result<BlockdevOptions> bo = blockdev_options_from_tree(base_tree, false);
    if (!bo) {
        error("%s", bo.msg().c_str());
        return 1;
    }
    Result<BlockNode *> base = graph->add_node(bo.value());
    if (!base) {
        error("%s", open_error_message(base_file, base.error()).c_str());
        return 1;
    }
    Result<BlockdevOptions> to = blockdev_options_from_tree(top_tree, false);
    if (!to) {
        error("%s", to.msg().c_str());
        return 1;
    }
    Result<BlockNode *> top = graph->add_node(to.value());
    if (!top) {
        error("%s", open_error_message(oa.name, top.error()).c_str());
        return 1;
    }
    Result<std::unique_ptr<BlockBackend>> src =
        BlockBackend::create(top.value(), kPermConsistentRead, kPermAll, kProg);
    if (!src) {
        error("%s", open_error_message(oa.name, src.error()).c_str());
        return 1;
    }
    Result<std::unique_ptr<BlockBackend>> dst = BlockBackend::create(
        base.value(), kPermConsistentRead | kPermWrite | kPermResize, kPermConsistentRead | kPermWriteUnchanged, kProg);
    if (!dst) {
        error("%s", open_error_message(base_file, dst.error()).c_str());
        return 1;
    }

    // 3. Grow the base to the top's size, copy, empty the top.
    int64_t top_len = src.value()->getlength();
    if (dst.value()->getlength() < top_len) {
        BlockBackend *d = dst.value().get();
        int r = run_in_coroutine([&]() { return d->co_truncate(top_len, false, PreallocMode::kOff); });
        if (r < 0) {
            error("Could not resize '%s' to %" PRId64 " bytes: %s", base_file.c_str(), top_len, std::strerror(-r));
            return 1;
        }
    }
    CopySource s;
    s.blk = src.value().get();
    s.base = base.value();
    s.name = oa.name;
    CopyOptions co;
    co.dest_is_zero = false;
    co.rate_limit = rate_limit;
    int64_t cluster = node_cluster_size(base.value());
    if (cluster > 0) co.alignment = cluster;
    Progress prog(progress);
    prog.update(0);
    co.progress = progress_fn(&prog);
    Result<CopyStats> r = copy_sync({s}, dst.value().get(), co);
    if (!r) {
        error("%s", r.msg().c_str());
        return 1;
    }
    if (flush_backend(dst.value().get(), base_file)) return 1;
    // Like qemu-img: unless -d (or -b), the top image is then emptied: its
    // clusters become unallocated and reads fall through to the base. The
    // copy's graph (the top read-only) is closed first; the top is opened
    // again, writable, on its own.
    if (!drop) {
        src.value().reset();
        dst.value().reset();
        graph.reset();
        OpenArgs rw = oa;
        rw.read_only = false;
        std::unique_ptr<OpenImage> img = open_img(rw);
        if (!img) return 1;
        Status e = img->root->make_empty();
        if (!e) {
            error("Image empty failed: %s", e.msg().c_str());
            return 1;
        }
    }
    prog.finish();
    qprintf("Image committed.\n");
    return 0;
}

// ---------------------------------------------------------------- rebase

int img_rebase(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs oa;
    oa.read_only = false;
    std::optional<std::string> new_backing, new_fmt;
    std::string src_cache = "writeback";
    bool unsafe = false, progress = false, force_share = false;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 'F': new_fmt = optarg; break;
        case 'b': new_backing = optarg; break;
        case 'u': unsafe = true; break;
        case 'p': progress = true; break;
        case 't': oa.cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'q': g_quiet = true; break;
        case 'U': force_share = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        default: return bad_option(argc, argv, "fFbtT");
        }
    }
    if (g_quiet) progress = false;
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    if (!new_backing) return usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
    oa.name = argv[optind];
    if (unsafe) oa.no_backing = true;
    if (new_backing->empty()) new_fmt.reset();

    std::unique_ptr<OpenImage> img = open_img(oa);
    if (!img) return 1;
    BlockNode *top = img->root;

    // The new backing file, for safe mode: opened read-only as the image
    // will name it (relative to the image's directory).
    std::unique_ptr<OpenImage> nb;
    if (!unsafe) {
        if (!new_backing->empty()) {
            OpenArgs ba;
            ba.name = combine_with_dir(top->filename(), *new_backing);
            ba.format = new_fmt.value_or("");
            ba.force_share = force_share;
            ba.cache = src_cache;
            nb = open_img(ba);
            if (!nb) return 1;
            if (!new_fmt) new_fmt = nb->root->driver_name();
        }
        // Old backing data becomes the overlay's where it differs from the new.
        BdrvChild *old = top->backing_child();
        int64_t len = img->blk->getlength();
        std::unique_ptr<BlockBackend> old_blk;
        if (old) {
            Result<std::unique_ptr<BlockBackend>> ob =
                BlockBackend::create(old->node(), kPermConsistentRead, kPermAll, kProg);
            if (!ob) {
                error("%s", ob.msg().c_str());
                return 1;
            }
            old_blk = std::move(ob.value());
        }
        // Without a new backing file the overlay must hold every non-zero byte.
        std::unique_ptr<BlockGraph> zgraph;
        std::unique_ptr<BlockBackend> zero_blk;
        BlockBackend *diff = nb ? nb->blk.get() : nullptr;
        if (!diff) {
            zgraph = std::make_unique<BlockGraph>();
            BlockdevOptions zo;
            zo.driver = "null-co";
            BlockdevOptionsNull no;
            no.size = static_cast<uint64_t>(len);
            zo.opts = no;
            Result<BlockNode *> zn = zgraph->add_node(zo);
            if (!zn) {
                error("%s", zn.msg().c_str());
                return 1;
            }
            Result<std::unique_ptr<BlockBackend>> zb =
                BlockBackend::create(zn.value(), kPermConsistentRead, kPermAll, kProg);
            if (!zb) {
                error("%s", zb.msg().c_str());
                return 1;
            }
            zero_blk = std::move(zb.value());
            diff = zero_blk.get();
        }
        if (old_blk) {
            CopySource s;
            s.blk = old_blk.get();
            s.length = len;
            s.name = old->node()->filename();
            CopyOptions co;
            co.dest_is_zero = false;
            co.skip_allocated_in = top;
            co.diff_against = diff;
            co.sparse_size = 0;
            int64_t cluster = node_cluster_size(top);
            if (cluster > 0) co.alignment = cluster;
            Progress prog(progress);
            prog.update(0);
            co.progress = progress_fn(&prog);
            Result<CopyStats> r = copy_sync({s}, img->blk.get(), co);
            if (!r) {
                error("%s", r.msg().c_str());
                return 1;
            }
            prog.finish();
        }
    }

    // Record the new backing file in the image.
    CreateOptions ao;
    ao.set("backing_file", *new_backing);
    ao.set("backing_fmt", new_fmt.value_or(""));
    Status s = top->amend(ao, false, nullptr);
    if (!s) {
        error("Could not change the backing file to '%s': %s", new_backing->c_str(), s.msg().c_str());
        return 1;
    }
    return flush_backend(img->blk.get(), oa.name);
}

} // namespace img
} // namespace bg

// tools/img-convert.cc -- "blockgraph img convert", "commit" and "rebase",
// the subcommands that move data; all three run on the copy engine
// (block/copy.h).
#include <algorithm>
#include <cinttypes>
#include <cstring>

#include "block/block.h"
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
    if (name.empty() || name[0] == '/' || filename_has_protocol(name)) return name;
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

namespace {

// What the convert command line asks for.
struct ConvertOptions {
    std::string src_fmt, out_fmt = "raw", cache = "writeback", src_cache = "writeback";
    std::optional<SnapshotSpec> snapshot;
    uint64_t rate_limit = 0;
    bool salvage = false, bitmaps = false, skip_broken = false;
    bool copy_offload = false;   // -C
    bool sparse_given = false;   // -S (any value)
    std::optional<std::string> backing, backing_fmt;
    CreateOptions copts;
    bool compress = false, progress = false, skip_create = false, out_of_order = false, image_opts = false,
         target_image_opts = false, target_is_zero = false, force_share = false, have_opts = false;
    int64_t sparse = 4096, workers = 8;
    std::string out_name;
    std::vector<std::string> src_names;
};

// The getopt loop of convert. Returns -1 to go on, or the exit status
// (1 after printing the error).
int parse_convert_opts(int argc, char **argv, ConvertOptions *o)
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
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:B:F:co:l:S:pt:T:qnm:WUr:C", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': o->src_fmt = optarg; break;
        case 'O': o->out_fmt = optarg; break;
        case 'B': o->backing = optarg; break;
        case 'F': o->backing_fmt = optarg; break;
        case 'c': o->compress = true; break;
        case 'o': {
            Status s = o->copts.parse_append(optarg);
            if (!s) {
                error("%s", s.msg().c_str());
                return 1;
            }
            o->have_opts = true;
            break;
        }
        case 'S': {
            Result<int64_t> r = parse_img_number(optarg, "buffer size for sparse output", 0, INT64_MAX);
            if (!r) {
                error("%s", r.msg().c_str());
                return 1;
            }
            if (r.value() % 512 || r.value() > kMaxSparse) {
                error("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to "
                      "16777216. Select 0 to disable sparse detection (fully allocates output).");
                return 1;
            }
            o->sparse = static_cast<int64_t>(r.value());
            o->sparse_given = true;
            break;
        }
        case 'p': o->progress = true; break;
        case 't': o->cache = optarg; break;
        case 'T': o->src_cache = optarg; break;
        case 'q': g_quiet = true; break;
        case 'n': o->skip_create = true; break;
        case 'm':
            if (!parse_int(optarg, 1, kCopyMaxWorkers, &o->workers)) {
                error("Invalid number of coroutines. Allowed number of coroutines is between 1 and %d",
                      kCopyMaxWorkers);
                return 1;
            }
            break;
        case 'W': o->out_of_order = true; break;
        case 'U': o->force_share = true; break;
        case 'l':
            if (!parse_snapshot_param(optarg, &o->snapshot)) return 1;
            break;
        case 'r':
            if (!parse_rate_limit(optarg, &o->rate_limit)) return 1;
            break;
        case kOptSalvage: o->salvage = true; break;
        case kOptBitmaps: o->bitmaps = true; break;
        case kOptSkipBroken: o->skip_broken = true; break;
        case 'C': o->copy_offload = true; break;
        case kOptImageOpts: o->image_opts = true; break;
        case kOptTargetImageOpts: o->target_image_opts = true; break;
        case kOptTargetIsZero: o->target_is_zero = true; break;
        default: return bad_option(argc, argv, "fOBFolSptTmr");
        }
    }
    return -1;
}

// Parses convert's arguments and checks how they combine. Returns -1 to go
// on, or the exit status (0 after "-o help", 1 after printing the error).
int parse_convert_args(int argc, char **argv, ConvertOptions *o)
{
    int status = parse_convert_opts(argc, argv, o);
    if (status >= 0) return status;
    // -C: copy offloading copies what the source allocates as it is, so
    // it excludes what rewrites or inspects the data (qemu-img's checks,
    // in its order, before any other).
    if (o->copy_offload) {
        const char *why = o->compress ? "Cannot enable copy offloading when -c is used"
                          : o->sparse_given ? "Cannot enable copy offloading when -S is used"
                          : o->salvage ? "Cannot use copy offloading in salvaging mode"
                                       : nullptr;
        if (why) {
            error("%s", why);
            return 1;
        }
    }
    if (g_quiet) o->progress = false;
    if (o->copts.has("help")) return print_create_options_help(o->out_fmt);
    if (argc - optind < 2) return usage_error("Must specify image file name");
    if (o->target_image_opts && !o->skip_create) {
        error("--target-image-opts requires use of -n flag");
        return 1;
    }
    if (o->target_is_zero && !o->skip_create) {
        error("--target-is-zero requires use of -n flag");
        return 1;
    }
    if (o->skip_create && o->backing) {
        error("-B cannot be used together with -n");
        return 1;
    }
    if (o->backing_fmt && !o->backing) {
        error("The -F option requires -B");
        return 1;
    }
    if (o->skip_broken && !o->bitmaps) {
        error("Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    if (!parse_cache_mode(o->cache)) {
        error("Invalid cache option: %s", o->cache.c_str());
        return 1;
    }
    if (!parse_cache_mode(o->src_cache)) {
        error("Invalid source cache option: %s", o->src_cache.c_str());
        return 1;
    }
    // A backing file given as -o backing_file=... counts as -B (qemu-img).
    CreateOptions &copts = o->copts;
    if (!o->backing && copts.get("backing_file") && !copts.get("backing_file")->empty()) {
        o->backing = *copts.get("backing_file");
        copts.erase("backing_file");
        if (!o->backing_fmt && copts.get("backing_fmt")) o->backing_fmt = *copts.get("backing_fmt");
        copts.erase("backing_fmt");
    }
    o->out_name = argv[argc - 1];
    o->src_names.assign(argv + optind, argv + argc - 1);
    return -1;
}

// Opens the sources (or with -l the one source's snapshot) and adds up their
// lengths. false after printing the error.
bool open_convert_sources(const ConvertOptions &o, std::vector<std::unique_ptr<OpenImage>> *srcs, int64_t *total)
{
    auto src_args = [&](const std::string &n) {
        OpenArgs oa;
        oa.name = n;
        oa.format = o.src_fmt;
        oa.image_opts = o.image_opts;
        oa.force_share = o.force_share;
        oa.cache = o.src_cache;
        return oa;
    };
    *total = 0;
    for (const std::string &n : o.src_names) {
        std::unique_ptr<OpenImage> img = open_img(src_args(n));
        if (!img) return false;
        int64_t len = img->blk->getlength();
        if (len < 0) {
            error("Could not get size of %s: %s", n.c_str(), std::strerror(static_cast<int>(-len)));
            return false;
        }
        *total += len;
        srcs->push_back(std::move(img));
    }
    if (o.snapshot) {
        // -l: the source again, as a read-only view of the snapshot.
        if (srcs->size() > 1) {
            error("No support for concatenating multiple snapshot");
            return false;
        }
        srcs->clear();
        std::unique_ptr<OpenImage> img = open_img_snapshot(src_args(o.src_names[0]), *o.snapshot);
        if (!img) return false;
        *total = img->blk->getlength();
        srcs->push_back(std::move(img));
    }
    return true;
}

// --bitmaps: the source's persistent bitmaps and their bits, read before
// anything is created; copied into the target after the data.
struct SourceBitmaps {
    std::vector<PersistentBitmapInfo> info;
    std::vector<DirtyBitmapData> data;   // one per info entry
};

// Checks that --bitmaps can work (one source, a target format that stores
// bitmaps) and reads the source's bitmaps, skipping inconsistent ones with
// --skip-broken-bitmaps. false after printing the error.
bool read_source_bitmaps(const ConvertOptions &o, const std::vector<std::unique_ptr<OpenImage>> &srcs,
                         SourceBitmaps *out)
{
    const std::string &out_fmt = o.out_fmt;
    if (srcs.size() > 1) {
        error("Copying bitmaps only possible with single source");
        return false;
    }
    const BlockDriver *out_drv = builtin_drivers().find(out_fmt);
    if (!out_drv || !out_drv->stores_bitmaps || !out_drv->stores_bitmaps(o.copts)) {
        error("Format driver '%s' does not support bitmaps", out_fmt.c_str());
        return false;
    }
    Result<std::vector<PersistentBitmapInfo>> l = srcs[0]->root->persistent_bitmaps();
    if (!l) {
        if (l.err() == ENOTSUP) error("Source lacks bitmap support");
        else error("%s", l.msg().c_str());
        return false;
    }
    std::vector<PersistentBitmapInfo> &src_bitmaps = out->info;
    src_bitmaps = std::move(l.value());
    for (auto it = src_bitmaps.begin(); it != src_bitmaps.end();) {
        if (std::find(it->flags.begin(), it->flags.end(), "in-use") == it->flags.end()) {
            ++it;
            continue;
        }
        if (!o.skip_broken) {
            error("Cannot copy inconsistent bitmap '%s'; try --skip-broken-bitmaps, or use 'bitmap --remove' "
                  "to delete it",
                  it->name.c_str());
            return false;
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
            return false;
        }
        out->data.push_back(std::move(d.value()));
    }
    return true;
}

// After a compressed conversion the image file ends on a 512-byte boundary
// (compressed clusters are packed byte by byte), as qemu-img leaves it. A
// failure only leaves the file as it is.
void pad_compressed_target(BlockNode *root)
{
    BdrvChild *f = root ? root->file_child() : nullptr;
    if (!f) return;
    const int64_t len = f->getlength();
    if (len <= 0 || len % 512 == 0) return;
    run_in_coroutine([&] { return f->co_truncate((len + 511) / 512 * 512, false, PreallocMode::kOff); });
}

// Creates the target (unless -n) with the sources' total size and opens it,
// checking that it can take what was asked (compression, bitmaps, size).
// nullptr after printing the error.
std::unique_ptr<OpenImage> create_and_open_target(const ConvertOptions &o, int64_t total)
{
    const std::string &out_name = o.out_name;
    const bool compress = o.compress;
    if (!o.skip_create) {
        // The target's protocol first, as qemu-img checks it (no file name
        // in front of its error).
        Result<nlohmann::json> proto = filename_node_options(out_name);
        if (!proto) {
            error("%s", proto.msg().c_str());
            return nullptr;
        }
        ImgCreateParams p;
        p.fmt = o.out_fmt;
        p.filename = out_name;
        p.opts = o.copts;
        p.opts.set("size", std::to_string(total));
        p.backing_file = o.backing;
        p.backing_fmt = o.backing_fmt;
        Status s = bg::img_create(builtin_drivers(), p);
        if (!s) {
            error("%s: error while converting %s: %s", out_name.c_str(), p.fmt.c_str(),
                  s.error().qemu_text().c_str());
            return nullptr;
        }
    } else if (o.have_opts) {
        error("-o has no effect when skipping image creation");
        return nullptr;
    }
    OpenArgs ta;
    ta.name = out_name;
    ta.image_opts = o.target_image_opts;
    ta.format = o.target_image_opts ? "" : o.out_fmt;
    ta.read_only = false;
    ta.cache = o.cache;
    std::unique_ptr<OpenImage> dst = open_img(ta);
    if (!dst) return nullptr;
    if (compress && !(dst->root->driver()->caps & kCapWriteCompressed)) {
        error("Compression not supported for this file format");
        return nullptr;
    }
    if (o.bitmaps && !dst->root->persistent_bitmaps()) {
        // (-n into a target that cannot store bitmaps: found before the copy.)
        error("Format driver '%s' does not support bitmaps", dst->root->driver_name());
        return nullptr;
    }
    if (o.skip_create && dst->blk->getlength() < total) {
        error("Output image is too small (%" PRId64 " bytes for %" PRId64 " bytes of input)",
              dst->blk->getlength(), total);
        return nullptr;
    }
    return dst;
}

// Copies the sources, concatenated, into dst on the copy engine (with -c in
// iothreads, one per worker or core). false after printing the error.
bool copy_convert_data(const ConvertOptions &o, const std::vector<std::unique_ptr<OpenImage>> &srcs,
                       OpenImage *dst)
{
    std::vector<CopySource> sources;
    for (size_t i = 0; i < srcs.size(); i++) {
        CopySource s;
        s.blk = srcs[i]->blk.get();
        // -B: what the source's own backing chain holds is left to the
        // target's backing file; a source without one reads zeros there,
        // which must then be written (as qemu-img does).
        s.top_only = o.backing.has_value() && srcs[i]->root->backing_child() != nullptr;
        s.name = o.src_names[i];
        sources.push_back(s);
    }
    CopyOptions co;
    co.max_workers = static_cast<int>(o.workers);
    co.out_of_order = o.out_of_order;
    co.sparse_size = o.sparse;
    // -C copies allocated data as it is (no zero detection inside it);
    // ranges the source reports as zero or unallocated are still skipped.
    co.scan_data_for_zeroes = !o.copy_offload;
    co.compress = o.compress;
    // A freshly created image reads as zeros, except where "creating" only
    // opened an existing target (network protocols such as nbd://): there
    // the old contents must be overwritten too.
    const BlockDriver *out_proto = protocol_driver_for(builtin_drivers(), o.out_name);
    bool created_zero = !(out_proto && out_proto->protocol_prefixes);
    co.dest_is_zero = o.skip_create ? o.target_is_zero : !o.backing.has_value() && created_zero;
    co.rate_limit = o.rate_limit;
    co.salvage = o.salvage;
    co.salvaged = [](int64_t off, int err) {
        if (!g_quiet) error("warning: error while reading offset %" PRId64 ": %s", off, std::strerror(err));
    };
    int64_t cluster = node_cluster_size(dst->root);
    if (cluster > 0) co.alignment = cluster;
    if (o.compress) {
        if (cluster <= 0) {
            error("Compression not supported for this file format");
            return false;
        }
        co.chunk_size = cluster;
    }
    // Compression is CPU work done inside the format driver's write: each
    // worker runs in an iothread of its own, so that every core compresses
    // (at least one thread per core; as many as workers, like a thread pool
    // with one job per request, so a loaded machine does not starve us).
    std::vector<std::unique_ptr<IoThread>> iothreads;
    if (o.compress) {
        unsigned n = std::max({1u, std::thread::hardware_concurrency(), static_cast<unsigned>(o.workers)});
        for (unsigned i = 0; i < n; i++) {
            Result<std::unique_ptr<IoThread>> t = IoThread::create("convert-" + std::to_string(i));
            if (!t) {
                error("%s", t.msg().c_str());
                return false;
            }
            co.contexts.push_back(t.value()->ctx());
            iothreads.push_back(std::move(t.value()));
        }
    }
    Progress prog(o.progress);
    prog.update(0);
    co.progress = progress_fn(&prog);
    Result<CopyStats> r = copy_sync(sources, dst->blk.get(), co);
    iothreads.clear();
    if (!r) {
        error("%s", r.msg().c_str());
        return false;
    }
    if (o.compress) pad_compressed_target(dst->root);
    prog.update(1.0);
    prog.finish();
    return true;
}

// --bitmaps after the data: each bitmap created with the source's
// granularity and state, then its bits merged in; stored (and checked) by
// flushing and inactivating the target. Returns the exit status.
int copy_bitmaps(SourceBitmaps *bm, OpenImage *dst, const std::string &out_name)
{
    for (size_t i = 0; i < bm->info.size(); i++) {
        const PersistentBitmapInfo &b = bm->info[i];
        BitmapChange add;
        add.name = b.name;
        add.granularity = b.granularity;
        add.disabled = !bm->data[i].enabled;
        Status s = dst->root->bitmap_change(add);
        if (s) {
            BitmapChange merge;
            merge.kind = BitmapChange::Kind::kMerge;
            merge.name = b.name;
            merge.source = std::move(bm->data[i]);
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

} // namespace

int img_convert(int argc, char **argv)
{
    ConvertOptions o;
    int status = parse_convert_args(argc, argv, &o);
    if (status >= 0) return status;
    const std::string &out_fmt = o.out_fmt;
    const bool compress = o.compress;

    std::vector<std::unique_ptr<OpenImage>> srcs;
    int64_t total = 0;
    if (!open_convert_sources(o, &srcs, &total)) return 1;

    const BlockDriver *drv = builtin_drivers().find(out_fmt);
    if (!o.target_image_opts && (!drv || drv->kind == BlockDriverKind::kFilter)) {
        error("Unknown file format '%s'", out_fmt.c_str());
        return 1;
    }
    SourceBitmaps bitmaps;
    if (o.bitmaps && !read_source_bitmaps(o, srcs, &bitmaps)) return 1;
    if (compress && drv && !(drv->caps & kCapWriteCompressed)) {
        error("Compression not supported for this file format");
        return 1;
    }

    std::unique_ptr<OpenImage> dst = create_and_open_target(o, total);
    if (!dst) return 1;
    if (!copy_convert_data(o, srcs, dst.get())) return 1;
    if (o.bitmaps) return copy_bitmaps(&bitmaps, dst.get(), o.out_name);
    return flush_backend(dst->blk.get(), o.out_name);
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

// What the commit command line asks for.
struct CommitOptions {
    OpenArgs oa;                           // the image
    std::optional<std::string> base_name;  // -b
    bool progress = false;
    bool drop = false;   // -d: leave the top image as it is
    uint64_t rate_limit = 0;
};

// Parses commit's arguments. Returns -1 to go on, or the exit status (1
// after printing the error).
int parse_commit_args(int argc, char **argv, CommitOptions *o)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs &oa = o->oa;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 't': oa.cache = optarg; break;
        case 'b':
            o->base_name = optarg;
            o->drop = true;          // -b implies -d, as in qemu-img
            break;
        case 'd': o->drop = true; break;
        case 'p': o->progress = true; break;
        case 'q': g_quiet = true; break;
        case 'r':
            if (!parse_rate_limit(optarg, &o->rate_limit)) return 1;
            break;
        case kOptImageOpts: oa.image_opts = true; break;
        default: return bad_option(argc, argv, "ftbr");
        }
    }
    if (g_quiet) o->progress = false;
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    oa.name = argv[optind];
    return -1;
}

// The node of the chain below the image (starting at below) that -b names:
// its file name as the chain records it, that name relative to the image's
// directory, or the same file by another path. nullptr if none.
BlockNode *find_commit_base(BlockNode *below, const std::string &image, const std::string &base_name)
{
    std::string want = combine_with_dir(image, base_name);
    for (BlockNode *n = below; n; n = n->backing_child() ? n->backing_child()->node() : nullptr) {
        std::string f = n->filename();
        if (f == base_name || f == want) return n;
        char *r1 = realpath(f.c_str(), nullptr), *r2 = realpath(want.c_str(), nullptr);
        bool same = r1 && r2 && std::strcmp(r1, r2) == 0;
        std::free(r1);
        std::free(r2);
        if (same) return n;
    }
    return nullptr;
}

// The chain to commit, as options to open it again: the base on its own
// (node "commit-base", writable), the levels above it read-only down to a
// reference to the base.
struct CommitChain {
    json top_tree, base_tree;
    std::string base_file;
};

// Step 1: opens the image read-only, finds the base and records the chain.
// false after printing the error.
bool find_commit_chain(const CommitOptions &o, CommitChain *chain)
{
    OpenArgs probe = o.oa;
    probe.read_only = true;
    std::unique_ptr<OpenImage> img = open_img(probe);
    if (!img) return false;
    BlockNode *top = img->root;
    BdrvChild *b = top->backing_child();
    if (!b) {
        error("Image does not have a backing file");
        return false;
    }
    BlockNode *base = b->node();
    if (o.base_name) {
        base = find_commit_base(b->node(), o.oa.name, *o.base_name);
        if (!base) {
            error("Did not find '%s' in the backing chain of '%s'", o.base_name->c_str(), o.oa.name.c_str());
            return false;
        }
    }
    chain->base_file = base->filename();
    chain->top_tree = chain_tree(top, base, "commit-base", true);
    chain->base_tree = chain_tree(base, nullptr, "", false);
    chain->base_tree["node-name"] = "commit-base";
    return true;
}

// The graph the copy runs on, and its two users: src reads the top, dst
// writes the base.
struct CommitGraph {
    std::unique_ptr<BlockGraph> graph;
    BlockNode *base = nullptr;
    std::unique_ptr<BlockBackend> src, dst;
};

// Adds a node described by tree to graph; nullptr after printing the error
// (open errors name name).
BlockNode *add_tree_node(BlockGraph *graph, const json &tree, const std::string &name)
{
    Result<BlockdevOptions> bo = blockdev_options_from_tree(graph->registry(), tree, false);
    if (!bo) {
        error("%s", bo.msg().c_str());
        return nullptr;
    }
    Result<BlockNode *> n = graph->add_node(bo.value());
    if (!n) {
        error("%s", open_error_message(name, n.error()).c_str());
        return nullptr;
    }
    return n.value();
}

// Step 2: one graph, the base writable (its own node), the chain above it
// read-only and pointing at it, both with -t's cache mode. false after
// printing the error.
bool open_commit_graph(const CommitOptions &o, CommitChain *chain, CommitGraph *g)
{
    Result<CacheMode> cm = parse_cache_mode(o.oa.cache);
    if (!cm) {
        error("%s", cm.msg().c_str());
        return false;
    }
    g->graph = std::make_unique<BlockGraph>();
    for (json *t : {&chain->base_tree, &chain->top_tree}) {
        (*t)["cache"] = {{"direct", cm.value().direct}, {"no-flush", cm.value().no_flush}};
    }
    g->base = add_tree_node(g->graph.get(), chain->base_tree, chain->base_file);
    if (!g->base) return false;
    BlockNode *top = add_tree_node(g->graph.get(), chain->top_tree, o.oa.name);
    if (!top) return false;
    Result<std::unique_ptr<BlockBackend>> src = BlockBackend::create(top, kPermConsistentRead, kPermAll, kProg);
    if (!src) {
        error("%s", open_error_message(o.oa.name, src.error()).c_str());
        return false;
    }
    g->src = std::move(src.value());
    Result<std::unique_ptr<BlockBackend>> dst = BlockBackend::create(
        g->base, kPermConsistentRead | kPermWrite | kPermResize, kPermConsistentRead | kPermWriteUnchanged, kProg);
    if (!dst) {
        error("%s", open_error_message(chain->base_file, dst.error()).c_str());
        return false;
    }
    g->dst = std::move(dst.value());
    return true;
}

// Step 3a: grows the base to the top's size. false after printing the error.
bool grow_commit_base(CommitGraph *g, const std::string &base_file)
{
    int64_t top_len = g->src->getlength();
    if (g->dst->getlength() < top_len) {
        BlockBackend *d = g->dst.get();
        int r = run_in_coroutine([&]() { return d->co_truncate(top_len, false, PreallocMode::kOff); });
        if (r < 0) {
            error("Could not resize '%s' to %" PRId64 " bytes: %s", base_file.c_str(), top_len, std::strerror(-r));
            return false;
        }
    }
    return true;
}

// Step 3b: copies what the chain above the base allocates into it, and
// flushes it. false after printing the error.
bool commit_copy(const CommitOptions &o, CommitGraph *g, const std::string &base_file, Progress *prog)
{
    CopySource s;
    s.blk = g->src.get();
    s.base = g->base;
    s.name = o.oa.name;
    CopyOptions co;
    co.dest_is_zero = false;
    co.scan_data_for_zeroes = false;   // QEMU's commit copies allocated data as it is
    co.rate_limit = o.rate_limit;
    int64_t cluster = node_cluster_size(g->base);
    if (cluster > 0) co.alignment = cluster;
    prog->update(0);
    co.progress = progress_fn(prog);
    Result<CopyStats> r = copy_sync({s}, g->dst.get(), co);
    if (!r) {
        error("%s", r.msg().c_str());
        return false;
    }
    return flush_backend(g->dst.get(), base_file) == 0;
}

// Step 4 (without -d): opens the image again, writable and on its own, and
// empties it. false after printing the error.
bool empty_commit_top(const OpenArgs &oa)
{
    OpenArgs rw = oa;
    rw.read_only = false;
    std::unique_ptr<OpenImage> img = open_img(rw);
    if (!img) return false;
    Status e = img->root->make_empty();
    if (!e) {
        error("Image empty failed: %s", e.msg().c_str());
        return false;
    }
    return true;
}

} // namespace

int img_commit(int argc, char **argv)
{
    CommitOptions o;
    int status = parse_commit_args(argc, argv, &o);
    if (status >= 0) return status;
    CommitChain chain;
    if (!find_commit_chain(o, &chain)) return 1;
    CommitGraph g;
    if (!open_commit_graph(o, &chain, &g)) return 1;
    if (!grow_commit_base(&g, chain.base_file)) return 1;
    Progress prog(o.progress);
    if (!commit_copy(o, &g, chain.base_file, &prog)) return 1;
    // Like qemu-img: unless -d (or -b), the top image is then emptied: its
    // clusters become unallocated and reads fall through to the base. The
    // copy's graph (the top read-only) is closed first.
    if (!o.drop) {
        g.src.reset();
        g.dst.reset();
        g.graph.reset();
        if (!empty_commit_top(o.oa)) return 1;
    }
    prog.update(1.0);
    prog.finish();
    qprintf("Image committed.\n");
    return 0;
}

// ---------------------------------------------------------------- rebase

namespace {

// What the rebase command line asks for.
struct RebaseOptions {
    OpenArgs oa;                                    // the image, writable
    std::optional<std::string> new_backing, new_fmt;  // -b, -F
    std::string src_cache = "writeback";            // -T
    bool unsafe = false, progress = false, force_share = false;
};

// Parses rebase's arguments. Returns -1 to go on, or the exit status (1
// after printing the error).
int parse_rebase_args(int argc, char **argv, RebaseOptions *o)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs &oa = o->oa;
    oa.read_only = false;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 'F': o->new_fmt = optarg; break;
        case 'b': o->new_backing = optarg; break;
        case 'u': o->unsafe = true; break;
        case 'p': o->progress = true; break;
        case 't': oa.cache = optarg; break;
        case 'T': o->src_cache = optarg; break;
        case 'q': g_quiet = true; break;
        case 'U': o->force_share = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        default: return bad_option(argc, argv, "fFbtT");
        }
    }
    if (g_quiet) o->progress = false;
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    if (!o->new_backing) return usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
    oa.name = argv[optind];
    if (o->unsafe) oa.no_backing = true;
    if (o->new_backing->empty()) o->new_fmt.reset();
    return -1;
}

// Safe mode, a new backing file given: opens it read-only as the image will
// name it (relative to the image's directory); its format becomes new_fmt
// unless -F gave one. nullptr after printing the error.
std::unique_ptr<OpenImage> open_new_backing(RebaseOptions *o, BlockNode *top)
{
    OpenArgs ba;
    ba.name = combine_with_dir(top->filename(), *o->new_backing);
    ba.format = o->new_fmt.value_or("");
    ba.force_share = o->force_share;
    ba.cache = o->src_cache;
    ba.role = "new backing file";
    std::unique_ptr<OpenImage> nb = open_img(ba);
    if (!nb) return nullptr;
    if (!o->new_fmt) o->new_fmt = nb->root->driver_name();
    return nb;
}

// Safe mode: copies into the image what differs between its old backing
// chain and nb (nullptr: zeros). false after printing the error.
bool copy_backing_diff(OpenImage *img, OpenImage *nb, Progress *prog)
{
    BlockNode *top = img->root;
    BdrvChild *old = top->backing_child();
    int64_t len = img->blk->getlength();
    std::unique_ptr<BlockBackend> old_blk;
    if (old) {
        Result<std::unique_ptr<BlockBackend>> ob =
            BlockBackend::create(old->node(), kPermConsistentRead, kPermAll, kProg);
        if (!ob) {
            error("%s", ob.msg().c_str());
            return false;
        }
        old_blk = std::move(ob.value());
    }
    if (!old_blk) return true;
    CopySource s;
    s.blk = old_blk.get();
    s.length = len;
    s.name = old->node()->filename();
    CopyOptions co;
    co.dest_is_zero = false;
    co.skip_allocated_in = top;
    // Without a new backing file the overlay must hold every non-zero byte.
    co.diff_against = nb ? nb->blk.get() : nullptr;
    co.diff_against_zeros = !nb;
    co.sparse_size = 0;
    int64_t cluster = node_cluster_size(top);
    if (cluster > 0) co.alignment = cluster;
    co.progress = progress_fn(prog);
    Result<CopyStats> r = copy_sync({s}, img->blk.get(), co);
    if (!r) {
        error("%s", r.msg().c_str());
        return false;
    }
    return true;
}

} // namespace

int img_rebase(int argc, char **argv)
{
    RebaseOptions o;
    int status = parse_rebase_args(argc, argv, &o);
    if (status >= 0) return status;

    std::unique_ptr<OpenImage> img = open_img(o.oa);
    if (!img) return 1;
    BlockNode *top = img->root;
    std::unique_ptr<OpenImage> nb;   // the new backing file, safe mode
    Progress prog(o.progress);
    prog.update(0);
    if (!o.unsafe) {
        if (!o.new_backing->empty()) {
            nb = open_new_backing(&o, top);
            if (!nb) return 1;
        }
        if (!copy_backing_diff(img.get(), nb.get(), &prog)) return 1;
    }

    // Record the new backing file in the image.
    CreateOptions ao;
    ao.set("backing_file", *o.new_backing);
    ao.set("backing_fmt", o.new_fmt.value_or(""));
    Status s = top->amend(ao, false, nullptr);
    if (!s) {
        error("Could not change the backing file to '%s': %s", o.new_backing->c_str(), s.msg().c_str());
        return 1;
    }
    prog.update(1.0);
    return flush_backend(img->blk.get(), o.oa.name);
}

} // namespace img
} // namespace bg

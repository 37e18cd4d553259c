// tools/img-map.cc -- "blockgraph img map" and "blockgraph img compare".
#include <algorithm>
#include <cinttypes>
#include <cstring>

#include "block/copy.h"
#include "tools/img.h"
#include "util/aio.h"
#include "util/iov.h"

namespace bg {
namespace img {

namespace {

enum { kOptOutput = 256, kOptImageOpts, kOptForceShare };

struct MapEntry {
    int64_t start = 0;
    int64_t length = 0;
    bool data = false;
    bool zero = false;
    bool compressed = false;
    bool present = false;
    bool has_offset = false;
    int64_t offset = 0;
    int depth = 0;
    std::string filename;   // empty: none
    bool has_filename = false;
};

BlockNode *skip_filters(BlockNode *n)
{
    while (n && n->filtered_child()) n = n->filtered_child()->node();
    return n;
}

// Status of [offset, offset+bytes) walking down the backing chain until a
// layer says data or zero (qemu-img map's rule).
int coroutine_fn get_entry(BlockNode *top, int64_t offset, int64_t bytes, MapEntry *e)
{
    BlockNode *n = top;
    int depth = 0;
    int ret;
    int64_t pnum = bytes, map = 0;
    BlockNode *file = nullptr;
    for (;;) {
        n = skip_filters(n);
        ret = n->co_block_status(true, offset, bytes, &pnum, &map, &file);
        if (ret < 0) return ret;
        if (pnum <= 0) return -EIO;
        bytes = pnum;
        if (ret & (kStatusZero | kStatusData)) break;
        BdrvChild *b = n->backing_child();
        if (!b) {
            ret = 0;
            break;
        }
        if (offset >= b->node()->getlength()) {
            // Past the end of the backing file: zeros, allocated nowhere.
            n = b->node();
            depth++;
            ret = kStatusZero;
            file = nullptr;
            break;
        }
        n = b->node();
        depth++;
    }
    *e = MapEntry{};
    e->start = offset;
    e->length = bytes;
    e->data = ret & kStatusData;
    e->zero = ret & kStatusZero;
    e->compressed = ret & kStatusCompressed;
    e->present = ret & kStatusAllocated;
    e->has_offset = ret & kStatusOffsetValid;
    e->offset = e->has_offset ? map : 0;
    e->depth = depth;
    if (file && e->has_offset) {
        e->filename = file->filename();
        e->has_filename = true;
    }
    return 0;
}

bool mergeable(const MapEntry &a, const MapEntry &b)
{
    if (a.length == 0) return false;
    if (a.zero != b.zero || a.data != b.data || a.compressed != b.compressed || a.depth != b.depth ||
        a.present != b.present || a.has_filename != b.has_filename || a.has_offset != b.has_offset) {
        return false;
    }
    if (a.has_filename && a.filename != b.filename) return false;
    if (a.has_offset && a.offset + a.length != b.offset) return false;
    return true;
}

// Prints one entry; next (if any) is the entry that follows. Returns false
// on a human-format error.
bool dump_entry(OutputFormat fmt, const MapEntry &e, MapEntry *next)
{
    if (fmt == OutputFormat::kHuman) {
        if (e.data && !e.has_offset) {
            error("File contains external, encrypted or compressed clusters.");
            return false;
        }
        if (e.data && !e.zero) {
            std::printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", static_cast<uint64_t>(e.start),
                        static_cast<uint64_t>(e.length), static_cast<uint64_t>(e.has_offset ? e.offset : 0),
                        e.filename.c_str());
        }
        // The human format does not tell zero from unallocated: merge more.
        if (next && (!next->data || next->zero)) {
            next->data = false;
            next->zero = true;
        }
        return true;
    }
    std::printf("{ \"start\": %" PRId64 ", \"length\": %" PRId64 ", \"depth\": %d, \"present\": %s, \"zero\": %s, "
                "\"data\": %s, \"compressed\": %s",
                e.start, e.length, e.depth, e.present ? "true" : "false", e.zero ? "true" : "false",
                e.data ? "true" : "false", e.compressed ? "true" : "false");
    if (e.has_offset) std::printf(", \"offset\": %" PRId64, e.offset);
    std::putchar('}');
    if (next) std::puts(",");
    return true;
}

} // namespace

int img_map(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"format", required_argument, nullptr, 'f'},
        {"output", required_argument, nullptr, kOptOutput},
        {"start-offset", required_argument, nullptr, 's'},
        {"max-length", required_argument, nullptr, 'l'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs oa;
    OutputFormat ofmt = OutputFormat::kHuman;
    int64_t start = 0, max_length = -1;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:hUs:l:", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 'U': oa.force_share = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        case kOptOutput:
            if (!parse_output_format(optarg, &ofmt)) return 1;
            break;
        case 's': {
            Result<int64_t> r = parse_img_number(optarg, "start offset", 0, INT64_MAX);
            if (!r) {
                error("%s", r.msg().c_str());
                return 1;
            }
            start = r.value();
            break;
        }
        case 'l': {
            Result<int64_t> r = parse_img_number(optarg, "max length", 0, INT64_MAX);
            if (!r) {
                error("%s", r.msg().c_str());
                return 1;
            }
            max_length = r.value();
            break;
        }
        default: return bad_option(argc, argv, "fsl");
        }
    }
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    oa.name = argv[optind];
    std::unique_ptr<OpenImage> img = open_img(oa);
    if (!img) return 1;

    int64_t length = img->blk->getlength();
    if (max_length != -1) length = std::min(start + max_length, length);
    if (ofmt == OutputFormat::kHuman) {
        std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    } else {
        std::putchar('[');
    }
    int ret = run_in_coroutine([&]() -> int {
        MapEntry curr;
        curr.start = start;
        while (curr.start + curr.length < length) {
            int64_t off = curr.start + curr.length;
            MapEntry next;
            int r = get_entry(img->root, off, length - off, &next);
            if (r < 0) {
                error("Could not read file metadata: %s", std::strerror(-r));
                return 1;
            }
            if (mergeable(curr, next)) {
                curr.length += next.length;
                continue;
            }
            if (curr.length > 0 && !dump_entry(ofmt, curr, &next)) return 1;
            curr = next;
        }
        if (!dump_entry(ofmt, curr, nullptr)) return 1;
        return 0;
    });
    if (ofmt == OutputFormat::kJson && ret == 0) std::puts("]");
    return ret;
}

// ---------------------------------------------------------------- compare

namespace {

constexpr int64_t kIoBufSize = 2 << 20;

// Index of the first non-zero byte, or -1.
int64_t find_nonzero(const uint8_t *buf, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (buf[i]) return i;
    }
    return -1;
}

// 0 if [offset, offset+bytes) of blk reads as zeros, 1 (after the message)
// if not, 4 on a read error.
int coroutine_fn check_empty(BlockBackend *blk, int64_t offset, int64_t bytes, const std::string &name, uint8_t *buf)
{
    int r = blk->co_pread(offset, bytes, buf);
    if (r < 0) {
        error("Error while reading offset %" PRId64 " of %s: %s", offset, name.c_str(), std::strerror(-r));
        return 4;
    }
    int64_t idx = find_nonzero(buf, bytes);
    if (idx >= 0) {
        qprintf("Content mismatch at offset %" PRId64 "!\n", offset + idx);
        return 1;
    }
    return 0;
}

// What the compare command line asks for.
struct CompareOptions {
    OpenArgs a1, a2;   // the two images
    bool strict = false, progress = false;
};

// Parses compare's arguments. Returns -1 to go on, or the exit status (1
// for a usage error, 2 for a bad -T, after printing the error).
int parse_compare_args(int argc, char **argv, CompareOptions *o)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs &a1 = o->a1, &a2 = o->a2;
    bool image_opts = false, force_share = false;
    std::string cache = "writeback";
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': a1.format = optarg; break;
        case 'F': a2.format = optarg; break;
        case 'T': cache = optarg; break;
        case 'p': o->progress = true; break;
        case 'q': g_quiet = true; break;
        case 's': o->strict = true; break;
        case 'U': force_share = true; break;
        case kOptImageOpts: image_opts = true; break;
        default: return bad_option(argc, argv, "fFT");
        }
    }
    if (g_quiet) o->progress = false;
    if (optind != argc - 2) return usage_error("Expecting two image file names");
    if (!parse_cache_mode(cache)) {
        error("Invalid source cache option: %s", cache.c_str());
        return 2;
    }
    for (OpenArgs *a : {&a1, &a2}) {
        a->image_opts = image_opts;
        a->force_share = force_share;
        a->cache = cache;
    }
    a1.name = argv[optind];
    a2.name = argv[optind + 1];
    return -1;
}

// Two open images being compared (inside the coroutine).
struct Comparison {
    BlockBackend *b1, *b2;
    BlockNode *n1, *n2;
    std::string f1, f2;          // their names, for messages
    int64_t total1, total2;      // their lengths
    int64_t progress_base;       // the larger length (at least 1)
    bool strict;
    Progress *prog;
    AlignedBuf buf1, buf2;       // kIoBufSize each
};

// Reads [offset, offset+chunk) of both images (chunk at most kIoBufSize)
// and compares the bytes. 0 if equal, 1 after the mismatch message, 4 on a
// read error.
int coroutine_fn compare_data(Comparison &c, int64_t offset, int64_t chunk)
{
    int r = c.b1->co_pread(offset, chunk, c.buf1.get());
    if (r < 0) {
        error("Error while reading offset %" PRId64 " of %s: %s", offset, c.f1.c_str(), std::strerror(-r));
        return 4;
    }
    r = c.b2->co_pread(offset, chunk, c.buf2.get());
    if (r < 0) {
        error("Error while reading offset %" PRId64 " of %s: %s", offset, c.f2.c_str(), std::strerror(-r));
        return 4;
    }
    bool same;
    int64_t run = compare_sectors(c.buf1.get(), c.buf2.get(), chunk, &same);
    if (!same || run != chunk) {
        qprintf("Content mismatch at offset %" PRId64 "!\n", offset + (same ? run : 0));
        return 1;
    }
    return 0;
}

// Compares the stretch at offset (below both lengths) that has one block
// status in each image; *chunk_out gets its length. 0 if equal, else the
// exit status after the message: 1 mismatch, 3 block status failure, 4
// read error.
int coroutine_fn compare_chunk(Comparison &c, int64_t offset, int64_t *chunk_out)
{
    int64_t p1 = 0, p2 = 0;
    int s1 = c.n1->co_block_status_above(nullptr, true, offset, c.total1 - offset, &p1, nullptr, nullptr, nullptr);
    if (s1 < 0) {
        error("Sector allocation test failed for %s", c.f1.c_str());
        return 3;
    }
    int s2 = c.n2->co_block_status_above(nullptr, true, offset, c.total2 - offset, &p2, nullptr, nullptr, nullptr);
    if (s2 < 0) {
        error("Sector allocation test failed for %s", c.f2.c_str());
        return 3;
    }
    bool al1 = s1 & kStatusAllocated, al2 = s2 & kStatusAllocated;
    int64_t chunk = std::min(p1, p2);
    if (chunk <= 0) {
        error("Sector allocation test failed for %s", (p1 <= 0 ? c.f1 : c.f2).c_str());
        return 3;
    }
    if (c.strict) {
        // Compare what both layers say, ignoring our internal bits.
        const int kMask = kStatusData | kStatusZero | kStatusAllocated;
        if ((s1 & kMask) != (s2 & kMask)) {
            qprintf("Strict mode: Offset %" PRId64 " block status mismatch!\n", offset);
            return 1;
        }
    }
    *chunk_out = chunk;
    if ((s1 & kStatusZero) && (s2 & kStatusZero)) return 0;   // both zero
    if (al1 == al2) {
        if (!al1) return 0;
        *chunk_out = chunk = std::min(chunk, kIoBufSize);
        return compare_data(c, offset, chunk);
    }
    *chunk_out = chunk = std::min(chunk, kIoBufSize);
    return al1 ? check_empty(c.b1, offset, chunk, c.f1, c.buf1.get())
               : check_empty(c.b2, offset, chunk, c.f2, c.buf1.get());
}

// Past the shorter image's end (at offset): what the longer one allocates
// must read as zeros. 0, or the exit status after the message.
int coroutine_fn compare_tail(Comparison &c, int64_t offset)
{
    BlockBackend *over = c.total1 > c.total2 ? c.b1 : c.b2;
    BlockNode *over_node = c.total1 > c.total2 ? c.n1 : c.n2;
    const std::string &fover = c.total1 > c.total2 ? c.f1 : c.f2;
    int64_t end = std::max(c.total1, c.total2);
    while (offset < end) {
        int64_t chunk = 0;
        int s = over_node->co_block_status_above(nullptr, true, offset, end - offset, &chunk, nullptr, nullptr,
                                                 nullptr);
        if (s < 0 || chunk <= 0) {
            error("Sector allocation test failed for %s", fover.c_str());
            return 3;
        }
        if ((s & kStatusAllocated) && !(s & kStatusZero)) {
            chunk = std::min(chunk, kIoBufSize);
            int r = check_empty(over, offset, chunk, fover, c.buf1.get());
            if (r) return r;
        }
        offset += chunk;
        c.prog->update(static_cast<double>(offset) / static_cast<double>(c.progress_base));
    }
    return 0;
}

// The comparison: the common length stretch by stretch, then the longer
// image's tail. Returns compare's exit status (0 identical, after its
// message).
int coroutine_fn compare_images(Comparison &c)
{
    int64_t total = std::min(c.total1, c.total2);
    c.prog->update(0);
    if (c.strict && c.total1 != c.total2) {
        qprintf("Strict mode: Image size mismatch!\n");
        return 1;
    }
    int64_t offset = 0;
    while (offset < total) {
        int64_t chunk = 0;
        if (int r = compare_chunk(c, offset, &chunk)) return r;
        offset += chunk;
        c.prog->update(static_cast<double>(offset) / static_cast<double>(c.progress_base));
    }
    if (c.total1 != c.total2) {
        qprintf("Warning: Image size mismatch!\n");
        if (int r = compare_tail(c, offset)) return r;
    }
    // (The progress output's newline follows the verdict, as in qemu-img.)
    c.prog->update(1.0);
    qprintf("Images are identical.\n");
    return 0;
}

} // namespace

int img_compare(int argc, char **argv)
{
    CompareOptions o;
    int status = parse_compare_args(argc, argv, &o);
    if (status >= 0) return status;
    std::unique_ptr<OpenImage> i1 = open_img(o.a1);
    if (!i1) return 2;
    std::unique_ptr<OpenImage> i2 = open_img(o.a2);
    if (!i2) return 2;

    Progress prog(o.progress);
    return run_in_coroutine([&]() -> int {
        Comparison c{i1->blk.get(), i2->blk.get(), i1->root, i2->root, o.a1.name, o.a2.name,
                     0, 0, 0, o.strict, &prog, nullptr, nullptr};
        c.total1 = c.b1->getlength();
        c.total2 = c.b2->getlength();
        c.progress_base = std::max<int64_t>(1, std::max(c.total1, c.total2));
        c.buf1 = aligned_alloc_buf(4096, kIoBufSize);
        c.buf2 = aligned_alloc_buf(4096, kIoBufSize);
        return compare_images(c);
    });
}

} // namespace img
} // namespace bg

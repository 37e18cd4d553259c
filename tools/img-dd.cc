// tools/img-dd.cc -- "blockgraph img dd": copies a range of an image into
// a new image, block by block, with dd's operand syntax (see docs/img.md).
//
// Threading: main thread, inside the dispatcher's AioContext (img.h).
#include <algorithm>
#include <cinttypes>
#include <climits>
#include <cstring>
#include <vector>

#include "block/block.h"
#include "block/image-mgmt.h"
#include "tools/img.h"
#include "util/aio.h"

namespace bg {
namespace img {

namespace {

enum { kOptImageOpts = 256 };

// The largest single read or write; a bigger bs is copied in pieces of this
// size (the result is the same: the copy is sequential).
constexpr int64_t kMaxDdChunk = 4 << 20;

// What the dd command line asks for.
struct DdOptions {
    std::string in_fmt, out_fmt = "raw";
    bool image_opts = false, force_share = false;
    std::optional<std::string> in_name, out_name;
    int64_t bs = 512;
    std::optional<int64_t> count, skip;
};

// One NAME=VALUE operand into o. false after printing the error.
bool parse_dd_operand(const char *arg, DdOptions *o)
{
    const char *eq = std::strchr(arg, '=');
    if (!eq) {
        error("unrecognized operand %s", arg);
        return false;
    }
    const std::string name(arg, static_cast<size_t>(eq - arg));
    const std::string value(eq + 1);
    auto number = [&](const char *what, int64_t min, int64_t max, int64_t *out) {
        Result<int64_t> r = parse_img_number(value, what, min, max);
        if (!r) {
            error("%s", r.msg().c_str());
            return false;
        }
        *out = r.value();
        return true;
    };
    int64_t v = 0;
    if (name == "bs") return number("bs", 1, INT_MAX, &o->bs);
    if (name == "count") {
        if (!number("count", 0, INT64_MAX, &v)) return false;
        o->count = v;
        return true;
    }
    if (name == "skip") {
        if (!number("skip", 0, INT64_MAX, &v)) return false;
        o->skip = v;
        return true;
    }
    if (name == "if") {
        o->in_name = value;
        return true;
    }
    if (name == "of") {
        o->out_name = value;
        return true;
    }
    error("unrecognized operand %s", name.c_str());
    return false;
}

// Parses dd's options and operands. Returns -1 to go on, or the exit
// status (1 after printing the error).
int parse_dd_args(int argc, char **argv, DdOptions *o)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:U", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': o->in_fmt = optarg; break;
        case 'O': o->out_fmt = optarg; break;
        case 'U': o->force_share = true; break;
        case kOptImageOpts: o->image_opts = true; break;
        default: return bad_option(argc, argv, "fO");
        }
    }
    for (int i = optind; i < argc; i++) {
        if (!parse_dd_operand(argv[i], o)) return 1;
    }
    if (!o->in_name || !o->out_name) {
        error("Must specify both input and output files");
        return 1;
    }
    return -1;
}

// The output's size and where the copy starts and ends in the input, as
// qemu-img dd computes them: the input is cut to count blocks (count only
// shortens it), then skip blocks are dropped from its start; a skip past
// that end gives an empty output (and a message, but no failure).
struct DdRange {
    int64_t out_size = 0;    // of the created image
    int64_t in_start = 0;    // first input byte copied
    int64_t in_end = 0;      // end of the copied input range
    bool skip_too_far = false;
};

DdRange dd_range(const DdOptions &o, int64_t in_len)
{
    DdRange r;
    r.in_end = in_len;
    if (o.count && *o.count <= INT64_MAX / o.bs && *o.count * o.bs < in_len) r.in_end = *o.count * o.bs;
    const int64_t skip = o.skip.value_or(0);
    if (skip > INT64_MAX / o.bs || skip * o.bs > r.in_end) {
        r.skip_too_far = true;
        r.in_start = r.in_end;
        return r;
    }
    r.in_start = skip * o.bs;
    r.out_size = r.in_end - r.in_start;
    return r;
}

// Checks the output format and protocol and creates the output image of
// size bytes. false after printing the error.
bool create_dd_output(const DdOptions &o, int64_t size)
{
    const BlockDriver *drv = builtin_drivers().find(o.out_fmt);
    if (!drv) {
        error("Unknown file format");
        return false;
    }
    Result<nlohmann::json> proto = filename_node_options(*o.out_name);
    if (!proto) {
        error("%s", proto.msg().c_str());
        return false;
    }
    if (!drv->create_image) {
        error("Format driver '%s' does not support image creation", o.out_fmt.c_str());
        return false;
    }
    ImgCreateParams p;
    p.fmt = o.out_fmt;
    p.filename = *o.out_name;
    p.opts.set("size", std::to_string(size));
    Status s = bg::img_create(builtin_drivers(), p);
    if (!s) {
        error("%s: error while creating output image: %s", o.out_name->c_str(), s.error().qemu_text().c_str());
        return false;
    }
    return true;
}

// Copies input [r.in_start, r.in_end) to the output's start in pieces of
// bs bytes (at most kMaxDdChunk at a time). Returns the exit status.
int dd_copy(const DdOptions &o, const DdRange &r, BlockBackend *in, BlockBackend *out)
{
    const int64_t chunk = std::min(o.bs, kMaxDdChunk);
    std::vector<uint8_t> buf(static_cast<size_t>(chunk));
    int64_t out_pos = 0;
    for (int64_t in_pos = r.in_start; in_pos < r.in_end;) {
        const int64_t n = std::min(chunk, r.in_end - in_pos);
        int ret = run_in_coroutine([&] { return in->co_pread(in_pos, n, buf.data()); });
        if (ret < 0) {
            error("error while reading from input image file: %s", std::strerror(-ret));
            return 1;
        }
        ret = run_in_coroutine([&] { return out->co_pwrite(out_pos, n, buf.data()); });
        if (ret < 0) {
            error("error while writing to output image file: %s", std::strerror(-ret));
            return 1;
        }
        in_pos += n;
        out_pos += n;
    }
    int ret = run_in_coroutine([&] { return out->co_flush(); });
    if (ret < 0) {
        error("error while writing to output image file: %s", std::strerror(-ret));
        return 1;
    }
    return 0;
}

} // namespace

int img_dd(int argc, char **argv)
{
    DdOptions o;
    int status = parse_dd_args(argc, argv, &o);
    if (status >= 0) return status;

    OpenArgs ia;
    ia.name = *o.in_name;
    ia.format = o.in_fmt;
    ia.image_opts = o.image_opts;
    ia.force_share = o.force_share;
    std::unique_ptr<OpenImage> src = open_img(ia);
    if (!src) return 1;
    const int64_t in_len = src->blk->getlength();
    if (in_len < 0) {
        error("Failed to get size for '%s'", o.in_name->c_str());
        return 1;
    }
    const DdRange r = dd_range(o, in_len);
    if (!create_dd_output(o, r.out_size)) return 1;

    // The output is opened by its file name with the output format
    // (--image-opts describes the input only).
    OpenArgs oa;
    oa.name = *o.out_name;
    oa.format = o.out_fmt;
    oa.read_only = false;
    std::unique_ptr<OpenImage> dst = open_img(oa);
    if (!dst) return 1;
    if (r.skip_too_far) error("%s: cannot skip to specified offset", o.in_name->c_str());
    return dd_copy(o, r, src->blk.get(), dst->blk.get());
}

} // namespace img
} // namespace bg

// tools/img-bitmap.cc -- "blockgraph img bitmap": changes an image's
// persistent dirty bitmaps, as "qemu-img bitmap" does. The operations run
// in the order given, on the image opened writable; the node stores the
// bitmaps when the image closes.
#include <getopt.h>

#include <cstring>
#include <string>
#include <vector>

#include "qapi/size.h"
#include "tools/img.h"

namespace bg {
namespace img {

namespace {

enum { kOptImageOpts = 256, kOptAdd, kOptRemove, kOptClear, kOptEnable, kOptDisable, kOptMerge };

struct Op {
    BitmapChange::Kind kind;
    const char *verb;          // for "Operation VERB on bitmap NAME failed"
    std::string merge_source;  // kMerge: the source bitmap's name
};

} // namespace

int img_bitmap(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"add", no_argument, nullptr, kOptAdd},
        {"remove", no_argument, nullptr, kOptRemove},
        {"clear", no_argument, nullptr, kOptClear},
        {"enable", no_argument, nullptr, kOptEnable},
        {"disable", no_argument, nullptr, kOptDisable},
        {"merge", required_argument, nullptr, kOptMerge},
        {"granularity", required_argument, nullptr, 'g'},
        {"source-file", required_argument, nullptr, 'b'},
        {"source-format", required_argument, nullptr, 'F'},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs oa;
    std::vector<Op> ops;
    bool add = false, merge = false;
    uint64_t granularity = 0;
    std::string src_file, src_fmt;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":b:f:F:g:hq", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 'q': g_quiet = true; break;
        case 'b': src_file = optarg; break;
        case 'F': src_fmt = optarg; break;
        case 'g': {
            Result<int64_t> r = parse_img_number(optarg, "granularity", 0, INT64_MAX);
            if (!r) {
                error("%s", r.msg().c_str());
                return 1;
            }
            // 0: the default, as qemu-img takes it.
            if (r.value() > (1LL << 31)) {
                error("Invalid granularity specified");
                return 1;
            }
            granularity = r.value();
            break;
        }
        case kOptImageOpts: oa.image_opts = true; break;
        case kOptAdd:
            ops.push_back({BitmapChange::Kind::kAdd, "add", ""});
            add = true;
            break;
        case kOptRemove: ops.push_back({BitmapChange::Kind::kRemove, "remove", ""}); break;
        case kOptClear: ops.push_back({BitmapChange::Kind::kClear, "clear", ""}); break;
        case kOptEnable: ops.push_back({BitmapChange::Kind::kEnable, "enable", ""}); break;
        case kOptDisable: ops.push_back({BitmapChange::Kind::kDisable, "disable", ""}); break;
        case kOptMerge:
            ops.push_back({BitmapChange::Kind::kMerge, "merge", optarg});
            merge = true;
            break;
        default: return bad_option(argc, argv, "bfFg");
        }
    }
    auto fail = [](const char *m) {
        error("%s", m);
        return 1;
    };
    if (ops.empty()) return fail("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
    if (granularity && !add) return fail("granularity only supported with --add");
    if (!src_fmt.empty() && src_file.empty()) return fail("-F only supported with -b");
    if (!src_file.empty() && !merge) return fail("Merge bitmap source file only supported with --merge");
    if (argc - optind != 2) return usage_error("Expecting filename and bitmap name");
    oa.name = argv[optind];
    const std::string bitmap = argv[optind + 1];
    oa.read_only = false;

    std::unique_ptr<OpenImage> img = open_img(oa);
    if (!img) return 1;
    std::unique_ptr<OpenImage> src;
    if (!src_file.empty()) {
        OpenArgs sa;
        sa.name = src_file;
        sa.format = src_fmt;
        sa.force_share = true;
        src = open_img(sa);
        if (!src) return 1;
    }
    // --add with --disable in one command: created disabled, as qemu-img.
    for (const Op &op : ops) {
        BitmapChange ch;
        ch.kind = op.kind;
        ch.name = bitmap;
        Status s;
        if (op.kind == BitmapChange::Kind::kAdd) {
            ch.granularity = static_cast<uint32_t>(granularity);
        } else if (op.kind == BitmapChange::Kind::kMerge) {
            Result<DirtyBitmapData> d = (src ? src->root : img->root)->bitmap_data(op.merge_source);
            if (!d) s = d.error();
            else ch.source = std::move(d.value());
        }
        if (s) s = img->root->bitmap_change(ch);
        if (!s) {
            error("Operation %s on bitmap %s failed: %s", op.verb, bitmap.c_str(), s.msg().c_str());
            return 1;
        }
    }
    src.reset();
    // What closing stores, stored now: a failure is the command's failure.
    Status s = img->root->inactivate();
    if (!s) {
        error("%s", s.msg().c_str());
        return 1;
    }
    return 0;
}

} // namespace img
} // namespace bg

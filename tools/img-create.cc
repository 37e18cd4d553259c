// tools/img-create.cc -- "blockgraph img create", "amend", "resize" and
// "snapshot": the subcommands that make or change an image's metadata.
#include <sys/time.h>

#include <algorithm>
#include <cinttypes>
#include <cerrno>
#include <cstring>

#include "block/block.h"
#include "qapi/size.h"
#include "qapi/block-parse.h"
#include "tools/img.h"
#include "util/aio.h"

namespace bg {
namespace img {

namespace {

enum { kOptImageOpts = 256, kOptShrink, kOptPrealloc, kOptForce, kOptObject };

const char *type_name(CreateOptionType t)
{
    switch (t) {
    case CreateOptionType::kString: return "str";
    case CreateOptionType::kBool: return "bool (on/off)";
    case CreateOptionType::kNumber: return "num";
    case CreateOptionType::kSize: return "size";
    }
    return "str";
}

// Appends one -o argument to the list (qemu-img joins repeated -o with ',').
bool add_options(CreateOptions *opts, const char *arg)
{
    Status s = opts->parse_append(arg);
    if (!s) {
        error("%s", s.msg().c_str());
        return false;
    }
    return true;
}


} // namespace

int print_create_options_help(const std::string &format)
{
    const BlockDriver *drv = builtin_drivers().find(format);
    if (!drv || drv->kind == BlockDriverKind::kFilter) {
        error("Unknown file format '%s'", format.c_str());
        return 1;
    }
    if (drv->create_opts.empty()) {
        std::printf("This format does not support any options.\n");
        return 0;
    }
    std::vector<CreateOptionDesc> d(drv->create_opts.begin(), drv->create_opts.end());
    std::sort(d.begin(), d.end(),
              [](const CreateOptionDesc &a, const CreateOptionDesc &b) { return std::strcmp(a.name, b.name) < 0; });
    std::printf("Supported %s options:\n", drv->name);
    for (const CreateOptionDesc &o : d) {
        std::string left = std::string(o.name) + "=<" + type_name(o.type) + ">";
        std::printf("  %-22s - %s\n", left.c_str(), o.help ? o.help : "");
    }
    if (drv->kind == BlockDriverKind::kFormat) {
        std::printf("\nThe protocol level may support further options.\n"
                    "Specify the target filename to include those options.\n");
    }
    return 0;
}

// ---------------------------------------------------------------- create

int img_create(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {nullptr, 0, nullptr, 0},
    };
    ImgCreateParams p;
    p.fmt = "raw";
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", kLong, nullptr)) != -1) {
        switch (c) {
        case 'F': p.backing_fmt = optarg; break;
        case 'b': p.backing_file = optarg; break;
        case 'f': p.fmt = optarg; break;
        case 'o':
            if (!add_options(&p.opts, optarg)) return 1;
            break;
        case 'q': g_quiet = true; break;
        case 'u': p.unsafe = true; break;
        default: return bad_option(argc, argv, "Fbfo");
        }
    }
    if (p.opts.has("help")) return print_create_options_help(p.fmt);
    if (optind >= argc) return usage_error("Expecting image file name");
    p.filename = argv[optind++];
    if (optind < argc) {
        Result<int64_t> sz = parse_img_size(argv[optind++]);
        if (!sz) {
            error("%s", sz.msg().c_str());
            return 1;
        }
        // As qemu-img: a size in -o is checked first, and may not come twice.
        if (p.opts.has("size")) {
            Result<uint64_t> o = p.opts.get_size("size", 0);
            error("%s: %s", p.filename.c_str(),
                  o ? "The image size must be specified only once" : o.error().qemu_text().c_str());
            return 1;
        }
        p.opts.set("size", std::to_string(sz.value()));
    }
    if (optind != argc) return usage_error("Unexpected argument: %s", argv[optind]);
    p.on_formatting = [](const std::string &line) {
        qprintf("%s\n", line.c_str());
        std::fflush(stdout);
    };
    Status s = bg::img_create(builtin_drivers(), p);
    if (!s) {
        // Multi-line messages (backing file hints, the size suffix hint)
        // print as qemu-img's do: the later lines without the program name.
        error("%s: %s", p.filename.c_str(), s.error().qemu_text().c_str());
        return 1;
    }
    return 0;
}

// ---------------------------------------------------------------- amend

int img_amend(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force", no_argument, nullptr, kOptForce},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs oa;
    oa.read_only = false;
    CreateOptions opts;
    bool have_opts = false, progress = false, force = false;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", kLong, nullptr)) != -1) {
        switch (c) {
        case 'o':
            if (!add_options(&opts, optarg)) return 1;
            have_opts = true;
            break;
        case 'f': oa.format = optarg; break;
        case 't': oa.cache = optarg; break;
        case 'p': progress = true; break;
        case 'q': g_quiet = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        case kOptForce: force = true; break;
        default: return bad_option(argc, argv, "oft");
        }
    }
    if (!have_opts) return usage_error("Must specify options (-o)");
    if (opts.has("help")) {
        if (oa.format.empty()) {
            error("Please specify a format with -f when asking for the options");
            return 1;
        }
        return print_create_options_help(oa.format);
    }
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    oa.name = argv[optind];
    std::unique_ptr<OpenImage> img = open_img(oa);
    if (!img) return 1;
    BlockNode *node = img->root;
    if (!oa.format.empty() && oa.format != node->driver_name()) {
        error("Unknown file format '%s'", oa.format.c_str());
        return 1;
    }
    Progress prog(progress);
    prog.update(0);
    Status s = node->amend(opts, force, [&](int64_t done, int64_t total) {
        prog.update(total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0);
    });
    if (s) prog.update(1.0);
    prog.finish();
    if (!s) {
        error("%s", s.msg().c_str());
        return 1;
    }
    // The length may have changed (size=...).
    node->refresh_length();
    return 0;
}

// ---------------------------------------------------------------- resize

int img_resize(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"preallocation", required_argument, nullptr, kOptPrealloc},
        {"shrink", no_argument, nullptr, kOptShrink},
        {nullptr, 0, nullptr, 0},
    };
    // The size is always the last argument: take it out before getopt so
    // that "-1G" is not an option.
    if (argc < 3) return usage_error("Not enough arguments");
    std::string size_arg = argv[--argc];
    OpenArgs oa;
    oa.read_only = false;
    bool shrink = false;
    PreallocMode prealloc = PreallocMode::kOff;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:hq", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 'q': g_quiet = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        case kOptShrink: shrink = true; break;
        case kOptPrealloc:
            if (!parse_prealloc_mode(optarg, &prealloc)) {
                error("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            break;
        default: return bad_option(argc, argv, "f");
        }
    }
    if (optind != argc - 1) return usage_error("Expecting image file name and size");
    oa.name = argv[optind];

    int relative = 0;
    std::string num = size_arg;
    if (!num.empty() && (num[0] == '+' || num[0] == '-')) {
        relative = num[0] == '+' ? 1 : -1;
        num = num.substr(1);
    }
    // QEMU's size option syntax and messages; the value wraps as an int64_t.
    uint64_t n = 0;
    bool hex_suffix = false;
    const int perr = strtosz(num, &n, &hex_suffix);
    if (hex_suffix) error("warning: Using a multiplier suffix on hex numbers is deprecated: %s", num.c_str());
    if (perr == -ERANGE) {
        error("Value '%s' is out of range for parameter 'size'", num.c_str());
        return 1;
    }
    if (perr) {
        error("Parameter 'size' expects a non-negative number below 2^64");
        std::fprintf(stderr, "%s\n", kSizeSuffixHint);
        return 1;
    }
    std::unique_ptr<OpenImage> img = open_img(oa);
    if (!img) return 1;
    int64_t current = img->blk->getlength();
    if (current < 0) {
        error("Failed to inquire current image length: %s", std::strerror(static_cast<int>(-current)));
        return 1;
    }
    const uint64_t cur = static_cast<uint64_t>(current);
    const int64_t total = static_cast<int64_t>(relative > 0 ? cur + n : relative < 0 ? cur - n : n);
    if (total <= 0) {
        error("New image size must be positive");
        return 1;
    }
    if (total < current && !shrink) {
        error("Use the --shrink option to perform a shrink operation.");
        std::fprintf(stderr,
                     "%s: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before "
                     "performing such an operation, make sure there is no important data there.\n",
                     kProg);
        return 1;
    }
    if (total < current && prealloc != PreallocMode::kOff) {
        error("Preallocation can only be used for growing images");
        return 1;
    }
    BlockBackend *blk = img->blk.get();
    int r = run_in_coroutine([&]() { return blk->co_truncate(total, false, prealloc); });
    if (r < 0) {
        if (r == -ENOTSUP && prealloc != PreallocMode::kOff) {
            error("Unsupported preallocation mode '%s' for %s", prealloc == PreallocMode::kMetadata ? "metadata"
                                                                 : prealloc == PreallocMode::kFalloc ? "falloc"
                                                                                                      : "full",
                  oa.name.c_str());
        } else {
            error("Failed to resize '%s' to %" PRId64 " bytes: %s", oa.name.c_str(), total, std::strerror(-r));
        }
        return 1;
    }
    qprintf("Image resized.\n");
    return 0;
}

// ---------------------------------------------------------------- snapshot

int img_snapshot(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    enum Action { kNone, kList, kApply, kCreate, kDelete } action = kNone;
    std::string name;
    OpenArgs oa;
    optind = 0;
    opterr = 0;
    int c;
    auto set_action = [&](Action a) {
        if (action != kNone) return false;
        action = a;
        return true;
    };
    while ((c = getopt_long(argc, argv, ":la:c:d:f:hqU", kLong, nullptr)) != -1) {
        switch (c) {
        case 'l':
            if (!set_action(kList)) return usage_error("Cannot mix '-l', '-a', '-c', '-d'");
            break;
        case 'a':
        case 'c':
        case 'd':
            if (!set_action(c == 'a' ? kApply : c == 'c' ? kCreate : kDelete)) {
                return usage_error("Cannot mix '-l', '-a', '-c', '-d'");
            }
            name = optarg;
            break;
        case 'f': oa.format = optarg; break;
        case 'q': g_quiet = true; break;
        case 'U': oa.force_share = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        default: return bad_option(argc, argv, "acdf");
        }
    }
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    if (action == kNone) action = kList;
    if (action != kList && oa.force_share) {
        error("--force-share/-U can only be used with -l");
        return 1;
    }
    oa.name = argv[optind];
    oa.read_only = action == kList;
    std::unique_ptr<OpenImage> img = open_img(oa);
    if (!img) return 1;
    BlockNode *node = img->root;
    switch (action) {
    case kNone:
    case kList: {
        Result<std::vector<SnapshotInfo>> l = node->snapshot_list();
        if (!l) {
            // A format without internal snapshots has none to list.
            if (l.err() == ENOTSUP) return 0;
            error("Could not list snapshots of '%s': %s", oa.name.c_str(), l.msg().c_str());
            return 1;
        }
        if (l.value().empty()) return 0;
        std::printf("Snapshot list:\n");
        std::printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
        for (const SnapshotInfo &s : l.value()) {
            char date[64], clk[64], icount[32] = "";
            time_t t = static_cast<time_t>(s.date_sec);
            struct tm tm;
            localtime_r(&t, &tm);
            std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
            uint64_t secs = s.vm_clock_nsec / 1000000000ULL;
            std::snprintf(clk, sizeof(clk), "%02d:%02d:%02d.%03d", static_cast<int>(secs / 3600),
                          static_cast<int>((secs / 60) % 60), static_cast<int>(secs % 60),
                          static_cast<int>((s.vm_clock_nsec / 1000000) % 1000));
            if (s.icount) std::snprintf(icount, sizeof(icount), "%" PRIu64, *s.icount);
            std::printf("%-9s %-16s %8s%20s%13s%11s\n", s.id.c_str(), s.name.c_str(),
                        size_to_str(s.vm_state_size).c_str(), date, clk, icount);
        }
        return 0;
    }
    case kCreate: {
        SnapshotInfo sn;
        sn.name = name;
        struct timeval tv;
        gettimeofday(&tv, nullptr);
        sn.date_sec = static_cast<uint32_t>(tv.tv_sec);
        sn.date_nsec = static_cast<uint32_t>(tv.tv_usec) * 1000;
        sn.icount = 0;
        Status s = node->snapshot_create(&sn);
        if (!s) {
            error("Could not create snapshot '%s': %s", name.c_str(), s.msg().c_str());
            return 1;
        }
        return 0;
    }
    case kApply: {
        Status s = node->snapshot_goto(name);
        if (!s) {
            // A snapshot that is not there: the driver's errno, as qemu-img words it.
            std::string why = s.err() == ENOENT ? std::string("Failed to load snapshot: ") + std::strerror(ENOENT)
                                                : s.error().qemu_text();
            error("Could not apply snapshot '%s': %s", name.c_str(), why.c_str());
            return 1;
        }
        return 0;
    }
    case kDelete: {
        // By id first, then by name (QEMU's bdrv_snapshot_delete_by_id_or_name).
        Status s = node->snapshot_delete(name, std::nullopt);
        if (!s && s.err() == ENOENT) s = node->snapshot_delete(std::nullopt, name);
        if (!s) {
            error("Could not delete snapshot '%s': %s", name.c_str(),
                  s.err() == ENOENT ? "snapshot not found" : s.error().qemu_text().c_str());
            return 1;
        }
        return 0;
    }
    }
    return 0;
}

} // namespace img
} // namespace bg

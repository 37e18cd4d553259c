// tools/img.cc -- "blockgraph img": dispatcher and the helpers shared by the
// subcommands in tools/img-*.cc (see tools/img.h and docs/img.md).
#include "tools/img.h"
#include "tools/dropin.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "qapi/size.h"
#include "tools/commands.h"
#include "tools/objects.h"
#include "tools/trace-opt.h"
#include "util/aio.h"

namespace bg {
namespace img {

bool g_quiet = false;

void error(const char *fmt, ...)
{
    std::fflush(stdout);
    std::fprintf(stderr, "%s: ", kProg);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
}

int usage_error(const char *fmt, ...)
{
    std::fflush(stdout);
    std::fprintf(stderr, "%s: ", kProg);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "\nTry '%s --help' for more information\n", kProg);
    return 1;
}

int bad_option(int argc, char **argv, const char *with_arg_opts)
{
    (void)argc;
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (optopt && optopt < 256) {
        if (std::strchr(with_arg_opts, optopt)) return usage_error("missing argument for option '-%c'", optopt);
        return usage_error("unrecognized option '-%c'", optopt);
    }
    // A long option: known (with optopt set to its value) but missing its
    // argument, or unknown.
    if (optopt >= 256) return usage_error("missing argument for option '%s'", arg);
    return usage_error("unrecognized option '%s'", arg);
}

void qprintf(const char *fmt, ...)
{
    if (g_quiet) return;
    va_list ap;
    va_start(ap, fmt);
    std::vprintf(fmt, ap);
    va_end(ap);
}

Result<int64_t> parse_img_number(const std::string &s, const char *name, int64_t min, int64_t max)
{
    uint64_t v = 0;
    bool hex_suffix = false;
    const int err = strtosz(s, &v, &hex_suffix);
    if (hex_suffix) error("warning: Using a multiplier suffix on hex numbers is deprecated: %s", s.c_str());
    if (err && err != -ERANGE) {
        return make_error(EINVAL, "Invalid %s specified. You may use k, M, G, T, P or E suffixes for\n%s: "
                                  "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
                          name, kProg);
    }
    if (err || v > static_cast<uint64_t>(max) || static_cast<int64_t>(v) < min) {
        return make_error(ERANGE, "Invalid %s specified. Must be between %" PRId64 " and %" PRId64 ".", name, min,
                          max);
    }
    return static_cast<int64_t>(v);
}

Result<int64_t> parse_img_size(const std::string &s) { return parse_img_number(s, "image size", 0, INT64_MAX); }

bool parse_rate_limit(const char *arg, uint64_t *out)
{
    Result<int64_t> r = parse_img_number(arg, "rate limit", 0, INT64_MAX);
    if (!r) {
        error("%s", r.msg().c_str());
        return false;
    }
    *out = static_cast<uint64_t>(r.value());
    return true;
}

bool parse_snapshot_param(const char *arg, std::optional<SnapshotSpec> *out)
{
    SnapshotSpec s;
    if (std::strncmp(arg, "snapshot.", 9) != 0) {
        s.id_or_name = arg;
        *out = s;
        return true;
    }
    for (const char *p = arg; p && *p;) {
        const char *comma = std::strchr(p, ',');
        std::string kv(p, comma ? static_cast<size_t>(comma - p) : std::strlen(p));
        size_t eq = kv.find('=');
        std::string key = kv.substr(0, eq);
        if (key == "snapshot.id" && eq != std::string::npos) {
            s.id = kv.substr(eq + 1);
        } else if (key == "snapshot.name" && eq != std::string::npos) {
            s.name = kv.substr(eq + 1);
        } else {
            error("Invalid parameter '%s'; failed in parsing snapshot param '%s'", key.c_str(), arg);
            return false;
        }
        p = comma ? comma + 1 : nullptr;
    }
    *out = s;
    return true;
}

std::unique_ptr<OpenImage> open_img_snapshot(OpenArgs a, const SnapshotSpec &s)
{
    a.read_only = true;
    std::string id;
    {
        std::unique_ptr<OpenImage> img = open_img(a);
        if (!img) return nullptr;
        Result<std::vector<SnapshotInfo>> l = img->root->snapshot_list();
        if (!l) {
            if (l.err() == ENOTSUP) {
                error("Failed to load snapshot: Block format '%s' does not support temporarily loading internal "
                      "snapshots",
                      img->root->driver_name());
            } else {
                error("Failed to load snapshot: %s", l.msg().c_str());
            }
            return nullptr;
        }
        auto match = [&](auto pred) -> const SnapshotInfo * {
            for (const SnapshotInfo &i : l.value()) {
                if (pred(i)) return &i;
            }
            return nullptr;
        };
        const SnapshotInfo *f;
        if (s.id || s.name) {
            f = match([&](const SnapshotInfo &i) { return (!s.id || i.id == *s.id) && (!s.name || i.name == *s.name); });
        } else {
            f = match([&](const SnapshotInfo &i) { return i.id == s.id_or_name; });
            if (!f) f = match([&](const SnapshotInfo &i) { return i.name == s.id_or_name; });
        }
        if (!f) {
            error("Failed to load snapshot: Can't find snapshot");
            return nullptr;
        }
        id = f->id;
    }
    a.extra = a.extra.is_object() ? a.extra : nlohmann::json::object();
    a.extra["snapshot.id"] = id;
    return open_img(a);
}

std::string size_to_str(uint64_t v)
{
    static const char *const kSuffix[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    // The unit is the largest power of 1024 that leaves an integer part
    // below 1000 (so 1000 KiB prints as 0.977 MiB).
    int exp = 0;
    std::frexp(static_cast<double>(v) / (1000.0 / 1024.0), &exp);
    int i = (exp - 1) / 10;
    if (i < 0) i = 0;
    if (i > 6) i = 6;
    double div = static_cast<double>(1ULL << (i * 10));
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%0.3g %sB", static_cast<double>(v) / div, kSuffix[i]);
    return buf;
}

bool parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !*s) return false;
    char *end = nullptr;
    errno = 0;
    long long v = std::strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max) return false;
    *out = v;
    return true;
}

bool parse_output_format(const char *arg, OutputFormat *out)
{
    if (std::strcmp(arg, "json") == 0) {
        *out = OutputFormat::kJson;
        return true;
    }
    if (std::strcmp(arg, "human") == 0) {
        *out = OutputFormat::kHuman;
        return true;
    }
    error("--output must be used with human or json as argument.");
    return false;
}

unsigned qdict_bucket(const std::string &key)
{
    uint32_t v = 0x238F13AFu * static_cast<uint32_t>(key.size());
    for (size_t i = 0; i < key.size(); i++) {
        v += static_cast<uint32_t>(static_cast<unsigned char>(key[i])) << (i * 5 % 24);
    }
    return (1103515243u * v + 12345u) % 512u;
}

namespace {

// j with every object's keys in QEMU's QDict iteration order (bucket
// order; keys sharing a bucket in reverse name order, standing in for
// QEMU's most-recently-inserted first).
nlohmann::ordered_json qdict_ordered(const nlohmann::json &j)
{
    if (j.is_array()) {
        nlohmann::ordered_json a = nlohmann::ordered_json::array();
        for (const nlohmann::json &e : j) a.push_back(qdict_ordered(e));
        return a;
    }
    if (!j.is_object()) return nlohmann::ordered_json(j);
    std::vector<std::string> keys;
    for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
    std::stable_sort(keys.begin(), keys.end(), [](const std::string &a, const std::string &b) {
        const unsigned ba = qdict_bucket(a), bb = qdict_bucket(b);
        return ba != bb ? ba < bb : a > b;
    });
    nlohmann::ordered_json o = nlohmann::ordered_json::object();
    for (const std::string &k : keys) o[k] = qdict_ordered(j[k]);
    return o;
}

} // namespace

std::string json_pretty(const nlohmann::json &j)
{
    return qdict_ordered(j).dump(4);
}

std::string open_error_message(const std::string &name, const Error &e)
{
    // qemu-img reports a backing loop from its own walk of the chain, not
    // as a failure to open the image.
    if (e.err == ELOOP) return e.qemu_text();
    return "Could not open '" + name + "': " + e.qemu_text();
}

std::unique_ptr<OpenImage> open_img(const OpenArgs &a)
{
    ImageOpenSpec spec;
    spec.image = a.name;
    spec.image_opts = a.image_opts;
    spec.format = a.format;
    spec.read_only = a.read_only;
    spec.check_repair = a.check_repair;
    spec.force_share = a.force_share;
    spec.consumer = kProg;
    Result<CacheMode> cm = parse_cache_mode(a.cache);
    if (!cm) {
        error("%s", cm.msg().c_str());
        return nullptr;
    }
    spec.cache = cm.value();
    spec.aio = a.aio;
    nlohmann::json extra = a.extra.is_object() ? a.extra : nlohmann::json::object();
    if (a.no_backing) extra["backing"] = nullptr;
    if (!extra.empty()) spec.extra_options = extra;
    if (a.read_only && !a.force_share) {
        // qemu-img's read-only opens let others keep writing only what
        // the format tolerates; the nodes decide (file locks).
        spec.shared = kPermAll;
    }
    Result<std::unique_ptr<OpenImage>> r = open_image(spec);
    if (!r) {
        if (a.role.empty() || r.err() == ELOOP) {
            error("%s", open_error_message(a.name, r.error()).c_str());
        } else {
            error("Could not open %s '%s': %s", a.role.c_str(), a.name.c_str(), r.error().qemu_text().c_str());
        }
        return nullptr;
    }
    if (r.value()->probed_raw && !a.read_only) {
        std::fputs(probed_raw_warning(a.name).c_str(), stderr);
    }
    return std::move(r.value());
}

// ---------------------------------------------------------------- progress

Progress::Progress(bool enabled)
{
    active_ = enabled && !g_quiet;
}

Progress::~Progress()
{
    finish();
}

void Progress::update(double fraction, int64_t bytes_done)
{
    (void)bytes_done;
    if (!active_ || finished_) return;
    // Percentages in float, compared as qemu-img compares them.
    float current = static_cast<float>(std::clamp(fraction, 0.0, 1.0) * 100.0);
    if (current > last_print_ + 1.0f || current < last_print_ - 1.0f || current == 0.0f || current == 100.0f) {
        last_print_ = current;
        std::printf("    (%3.2f/100%%)\r", static_cast<double>(current));
        std::fflush(stdout);
    }
}

void Progress::finish()
{
    if (!active_ || finished_) return;
    finished_ = true;
    std::printf("\n");
    std::fflush(stdout);
}

// ---------------------------------------------------------------- dispatch

namespace {

struct ImgCommand {
    const char *name;
    const char *synopsis;
    int (*fn)(int, char **);
    const char *help;   // what it does, a few lines
};

const ImgCommand kImgCommands[] = {
    {"amend", "amend [-f fmt] [-t cache] [-p] [-q] [--force] -o options filename", img_amend,
     "Changes creation options of an existing image in place (qcow2: compat,\nlazy_refcounts, refcount_bits, backing_file, backing_fmt, data_file,\ndata_file_raw, size). -o help lists the format's options."},
    {"bench",
     "bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] "
     "[-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-U] [-w] filename",
     img_bench,
     "Sends count requests (default 75000) of buffer_size bytes (default 4k),\ndepth (default 64) in flight, starting at offset and advancing by step;\n-w writes the pattern byte, --flush-interval flushes every n writes.\nPrints the request summary and the run time, as qemu-img bench."},
    {"bitmap",
     "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F "
     "source_fmt]] [-g granularity] [--image-opts | -f fmt] filename bitmap",
     img_bitmap,
     "Changes the image's persistent dirty bitmap named bitmap, the operations\nin the order given: --add (-g granularity, default the cluster size\nwithin [4k, 64k]; with --disable: created disabled), --remove, --clear, --enable,\n--disable, --merge SOURCE (a bitmap of this image, or of -b source_file)."},
    {"check", "check [-q] [--output=ofmt] [-f fmt] [-r [leaks | all]] [-T src_cache] [-U] filename", img_check,
     "Checks the image's metadata; -r leaks / -r all repairs. Exit status: 0\nclean, 1 check failed, 2 corruptions, 3 leaks only, 63 no check for\nthis format."},
    {"commit", "commit [-q] [-f fmt] [-t cache] [-b base] [-d] [-p] [-r rate_limit] filename", img_commit,
     "Writes the data of filename (and of the images down to -b base) into\nits backing file (or base), growing it if needed; -r: at most\nrate_limit bytes of data per second."},
    {"compare", "compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2", img_compare,
     "Compares guest-visible contents. Exit status: 0 identical, 1 different\n(\"Content mismatch at offset N!\"), 2 open error, 3 block status error,\n4 read error. -s: sizes and allocation must match too."},
    {"convert",
     "convert [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file "
     "[-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-m num_coroutines] [-W] [-r rate_limit] "
     "[--salvage] [--bitmaps [--skip-broken-bitmaps]] [-U] filename [filename2 [...]] output_filename",
     img_convert,
     "Copies one or more images (concatenated) into a new image of format -O,\nsparse by default (-S: minimum zero run, 0 = allocate everything),\n-m requests in flight (default 8), -W out of order, -c compressed (on\nevery core), -n into an existing image, -B with a backing file, -l from\nan internal snapshot (id or name, or snapshot.id=/snapshot.name=), -r at\nmost rate_limit bytes of data per second, --salvage: unreadable sectors\nbecome zeros (with a warning each) instead of failing, --bitmaps:\nthe persistent dirty bitmaps too (qcow2)."},
    {"create", "create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]",
     img_create,
     "Creates an image of format -f (default raw) with -o options (-o help\nlists them), optionally on a backing file (-b, with its format -F; -u:\ndo not open it)."},
    {"dd", "dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input "
           "of=output",
     img_dd,
     "Copies input, from skip blocks of bs bytes (default 512) on and cut to\ncount blocks from its start, into a new image of format -O (default\nraw)."},
    {"info", "info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename", img_info,
     "Shows the image's format, sizes, cluster size, backing file, snapshots\nand format-specific data; --backing-chain for every image of the chain."},
    {"map", "map [-f fmt] [--output=ofmt] [--start-offset=offset] [--max-length=len] [-U] filename", img_map,
     "Shows the allocation of the image through its backing chain (start,\nlength, depth, present, zero, data, compressed, offset)."},
    {"measure", "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [-f fmt] [-l snapshot_param] [-U] filename]",
     img_measure,
     "Computes the file size an image of format -O needs for filename's data\nor for --size bytes."},
    {"snapshot", "snapshot [-q] [-l | -a snapshot | -c snapshot | -d snapshot] [-U] filename", img_snapshot,
     "Lists (-l, the default), creates (-c), applies (-a) or deletes (-d)\ninternal snapshots."},
    {"rebase", "rebase [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-U] -b backing_file [-F backing_fmt] "
               "filename",
     img_rebase,
     "Changes the backing file. Safe mode (default) first copies into the\nimage what differs between the old and the new backing file; -u only\nchanges the recorded name. -b \"\" removes the backing file."},
    {"resize", "resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size", img_resize,
     "Sets the virtual size, or grows/shrinks it by +size/-size (shrinking\nneeds --shrink)."},
};

void print_help()
{
    std::printf("Usage: %s <command> [command options]\n"
                "Create, inspect, convert and change disk images, with qemu-img's commands,\n"
                "options, output and exit codes (see docs/img.md).\n\n"
                "Commands:\n",
                kProg);
    for (const ImgCommand &c : kImgCommands) std::printf("  %s\n", c.synopsis);
    std::printf("\n"
                "Common options:\n"
                "  -f fmt          image format (raw, qcow2, ...); probed when absent\n"
                "  --image-opts    the file name is a node description (keyval or JSON)\n"
                "  --object tls-creds-x509|tls-creds-psk|authz-simple,id=ID,...\n"
                "                  TLS credentials for an nbd image's tls-creds (docs/nbd.md)\n"
                "  -U              force share: open an image another process uses (read-only)\n"
                "  -t/-T cache     cache mode of the destination/source: none, writeback,\n"
                "                  writethrough, directsync, unsafe\n"
                "  -p              show progress (percent done, as qemu-img)\n"
                "  -q              quiet: print nothing but errors\n"
                "  --output=ofmt   human (default) or json\n"
                "Sizes take k, M, G, T, P, E suffixes (powers of 1024). File names may be\n"
                "json:{...} pseudo file names.\n"
                "Run '%s <command> --help' for one command's synopsis.\n"
                "Supported formats: %s\n",
                kProg, driver_names_sorted().c_str());
}

} // namespace

} // namespace img

int cmd_img(int argc, char **argv)
{
    using namespace img;
    kProg = tool_prog(kProg);
    // Options before the command: -T/--trace SPEC (repeatable), as qemu-img.
    bool traced = false;
    while (argc >= 2) {
        std::string spec;
        if ((std::strcmp(argv[1], "-T") == 0 || std::strcmp(argv[1], "--trace") == 0)) {
            if (argc < 3) return usage_error("missing argument for option '%s'", argv[1]);
            spec = argv[2];
            argv[2] = argv[0];
            argc -= 2;
            argv += 2;
        } else if (std::strncmp(argv[1], "--trace=", 8) == 0) {
            spec = argv[1] + 8;
            argv[1] = argv[0];
            argc -= 1;
            argv += 1;
        } else {
            break;
        }
        traced = true;
        if (int r = parse_trace_option(spec.c_str(), kProg); r >= 0) return r;
    }
    // (qemu-img given only trace options exits quietly.)
    if (argc < 2) return traced ? 0 : usage_error("Not enough arguments");
    const char *name = argv[1];
    if (std::strcmp(name, "--help") == 0 || std::strcmp(name, "-h") == 0) {
        print_help();
        return 0;
    }
    if (std::strcmp(name, "--version") == 0 || std::strcmp(name, "-V") == 0) {
        print_tool_version("blockgraph img");
        return 0;
    }
    const ImgCommand *cmd = nullptr;
    for (const ImgCommand &c : kImgCommands) {
        if (std::strcmp(c.name, name) == 0) cmd = &c;
    }
    if (!cmd) return usage_error("Command not found: %s", name);
    if (!take_object_args(&argc, argv, 2, kProg)) return 1;
    for (int i = 2; i < argc; i++) {
        if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
            std::printf("Usage: %s %s\n\n%s\n\nSee '%s --help' for the common options, and docs/img.md.\n", kProg,
                        cmd->synopsis, cmd->help, kProg);
            return 0;
        }
        if (std::strcmp(argv[i], "--") == 0) break;
    }
    g_quiet = false;
    std::unique_ptr<AioContext> ctx = AioContext::create();
    AioContext::set_current(ctx.get());
    int ret = cmd->fn(argc - 1, argv + 1);
    std::fflush(stdout);
    AioContext::set_current(nullptr);
    return ret;
}

} // namespace bg

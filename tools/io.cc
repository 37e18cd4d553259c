// tools/io.cc -- "blockgraph io": qemu-io's command language on a block graph.
//
//   blockgraph io [-f FMT] [-r] [-U] [-n] [-t CACHE] [--aio MODE] [-d DISCARD]
//                 [-m] [--image-opts] [IMAGE] [-c CMD]...
//
// Runs each -c command in order, or without -c reads commands from stdin
// line by line (printing the prompt only when stdin is a terminal). The
// commands, their options and their output are qemu-io's (QEMU 7.2, the
// version the integration tests compare against), except for the timing
// numbers; docs/io.md lists the commands and the known differences.
//
// Structure: one AioContext for the whole run. Every command runs in a
// coroutine through run_in_coroutine(); aio_* commands start a coroutine of
// their own (entered with AioContext::co_enter) and return at once; it prints
// its completion line when the request finishes, which happens while a later
// command or aio_flush waits, or at exit. Waiting for stdin also runs the
// loop, so aio requests progress in interactive mode too.
//
// Output channels follow qemu-io: results and most per-command errors go to
// stdout; "command not found", bad argument counts, "no file open" and
// errors QEMU reports with error_report() go to stderr, the latter prefixed
// "blockgraph io: " where qemu-io writes "qemu-io: ".
//
// The tool's files are listed in tools/io-cmd.h; this one holds the command
// line, the command loop and the session (opening, dispatching, stdin).
#include <getopt.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "block/block.h"
#include "qapi/keyval.h"
#include "tools/commands.h"
#include "tools/objects.h"
#include "tools/image-open.h"
#include "tools/io-cmd.h"
#include "tools/trace-opt.h"
#include "tools/dropin.h"
#include "util/aio.h"

namespace bg {
namespace io {
namespace {

constexpr const char *kPrompt = "qemu-io> ";

// The image options qemu-io starts from, for the command line and 'open'.
ImageOpenSpec default_open_spec()
{
    ImageOpenSpec spec;
    spec.consumer = kProg;
    spec.cache.writethrough = true;                  // qemu-io's default cache mode
    spec.discard = BlockdevDiscardOptions::kUnmap;   // qemu-io opens with BDRV_O_UNMAP
    return spec;
}

// Applies option c (with argument arg) if it is one the command line and
// 'open' share: -r, -s, -n, -U, -C, -f, -k, -i, -t, -d. Returns 1 if applied, 0 if c is
// none of them, -1 after printing the error for a bad -i/-t/-d value.
int apply_open_option(int c, const char *arg, ImageOpenSpec *spec)
{
    switch (c) {
    case 'r': spec->read_only = true; return 1;
    case 's': spec->snapshot = true; return 1;
    case 'n':
        spec->cache.direct = true;
        spec->cache.writethrough = false;
        return 1;
    case 'U': spec->force_share = true; return 1;
    case 'C': spec->copy_on_read = true; return 1;
    case 'f': spec->format = arg; return 1;
    case 'k': spec->aio = BlockdevAioOptions::kNative; return 1;
    case 'i': {
        Result<BlockdevAioOptions> a = parse_aio_mode(arg);
        if (!a) {
            std::fprintf(stderr, "%s: %s\n", kProg, a.msg().c_str());
            return -1;
        }
        spec->aio = a.value();
        return 1;
    }
    case 't': {
        Result<CacheMode> m = parse_cache_mode(arg);
        if (!m) {
            std::fprintf(stderr, "%s: %s\n", kProg, m.msg().c_str());
            return -1;
        }
        spec->cache = m.value();
        return 1;
    }
    case 'd': {
        Result<BlockdevDiscardOptions> d = parse_discard_mode(arg);
        if (!d) {
            std::fprintf(stderr, "%s: %s\n", kProg, d.msg().c_str());
            return -1;
        }
        spec->discard = d.value();
        return 1;
    }
    default: return 0;
    }
}

// Resets getopt for a command's argv (glibc: optind 0 reinitialises).
void reset_getopt()
{
    optind = 0;
    opterr = 1;
}

} // namespace

// ---- infrastructure

size_t IoShell::buf_align() const
{
    size_t a = 4096;
    if (img_ && img_->root) a = std::max<size_t>(a, img_->root->limits().opt_mem_alignment);
    return a;
}

bool IoShell::open_image_spec(const ImageOpenSpec &spec_in)
{
    ImageOpenSpec spec = spec_in;
    // qemu-io shares every permission; we share write and resize only when
    // read-only (a reader coexists with a writer, as "qemu-io -r" does; two
    // writers do not: see docs/io.md).
    if (spec.read_only) spec.shared = kPermAll;
    if (img_) {
        std::fprintf(stderr, "%s: file open already, try 'help close'\n", kProg);
        return false;
    }
    Result<std::unique_ptr<OpenImage>> r = open_image(spec);
    if (!r) {
        if (spec.image_opts || spec.image.empty()) {
            std::fprintf(stderr, "%s: can't open: %s\n", kProg, r.error().qemu_text().c_str());
        } else {
            std::fprintf(stderr, "%s: can't open device %s: %s\n", kProg, spec.image.c_str(), r.error().qemu_text().c_str());
        }
        return false;
    }
    img_ = std::move(r.value());
    // qemu-io warns only when the restriction matters: for writable images.
    if (img_->probed_raw && !spec.read_only) {
        std::string name = img_->root->filename();
        std::fputs(probed_raw_warning(name.empty() ? spec.image : name).c_str(), stderr);
    }
    return true;
}

void IoShell::close_image()
{
    img_.reset();
}

void IoShell::wait_aio_outside()
{
    while (aio_in_flight_ > 0) ctx_->iterate(true);
}

void coroutine_fn IoShell::co_wait_aio()
{
    while (aio_in_flight_ > 0) aio_idle_.wait();
}

int IoShell::dispatch(const Command *ct, int argc, char **argv)
{
    if (!(ct->flags & kCmdGlobal) && !(ct->flags & kCmdNoFileOk) && !img_) {
        std::fprintf(stderr, "no file open, try 'help open'\n");
        return -EINVAL;
    }
    int nargs = argc - 1;
    if (nargs < ct->argmin || (ct->argmax != -1 && nargs > ct->argmax)) {
        if (ct->argmax == -1) {
            std::fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n", nargs, argv[0],
                         ct->argmin);
        } else if (ct->argmin == ct->argmax) {
            std::fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n", nargs, argv[0],
                         ct->argmin);
        } else {
            std::fprintf(stderr, "bad argument count %d to %s, expected between %d and %d arguments\n", nargs,
                         argv[0], ct->argmin, ct->argmax);
        }
        return -EINVAL;
    }
    // Ask for the permissions the command needs (qemu-io does it lazily).
    if (ct->perm && img_) {
        BdrvChild *root = blk()->root();
        BlockPerm perm = root->perm(), shared = root->shared();
        if (ct->perm & ~perm) {
            if ((ct->perm & (kPermWrite | kPermResize)) && img_->root->read_only()) {
                std::fprintf(stderr, "%s: Block node is read-only\n", kProg);
                return -EPERM;
            }
            Status s = blk()->set_perm(perm | ct->perm, shared);
            if (!s) {
                std::fprintf(stderr, "%s: %s\n", kProg, s.msg().c_str());
                return -s.err();
            }
        }
    }
    reset_getopt();
    return (this->*(ct->fn))(argc, argv);
}

int IoShell::run_line(const std::string &line)
{
    std::vector<std::string> words = breakline(line);
    if (words.empty()) return 0;
    std::vector<char *> argv;
    for (std::string &w : words) argv.push_back(w.data());
    argv.push_back(nullptr);
    int argc = static_cast<int>(words.size());
    const Command *ct = find_command(argv[0]);
    if (!ct) {
        std::fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        return -EINVAL;
    }
    int ret = run_in_coroutine([&] { return dispatch(ct, argc, argv.data()); });
    std::fflush(stdout);
    return ret;
}

bool IoShell::fetch_line(std::string *line)
{
    for (;;) {
        size_t nl = inbuf_.find('\n');
        if (nl != std::string::npos) {
            line->assign(inbuf_, 0, nl);
            inbuf_.erase(0, nl + 1);
            return true;
        }
        if (in_eof_) {
            if (inbuf_.empty()) return false;
            *line = std::move(inbuf_);
            inbuf_.clear();
            return true;
        }
        // Run the loop (aio requests keep going) until stdin has data.
        stdin_readable_ = false;
        ctx_->set_fd_handler(
            STDIN_FILENO, [](void *p) { static_cast<IoShell *>(p)->stdin_readable_ = true; }, nullptr, this);
        while (!stdin_readable_) ctx_->iterate(true);
        ctx_->set_fd_handler(STDIN_FILENO, nullptr, nullptr, nullptr);
        char buf[4096];
        ssize_t n = ::read(STDIN_FILENO, buf, sizeof(buf));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            in_eof_ = true;
        } else if (n == 0) {
            in_eof_ = true;
        } else {
            inbuf_.append(buf, static_cast<size_t>(n));
        }
    }
}

// ---- session commands

int IoShell::cmd_open(int argc, char **argv)
{
    ImageOpenSpec spec = default_open_spec();
    nlohmann::json extra = nlohmann::json::object();
    int c;
    while ((c = getopt(argc, argv, "rsnUCkf:i:t:d:o:")) != -1) {
        if (c == 'o') {
            if (image_opts_) {
                std::printf("--image-opts and 'open -o' are mutually exclusive\n");
                return -EINVAL;
            }
            Result<nlohmann::json> kv = keyval_parse(optarg, nullptr);
            if (!kv) {
                std::fprintf(stderr, "%s: %s\n", kProg, kv.msg().c_str());
                return -EINVAL;
            }
            for (auto it = kv.value().begin(); it != kv.value().end(); ++it) extra[it.key()] = it.value();
            continue;
        }
        int r = apply_open_option(c, optarg, &spec);
        if (r < 0) return -EINVAL;
        if (r == 0) return usage(&IoShell::cmd_open);
    }
    if (optind == argc - 1) {
        spec.image = argv[optind];
        spec.image_opts = image_opts_;
    } else if (optind == argc) {
        spec.image_opts = true;   // the -o options describe the whole image
    } else {
        return usage(&IoShell::cmd_open);
    }
    if (!extra.empty()) spec.extra_options = std::move(extra);
    co_wait_aio();
    return open_image_spec(spec) ? 0 : -EINVAL;
}

int IoShell::cmd_close(int, char **)
{
    co_wait_aio();
    close_image();
    return 0;
}

namespace {

// ---------------------------------------------------------------- main

const char kUsage[] =
    "Usage: blockgraph io [OPTIONS]... [-c COMMAND]... [IMAGE]\n"
    "Run qemu-io commands against an image through the block graph.\n"
    "\n"
    "  -c, --cmd COMMAND    run COMMAND (repeatable); without -c, read commands\n"
    "                       from standard input, one per line\n"
    "  -f, --format FMT     format of the image (default: probed; raw is then\n"
    "                       protected against writes that change its format)\n"
    "      --image-opts     IMAGE is a node description: keyval with the implied\n"
    "                       key 'driver' (raw,file.filename=a.img) or JSON\n"
    "      --object SPEC    tls-creds-x509|tls-creds-psk|authz-simple,id=ID,...:\n"
    "                       TLS credentials for an nbd image (docs/nbd.md)\n"
    "  -r, --read-only      open the image read-only\n"
    "  -s, --snapshot       writes go to a temporary overlay, deleted at exit\n"
    "  -U, --force-share    share all permissions with other users (needs -r)\n"
    "  -n, --nocache        disable the host cache, short for -t none\n"
    "  -t, --cache MODE     none, writeback, writethrough (default),\n"
    "                       directsync or unsafe\n"
    "  -i, --aio MODE       threads, io_uring (default) or native\n"
    "  -k, --native-aio     short for -i native\n"
    "  -d, --discard MODE   ignore or unmap (default)\n"
    "  -m, --misalign       misalign I/O buffers by 16 bytes\n"
    "  -T, --trace [[enable=]PATTERN][,events=FILE][,file=FILE]\n"
    "                       accepted as QEMU's tools accept it; there are no\n"
    "                       trace events to enable (docs/io.md)\n"
    "  -h, --help           show this help\n"
    "  -V, --version        show the version\n"
    "\n"
    "IMAGE may also be a json:{...} pseudo file name. Sizes take k, M, G, T\n"
    "suffixes. Run 'blockgraph io -c help' for the commands; see docs/io.md.\n"
    "Exit status: 0 if every command succeeded, 1 otherwise.\n";

enum { kOptImageOpts = 256 };

// What the command line asks for.
struct IoOptions {
    ImageOpenSpec spec = default_open_spec();
    std::vector<std::string> cmds;   // -c, in order; empty: read stdin
    bool misalign = false;           // -m
    std::string image;               // empty: start without an image
};

// Parses cmd_io's arguments into *opts. Returns -1 to go on, or the exit
// status to return at once: 0 after --help, 1 after printing an error.
int parse_io_args(int argc, char **argv, IoOptions *opts)
{
    static const struct option kLongOpts[] = {
        {"help", no_argument, nullptr, 'h'},
        {"version", no_argument, nullptr, 'V'},
        {"cmd", required_argument, nullptr, 'c'},
        {"format", required_argument, nullptr, 'f'},
        {"read-only", no_argument, nullptr, 'r'},
        {"snapshot", no_argument, nullptr, 's'},
        {"nocache", no_argument, nullptr, 'n'},
        {"misalign", no_argument, nullptr, 'm'},
        {"aio", required_argument, nullptr, 'i'},
        {"discard", required_argument, nullptr, 'd'},
        {"cache", required_argument, nullptr, 't'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force-share", no_argument, nullptr, 'U'},
        {"copy-on-read", no_argument, nullptr, 'C'},
        {"native-aio", no_argument, nullptr, 'k'},
        {"trace", required_argument, nullptr, 'T'},
        {nullptr, 0, nullptr, 0},
    };
    ImageOpenSpec &spec = opts->spec;
    optind = 0;
    opterr = 0;
    int c;
    // GNU getopt permutes: options may follow the image, as with qemu-io.
    while ((c = getopt_long(argc, argv, "hVc:d:f:rsnmki:t:T:UC", kLongOpts, nullptr)) != -1) {
        switch (c) {
        case 'h': std::fputs(kUsage, stdout); return 0;
        case 'V': print_tool_version("blockgraph io"); return 0;
        case 'c': opts->cmds.emplace_back(optarg); continue;
        case 'm': opts->misalign = true; continue;
        case kOptImageOpts: spec.image_opts = true; continue;
        case 'T': {
            int t = parse_trace_option(optarg, kProg);
            if (t >= 0) return t;
            continue;
        }
        default: break;
        }
        int r = apply_open_option(c, optarg, &spec);
        if (r < 0) return 1;
        if (r > 0) continue;
        // optopt is set for short options (missing argument or unknown).
        // getopt's own wording (as qemu-io prints it), then a pointer to the help.
        if (optopt && optopt < 256) {
            std::fprintf(stderr, "%s: %s -- '%c'\n", kProg,
                         std::strchr("cdfitT", optopt) ? "option requires an argument" : "invalid option", optopt);
        } else {
            std::fprintf(stderr, "%s: unrecognized option '%s'\n", kProg, argv[optind - 1]);
        }
        std::fprintf(stderr, "Try '%s --help' for more information\n", kProg);
        return 1;
    }
    const int nimages = argc - optind;   // the operands getopt left at the end
    if (nimages > 1) {
        std::fprintf(stderr, "%s: expected at most one image, got '%s' and '%s'; see '%s --help'\n",
                     kProg, argv[optind], argv[optind + 1], kProg);
        return 1;
    }
    if (spec.image_opts && !spec.format.empty()) {
        std::fprintf(stderr, "%s: --image-opts and -f are mutually exclusive\n", kProg);
        return 1;
    }
    if (nimages == 1) opts->image = argv[optind];
    return -1;
}

// Runs the -c commands in order, or without any the lines of stdin (with a
// prompt when stdin is a terminal), until the end or 'quit'. Returns the
// last command error (a negative errno), 0 if none failed.
int run_commands(IoShell &shell, const std::vector<std::string> &cmds)
{
    int last_error = 0;
    if (!cmds.empty()) {
        for (size_t i = 0; i < cmds.size() && !shell.quit(); i++) {
            int ret = shell.run_line(cmds[i]);
            if (ret < 0) last_error = ret;
        }
        return last_error;
    }
    bool tty = isatty(STDIN_FILENO);
    std::string line;
    while (!shell.quit()) {
        if (tty) {
            std::fputs(kPrompt, stdout);
            std::fflush(stdout);
        }
        if (!shell.fetch_line(&line)) {
            if (tty) std::putchar('\n');
            break;
        }
        int ret = shell.run_line(line);
        if (ret < 0) last_error = ret;
    }
    return last_error;
}

} // namespace
} // namespace io

int cmd_io(int argc, char **argv)
{
    using namespace io;
    kProg = tool_prog(kProg);
    IoOptions opts;
    if (!take_object_args(&argc, argv, 1, kProg)) return 1;
    int status = parse_io_args(argc, argv, &opts);
    if (status >= 0) return status;

    std::unique_ptr<AioContext> ctx = AioContext::create();
    AioContext::set_current(ctx.get());
    int last_error = 0;
    {
        IoShell shell(ctx.get(), opts.spec.image_opts, opts.misalign);
        if (!opts.image.empty()) {
            opts.spec.image = opts.image;
            if (!shell.open_image_spec(opts.spec)) return 1;
        }
        last_error = run_commands(shell, opts.cmds);
        // Outstanding aio requests complete (and print) before exit, as in
        // qemu-io, and the image is closed while the context still exists.
        shell.wait_aio_outside();
        shell.close_image();
    }
    std::fflush(stdout);
    AioContext::set_current(nullptr);
    return last_error < 0 ? 1 : 0;
}

} // namespace bg

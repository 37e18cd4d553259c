// tools/io-misc.cc -- "blockgraph io": the commands other than data I/O and
// the session: discard, flush, truncate, length, map, alloc, sleep, quit,
// sigraise, abort, the blkdebug breakpoint commands. See tools/io-cmd.h.
#include <getopt.h>
#include <signal.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "qapi/block-parse.h"
#include "tools/img.h"
#include "tools/io-cmd.h"

namespace bg {
namespace io {

int IoShell::cmd_discard(int argc, char **argv)
{
    bool cflag = false, qflag = false;
    int c;
    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C': cflag = true; break;
        case 'q': qflag = true; break;
        default: return usage(&IoShell::cmd_discard);
        }
    }
    if (optind != argc - 2) return usage(&IoShell::cmd_discard);
    int64_t offset = 0;
    if (int r = parse_num(argv[optind], &offset)) return r;
    optind++;
    int64_t bytes = 0;
    if (int r = parse_num(argv[optind], &bytes)) return r;
    if (bytes > kMaxRequestBytes) {
        std::printf("length cannot exceed %" PRIu64 ", given %s\n", static_cast<uint64_t>(kMaxRequestBytes),
                    argv[optind]);
        return -EINVAL;
    }
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int ret = blk()->co_pdiscard(offset, bytes);
    Elapsed t = elapsed_since(t1);
    if (ret < 0) {
        std::printf("discard failed: %s\n", std::strerror(-ret));
        return ret;
    }
    if (!qflag) print_report("discard", t, offset, bytes, bytes, 1, cflag);
    return 0;
}

int IoShell::cmd_flush(int, char **)
{
    return blk()->co_flush();
}

int IoShell::cmd_truncate(int argc, char **argv)
{
    PreallocMode prealloc = PreallocMode::kOff;
    int c;
    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            if (!parse_prealloc_mode(optarg, &prealloc)) {
                std::fprintf(stderr, "%s: Invalid preallocation mode '%s'\n", kProg, optarg);
                return -EINVAL;
            }
            break;
        default: return usage(&IoShell::cmd_truncate);
        }
    }
    // Extra arguments are ignored, as qemu-io does.
    if (optind >= argc) return usage(&IoShell::cmd_truncate);
    int64_t offset = 0;
    // qemu-io names argv[1] in the error, whatever the options.
    if (int r = parse_num(argv[optind], argv[1], &offset)) return r;
    int ret = blk()->co_truncate(offset, false, prealloc);
    if (ret < 0) {
        std::fprintf(stderr, "%s: Failed to resize the image to %" PRId64 " bytes: %s\n", kProg, offset,
                     std::strerror(-ret));
        return ret;
    }
    return 0;
}

// qemu-io's info: format, cluster size, where a VM state would be stored
// (qcow2: past the last guest byte's L2 range), the format-specific data.
int IoShell::cmd_info(int, char **)
{
    BlockNode *n = img_->root;
    Result<ImageInfo> ri = n->get_info();
    uint64_t cs = 0, vm_state = 0;
    if (ri && ri.value().cluster_size) cs = *ri.value().cluster_size;
    if (cs && std::strcmp(n->driver_name(), "qcow2") == 0) {
        const InfoValue *data = ri.value().format_specific.find("data");
        const InfoValue *ext = data ? data->find("extended-l2") : nullptr;
        const uint64_t per_l2 = cs / ((ext && ext->kind == InfoValue::Kind::kBool && ext->b) ? 16 : 8);
        const uint64_t range = cs * per_l2;
        const int64_t len = n->getlength();
        if (len > 0) vm_state = (static_cast<uint64_t>(len) + range - 1) / range * range;
    }
    std::printf("format name: %s\n", n->driver_name());
    std::printf("cluster size: %s\n", cvtstr(static_cast<double>(cs)).c_str());
    std::printf("vm state offset: %s\n", cvtstr(static_cast<double>(vm_state)).c_str());
    if (ri) img::print_format_specific_human(ri.value().format_specific);
    return 0;
}

int IoShell::cmd_length(int, char **)
{
    int64_t size = blk()->getlength();
    if (size < 0) {
        std::printf("getlength: %s\n", std::strerror(static_cast<int>(-size)));
        return static_cast<int>(size);
    }
    std::printf("%s\n", cvtstr(static_cast<double>(size)).c_str());
    return 0;
}

// bdrv_is_allocated on the top node: 1 allocated, 0 not, or negative errno;
// *pnum bytes share the answer (0 only at end of image).
int IoShell::is_allocated(int64_t offset, int64_t bytes, int64_t *pnum)
{
    int64_t map = 0;
    BlockNode *file = nullptr;
    int ret = img_->root->co_block_status(false, offset, bytes, pnum, &map, &file);
    if (ret < 0) return ret;
    return (ret & kStatusAllocated) ? 1 : 0;
}

int IoShell::map_is_allocated(int64_t offset, int64_t bytes, int64_t *pnum)
{
    int64_t num;
    int ret = is_allocated(offset, bytes, &num);
    if (ret < 0) return ret;
    int firstret = ret;
    *pnum = num;
    while (bytes > 0 && ret == firstret) {
        offset += num;
        bytes -= num;
        ret = is_allocated(offset, bytes, &num);
        if (ret == firstret && num) {
            *pnum += num;
        } else {
            break;
        }
    }
    return firstret;
}

int IoShell::cmd_map(int, char **)
{
    int64_t offset = 0;
    int64_t bytes = blk()->getlength();
    if (bytes < 0) {
        std::fprintf(stderr, "%s: Failed to query image length: %s\n", kProg,
                     std::strerror(static_cast<int>(-bytes)));
        return static_cast<int>(bytes);
    }
    while (bytes) {
        int64_t num = 0;
        int ret = map_is_allocated(offset, bytes, &num);
        if (ret < 0) {
            std::fprintf(stderr, "%s: Failed to get allocation status: %s\n", kProg, std::strerror(-ret));
            return ret;
        }
        if (!num) {
            std::fprintf(stderr, "%s: Unexpected end of image\n", kProg);
            return -EIO;
        }
        std::printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n",
                    cvtstr(static_cast<double>(num)).c_str(), static_cast<uint64_t>(num),
                    ret ? "    allocated" : "not allocated", cvtstr(static_cast<double>(offset)).c_str(),
                    static_cast<uint64_t>(offset));
        offset += num;
        bytes -= num;
    }
    return 0;
}

int IoShell::cmd_alloc(int argc, char **argv)
{
    int64_t start = 0;
    if (int r = parse_num(argv[1], &start)) return r;
    int64_t offset = start, count = 512;
    if (argc == 3) {
        if (int r = parse_num(argv[2], &count)) return r;
    }
    int64_t remaining = count, sum_alloc = 0;
    while (remaining) {
        int64_t num = 0;
        int ret = is_allocated(offset, remaining, &num);
        if (ret < 0) {
            std::printf("is_allocated failed: %s\n", std::strerror(-ret));
            return ret;
        }
        offset += num;
        remaining -= num;
        if (ret) sum_alloc += num;
        if (num == 0) {
            count -= remaining;
            remaining = 0;
        }
    }
    std::printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n", sum_alloc, count,
                cvtstr(static_cast<double>(start)).c_str());
    return 0;
}

int IoShell::cmd_sleep(int, char **argv)
{
    char *end = nullptr;
    long ms = std::strtol(argv[1], &end, 0);
    if (ms < 0 || *end != '\0') {
        std::printf("%s is not a valid number\n", argv[1]);
        return -EINVAL;
    }
    co_sleep_ns(static_cast<int64_t>(ms) * 1000000);
    return 0;
}

int IoShell::cmd_quit(int, char **)
{
    quit_ = true;
    return 0;
}

// blkdebug breakpoints (BlockNode::debug_set_breakpoint and friends, found
// down the top node's primary children). Errors are printed to stdout, as
// qemu-io prints them, and fail the command.
int IoShell::cmd_break(int, char **argv)
{
    int r = img_->root->debug_set_breakpoint(argv[1], argv[2]);
    if (r < 0) std::printf("Could not set breakpoint: %s\n", std::strerror(-r));
    return r;
}

int IoShell::cmd_remove_break(int, char **argv)
{
    int r = img_->root->debug_remove_breakpoint(argv[1]);
    if (r < 0) std::printf("Could not remove breakpoint %s: %s\n", argv[1], std::strerror(-r));
    return r;
}

int IoShell::cmd_resume(int, char **argv)
{
    int r = img_->root->debug_resume_request(argv[1]);
    if (r < 0) std::printf("Could not resume request: %s\n", std::strerror(-r));
    return r;
}

// Lets the loop run (aio requests progress) until a request is suspended at
// the tag; as in qemu-io, forever if none ever is (e.g. no blkdebug node).
int IoShell::cmd_wait_break(int, char **argv)
{
    while (!img_->root->debug_is_suspended(argv[1])) co_sleep_ns(1000000);
    return 0;
}

// Simulates a crash: the process sends itself the signal with nothing of
// the image flushed or closed (only stdout and stderr are flushed, so that
// the output so far is seen). A signal that does not end the process (0,
// an ignored one) returns 0.
int IoShell::cmd_sigraise(int, char **argv)
{
    int64_t sig = 0;
    if (int r = parse_num(argv[1], &sig)) return r;
    if (sig > NSIG) {
        std::printf("signal argument '%s' is too large to be a valid signal\n", argv[1]);
        return -EINVAL;
    }
    std::fflush(stdout);
    std::fflush(stderr);
    raise(static_cast<int>(sig));
    return 0;
}

// Simulates a crash with abort(3): SIGABRT, nothing flushed or closed.
int IoShell::cmd_abort(int, char **)
{
    std::abort();
}

} // namespace io
} // namespace bg

// tools/img-bench.cc -- "blockgraph img bench": qemu-img bench's request
// generator on the block graph (depth coroutines, each issuing requests at
// the next offset until count requests have been sent).
#include <cerrno>
#include <cinttypes>
#include <cstdlib>
#include <cstring>

#include "tools/img.h"
#include "util/aio.h"
#include "util/coroutine-lock.h"
#include "util/iov.h"

namespace bg {
namespace img {

namespace {

enum { kOptPattern = 256, kOptFlushInterval, kOptNoDrain, kOptImageOpts };

struct Bench {
    BlockBackend *blk = nullptr;
    int64_t image_size = 0;
    int64_t bufsize = 4096;
    int64_t step = 0;
    int64_t offset = 0;         // next request's offset
    int64_t count = 75000;
    int64_t depth = 64;
    bool write = false;
    int pattern = 0;
    int64_t flush_interval = 0;
    bool drain_on_flush = true;

    int64_t issued = 0;         // requests started
    int64_t completed = 0;
    int64_t writes_since_flush = 0;
    int in_flight = 0;
    bool flushing = false;
    int error = 0;
    CoQueue wait_flush;         // requests waiting while a draining flush runs
    CoQueue wait_idle;          // the flusher waiting for in-flight requests
    int running = 0;
    Coroutine *waiter = nullptr;

    void coroutine_fn worker(uint8_t *buf);
};

void Bench::worker(uint8_t *buf)
{
    while (!error && issued < count) {
        while (flushing && drain_on_flush) wait_flush.wait();
        if (error || issued >= count) break;
        int64_t off = offset;
        issued++;
        offset += step;
        // qemu-img bench's wrap-around.
        offset = image_size <= bufsize ? 0 : offset % (image_size - bufsize);
        in_flight++;
        int r = write ? blk->co_pwrite(off, bufsize, buf) : blk->co_pread(off, bufsize, buf);
        in_flight--;
        if (flushing && in_flight == 0) wait_idle.restart_all();
        if (r < 0) {
            if (!error) {
                error = r;
                img::error("Failed request: %s", std::strerror(-r));
            }
            break;
        }
        completed++;
        if (write && flush_interval && ++writes_since_flush >= flush_interval && !flushing) {
            writes_since_flush = 0;
            flushing = true;
            if (drain_on_flush) {
                while (in_flight > 0) wait_idle.wait();
            }
            int f = blk->co_flush();
            flushing = false;
            wait_flush.restart_all();
            if (f < 0 && !error) {
                error = f;
                img::error("Failed flush request: %s", std::strerror(-f));
                break;
            }
        }
    }
}

// What the command line asks for besides the request parameters.
struct BenchArgs {
    OpenArgs oa;            // the image
    std::string aio;        // -i; empty: the driver's default
    bool step_set = false;  // -S given
};

// --pattern: a byte value in any strtol base. false if bad.
bool parse_pattern_byte(const char *arg, int *out)
{
    char *end = nullptr;
    errno = 0;
    long v = std::strtol(arg, &end, 0);
    if (errno || !*arg || *end || v < 0 || v > 0xff) return false;
    *out = static_cast<int>(v);
    return true;
}

// The getopt loop of bench. Returns -1 to go on, or the exit status (1
// after printing the error).
int parse_bench_opts(int argc, char **argv, Bench *b, BenchArgs *a)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"flush-interval", required_argument, nullptr, kOptFlushInterval},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"pattern", required_argument, nullptr, kOptPattern},
        {"no-drain", no_argument, nullptr, kOptNoDrain},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs &oa = a->oa;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", kLong, nullptr)) != -1) {
        switch (c) {
        case 'c':
            if (!parse_int(optarg, 1, INT32_MAX, &b->count)) {
                error("Invalid request count specified");
                return 1;
            }
            break;
        case 'd':
            if (!parse_int(optarg, 1, INT32_MAX, &b->depth)) {
                error("Invalid queue depth specified");
                return 1;
            }
            break;
        case 'f': oa.format = optarg; break;
        case 'n': oa.cache = "none"; break;
        case 'i': a->aio = optarg; break;
        case 'o': {
            Result<int64_t> r = parse_img_number(optarg, "offset", 0, INT64_MAX);
            if (!r) {
                error("%s", r.msg().c_str());
                return 1;
            }
            b->offset = r.value();
            break;
        }
        case 'q': g_quiet = true; break;
        case 's': {
            Result<int64_t> r = parse_img_number(optarg, "buffer size", 0, INT32_MAX);
            if (!r) {
                // 0 is taken, as by qemu-img: requests of no bytes.
                error("%s", r.msg().c_str());
                return 1;
            }
            b->bufsize = r.value();
            break;
        }
        case 'S': {
            Result<int64_t> r = parse_img_number(optarg, "step_size", 0, INT32_MAX);
            if (!r) {
                error("%s", r.msg().c_str());
                return 1;
            }
            b->step = r.value();
            a->step_set = true;
            break;
        }
        case 't': oa.cache = optarg; break;
        case 'w': b->write = true; break;
        case 'U': oa.force_share = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        case kOptPattern:
            if (!parse_pattern_byte(optarg, &b->pattern)) {
                error("Invalid pattern byte specified");
                return 1;
            }
            break;
        case kOptFlushInterval: {
            int64_t v;
            if (!parse_int(optarg, 0, INT32_MAX, &v)) {
                error("Invalid flush interval specified");
                return 1;
            }
            b->flush_interval = v;
            break;
        }
        case kOptNoDrain: b->drain_on_flush = false; break;
        default: return bad_option(argc, argv, "cdfiosSt");
        }
    }
    return -1;
}

// Parses bench's arguments into the request parameters (*b) and how to open
// the image (*oa). Returns -1 to go on, or the exit status (1 after printing
// the error).
int parse_bench_args(int argc, char **argv, Bench *b, OpenArgs *oa)
{
    BenchArgs a;
    int status = parse_bench_opts(argc, argv, b, &a);
    if (status >= 0) return status;
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    if (b->flush_interval && !b->write) {
        error("--flush-interval is only available in write tests");
        return 1;
    }
    if (b->flush_interval && b->flush_interval < b->depth) {
        error("Flush interval can't be smaller than depth");
        return 1;
    }
    if (!a.step_set || b->step == 0) b->step = b->bufsize;   // qemu-img: step 0 means the buffer size
    *oa = std::move(a.oa);
    oa->name = argv[optind];
    oa->read_only = !b->write;
    if (!a.aio.empty()) {
        Result<BlockdevAioOptions> r = parse_aio_mode(a.aio);
        if (!r) {
            error("Invalid aio option: %s", a.aio.c_str());
            return 1;
        }
        oa->aio = r.value();
    }
    return -1;
}

// Runs the requests: min(depth, count) workers, each with a buffer of its
// own filled with the pattern, until count requests were sent or one
// failed (b->error). Returns the time taken in nanoseconds.
int64_t run_bench(Bench *b)
{
    int64_t nbufs = std::min(b->depth, b->count);
    std::vector<AlignedBuf> bufs;
    for (int64_t i = 0; i < nbufs; i++) {
        bufs.push_back(aligned_alloc_buf(4096, static_cast<size_t>(std::max<int64_t>(b->bufsize, 1))));
        std::memset(bufs.back().get(), b->pattern, static_cast<size_t>(b->bufsize));
    }
    int64_t t0 = clock_ns();
    run_in_coroutine([&]() {
        AioContext *ctx = AioContext::current();
        b->running = static_cast<int>(nbufs);
        b->waiter = coroutine_self();
        struct Arg {
            Bench *b;
            uint8_t *buf;
        };
        std::vector<Arg> args;
        args.reserve(static_cast<size_t>(nbufs));
        for (int64_t i = 0; i < nbufs; i++) args.push_back(Arg{b, bufs[static_cast<size_t>(i)].get()});
        for (Arg &a : args) {
            ctx->co_schedule(coroutine_create(
                [](void *p) {
                    auto *arg = static_cast<Arg *>(p);
                    arg->b->worker(arg->buf);
                    if (--arg->b->running == 0) coroutine_wake(arg->b->waiter);
                },
                &a));
        }
        coroutine_yield();
    });
    return clock_ns() - t0;
}

} // namespace

int img_bench(int argc, char **argv)
{
    Bench b;
    OpenArgs oa;
    int status = parse_bench_args(argc, argv, &b, &oa);
    if (status >= 0) return status;
    std::unique_ptr<OpenImage> img = open_img(oa);
    if (!img) return 1;
    b.blk = img->blk.get();
    b.image_size = b.blk->getlength();
    if (b.image_size < b.bufsize) {
        error("Image is smaller than the request size");
        return 1;
    }

    // Printed even with -q, as qemu-img bench does: the timing is the result.
    std::printf("Sending %" PRId64 " %s requests, %" PRId64 " bytes each, %" PRId64
            " in parallel (starting at offset %" PRId64 ", step size %" PRId64 ")\n",
            b.count, b.write ? "write" : "read", b.bufsize, b.depth, b.offset, b.step);
    if (b.flush_interval) std::printf("Sending flush every %" PRId64 " requests\n", b.flush_interval);
    std::fflush(stdout);

    int64_t elapsed = run_bench(&b);
    if (b.error) return 1;
    if (b.write) {
        int f = run_in_coroutine([&]() { return b.blk->co_flush(); });
        if (f < 0) {
            error("Failed flush request: %s", std::strerror(-f));
            return 1;
        }
    }
    std::printf("Run completed in %3.3f seconds.\n", static_cast<double>(elapsed) / 1e9);
    return 0;
}

} // namespace img
} // namespace bg

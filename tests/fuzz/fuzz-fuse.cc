// libFuzzer target: arbitrary bytes as the kernel's side of a FUSE
// export: a sequence of requests decoded and served by the export's own
// code (export/fuse/ops.cc), without mounting.
//
// The export is made by FuseExport::create_unmounted() with a transport of
// our own (FakeTransport below) in place of /dev/fuse or the io_uring ring:
// it hands the export requests cut from the input, laid out in its buffers
// as one of the two real transports lays them out, and checks every reply.
//
// Input: one configuration byte, then records. Configuration bits:
//   0  a valid INIT (protocol 7.31, the flags a kernel offers) goes first
//   1  ring layout (export/fuse/uring.cc): the first 128 argument bytes in
//      the op_in area, the rest in the payload; clear: /dev/fuse layout
//      (export/fuse/dev.cc): up to 40 argument bytes after the in-header,
//      the rest at payload[0]
//   2  read-only export (else writable)
//   3  growable
//   4  the node is a 1 MiB qcow2 image in a temporary directory (rewritten
//      from the same bytes for every input) with some data and a hole;
//      clear: a null-co node of 1 MiB
//   5  writethrough
// A record is a 4-byte little-endian word w, then n = w & 0xffffff bytes
// (fewer if the input ends): the request as the transport received it,
// fuse_in_header first. Its header may say anything (len, opcode, unique):
// the transports pass the kernel's header on as it is. A record shorter
// than the in-header is dropped, as both transports do. Bit 31 of w: run
// the requests delivered so far to completion before this one (else the
// record is delivered in the same batch, and the requests run
// concurrently, as the kernel's do).
//
// Checked besides ASan/UBSan/leaks: every request but FORGET,
// BATCH_FORGET and INTERRUPT gets exactly one reply, those get none; a
// reply's unique is the request's, its header's len is the bytes sent, its
// error is 0 or a negative errno, an error reply carries no data, and a
// successful one no more than the opcode allows (READ: the size asked for;
// WRITE: a fuse_write_out whose size is at most the size written; INIT,
// GETATTR, SETATTR, OPEN, STATFS, LSEEK: their structure); every request
// finishes (a bounded number of loop rounds); the export shuts down.
//
// Build and run: make fuzz / make check-fuzz (tests/fuzz/fuzz.mk).
// tests/fuzz/make-corpus-fuse.py writes the seed corpus.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "block/block.h"
#include "block/image-mgmt.h"
#include "export/fuse/internal.h"
#include "util/aio.h"
#include "util/log.h"

using namespace bg;

namespace {

[[noreturn]] void fail(const char *what, const fuse_in_header &h)
{
    std::fprintf(stderr, "fuzz-fuse: %s (opcode %u, unique %llu)\n", what, h.opcode,
                 static_cast<unsigned long long>(h.unique));
    abort();
}

// What a request asked, kept to judge its reply.
struct Sent {
    fuse_in_header h;
    uint8_t args[128];   // the first argument bytes (zero-padded)
    size_t args_len;
    int replies = 0;
    bool released = false;
};

class FakeTransport final : public FuseTransport {
  public:
    explicit FakeTransport(FuseQueue *q) : q_(q) {}
    ~FakeTransport() override
    {
        for (auto *r : all_) delete r;
    }
    void start() override { started_ = true; }
    void stop() override { started_ = false; }
    void send(FuseRequest *req, const fuse_out_header &oh, const void *data, size_t len) override;
    void release(FuseRequest *req) override;

    // Delivers one request of n bytes at p in the chosen layout.
    void deliver(const uint8_t *p, size_t n, bool ring);
    size_t running() const { return delivered_ - released_; }
    void check_all_replied() const;

  private:
    FuseQueue *q_;
    bool started_ = false;
    std::vector<FuseRequest *> all_;
    std::vector<Sent> sent_;
    std::map<FuseRequest *, size_t> index_;   // request -> its Sent
    std::vector<std::unique_ptr<uint8_t[]>> ring_areas_;   // the op_in areas of the ring layout
    uint8_t sink_[4096];
    size_t delivered_ = 0, released_ = 0;
    Sent &sent_of(FuseRequest *req) { return sent_[index_.at(req)]; }
};

void FakeTransport::deliver(const uint8_t *p, size_t n, bool ring)
{
    if (!started_ || n < sizeof(fuse_in_header)) return;
    auto *req = new FuseRequest;
    all_.push_back(req);
    req->q = q_;
    req->transport = this;
    Sent s;
    memcpy(&s.h, p, sizeof(s.h));
    memset(s.args, 0, sizeof(s.args));
    s.args_len = std::min(n - sizeof(fuse_in_header), sizeof(s.args));
    memcpy(s.args, p + sizeof(fuse_in_header), s.args_len);
    const uint8_t *rest;
    size_t rest_len;
    if (ring) {
        // uring.cc: the header, then a fixed 128-byte op_in area (the kernel
        // zero-fills what the request does not use), then the payload.
        req->payload = aligned_alloc_buf(4096, kFuseMaxWrite);
        memcpy(req->hdr, p, sizeof(fuse_in_header));
        ring_areas_.push_back(std::make_unique<uint8_t[]>(128));
        memcpy(ring_areas_.back().get(), s.args, sizeof(s.args));
        req->args[0] = ring_areas_.back().get();
        req->args_len[0] = 128;
        size_t used = sizeof(fuse_in_header) + std::min<size_t>(n - sizeof(fuse_in_header), 128);
        rest = p + used;
        rest_len = std::min<size_t>(n - used, kFuseMaxWrite);
        req->args[1] = nullptr;
        req->args_len[1] = 0;
    } else {
        // dev.cc: the in-header and up to kFuseHeaderArea bytes in hdr, the
        // rest at payload[0].
        req->payload = aligned_alloc_buf(4096, kFusePayloadSize);
        size_t head = std::min(n, kFuseHeaderArea);
        memcpy(req->hdr, p, head);
        req->args[0] = req->hdr + sizeof(fuse_in_header);
        req->args_len[0] = head - sizeof(fuse_in_header);
        rest = p + head;
        rest_len = std::min(n - head, kFusePayloadSize);
        req->args[1] = req->payload.get();
        req->args_len[1] = rest_len;
    }
    memcpy(req->payload.get(), rest, rest_len);
    req->payload_len = rest_len;
    index_[req] = sent_.size();
    sent_.push_back(s);
    delivered_++;
    q_->deliver(req);
}

void FakeTransport::send(FuseRequest *req, const fuse_out_header &oh, const void *data, size_t len)
{
    Sent &s = sent_of(req);
    const fuse_in_header &h = s.h;
    if (s.released) fail("reply after release", h);
    if (++s.replies > 1) fail("two replies", h);
    if (oh.unique != h.unique) fail("the reply's unique is not the request's", h);
    if (oh.len != sizeof(oh) + len) fail("the reply header's len is not the bytes sent", h);
    if (len && !data) fail("reply data missing", h);
    if (oh.error > 0 || oh.error < -4095) fail("error is not a negative errno", h);
    if (oh.error < 0 && len) fail("an error reply carries data", h);
    if (h.opcode == FUSE_FORGET || h.opcode == FUSE_BATCH_FORGET || h.opcode == FUSE_INTERRUPT)
        fail("a reply to a request that wants none", h);
    if (len) memcpy(sink_, data, std::min(len, sizeof(sink_)));   // ASan: the data is readable
    if (oh.error < 0) return;
    size_t max = 0;
    switch (h.opcode) {
    case FUSE_INIT: {
        if (len != 8 && len != sizeof(fuse_init_out)) fail("INIT reply size", h);
        fuse_init_in in;
        memcpy(&in, s.args, sizeof(in));
        fuse_init_out out;
        memset(&out, 0, sizeof(out));
        memcpy(&out, data, len);
        if (out.major != FUSE_KERNEL_VERSION) fail("INIT reply major", h);
        if (len == sizeof(out)) {
            if (out.minor > in.minor) fail("INIT reply minor above the kernel's", h);
            if (out.flags & ~(in.flags | fuse_uapi::kInitExt)) fail("INIT reply flags not offered", h);
            if (out.max_write != kFuseMaxWrite) fail("INIT max_write", h);
        }
        return;
    }
    case FUSE_READ: {
        fuse_read_in in;
        memcpy(&in, s.args, sizeof(in));
        max = in.size;
        break;
    }
    case FUSE_WRITE: {
        if (len != sizeof(fuse_write_out)) fail("WRITE reply size", h);
        fuse_write_in in;
        memcpy(&in, s.args, sizeof(in));
        fuse_write_out out;
        memcpy(&out, data, sizeof(out));
        if (out.size > in.size) fail("WRITE reply: more written than sent", h);
        return;
    }
    case FUSE_GETATTR:
    case FUSE_SETATTR:
        if (len != sizeof(fuse_attr_out)) fail("attr reply size", h);
        return;
    case FUSE_OPEN:
        if (len != sizeof(fuse_open_out)) fail("OPEN reply size", h);
        return;
    case FUSE_STATFS:
        if (len != sizeof(fuse_statfs_out)) fail("STATFS reply size", h);
        return;
    case FUSE_LSEEK: {
        if (len != sizeof(fuse_lseek_out)) fail("LSEEK reply size", h);
        fuse_lseek_in in;
        memcpy(&in, s.args, sizeof(in));
        fuse_lseek_out out;
        memcpy(&out, data, sizeof(out));
        if (out.offset < in.offset) fail("LSEEK went backwards", h);
        return;
    }
    default:
        max = 0;   // FLUSH, FSYNC, RELEASE, FALLOCATE, DESTROY: no data
        break;
    }
    if (len > max) fail("reply longer than the request allows", h);
}

void FakeTransport::release(FuseRequest *req)
{
    Sent &s = sent_of(req);
    if (s.released) fail("released twice", s.h);
    s.released = true;
    released_++;
}

void FakeTransport::check_all_replied() const
{
    for (const Sent &s : sent_) {
        if (!s.released) fail("never finished", s.h);
        bool none = s.h.opcode == FUSE_FORGET || s.h.opcode == FUSE_BATCH_FORGET || s.h.opcode == FUSE_INTERRUPT;
        if (!none && s.replies != 1) fail("no reply", s.h);
    }
}

struct Env {
    std::unique_ptr<AioContext> ctx;
    std::string dir, image;
    std::vector<char> pristine;   // the qcow2 image's bytes
    Env()
    {
        // The export logs refused requests (an old INIT, a size the node
        // refuses) as errors: expected here, by the thousand.
        log_set_level(LogLevel::kError);
        ctx = AioContext::create(g_main_context_default());
        AioContext::set_current(ctx.get());
        // A growable export grows the image as asked: FALLOCATE mode 0 past
        // the end preallocates, and a fuzzed length can be a terabyte. No
        // file of this process may pass 256 MiB (writes beyond fail with
        // EFBIG instead of SIGXFSZ); the image stays far below that
        // otherwise, and libFuzzer's own files are at most -max_len.
        struct rlimit rl = {256 << 20, 256 << 20};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) abort();
        signal(SIGXFSZ, SIG_IGN);
        // In memory where there is /dev/shm: the image is rewritten and
        // flushed for every input.
        std::string base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        std::string tmpl = base + "/bg-fuzz-fuse.XXXXXX";
        if (!mkdtemp(tmpl.data())) abort();
        dir = tmpl;
        image = dir + "/img.qcow2";
        make_image();
        // Nothing stays on disk between inputs (libFuzzer may end the
        // process without running exit handlers).
        unlink(image.c_str());
        rmdir(dir.c_str());
    }
    // A 1 MiB qcow2 image (64 KiB clusters) with data at 0 and 512 KiB and
    // a zero cluster at 256 KiB, made through our own driver.
    void make_image()
    {
        BlockGraph g;
        ImgCreateParams p;
        p.fmt = "qcow2";
        p.filename = image;
        p.opts.set("size", "1M");
        if (!img_create(builtin_drivers(), p).ok()) abort();
        auto n = g.add_node_json({{"driver", "qcow2"}, {"node-name", "q"}, {"file", {{"driver", "file"}, {"filename", image}}}});
        if (!n) abort();
        auto b = BlockBackend::create(n.value(), kPermConsistentRead | kPermWrite, kPermAll, "fuzz");
        if (!b.ok()) abort();
        std::vector<uint8_t> buf(65536, 0xa5);
        int r = run_in_coroutine([&] {
            int e = b.value()->co_pwrite(0, 65536, buf.data());
            if (e == 0) e = b.value()->co_pwrite(512 << 10, 65536, buf.data());
            if (e == 0) e = b.value()->co_pwrite_zeroes(256 << 10, 65536, 0);
            if (e == 0) e = b.value()->co_flush();
            return e;
        });
        if (r < 0) abort();
        b.value().reset();
        g.close_all();
        std::ifstream f(image, std::ios::binary);
        pristine.assign(std::istreambuf_iterator<char>(f), {});
    }
};

Env &env()
{
    static Env *e = new Env();   // lives for the process (libFuzzer never exits cleanly)
    return *e;
}

// An INIT as a 7.31 kernel sends it: the request bytes of one record.
std::vector<uint8_t> valid_init()
{
    std::vector<uint8_t> r(sizeof(fuse_in_header) + sizeof(fuse_init_in), 0);
    fuse_in_header h{};
    h.len = static_cast<uint32_t>(r.size());
    h.opcode = FUSE_INIT;
    h.unique = 1;
    fuse_init_in in{};
    in.major = FUSE_KERNEL_VERSION;
    in.minor = 31;
    in.max_readahead = 131072;
    in.flags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS;
    memcpy(r.data(), &h, sizeof(h));
    memcpy(r.data() + sizeof(h), &in, sizeof(in));
    return r;
}

void run_until_idle(AioContext *ctx, FakeTransport *t)
{
    for (int round = 0; t->running() > 0; round++) {
        if (round > 100000) {
            std::fprintf(stderr, "fuzz-fuse: a request did not finish\n");
            abort();
        }
        ctx->iterate(round > 0);
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Env &e = env();
    if (size == 0) return 0;
    uint8_t cfg = data[0];
    data++;
    size--;

    BlockGraph graph;
    nlohmann::json node;
    if (cfg & 16) {
        mkdir(e.dir.c_str(), 0700);
        int fd = open(e.image.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
        if (fd < 0 || write(fd, e.pristine.data(), e.pristine.size()) != static_cast<ssize_t>(e.pristine.size()))
            abort();
        close(fd);
        node = {{"driver", "qcow2"}, {"node-name", "n0"}, {"file", {{"driver", "file"}, {"filename", e.image}}}};
    } else {
        node = {{"driver", "null-co"}, {"node-name", "n0"}, {"size", 1 << 20}};
    }
    if (!graph.add_node_json(node)) abort();

    BlockExportOptions opts;
    opts.type = "fuse";
    opts.id = "e0";
    opts.node_name = "n0";
    opts.writable = !(cfg & 4);
    opts.fuse.growable = cfg & 8;
    opts.writethrough = cfg & 32;
    FakeTransport *t = nullptr;
    auto x = FuseExport::create_unmounted(graph, opts, [&](FuseQueue *q) {
        auto u = std::make_unique<FakeTransport>(q);
        t = u.get();
        return u;
    });
    if (!x.ok()) {
        std::fprintf(stderr, "fuzz-fuse: export: %s\n", x.msg().c_str());
        abort();
    }
    bool ring = cfg & 2;
    if (cfg & 1) {
        std::vector<uint8_t> init = valid_init();
        t->deliver(init.data(), init.size(), ring);
        run_until_idle(e.ctx.get(), t);
    }
    size_t pos = 0;
    while (pos + 4 <= size) {
        uint32_t w;
        memcpy(&w, data + pos, 4);
        pos += 4;
        size_t n = std::min<size_t>(w & 0xffffff, size - pos);
        if (w & 0x80000000u) run_until_idle(e.ctx.get(), t);
        t->deliver(data + pos, n, ring);
        pos += n;
    }
    run_until_idle(e.ctx.get(), t);
    t->check_all_replied();
    x.value()->shutdown();
    x.value().reset();
    graph.close_all();
    if (cfg & 16) {
        unlink(e.image.c_str());
        rmdir(e.dir.c_str());
    }
    return 0;
}

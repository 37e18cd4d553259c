// libFuzzer target: arbitrary bytes as an NBD client's side of a
// connection to our server (export/nbd/): the handshake, the options and
// the transmission phase, parsed by the same code a real connection runs.
//
// The server serves one end of a socketpair (NbdServer::serve_fd); the
// input goes into the other end, which is then shut for writing, and the
// loop runs until the connection has ended; whatever the server answers is
// read and dropped. The export is a writable null-co node of 1 MiB with
// allocation-depth and a dirty bitmap, so every command and context runs.
//
// The first input byte chooses a prefix the harness sends before the rest,
// so that the fuzzer reaches transmission without having to find a whole
// handshake itself: bit 0 set: a valid handshake (client flags, then
// STRUCTURED_REPLY, or with bit 1 EXTENDED_HEADERS; with bit 2
// SET_META_CONTEXT of every context; GO to the export); clear: nothing
// (the bytes start at the client flags).
//
// Checked besides ASan/UBSan/leaks: every connection ends once its input
// has (no hang: a bounded number of loop rounds), and the export is still
// registered and served afterwards.
//
// Build and run: make fuzz / make check-fuzz (tests/fuzz/fuzz.mk).
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "block/block.h"
#include "export/nbd.h"
#include "export/nbd/internal.h"
#include "util/aio.h"
#include "util/log.h"
#include "util/nbd-proto.h"

using namespace bg;

namespace {

struct Env {
    std::unique_ptr<AioContext> ctx;
    DriverRegistry registry;
    std::unique_ptr<BlockGraph> graph;
    std::unique_ptr<BlockExport> exp;
    std::string dir;
    Env()
    {
        log_set_level(LogLevel::kError);
        ctx = AioContext::create(g_main_context_default());
        AioContext::set_current(ctx.get());
        for (const char *name : {"null-co", "raw"}) {
            if (const BlockDriver *d = builtin_drivers().find(name)) registry.add(d);
        }
        graph = std::make_unique<BlockGraph>(&registry);
        auto n = graph->add_node_json({{"driver", "null-co"}, {"node-name", "n0"}, {"size", 1 << 20}});
        if (!n) abort();
        if (!n.value()->dirty_bitmap_add("b0", 65536, false, false).ok()) abort();
        char tmpl[] = "/tmp/bg-fuzz-nbd.XXXXXX";
        if (!mkdtemp(tmpl)) abort();
        dir = tmpl;
        NbdServerOptions so;
        so.addr.type = SocketAddress::Type::kUnix;
        so.addr.path = dir + "/s";
        if (!nbd_server_start(so).ok()) abort();
        BlockExportOptions eo;
        eo.type = "nbd";
        eo.id = "e0";
        eo.node_name = "n0";
        eo.writable = true;
        eo.nbd.allocation_depth = true;
        eo.nbd.bitmaps.push_back({"", "b0", false});
        auto e = nbd_export_create(*graph, eo);
        if (!e) {
            std::fprintf(stderr, "export: %s\n", e.msg().c_str());
            abort();
        }
        exp = std::move(e.value());
    }
};

Env &env()
{
    static Env *e = new Env();   // lives for the process (libFuzzer never exits cleanly)
    return *e;
}

void put_opt(std::vector<uint8_t> *out, uint32_t opt, const std::vector<uint8_t> &data)
{
    uint8_t h[16];
    nbd::put64(h, nbd::kOptMagic);
    nbd::put32(h + 8, opt);
    nbd::put32(h + 12, static_cast<uint32_t>(data.size()));
    out->insert(out->end(), h, h + 16);
    out->insert(out->end(), data.begin(), data.end());
}

void put_str32(std::vector<uint8_t> *out, const std::string &s)
{
    uint8_t l[4];
    nbd::put32(l, static_cast<uint32_t>(s.size()));
    out->insert(out->end(), l, l + 4);
    out->insert(out->end(), s.begin(), s.end());
}

std::vector<uint8_t> handshake(uint8_t mode)
{
    std::vector<uint8_t> out = {0, 0, 0, 3};   // client flags: fixed newstyle, no zeroes
    put_opt(&out, (mode & 2) ? nbd::kOptExtendedHeaders : nbd::kOptStructuredReply, {});
    if (mode & 4) {
        std::vector<uint8_t> d;
        put_str32(&d, "n0");
        d.insert(d.end(), {0, 0, 0, 3});
        put_str32(&d, nbd::kCtxBaseAllocation);
        put_str32(&d, nbd::kCtxAllocationDepth);
        put_str32(&d, std::string(nbd::kCtxDirtyBitmapPrefix) + "b0");
        put_opt(&out, nbd::kOptSetMetaContext, d);
    }
    std::vector<uint8_t> go;
    put_str32(&go, "n0");
    go.insert(go.end(), {0, 1, 0, 3});   // one info request: BLOCK_SIZE
    put_opt(&out, nbd::kOptGo, go);
    return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Env &e = env();
    std::vector<uint8_t> in;
    if (size > 0 && (data[0] & 1)) in = handshake(data[0]);
    if (size > 0) in.insert(in.end(), data + 1, data + size);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) abort();
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    nbd_server_serve_fd(sv[0]);

    size_t sent = 0;
    bool shut = false;
    uint8_t sink[65536];
    for (int round = 0; nbd_server_client_count() > 0; round++) {
        if (round > 200000) {
            std::fprintf(stderr, "the connection did not end\n");
            abort();
        }
        while (sent < in.size()) {
            ssize_t n = send(sv[1], in.data() + sent, in.size() - sent, MSG_NOSIGNAL);
            if (n < 0 && errno != EAGAIN && errno != EINTR) sent = in.size();   // the server has closed
            if (n <= 0) break;
            sent += size_t(n);
        }
        if (sent == in.size() && !shut) {
            shutdown(sv[1], SHUT_WR);
            shut = true;
        }
        while (read(sv[1], sink, sizeof(sink)) > 0) {
        }
        e.ctx->iterate(false);
    }
    close(sv[1]);
    if (!NbdServer::find_export("n0")) {
        std::fprintf(stderr, "the export went away\n");
        abort();
    }
    return 0;
}

// tools/nbd-list.cc -- "blockgraph nbd -L": the exports of an NBD server,
// printed line for line as qemu-nbd --list (QEMU 7.2) prints them:
//
//   exports available: N
//    export: 'NAME'
//     description: TEXT                    (when not empty)
//     size:  BYTES                          (two spaces)
//     flags: 0xHEX ( NAME NAME ... )
//     min block: N / opt block: N / max block: N   (when the server sent them)
//     available meta contexts: N           (when any)
//      CONTEXT
#include <signal.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tools/nbd.h"
#include "util/aio.h"
#include "util/co-socket.h"
#include "util/nbd-client.h"
#include "util/tls.h"

namespace bg {

namespace {


// Transmission flag names by bit, as qemu-nbd --list 7.2 prints them
// (bits it has no name for are not printed).
constexpr const char *kFlagNames[] = {
    nullptr,      "readonly", "flush", "fua",    "rotational", "trim",
    "zeroes",     "df",       "multi", "resize", "cache",      "fast-zero",
};

void print_exports(const std::vector<nbd::ListedExport> &list)
{
    std::printf("exports available: %zu\n", list.size());
    for (const nbd::ListedExport &e : list) {
        std::printf(" export: '%s'\n", e.name.c_str());
        if (!e.description.empty()) std::printf("  description: %s\n", e.description.c_str());
        if (e.flags & 1) {   // HAS_FLAGS: the INFO answer came
            std::printf("  size:  %" PRIu64 "\n", e.size);
            std::printf("  flags: 0x%x (", e.flags);
            for (unsigned bit = 0; bit < sizeof(kFlagNames) / sizeof(kFlagNames[0]); bit++) {
                if (kFlagNames[bit] && (e.flags & (1u << bit))) std::printf(" %s", kFlagNames[bit]);
            }
            std::printf(" )\n");
        }
        if (e.min_block) {
            std::printf("  min block: %u\n", e.min_block);
            std::printf("  opt block: %u\n", e.opt_block);
            std::printf("  max block: %u\n", e.max_block);
        }
        if (!e.contexts.empty()) {
            std::printf("  available meta contexts: %zu\n", e.contexts.size());
            for (const std::string &c : e.contexts) std::printf("   %s\n", c.c_str());
        }
    }
}

// Connects and lists. Errors are complete messages (qemu-nbd's for the
// connection: "Failed to connect to '/path': No such file or directory").
Result<std::vector<nbd::ListedExport>> fetch_exports(const NbdArgs &a, std::shared_ptr<TlsCreds> creds)
{
    SocketAddress addr = nbd_address(a);
    return run_in_coroutine([&]() -> Result<std::vector<nbd::ListedExport>> {
        Result<int> fd = co_socket_connect(addr);
        if (!fd) {
            std::string shown = a.socket_path ? addr.path : addr.host + ":" + addr.port;
            return make_error(fd.err(), "Failed to connect to '%s': %s", shown.c_str(), std::strerror(fd.err()));
        }
        CoSocket sock(fd.value());
        nbd::ClientConfig cfg;
        // qemu-nbd checks the certificate against --tls-hostname, else
        // the address it connected to; over a unix socket an x509
        // certificate cannot be checked without --tls-hostname.
        if (a.tls_hostname) cfg.tls_hostname = *a.tls_hostname;
        else if (!a.socket_path) cfg.tls_hostname = addr.host;
        if (creds && !creds->is_psk() && cfg.tls_hostname.empty()) {
            return make_error(EINVAL, "No hostname for certificate validation");
        }
        cfg.tls_creds = std::move(creds);
        return nbd::co_client_list(sock, cfg);
    });
}

} // namespace

int nbd_list_exports_cmd(const NbdArgs &a, std::shared_ptr<TlsCreds> creds)
{
    signal(SIGPIPE, SIG_IGN);
    std::unique_ptr<AioContext> ctx = AioContext::create();
    AioContext::set_current(ctx.get());
    Result<std::vector<nbd::ListedExport>> l = fetch_exports(a, std::move(creds));
    AioContext::set_current(nullptr);
    if (!l) {
        std::fprintf(stderr, "%s: %s\n", kNbdProg, l.msg().c_str());
        return 1;
    }
    print_exports(l.value());
    return 0;
}

} // namespace bg

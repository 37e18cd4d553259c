// tools/nbd.h -- "blockgraph nbd" (qemu-nbd's command line), shared by its
// files: tools/nbd.cc (command line), tools/nbd-serve.cc (serving an image),
// tools/nbd-list.cc (-L, the client side).
//
// Threading model: main thread only; the serving and listing functions
// create their own AioContext (and main loop).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qapi/block-options.h"
#include "tools/image-open.h"
#include "util/co-socket.h"

namespace bg {

class TlsCreds;

// The program name that starts messages: "blockgraph nbd", or "qemu-nbd" as
// a drop-in (set by cmd_nbd() from tools/dropin.h before anything is printed).
inline const char *kNbdProg = "blockgraph nbd";

// The parsed command line. Unset optionals: the option was not given.
struct NbdArgs {
    std::string filename;                      // FILE (or the device for -d)
    // Connection
    std::optional<std::string> bind;           // -b (default 0.0.0.0)
    std::optional<std::string> port;           // -p (default 10809)
    std::optional<std::string> socket_path;    // -k, absolute
    int shared = 1;                            // -e: clients at once, 0 = unlimited
    bool persistent = false;                   // -t
    bool verbose = false;                      // -v
    std::optional<std::string> export_name;    // -x (default "")
    std::optional<std::string> description;    // -D
    // Part of the image
    uint64_t offset = 0;                       // -o
    bool allocation_depth = false;             // -A
    std::vector<std::string> bitmaps;          // -B, in command-line order
    // General
    bool list = false;                         // -L
    std::vector<std::string> objects;          // --object, in order
    std::string tls_creds;                     // --tls-creds
    std::optional<std::string> tls_authz;      // --tls-authz
    std::optional<std::string> tls_hostname;   // --tls-hostname
    bool fork = false;                         // --fork
    std::string pid_file;                      // --pid-file
    // Kernel device
    std::optional<std::string> device;         // -c
    bool disconnect = false;                   // -d
    // Block device
    std::optional<std::string> format;         // -f
    bool read_only = false;                    // -r (and -l)
    bool snapshot = false;                     // -s
    bool load_snapshot = false;                // -l given
    std::optional<std::string> snapshot_id;    // -l snapshot.id=
    std::optional<std::string> snapshot_name;  // -l snapshot.name=
    std::optional<std::string> snapshot_id_or_name;   // -l ID_OR_NAME
    bool seen_cache = false;                   // -n or --cache
    CacheMode cache;                           // default writeback
    std::optional<BlockdevAioOptions> aio;     // --aio
    std::optional<BlockdevDiscardOptions> discard;   // --discard
    BlockdevDetectZeroes detect_zeroes = BlockdevDetectZeroes::kOff;
    bool image_opts = false;                   // --image-opts
};

// Parses argv (argv[0] is the subcommand name) into *a, with qemu-nbd's
// checks and messages ("blockgraph nbd: Invalid shared device number 'x'").
// Returns -1 to go on, else the exit status (0 after --help/--version, 1
// after printing the error).
int parse_nbd_args(int argc, char **argv, NbdArgs *a);

// The server's address as qemu-nbd builds it, for serving and for -L: -k,
// else -b (0.0.0.0) and -p (10809).
SocketAddress nbd_address(const NbdArgs &a);

// Serves a.filename until stopped (tools/nbd-serve.cc). Exit status.
int nbd_serve(const NbdArgs &a);
// -L: prints the exports of the server at a's address as qemu-nbd --list
// (QEMU 7.2) does (tools/nbd-list.cc). Exit status.
// creds: the --tls-creds object (endpoint=client), or null.
int nbd_list_exports_cmd(const NbdArgs &a, std::shared_ptr<TlsCreds> creds);

} // namespace bg

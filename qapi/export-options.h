// Typed options for block exports (QEMU's BlockExportOptions,
// qapi/block-export.json): a union on "type"; only "fuse" so far.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "qapi/block-options.h"
#include "util/co-socket.h"

namespace bg {

struct BlockExportOptionsFuse {
    std::string mountpoint;                 // required: an existing regular file
    bool growable = false;                  // writes past EOF grow the node
    OnOffAuto allow_other = OnOffAuto::kAuto;  // "allow-other"
    // "io-uring" (QEMU's proposed bool): FUSE-over-io_uring. auto (ours, the
    // default): when the kernel has it enabled; on: required (the export
    // fails without it); off: requests are read from /dev/fuse.
    OnOffAuto io_uring = OnOffAuto::kAuto;
    // "passthrough" (ours; QEMU has none): kernel FUSE passthrough of reads
    // and writes to the image file of a plain raw-on-file export. auto: where
    // it changes nothing the export promises; on: the export fails where it
    // cannot be used; off: never.
    OnOffAuto passthrough = OnOffAuto::kAuto;
};

// type=nbd (QEMU's BlockExportOptionsNbd).
struct BlockExportOptionsNbd {
    std::optional<std::string> name;        // the export name; unset: node-name
    std::string description;                // "" = none
    // "bitmaps": a name (a bitmap of the exported node) or, as QEMU 7.2
    // also takes, a {node, name} pair.
    struct Bitmap {
        std::string node;                   // "" = the exported node
        std::string name;
        bool pair = false;                  // given as {node, name}
    };
    std::vector<Bitmap> bitmaps;
    bool allocation_depth = false;          // "allocation-depth"
};

// --nbd-server / nbd-server-start (QEMU's NbdServerOptions).
struct NbdServerOptions {
    SocketAddress addr;
    std::string tls_creds;                  // "tls-creds": id of a server tls-creds object
    std::string tls_authz;                  // "tls-authz": id of an authz object
    uint32_t max_connections = 0;           // 0 = unlimited
};

struct BlockExportOptions {
    std::string type;                       // required: "fuse" or "nbd"
    std::string id;                         // required
    std::string node_name;                  // "node-name", required
    bool writable = false;
    bool writethrough = false;
    // "iothread": one name, or a list (multi-queue: one /dev/fuse clone per
    // thread). Empty: requests are served in the main loop.
    std::vector<std::string> iothreads;
    bool fixed_iothread = false;            // "fixed-iothread"
    BlockExportOptionsFuse fuse;            // type == "fuse"
    BlockExportOptionsNbd nbd;              // type == "nbd"
};

// --object iothread,id=NAME[,poll-max-ns=N,poll-grow=N,poll-shrink=N]
// (aio-max-batch, thread-pool-min/max accepted and ignored)
struct IoThreadOptions {
    std::string id;
    // Adaptive polling of the thread's event loop (QEMU's meaning; see
    // docs/performance.md): spin up to max_ns for events before sleeping,
    // the window growing by `grow` (0: x2) while events come in short gaps
    // and shrinking by `shrink` (0: to nothing) after a long sleep.
    struct Poll {
        std::optional<uint64_t> max_ns;   // unset: the loop's default (docs/performance.md)
        uint64_t grow = 0;
        uint64_t shrink = 0;
    } poll;
    uint64_t aio_max_batch = 0;   // "aio-max-batch": reported by query-iothreads, otherwise unused
};

} // namespace bg

// Typed options for block exports (QEMU's BlockExportOptions,
// qapi/block-export.json): a union on "type"; only "fuse" so far.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "qapi/block-options.h"

namespace bg {

struct BlockExportOptionsFuse {
    std::string mountpoint;                 // required: an existing regular file
    bool growable = false;                  // writes past EOF grow the node
    OnOffAuto allow_other = OnOffAuto::kAuto;  // "allow-other"
};

struct BlockExportOptions {
    std::string type;                       // required: "fuse"
    std::string id;                         // required
    std::string node_name;                  // "node-name", required
    bool writable = false;
    bool writethrough = false;
    // "iothread": one name, or a list (multi-queue: one /dev/fuse clone per
    // thread). Empty: requests are served in the main loop.
    std::vector<std::string> iothreads;
    bool fixed_iothread = false;            // "fixed-iothread"
    BlockExportOptionsFuse fuse;            // type == "fuse"
};

// --object iothread,id=NAME[,poll-max-ns=...] (other members accepted and ignored)
struct IoThreadOptions {
    std::string id;
};

} // namespace bg

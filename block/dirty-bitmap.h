// Dirty bitmaps, for consumers: what BlockNode's dirty_bitmap_* methods
// (block/block.h, which includes this header) take and report. A node's
// bitmaps are of two kinds sharing one namespace:
//   - in-memory bitmaps, owned by the generic layer (block/dirty-bitmap.cc)
//     and set by the generic write path (block/io.cc) of the node a write,
//     write-zeroes or discard reaches; they go when the node closes;
//   - persistent bitmaps, which the driver stores in the image (qcow2) and
//     sets on its own write path; changes are stored at close.
// Semantics and error texts follow QEMU's block-dirty-bitmap-* commands.
//
// Implemented in block/dirty-bitmap.cc.
#pragma once

#include <cstdint>
#include <string>

namespace bg {

// One bitmap as query-named-block-nodes reports it under "dirty-bitmaps"
// (QEMU's BlockDirtyInfo).
struct DirtyBitmapInfo {
    std::string name;
    uint64_t count = 0;          // dirty bytes: set bits times granularity (a last partial bit counts whole)
    uint32_t granularity = 0;    // bytes per bit
    bool recording = false;      // records writes (enabled and consistent)
    bool busy = false;           // in use by an operation: the monitor may not use it
    bool persistent = false;     // stored in the image
    bool inconsistent = false;   // persistent, found in use at open: can only be removed
};

// A source of dirty_bitmap_merge(): bitmap `name` of the node named `node`
// (empty: the target's own node).
struct DirtyBitmapSource {
    std::string node;
    std::string name;
};

// Longest bitmap name (bytes).
constexpr size_t kDirtyBitmapMaxName = 1023;

} // namespace bg

// tools/image-open.h -- opening an image for a command-line tool.
//
// The tools (blockgraph io, img, mount) accept an image the way QEMU's tools
// do: a file name with an optional format (-f), a "json:{...}" pseudo
// file name, or, with --image-opts, a keyval (or JSON) description of the
// top node. open_image() turns that into a graph
//
//     [format node] --file--> [file node]          (or a single node)
//
// (under a temporary qcow2 overlay with snapshot) under a BlockBackend with
// the permissions of an image tool, applies the
// tool-wide switches (-r, -U, -t, --aio, -d) to every node the description
// creates, and probes the format when none is given.
//
// Threading model: main thread only; REQUIRES AioContext::current() (format
// probing and closing do I/O through run_in_coroutine()). Not for use from a
// coroutine.
#pragma once

#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "block/block.h"
#include "qapi/block-options.h"
#include "util/error.h"

namespace bg {

// The file driver's aio= values, as the tools' -i/--aio flags take them.
enum class BlockdevAioOptions { kThreads, kNative, kIoUring };

// A QEMU -t cache mode: cache.direct and
// cache.no-flush go to every node, writethrough to the BlockBackend.
struct CacheMode {
    bool direct = false;        // O_DIRECT
    bool no_flush = false;      // flushes stop at the OS
    bool writethrough = false;  // the backend flushes after every write
};

// The names of the built-in drivers, sorted and space-separated (what
// qemu-img's --help lists as "Supported formats:").
std::string driver_names_sorted();

// Parses "none"/"off", "writeback", "writethrough", "directsync", "unsafe".
// Error: EINVAL "Invalid cache option: <mode>".
Result<CacheMode> parse_cache_mode(const std::string &mode);
// Parses "threads", "io_uring", "native". Error: EINVAL "Invalid aio option: <mode>".
Result<BlockdevAioOptions> parse_aio_mode(const std::string &mode);
// Parses "ignore"/"off", "unmap"/"on". Error: EINVAL "Invalid discard option: <mode>".
Result<BlockdevDiscardOptions> parse_discard_mode(const std::string &mode);

// What to open and how.
struct ImageOpenSpec {
    // A file name, a "json:{...}" pseudo file name, or with image_opts the
    // options of the top node: keyval with the implied key "driver"
    // ("raw,file.filename=a.img") or a JSON object ("{...}").
    std::string image;
    bool image_opts = false;
    // Driver of the top node (-f). Empty: the description's own "driver",
    // else probed from the first 512 bytes. Must not conflict with a driver
    // the description names. A protocol driver (-f file) opens the file
    // itself as the only node.
    std::string format;
    // Extra options for the top node, merged over the description (QEMU's
    // "open -o"): a JSON object, keyval-style string scalars allowed. Null:
    // none.
    nlohmann::json extra_options;

    bool read_only = false;     // -r: every node read-only, the backend asks no write/resize
    // -s (QEMU's snapshot mode): the image is opened read-only and a
    // temporary qcow2 overlay (add_temp_overlay) becomes the top node, so
    // writes go there and the image is never changed; with read_only the
    // overlay is read-only too.
    bool snapshot = false;
    bool check_repair = false;  // img check -r: the top node opens for repair (BlockdevOptions::check_repair)
    bool force_share = false;   // -U: share every permission (needs read_only)
    bool copy_on_read = false;  // -C: the backend reads through a copy-on-read filter above the top node
    CacheMode cache;            // -t; default writeback, as qemu-img
    std::optional<BlockdevAioOptions> aio;          // --aio, for file nodes; unset: driver default
    // -d: the unmap policy of the top node; unset: driver default (ignore).
    // The data children of format nodes default to unmap whatever this says
    // (see apply_defaults in image-open.cc); other children inherit it.
    std::optional<BlockdevDiscardOptions> discard;

    // What the backend shares with other users. Unset: CONSISTENT_READ and
    // WRITE_UNCHANGED (QEMU's BDRV_O_NO_SHARE, as qemu-img opens images),
    // everything with force_share.
    std::optional<BlockPerm> shared;

    // Names the consumer in permission-conflict messages ("blockgraph io").
    std::string consumer = "blockgraph";
};

// An open image. Destroying it drains and drops the backend, then closes the
// graph (flushing writable nodes). Member order matters: blk goes first.
struct OpenImage {
    std::unique_ptr<BlockGraph> graph;
    BlockNode *root = nullptr;              // the top node; blk is attached to it (copy_on_read: to the filter above it)
    std::unique_ptr<BlockBackend> blk;
    bool probed_raw = false;                // format guessed as raw (block 0 writes restricted)
    std::string name;                       // spec.image, for messages

    ~OpenImage();
};

// Opens spec.image. Explicit keys in the description win over the
// tool-wide switches (except that -U with an explicit force-share=off is an
// error, as in QEMU). On success the backend holds CONSISTENT_READ, plus
// WRITE and RESIZE unless read-only, and shares spec.shared (default:
// CONSISTENT_READ and WRITE_UNCHANGED, everything with force_share);
// writethrough follows spec.cache.
//
// Errors (nothing stays open, no file is created or changed); the message
// is what follows "can't open device X: " in QEMU's tools:
//   EINVAL "Unknown driver 'foo'"                               (-f)
//   EINVAL "--image-opts and -f are mutually exclusive"
//   EINVAL "-U conflicts with image options"
//   EINVAL "Conflicting driver: -f raw, but the image options say 'qcow2'"
//   EINVAL the parser's message (keyval:, JSON:, blockdev ...: ...)
//   the graph's message, e.g. "Could not open 'x': No such file or directory"
//   for plain file names, "blockdev 'n': file: Duplicate nodes with
//   node-name='n'" or "blockdev: file: no node named 'x'" for descriptions
//   the probe's message ("Could not read image for determining its format: ...")
//   the permission conflict, e.g. "Failed to get \"write\" lock" (file locking)
//   EPERM "Block node is read-only" (read-only=on in the description, no -r)
//   EINVAL "Can't use copy-on-read on read-only device" (copy_on_read with read_only)
Result<std::unique_ptr<OpenImage>> open_image(const ImageOpenSpec &spec);

// Creates a temporary qcow2 image as large as base in $TMPDIR (default
// /var/tmp), opens it in graph as a qcow2 node named node_name over base (its
// backing child; its file child skips flushes to disk) with the options in
// extra (a JSON object, e.g. "read-only", "detect-zeroes") merged in, and
// unlinks the file at once: the open node keeps it, and nothing is left
// behind even if the process is killed. Main loop, not in a coroutine.
// Errors (nothing is left behind):
//   "Could not get temporary filename: <errno text>"
//   "Could not create temporary overlay 'PATH': <create error>"
//   "Could not open temporary overlay: <open error>"
Result<BlockNode *> add_temp_overlay(BlockGraph &graph, BlockNode *base, const std::string &node_name,
                                     const nlohmann::json &extra = nlohmann::json::object());

// QEMU's three-line warning for a probed raw image, each line ending in '\n'.
std::string probed_raw_warning(const std::string &name);

} // namespace bg

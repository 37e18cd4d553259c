// Typed, validated options for block nodes: plain data, the shape of QEMU's
// BlockdevOptions (qapi/block-core.json). A discriminated union on "driver":
// generic members in BlockdevOptions, driver members in one struct per
// driver. Produced from JSON or dotted keyval by qapi/block-parse.h and
// dumped back to JSON by the same module; consumed by block/ when opening.
//
// Field comments give the QEMU key name where it differs from the field
// name, the unit, and the default.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace bg {

struct BlockdevOptions;

// A child reference: a node name, an inline definition, or (backing only) null.
struct BlockdevRef {
    enum class Kind { kNone, kReference, kInline, kNull };
    Kind kind = Kind::kNone;          // kNone: key absent
    std::string reference;            // kReference: node-name of an existing node
    std::shared_ptr<BlockdevOptions> def;   // kInline

    bool present() const { return kind != Kind::kNone; }
};

enum class BlockdevDiscardOptions { kIgnore, kUnmap };
enum class BlockdevDetectZeroes { kOff, kOn, kUnmap };
enum class BlockdevAioOptions { kThreads, kNative, kIoUring };
enum class OnOffAuto { kOff, kOn, kAuto };
enum class PreallocMode { kOff, kMetadata, kFalloc, kFull };

struct BlockdevOptionsFile {
    std::string filename;                       // required; "file:" prefix stripped
    // QEMU's default is threads; ours is io_uring (falls back to threads with
    // a warning when a ring cannot be set up).
    BlockdevAioOptions aio = BlockdevAioOptions::kIoUring;
    OnOffAuto locking = OnOffAuto::kAuto;
    uint32_t aio_max_batch = 0;                 // "aio-max-batch"; 0 = no limit
    bool drop_cache = true;                     // "drop-cache"
};

struct BlockdevOptionsRaw {
    BlockdevRef file;                           // required
    std::optional<uint64_t> offset;             // bytes into file
    std::optional<uint64_t> size;               // bytes, multiple of 512
};

struct BlockdevOptionsNull {
    uint64_t size = 1ULL << 30;                 // bytes; QEMU default 1 GiB
    uint64_t latency_ns = 0;                    // "latency-ns"
    bool read_zeroes = true;                    // "read-zeroes"; off: reads leave the buffer untouched
};

enum class BlkdebugIoType { kRead, kWrite, kWriteZeroes, kDiscard, kFlush, kBlockStatus, kTruncate };

struct BlkdebugInjectError {
    std::string event;                          // optional: arm the rule when this event fires
    std::optional<BlkdebugIoType> iotype;       // absent: read, write, write-zeroes, discard, flush (QEMU)
    int err = 5;                                // "errno"; positive; default EIO
    int64_t sector = -1;                        // 512-byte sector the request must cover; -1: any
    std::optional<uint64_t> offset;             // extension: byte range the request must overlap
    std::optional<uint64_t> bytes;              //   (with offset; absent = to the end)
    uint64_t after = 0;                         // extension: let this many matching requests pass first
    bool once = false;                          // remove after the first injection
    bool immediately = false;                   // fail without yielding first (default: asynchronously)
    int64_t state = 0;                          // only while blkdebug is in this state; 0 = any
};

struct BlkdebugSetState {
    std::string event;
    int64_t state = 0;                          // 0 = any
    int64_t new_state = 0;                      // "new_state"
};

struct BlockdevOptionsBlkdebug {
    BlockdevRef image;                          // required
    std::string config;                         // config file (not supported: error if set)
    uint32_t align = 0;                         // request alignment to force; 0 = child's
    uint32_t max_transfer = 0;                  // "max-transfer"
    uint32_t opt_write_zero = 0;                // "opt-write-zero"
    uint32_t max_write_zero = 0;                // "max-write-zero"
    uint32_t opt_discard = 0;                   // "opt-discard"
    uint32_t max_discard = 0;                   // "max-discard"
    std::vector<BlkdebugInjectError> inject_error;   // "inject-error"
    std::vector<BlkdebugSetState> set_state;         // "set-state"
};

// qcow2 runtime options (BlockdevOptionsQcow2). Opening is issue 5; the
// option set is fixed here so configurations validate from the start.
enum class Qcow2OverlapCheckMode { kNone, kConstant, kCached, kAll };

struct BlockdevOptionsQcow2 {
    BlockdevRef file;                           // required
    BlockdevRef backing;                        // absent: from the image header; null: none
    BlockdevRef data_file;                      // "data-file"
    bool lazy_refcounts_set = false;            // "lazy-refcounts" given?
    bool lazy_refcounts = false;
    bool pass_discard_request = true;           // "pass-discard-request" (when discard=unmap)
    bool pass_discard_snapshot = true;          // "pass-discard-snapshot"
    bool pass_discard_other = false;            // "pass-discard-other"
    bool discard_no_unref = false;              // "discard-no-unref"
    Qcow2OverlapCheckMode overlap_check = Qcow2OverlapCheckMode::kCached;  // "overlap-check"
    std::optional<uint64_t> cache_size;         // "cache-size" bytes
    std::optional<uint64_t> l2_cache_size;      // "l2-cache-size" bytes
    std::optional<uint64_t> l2_cache_entry_size;// "l2-cache-entry-size" bytes
    std::optional<uint64_t> refcount_cache_size;// "refcount-cache-size" bytes
    uint64_t cache_clean_interval = 600;        // "cache-clean-interval" seconds; 0 = never
    std::optional<std::string> snapshot_id;     // "snapshot.id" (read-only view)
    std::optional<std::string> snapshot_name;   // "snapshot.name"
};

using BlockdevDriverOptions = std::variant<BlockdevOptionsFile, BlockdevOptionsRaw, BlockdevOptionsNull,
                                           BlockdevOptionsBlkdebug, BlockdevOptionsQcow2>;

struct BlockdevOptions {
    std::string driver;                         // required: "file", "raw", "null-co", "blkdebug", "qcow2"
    std::string node_name;                      // "node-name"; empty = auto-generated at open
    bool read_only = false;                     // "read-only"
    bool auto_read_only = false;                // "auto-read-only"
    bool force_share = false;                   // "force-share" (requires read-only)
    BlockdevDiscardOptions discard = BlockdevDiscardOptions::kIgnore;
    BlockdevDetectZeroes detect_zeroes = BlockdevDetectZeroes::kOff;  // "detect-zeroes"
    bool cache_direct = false;                  // "cache": {"direct"}  (keyval: cache.direct)
    bool cache_no_flush = false;                // "cache": {"no-flush"}
    // Not an option of the JSON/keyval forms: set by "img check -r" on the
    // node it repairs (QEMU's BDRV_O_CHECK). A format driver then opens
    // writable what it would refuse (qcow2: the corrupt bit) and leaves
    // repairs it would do at open (qcow2: a dirty image) to the check.
    bool check_repair = false;
    BlockdevDriverOptions opts;                 // matches driver

    template <typename T> T *as() { return std::get_if<T>(&opts); }
    template <typename T> const T *as() const { return std::get_if<T>(&opts); }
};

} // namespace bg

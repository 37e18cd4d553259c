// The qcow2 format driver (QEMU block/qcow2*.c, spec docs/interop/qcow2.txt
// in QEMU's tree; our description: docs/qcow2.md).
//
// Files, by concern:
//   qcow2.h            on-disk constants, parsed structures, the node class
//   qcow2-options.cc   runtime options: decoding from the user's keys, encoding back
//   qcow2-header.cc    header and header extensions: parse and validate; probe
//   qcow2-snapshot.cc  internal snapshot table: parse, validate, find
//   qcow2-cache.cc     MetadataCache: LRU cache of L2 slices / refcount blocks
//   qcow2-cluster.cc   L1/L2 mapping (guest offset -> host offset and type)
//   qcow2-refcount.cc  refcount table / refcount block access
//   qcow2-compress.cc  zlib and zstd decompression of compressed clusters
//   qcow2-backing.cc   backing chain (from the header) and external data file
//   qcow2-status.cc    block status
//   qcow2-write.cc     write path: in-place writes, allocating writes with
//                      COW, in-flight allocation tracking, compressed
//                      writes, write-zeroes, discard, truncate, flush
//   qcow2-alloc.cc     header field updates, dirty/corrupt bits, overlap
//                      checks, L1 growth, lazy-refcount repair
//   qcow2.cc           the node: open, options, read path, descriptor
//   qcow2-snapshot-write.cc  internal snapshots: create, apply, delete, list
//   qcow2-reopen.cc    reopen hooks: read-only <-> read-write, write options
//   qcow2-amend.cc     amend: compat, lazy refcounts, refcount width,
//                      backing/data file names, size
//
// Internal API for other qcow2 files (check/repair, snapshots, amend,
// create) is the "Metadata API" section of Qcow2Node below: refcount
// updates, cluster allocation, cache write-back. Its names are stable.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "block/block-driver.h"
#include "util/aio.h"

namespace bg {

// qcow2 runtime options (QEMU's BlockdevOptionsQcow2), decoded by
// decode_qcow2_options (block/qcow2/qcow2-options.cc).
enum class Qcow2OverlapCheckMode { kNone, kConstant, kCached, kAll };

struct BlockdevOptionsQcow2 : DriverOptionsOf<BlockdevOptionsQcow2> {
    BlockdevRef file;                           // required
    BlockdevRef backing;                        // absent: from the image header; null: none
    BlockdevRef data_file;                      // "data-file"
    bool lazy_refcounts_set = false;            // "lazy-refcounts" given?
    bool lazy_refcounts = false;
    bool pass_discard_request_set = false;      // "pass-discard-request" given?
    bool pass_discard_request = false;          // "pass-discard-request"; unset: the node's discard=unmap
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

    void encode(nlohmann::json &j) const override;
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override;
};

Result<std::unique_ptr<DriverOptions>> decode_qcow2_options(OptionReader &r, const BlockdevOptions &generic);

namespace qcow2 {

// ---------------------------------------------------------------- on-disk constants

constexpr uint32_t kMagic = 0x514649fb;              // "QFI\xfb"
constexpr uint32_t kMinClusterBits = 9;              // 512 B
constexpr uint32_t kMaxClusterBits = 21;             // 2 MiB (QEMU's limit)
constexpr uint32_t kV2HeaderLength = 72;
constexpr uint32_t kV3MinHeaderLength = 104;
constexpr uint32_t kCompressionTypeOffset = 104;     // optional v3 header field (1 byte)
constexpr uint32_t kKnownHeaderLength = 105;         // bytes of the header we interpret
constexpr uint32_t kMaxRefcountOrder = 6;            // 64-bit refcounts

// QEMU's table limits (block/qcow2.h).
constexpr uint64_t kMaxL1Bytes = 32ULL << 20;        // QCOW_MAX_L1_SIZE
constexpr uint64_t kMaxRefTableBytes = 8ULL << 20;   // QCOW_MAX_REFTABLE_SIZE
constexpr uint32_t kMaxBackingNameLen = 1023;
constexpr uint32_t kMaxBackingFormatLen = 15;        // QEMU keeps it in char[16]
constexpr uint32_t kMaxSnapshots = 65536;            // QCOW_MAX_SNAPSHOTS
constexpr uint64_t kMaxSnapshotTableBytes = 64ULL << 20;
constexpr uint32_t kMaxSnapshotExtraData = 1024;
constexpr uint32_t kSnapshotHeaderSize = 40;         // fixed part of a snapshot table entry
constexpr uint32_t kMaxBitmaps = 65535;
constexpr uint64_t kMaxBitmapDirectoryBytes = 1024ULL * 65535;

// Feature bits.
constexpr uint64_t kIncompatDirty = 1ULL << 0;
constexpr uint64_t kIncompatCorrupt = 1ULL << 1;
constexpr uint64_t kIncompatDataFile = 1ULL << 2;
constexpr uint64_t kIncompatCompression = 1ULL << 3;
constexpr uint64_t kIncompatExtendedL2 = 1ULL << 4;
constexpr uint64_t kIncompatMask = 0x1f;
constexpr uint64_t kCompatLazyRefcounts = 1ULL << 0;
constexpr uint64_t kAutoclearBitmaps = 1ULL << 0;
constexpr uint64_t kAutoclearDataFileRaw = 1ULL << 1;
constexpr uint64_t kAutoclearMask = 0x3;

// Header extension types.
constexpr uint32_t kExtEnd = 0;
constexpr uint32_t kExtBackingFormat = 0xe2792aca;
constexpr uint32_t kExtFeatureTable = 0x6803f857;
constexpr uint32_t kExtBitmaps = 0x23852875;
constexpr uint32_t kExtCrypto = 0x0537be77;
constexpr uint32_t kExtDataFile = 0x44415441;

constexpr uint32_t kCryptNone = 0, kCryptAes = 1, kCryptLuks = 2;
constexpr uint8_t kCompressionZlib = 0, kCompressionZstd = 1;

// L1 / L2 / refcount table entries.
constexpr uint64_t kL1eOffsetMask = 0x00fffffffffffe00ULL;
constexpr uint64_t kL2eOffsetMask = 0x00fffffffffffe00ULL;
constexpr uint64_t kOflagCopied = 1ULL << 63;
constexpr uint64_t kOflagCompressed = 1ULL << 62;
constexpr uint64_t kOflagZero = 1ULL << 0;
constexpr uint64_t kReftOffsetMask = 0xfffffffffffffe00ULL;
constexpr uint32_t kSubclustersPerCluster = 32;     // extended L2
constexpr uint64_t kL2BitmapAllAlloc = 0xffffffffULL;

// Big-endian accessors.
inline uint16_t be16(const uint8_t *p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t be32(const uint8_t *p)
{
    return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 |
           p[3];
}
inline uint64_t be64(const uint8_t *p) { return static_cast<uint64_t>(be32(p)) << 32 | be32(p + 4); }
// Stores the low n bytes of v big-endian at p.
inline void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = static_cast<uint8_t>(v);
        v >>= 8;
    }
}
inline void put_be64(uint8_t *p, uint64_t v) { put_be(p, v, 8); }

// A new refcount structure placed after nb_clusters clusters (table first,
// then the blocks) that covers everything up to its own end, itself
// included: the table's and the blocks' sizes in clusters.
void self_covering_refcounts(uint64_t nb_clusters, uint32_t cluster_bits, uint32_t refcount_order,
                             uint64_t *table_clusters, uint64_t *nb_blocks);

// ---------------------------------------------------------------- parsed header

// One entry of the feature name table extension.
struct FeatureName {
    uint8_t type = 0;      // 0 incompatible, 1 compatible, 2 autoclear
    uint8_t bit = 0;       // 0..63
    std::string name;      // up to 46 bytes, NUL padding stripped
};

// A header extension kept verbatim (types we do not interpret), so that a
// header rewrite (part 2) can write it back unchanged.
struct HeaderExtension {
    uint32_t type = 0;
    std::vector<uint8_t> data;
};

struct BitmapsExtension {
    uint32_t nb_bitmaps = 0;
    uint64_t directory_size = 0;     // bytes
    uint64_t directory_offset = 0;   // cluster-aligned
};

// Bitmap directory entry flags and limits (QEMU's).
constexpr uint32_t kBitmapInUse = 1u << 0;
constexpr uint32_t kBitmapAuto = 1u << 1;
constexpr uint32_t kBitmapExtraDataCompatible = 1u << 2;
constexpr uint32_t kBitmapTypeDirty = 1;
constexpr uint32_t kMaxBitmapNameSize = 1023;
constexpr uint64_t kMaxBitmapBytes = 512ULL << 20;       // bitmap data per bitmap
constexpr uint64_t kMaxBitmapBytesTotal = 1ULL << 30;    // all bitmaps of a node in memory
constexpr uint64_t kBitmapTableReserved = 0xff000000000001feULL;

// One bitmap directory entry as stored.
struct BitmapEntry {
    uint64_t table_offset = 0;
    uint32_t table_size = 0;         // entries
    uint32_t flags = 0;
    uint8_t type = 0;
    uint8_t granularity_bits = 0;
    std::vector<uint8_t> extra;
    std::string name;
    size_t dir_pos = 0;              // byte offset of the entry in the directory
};
// The nb entries of a directory (structure only: sizes inside d). Error
// EINVAL naming image and the entry.
Result<std::vector<BitmapEntry>> parse_bitmap_directory(const uint8_t *d, size_t len, uint32_t nb,
                                                        const std::string &image);
// The directory bytes for entries (each padded to 8).
std::vector<uint8_t> build_bitmap_directory(const std::vector<BitmapEntry> &entries);

// The image header with its extensions, validated (see parse_header).
struct Header {
    uint32_t version = 0;                   // 2 or 3
    uint64_t backing_file_offset = 0;       // 0: no backing file name
    uint32_t backing_file_size = 0;         // bytes, <= kMaxBackingNameLen
    uint32_t cluster_bits = 0;              // kMinClusterBits..kMaxClusterBits
    uint64_t size = 0;                      // virtual size in bytes, <= kMaxLength
    uint32_t crypt_method = 0;
    uint32_t l1_size = 0;                   // entries
    uint64_t l1_table_offset = 0;
    uint64_t refcount_table_offset = 0;
    uint32_t refcount_table_clusters = 0;
    uint32_t nb_snapshots = 0;
    uint64_t snapshots_offset = 0;
    uint64_t incompatible_features = 0;
    uint64_t compatible_features = 0;
    uint64_t autoclear_features = 0;
    uint32_t refcount_order = 4;            // refcount_bits = 1 << refcount_order
    uint32_t header_length = kV2HeaderLength;
    uint8_t compression_type = kCompressionZlib;
    // Header bytes [kKnownHeaderLength, header_length): optional fields we do
    // not know, kept for a header rewrite (spec: preserve unknown fields).
    std::vector<uint8_t> unknown_header_fields;

    std::string backing_file;               // as stored (relative or absolute)
    std::optional<std::string> backing_format;   // backing format extension
    std::optional<std::string> data_file;        // external data file name extension
    std::vector<FeatureName> feature_names;
    std::optional<BitmapsExtension> bitmaps;     // only when the autoclear bit says it is valid
    bool has_crypto_extension = false;
    std::vector<HeaderExtension> unknown_extensions;

    uint64_t cluster_size() const { return 1ULL << cluster_bits; }
    bool extended_l2() const { return incompatible_features & kIncompatExtendedL2; }
    bool has_data_file() const { return incompatible_features & kIncompatDataFile; }
    bool data_file_raw() const { return autoclear_features & kAutoclearDataFileRaw; }
    uint32_t l2_entry_size() const { return extended_l2() ? 16 : 8; }
    uint32_t l2_bits() const { return cluster_bits - (extended_l2() ? 4 : 3); }   // log2 entries per L2 table
};

// Error "<image>: <printf message>" (every message names the image).
Error herr(int err, const std::string &image, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// Checks that a table [off, off + bytes) named by a header field ("L1
// table") is cluster-aligned, does not overlap the header cluster and lies
// inside the file. EINVAL with a message naming image and table otherwise.
Status check_table(const std::string &image, const char *what, uint64_t off, uint64_t bytes, uint64_t cluster_size,
                   uint64_t file_len);

// Number of L1 entries needed to map size bytes (QEMU's size_to_l1).
uint64_t size_to_l1(uint64_t size, uint32_t cluster_bits, uint32_t l2_bits);

// The bits of `type` in `bits` as QEMU names them: comma-separated, first
// the names the image's feature name table gives (in table order, up to its
// first unnamed entry), then "Unknown incompatible feature: <hex mask>" for
// the remaining bits, if any.
std::string describe_features(uint64_t bits, uint8_t type, const std::vector<FeatureName> &names);

// Parses and validates the header in buf (the first cluster of the image,
// or at least its first buf_len bytes; bytes past buf_len are treated as
// zeros, like bytes past the end of the file). file_len is the image file's
// length, for range checks of the tables. name prefixes every message
// ("disk.qcow2: L1 table offset 0x... is beyond the end of the file").
// writable: the corrupt bit is refused. Never reads outside buf.
// Errors: EINVAL (malformed), ENOTSUP (unsupported version/feature,
// encryption), EFBIG (tables beyond QEMU's limits), EACCES (corrupt and
// writable).
Result<Header> parse_header(const uint8_t *buf, size_t buf_len, uint64_t file_len, const std::string &name,
                            bool writable);

// Cluster size the header in buf announces, after checking magic, version
// and cluster_bits; 0 if buf (of buf_len >= 24 bytes) is not a plausible
// qcow2 header. Tells an opener how much of the file to read for parse_header.
uint64_t header_cluster_size(const uint8_t *buf, size_t buf_len);

// Format probe: 100 for "QFI\xfb" with version 2 or 3, else 0.
int probe(const uint8_t *buf, size_t len);

// ---------------------------------------------------------------- snapshots

struct Snapshot {
    uint64_t l1_table_offset = 0;
    uint32_t l1_size = 0;
    std::string id;
    std::string name;
    uint32_t date_sec = 0;
    uint32_t date_nsec = 0;
    uint64_t vm_clock_nsec = 0;
    uint64_t vm_state_size = 0;             // 64-bit field if present, else the 32-bit one
    uint64_t disk_size = 0;                 // virtual size at snapshot time (header size if not stored)
    std::optional<uint64_t> icount;
    std::vector<uint8_t> extra_data;        // verbatim, <= kMaxSnapshotExtraData bytes
};

// Reads len bytes at off of the image file into out; 0 or negative errno.
using ByteReader = std::function<int(uint64_t off, size_t len, uint8_t *out)>;

// Reads and validates the snapshot table of h (nb_snapshots entries at
// snapshots_offset, already range-checked by parse_header): each entry
// bounded, the table inside the file and within QEMU's limits, each
// snapshot's L1 table aligned, inside the file and within kMaxL1Bytes.
// Reads at most the table's size (<= kMaxSnapshotTableBytes).
Result<std::vector<Snapshot>> read_snapshot_table(const ByteReader &read, const Header &h, uint64_t file_len,
                                                  const std::string &name);

// The snapshot matching id and/or name (both must match when both given).
// Error: ENOENT "snapshot ... not found".
Result<const Snapshot *> find_snapshot(const std::vector<Snapshot> &snaps, const std::optional<std::string> &id,
                                       const std::optional<std::string> &name, const std::string &image);

// ---------------------------------------------------------------- compression

// Compresses src (len bytes, at most one cluster) into dst (dst_len bytes,
// cluster_size - 1 for qcow2). Returns the compressed length, -ENOSPC if it
// does not fit (store uncompressed), -ENOTSUP for an unknown type, -EIO.
int64_t compress_cluster(uint8_t type, const uint8_t *src, size_t len, uint8_t *dst, size_t dst_len);

// Decompresses src (a compressed cluster's bytes as described by its L2
// entry; may be longer than the stream) into exactly dst_len bytes.
// 0, -EIO for corrupt data, -ENOTSUP for an unknown type.
int decompress_cluster(uint8_t type, const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len);

// ---------------------------------------------------------------- metadata cache

// An LRU cache of fixed-size slices of on-disk metadata: L2 table slices
// (l2-cache-entry-size bytes) or refcount blocks (one cluster). Memory for
// an entry is allocated on first use, so an unused cache costs nothing.
//
// Write-back (qcow2.md 2.2): entries modified through mutable_data() are
// marked dirty and written by co_flush() or when evicted. Before a dirty
// entry is written: if this cache depends on another (set_dependency), the
// other cache is flushed first, ending with a flush of the file; else if
// depends_on_flush() was called, the file is flushed. Then the write hook
// (overlap check, blkdebug event) runs and the entry is written.
//
// Threading: not thread-safe. The owning node's metadata CoMutex must be
// held for every call (including while a pinned slice is used).
class MetadataCache {
  public:
    // Called before each write-back of the entry at offset; a negative errno
    // refuses the write (overlap check). May yield.
    using WriteHook = std::function<int(uint64_t offset, size_t bytes)>;

    // slice_size: bytes, a power of 2 >= 512; max_entries >= 1;
    // mem_align: buffer alignment (the file child's opt_mem_alignment).
    MetadataCache(size_t slice_size, size_t max_entries, size_t mem_align);
    MetadataCache(const MetadataCache &) = delete;
    MetadataCache &operator=(const MetadataCache &) = delete;

    void set_file(BdrvChild *file) { file_ = file; }
    void set_write_hook(WriteHook h) { hook_ = std::move(h); }
    // Event names passed to file->debug_event() before each read of a
    // missing slice ("l2_load"; none for refcount blocks: QEMU fires
    // refblock_load on every refcount update instead) and before each
    // write-back ("l2_update", "refblock_update_part").
    void set_events(const char *load, const char *write)
    {
        load_event_ = load;
        write_event_ = write;
    }

    // The slice at host offset (a multiple of slice_size), read through file
    // on a miss. The slice is pinned (not evicted) until release(). Yields on
    // a miss (and to write back a dirty victim). Returns 0, the read's (or
    // write-back's) negative errno, or -EBUSY if every entry is pinned.
    int coroutine_fn co_get(BdrvChild *file, uint64_t offset, const uint8_t **data);
    // Like co_get, but the slice is not read: it is zero-filled (a new table).
    // The entry is dirty.
    int coroutine_fn co_get_empty(uint64_t offset, uint8_t **data);
    // Writable view of the pinned slice at offset; marks it dirty.
    uint8_t *mutable_data(uint64_t offset);
    // Unpins the slice returned for offset.
    void release(uint64_t offset);
    // Writes every dirty entry (in offset order), after the dependencies
    // described above. Does not flush the file itself. 0 or negative errno
    // (entries that failed stay dirty).
    int coroutine_fn co_flush();
    // Writes back and flushes the file: co_flush() + file flush.
    int coroutine_fn co_flush_and_sync();
    // Before any dirty entry of this cache is written, dep is flushed (and
    // the file synced). Flushes first when that would make a cycle (QEMU's
    // qcow2_cache_set_dependency). 0 or negative errno.
    int coroutine_fn co_set_dependency(MetadataCache *dep);
    // Before any dirty entry of this cache is written, the file is flushed.
    void depends_on_flush() { depends_on_flush_ = true; }
    // TEST ONLY (BLOCKGRAPH_TEST_QCOW2_MISORDER=l2-before-refcount, read
    // once at open in qcow2.cc): co_set_dependency() becomes a no-op, so
    // this cache's entries may reach the disk before the other cache's.
    // Breaks crash consistency on purpose: the power-loss harness
    // (tests/powerloss/) must catch it.
    void test_ignore_dependencies() { test_ignore_deps_ = true; }
    bool dirty() const;
    // Frees the memory of entries not used since the previous call and not
    // pinned or dirty (cache-clean-interval). Returns how many were freed.
    size_t clean_unused();
    // Drops every unpinned clean entry (e.g. after a snapshot switch).
    void invalidate();
    // Drops the entry at offset if cached (the cluster was freed), dirty or
    // not. REQUIRES: not pinned.
    void discard(uint64_t offset);

    size_t slice_size() const { return slice_size_; }
    size_t max_entries() const { return entries_.size(); }
    uint64_t hits() const { return hits_; }
    uint64_t misses() const { return misses_; }
    size_t entries_in_use() const { return index_.size(); }   // slices holding data

  private:
    struct Entry {
        uint64_t offset = 0;
        bool valid = false;
        bool dirty = false;
        int pins = 0;
        uint64_t last_used = 0;     // lru_clock_ value at last access
        uint64_t used_at_clean = 0; // last_used seen by the previous clean_unused()
        AlignedBuf data;
    };
    int coroutine_fn co_find_victim(size_t *victim);
    int coroutine_fn co_write_entry(Entry &e);
    int coroutine_fn co_flush_dependency();

    size_t slice_size_;
    size_t mem_align_;
    BdrvChild *file_ = nullptr;
    WriteHook hook_;
    const char *load_event_ = nullptr;
    const char *write_event_ = nullptr;
    MetadataCache *depends_ = nullptr;
    bool depends_on_flush_ = false;
    bool test_ignore_deps_ = false;
    std::vector<Entry> entries_;
    std::unordered_map<uint64_t, size_t> index_;   // offset -> entry index (valid entries)
    uint64_t lru_clock_ = 0;
    uint64_t hits_ = 0, misses_ = 0;
};

// ---------------------------------------------------------------- mapping

// What a guest range maps to (QEMU's QCow2SubclusterType).
enum class SubclusterType {
    kUnallocatedPlain,   // read from the backing node (or zeros)
    kUnallocatedAlloc,   // host cluster exists, this subcluster reads from backing (extended L2)
    kZeroPlain,          // reads as zeros, no host cluster
    kZeroAlloc,          // reads as zeros, host cluster allocated
    kNormal,             // data at host_offset
    kCompressed,         // compressed cluster (see HostMapping)
};

struct HostMapping {
    SubclusterType type = SubclusterType::kUnallocatedPlain;
    // kNormal / kZeroAlloc / kUnallocatedAlloc: host offset of the first
    // byte (offset in cluster included), in the data file.
    uint64_t host_offset = 0;
    uint64_t bytes = 0;                 // > 0: bytes from the guest offset with this mapping
    // kCompressed: where the compressed bytes are in the image file.
    uint64_t comp_offset = 0;
    uint64_t comp_bytes = 0;
};

} // namespace qcow2

// ---------------------------------------------------------------- the node

namespace qcow2 {

// Why clusters are freed: decides whether a freed host cluster is discarded
// in the file (pass-discard-request / -snapshot / -other).
enum class DiscardType { kNever, kRequest, kSnapshot, kOther };

// Overlap check bits (QEMU's QCOW2_OL_*): metadata a write must not hit.
constexpr int kOlMainHeader = 1 << 0;
constexpr int kOlActiveL1 = 1 << 1;
constexpr int kOlActiveL2 = 1 << 2;
constexpr int kOlRefcountTable = 1 << 3;
constexpr int kOlRefcountBlock = 1 << 4;
constexpr int kOlSnapshotTable = 1 << 5;
constexpr int kOlInactiveL1 = 1 << 6;
constexpr int kOlInactiveL2 = 1 << 7;
constexpr int kOlBitmapDirectory = 1 << 8;
constexpr int kOlConstant = kOlMainHeader | kOlActiveL1 | kOlRefcountTable | kOlSnapshotTable | kOlBitmapDirectory;
constexpr int kOlCached = kOlConstant | kOlActiveL2 | kOlRefcountBlock | kOlInactiveL1;
constexpr int kOlAll = kOlCached | kOlInactiveL2;

// An allocating write in flight (QEMU's QCowL2Meta): the guest clusters
// [guest_start, guest_end) (bytes, cluster-aligned) get new L2 entries when
// it completes. Every request that would change or depend on the mapping of
// an overlapping cluster waits on `waiters` (the dependency list).
struct ClusterAlloc {
    uint64_t guest_start = 0;
    uint64_t guest_end = 0;
    CoQueue waiters;
};

} // namespace qcow2

// A qcow2 image. Threading: the metadata (header fields, the L1 table, the
// refcount table, both caches, the allocation state) is guarded by lock_,
// a CoMutex held across metadata I/O but never across guest data I/O: data
// reads and writes run outside it, so requests (from any thread's
// coroutines) proceed in parallel. Allocating writes register a
// ClusterAlloc so that concurrent requests on the same guest clusters are
// ordered; host clusters with data I/O in flight are counted in
// inflight_host_ and never handed out by the allocator, even when a
// concurrent discard freed them.
class Qcow2Node final : public BlockNode {
  public:
    Qcow2Node() = default;
    ~Qcow2Node() override;

    const qcow2::Header &header() const { return h_; }
    const std::vector<qcow2::Snapshot> &snapshots() const { return snapshots_; }
    // The snapshot whose L1 table this read-only view uses, or nullptr.
    const qcow2::Snapshot *active_snapshot() const { return view_snapshot_; }
    // Image name used in messages (the file child's filename()).
    const std::string &image_name() const { return name_; }
    // The first corruption found by I/O (a request failed with -EIO), or "".
    std::string corruption_message() const;
    // Metadata caches (for statistics and tests).
    const qcow2::MetadataCache &l2_cache() const { return *l2_cache_; }
    const qcow2::MetadataCache &refcount_cache() const { return *refcount_cache_; }
    // Lazy refcounts in use (image compat bit or the lazy-refcounts option).
    bool lazy_refcounts() const { return lazy_refcounts_; }
    // The image was found corrupt while writing: writes fail with -EIO.
    bool write_stopped() const { return write_stopped_.load(); }

    // Refcount of host cluster cluster_index. 0 or negative errno (-EIO on a
    // corrupt refcount structure). Yields; takes the metadata lock.
    int coroutine_fn co_get_refcount(uint64_t cluster_index, uint64_t *refcount);
    // Mapping of the guest range [offset, offset+bytes) (bytes > 0), the
    // first part of which is described in *m. Yields; takes the metadata lock.
    int coroutine_fn co_get_mapping(uint64_t offset, uint64_t bytes, qcow2::HostMapping *m);

    // ================================================================
    // Metadata API (for the other qcow2 files: check/repair, snapshots,
    // amend, create). Every function REQUIRES lock_ held (the _locked
    // suffix), may yield, and returns 0 (or a value) or a negative errno.
    // Crash-safety rules (qcow2.md 2.3) are kept inside: callers only need
    // to update their own structures in the order "new structure written,
    // then pointer switched, then old structure freed".
    // ================================================================

    // Adds addend to the refcount of every host cluster touched by the byte
    // range [offset, offset+length). Allocates refcount blocks (and grows
    // the refcount table) as needed. A refcount that would leave
    // [0, max] fails with -EINVAL before anything is changed. A cluster
    // reaching 0 is discarded in the file per type (deferred until the
    // refcount change is on disk). Decrements make the refcount cache
    // depend on the L2 cache (pointers go away before the refcount).
    int coroutine_fn co_update_refcount_locked(uint64_t offset, uint64_t length, int64_t addend,
                                               qcow2::DiscardType type);
    // Allocates bytes (rounded up to clusters) of contiguous free host
    // clusters with refcount 1. Returns the host offset. Never returns a
    // cluster with data I/O in flight.
    int64_t coroutine_fn co_alloc_clusters_locked(uint64_t bytes);
    // Allocates nb_clusters at exactly host offset (cluster-aligned) if they
    // are all free: returns how many leading clusters could be allocated
    // (0 if the first is in use).
    int64_t coroutine_fn co_alloc_clusters_at_locked(uint64_t offset, uint64_t nb_clusters);
    // Byte-granular allocation for compressed data (bytes < cluster size);
    // the host cluster(s) touched get one reference per allocation.
    int64_t coroutine_fn co_alloc_bytes_locked(uint64_t bytes);
    // Frees [offset, offset+length): co_update_refcount_locked(-1).
    void coroutine_fn co_free_clusters_locked(uint64_t offset, uint64_t length, qcow2::DiscardType type);
    // Writes both caches in dependency order and flushes the file; runs
    // the pending discards.
    int coroutine_fn co_flush_caches_locked();
    // Sets/clears incompatible feature bits in the header on disk (and h_),
    // flushed. Used for dirty and corrupt.
    int coroutine_fn co_update_incompat_locked(uint64_t set, uint64_t clear);
    // Before the first metadata change with lazy refcounts: set the dirty
    // bit (flushed). No-op otherwise or when already set.
    int coroutine_fn co_mark_dirty_locked();
    // Rebuilds the refcount structure from the metadata (active L1/L2,
    // snapshots, header, tables): a new refcount table and blocks written at
    // the end of the file, then the header switched. Used to repair a dirty
    // image on a writable open.
    int coroutine_fn co_rebuild_refcounts_locked();
    // The rebuild's steps. co_count_l1_refs_locked: the references of an
    // L1 table and everything below it (-EIO for an L2 table offset that is
    // unaligned or past the file). co_count_bitmap_refs_locked: the bitmap
    // directory, tables and data (-EIO for one out of range).
    // co_write_rebuilt_refcounts_locked: a self-covering refcount table and
    // blocks holding refs (one count per host cluster), written after the
    // file's end and flushed, then the header switched to them.
    struct RefCounter;
    int coroutine_fn co_count_l1_refs_locked(RefCounter &rc, uint64_t l1_off, uint64_t l1_size);
    int coroutine_fn co_count_bitmap_refs_locked(RefCounter &rc);
    int coroutine_fn co_write_rebuilt_refcounts_locked(std::vector<uint64_t> refs);
    // Overlap check (overlap-check option): 0 if [offset, offset+bytes) of
    // the image file hits no metadata in the checked set minus ign, else
    // the kOl* bit hit. May read inactive L1 tables (kOlInactiveL2).
    int coroutine_fn co_overlap_check_locked(int ign, uint64_t offset, uint64_t bytes);
    // Records corruption: marks the image corrupt on disk (if writable) and
    // stops writes. Returns -EIO.
    int coroutine_fn co_signal_corruption_locked(const char *fmt, ...) __attribute__((format(printf, 2, 3)));
    // Grows the active L1 table to at least min_size entries (new table
    // written and flushed, header switched, old table freed).
    int coroutine_fn co_grow_l1_locked(uint64_t min_size);
    // Writes L1 entry index (and its 512-byte sector neighbours) to disk.
    int coroutine_fn co_write_l1_entry_locked(uint64_t index);

  protected:
    Status open(const BlockdevOptions &opts) override;
    void close() override;
    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    // The VM state lies past the disk, from the first L1 entry the virtual
    // size does not need on (QEMU's layout), written and read through the
    // normal cluster paths (the L1 table grows to cover it).
    int coroutine_fn do_co_vmstate(bool write, int64_t pos, int64_t bytes, IOVector &qiov) override;
    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override;
    int coroutine_fn do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags) override;
    int coroutine_fn do_co_flush_to_os() override;
    int coroutine_fn do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                        int64_t *map, BlockNode **file) override;
    int64_t do_getlength() override;
    void refresh_limits(BlockLimits *bl) override;
    // Reopen (qcow2-reopen.cc): going read-only writes back what a close
    // writes (caches, persistent bitmaps, the dirty bit cleared) in
    // prepare, while the file is still writable; going writable does what
    // a writable open does, in commit, once the file is writable. Changeable
    // besides read-only: lazy-refcounts, pass-discard-*, overlap-check,
    // discard-no-unref.
    Status reopen_prepare(const BlockdevOptions &opts) override;
    void reopen_commit() override;
    void reopen_abort() override;

  private:
    // qcow2.cc
    Status coroutine_fn co_open_image(const BlockdevOptionsQcow2 &o);
    Status coroutine_fn co_open_writable(const BlockdevOptionsQcow2 &o);
    Status check_write_options(const BlockdevOptionsQcow2 &o) const;
    void set_write_options(const BlockdevOptionsQcow2 &o);
    // Whether clusters freed for a reason of type t are discarded in the
    // file. pass-discard-request, when not given, follows this node's own
    // discard=unmap, read at each call (a reopen may change it). lock_ held.
    bool passes_discard(qcow2::DiscardType t) const
    {
        if (t == qcow2::DiscardType::kRequest && !discard_request_set_) {
            return options().discard == BlockdevDiscardOptions::kUnmap;
        }
        return discard_passthrough_[static_cast<int>(t)];
    }
    // Reopen (qcow2-reopen.cc).
    int coroutine_fn co_reopen_clean(bool store_bitmaps);
    std::unique_ptr<BlockdevOptionsQcow2> reopen_opts_;   // prepared options
    bool reopen_was_ro_ = false;
    bool reopen_stored_bitmaps_ = false;
    Status setup_caches(const BlockdevOptionsQcow2 &o);
    void start_cache_cleaner(uint64_t interval_s);
    static void cache_clean_cb(void *opaque);
    int coroutine_fn co_read_backing(uint64_t offset, uint64_t bytes, IOVector &qiov, size_t qoff);
    // One guest extent of a read and how it maps.
    struct ReadExtent {
        uint64_t pos = 0, bytes = 0;
        qcow2::HostMapping m;
    };
    // REQUIRES lock_. Looks up the mapping of guest [pos, end) into out
    // (cleared first), at most kReadBatch extents: the host ranges that will
    // be read (data and compressed clusters in the image file) are counted
    // in flight and added to held, for the caller to release with
    // inflight_dec once read. Returns the guest offset after the last
    // extent, or a negative errno (-EIO for corruption).
    static constexpr size_t kReadBatch = 256;
    int64_t coroutine_fn co_map_read_locked(uint64_t pos, uint64_t end, std::vector<ReadExtent> *out,
                                            std::vector<std::pair<uint64_t, uint64_t>> *held);
    int coroutine_fn co_read_compressed(uint64_t offset, const qcow2::HostMapping &m, uint64_t bytes, IOVector &qiov,
                                        size_t qoff);
    int coroutine_fn co_close();
    // Records (and logs once) a corruption found while serving I/O; returns -EIO.
    int corruption(const char *fmt, ...) __attribute__((format(printf, 2, 3)));

    // qcow2-backing.cc
    Status open_backing(const BlockdevOptionsQcow2 &o, const BlockdevOptions &opts);
    Status open_data_file(const BlockdevOptionsQcow2 &o, const BlockdevOptions &opts);
    Result<BlockdevRef> backing_chain_ref(const BlockdevOptions &opts);
    nlohmann::json implicit_file_options(const std::string &path, bool read_only) const;
    Result<BlockdevRef> inline_ref(const nlohmann::json &tree) const;
    Result<const BlockDriver *> backing_format(const std::string &path, const std::string &bname,
                                               const std::string &cur_file,
                                               const std::optional<std::string> &recorded) const;

    // qcow2-cluster.cc (REQUIRE lock_ held)
    int coroutine_fn co_get_mapping_locked(uint64_t offset, uint64_t bytes, qcow2::HostMapping *m);
    // The lookup's steps, on the pinned slice holding the entry (neither
    // yields; -EIO after corruption() for a bad entry). map_in_slice: the
    // run of equally mapped bytes from q.offset. map_compressed: the
    // compressed cluster described by entry.
    struct MapLookup;
    int map_in_slice(const uint8_t *slice, const MapLookup &q, qcow2::HostMapping *m);
    int map_compressed(uint64_t entry, const MapLookup &q, qcow2::HostMapping *m);
    // The L2 slice holding guest cluster `cluster_index`, for writing: the L2
    // table is allocated (or copied, when shared) as needed, the L1 grown.
    // *slice_off is the slice's host offset (pinned in the L2 cache; release
    // it), *idx the entry's index in the slice.
    int coroutine_fn co_get_l2_slice_for_write_locked(uint64_t cluster_index, uint64_t *slice_off, uint32_t *idx);

    // qcow2-refcount.cc
    Status coroutine_fn co_load_refcount_table();
    int coroutine_fn co_get_refcount_locked(uint64_t cluster_index, uint64_t *refcount);
    void coroutine_fn co_trim_file_tail_locked();
    int coroutine_fn co_detect_metadata_preallocation_locked();
    int coroutine_fn co_set_refcount_locked(uint64_t cluster_index, uint64_t value);
    int coroutine_fn co_grow_refcount_table_locked(uint64_t min_entries);
    int coroutine_fn co_process_discards_locked();
    // Finds and allocates (refcount 1) a run of 1..max_clusters contiguous
    // free clusters (exactly max_clusters if exact). *got: clusters in it.
    // *fresh (optional): the run lies wholly in never-written host space
    // (at or past host_zero_from_ and the file's current end), so it reads
    // as zeros without being written.
    int64_t coroutine_fn co_alloc_run_locked(uint64_t max_clusters, bool exact, uint64_t *got,
                                             bool *fresh = nullptr);
    int coroutine_fn co_ensure_refblock_ex_locked(uint64_t cluster_index, uint64_t ex_start, uint64_t ex_end);
    bool cluster_free_locked(uint64_t cluster_index, uint64_t refcount) const
    {
        return refcount == 0 && !inflight(cluster_index);
    }
    uint64_t refcount_max() const { return h_.refcount_order == 6 ? ~0ULL : (1ULL << (1u << h_.refcount_order)) - 1; }

    // qcow2-write.cc
    struct WritePlan;
    struct PlanSlice;
    // Plans the first part of a write of guest [offset, offset + bytes)
    // (within one L2 slice): in place (data I/O counted in flight), or an
    // allocation registered in allocs_ (see qcow2-write.cc). May yield and
    // wait for overlapping allocations. 0 or negative errno.
    int coroutine_fn co_plan_write_locked(uint64_t offset, uint64_t bytes, WritePlan *p);
    // The planners co_plan_write_locked dispatches to by the class of the
    // first cluster; each releases the pinned slice at slice_off. 0,
    // kPlanAgain (something changed while they yielded: plan again) or a
    // negative errno. In place: complete plan. Reuse / new: p's host and
    // COW range; co_register_alloc_locked then registers p.
    static constexpr int kPlanAgain = 1;
    int coroutine_fn co_plan_in_place_locked(const PlanSlice &v, uint64_t slice_off, WritePlan *p);
    int coroutine_fn co_plan_reuse_locked(const PlanSlice &v, uint64_t slice_off, WritePlan *p);
    int coroutine_fn co_plan_new_locked(const PlanSlice &v, uint64_t slice_off, WritePlan *p);
    // Registers the allocation p in allocs_ and checks its host range
    // against metadata (on an overlap: p aborted, the image marked corrupt).
    int coroutine_fn co_register_alloc_locked(WritePlan *p);
    int coroutine_fn co_finish_alloc_locked(WritePlan *p);
    void coroutine_fn abort_alloc_locked(WritePlan *p);
    qcow2::ClusterAlloc *find_alloc(uint64_t start, uint64_t end);
    int coroutine_fn co_wait_allocs_locked(uint64_t start, uint64_t end);
    int coroutine_fn co_pwritev_compressed(uint64_t offset, uint64_t bytes, IOVector &qiov);
    int coroutine_fn co_zero_or_discard_locked(uint64_t offset, uint64_t bytes, bool zero, bool unmap,
                                               bool full_discard, qcow2::DiscardType type);
    struct ZeroDiscardOp;
    struct ZeroDiscardWork;
    // Rewrites the L2 entry at ep (in a writable pinned slice) for guest
    // bytes [cp, ce) of one cluster as op asks; what is left to do (refcount
    // drops, file discards, raw zeros) is added to w. Does not yield. false:
    // a partial cluster that cannot be zeroed in the L2 entry (-ENOTSUP).
    bool zero_or_discard_entry_locked(uint8_t *ep, uint64_t cp, uint64_t ce, const ZeroDiscardOp &op,
                                      ZeroDiscardWork *w);
    // Carries out w after the slice was released: refcounts dropped (type),
    // file discards, raw zeros written (after the L2 cache is written).
    int coroutine_fn co_finish_zero_or_discard_locked(const ZeroDiscardWork &w, qcow2::DiscardType type);
    int coroutine_fn co_preallocate_locked(uint64_t offset, uint64_t bytes, PreallocMode mode);
    // Write-zeroes helpers (lock_ NOT held; they take it): see qcow2-write.cc.
    bool coroutine_fn co_reads_as_zero(uint64_t offset, uint64_t end);
    int coroutine_fn co_zero_partial(uint64_t offset, uint64_t end, ReqFlags flags);
    // Truncate's steps. co_shrink_locked: the clusters and L2 tables past
    // new_size freed (-ENOTSUP: preallocation asked for, or snapshots).
    // co_grow_locked: the L1 table grown, preallocation, the data file
    // grown. Neither writes the new size. co_zero_grown_part (lock_ NOT
    // held; takes it): after growing from old without preallocation, the
    // old last cluster's tail and what a longer backing file would show
    // are made to read as zeros.
    int coroutine_fn co_shrink_locked(uint64_t new_size, PreallocMode prealloc);
    // Unlinks the L2 tables of L1 entries first_l1.. (each L1 entry written
    // and flushed, then its table freed). The tables must map nothing the
    // caller still needs.
    int coroutine_fn co_unlink_l2_tables_locked(uint64_t first_l1);
    int coroutine_fn co_grow_locked(uint64_t new_size, PreallocMode prealloc);
    int coroutine_fn co_zero_grown_part(uint64_t old, uint64_t new_size);
    // Data I/O in flight on host clusters (see inflight_host_). inflight_inc
    // REQUIRES lock_ (with the lookup that found the host range, so that
    // no discard and reallocation comes between); inflight_dec and inflight
    // need no lock_ (they take inflight_lock_, never held across a yield).
    void inflight_inc(uint64_t host, uint64_t bytes);
    void inflight_dec(uint64_t host, uint64_t bytes);
    bool inflight(uint64_t cluster_index) const;

    std::string name_;                      // image name for messages
    qcow2::Header h_;
    uint64_t cluster_size_ = 0;
    uint32_t cluster_bits_ = 0;
    uint32_t l2_bits_ = 0;                  // log2 entries per L2 table
    uint32_t l2_entry_size_ = 8;            // 8, or 16 with extended L2
    uint32_t subcluster_bits_ = 0;          // log2 bytes per subcluster (= cluster_bits_ without extended L2)
    uint32_t sc_per_cluster_ = 1;           // 1, or 32 with extended L2
    uint32_t csize_shift_ = 0;              // compressed descriptor layout
    uint64_t csize_mask_ = 0;
    uint64_t comp_offset_mask_ = 0;
    uint64_t size_ = 0;                     // virtual size (of the snapshot, in a snapshot view)

    BdrvChild *file_ = nullptr;             // metadata (and data, without a data file)
    BdrvChild *data_file_ = nullptr;        // == file_ without an external data file
    // The COW child, looked up on each use: the graph may attach, replace
    // or detach it while the node is open (blockdev-snapshot, reopen),
    // always with the node drained.
    BdrvChild *backing() const { return backing_child(); }

    std::vector<uint64_t> l1_;              // active (or snapshot view) L1 table, host byte order
    std::vector<uint64_t> refcount_table_;  // host byte order
    size_t reftable_used_ = 0;              // 1 + index of its last non-zero entry (reftable_changed())
    void reftable_changed()
    {
        reftable_used_ = refcount_table_.size();
        while (reftable_used_ && !refcount_table_[reftable_used_ - 1]) reftable_used_--;
    }
    std::vector<qcow2::Snapshot> snapshots_;
    const qcow2::Snapshot *view_snapshot_ = nullptr;

    CoMutex lock_;                          // guards the caches, tables and allocation state
    std::unique_ptr<qcow2::MetadataCache> l2_cache_;
    std::unique_ptr<qcow2::MetadataCache> refcount_cache_;
    bool prealloc_checked_ = false;         // metadata preallocation detection done
    bool metadata_prealloc_ = false;        // block status says RECURSE for data clusters

    // Write side (all guarded by lock_ unless said otherwise).
    bool lazy_refcounts_ = false;           // deferred refcount updates (dirty bit while writing)
    bool discard_passthrough_[4] = {};      // per qcow2::DiscardType: discard freed clusters in the file
    bool discard_request_set_ = false;      // pass-discard-request given (else: follows unmap_)
    bool discard_no_unref_ = false;
    int overlap_check_ = qcow2::kOlCached;  // kOl* bits checked before writes
    bool check_repair_ = false;             // opened by "img check -r" (BlockdevOptions::check_repair)
    bool probed_ = false;   // the format was probed: a qcow (version 1) image is named as such
    std::atomic<bool> write_stopped_{false};// corrupt: writes fail with -EIO
    uint64_t free_cluster_index_ = 0;       // allocator cursor (clusters below are in use)
    uint64_t skipped_tail_end_ = 0;         // host end of the furthest zero tail not written (co_close)
    uint64_t free_byte_offset_ = 0;         // compressed allocator: next free byte, 0 = none
    // Host bytes from here on were never written since open (the file's
    // length at open, raised past every cluster allocated since and past
    // every write into a cluster mapped before open, which may lie past the
    // file's end after a crash): they read as zeros, as every protocol reads
    // a gap a later write leaves past its old end. Only lowered by a cut of
    // the file (co_trim_file_tail_locked); UINT64_MAX until open. A run
    // counts as fresh only if it also starts at or past the file's current
    // end (co_alloc_run_locked), so a write that raised nothing here still
    // cannot expose old bytes.
    uint64_t host_zero_from_ = UINT64_MAX;
    // Host bytes [.., end) may have been written: host_zero_from_ rises to
    // end rounded up to a cluster (no-op before open).
    void raise_host_zero_from(uint64_t end)
    {
        if (host_zero_from_ == UINT64_MAX) return;
        host_zero_from_ = std::max(host_zero_from_, (end + cluster_size_ - 1) & ~(cluster_size_ - 1));
    }
    std::vector<qcow2::ClusterAlloc *> allocs_;             // in-flight allocating writes
    // Host cluster -> data requests in flight. Guarded by inflight_lock_
    // (a leaf lock: taken under lock_ or alone, held for the map update
    // only). Raised only under lock_ too; lowered without it, so the end of
    // a read or in-place write needs no lock_.
    std::unordered_map<uint64_t, uint32_t> inflight_host_;
    mutable std::mutex inflight_lock_;
    std::vector<std::pair<uint64_t, uint64_t>> pending_discards_;   // host ranges freed, to discard after sync
    bool closing_ = false;
    bool data_flush_needed_ = false;        // external data file written since its last flush

    std::unique_ptr<Timer> clean_timer_;    // cache-clean-interval, in the opening thread's context
    uint64_t clean_interval_ns_ = 0;

    mutable std::mutex corrupt_lock_;       // guards corrupt_msg_
    std::string corrupt_msg_;

    // ================================================================
    // Management hooks (qcow2-check.cc; see block/block.h). Check state
    // and the other management helpers are in Qcow2Mgmt (qcow2-check.cc).
    // ================================================================
  protected:
    Status coroutine_fn co_get_info(ImageInfo *info) override;
    Status coroutine_fn co_check(CheckResult *res, CheckFix fix) override;
    Result<std::vector<PersistentBitmapInfo>> coroutine_fn co_persistent_bitmaps() override;
    // qcow2-bitmap.cc
    Result<DirtyBitmapData> coroutine_fn co_bitmap_data(const std::string &name) override;
    Status coroutine_fn co_bitmap_change(const BitmapChange &c) override;
    Status coroutine_fn co_inactivate() override;
    // qcow2-snapshot-write.cc
    Result<std::vector<SnapshotInfo>> coroutine_fn co_snapshot_list() override;
    Status coroutine_fn co_snapshot_create(SnapshotInfo *sn) override;
    Status coroutine_fn co_snapshot_goto(const std::string &id_or_name) override;
    Status coroutine_fn co_snapshot_delete(const std::optional<std::string> &id,
                                           const std::optional<std::string> &name) override;
    // qcow2-amend.cc
    Status coroutine_fn co_amend(const CreateOptions &opts, bool force, const ProgressFn &progress) override;
    // qcow2-write.cc
    Status coroutine_fn co_make_empty() override;

  private:
    friend struct Qcow2Mgmt;
    // ---- persistent dirty bitmaps (qcow2-bitmap.cc) ----
    // A writable open takes the bitmaps over: usable ones are read into
    // memory and marked in use on disk; enabled ones ("auto") record every
    // guest write; close stores them (new clusters, then the header, then
    // the old clusters freed) without the in-use flag. Bitmaps we cannot
    // use (in use already, unknown type or extra data) are kept as stored.
    struct DirtyBitmap {
        qcow2::BitmapEntry e;                // as stored (e.flags without our in-use mark)
        bool owned = false;                  // loaded: ours to track and store
        bool table_known = false;            // clusters lists every cluster it uses
        uint64_t nb_bits = 0;
        std::vector<uint8_t> bits;           // owned: LSB first
        std::vector<uint64_t> clusters;      // data clusters of the stored table
        bool enabled() const { return owned && (e.flags & qcow2::kBitmapAuto); }
    };
    Status coroutine_fn co_load_bitmaps_locked();
    int coroutine_fn co_store_bitmaps_locked();
    // verify_refs (REQUIRES lock_, for a bitmap we will own or free): every
    // cluster it uses has refcount 1, overlaps no other metadata and is not
    // in seen (which collects them).
    Result<DirtyBitmap> coroutine_fn co_read_bitmap(const qcow2::BitmapEntry &e, bool want_bits,
                                                    std::vector<uint64_t> *seen = nullptr);
    // 0, or -ENOTSUP/-EFBIG (logged) if the bitmaps cannot follow the
    // virtual size to new_size (kept ones we do not own, or too large).
    int bitmaps_resize_check(uint64_t new_size);
    Result<std::vector<qcow2::BitmapEntry>> coroutine_fn co_read_bitmap_directory();
    // Guest bytes [offset, offset + bytes) changed: set in every enabled bitmap.
    void bitmaps_mark(uint64_t offset, uint64_t bytes);
    // The virtual size changed: bitmaps follow (a grown part starts clean,
    // as in QEMU).
    void bitmaps_resize(uint64_t new_size);
    std::vector<DirtyBitmap> bitmaps_;       // guarded by bitmap_lock_ (and lock_ for structure)
    std::vector<uint8_t> bitmap_dir_raw_;    // the directory as read at open
    std::vector<std::pair<uint64_t, uint64_t>> bitmap_orphans_;  // clusters of removed bitmaps
    bool bitmaps_loaded_ = false;            // a writable v3 open: bitmaps_ is the truth
    bool bitmaps_changed_ = false;           // guarded by bitmap_lock_
    std::atomic<bool> bitmaps_track_{false}; // some bitmap is enabled
    std::atomic<bool> inactive_{false};      // inactivate() stored the bitmaps: writes refused
    std::mutex bitmap_lock_;

    // qcow2-snapshot-write.cc (REQUIRE lock_ held): adds addend (+1, -1 or
    // 0) to the refcount of every L2 table and cluster reachable from l1
    // and recomputes the COPIED flags from the new refcounts (QEMU's
    // qcow2_update_snapshot_refcount). active: l1 is l1_, changed entries
    // are written to the active L1 table on disk.
    int coroutine_fn co_update_snapshot_refs_locked(std::vector<uint64_t> &l1, int addend, bool active);
    // Writes snaps as the new snapshot table (new clusters, flushed), then
    // switches nb_snapshots/snapshots_offset in the header, then frees the
    // old table.
    int coroutine_fn co_write_snapshot_table_locked(const std::vector<qcow2::Snapshot> &snaps);
    // qcow2-amend.cc (the _locked ones REQUIRE lock_ held)
    struct AmendRequest;
    // The amend options parsed and checked against the image (nothing
    // changed). EINVAL / ENOTSUP with qemu-img's messages.
    Status parse_amend_options(const CreateOptions &opts, AmendRequest *a) const;
    // Backing file name / format, data file name and data_file_raw as a
    // asks: one header rewrite if anything changes.
    Status coroutine_fn co_amend_names_locked(const AmendRequest &a);
    // Sets or clears the lazy refcounts bit (clearing flushes and marks
    // the image clean first).
    Status coroutine_fn co_amend_lazy_locked(bool lazy);
    // Whether any L1 table (active or a snapshot's) reaches a compressed
    // cluster; the caches are flushed first, the tables read from the file.
    Result<bool> coroutine_fn co_any_compressed_cluster_locked();
    // compat=0.10: refuses what v2 cannot hold, marks clean, expands zero
    // clusters, then writes a v2 header.
    Status coroutine_fn co_downgrade_locked(const ProgressFn &progress);
    int coroutine_fn co_write_header_locked(const qcow2::Header &nh);
    int coroutine_fn co_expand_zero_clusters_locked(const ProgressFn &progress);
    Status coroutine_fn co_change_refcount_order_locked(uint32_t order);
};

} // namespace bg

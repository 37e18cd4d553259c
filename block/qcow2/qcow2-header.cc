// qcow2 header and header extensions: parsing and validation (qcow2.md 1.2-1.5).
//
// Pure functions on a buffer holding the first cluster of the image: no I/O,
// so that hostile headers can be tested (and fuzzed) directly. Every offset
// and length read from the buffer is checked before use; nothing here reads
// outside the buffer or allocates more than one cluster plus what the header
// itself holds.
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "block/qcow2/qcow2.h"

namespace bg {
namespace qcow2 {

namespace {

// A string stored without terminator: the bytes up to the first NUL (QEMU
// copies such strings into C strings, which ends them there).
std::string stored_string(const uint8_t *p, size_t len)
{
    const void *nul = std::memchr(p, 0, len);
    if (nul) len = static_cast<size_t>(static_cast<const uint8_t *>(nul) - p);
    return std::string(reinterpret_cast<const char *>(p), len);
}

const char *feature_type_name(uint8_t type)
{
    switch (type) {
    case 0: return "incompatible";
    case 1: return "compatible";
    default: return "autoclear";
    }
}

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

} // namespace

Error herr(int err, const std::string &image, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return Error{err, buf}.prefixed(image);
}

// Checks that the table [off, off + bytes) of a header field is cluster
// aligned, does not overlap the header cluster and lies inside the file.
Status check_table(const std::string &image, const char *what, uint64_t off, uint64_t bytes, uint64_t cluster_size,
                   uint64_t file_len)
{
    if (off & (cluster_size - 1)) {
        // QEMU's name of the table, for its wording of the same check.
        const char *qemu_name = std::strcmp(what, "L1 table") == 0         ? "Active L1 table"
                                : std::strcmp(what, "refcount table") == 0 ? "Reference count table"
                                : std::strcmp(what, "snapshot table") == 0 ? "Snapshot table"
                                                                           : what;
        return herr(EINVAL, image, "%s offset 0x%" PRIx64 " is not aligned to the cluster size (%" PRIu64 ")", what,
                    off, cluster_size)
            .with_qemu_text(std::string(qemu_name) + " offset invalid");
    }
    if (off < cluster_size) return herr(EINVAL, image, "%s offset 0x%" PRIx64 " overlaps the header", what, off);
    if (off >= file_len) {
        return herr(EINVAL, image, "%s offset 0x%" PRIx64 " is beyond the end of the file", what, off);
    }
    if (bytes > file_len - off) {
        return herr(EINVAL, image,
                    "%s at offset 0x%" PRIx64 " (%" PRIu64 " bytes) extends beyond the end of the file (%" PRIu64
                    " bytes)",
                    what, off, bytes, file_len);
    }
    return {};
}

uint64_t size_to_l1(uint64_t size, uint32_t cluster_bits, uint32_t l2_bits)
{
    uint32_t shift = cluster_bits + l2_bits;
    return (size >> shift) + ((size & ((1ULL << shift) - 1)) != 0);
}

std::string describe_features(uint64_t bits, uint8_t type, const std::vector<FeatureName> &names)
{
    std::string s;
    // The named bits in the order of the table, which ends at the first
    // entry without a name; then the rest as one hexadecimal mask.
    for (const FeatureName &f : names) {
        if (f.name.empty()) break;
        if (f.type != type || f.bit >= 64 || !(bits & (1ULL << f.bit))) continue;
        if (!s.empty()) s += ", ";
        s += f.name;
        bits &= ~(1ULL << f.bit);
    }
    if (bits != 0) {
        char rest[96];
        std::snprintf(rest, sizeof(rest), "Unknown %s feature: %" PRIx64, feature_type_name(type), bits);
        if (!s.empty()) s += ", ";
        s += rest;
    }
    return s;
}

uint64_t header_cluster_size(const uint8_t *buf, size_t buf_len)
{
    if (buf_len < 24 || be32(buf) != kMagic) return 0;
    uint32_t version = be32(buf + 4);
    if (version != 2 && version != 3) return 0;
    uint32_t cb = be32(buf + 20);
    if (cb < kMinClusterBits || cb > kMaxClusterBits) return 0;
    return 1ULL << cb;
}

int probe(const uint8_t *buf, size_t len)
{
    if (len < 8 || be32(buf) != kMagic) return 0;
    uint32_t version = be32(buf + 4);
    // As QEMU's probe: any version from 2 (the open refuses what it does not
    // know, "Unsupported qcow2 version 4"), and 1 too, the qcow format,
    // which the open then names.
    return version >= 1 ? 100 : 0;
}

namespace {

// The fixed header fields of h.version from the zero-padded first cluster
// p (cs bytes), with the v3 fields' own range checks and the extended-L2
// cluster size check. EINVAL naming image otherwise.
Status parse_fixed_fields(const uint8_t *p, uint64_t cs, Header &h, const std::string &image)
{
    h.backing_file_offset = be64(p + 8);
    h.backing_file_size = be32(p + 16);
    h.size = be64(p + 24);
    h.crypt_method = be32(p + 32);
    h.l1_size = be32(p + 36);
    h.l1_table_offset = be64(p + 40);
    h.refcount_table_offset = be64(p + 48);
    h.refcount_table_clusters = be32(p + 56);
    h.nb_snapshots = be32(p + 60);
    h.snapshots_offset = be64(p + 64);

    if (h.version == 3) {
        h.incompatible_features = be64(p + 72);
        h.compatible_features = be64(p + 80);
        h.autoclear_features = be64(p + 88);
        h.refcount_order = be32(p + 96);
        h.header_length = be32(p + 100);
        if (h.header_length < kV3MinHeaderLength) {
            return herr(EINVAL, image, "header_length %" PRIu32 " is too small (at least %" PRIu32 " for version 3)",
                        h.header_length, kV3MinHeaderLength);
        }
        if (h.header_length > cs) {
            return herr(EINVAL, image, "header_length %" PRIu32 " exceeds the cluster size (%" PRIu64 ")",
                        h.header_length, cs)
                .with_qemu_text("qcow2 header exceeds cluster size");
        }
        if (h.header_length > kCompressionTypeOffset) h.compression_type = p[kCompressionTypeOffset];
        if (h.header_length > kKnownHeaderLength) {
            h.unknown_header_fields.assign(p + kKnownHeaderLength, p + h.header_length);
        }
        if (h.refcount_order > kMaxRefcountOrder) {
            return herr(EINVAL, image, "refcount_order %" PRIu32 " is too large (at most %" PRIu32 ")",
                        h.refcount_order, kMaxRefcountOrder)
                .with_qemu_text("Reference count entry width too large; may not exceed 64 bits");
        }
    }

    // Extended L2 splits a cluster into 32 subclusters of at least 512
    // bytes (QEMU refuses smaller ones at open).
    if ((h.incompatible_features & kIncompatExtendedL2) && (cs >> 5) < 512) {
        return herr(EINVAL, image, "extended L2 entries need clusters of at least 16 KiB (cluster size %" PRIu64 ")",
                    cs);
    }
    return {};
}

// The backing file name (inside the first cluster p of cs bytes, after the
// header) into h.backing_file. *ext_end: where the header extension area
// ends (the name's offset, or cs without a name). EINVAL naming image.
Status parse_backing_name(const uint8_t *p, uint64_t cs, Header &h, const std::string &image, uint64_t *ext_end)
{
    *ext_end = cs;
    if (!h.backing_file_offset) return {};
    if (h.backing_file_offset > cs) {
        return herr(EINVAL, image, "backing file name offset 0x%" PRIx64 " is outside the first cluster",
                    h.backing_file_offset);
    }
    if (h.backing_file_offset < h.header_length) {
        return herr(EINVAL, image, "backing file name offset 0x%" PRIx64 " overlaps the header",
                    h.backing_file_offset);
    }
    if (h.backing_file_size > kMaxBackingNameLen) {
        return herr(EINVAL, image, "backing file name is too long (%" PRIu32 " bytes, at most %" PRIu32 ")",
                    h.backing_file_size, kMaxBackingNameLen);
    }
    if (h.backing_file_size > cs - h.backing_file_offset) {
        return herr(EINVAL, image, "backing file name (%" PRIu32 " bytes at 0x%" PRIx64 ") crosses the end of the first cluster",
                    h.backing_file_size, h.backing_file_offset);
    }
    const uint8_t *name = p + h.backing_file_offset;
    if (std::memchr(name, 0, h.backing_file_size)) {
        return herr(EINVAL, image, "backing file name contains a NUL byte");
    }
    h.backing_file.assign(reinterpret_cast<const char *>(name), h.backing_file_size);
    *ext_end = h.backing_file_offset;
    return {};
}

// The bitmaps extension d (len bytes) into h.bitmaps, when the autoclear
// bit says it is valid; its directory range-checked against file_len.
// EINVAL naming image.
Status parse_bitmaps_extension(const uint8_t *d, uint32_t len, uint64_t cs, uint64_t file_len, Header &h,
                               const std::string &image)
{
    if (len != 24) {
        return herr(EINVAL, image, "bitmaps extension has length %" PRIu32 " (expected 24)", len);
    }
    // Without the autoclear bit a program without bitmap support
    // changed the image: the bitmaps are stale and ignored (QEMU).
    if (!(h.autoclear_features & kAutoclearBitmaps)) return {};
    BitmapsExtension b;
    b.nb_bitmaps = be32(d);
    uint32_t reserved = be32(d + 4);
    b.directory_size = be64(d + 8);
    b.directory_offset = be64(d + 16);
    if (reserved) return herr(EINVAL, image, "bitmaps extension: reserved field is not zero");
    if (b.nb_bitmaps == 0) return herr(EINVAL, image, "bitmaps extension with zero bitmaps");
    if (b.nb_bitmaps > kMaxBitmaps) {
        return herr(EINVAL, image, "bitmaps extension: %" PRIu32 " bitmaps (at most %" PRIu32 ")",
                    b.nb_bitmaps, kMaxBitmaps);
    }
    if (b.directory_size > kMaxBitmapDirectoryBytes) {
        return herr(EINVAL, image, "bitmap directory size %" PRIu64 " is too large (at most %" PRIu64 ")",
                    b.directory_size, kMaxBitmapDirectoryBytes);
    }
    BG_TRY(check_table(image, "bitmap directory", b.directory_offset, b.directory_size, cs, file_len));
    h.bitmaps = b;
    return {};
}

// The header extensions in p[h.header_length, ext_end) into h: known ones
// interpreted (each at most once), unknown ones kept verbatim. Stops at
// the end extension. EINVAL naming image.
Status parse_extensions(const uint8_t *p, uint64_t ext_end, uint64_t cs, uint64_t file_len, Header &h,
                        const std::string &image)
{
    uint32_t seen = 0;   // known types seen, one bit each
    auto once = [&](uint32_t bit, uint32_t type) -> Status {
        if (seen & bit) return herr(EINVAL, image, "header extension 0x%08" PRIx32 " appears more than once", type);
        seen |= bit;
        return {};
    };
    for (uint64_t off = h.header_length; off < ext_end;) {
        if (ext_end - off < 8) {
            return herr(EINVAL, image, "header extension at offset 0x%" PRIx64 " crosses the end of the header area",
                        off);
        }
        uint32_t type = be32(p + off);
        uint32_t len = be32(p + off + 4);
        off += 8;
        if (len > ext_end - off) {
            return herr(EINVAL, image,
                        "header extension 0x%08" PRIx32 " at offset 0x%" PRIx64 " is too long (%" PRIu32 " bytes)",
                        type, off - 8, len);
        }
        const uint8_t *d = p + off;
        if (type == kExtEnd) break;
        switch (type) {
        case kExtBackingFormat:
            BG_TRY(once(1, type));
            if (len > kMaxBackingFormatLen) {
                return herr(EINVAL, image, "backing format name is too long (%" PRIu32 " bytes, at most %" PRIu32 ")",
                            len, kMaxBackingFormatLen);
            }
            h.backing_format = stored_string(d, len);
            break;
        case kExtFeatureTable:
            BG_TRY(once(2, type));
            for (uint32_t i = 0; i + 48 <= len; i += 48) {
                h.feature_names.push_back(FeatureName{d[i], d[i + 1], stored_string(d + i + 2, 46)});
            }
            break;
        case kExtBitmaps:
            BG_TRY(once(4, type));
            BG_TRY(parse_bitmaps_extension(d, len, cs, file_len, h, image));
            break;
        case kExtCrypto:
            BG_TRY(once(8, type));
            h.has_crypto_extension = true;
            break;
        case kExtDataFile:
            BG_TRY(once(16, type));
            h.data_file = stored_string(d, len);
            break;
        default:
            // Unknown: kept verbatim for a header rewrite (QEMU does the same).
            h.unknown_extensions.push_back(HeaderExtension{type, std::vector<uint8_t>(d, d + len)});
            break;
        }
        off += (static_cast<uint64_t>(len) + 7) & ~7ULL;
    }
    return {};
}

// Feature bits, compression type and encryption of a parsed h.
// ENOTSUP (unknown incompatible feature, compression type, encryption),
// EACCES (corrupt and writable), EINVAL (inconsistent bits).
Status check_features(const Header &h, const std::string &image, bool writable)
{
    if (uint64_t unknown = h.incompatible_features & ~kIncompatMask) {
        return herr(ENOTSUP, image, "Unsupported qcow2 feature(s): %s",
                    describe_features(unknown, 0, h.feature_names).c_str());
    }
    if ((h.incompatible_features & kIncompatCorrupt) && writable) {
        return herr(EACCES, image, "image is corrupt; open it read-only")
            .with_qemu_text("qcow2: Image is corrupt; cannot be opened read/write");
    }
    // Unknown compatible bits are ignored; unknown autoclear bits are
    // cleared by a writable open. PART 2: clear them (and rewrite the header)
    // before the first write; until then the image is left untouched.
    if (h.compression_type != kCompressionZlib && h.compression_type != kCompressionZstd) {
        return herr(ENOTSUP, image, "unknown compression type %u", h.compression_type);
    }
    if (h.compression_type == kCompressionZlib && (h.incompatible_features & kIncompatCompression)) {
        return herr(EINVAL, image, "the compression type feature bit is set but the compression type is zlib");
    }
    if (h.compression_type != kCompressionZlib && !(h.incompatible_features & kIncompatCompression)) {
        return herr(EINVAL, image, "compression type %u needs the compression type feature bit", h.compression_type);
    }
    if (h.data_file_raw() && !h.has_data_file()) {
        return herr(EINVAL, image, "the data-file-raw bit is set but the image has no external data file");
    }

    // Encryption: refused.
    if (h.crypt_method > kCryptLuks) {
        return herr(ENOTSUP, image, "unsupported encryption method %" PRIu32, h.crypt_method);
    }
    if (h.crypt_method != kCryptNone) {
        return herr(ENOTSUP, image, "encrypted images are not supported (encryption method %s)",
                    h.crypt_method == kCryptAes ? "aes" : "luks");
    }
    if (h.has_crypto_extension) {
        return herr(EINVAL, image, "encryption header extension in an image that is not encrypted");
    }
    return {};
}

// The virtual size and the L1, refcount and snapshot tables of h: within
// QEMU's limits (EFBIG), aligned, inside the file of file_len bytes and
// not overlapping one another (EINVAL).
Status check_tables(const Header &h, uint64_t file_len, const std::string &image)
{
    const uint64_t cs = h.cluster_size();
    // Virtual size and L1 table.
    if (h.size > static_cast<uint64_t>(kMaxLength)) {
        return herr(EFBIG, image, "virtual size %" PRIu64 " is too large (at most %" PRId64 ")", h.size,
                    kMaxLength);
    }
    if (h.l1_size > kMaxL1Bytes / 8) {
        return herr(EFBIG, image, "L1 table is too large (%" PRIu32 " entries, at most %" PRIu64 ")", h.l1_size,
                    kMaxL1Bytes / 8)
            .with_qemu_text("Active L1 table too large");
    }
    uint64_t l1_needed = size_to_l1(h.size, h.cluster_bits, h.l2_bits());
    if (l1_needed > h.l1_size) {
        return herr(EINVAL, image,
                    "L1 table is too small for the virtual size (%" PRIu32 " entries, %" PRIu64 " needed)",
                    h.l1_size, l1_needed)
            .with_qemu_text("L1 table is too small");
    }
    const uint64_t l1_bytes = static_cast<uint64_t>(h.l1_size) * 8;
    if (h.l1_size) BG_TRY(check_table(image, "L1 table", h.l1_table_offset, l1_bytes, cs, file_len));

    // Refcount table.
    if (h.refcount_table_clusters == 0) {
        return herr(EINVAL, image, "image has no refcount table (refcount_table_clusters is 0)");
    }
    if (h.refcount_table_clusters > (kMaxRefTableBytes >> h.cluster_bits)) {
        return herr(EFBIG, image, "refcount table is too large (%" PRIu32 " clusters, at most %" PRIu64 ")",
                    h.refcount_table_clusters, kMaxRefTableBytes >> h.cluster_bits);
    }
    const uint64_t rt_bytes = static_cast<uint64_t>(h.refcount_table_clusters) << h.cluster_bits;
    BG_TRY(check_table(image, "refcount table", h.refcount_table_offset, rt_bytes, cs, file_len));
    if (overlaps(h.l1_table_offset, l1_bytes, h.refcount_table_offset, rt_bytes)) {
        return herr(EINVAL, image, "L1 table (offset 0x%" PRIx64 ") overlaps the refcount table (offset 0x%" PRIx64 ")",
                    h.l1_table_offset, h.refcount_table_offset);
    }

    // Snapshot table: its entries have variable length; here only its
    // minimal extent (nb_snapshots fixed-size headers) is checked,
    // read_snapshot_table() checks the rest.
    if (h.nb_snapshots > kMaxSnapshots) {
        return herr(EFBIG, image, "too many snapshots (%" PRIu32 ", at most %" PRIu32 ")", h.nb_snapshots,
                    kMaxSnapshots);
    }
    if (h.nb_snapshots) {
        uint64_t min_bytes = static_cast<uint64_t>(h.nb_snapshots) * kSnapshotHeaderSize;
        BG_TRY(check_table(image, "snapshot table", h.snapshots_offset, min_bytes, cs, file_len));
        if (overlaps(h.snapshots_offset, min_bytes, h.l1_table_offset, l1_bytes)) {
            return herr(EINVAL, image, "snapshot table (offset 0x%" PRIx64 ") overlaps the L1 table",
                        h.snapshots_offset);
        }
        if (overlaps(h.snapshots_offset, min_bytes, h.refcount_table_offset, rt_bytes)) {
            return herr(EINVAL, image, "snapshot table (offset 0x%" PRIx64 ") overlaps the refcount table",
                        h.snapshots_offset);
        }
    }
    return {};
}

} // namespace

Result<Header> parse_header(const uint8_t *buf, size_t buf_len, uint64_t file_len, const std::string &image,
                            bool writable)
{
    Header h;
    if (buf_len < 8 || be32(buf) != kMagic) return herr(EINVAL, image, "Image is not in qcow2 format");
    h.version = be32(buf + 4);
    if (h.version != 2 && h.version != 3) {
        return herr(ENOTSUP, image, "Unsupported qcow2 version %" PRIu32, h.version);
    }
    const uint32_t min_len = h.version == 2 ? kV2HeaderLength : kV3MinHeaderLength;
    if (file_len < min_len || buf_len < min_len) {
        return herr(EINVAL, image, "file is too short for a qcow2 version %" PRIu32 " header (%" PRIu64 " bytes)",
                    h.version, std::min<uint64_t>(file_len, buf_len));
    }
    h.cluster_bits = be32(buf + 20);
    if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
        return herr(EINVAL, image, "cluster_bits %" PRIu32 " is out of range (%" PRIu32 "..%" PRIu32 ")",
                    h.cluster_bits, kMinClusterBits, kMaxClusterBits)
            .with_qemu_text("Unsupported cluster size: 2^" + std::to_string(h.cluster_bits));
    }
    const uint64_t cs = h.cluster_size();

    // The first cluster, zero-padded: bytes past the end of the file or of
    // what the caller read read as zeros, as they would from the file.
    std::vector<uint8_t> c(cs, 0);
    std::memcpy(c.data(), buf, std::min<uint64_t>(buf_len, cs));
    const uint8_t *p = c.data();

    BG_TRY(parse_fixed_fields(p, cs, h, image));
    // Header extensions, from header_length up to the backing file name
    // (or the end of the first cluster).
    uint64_t ext_end = cs;
    BG_TRY(parse_backing_name(p, cs, h, image, &ext_end));
    BG_TRY(parse_extensions(p, ext_end, cs, file_len, h, image));
    BG_TRY(check_features(h, image, writable));
    BG_TRY(check_tables(h, file_len, image));
    return h;
}

} // namespace qcow2
} // namespace bg

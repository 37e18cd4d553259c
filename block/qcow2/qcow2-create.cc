// qcow2 image creation (QEMU qcow2_co_create / qcow2_co_create_opts),
// the header writer shared with amend (QEMU qcow2_update_header), and the
// size arithmetic shared with measure (qcow2_calc_prealloc_size,
// qcow2_refcount_metadata_size). qcow2.md 2.4 lists the options.
//
// Creation writes fresh structures directly through a file node, without
// the allocator: the layout is computed first, so every structure is
// refcounted exactly and the refcount blocks cover all of them:
//
//   cluster 0              header, extensions, backing file name
//   reftable               refcount table (>= 1 cluster)
//   refblocks              refcount blocks covering every cluster below
//   L1                     L1 table (l1_size entries)
//   [L2 data...] ...       with preallocation: each L2 table followed by
//                          the data clusters it maps (none with a data file)
//
// Without preallocation this is exactly QEMU's layout (header, reftable,
// one refblock, L1). The header is written last, so an interrupted create
// leaves no file that looks like a qcow2 image. Preallocated layouts differ
// from QEMU's placement but hold the same clusters.
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include <unistd.h>

#include "block/block-driver.h"
#include "block/qcow2/qcow2-mgmt.h"

namespace bg {
namespace qcow2 {

namespace {

void put16(uint8_t *p, uint16_t v) { put_be(p, v, 2); }

// QEMU's feature name table (qcow2_update_header), in its order.
struct FeatureEntry {
    uint8_t type, bit;
    const char *name;
};
constexpr FeatureEntry kFeatureTable[] = {
    {0, 0, "dirty bit"},          {0, 1, "corrupt bit"},    {0, 2, "external data file"},
    {0, 3, "compression type"},   {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},            {2, 1, "raw external data"},
};

constexpr uint32_t kQemuHeaderLength = 112;   // sizeof(QCowHeader)

uint64_t div_round_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
uint64_t round_up(uint64_t a, uint64_t b) { return div_round_up(a, b) * b; }

void put32(uint8_t *p, uint32_t v) { put_be(p, v, 4); }
void put64(uint8_t *p, uint64_t v) { put_be64(p, v); }

} // namespace

// ---------------------------------------------------------------- header writer

Result<std::vector<uint8_t>> build_header_cluster(const Header &h, const std::string &image)
{
    const uint64_t cs = h.cluster_size();
    std::vector<uint8_t> buf(cs, 0);
    uint8_t *p = buf.data();
    put32(p, kMagic);
    put32(p + 4, h.version);
    put32(p + 20, h.cluster_bits);
    put64(p + 24, h.size);
    put32(p + 32, h.crypt_method);
    put32(p + 36, h.l1_size);
    put64(p + 40, h.l1_table_offset);
    put64(p + 48, h.refcount_table_offset);
    put32(p + 56, h.refcount_table_clusters);
    put32(p + 60, h.nb_snapshots);
    put64(p + 64, h.snapshots_offset);
    size_t off;
    if (h.version >= 3) {
        const uint32_t hlen =
            std::max<uint32_t>(kQemuHeaderLength, static_cast<uint32_t>(kKnownHeaderLength + h.unknown_header_fields.size() + 7) & ~7u);
        if (hlen > cs) return herr(ENOSPC, image, "header does not fit in the first cluster");
        put64(p + 72, h.incompatible_features);
        put64(p + 80, h.compatible_features);
        put64(p + 88, h.autoclear_features);
        put32(p + 96, h.refcount_order);
        put32(p + 100, hlen);
        p[104] = h.compression_type;
        if (!h.unknown_header_fields.empty()) {
            std::memcpy(p + kKnownHeaderLength, h.unknown_header_fields.data(), h.unknown_header_fields.size());
        }
        off = hlen;
    } else {
        off = kV2HeaderLength;
    }

    auto add_ext = [&](uint32_t type, const uint8_t *data, size_t len) -> bool {
        const size_t padded = (len + 7) & ~size_t{7};
        if (off + 8 + padded > cs) return false;
        put32(p + off, type);
        put32(p + off + 4, static_cast<uint32_t>(len));
        if (len) std::memcpy(p + off + 8, data, len);
        off += 8 + padded;
        return true;
    };
    auto too_big = [&] { return herr(ENOSPC, image, "header extensions do not fit in the first cluster"); };
    if (h.backing_format &&
        !add_ext(kExtBackingFormat, reinterpret_cast<const uint8_t *>(h.backing_format->data()), h.backing_format->size()))
        return too_big();
    if (h.data_file && !add_ext(kExtDataFile, reinterpret_cast<const uint8_t *>(h.data_file->data()), h.data_file->size()))
        return too_big();
    if (h.bitmaps && (h.autoclear_features & kAutoclearBitmaps)) {
        uint8_t b[24] = {};
        put32(b, h.bitmaps->nb_bitmaps);
        put64(b + 8, h.bitmaps->directory_size);
        put64(b + 16, h.bitmaps->directory_offset);
        if (!add_ext(kExtBitmaps, b, sizeof(b))) return too_big();
    }
    // QEMU writes the feature name table for v3 images with clusters of
    // more than 4 KiB only (observed with qemu-img 7.2).
    if (h.version >= 3 && cs > 4096) {
        uint8_t t[sizeof(kFeatureTable) / sizeof(kFeatureTable[0]) * 48] = {};
        for (size_t i = 0; i < sizeof(kFeatureTable) / sizeof(kFeatureTable[0]); i++) {
            t[i * 48] = kFeatureTable[i].type;
            t[i * 48 + 1] = kFeatureTable[i].bit;
            std::memcpy(t + i * 48 + 2, kFeatureTable[i].name, std::strlen(kFeatureTable[i].name));
        }
        if (!add_ext(kExtFeatureTable, t, sizeof(t))) return too_big();
    }
    for (const HeaderExtension &e : h.unknown_extensions) {
        if (!add_ext(e.type, e.data.data(), e.data.size())) return too_big();
    }
    if (!add_ext(kExtEnd, nullptr, 0)) return too_big();
    if (!h.backing_file.empty()) {
        if (h.backing_file.size() > kMaxBackingNameLen || off + h.backing_file.size() > cs) {
            return herr(ENOSPC, image, "backing file name '%s' is too long", h.backing_file.c_str());
        }
        put64(p + 8, off);
        put32(p + 16, static_cast<uint32_t>(h.backing_file.size()));
        std::memcpy(p + off, h.backing_file.data(), h.backing_file.size());
    }
    return buf;
}

// ---------------------------------------------------------------- arithmetic

uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cluster_size, uint32_t refcount_order,
                                uint64_t *refblock_count, uint64_t *reftable_clusters)
{
    const uint64_t per_table_cluster = cluster_size / 8;
    const uint64_t per_block = cluster_size * 8 / (1u << refcount_order);
    uint64_t table = 0, blocks = 0, n = 0, last;
    do {
        last = n;
        blocks = div_round_up(clusters + table + blocks, per_block);
        table = div_round_up(blocks, per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    if (refblock_count) *refblock_count = blocks;
    if (reftable_clusters) *reftable_clusters = table;
    return (blocks + table) * cluster_size;
}

uint64_t calc_prealloc_size(uint64_t total_size, uint64_t cluster_size, uint32_t refcount_order, bool extended_l2)
{
    const uint64_t aligned = round_up(total_size, cluster_size);
    const uint64_t l2e = extended_l2 ? 16 : 8;
    uint64_t meta = cluster_size;                               // header
    uint64_t nl2e = round_up(aligned / cluster_size, cluster_size / l2e);
    meta += nl2e * l2e;                                         // L2 tables
    uint64_t nl1e = round_up(nl2e * l2e / cluster_size, cluster_size / 8);
    meta += nl1e * 8;                                           // L1 table
    meta += refcount_metadata_size((meta + aligned) / cluster_size, cluster_size, refcount_order, nullptr, nullptr);
    return meta + aligned;
}

// ---------------------------------------------------------------- options

const CreateOptionDesc kCreateOptions[kNumCreateOptions] = {
    // The order of qemu-img's "Formatting" line.
    {"encryption", CreateOptionType::kBool,
     "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)", nullptr},
    {"encrypt.format", CreateOptionType::kString, "Encrypt the image, format choices: 'aes', 'luks'", nullptr},
    {"encrypt.key-secret", CreateOptionType::kString, "ID of secret providing qcow AES key or LUKS passphrase",
     nullptr},
    {"encrypt.cipher-alg", CreateOptionType::kString, "Name of encryption cipher algorithm", nullptr},
    {"encrypt.cipher-mode", CreateOptionType::kString, "Name of encryption cipher mode", nullptr},
    {"encrypt.ivgen-alg", CreateOptionType::kString, "Name of IV generator algorithm", nullptr},
    {"encrypt.ivgen-hash-alg", CreateOptionType::kString, "Name of IV generator hash algorithm", nullptr},
    {"encrypt.hash-alg", CreateOptionType::kString, "Name of encryption hash algorithm", nullptr},
    {"encrypt.iter-time", CreateOptionType::kNumber, "Time to spend in PBKDF in milliseconds", nullptr},
    {"cluster_size", CreateOptionType::kSize, "qcow2 cluster size", "65536"},
    {"extended_l2", CreateOptionType::kBool, "Extended L2 tables", "off"},
    {"preallocation", CreateOptionType::kString, "Preallocation mode (allowed values: off, metadata, falloc, full)",
     nullptr},
    {"compression_type", CreateOptionType::kString, "Compression method used for image cluster compression", "zlib"},
    {"size", CreateOptionType::kSize, "Virtual disk size", nullptr},
    {"compat", CreateOptionType::kString, "Compatibility level (v2 [0.10] or v3 [1.1])", nullptr},
    {"backing_file", CreateOptionType::kString, "File name of a base image", nullptr},
    {"backing_fmt", CreateOptionType::kString, "Image format of the base image", nullptr},
    {"data_file", CreateOptionType::kString, "File name of an external data file", nullptr},
    {"data_file_raw", CreateOptionType::kBool, "The external data file must stay valid as a raw image", nullptr},
    {"lazy_refcounts", CreateOptionType::kBool, "Postpone refcount updates", "off"},
    {"refcount_bits", CreateOptionType::kNumber, "Width of a reference count entry in bits", "16"},
};

Result<uint32_t> parse_compat(const std::string &v)
{
    if (v == "0.10" || v == "v2") return 2u;
    if (v == "1.1" || v == "v3") return 3u;
    return make_error(EINVAL, "Parameter 'version' does not accept value '%s'", v.c_str());
}

Result<CreateParams> parse_create_params(const CreateOptions &opts)
{
    CreateParams c;
    auto size = opts.get_size("size", 0);
    if (!size) return size.error();
    // qcow2_co_create_opts rounds the size up to whole sectors.
    if (size.value() > static_cast<uint64_t>(kMaxLength)) return make_error(EFBIG, "Image size too large");
    c.size = (size.value() + 511) & ~uint64_t{511};
    for (const char *k : {"encryption", "encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg",
                          "encrypt.cipher-mode", "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.hash-alg",
                          "encrypt.iter-time"}) {
        if (opts.has(k)) {
            auto enc = opts.get_bool("encryption", false);
            if (std::strcmp(k, "encryption") == 0 && enc && !enc.value()) continue;
            return make_error(ENOTSUP, "qcow2 encryption ('%s') is not supported by blockgraph; create the image "
                                       "unencrypted (and encrypt the storage below it)",
                              k);
        }
    }
    if (auto v = opts.get("compat")) {
        auto r = parse_compat(*v);
        if (!r) return r.error();
        c.version = r.value();
    }
    auto ext = opts.get_bool("extended_l2", false);
    if (!ext) return ext.error();
    c.extended_l2 = ext.value();
    auto cs = opts.get_size("cluster_size", 65536);
    if (!cs) return cs.error();
    const uint64_t csv = cs.value();
    if (csv < 512 || csv > (2u << 20) || (csv & (csv - 1))) {
        return make_error(EINVAL, "Cluster size must be a power of two between 512 and 2048k");
    }
    c.cluster_bits = static_cast<uint32_t>(__builtin_ctzll(csv));
    if (c.extended_l2) {
        if (c.version < 3) {
            return make_error(EINVAL, "Extended L2 entries are only supported with compatibility level 1.1 and "
                                      "above (use version=v3 or greater)");
        }
        if (csv < 16384) {
            return make_error(EINVAL, "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
        }
    }
    auto rb = opts.get_number("refcount_bits", 16);
    if (!rb) return rb.error();
    const uint64_t rbits = rb.value();
    if (rbits == 0 || rbits > 64 || (rbits & (rbits - 1))) {
        return make_error(EINVAL, "Refcount width must be a power of two and may not exceed 64 bits");
    }
    if (c.version < 3 && rbits != 16) {
        return make_error(EINVAL, "Different refcount widths than 16 bits require compatibility level 1.1 or above "
                                  "(use version=v3 or greater)");
    }
    c.refcount_order = static_cast<uint32_t>(__builtin_ctzll(rbits));
    auto lazy = opts.get_bool("lazy_refcounts", false);
    if (!lazy) return lazy.error();
    c.lazy_refcounts = lazy.value();
    if (c.lazy_refcounts && c.version < 3) {
        return make_error(EINVAL, "Lazy refcounts only supported with compatibility level 1.1 and above (use "
                                  "version=v3 or greater)");
    }
    auto pre = parse_prealloc_option(opts, true);
    if (!pre) return pre.error();
    c.prealloc = pre.value();
    if (auto v = opts.get("backing_file"); v && !v->empty()) c.backing_file = *v;
    if (auto v = opts.get("backing_fmt"); v && !v->empty()) c.backing_fmt = *v;
    if (c.backing_file && c.prealloc != PreallocMode::kOff && !c.extended_l2) {
        return make_error(EINVAL, "Backing file and preallocation can only be used at the same time if extended_l2 is on");
    }
    if (c.backing_fmt && !c.backing_file) return make_error(EINVAL, "Backing format cannot be used without backing file");
    if (c.backing_file && c.backing_file->size() > kMaxBackingNameLen) {
        return make_error(EINVAL, "Backing file name too long");
    }
    if (c.backing_fmt && c.backing_fmt->size() > kMaxBackingFormatLen) {
        return make_error(EINVAL, "Backing format name too long");
    }
    if (auto v = opts.get("data_file"); v && !v->empty()) c.data_file = *v;
    auto raw = opts.get_bool("data_file_raw", false);
    if (!raw) return raw.error();
    c.data_file_raw = raw.value();
    if (c.data_file && c.version < 3) {
        return make_error(EINVAL, "External data files are only supported with compatibility level 1.1 and above "
                                  "(use version=v3 or greater)");
    }
    if (c.data_file_raw && !c.data_file) return make_error(EINVAL, "data-file-raw requires data-file");
    if (c.data_file_raw && c.backing_file) {
        return make_error(EINVAL, "Backing file and data-file-raw cannot be used at the same time");
    }
    // A raw data file needs the 1:1 mapping in the L2 tables (QEMU).
    if (c.data_file_raw && c.prealloc == PreallocMode::kOff) c.prealloc = PreallocMode::kMetadata;
    if (auto v = opts.get("compression_type")) {
        if (*v == "zlib") c.compression_type = kCompressionZlib;
        else if (*v == "zstd") c.compression_type = kCompressionZstd;
        else return make_error(EINVAL, "Parameter 'compression-type' does not accept value '%s'", v->c_str());
    }
    if (c.compression_type != kCompressionZlib && c.version < 3) {
        return make_error(EINVAL, "Non-zlib compression type is only supported with compatibility level 1.1 and "
                                  "above (use version=v3 or greater)");
    }
    // L1 limit (QEMU: "Cannot grow L1 table" -> EFBIG).
    const uint32_t l2_bits = c.cluster_bits - (c.extended_l2 ? 4 : 3);
    if (size_to_l1(c.size, c.cluster_bits, l2_bits) > kMaxL1Bytes / 8) {
        return make_error(EFBIG, "The image size is too large");
    }
    return c;
}

// ---------------------------------------------------------------- create

namespace {

// Writes through a backend in chunks of at most 8 MiB.
class Writer {
  public:
    explicit Writer(BlockBackend *blk) : blk_(blk) {}
    int pwrite(uint64_t off, const void *buf, size_t len)
    {
        const auto *p = static_cast<const uint8_t *>(buf);
        while (len) {
            size_t n = std::min<size_t>(len, 8u << 20);
            int r = run_in_coroutine([&] { return blk_->co_pwrite(static_cast<int64_t>(off), static_cast<int64_t>(n), p); });
            if (r < 0) return r;
            off += n;
            p += n;
            len -= n;
        }
        return 0;
    }

  private:
    BlockBackend *blk_;
};

// Sets refcount entry idx of a refcount block buffer (all widths).
void set_refcount_entry(uint8_t *block, uint64_t idx, uint32_t order, uint64_t v)
{
    switch (order) {
    case 0:
    case 1:
    case 2: {
        const uint32_t bits = 1u << order;
        const uint64_t bit = idx * bits;
        const uint8_t mask = static_cast<uint8_t>(((1u << bits) - 1) << (bit % 8));
        block[bit / 8] = static_cast<uint8_t>((block[bit / 8] & ~mask) | ((v << (bit % 8)) & mask));
        break;
    }
    case 3: block[idx] = static_cast<uint8_t>(v); break;
    case 4: put16(block + idx * 2, static_cast<uint16_t>(v)); break;
    case 5: put32(block + idx * 4, static_cast<uint32_t>(v)); break;
    default: put64(block + idx * 8, v); break;
    }
}

struct OpenFile {
    std::unique_ptr<BlockGraph> graph;
    std::unique_ptr<BlockBackend> blk;
};

Result<OpenFile> open_file_rw(const std::string &path)
{
    OpenFile f;
    f.graph = std::make_unique<BlockGraph>();
    auto node = f.graph->add_node_json(protocol_node_options(path));
    if (!node) return node.error();
    auto blk = BlockBackend::create(node.value(), kPermWrite | kPermResize | kPermConsistentRead,
                                    kPermAll & ~kPermResize, "qemu-img");
    if (!blk) return blk.error();
    f.blk = std::move(blk.value());
    return f;
}

// The message names the file; qemu-img and convert put the file name in
// front of the QEMU text themselves ("Could not write refcount table: ...",
// as QEMU says).
Status io_error(int r, const std::string &path, const char *what)
{
    return make_error(-r, "%s: could not write the %s: %s", path.c_str(), what, strerror(-r))
        .with_qemu_text(std::string("Could not write ") + what + ": " + strerror(-r));
}

} // namespace

namespace {
Status do_create_image(const std::string &filename, const CreateOptions &opts, bool *created);
}

Status create_image(const std::string &filename, const CreateOptions &opts)
{
    bool created = false;
    Status s = do_create_image(filename, opts, &created);
    if (!s && created) {
        // Like QEMU, no half-made image is left behind.
        (void)::unlink(filename.c_str());
        auto df = opts.get("data_file");
        if (df && !df->empty()) (void)::unlink(df->c_str());
    }
    return s;
}

namespace {
Status write_new_image(BlockBackend *blk, BlockBackend *dblk, const CreateParams &c, const std::string &name);
}

Status create_on_node(BlockNode *file, BlockNode *data_file, const CreateOptions &opts)
{
    auto pr = parse_create_params(opts);
    if (!pr) return pr.error();
    const CreateParams c = pr.value();
    if (c.data_file && !data_file) return make_error(EINVAL, "data-file requires a node");
    if (file->read_only() || (data_file && data_file->read_only())) {
        return make_error(EPERM, "Block node is read-only");
    }
    // The new image's writer: QEMU's blockdev-create needs WRITE and
    // RESIZE and shares everything (an anonymous backend in QEMU, hence
    // the name in permission conflicts).
    const BlockPerm perm = kPermWrite | kPermResize | kPermConsistentRead;
    auto blk = BlockBackend::create(file, perm, kPermAll, "an unnamed block device");
    if (!blk) return blk.error();
    std::unique_ptr<BlockBackend> dblk;
    if (c.data_file) {
        auto d = BlockBackend::create(data_file, perm, kPermAll, "an unnamed block device");
        if (!d) return d.error();
        dblk = std::move(d.value());
    }
    return write_new_image(blk.value().get(), dblk.get(), c, file->node_name());
}

namespace {

// Where a new image's structures go: header cluster, refcount table,
// refcount blocks, L1 table, then (preallocation) L2 tables interleaved
// with their data clusters.
struct Layout {
    uint64_t cs = 0;
    uint32_t l2e_size = 8;
    uint64_t l2_entries = 0;
    uint64_t l1_size = 0;                   // entries
    uint64_t guest_clusters = 0;
    uint64_t n_l2 = 0;                      // preallocated L2 tables
    uint64_t rb_count = 0, rt_clusters = 0;
    uint64_t rt_off = 0, rb_off = 0, l1_off = 0;
    uint64_t meta_start = 0;                // first L2 table (preallocation)
    uint64_t total_clusters = 0;            // clusters with refcount 1
    uint64_t file_end = 0;
};

// The layout for c. EFBIG if the refcount table would exceed QEMU's limit.
Result<Layout> plan_layout(const CreateParams &c)
{
    Layout L;
    L.cs = 1ULL << c.cluster_bits;
    const uint64_t cs = L.cs;
    L.l2e_size = c.extended_l2 ? 16 : 8;
    const uint32_t l2_bits = c.cluster_bits - (c.extended_l2 ? 4 : 3);
    L.l2_entries = 1ULL << l2_bits;
    L.l1_size = size_to_l1(c.size, c.cluster_bits, l2_bits);
    const uint64_t l1_clusters = div_round_up(L.l1_size * 8, cs);
    const bool prealloc = c.prealloc != PreallocMode::kOff;
    L.guest_clusters = div_round_up(c.size, cs);
    L.n_l2 = prealloc ? div_round_up(L.guest_clusters, L.l2_entries) : 0;
    const uint64_t n_data = prealloc && !c.data_file ? L.guest_clusters : 0;
    refcount_metadata_size(1 + l1_clusters + L.n_l2 + n_data, cs, c.refcount_order, &L.rb_count, &L.rt_clusters);
    if (L.rt_clusters * cs > kMaxRefTableBytes) return make_error(EFBIG, "The image size is too large");

    L.rt_off = cs;
    L.rb_off = L.rt_off + L.rt_clusters * cs;
    L.l1_off = L.rb_off + L.rb_count * cs;
    L.meta_start = L.l1_off + l1_clusters * cs;
    L.total_clusters = 1 + L.rt_clusters + L.rb_count + l1_clusters + L.n_l2 + n_data;
    // End of file: QEMU's layout ends after the L1 entries without
    // preallocation (after the refcount block with an empty L1).
    if (prealloc) L.file_end = L.total_clusters * cs;
    else if (L.l1_size) L.file_end = L.l1_off + L.l1_size * 8;
    else L.file_end = L.l1_off;
    return L;
}

// Writes the refcount table and blocks of L: every cluster of the layout
// has refcount 1. Errors name filename.
Status write_refcounts(Writer &w, const Layout &L, const CreateParams &c, const std::string &filename)
{
    const uint64_t cs = L.cs;
    std::vector<uint8_t> t(L.rt_clusters * cs, 0);
    for (uint64_t i = 0; i < L.rb_count; i++) put64(t.data() + i * 8, L.rb_off + i * cs);
    int r = w.pwrite(L.rt_off, t.data(), t.size());
    if (r < 0) return io_error(r, filename, "refcount table");
    const uint64_t per_block = cs * 8 >> c.refcount_order;
    std::vector<uint8_t> b(cs);
    for (uint64_t i = 0; i < L.rb_count; i++) {
        std::fill(b.begin(), b.end(), 0);
        const uint64_t first = i * per_block;
        const uint64_t last = std::min(L.total_clusters, first + per_block);
        for (uint64_t k = first; k < last; k++) set_refcount_entry(b.data(), k - first, c.refcount_order, 1);
        r = w.pwrite(L.rb_off + i * cs, b.data(), cs);
        if (r < 0) return io_error(r, filename, "refcount blocks");
    }
    return {};
}

// Writes the L1 table and (preallocation) the L2 tables of L, mapping
// every guest cluster (1:1 into the data file with one). Errors name
// filename.
Status write_tables(Writer &w, const Layout &L, const CreateParams &c, const std::string &filename)
{
    if (!L.l1_size) return {};
    const uint64_t cs = L.cs;
    std::vector<uint8_t> l1(L.l1_size * 8, 0);
    std::vector<uint8_t> l2(cs);
    uint64_t pos = L.meta_start;
    int r;
    for (uint64_t t = 0; t < L.n_l2; t++) {
        const uint64_t l2_off = pos;
        pos += cs;
        put64(l1.data() + t * 8, l2_off | kOflagCopied);
        std::fill(l2.begin(), l2.end(), 0);
        const uint64_t first = t * L.l2_entries;
        const uint64_t n = std::min(L.l2_entries, L.guest_clusters - first);
        for (uint64_t k = 0; k < n; k++) {
            uint64_t host;
            if (c.data_file) {
                host = (first + k) * cs;     // 1:1 in the data file, not refcounted
            } else {
                host = pos;
                pos += cs;
            }
            put64(l2.data() + k * L.l2e_size, host | kOflagCopied);
            // Extended L2: the host cluster is allocated, its subclusters
            // are not (QEMU's preallocation leaves the bitmap clear).
        }
        r = w.pwrite(l2_off, l2.data(), cs);
        if (r < 0) return io_error(r, filename, "L2 tables");
    }
    r = w.pwrite(L.l1_off, l1.data(), l1.size());
    if (r < 0) return io_error(r, filename, "L1 table");
    return {};
}

// The header of the new image c laid out as L.
Header new_image_header(const CreateParams &c, const Layout &L)
{
    Header h;
    h.version = c.version;
    h.cluster_bits = c.cluster_bits;
    h.size = c.size;
    h.l1_size = static_cast<uint32_t>(L.l1_size);
    h.l1_table_offset = L.l1_size ? L.l1_off : 0;
    h.refcount_table_offset = L.rt_off;
    h.refcount_table_clusters = static_cast<uint32_t>(L.rt_clusters);
    h.refcount_order = c.refcount_order;
    h.compression_type = c.compression_type;
    if (c.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
    if (c.data_file) h.incompatible_features |= kIncompatDataFile;
    if (c.data_file_raw) h.autoclear_features |= kAutoclearDataFileRaw;
    if (c.compression_type != kCompressionZlib) h.incompatible_features |= kIncompatCompression;
    if (c.extended_l2) h.incompatible_features |= kIncompatExtendedL2;
    h.header_length = c.version >= 3 ? kQemuHeaderLength : kV2HeaderLength;
    if (c.backing_file) h.backing_file = *c.backing_file;
    h.backing_format = c.backing_fmt;
    h.data_file = c.data_file;
    return h;
}

// Formats blk's node as the new image c (dblk: its data file, or
// nullptr): the layout's final length first (falloc/full: allocated on the
// host; otherwise sparse), the refcounts and tables inside it, the data
// file's length, then, once all that is on disk, the header that makes it
// an image. name: the image's name in messages. Both creation paths (a
// file name, an open node) end here.
Status write_new_image(BlockBackend *blk, BlockBackend *dblk, const CreateParams &c, const std::string &name)
{
    auto lr = plan_layout(c);
    if (!lr) return lr.error();
    const Layout L = lr.value();
    const uint64_t cs = L.cs;
    Writer w(blk);
    PreallocMode fmode = PreallocMode::kOff;
    if ((c.prealloc == PreallocMode::kFalloc || c.prealloc == PreallocMode::kFull) && !c.data_file) fmode = c.prealloc;
    // Only ever grown: like QEMU, a new image on a longer node (an
    // existing file) leaves the bytes past its structures in place.
    int r = 0;
    const int64_t len = blk->getlength();
    if (len < 0) return make_error(static_cast<int>(-len), "%s: could not get the length: %s", name.c_str(), strerror(static_cast<int>(-len)));
    if (static_cast<uint64_t>(len) < L.file_end) {
        r = run_in_coroutine([&] { return blk->co_truncate(static_cast<int64_t>(L.file_end), true, fmode); });
    }
    if (r < 0) return make_error(-r, "%s: could not preallocate: %s", name.c_str(), strerror(-r));

    BG_TRY(write_refcounts(w, L, c, name));
    BG_TRY(write_tables(w, L, c, name));
    // The data file holds the guest data 1:1: as long as the disk.
    if (dblk) {
        PreallocMode m = c.prealloc == PreallocMode::kMetadata ? PreallocMode::kOff : c.prealloc;
        r = run_in_coroutine([&] { return dblk->co_truncate(static_cast<int64_t>(c.size), true, m); });
        if (r < 0) return make_error(-r, "%s: could not resize the data file: %s", c.data_file->c_str(), strerror(-r));
        r = run_in_coroutine([&] { return dblk->co_flush(); });
        if (r < 0) return make_error(-r, "%s: could not flush the data file: %s", c.data_file->c_str(), strerror(-r));
    }
    // Everything else is on disk before the header makes it an image.
    r = run_in_coroutine([&] { return blk->co_flush(); });
    if (r < 0) return make_error(-r, "%s: could not flush: %s", name.c_str(), strerror(-r));

    auto hb = build_header_cluster(new_image_header(c, L), name);
    if (!hb) return hb.error();
    r = w.pwrite(0, hb.value().data(), cs);
    if (r < 0) return io_error(r, name, "header");
    r = run_in_coroutine([&] { return blk->co_flush(); });
    if (r < 0) return make_error(-r, "%s: could not flush: %s", name.c_str(), strerror(-r));
    return {};
}

Status do_create_image(const std::string &filename, const CreateOptions &opts, bool *created)
{
    auto pr = parse_create_params(opts);
    if (!pr) return pr.error();
    const CreateParams c = pr.value();
    // Size checks before any file is made.
    auto lr = plan_layout(c);
    if (!lr) return lr.error();

    // The image file (and data file) through the protocol driver (the file
    // protocol takes the image locks and applies nocow / extent_size_hint).
    CreateOptions proto;
    for (const char *k : {"nocow", "extent_size_hint"}) {
        if (auto v = opts.get(k)) proto.set(k, *v);
    }
    proto.set("size", "0");
    BG_TRY(create_image_file(filename, proto));
    *created = true;
    if (c.data_file) BG_TRY(create_image_file(*c.data_file, proto));
    auto fr = open_file_rw(filename);
    if (!fr) return fr.error();
    OpenFile df;
    if (c.data_file) {
        auto d = open_file_rw(*c.data_file);
        if (!d) return d.error();
        df = std::move(d.value());
    }
    return write_new_image(fr.value().blk.get(), df.blk.get(), c, filename);
}

} // namespace

// ---------------------------------------------------------------- measure

Result<MeasureInfo> measure(const CreateOptions &opts, BlockNode *src)
{
    CreateOptions o = opts;
    // The size may be absent when a source is given.
    if (!o.has("size")) o.set("size", "0");
    auto pr = parse_create_params(o);
    if (!pr) {
        if (pr.err() == EFBIG) return make_error(EINVAL, "The image size is too large (try using a larger cluster size)");
        return pr.error();
    }
    const CreateParams &c = pr.value();
    const uint64_t cs = 1ULL << c.cluster_bits;
    uint64_t virtual_size = round_up(c.size, cs);
    uint64_t required = 0;
    if (src) {
        const int64_t ssize = src->getlength();
        if (ssize < 0) return errno_error(static_cast<int>(-ssize), "Unable to get image virtual_size");
        virtual_size = round_up(static_cast<uint64_t>(ssize), cs);
        if (c.backing_file) {
            required = virtual_size;
        } else {
            int r = run_in_coroutine([&]() -> int {
                int64_t pnum = 0;
                for (int64_t offset = 0; offset < ssize; offset += pnum) {
                    int64_t map;
                    BlockNode *file;
                    int depth;
                    int ret = src->co_block_status_above(nullptr, true, offset, ssize - offset, &pnum, &map, &file,
                                                         &depth);
                    if (ret < 0) return ret;
                    if (pnum <= 0) return -EIO;
                    if (ret & kStatusZero) {
                        // Skip zero regions (safe with no backing file).
                    } else if ((ret & (kStatusData | kStatusAllocated)) == (kStatusData | kStatusAllocated)) {
                        // Round to the end of the cluster; count what we saw.
                        pnum = static_cast<int64_t>(round_up(static_cast<uint64_t>(offset + pnum), cs)) - offset;
                        required += static_cast<uint64_t>(offset) % cs + static_cast<uint64_t>(pnum);
                    }
                }
                return 0;
            });
            if (r < 0) return errno_error(-r, "Unable to get block status");
        }
    }
    if (c.prealloc == PreallocMode::kFull || c.prealloc == PreallocMode::kFalloc) required = virtual_size;
    MeasureInfo m;
    m.fully_allocated = calc_prealloc_size(virtual_size, cs, c.refcount_order, c.extended_l2);
    m.required = m.fully_allocated - virtual_size + required;
    if (c.version >= 3 && src) {
        auto bms = src->persistent_bitmaps();
        if (bms) {
            uint64_t bitmaps = 0, dir = 0;
            const uint64_t ssize = static_cast<uint64_t>(src->getlength());
            for (const PersistentBitmapInfo &b : bms.value()) {
                if (!b.granularity) continue;   // (granularity_bits beyond 31: not a bitmap anyone can use)
                const uint64_t bits = div_round_up(ssize, b.granularity);
                const uint64_t bytes = div_round_up(bits, 8);
                const uint64_t clusters = div_round_up(bytes, cs);
                bitmaps += clusters * cs;                       // the bitmap data, all allocated
                bitmaps += round_up(clusters * 8, cs);          // its bitmap table
                dir += (24 + b.name.size() + 7) & ~uint64_t{7}; // its directory entry
            }
            bitmaps += round_up(dir, cs);
            m.bitmaps = bitmaps;
        }
    }
    return m;
}

} // namespace qcow2
} // namespace bg

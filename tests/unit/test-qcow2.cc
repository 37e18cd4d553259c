// Unit tests for block/qcow2/ (the qcow2 format driver, part 1: open,
// validate, read): header parsing and validation on handcrafted buffers
// (hostile images rejected with their exact messages), reads of every
// cluster type from handcrafted images (normal, zero, compressed zlib/zstd,
// extended L2 subclusters, backing, external data file, snapshots), the L2
// cache (no metadata rereads, small caches, slices), merged host requests,
// parallel requests, refcounts of every width, block status, backing chain
// resolution and loops, and that a writable open leaves the image alone.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "block/block-driver.h"
#include "block/qcow2/qcow2.h"
#include "util/aio.h"

#include "tests/unit/testdrv.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

#include "tests/unit/tmpdir.h"

namespace bg {
extern const BlockDriver kDriverQcow2;
}

using namespace bg;
using namespace bgtest;

namespace {

// ---------------------------------------------------------------- files

void write_file(const std::string &path, const std::vector<uint8_t> &data)
{
    int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
    close(fd);
}

std::vector<uint8_t> read_file(const std::string &path)
{
    struct stat st;
    ck_assert_int_eq(stat(path.c_str(), &st), 0);
    std::vector<uint8_t> buf(st.st_size);
    int fd = open(path.c_str(), O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, buf.data(), buf.size(), 0), static_cast<ssize_t>(buf.size()));
    close(fd);
    return buf;
}

bool ends_with(const std::string &s, const std::string &suffix)
{
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint8_t pattern_byte(uint64_t i, uint8_t seed) { return static_cast<uint8_t>((i * 131 + i / 509 + seed) % 251 + 1); }

std::vector<uint8_t> pattern(size_t len, uint8_t seed, uint64_t base = 0)
{
    std::vector<uint8_t> v(len);
    for (size_t i = 0; i < len; i++) v[i] = pattern_byte(base + i, seed);
    return v;
}

// ---------------------------------------------------------------- big-endian

void put16(std::vector<uint8_t> &b, size_t off, uint16_t v)
{
    b[off] = v >> 8;
    b[off + 1] = v & 0xff;
}
void put32(std::vector<uint8_t> &b, size_t off, uint32_t v)
{
    for (int i = 0; i < 4; i++) b[off + i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
void put64(std::vector<uint8_t> &b, size_t off, uint64_t v)
{
    put32(b, off, static_cast<uint32_t>(v >> 32));
    put32(b, off + 4, static_cast<uint32_t>(v));
}
uint64_t get64(const std::vector<uint8_t> &b, size_t off) { return qcow2::be64(b.data() + off); }

// ---------------------------------------------------------------- image builder

// Builds qcow2 images byte by byte: header (+ extensions, backing name) in
// cluster 0, refcount table in cluster 1, L1 table from cluster 2, then L2
// tables, data and refcount blocks as allocated. finish() fills in
// refcounts, so images pass "qemu-img check".
struct ImageBuilder {
    uint32_t version = 3;
    uint32_t cluster_bits = 16;
    uint64_t size = 4 << 20;
    uint32_t refcount_order = 4;
    bool extended_l2 = false;
    uint64_t incompat = 0, compat = 0, autoclear = 0;
    uint8_t compression_type = 0;
    uint32_t header_length = 112;
    std::string backing;
    std::vector<std::pair<uint32_t, std::vector<uint8_t>>> exts;
    uint32_t l1_clusters = 1;

    std::vector<uint8_t> img;
    std::map<uint64_t, uint64_t> l2;   // L1 index -> L2 table offset
    std::vector<int> refs;             // refcount per host cluster
    uint64_t comp_cursor = 0;          // byte allocator for compressed data (0: none)

    uint64_t cs() const { return 1ULL << cluster_bits; }
    uint32_t l2_entry() const { return extended_l2 ? 16 : 8; }
    uint64_t l2_entries() const { return cs() / l2_entry(); }
    uint64_t l1_offset() const { return 2 * cs(); }

    void start()
    {
        img.assign(static_cast<size_t>((2 + l1_clusters) * cs()), 0);
        refs.assign(2 + l1_clusters, 1);
    }
    uint64_t alloc_cluster()
    {
        uint64_t off = img.size();
        img.resize(img.size() + cs(), 0);
        refs.push_back(1);
        return off;
    }
    uint64_t l2_table(uint64_t guest)
    {
        uint64_t l1i = (guest >> cluster_bits) / l2_entries();
        auto it = l2.find(l1i);
        if (it != l2.end()) return it->second;
        uint64_t off = alloc_cluster();
        l2[l1i] = off;
        return off;
    }
    size_t l2_pos(uint64_t guest)
    {
        uint64_t t = l2_table(guest);
        return static_cast<size_t>(t + ((guest >> cluster_bits) % l2_entries()) * l2_entry());
    }
    void set_entry(uint64_t guest, uint64_t entry, uint64_t bitmap = 0)
    {
        size_t p = l2_pos(guest);
        put64(img, p, entry);
        if (extended_l2) put64(img, p + 8, bitmap);
    }
    // A data cluster holding data (padded with zeros); returns its host offset.
    uint64_t data(uint64_t guest, const std::vector<uint8_t> &d, uint64_t bitmap = 0)
    {
        l2_table(guest);   // the L2 table first, so that data clusters follow each other
        uint64_t host = alloc_cluster();
        if (!d.empty()) std::memcpy(img.data() + host, d.data(), std::min<size_t>(d.size(), cs()));
        set_entry(guest, host | qcow2::kOflagCopied, extended_l2 && !bitmap ? qcow2::kL2BitmapAllAlloc : bitmap);
        return host;
    }
    // A compressed cluster; bytes are placed at the byte allocator's cursor
    // (not sector-aligned after the first).
    void compressed(uint64_t guest, const std::vector<uint8_t> &stream)
    {
        if (!comp_cursor || (comp_cursor % cs()) + stream.size() > cs()) comp_cursor = alloc_cluster() + 100;
        else refs[comp_cursor / cs()]++;   // one reference per compressed cluster in it
        uint64_t coff = comp_cursor;
        if (coff + stream.size() > img.size()) {
            img.resize(static_cast<size_t>(coff + stream.size()), 0);
        }
        std::memcpy(img.data() + coff, stream.data(), stream.size());
        comp_cursor += stream.size();
        uint64_t nb = ((coff + stream.size() - 1) >> 9) - (coff >> 9);
        uint32_t shift = 62 - (cluster_bits - 8);
        set_entry(guest, coff | (nb << shift) | qcow2::kOflagCompressed);
    }
    void ext(uint32_t type, const std::vector<uint8_t> &d) { exts.emplace_back(type, d); }
    void ext_str(uint32_t type, const std::string &s) { ext(type, std::vector<uint8_t>(s.begin(), s.end())); }

    std::vector<uint8_t> finish()
    {
        // Header.
        std::vector<uint8_t> &b = img;
        put32(b, 0, qcow2::kMagic);
        put32(b, 4, version);
        put32(b, 20, cluster_bits);
        put64(b, 24, size);
        uint64_t l1_size = (size + (cs() * l2_entries()) - 1) / (cs() * l2_entries());
        put32(b, 36, static_cast<uint32_t>(l1_size));
        put64(b, 40, l1_offset());
        put64(b, 48, cs());
        put32(b, 56, 1);
        size_t off = 72;
        if (version == 3) {
            put64(b, 72, incompat | (extended_l2 ? qcow2::kIncompatExtendedL2 : 0) |
                             (compression_type ? qcow2::kIncompatCompression : 0));
            put64(b, 80, compat);
            put64(b, 88, autoclear);
            put32(b, 96, refcount_order);
            put32(b, 100, header_length);
            if (header_length > 104) b[104] = compression_type;
            off = header_length;
        }
        for (auto &e : exts) {
            put32(b, off, e.first);
            put32(b, off + 4, static_cast<uint32_t>(e.second.size()));
            std::memcpy(b.data() + off + 8, e.second.data(), e.second.size());
            off += 8 + ((e.second.size() + 7) & ~size_t(7));
        }
        off += 8;   // end extension (zeros)
        if (!backing.empty()) {
            put64(b, 8, off);
            put32(b, 16, static_cast<uint32_t>(backing.size()));
            std::memcpy(b.data() + off, backing.data(), backing.size());
        }
        // L1.
        for (auto &e : l2) put64(b, static_cast<size_t>(l1_offset() + e.first * 8), e.second | qcow2::kOflagCopied);
        // Compressed data shares clusters: every host cluster it touches is
        // referenced; refcount blocks at the end (they count themselves).
        if (img.size() % cs()) img.resize(static_cast<size_t>((img.size() + cs() - 1) & ~(cs() - 1)), 0);
        refs.resize(img.size() / cs(), 1);
        const uint64_t per_block = cs() * 8 >> refcount_order;
        uint64_t nblocks = 0;
        while (nblocks * per_block < refs.size() + nblocks) nblocks++;
        ck_assert_uint_le(nblocks, cs() / 8);
        uint64_t first_block = img.size();
        for (uint64_t i = 0; i < nblocks; i++) alloc_cluster();
        for (uint64_t i = 0; i < nblocks; i++) put64(b, static_cast<size_t>(cs() + i * 8), first_block + i * cs());
        for (uint64_t c = 0; c < refs.size(); c++) set_refcount(first_block, c, static_cast<uint64_t>(refs[c]));
        return img;
    }
    void set_refcount(uint64_t first_block, uint64_t cluster, uint64_t v)
    {
        const uint64_t per_block = cs() * 8 >> refcount_order;
        uint8_t *blk = img.data() + first_block + (cluster / per_block) * cs();
        uint64_t i = cluster % per_block;
        uint32_t bits = 1u << refcount_order;
        if (bits < 8) {
            uint64_t bit = i * bits;
            blk[bit / 8] = static_cast<uint8_t>((blk[bit / 8] & ~(((1u << bits) - 1) << (bit % 8))) |
                                                ((v & ((1u << bits) - 1)) << (bit % 8)));
        } else {
            for (uint32_t k = 0; k < bits / 8; k++) blk[i * (bits / 8) + k] = static_cast<uint8_t>(v >> (bits - 8 - 8 * k));
        }
    }
};

std::vector<uint8_t> zlib_compress(const std::vector<uint8_t> &in)
{
    z_stream s = {};
    ck_assert_int_eq(deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), Z_OK);
    std::vector<uint8_t> out(in.size() * 2 + 1024);
    s.next_in = const_cast<Bytef *>(in.data());
    s.avail_in = static_cast<uInt>(in.size());
    s.next_out = out.data();
    s.avail_out = static_cast<uInt>(out.size());
    ck_assert_int_eq(deflate(&s, Z_FINISH), Z_STREAM_END);
    out.resize(out.size() - s.avail_out);
    deflateEnd(&s);
    return out;
}

std::vector<uint8_t> zstd_compress(const uint8_t *in, size_t len)
{
    std::vector<uint8_t> out(ZSTD_compressBound(len));
    size_t n = ZSTD_compress(out.data(), out.size(), in, len, 3);
    ck_assert(!ZSTD_isError(n));
    out.resize(n);
    return out;
}

// ---------------------------------------------------------------- graph helpers

nlohmann::json file_json(const std::string &path, bool ro = true)
{
    nlohmann::json j = {{"driver", "file"}, {"filename", path}};
    if (ro) j["read-only"] = true;
    return j;
}

BlockdevOptions file_opts(const std::string &path, bool ro = true) { return must_parse_json(file_json(path, ro)); }

// qcow2 node "q" over an inline file node; extra: more members
// ({"backing": null}).
nlohmann::json qcow2_json(const std::string &path, bool ro = true, const nlohmann::json &extra = {})
{
    nlohmann::json j = {{"driver", "qcow2"}, {"node-name", "q"}, {"file", file_json(path, ro)}};
    if (ro) j["read-only"] = true;
    if (extra.is_object()) j.update(extra);
    return j;
}

BlockdevOptions qcow2_opts(const std::string &path, bool ro = true, const nlohmann::json &extra = {})
{
    return must_parse_json(qcow2_json(path, ro, extra));
}

struct Env {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph;
    explicit Env(const DriverRegistry *reg = nullptr) : graph(reg) {}
    ~Env() { graph.close_all(); }

    Qcow2Node *add(const BlockdevOptions &o)
    {
        auto r = graph.add_node(o);
        ck_assert_msg(r.ok(), "add_node: %s", r.ok() ? "" : r.msg().c_str());
        auto *q = dynamic_cast<Qcow2Node *>(r.value());
        ck_assert_ptr_nonnull(q);
        return q;
    }
    Qcow2Node *open(const std::string &path) { return add(qcow2_opts(path)); }
    // The open error message.
    std::string open_error(const BlockdevOptions &o)
    {
        auto r = graph.add_node(o);
        ck_assert_msg(!r.ok(), "open of %s succeeded", o.node_name.c_str());
        return r.msg();
    }
    std::unique_ptr<BlockBackend> backend(BlockNode *n)
    {
        auto b = BlockBackend::create(n, kPermConsistentRead, kPermAll, "test");
        ck_assert_msg(b.ok(), "backend: %s", b.ok() ? "" : b.msg().c_str());
        return std::move(b.value());
    }
};

int co_read(BlockBackend *b, int64_t off, int64_t len, void *buf)
{
    return run_in_coroutine([&] { return b->co_pread(off, len, buf); });
}

std::vector<uint8_t> read_all(BlockBackend *b)
{
    std::vector<uint8_t> buf(static_cast<size_t>(b->getlength()));
    ck_assert_int_eq(co_read(b, 0, static_cast<int64_t>(buf.size()), buf.data()), 0);
    return buf;
}

// The message parse_header gives for buf (which must be rejected).
std::string reject(const std::vector<uint8_t> &buf, bool writable = false, uint64_t file_len = 0)
{
    auto r = qcow2::parse_header(buf.data(), buf.size(), file_len ? file_len : buf.size(), "disk.qcow2", writable);
    ck_assert_msg(!r.ok(), "header accepted");
    return r.msg();
}

qcow2::Header accept(const std::vector<uint8_t> &buf, bool writable = false)
{
    auto r = qcow2::parse_header(buf.data(), buf.size(), buf.size(), "disk.qcow2", writable);
    ck_assert_msg(r.ok(), "header rejected: %s", r.ok() ? "" : r.msg().c_str());
    return r.value();
}

#define ck_assert_msg_eq(got, want) \
    ck_assert_msg((got) == (want), "got '%s'\nwant '%s'", std::string(got).c_str(), std::string(want).c_str())

// A small valid v3 image with 64 KiB clusters.
std::vector<uint8_t> small_image()
{
    ImageBuilder ib;
    ib.start();
    ib.data(0, pattern(65536, 1));
    return ib.finish();
}

} // namespace

// ---------------------------------------------------------------- header validation

START_TEST(test_header_valid)
{
    ImageBuilder ib;
    ib.backing = "base.qcow2";
    ib.ext_str(qcow2::kExtBackingFormat, "qcow2");
    std::vector<uint8_t> ft(96, 0);
    ft[0] = 0;
    ft[1] = 9;
    std::memcpy(ft.data() + 2, "fancy", 5);
    ft[48] = 1;
    ft[49] = 0;
    std::memcpy(ft.data() + 50, "lazy refcounts", 14);
    ib.ext(qcow2::kExtFeatureTable, ft);
    ib.ext(0x12345678, {1, 2, 3});
    ib.compat = qcow2::kCompatLazyRefcounts | (1ULL << 40);   // unknown compatible bit: ignored
    ib.autoclear = 1ULL << 20;                                  // unknown autoclear bit: kept (for now)
    ib.start();
    auto img = ib.finish();
    qcow2::Header h = accept(img);
    ck_assert_uint_eq(h.version, 3);
    ck_assert_uint_eq(h.cluster_bits, 16);
    ck_assert_uint_eq(h.size, 4 << 20);
    ck_assert_msg_eq(h.backing_file, "base.qcow2");
    ck_assert(h.backing_format && *h.backing_format == "qcow2");
    ck_assert_uint_eq(h.feature_names.size(), 2);
    ck_assert_msg_eq(h.feature_names[0].name, "fancy");
    ck_assert_uint_eq(h.feature_names[1].type, 1);
    ck_assert_uint_eq(h.unknown_extensions.size(), 1);
    ck_assert_uint_eq(h.unknown_extensions[0].type, 0x12345678);
    ck_assert_uint_eq(h.unknown_extensions[0].data.size(), 3);
    ck_assert_uint_eq(h.unknown_header_fields.size(), 112 - 105);
    ck_assert_uint_eq(h.autoclear_features, 1ULL << 20);
    ck_assert_msg_eq(qcow2::describe_features(1ULL << 9 | 1ULL << 10, 0, h.feature_names),
                     "fancy, Unknown incompatible feature: 400");

    // Version 2: header ends at 72, refcounts are 16 bits, no features.
    ImageBuilder v2;
    v2.version = 2;
    v2.start();
    qcow2::Header h2 = accept(v2.finish());
    ck_assert_uint_eq(h2.header_length, 72);
    ck_assert_uint_eq(h2.refcount_order, 4);
    ck_assert_uint_eq(h2.incompatible_features, 0);

    // Every cluster size from 512 B to 2 MiB and every refcount width.
    for (uint32_t cb = 9; cb <= 21; cb++) {
        for (uint32_t ro = 0; ro <= 6; ro++) {
            ImageBuilder x;
            x.cluster_bits = cb;
            x.refcount_order = ro;
            x.size = 1 << 20;
            x.header_length = 104;
            x.start();
            qcow2::Header hx = accept(x.finish());
            ck_assert_uint_eq(hx.cluster_size(), 1ULL << cb);
            ck_assert_uint_eq(hx.refcount_order, ro);
        }
    }
}
END_TEST

START_TEST(test_header_hostile)
{
    const auto base = small_image();
    auto mod = [&](auto fn) {
        std::vector<uint8_t> b = base;
        fn(b);
        return b;
    };
    ck_assert_msg_eq(reject(mod([](auto &b) { b[3] = 0xfa; })), "disk.qcow2: Image is not in qcow2 format");
    ck_assert_msg_eq(reject(std::vector<uint8_t>(base.begin(), base.begin() + 3)),
                     "disk.qcow2: Image is not in qcow2 format");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 4, 1); })), "disk.qcow2: Unsupported qcow2 version 1");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 4, 4); })), "disk.qcow2: Unsupported qcow2 version 4");
    ck_assert_msg_eq(reject(std::vector<uint8_t>(base.begin(), base.begin() + 80)),
                     "disk.qcow2: file is too short for a qcow2 version 3 header (80 bytes)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 20, 8); })), "disk.qcow2: cluster_bits 8 is out of range (9..21)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 20, 22); })),
                     "disk.qcow2: cluster_bits 22 is out of range (9..21)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 100, 100); })),
                     "disk.qcow2: header_length 100 is too small (at least 104 for version 3)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 100, 65544); })),
                     "disk.qcow2: header_length 65544 exceeds the cluster size (65536)");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put32(b, 20, 13);
                         put64(b, 72, qcow2::kIncompatExtendedL2);
                     })),
                     "disk.qcow2: extended L2 entries need clusters of at least 16 KiB (cluster size 8192)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 96, 7); })),
                     "disk.qcow2: refcount_order 7 is too large (at most 6)");
    // Huge virtual size.
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 24, UINT64_MAX); })),
                     "disk.qcow2: virtual size 18446744073709551615 is too large (at most 9223372034707292160)");
    // Size larger than the L1 table maps.
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 24, 1ULL << 40); })),
                     "disk.qcow2: L1 table is too small for the virtual size (1 entries, 2048 needed)");
    // Absurd L1 size (QCOW_MAX_L1_SIZE is 32 MiB: 4 Mi entries).
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 36, 0x00400001); })),
                     "disk.qcow2: L1 table is too large (4194305 entries, at most 4194304)");
    // L1 table beyond the end of the file, partly beyond, unaligned, over the header.
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 40, 0x100000); })),
                     "disk.qcow2: L1 table offset 0x100000 is beyond the end of the file");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 36, 100000); })),
                     "disk.qcow2: L1 table at offset 0x20000 (800000 bytes) extends beyond the end of the file "
                     "(393216 bytes)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 40, 0x20200); })),
                     "disk.qcow2: L1 table offset 0x20200 is not aligned to the cluster size (65536)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 40, 0); })), "disk.qcow2: L1 table offset 0x0 overlaps the header");
    // Refcount table: beyond EOF, over the header, too large, missing, over the L1 table.
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 48, 0x7000000); })),
                     "disk.qcow2: refcount table offset 0x7000000 is beyond the end of the file");
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 48, 0); })),
                     "disk.qcow2: refcount table offset 0x0 overlaps the header");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 56, 129); })),
                     "disk.qcow2: refcount table is too large (129 clusters, at most 128)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 56, 0); })),
                     "disk.qcow2: image has no refcount table (refcount_table_clusters is 0)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 48, 0x20000); })),
                     "disk.qcow2: L1 table (offset 0x20000) overlaps the refcount table (offset 0x20000)");
    // Snapshots.
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 60, 65537); })),
                     "disk.qcow2: too many snapshots (65537, at most 65536)");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put32(b, 60, 1);
                         put64(b, 64, 0x10000);
                     })),
                     "disk.qcow2: snapshot table (offset 0x10000) overlaps the refcount table");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put32(b, 60, 10000);
                         put64(b, 64, 0x40000);
                     })),
                     "disk.qcow2: snapshot table at offset 0x40000 (400000 bytes) extends beyond the end of the "
                     "file (393216 bytes)");
    // Features.
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 72, 1ULL << 9 | 1ULL << 63); })),
                     "disk.qcow2: Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000200");
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 72, qcow2::kIncompatCorrupt); }), true),
                     "disk.qcow2: image is corrupt; open it read-only");
    accept(mod([](auto &b) { put64(b, 72, qcow2::kIncompatCorrupt | qcow2::kIncompatDirty); }), false);
    accept(mod([](auto &b) { put64(b, 72, qcow2::kIncompatDirty); }), true);
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 72, qcow2::kIncompatCompression); })),
                     "disk.qcow2: the compression type feature bit is set but the compression type is zlib");
    ck_assert_msg_eq(reject(mod([](auto &b) { b[104] = 1; })),
                     "disk.qcow2: compression type 1 needs the compression type feature bit");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         b[104] = 2;
                         put64(b, 72, qcow2::kIncompatCompression);
                     })),
                     "disk.qcow2: unknown compression type 2");
    ck_assert_msg_eq(reject(mod([](auto &b) { put64(b, 88, qcow2::kAutoclearDataFileRaw); })),
                     "disk.qcow2: the data-file-raw bit is set but the image has no external data file");
    // Encryption.
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 32, 2); })),
                     "disk.qcow2: encrypted images are not supported (encryption method luks)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 32, 1); })),
                     "disk.qcow2: encrypted images are not supported (encryption method aes)");
    ck_assert_msg_eq(reject(mod([](auto &b) { put32(b, 32, 3); })), "disk.qcow2: unsupported encryption method 3");
    // Extensions.
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put32(b, 112, 0x1234);
                         put32(b, 116, 70000);
                     })),
                     "disk.qcow2: header extension 0x00001234 at offset 0x70 is too long (70000 bytes)");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put32(b, 112, qcow2::kExtBackingFormat);
                         put32(b, 116, 16);
                     })),
                     "disk.qcow2: backing format name is too long (16 bytes, at most 15)");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put32(b, 112, qcow2::kExtDataFile);
                         put32(b, 116, 1);
                         put32(b, 128, qcow2::kExtDataFile);
                         put32(b, 132, 1);
                     })),
                     "disk.qcow2: header extension 0x44415441 appears more than once");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put32(b, 112, qcow2::kExtCrypto);
                         put32(b, 116, 16);
                     })),
                     "disk.qcow2: encryption header extension in an image that is not encrypted");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put64(b, 88, qcow2::kAutoclearBitmaps);
                         put32(b, 112, qcow2::kExtBitmaps);
                         put32(b, 116, 24);
                         put32(b, 120, 1);
                         put64(b, 128, 100);
                         put64(b, 136, 0x1000);
                     })),
                     "disk.qcow2: bitmap directory offset 0x1000 is not aligned to the cluster size (65536)");
    // Bitmaps extension without the autoclear bit: stale, ignored.
    accept(mod([](auto &b) {
        put32(b, 112, qcow2::kExtBitmaps);
        put32(b, 116, 24);
    }));
    // Backing file name: too long, outside the first cluster, over the header, NUL.
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put64(b, 8, 0x200);
                         put32(b, 16, 1024);
                     })),
                     "disk.qcow2: backing file name is too long (1024 bytes, at most 1023)");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put64(b, 8, 0xffff0);
                         put32(b, 16, 10);
                     })),
                     "disk.qcow2: backing file name offset 0xffff0 is outside the first cluster");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put64(b, 8, 0xfff0);
                         put32(b, 16, 100);
                     })),
                     "disk.qcow2: backing file name (100 bytes at 0xfff0) crosses the end of the first cluster");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put64(b, 8, 0x10);
                         put32(b, 16, 4);
                     })),
                     "disk.qcow2: backing file name offset 0x10 overlaps the header");
    ck_assert_msg_eq(reject(mod([](auto &b) {
                         put64(b, 8, 0x200);
                         put32(b, 16, 4);
                         b[0x202] = 0;
                     })),
                     "disk.qcow2: backing file name contains a NUL byte");
    // A backing name of exactly 1023 bytes is fine.
    accept(mod([](auto &b) {
        put64(b, 8, 0x200);
        put32(b, 16, 1023);
        std::memset(b.data() + 0x200, 'a', 1023);
    }));
}
END_TEST

// The feature name table names unknown incompatible bits in the message.
START_TEST(test_header_feature_names)
{
    ImageBuilder ib;
    ib.incompat = 1ULL << 9 | 1ULL << 12;
    std::vector<uint8_t> ft(48, 0);
    ft[1] = 9;
    std::memcpy(ft.data() + 2, "fancy new thing", 15);
    ib.ext(qcow2::kExtFeatureTable, ft);
    ib.start();
    auto img = ib.finish();
    ck_assert_msg_eq(reject(img),
                     "disk.qcow2: Unsupported qcow2 feature(s): fancy new thing, Unknown incompatible feature: 1000");

    // Through the graph: the message names the node and the file.
    std::string path = tmp_path("feat.qcow2");
    write_file(path, img);
    Env e;
    ck_assert_msg_eq(e.open_error(qcow2_opts(path)),
                     "blockdev 'q': " + path +
                         ": Unsupported qcow2 feature(s): fancy new thing, Unknown incompatible feature: 1000");
}
END_TEST

START_TEST(test_probe)
{
    auto img = small_image();
    ck_assert_int_eq(qcow2::probe(img.data(), img.size()), 100);
    ck_assert_int_eq(kDriverQcow2.probe(img.data(), 512), 100);
    put32(img, 4, 2);
    ck_assert_int_eq(qcow2::probe(img.data(), 8), 100);
    // Every version from 1 (the open names what it cannot read); 0 is not qcow2.
    put32(img, 4, 1);
    ck_assert_int_eq(qcow2::probe(img.data(), img.size()), 100);
    put32(img, 4, 4);
    ck_assert_int_eq(qcow2::probe(img.data(), img.size()), 100);
    put32(img, 4, 0);
    ck_assert_int_eq(qcow2::probe(img.data(), img.size()), 0);
    put32(img, 4, 3);
    ck_assert_int_eq(qcow2::probe(img.data(), 7), 0);
    img[0] = 'X';
    ck_assert_int_eq(qcow2::probe(img.data(), img.size()), 0);
    ck_assert_ptr_eq(builtin_drivers().find("qcow2"), &kDriverQcow2);
    uint8_t sector[512] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    ck_assert_ptr_eq(builtin_drivers().probe_format(sector, sizeof(sector)), &kDriverQcow2);
}
END_TEST

// ---------------------------------------------------------------- reads

// Normal, zero (plain and allocated), unallocated and compressed (zlib; zstd
// with two frames) clusters, read whole and in random unaligned pieces.
START_TEST(test_read_cluster_types)
{
    for (int ctype = 0; ctype < 2; ctype++) {
        ImageBuilder ib;
        ib.size = (1 << 20) + 3072;   // not a multiple of the cluster size
        ib.compression_type = static_cast<uint8_t>(ctype);
        ib.start();
        const uint64_t cs = ib.cs();
        std::vector<uint8_t> want(ib.size, 0);
        auto put = [&](uint64_t guest, const std::vector<uint8_t> &d) {
            std::memcpy(want.data() + guest, d.data(), std::min<size_t>(d.size(), want.size() - guest));
        };
        put(0, pattern(cs, 1));
        ib.data(0, pattern(cs, 1));
        ib.set_entry(cs, qcow2::kOflagZero);                                      // zero, plain
        uint64_t za = ib.data(2 * cs, pattern(cs, 2));                            // zero, allocated: garbage stays hidden
        ib.set_entry(2 * cs, za | qcow2::kOflagZero | qcow2::kOflagCopied);
        // Cluster 3 unallocated. Clusters 4..6 compressed.
        for (uint64_t c = 4; c <= 6; c++) {
            std::vector<uint8_t> plain = pattern(cs, static_cast<uint8_t>(c));
            std::memset(plain.data() + 1000 * c, 0, 20000);   // compressible
            put(c * cs, plain);
            if (ctype == 0) {
                ib.compressed(c * cs, zlib_compress(plain));
            } else {
                auto a = zstd_compress(plain.data(), cs / 2);
                auto b = zstd_compress(plain.data() + cs / 2, cs / 2);
                a.insert(a.end(), b.begin(), b.end());
                ib.compressed(c * cs, a);
            }
        }
        // The last, partial cluster.
        uint64_t last = (ib.size / cs) * cs;
        put(last, pattern(cs, 9));
        ib.data(last, pattern(cs, 9));
        std::string path = tmp_path("types.qcow2");
        write_file(path, ib.finish());

        Env e;
        Qcow2Node *q = e.open(path);
        ck_assert_int_eq(q->getlength(), static_cast<int64_t>(ib.size));
        auto b = e.backend(q);
        ck_assert(read_all(b.get()) == want);
        std::mt19937 rng(42);
        for (int i = 0; i < 300; i++) {
            uint64_t off = rng() % ib.size;
            uint64_t len = 1 + rng() % std::min<uint64_t>(ib.size - off, 3 * cs);
            std::vector<uint8_t> buf(len);
            ck_assert_int_eq(co_read(b.get(), off, len, buf.data()), 0);
            ck_assert_msg(std::memcmp(buf.data(), want.data() + off, len) == 0, "mismatch at %" PRIu64 "+%" PRIu64,
                          off, len);
        }
        ck_assert_msg_eq(q->corruption_message(), "");
    }
    // A virtual size that is not a multiple of 512 is rounded down (QEMU).
    ImageBuilder ib;
    ib.size = (1 << 20) + 3000;
    ib.start();
    std::string path = tmp_path("odd.qcow2");
    write_file(path, ib.finish());
    Env e;
    ck_assert_int_eq(e.open(path)->getlength(), (1 << 20) + 2560);
}
END_TEST

// Block status, QEMU's flags for each cluster type.
START_TEST(test_block_status)
{
    ImageBuilder ib;
    ib.size = 8 * 65536;
    ib.start();
    uint64_t h0 = ib.data(0, pattern(65536, 1));
    uint64_t h1 = ib.data(65536, pattern(65536, 2));   // contiguous with cluster 0
    ib.set_entry(2 * 65536, qcow2::kOflagZero);
    uint64_t za = ib.data(3 * 65536, {});
    ib.set_entry(3 * 65536, za | qcow2::kOflagZero | qcow2::kOflagCopied);
    ib.compressed(5 * 65536, zlib_compress(std::vector<uint8_t>(65536, 7)));
    ck_assert_uint_eq(h1, h0 + 65536);
    std::string path = tmp_path("bs.qcow2");
    write_file(path, ib.finish());
    Env e;
    Qcow2Node *q = e.open(path);
    struct Want {
        int64_t off, pnum;
        int flags;
        int64_t map;
    };
    const Want wants[] = {
        {0, 2 * 65536, kStatusData | kStatusOffsetValid | kStatusAllocated, static_cast<int64_t>(h0)},
        {100, 2 * 65536 - 100, kStatusData | kStatusOffsetValid | kStatusAllocated, static_cast<int64_t>(h0 + 100)},
        {2 * 65536, 65536, kStatusZero | kStatusAllocated, -1},
        {3 * 65536, 65536, kStatusZero | kStatusOffsetValid | kStatusAllocated, static_cast<int64_t>(za)},
        {4 * 65536, 65536, kStatusZero, -1},   // unallocated, no backing: zeros
        {5 * 65536, 65536, kStatusData | kStatusCompressed | kStatusAllocated, -1},
        {6 * 65536, 2 * 65536, kStatusZero | kStatusEof, -1},
    };
    for (const Want &w : wants) {
        int64_t pnum = 0, map = -1;
        BlockNode *file = nullptr;
        int r = run_in_coroutine(
            [&] { return q->co_block_status(true, w.off, q->getlength() - w.off, &pnum, &map, &file); });
        ck_assert_msg(r == w.flags, "offset %" PRId64 ": flags 0x%x, want 0x%x", w.off, r, w.flags);
        ck_assert_int_eq(pnum, w.pnum);
        if (w.map >= 0) {
            ck_assert_int_eq(map, w.map);
            ck_assert_ptr_eq(file, q->file_child()->node());
        }
    }
}
END_TEST

// Extended L2: 32 subclusters per cluster, each allocated, zero or
// unallocated (reading from the backing file).
START_TEST(test_read_extended_l2)
{
    const uint64_t cs = 65536, sc = cs / 32;
    std::string base = tmp_path("el2-base.raw");
    std::vector<uint8_t> base_data = pattern(4 * cs, 77);
    write_file(base, base_data);

    ImageBuilder ib;
    ib.extended_l2 = true;
    ib.size = 4 * cs;
    ib.backing = "el2-base.raw";
    ib.ext_str(qcow2::kExtBackingFormat, "raw");
    ib.start();
    std::vector<uint8_t> want = base_data;
    // Cluster 0: subclusters 0-3 allocated, 4-5 zero, 6-31 from backing.
    std::vector<uint8_t> d0 = pattern(cs, 5);
    ib.data(0, d0, 0xfULL | (0x30ULL << 32));
    std::memcpy(want.data(), d0.data(), 4 * sc);
    std::memset(want.data() + 4 * sc, 0, 2 * sc);
    // Cluster 1: unallocated, subclusters 10-11 zero.
    ib.set_entry(cs, 0, 0xc00ULL << 32);
    std::memset(want.data() + cs + 10 * sc, 0, 2 * sc);
    // Cluster 2: everything allocated (contiguous with nothing).
    std::vector<uint8_t> d2 = pattern(cs, 6);
    ib.data(2 * cs, d2, qcow2::kL2BitmapAllAlloc);
    std::memcpy(want.data() + 2 * cs, d2.data(), cs);
    // Cluster 3: unallocated everywhere -> backing.
    std::string path = tmp_path("el2.qcow2");
    write_file(path, ib.finish());

    {
        Env e;
        Qcow2Node *q = e.open(path);
        ck_assert_ptr_nonnull(q->backing_child());
        auto b = e.backend(q);
        ck_assert(read_all(b.get()) == want);
        std::mt19937 rng(7);
        for (int i = 0; i < 200; i++) {
            uint64_t off = rng() % ib.size, len = 1 + rng() % std::min<uint64_t>(ib.size - off, cs + 5000);
            std::vector<uint8_t> buf(len);
            ck_assert_int_eq(co_read(b.get(), off, len, buf.data()), 0);
            ck_assert(std::memcmp(buf.data(), want.data() + off, len) == 0);
        }
        // Status: subclusters 6.. of cluster 0 are UNALLOCATED_ALLOC (host
        // offset valid, not allocated here).
        int64_t pnum, map;
        BlockNode *file;
        int r = run_in_coroutine([&] { return q->co_block_status(true, 6 * sc, cs, &pnum, &map, &file); });
        ck_assert_int_eq(r, kStatusOffsetValid);
        ck_assert_int_eq(pnum, 26 * sc);
        r = run_in_coroutine([&] { return q->co_block_status(true, 4 * sc, cs, &pnum, &map, &file); });
        ck_assert_int_eq(r, kStatusZero | kStatusOffsetValid | kStatusAllocated);
        ck_assert_int_eq(pnum, 2 * sc);
    }

    // An entry with a subcluster both allocated and zero is corrupt.
    auto img = read_file(path);
    uint64_t l2 = get64(img, 2 * cs) & qcow2::kL1eOffsetMask;
    put64(img, l2 + 8, 0x1ULL | (0x1ULL << 32));
    write_file(path, img);
    Env e;
    Qcow2Node *q = e.open(path);
    auto b = e.backend(q);
    uint8_t buf[16];
    ck_assert_int_eq(co_read(b.get(), 0, 16, buf), -EIO);
    ck_assert_msg_eq(q->corruption_message(),
                     path + ": invalid extended L2 entry 0x8000000000040000 bitmap 0x0000000100000001 (L2 offset "
                            "0x30000, L2 index 0x0)");
}
END_TEST

// Backing files shorter and longer than the overlay; zeros past the end.
START_TEST(test_read_backing_sizes)
{
    const uint64_t cs = 65536;
    for (uint64_t base_size : {cs + 1000, 10 * cs}) {
        std::string base = tmp_path("short-base.raw");
        std::vector<uint8_t> bd = pattern(base_size, 3);
        write_file(base, bd);
        ImageBuilder ib;
        ib.size = 4 * cs;
        ib.backing = base;   // absolute name
        ib.ext_str(qcow2::kExtBackingFormat, "raw");
        ib.start();
        ib.data(cs, pattern(cs, 4));
        std::string path = tmp_path("over.qcow2");
        write_file(path, ib.finish());
        std::vector<uint8_t> want(ib.size, 0);
        std::memcpy(want.data(), bd.data(), std::min<uint64_t>(base_size, ib.size));
        auto d = pattern(cs, 4);
        std::memcpy(want.data() + cs, d.data(), cs);
        Env e;
        Qcow2Node *q = e.open(path);
        auto b = e.backend(q);
        ck_assert(read_all(b.get()) == want);
        // The implicit backing node: raw over file, read-only.
        BlockNode *bn = q->backing_child()->node();
        ck_assert_str_eq(bn->driver_name(), "raw");
        ck_assert(bn->implicit());
        ck_assert(bn->read_only());
        ck_assert_msg_eq(bn->filename(), base);
    }
}
END_TEST

// A 3-level chain qcow2 -> qcow2 -> raw with relative names (resolved
// against each image's directory), backing: null, and an explicit backing.
START_TEST(test_backing_chain)
{
    const uint64_t cs = 65536;
    ck_assert_int_eq(mkdir(tmp_path("d1").c_str(), 0700), 0);
    ck_assert_int_eq(mkdir(tmp_path("d1/d2").c_str(), 0700), 0);
    write_file(tmp_path("d1/d2/base.raw"), pattern(3 * cs, 1));
    ImageBuilder mid;
    mid.size = 3 * cs;
    mid.backing = "d2/base.raw";
    mid.ext_str(qcow2::kExtBackingFormat, "raw");
    mid.start();
    mid.data(cs, pattern(cs, 2));
    write_file(tmp_path("d1/mid.qcow2"), mid.finish());
    ImageBuilder top;
    top.size = 3 * cs;
    top.backing = "d1/mid.qcow2";
    top.ext_str(qcow2::kExtBackingFormat, "qcow2");
    top.start();
    top.data(2 * cs, pattern(cs, 3));
    std::string path = tmp_path("top.qcow2");
    write_file(path, top.finish());

    std::vector<uint8_t> want = pattern(3 * cs, 1);
    auto d2 = pattern(cs, 2), d3 = pattern(cs, 3);
    std::memcpy(want.data() + cs, d2.data(), cs);
    std::memcpy(want.data() + 2 * cs, d3.data(), cs);
    {
        Env e;
        Qcow2Node *q = e.open(path);
        auto b = e.backend(q);
        ck_assert(read_all(b.get()) == want);
        BlockNode *m = q->backing_child()->node();
        ck_assert_str_eq(m->driver_name(), "qcow2");
        ck_assert_msg_eq(m->filename(), tmp_path("d1/mid.qcow2"));
        BlockNode *r = m->backing_child()->node();
        ck_assert_str_eq(r->driver_name(), "raw");
        ck_assert_msg_eq(r->filename(), tmp_path("d1/d2/base.raw"));
        // The chain is given explicitly to each level: dump_options shows it.
        ck_assert(blockdev_options_to_json(m->options())["backing"].is_object());
        // Block status through the chain: depth of each layer.
        int64_t pnum;
        int depth;
        int ret = run_in_coroutine(
            [&] { return q->co_block_status_above(nullptr, true, 0, 3 * cs, &pnum, nullptr, nullptr, &depth); });
        ck_assert(ret & kStatusData);
        ck_assert_int_eq(depth, 2);
        ck_assert_int_eq(pnum, cs);
    }
    {
        // backing: null reads zeros where the top has nothing.
        Env e;
        BlockdevOptions o = qcow2_opts(path, true, {{"backing", nullptr}});
        Qcow2Node *q = e.add(o);
        ck_assert_ptr_null(q->backing_child());
        auto b = e.backend(q);
        std::vector<uint8_t> w(3 * cs, 0);
        std::memcpy(w.data() + 2 * cs, d3.data(), cs);
        ck_assert(read_all(b.get()) == w);
    }
    {
        // An explicit backing node wins over the header.
        Env e;
        BlockdevOptions f = file_opts(tmp_path("d1/d2/base.raw"));
        f.node_name = "other";
        ck_assert(e.graph.add_node(f).ok());
        BlockdevOptions o = qcow2_opts(path, true, {{"backing", "other"}});
        Qcow2Node *q = e.add(o);
        ck_assert_msg_eq(q->backing_child()->node()->node_name(), "other");
    }
}
END_TEST

// A backing chain that loops is an error, not an endless recursion.
START_TEST(test_backing_loop)
{
    auto make = [](const std::string &name, const std::string &backing) {
        ImageBuilder ib;
        ib.size = 1 << 20;
        ib.backing = backing;
        ib.ext_str(qcow2::kExtBackingFormat, "qcow2");
        ib.start();
        write_file(tmp_path(name), ib.finish());
    };
    make("a.qcow2", "b.qcow2");
    make("b.qcow2", "a.qcow2");
    make("self.qcow2", "self.qcow2");
    Env e;
    std::string a = tmp_path("a.qcow2"), b = tmp_path("b.qcow2");
    ck_assert_msg_eq(e.open_error(qcow2_opts(a)),
                     "blockdev 'q': " + a + ": backing chain loops: " + a + " -> " + b + " -> " + a);
    std::string s = tmp_path("self.qcow2");
    ck_assert_msg_eq(e.open_error(qcow2_opts(s)), "blockdev 'q': " + s + ": backing chain loops: " + s + " -> " + s);
    // A symlink to the same file is the same file.
    ck_assert_int_eq(symlink("a.qcow2", tmp_path("link.qcow2").c_str()), 0);
    make("c.qcow2", "link.qcow2");
    make("a.qcow2", "c.qcow2");
    std::string c = tmp_path("c.qcow2"), l = tmp_path("link.qcow2");
    ck_assert_msg_eq(e.open_error(qcow2_opts(a)), "blockdev 'q': " + a + ": backing chain loops: " + a + " -> " + c + " -> " + l);
    // Unsupported backing formats and names.
    ImageBuilder ib;
    ib.backing = "x.vmdk";
    ib.ext_str(qcow2::kExtBackingFormat, "vmdk");
    ib.start();
    write_file(tmp_path("vmdk.qcow2"), ib.finish());
    ck_assert_msg_eq(e.open_error(qcow2_opts(tmp_path("vmdk.qcow2"))),
                     "blockdev 'q': " + tmp_path("vmdk.qcow2") + ": backing file '" + tmp_path("x.vmdk") +
                         "' has format 'vmdk', which is not a known format");
    // A missing backing file.
    make("orphan.qcow2", "gone.qcow2");
    std::string msg = e.open_error(qcow2_opts(tmp_path("orphan.qcow2")));
    ck_assert_msg(ends_with(msg, "Could not open '" + tmp_path("gone.qcow2") + "': No such file or directory"), "%s",
                  msg.c_str());
}
END_TEST

// Without a backing format extension the backing file is probed (qcow2 or raw).
START_TEST(test_backing_probe)
{
    write_file(tmp_path("pb.raw"), pattern(65536, 8));
    ImageBuilder ib;
    ib.size = 65536;
    ib.backing = "pb.raw";
    ib.start();
    write_file(tmp_path("pr.qcow2"), ib.finish());
    Env e;
    Qcow2Node *q = e.open(tmp_path("pr.qcow2"));
    ck_assert_str_eq(q->backing_child()->node()->driver_name(), "raw");
    auto b = e.backend(q);
    ck_assert(read_all(b.get()) == pattern(65536, 8));
}
END_TEST

// External data file: named by the extension (relative to the image), or
// given as an option; data_file_raw.
START_TEST(test_data_file)
{
    const uint64_t cs = 65536;
    std::vector<uint8_t> data(4 * cs, 0);
    auto d = pattern(cs, 5);
    std::memcpy(data.data() + cs, d.data(), cs);
    std::memcpy(data.data() + 3 * cs, d.data(), cs);   // not mapped: must not be visible
    write_file(tmp_path("ext.data"), data);
    ImageBuilder ib;
    ib.size = 4 * cs;
    ib.incompat = qcow2::kIncompatDataFile;
    ib.ext_str(qcow2::kExtDataFile, "ext.data");
    ib.start();
    ib.set_entry(cs, cs | qcow2::kOflagCopied);
    ib.set_entry(0, qcow2::kOflagCopied);   // host offset 0 is valid with a data file
    std::string path = tmp_path("ext.qcow2");
    auto img = ib.finish();
    write_file(path, img);
    std::vector<uint8_t> want(4 * cs, 0);
    std::memcpy(want.data() + cs, d.data(), cs);
    {
        Env e;
        Qcow2Node *q = e.open(path);
        BdrvChild *df = q->child("data-file");
        ck_assert_ptr_nonnull(df);
        ck_assert_msg_eq(df->node()->filename(), tmp_path("ext.data"));
        auto b = e.backend(q);
        ck_assert(read_all(b.get()) == want);
        int64_t pnum, map;
        BlockNode *file;
        int r = run_in_coroutine([&] { return q->co_block_status(true, cs, cs, &pnum, &map, &file); });
        ck_assert_int_eq(r, kStatusData | kStatusOffsetValid | kStatusAllocated);
        ck_assert_ptr_eq(file, df->node());
        ck_assert_int_eq(map, cs);
    }
    {
        // Given as an option.
        Env e;
        BlockdevOptions o = qcow2_opts(path, true, {{"data-file", file_json(tmp_path("ext.data"))}});
        Qcow2Node *q = e.add(o);
        auto b = e.backend(q);
        ck_assert(read_all(b.get()) == want);
    }
    {
        Env e;
        // Host offset != guest offset with a data file: corrupt.
        put64(img, static_cast<size_t>(get64(img, 2 * cs) & qcow2::kL1eOffsetMask) + 8, 2 * cs | qcow2::kOflagCopied);
        write_file(path, img);
        Qcow2Node *q = e.open(path);
        auto b = e.backend(q);
        uint8_t buf[1];
        ck_assert_int_eq(co_read(b.get(), cs, 1, buf), -EIO);
        ck_assert_msg_eq(q->corruption_message(), path + ": external data file cluster offset 0x20000 does not "
                                                         "match the guest offset 0x10000 (L2 index 0x1)");
        // data-file for an image without one.
        write_file(tmp_path("plain.qcow2"), small_image());
        BlockdevOptions o = qcow2_opts(tmp_path("plain.qcow2"), true,
                                       {{"node-name", "plain"}, {"data-file", file_json(tmp_path("ext.data"))}});
        ck_assert_msg_eq(e.open_error(o), "blockdev 'plain': " + tmp_path("plain.qcow2") +
                                        ": 'data-file' can only be set for images with an external data file");
    }
    {
        // The data file bit without a name.
        ImageBuilder nb;
        nb.incompat = qcow2::kIncompatDataFile;
        nb.start();
        write_file(tmp_path("noname.qcow2"), nb.finish());
        Env e;
        ck_assert_msg_eq(e.open_error(qcow2_opts(tmp_path("noname.qcow2"))),
                         "blockdev 'q': " + tmp_path("noname.qcow2") +
                             ": 'data-file' is required for this image (its header names no data file)");
    }
}
END_TEST

// Internal snapshots: the table is validated, a snapshot opens as a
// read-only view of its own L1 table and virtual size.
START_TEST(test_snapshots)
{
    const uint64_t cs = 65536;
    ImageBuilder ib;
    ib.size = 4 * cs;
    ib.start();
    ib.data(0, pattern(cs, 1));   // active: cluster 0
    // Snapshot "sn1" (id "1"): an L1 of its own mapping cluster 1, virtual size 2 clusters.
    uint64_t sl1 = ib.alloc_cluster();
    uint64_t sl2 = ib.alloc_cluster();
    uint64_t sdata = ib.alloc_cluster();
    auto sd = pattern(cs, 2);
    std::memcpy(ib.img.data() + sdata, sd.data(), cs);
    put64(ib.img, sl1, sl2);
    put64(ib.img, sl2 + 8, sdata);
    // The table: two entries.
    uint64_t table = ib.alloc_cluster();
    auto entry = [&](size_t at, uint64_t l1, uint32_t l1n, const std::string &id, const std::string &name,
                     uint32_t extra, uint64_t disk) {
        put64(ib.img, at, l1);
        put32(ib.img, at + 8, l1n);
        put16(ib.img, at + 12, static_cast<uint16_t>(id.size()));
        put16(ib.img, at + 14, static_cast<uint16_t>(name.size()));
        put32(ib.img, at + 36, extra);
        if (extra >= 16) put64(ib.img, at + 48, disk);
        size_t p = at + 40 + extra;
        std::memcpy(ib.img.data() + p, id.data(), id.size());
        std::memcpy(ib.img.data() + p + id.size(), name.data(), name.size());
        return (p + id.size() + name.size() + 7) & ~size_t(7);
    };
    size_t next = entry(table, sl1, 1, "1", "sn1", 16, 2 * cs);
    entry(next, ib.l1_offset(), 1, "2", "sn2", 0, 0);
    auto img = ib.finish();
    put32(img, 60, 2);
    put64(img, 64, table);
    std::string path = tmp_path("snap.qcow2");
    write_file(path, img);

    Env e;
    Qcow2Node *q = e.open(path);
    ck_assert_uint_eq(q->snapshots().size(), 2);
    ck_assert_msg_eq(q->snapshots()[0].name, "sn1");
    ck_assert_uint_eq(q->snapshots()[0].disk_size, 2 * cs);
    ck_assert_uint_eq(q->snapshots()[1].disk_size, 4 * cs);   // no extra data: the image's size
    ck_assert_ptr_null(q->active_snapshot());
    for (int by_id = 0; by_id < 2; by_id++) {
        BlockdevOptions o = by_id ? qcow2_opts(path, true, {{"node-name", "s1"}, {"snapshot.id", "1"}})
                                  : qcow2_opts(path, true, {{"node-name", "s2"}, {"snapshot", {{"name", "sn1"}}}});
        Qcow2Node *s = e.add(o);
        ck_assert_ptr_nonnull(s->active_snapshot());
        ck_assert_int_eq(s->getlength(), 2 * cs);
        auto b = e.backend(s);
        std::vector<uint8_t> want(2 * cs, 0);
        std::memcpy(want.data() + cs, sd.data(), cs);
        ck_assert(read_all(b.get()) == want);
    }
    BlockdevOptions o = qcow2_opts(path, true, {{"node-name", "s3"}, {"snapshot.name", "nope"}});
    ck_assert_msg_eq(e.open_error(o), "blockdev 's3': " + path + ": no snapshot with name 'nope'");
    o = qcow2_opts(path, true, {{"node-name", "s3"}, {"snapshot.name", "nope"}, {"snapshot.id", "2"}});
    ck_assert_msg_eq(e.open_error(o), "blockdev 's3': " + path + ": no snapshot with id '2' and name 'nope'");
    nlohmann::json rw = qcow2_json(path, false, {{"node-name", "s3"}, {"snapshot.id", "2"}});
    rw["file"]["locking"] = "off";   // the other nodes hold it
    {
        Env e2;   // no read-only users of the file in this graph
        // The decoder refuses it; options made read-write after decoding
        // are refused by open.
        auto r = e2.graph.add_node_json(rw);
        ck_assert(!r.ok());
        ck_assert_msg_eq(r.msg(), "blockdev 's3': snapshot.id and snapshot.name require read-only=on");
        o = qcow2_opts(path, true, {{"node-name", "s3"}, {"snapshot.id", "2"}, {"file", rw["file"]}});
        o.read_only = false;
        o.drv->for_each_child([](const char *key, BlockdevRef &ref) {
            if (std::string(key) == "file") ref.def->read_only = false;
        });
        ck_assert_msg_eq(e2.open_error(o),
                         "blockdev 's3': " + path + ": snapshot.id and snapshot.name require read-only=on");
    }

    // Hostile tables (e2: no node named 'q' yet).
    Env e2;
    auto bad = img;
    put32(bad, table + 36, 2000);
    write_file(path, bad);
    ck_assert_msg_eq(e2.open_error(qcow2_opts(path)),
                     "blockdev 'q': " + path +
                         ": snapshot table entry 0 has too much extra data (2000 bytes, at most 1024)");
    bad = img;
    put64(bad, table, sl1 + 8);
    write_file(path, bad);
    ck_assert_msg_eq(e2.open_error(qcow2_opts(path)),
                     "blockdev 'q': " + path + ": snapshot '1' L1 table offset 0x" +
                         [&] {
                             char b[32];
                             snprintf(b, sizeof(b), "%" PRIx64, sl1 + 8);
                             return std::string(b);
                         }() +
                         " is not aligned to the cluster size (65536)");
    bad = img;
    put16(bad, next + 14, 65535);   // the second name runs past the end of the file
    bad.resize(table + cs);
    write_file(path, bad);
    std::string m = e2.open_error(qcow2_opts(path));
    ck_assert_msg_eq(m, "blockdev 'q': " + path + ": snapshot table entry 1 (id and name) extends beyond the end of the file");
}
END_TEST

// Hostile L2 entries and compressed descriptors fail the read with -EIO and
// a message; the node keeps serving other clusters.
START_TEST(test_read_hostile_entries)
{
    const uint64_t cs = 65536;
    ImageBuilder ib;
    ib.size = 8 * cs;
    ib.start();
    ib.data(0, pattern(cs, 1));
    ib.set_entry(cs, 0x12345 | qcow2::kOflagCopied);                  // unaligned cluster offset
    uint64_t past = 0x3f000000ULL;                                    // compressed, beyond EOF
    ib.set_entry(2 * cs, past | (3ULL << 54) | qcow2::kOflagCompressed);
    ib.compressed(3 * cs, std::vector<uint8_t>(3000, 0xaa));          // garbage stream
    ib.set_entry(4 * cs, 100 | (1ULL << 54) | qcow2::kOflagCompressed);   // compressed inside the header
    auto img = ib.finish();
    // A compressed cluster whose sectors run past the end of the file: the
    // part inside the file is read (as QEMU does), and is no stream.
    uint64_t file_len = img.size();
    uint64_t tail = file_len - 600;
    uint64_t l2 = get64(img, 2 * cs) & qcow2::kL1eOffsetMask;
    put64(img, l2 + 5 * 8, tail | (2ULL << 54) | qcow2::kOflagCompressed);
    std::string path = tmp_path("hostile.qcow2");
    write_file(path, img);

    Env e;
    Qcow2Node *q = e.open(path);
    auto b = e.backend(q);
    std::vector<uint8_t> buf(cs);
    auto expect_eio = [&](uint64_t guest, const std::string &msg) {
        ck_assert_int_eq(co_read(b.get(), guest, 512, buf.data()), -EIO);
        ck_assert_msg_eq(q->corruption_message(), msg);
    };
    expect_eio(cs, path + ": cluster offset 0x12200 is not aligned to the cluster size (L2 offset 0x30000, L2 index 0x1)");
    // Only the first corruption is kept; the others are checked one node each.
    ck_assert_int_eq(co_read(b.get(), 0, cs, buf.data()), 0);
    ck_assert(buf == pattern(cs, 1));
    ck_assert_int_eq(co_read(b.get(), 2 * cs, 512, buf.data()), -EIO);
    ck_assert_int_eq(co_read(b.get(), 3 * cs, 512, buf.data()), -EIO);
    ck_assert_int_eq(co_read(b.get(), 4 * cs, 512, buf.data()), -EIO);
    ck_assert_int_eq(co_read(b.get(), 5 * cs, 512, buf.data()), -EIO);
    char want[256];
    for (int i = 2; i <= 5; i++) {
        Env e2;
        Qcow2Node *q2 = e2.open(path);
        auto b2 = e2.backend(q2);
        ck_assert_int_eq(co_read(b2.get(), i * cs, 512, buf.data()), -EIO);
        switch (i) {
        case 2:
            snprintf(want, sizeof(want),
                     "compressed cluster at host offset 0x3f000000 (2048 bytes) is outside the file (guest offset "
                     "0x20000)");
            break;
        case 3:
            snprintf(want, sizeof(want),
                     "compressed cluster at host offset 0x%" PRIx64 " (guest offset 0x30000) cannot be decompressed",
                     get64(img, l2 + 3 * 8) & ((uint64_t{1} << 54) - 1));
            break;
        case 4:
            snprintf(want, sizeof(want),
                     "compressed cluster at host offset 0x64 (924 bytes) is outside the file (guest offset 0x40000)");
            break;
        case 5:
            snprintf(want, sizeof(want),
                     "compressed cluster at host offset 0x%" PRIx64 " (guest offset 0x50000) cannot be decompressed",
                     tail);
            break;
        }
        ck_assert_msg_eq(q2->corruption_message(), path + ": " + want);
    }

    // L2 table offsets: unaligned, beyond the end of the file.
    for (uint64_t l2off : {0x30200ULL, 0x7000000ULL}) {
        auto bad = img;
        put64(bad, 2 * cs, l2off);
        write_file(path, bad);
        Env e3;
        Qcow2Node *q3 = e3.open(path);
        auto b3 = e3.backend(q3);
        ck_assert_int_eq(co_read(b3.get(), 0, 512, buf.data()), -EIO);
        snprintf(want, sizeof(want),
                 l2off & (cs - 1) ? "L2 table offset 0x%" PRIx64 " is not aligned to the cluster size (L1 index 0x0)"
                               : "L2 table offset 0x%" PRIx64 " (L1 index 0x0) is beyond the end of the file",
                 l2off);
        ck_assert_msg_eq(q3->corruption_message(), path + ": " + want);
        int64_t pnum, map;
        BlockNode *file;
        ck_assert_int_eq(run_in_coroutine([&] { return q3->co_block_status(true, 0, cs, &pnum, &map, &file); }), -EIO);
    }
}
END_TEST

// ---------------------------------------------------------------- cache and parallelism

// Clusters contiguous on the host are read with one request; random reads
// over an image with many L2 tables reread no metadata once cached.
START_TEST(test_cache_and_merging)
{
    const uint64_t cs = 4096;   // one L2 table maps 2 MiB
    ImageBuilder ib;
    ib.cluster_bits = 12;
    ib.size = 512ULL << 20;
    ib.l1_clusters = 1;
    ib.start();
    std::vector<uint64_t> guests;
    for (uint64_t t = 0; t < 200; t++) {
        uint64_t g = t * (2 << 20) + (t % 7) * cs;
        for (int k = 0; k < 4; k++) ib.data(g + k * cs, pattern(cs, static_cast<uint8_t>(t + k), g + k * cs));
        guests.push_back(g);
    }
    std::string path = tmp_path("many.qcow2");
    write_file(path, ib.finish());

    Env e;
    Qcow2Node *q = e.open(path);
    ck_assert_uint_eq(q->l2_cache().slice_size(), cs);
    ck_assert_uint_eq(q->l2_cache().max_entries(), 256);   // whole image: 256 L2 tables
    BlockNode *file = q->file_child()->node();
    auto b = e.backend(q);
    std::vector<uint8_t> buf(4 * cs);
    // One read of 4 contiguous clusters = one metadata read + one data read.
    uint64_t before = file->requests_served();
    ck_assert_int_eq(co_read(b.get(), guests[0], 4 * cs, buf.data()), 0);
    ck_assert_uint_eq(file->requests_served() - before, 2);
    before = file->requests_served();
    ck_assert_int_eq(co_read(b.get(), guests[0], 4 * cs, buf.data()), 0);
    ck_assert_uint_eq(file->requests_served() - before, 1);
    for (int k = 0; k < 4; k++) ck_assert(std::memcmp(buf.data() + k * cs, pattern(cs, k, guests[0] + k * cs).data(), cs) == 0);

    for (uint64_t g : guests) ck_assert_int_eq(co_read(b.get(), g, 1, buf.data()), 0);   // every L2 table once
    std::mt19937 rng(1);
    for (int pass = 0; pass < 2; pass++) {
        uint64_t misses = q->l2_cache().misses();
        before = file->requests_served();
        for (int i = 0; i < 1000; i++) {
            size_t t = rng() % guests.size();
            uint64_t off = guests[t] + rng() % (3 * cs);
            ck_assert_int_eq(co_read(b.get(), off, cs, buf.data()), 0);
            std::vector<uint8_t> want;
            for (int k = 0; k < 4; k++) {
                auto p = pattern(cs, static_cast<uint8_t>(t + k), guests[t] + k * cs);
                want.insert(want.end(), p.begin(), p.end());
            }
            ck_assert(std::memcmp(buf.data(), want.data() + (off - guests[t]), cs) == 0);
        }
        if (pass == 1) {
            ck_assert_uint_eq(q->l2_cache().misses(), misses);            // no metadata reread
            ck_assert_uint_le(file->requests_served() - before, 2000);    // data only (<= 2 runs per read)
        }
    }
}
END_TEST

// Small caches (evictions) and L2 slices smaller than a cluster read the
// same bytes; cache options are validated.
START_TEST(test_cache_options)
{
    const uint64_t cs = 65536;
    ImageBuilder ib;
    ib.size = 64ULL << 30;   // 128 L2 tables
    ib.start();
    std::vector<uint64_t> guests;
    for (uint64_t t = 0; t < 40; t++) {
        uint64_t g = t * (512ULL << 20) * 3 + t * cs * 17;
        ib.data(g, pattern(cs, static_cast<uint8_t>(t)));
        guests.push_back(g);
    }
    std::string path = tmp_path("cache.qcow2");
    write_file(path, ib.finish());

    struct Case {
        std::optional<uint64_t> cache_size, l2_size, entry_size, rc_size;
        size_t want_entries, want_slice;
    };
    const Case cases[] = {
        {{}, {}, {}, {}, 128, cs},                           // covers 64 GiB: 8 MiB of L2 = 128 tables
        {{}, {2 * cs}, {}, {}, 2, cs},
        {{}, {1}, {}, {}, 2, cs},                            // at least 2 entries
        {{}, {4 * cs}, {4096}, {}, 64, 4096},
        {{3 * cs + 4 * cs}, {}, {}, {}, 3, cs},              // cache-size: refcounts get 4 clusters first
        {{100 * cs}, {}, {}, {}, 96, cs},                    // refcounts 4 clusters, L2 the rest
        {{200 * cs}, {}, {}, {}, 128, cs},                   // L2 gets what covers the image
        {{10 * cs}, {}, {}, {2 * cs}, 8, cs},
    };
    for (const Case &c : cases) {
        Env e;
        nlohmann::json x = nlohmann::json::object();
        if (c.cache_size) x["cache-size"] = *c.cache_size;
        if (c.l2_size) x["l2-cache-size"] = *c.l2_size;
        if (c.entry_size) x["l2-cache-entry-size"] = *c.entry_size;
        if (c.rc_size) x["refcount-cache-size"] = *c.rc_size;
        BlockdevOptions o = qcow2_opts(path, true, x);
        Qcow2Node *q = e.add(o);
        ck_assert_uint_eq(q->l2_cache().max_entries(), c.want_entries);
        ck_assert_uint_eq(q->l2_cache().slice_size(), c.want_slice);
        auto b = e.backend(q);
        std::vector<uint8_t> buf(cs);
        std::mt19937 rng(3);
        for (int i = 0; i < 200; i++) {
            size_t t = rng() % guests.size();
            ck_assert_int_eq(co_read(b.get(), guests[t], cs, buf.data()), 0);
            ck_assert(buf == pattern(cs, static_cast<uint8_t>(t)));
        }
    }
    Env e;
    BlockdevOptions o = qcow2_opts(path, true, {{"l2-cache-entry-size", 2 * cs}});
    ck_assert_msg_eq(e.open_error(o), "blockdev 'q': " + path +
                                    ": L2 cache entry size must be a power of two between 512 and the cluster size "
                                    "(65536)");
}
END_TEST

// Requests run in parallel: data reads happen outside the metadata lock.
// The image is in a test-mem node that holds every read until released: all
// 8 reads must be waiting there at once.
START_TEST(test_parallel_requests)
{
    const uint64_t cs = 65536;
    ImageBuilder ib;
    ib.size = 16 * cs;
    ib.start();
    for (uint64_t c = 0; c < 16; c += 2) ib.data(c * cs, pattern(cs, static_cast<uint8_t>(c)));
    Env e(&test_registry());
    auto m = e.graph.add_node(must_parse("test-mem,node-name=mem,read-only=on,size=0"));
    ck_assert(m.ok());
    TestNode *mem = TestNode::from(m.value());
    mem->data = ib.finish();
    ck_assert_int_eq(mem->refresh_length(), 0);
    Qcow2Node *node = e.add(must_parse("qcow2,node-name=q,read-only=on,file=mem"));
    auto b = e.backend(node);
    // Warm the cache, then 8 concurrent reads of different clusters.
    std::vector<uint8_t> tmp(1);
    ck_assert_int_eq(co_read(b.get(), 0, 1, tmp.data()), 0);
    mem->hold(TestMatch{test_op_bit(TestOp::kRead)});
    int done = 0, ok = 0;
    std::vector<std::vector<uint8_t>> bufs(8, std::vector<uint8_t>(cs));
    for (int i = 0; i < 8; i++) {
        Coroutine *co = coroutine_create_fn([&, i] {
            int r = b->co_pread(static_cast<int64_t>(2 * i * cs), cs, bufs[i].data());
            ok += r == 0 && bufs[i] == pattern(cs, static_cast<uint8_t>(2 * i));
            done++;
        });
        e.ctx->co_enter(co);
    }
    for (int i = 0; i < 1000 && mem->held() < 8; i++) e.ctx->iterate(false);
    ck_assert_int_eq(mem->held(), 8);
    ck_assert_int_eq(done, 0);
    mem->release();
    while (done < 8) e.ctx->iterate(true);
    ck_assert_int_eq(ok, 8);
}
END_TEST

// ---------------------------------------------------------------- refcounts, writable opens

// co_get_refcount reads every refcount width (1..64 bits).
START_TEST(test_refcounts)
{
    for (uint32_t order = 0; order <= 6; order++) {
        ImageBuilder ib;
        ib.cluster_bits = 9;
        ib.refcount_order = order;
        ib.size = 1 << 20;
        ib.start();
        for (int i = 0; i < 20; i++) ib.data(static_cast<uint64_t>(i) * 4096, pattern(512, static_cast<uint8_t>(i)));
        // Some refcounts > 1 (as after a snapshot), within the width.
        const uint64_t maxv = order == 6 ? UINT64_MAX : (1ULL << (1u << order)) - 1;
        ib.refs[5] = static_cast<int>(std::min<uint64_t>(maxv, 3));
        auto img = ib.finish();
        const size_t nclusters = img.size() / 512;
        std::string path = tmp_path("rc.qcow2");
        write_file(path, img);
        Env e;
        Qcow2Node *q = e.open(path);
        for (uint64_t c = 0; c < nclusters + 10; c++) {
            uint64_t rc = 99;
            ck_assert_int_eq(run_in_coroutine([&] { return q->co_get_refcount(c, &rc); }), 0);
            uint64_t want = c < nclusters ? (c == 5 ? std::min<uint64_t>(maxv, 3) : 1) : 0;
            ck_assert_msg(rc == want, "order %u cluster %" PRIu64 ": %" PRIu64 " want %" PRIu64, order, c, rc, want);
        }
    }
}
END_TEST

// A writable open of a dirty image (lazy refcounts, not closed cleanly)
// repairs it: refcounts rebuilt, dirty bit cleared; unknown autoclear bits
// are cleared (we do not maintain them); writes work. The corrupt bit
// refuses writable opens only.
START_TEST(test_writable_open_untouched)
{
    ImageBuilder ib;
    ib.incompat = qcow2::kIncompatDirty;
    ib.compat = qcow2::kCompatLazyRefcounts;
    ib.autoclear = 1ULL << 30;
    ib.start();
    ib.data(0, pattern(65536, 1));
    auto img = ib.finish();
    std::string path = tmp_path("rw.qcow2");
    write_file(path, img);
    {
        Env e;
        Qcow2Node *q = e.add(qcow2_opts(path, false));
        ck_assert(!q->read_only());
        auto bk = BlockBackend::create(q, kPermConsistentRead | kPermWrite, kPermAll, "test");
        ck_assert(bk.ok());
        auto &b = bk.value();
        std::vector<uint8_t> buf(65536);
        ck_assert_int_eq(co_read(b.get(), 0, 65536, buf.data()), 0);
        ck_assert(buf == pattern(65536, 1));
        ck_assert(!(q->header().incompatible_features & qcow2::kIncompatDirty));
        ck_assert_int_eq(q->header().autoclear_features, 0);
        std::vector<uint8_t> w = pattern(512, 7);
        ck_assert_int_eq(run_in_coroutine([&] { return b->co_pwrite(0, 512, w.data()); }), 0);
        ck_assert_int_eq(run_in_coroutine([&] { return b->co_flush(); }), 0);
        ck_assert_int_eq(co_read(b.get(), 0, 512, buf.data()), 0);
        ck_assert(std::equal(w.begin(), w.end(), buf.begin()));
    }
    img = read_file(path);
    ck_assert_int_eq(get64(img, 72) & qcow2::kIncompatDirty, 0);
    ck_assert_int_eq(get64(img, 88), 0);

    put64(img, 72, qcow2::kIncompatCorrupt);
    write_file(path, img);
    Env e;
    ck_assert_msg_eq(e.open_error(qcow2_opts(path, false)), "blockdev 'q': " + path + ": image is corrupt; open it read-only");
    Qcow2Node *q = e.open(path);
    auto b = e.backend(q);
    std::vector<uint8_t> buf(100);
    ck_assert_int_eq(co_read(b.get(), 10, 100, buf.data()), 0);
}
END_TEST

// Open errors from a file carry the node and file names.
START_TEST(test_open_errors)
{
    std::string path = tmp_path("short.qcow2");
    auto img = small_image();
    put64(img, 40, 0x100000);
    write_file(path, img);
    Env e;
    ck_assert_msg_eq(e.open_error(qcow2_opts(path)),
                     "blockdev 'q': " + path + ": L1 table offset 0x100000 is beyond the end of the file");
    write_file(path, std::vector<uint8_t>(100, 0));
    ck_assert_msg_eq(e.open_error(qcow2_opts(path)), "blockdev 'q': " + path + ": Image is not in qcow2 format");
    write_file(path, {});
    ck_assert_msg_eq(e.open_error(qcow2_opts(path)), "blockdev 'q': " + path + ": Image is not in qcow2 format");
    // A 2 MiB-cluster header in a file shorter than a cluster.
    ImageBuilder ib;
    ib.cluster_bits = 21;
    ib.start();
    img = ib.finish();
    img.resize(5000);
    write_file(path, img);
    ck_assert_msg_eq(e.open_error(qcow2_opts(path)),
                     "blockdev 'q': " + path + ": L1 table offset 0x400000 is beyond the end of the file");
}
END_TEST

Suite *qcow2_suite()
{
    Suite *s = suite_create("qcow2");
    TCase *tc = tcase_create("qcow2");
    tcase_set_timeout(tc, 120);
    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_header_valid);
    tcase_add_test(tc, test_header_hostile);
    tcase_add_test(tc, test_header_feature_names);
    tcase_add_test(tc, test_probe);
    tcase_add_test(tc, test_read_cluster_types);
    tcase_add_test(tc, test_block_status);
    tcase_add_test(tc, test_read_extended_l2);
    tcase_add_test(tc, test_read_backing_sizes);
    tcase_add_test(tc, test_backing_chain);
    tcase_add_test(tc, test_backing_loop);
    tcase_add_test(tc, test_backing_probe);
    tcase_add_test(tc, test_data_file);
    tcase_add_test(tc, test_snapshots);
    tcase_add_test(tc, test_read_hostile_entries);
    tcase_add_test(tc, test_cache_and_merging);
    tcase_add_test(tc, test_cache_options);
    tcase_add_test(tc, test_parallel_requests);
    tcase_add_test(tc, test_refcounts);
    tcase_add_test(tc, test_writable_open_untouched);
    tcase_add_test(tc, test_open_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(qcow2_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

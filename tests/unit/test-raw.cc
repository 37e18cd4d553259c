// Unit tests for block/raw-format.cc (the raw format: filter and window
// modes, validation, block status, probed-raw protection), block/filter.cc
// and block/drivers.cc (the registry).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "block/block-driver.h"
#include "block/raw-format.h"
#include "qapi/option-reader.h"
#include "util/aio.h"

#include "tests/unit/testdrv.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

#include "tests/unit/tmpdir.h"

namespace bg {
extern const BlockDriver kDriverFile, kDriverRaw, kDriverNullCo, kDriverNullAio, kDriverBlkdebug;
}

using namespace bg;
using namespace bgtest;

namespace {

uint8_t pattern_byte(int64_t i) { return static_cast<uint8_t>((i * 7 + i / 251) % 253 + 1); }

// Creates path with size bytes of the pattern ([0, data) only; the rest is a hole).
void make_file(const std::string &path, int64_t size, int64_t data = -1)
{
    if (data < 0) data = size;
    int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0600);
    ck_assert_int_ge(fd, 0);
    std::vector<uint8_t> buf(data);
    for (int64_t i = 0; i < data; i++) buf[i] = pattern_byte(i);
    ck_assert_int_eq(pwrite(fd, buf.data(), buf.size(), 0), data);
    ck_assert_int_eq(ftruncate(fd, size), 0);
    close(fd);
}

std::vector<uint8_t> file_bytes(const std::string &path, int64_t off, int64_t len)
{
    std::vector<uint8_t> buf(len);
    int fd = open(path.c_str(), O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, buf.data(), len, off), len);
    close(fd);
    return buf;
}

int64_t file_size(const std::string &path)
{
    struct stat st;
    ck_assert_int_eq(stat(path.c_str(), &st), 0);
    return st.st_size;
}

BlockdevOptions file_opts(const std::string &path, const std::string &name = "")
{
    nlohmann::json j = {{"driver", "file"}, {"filename", path}};
    if (!name.empty()) j["node-name"] = name;
    return must_parse_json(j, builtin_drivers());
}

BlockdevRef name_ref(const std::string &name) { return ref_to(name); }

// raw's options as JSON (decoded by the caller: some are invalid).
nlohmann::json raw_json(const BlockdevRef &file, std::optional<uint64_t> offset = {},
                        std::optional<uint64_t> size = {}, const std::string &name = "raw0")
{
    nlohmann::json j = {{"driver", "raw"}, {"node-name", name}};
    put_ref(j, "file", file);
    if (offset) j["offset"] = *offset;
    if (size) j["size"] = *size;
    return j;
}

BlockdevOptions raw_opts(const BlockdevRef &file, std::optional<uint64_t> offset = {},
                         std::optional<uint64_t> size = {}, const std::string &name = "raw0")
{
    return must_parse_json(raw_json(file, offset, size, name), builtin_drivers());
}

constexpr BlockPerm kRW = kPermConsistentRead | kPermWrite;

struct Env {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph;
    explicit Env(const DriverRegistry *reg = nullptr) : graph(reg) {}
    ~Env() { graph.close_all(); }

    BlockNode *add(const BlockdevOptions &o)
    {
        auto r = graph.add_node(o);
        ck_assert_msg(r.ok(), "add_node: %s", r.ok() ? "" : r.msg().c_str());
        return r.value();
    }
    std::unique_ptr<BlockBackend> backend(BlockNode *n, BlockPerm perm = kRW)
    {
        auto b = BlockBackend::create(n, perm, kPermAll, "test");
        ck_assert_msg(b.ok(), "backend: %s", b.ok() ? "" : b.msg().c_str());
        return std::move(b.value());
    }
};

int co_read(BlockBackend *b, int64_t off, int64_t len, void *buf)
{
    return run_in_coroutine([&] { return b->co_pread(off, len, buf); });
}

int co_write(BlockBackend *b, int64_t off, int64_t len, const void *buf)
{
    return run_in_coroutine([&] { return b->co_pwrite(off, len, buf); });
}

bool ends_with(const std::string &s, const std::string &suffix)
{
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A format that recognises "FAKE" at byte 0 (test-only).
int fake_probe(const uint8_t *buf, size_t len) { return len >= 4 && memcmp(buf, "FAKE", 4) == 0 ? 100 : 0; }

// Its nodes are raw nodes, so it takes raw's options.
Result<std::unique_ptr<DriverOptions>> decode_fake_options(OptionReader &r, const BlockdevOptions &generic)
{
    return kDriverRaw.decode_options(r, generic);
}

// A second format with a probe, which test-mem (a protocol) cannot play.
const BlockDriver kDriverFakeFmt = {
    "fakefmt", BlockDriverKind::kFormat, 0, "test: recognises FAKE", decode_fake_options,
    []() -> std::unique_ptr<BlockNode> { return std::make_unique<RawFormatNode>(); }, fake_probe,
};

} // namespace

// ---------------------------------------------------------------- filter mode

START_TEST(test_raw_filter)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    Env e;
    BlockNode *raw = e.add(raw_opts(inline_ref(file_opts(path))));
    ck_assert_str_eq(raw->driver_name(), "raw");
    ck_assert_int_eq(raw->getlength(), 1 << 20);
    BdrvChild *c = raw->file_child();
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(c->name().c_str(), "file");
    ck_assert_int_eq(c->role(), kRoleFiltered | kRolePrimary);
    ck_assert_ptr_eq(raw->filtered_child(), c);
    ck_assert(raw->filename() == c->node()->filename());

    auto b = e.backend(raw);
    std::vector<uint8_t> buf(100000);
    ck_assert_int_eq(co_read(b.get(), 12345, buf.size(), buf.data()), 0);
    for (size_t i = 0; i < buf.size(); i++) ck_assert_int_eq(buf[i], pattern_byte(12345 + i));

    std::vector<uint8_t> w(3000, 0x42);
    ck_assert_int_eq(co_write(b.get(), 777, w.size(), w.data()), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_flush(); }), 0);
    auto on_disk = file_bytes(path, 777, 3000);
    ck_assert(on_disk == w);
    ck_assert_int_eq(file_bytes(path, 776, 1)[0], pattern_byte(776));
    ck_assert_int_eq(file_bytes(path, 3777, 1)[0], pattern_byte(3777));
}
END_TEST

// offset = 0 given explicitly still makes a filter (QEMU).
START_TEST(test_raw_offset_zero_is_filter)
{
    std::string path = tmp_path("img");
    make_file(path, 65536);
    Env e;
    BlockNode *raw = e.add(raw_opts(inline_ref(file_opts(path)), 0));
    ck_assert_int_eq(raw->file_child()->role(), kRoleFiltered | kRolePrimary);
    ck_assert_ptr_nonnull(raw->filtered_child());
}
END_TEST

// ---------------------------------------------------------------- window mode

START_TEST(test_raw_window)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    Env e;
    e.add(file_opts(path, "f0"));
    BlockNode *raw = e.add(raw_opts(name_ref("f0"), 65536, 131072));
    ck_assert_int_eq(raw->getlength(), 131072);
    ck_assert_int_eq(raw->file_child()->role(), kRoleData | kRolePrimary);
    ck_assert_ptr_null(raw->filtered_child());
    ck_assert_int_eq(static_cast<RawFormatNode *>(raw)->window_offset(), 65536);

    auto b = e.backend(raw);
    std::vector<uint8_t> buf(131072);
    ck_assert_int_eq(co_read(b.get(), 0, buf.size(), buf.data()), 0);
    for (size_t i = 0; i < buf.size(); i++) ck_assert_int_eq(buf[i], pattern_byte(65536 + i));

    // Writes land at offset + 65536 in the file; nothing outside moves.
    std::vector<uint8_t> w(10000);
    for (size_t i = 0; i < w.size(); i++) w[i] = static_cast<uint8_t>(i ^ 0x5a);
    ck_assert_int_eq(co_write(b.get(), 131072 - 10000, w.size(), w.data()), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_flush(); }), 0);
    ck_assert(file_bytes(path, 65536 + 131072 - 10000, 10000) == w);
    ck_assert_int_eq(file_bytes(path, 65536 + 131072, 1)[0], pattern_byte(65536 + 131072));
    ck_assert_int_eq(file_size(path), 1 << 20);

    // Write zeroes and discard are translated too.
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_pwrite_zeroes(0, 4096, 0); }), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_flush(); }), 0);
    auto z = file_bytes(path, 65536, 4097);
    for (int i = 0; i < 4096; i++) ck_assert_int_eq(z[i], 0);
    ck_assert_int_eq(z[4096], pattern_byte(65536 + 4096));
    ck_assert_int_eq(file_bytes(path, 65535, 1)[0], pattern_byte(65535));
}
END_TEST

// An offset without size: the window runs to the end of the file.
START_TEST(test_raw_offset_only)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    Env e;
    BlockNode *raw = e.add(raw_opts(inline_ref(file_opts(path)), 1000));
    ck_assert_int_eq(raw->getlength(), (1 << 20) - 1000);
    ck_assert_int_eq(raw->file_child()->role(), kRoleData | kRolePrimary);
    auto b = e.backend(raw, kRW | kPermResize);
    uint8_t buf[600];
    ck_assert_int_eq(co_read(b.get(), (1 << 20) - 1600, sizeof(buf), buf), 0);
    for (size_t i = 0; i < sizeof(buf); i++) ck_assert_int_eq(buf[i], pattern_byte((1 << 20) - 600 + i));
    // Truncate resizes the file to offset + length (QEMU).
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_truncate(2 << 20, true, PreallocMode::kOff); }), 0);
    ck_assert_int_eq(file_size(path), (2 << 20) + 1000);
    ck_assert_int_eq(raw->getlength(), 2 << 20);
}
END_TEST

START_TEST(test_raw_truncate)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    Env e;
    BlockNode *raw = e.add(raw_opts(inline_ref(file_opts(path))));
    auto b = e.backend(raw, kRW | kPermResize);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_truncate(3 << 20, true, PreallocMode::kOff); }), 0);
    ck_assert_int_eq(file_size(path), 3 << 20);
    ck_assert_int_eq(b->getlength(), 3 << 20);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_truncate(65536, true, PreallocMode::kOff); }), 0);
    ck_assert_int_eq(file_size(path), 65536);
    ck_assert_int_eq(raw->getlength(), 65536);

    std::string path2 = tmp_path("img2");
    make_file(path2, 1 << 20);
    BlockNode *win = e.add(raw_opts(inline_ref(file_opts(path2)), 512, 4096, "raw1"));
    auto b2 = e.backend(win, kRW | kPermResize);
    ck_assert_int_eq(run_in_coroutine([&] { return b2->co_truncate(8192, true, PreallocMode::kOff); }), -ENOTSUP);
    ck_assert_int_eq(file_size(path2), 1 << 20);
    ck_assert_int_eq(win->getlength(), 4096);
}
END_TEST

// iotest 171: outside a sized window, writes fail with ENOSPC and reads
// with EINVAL, and nothing outside the window is touched.
START_TEST(test_raw_out_of_window)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    Env e(&bg::test_registry());
    e.add(raw_opts(inline_ref(file_opts(path)), 4096, 8192, "win"));
    // A pass-through test-mem node claiming to be 1 MiB longer than the
    // window, so that requests beyond its end reach raw itself (BlockBackend
    // would refuse them with -EIO first).
    BlockNode *top = e.add(must_parse("test-mem,node-name=top,file=win,size=" + std::to_string(8192 + (1 << 20))));
    ck_assert_int_eq(top->getlength(), 8192 + (1 << 20));
    auto b = e.backend(top);

    std::vector<uint8_t> buf(4096, 0xee);
    ck_assert_int_eq(co_read(b.get(), 0, 4096, buf.data()), 0);
    ck_assert_int_eq(co_read(b.get(), 8192 - 512, 1024, buf.data()), -EINVAL);
    ck_assert_int_eq(co_read(b.get(), 8192, 512, buf.data()), -EINVAL);
    ck_assert_int_eq(co_read(b.get(), 65536, 512, buf.data()), -EINVAL);
    ck_assert_int_eq(co_write(b.get(), 8192 - 512, 1024, buf.data()), -ENOSPC);
    ck_assert_int_eq(co_write(b.get(), 8192, 512, buf.data()), -ENOSPC);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_pwrite_zeroes(8192, 512, 0); }), -ENOSPC);
    ck_assert_int_eq(co_write(b.get(), 8192 - 512, 512, buf.data()), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_flush(); }), 0);
    auto after = file_bytes(path, 4096 + 8192, 4096);
    for (int i = 0; i < 4096; i++) ck_assert_int_eq(after[i], pattern_byte(4096 + 8192 + i));
}
END_TEST

// ---------------------------------------------------------------- validation

static void expect_open_error(Env &e, const nlohmann::json &o, const std::string &msg)
{
    auto r = e.graph.add_node_json(o);
    ck_assert(!r.ok());
    ck_assert_int_eq(r.err(), EINVAL);
    ck_assert_msg(ends_with(r.msg(), msg), "got '%s', want '...%s'", r.msg().c_str(), msg.c_str());
    // Nothing stays open, inline children included.
    ck_assert_int_eq(e.graph.nodes().size(), 0);
}

START_TEST(test_raw_validation)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    Env e;
    BlockdevRef f = inline_ref(file_opts(path));
    expect_open_error(e, raw_json(f, 2 << 20),
                      "Offset (2097152) cannot be greater than size of the containing file (1048576)");
    expect_open_error(e, raw_json(f, 512, 1 << 20),
                      "The sum of offset (512) and size (1048576) has to be smaller or equal to the  actual "
                      "size of the containing file (1048576)");
    expect_open_error(e, raw_json(f, 0, 1000), "Specified size is not multiple of 512");
    expect_open_error(e, raw_json(f, {}, 4097), "Specified size is not multiple of 512");
    expect_open_error(e, raw_json(BlockdevRef{}), "missing required key 'file'");
    // Edges: offset == length, offset + size == length.
    BlockNode *n = e.add(raw_opts(f, 1 << 20));
    ck_assert_int_eq(n->getlength(), 0);
    BlockNode *m = e.add(raw_opts(f, 512, (1 << 20) - 512, "raw1"));
    ck_assert_int_eq(m->getlength(), (1 << 20) - 512);
}
END_TEST

// ---------------------------------------------------------------- block status

START_TEST(test_raw_block_status)
{
    // Data in [0, 64K), a hole after it.
    std::string path = tmp_path("img");
    make_file(path, 1 << 20, 65536);
    Env e;
    BlockNode *file = e.add(file_opts(path, "f0"));
    BlockNode *raw = e.add(raw_opts(name_ref("f0"), 32768, 524288));
    auto b = e.backend(raw);
    int64_t pnum = 0, map = -1;
    BlockNode *where = nullptr;
    int r = run_in_coroutine([&] { return b->co_block_status(true, 0, 524288, &pnum, &map, &where); });
    ck_assert_int_ge(r, 0);
    ck_assert(r & kStatusOffsetValid);
    ck_assert(r & kStatusData);
    ck_assert(!(r & kStatusRaw));
    ck_assert_ptr_eq(where, file);
    ck_assert_int_eq(map, 32768);
    ck_assert_int_gt(pnum, 0);
    ck_assert_int_le(pnum, 32768);

    r = run_in_coroutine([&] { return b->co_block_status(true, 65536, 65536, &pnum, &map, &where); });
    ck_assert_int_ge(r, 0);
    ck_assert(r & kStatusOffsetValid);
    ck_assert(r & kStatusZero);
    ck_assert_ptr_eq(where, file);
    ck_assert_int_eq(map, 65536 + 32768);
    ck_assert_int_eq(pnum, 65536);
}
END_TEST

// ---------------------------------------------------------------- probing

START_TEST(test_raw_probe_helpers)
{
    uint8_t buf[512] = {};
    ck_assert_int_eq(raw_probe(buf, sizeof(buf)), 1);
    ck_assert_ptr_eq(builtin_drivers().probe_format(buf, sizeof(buf)), &kDriverRaw);
    ck_assert(kDriverRaw.probe == raw_probe);
    ck_assert(kDriverRaw.kind == BlockDriverKind::kFormat);

    DriverRegistry reg;
    reg.add(&kDriverFile);
    reg.add(&kDriverRaw);
    reg.add(&kDriverFakeFmt);
    ck_assert_ptr_eq(reg.probe_format(buf, sizeof(buf)), &kDriverRaw);
    ck_assert(!reg.probe_recognises(buf));
    memcpy(buf, "FAKE", 4);
    ck_assert_ptr_eq(reg.probe_format(buf, sizeof(buf)), &kDriverFakeFmt);
    ck_assert(reg.probe_recognises(buf));
    ck_assert(!builtin_drivers().probe_recognises(buf));

    // probe_node_format reads the node's first sector.
    std::string path = tmp_path("img");
    make_file(path, 4096);
    {
        Env e(&reg);
        BlockNode *f = e.add(file_opts(path, "f0"));
        auto d = reg.probe_node_format(f);
        ck_assert(d.ok());
        ck_assert_ptr_eq(d.value(), &kDriverRaw);
    }
    int fd = open(path.c_str(), O_WRONLY);
    ck_assert_int_eq(pwrite(fd, "FAKE", 4, 0), 4);
    close(fd);
    {
        Env e(&reg);
        BlockNode *f = e.add(file_opts(path, "f0"));
        auto d = reg.probe_node_format(f);
        ck_assert(d.ok());
        ck_assert_ptr_eq(d.value(), &kDriverFakeFmt);
        // Also from inside a coroutine; the node is no longer in use afterwards.
        auto d2 = run_in_coroutine([&] { return reg.probe_node_format(f); });
        ck_assert(d2.ok());
        ck_assert_ptr_eq(d2.value(), &kDriverFakeFmt);
        ck_assert_int_eq(f->parents().size(), 0);
    }
    // A tiny (3-byte) and an empty image probe as raw.
    make_file(path, 3);
    {
        Env e(&reg);
        auto d = reg.probe_node_format(e.add(file_opts(path, "f0")));
        ck_assert(d.ok());
        ck_assert_ptr_eq(d.value(), &kDriverRaw);
    }
    make_file(path, 0);
    {
        Env e(&reg);
        auto d = reg.probe_node_format(e.add(file_opts(path, "f0")));
        ck_assert(d.ok());
        ck_assert_ptr_eq(d.value(), &kDriverRaw);
    }
}
END_TEST

// Probed raw refuses writes that would make sector 0 probe as another
// format: whole-sector writes, partial writes completing a magic, and
// writes through a window; other writes pass.
START_TEST(test_raw_probed_refusal)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    DriverRegistry reg;
    reg.add(&kDriverFile);
    reg.add(&kDriverRaw);
    reg.add(&kDriverFakeFmt);
    Env e(&reg);
    auto *raw = static_cast<RawFormatNode *>(e.add(raw_opts(inline_ref(file_opts(path)))));
    ck_assert(!raw->probed());
    raw->set_probed(true);
    ck_assert(raw->probed());
    auto b = e.backend(raw);

    std::vector<uint8_t> sec(512, 0x11);
    memcpy(sec.data(), "FAKE", 4);
    ck_assert_int_eq(co_write(b.get(), 0, 512, sec.data()), -EPERM);
    std::vector<uint8_t> big(8192, 0x22);
    memcpy(big.data(), "FAKE", 4);
    ck_assert_int_eq(co_write(b.get(), 0, big.size(), big.data()), -EPERM);
    ck_assert_int_eq(file_bytes(path, 0, 1)[0], pattern_byte(0));
    ck_assert_int_eq(file_bytes(path, 4096, 1)[0], pattern_byte(4096));

    // Harmless writes to sector 0 pass.
    ck_assert_int_eq(co_write(b.get(), 0, 4, "XXKE"), 0);
    ck_assert_int_eq(co_write(b.get(), 0, 512, std::vector<uint8_t>(512, 0x33).data()), 0);
    ck_assert_int_eq(co_write(b.get(), 2, 2, "KE"), 0);
    // "FA" at 0 would complete "FAKE" with the bytes already there.
    ck_assert_int_eq(co_write(b.get(), 0, 2, "FA"), -EPERM);
    ck_assert_int_eq(co_write(b.get(), 0, 2, "FB"), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_flush(); }), 0);
    auto head = file_bytes(path, 0, 4);
    ck_assert_int_eq(memcmp(head.data(), "FBKE", 4), 0);
    // Beyond sector 0 anything goes.
    ck_assert_int_eq(co_write(b.get(), 512, 512, sec.data()), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_pwrite_zeroes(0, 4096, 0); }), 0);

    // Unprobed: the same write passes.
    raw->set_probed(false);
    ck_assert_int_eq(co_write(b.get(), 0, 512, sec.data()), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_flush(); }), 0);
    ck_assert_int_eq(memcmp(file_bytes(path, 0, 4).data(), "FAKE", 4), 0);
    // And now that sector 0 is FAKE, a probed raw may rewrite it into raw data.
    raw->set_probed(true);
    ck_assert_int_eq(co_write(b.get(), 1, 1, "X"), 0);
}
END_TEST

START_TEST(test_raw_probed_window)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    DriverRegistry reg;
    reg.add(&kDriverFile);
    reg.add(&kDriverRaw);
    reg.add(&kDriverFakeFmt);
    Env e(&reg);
    auto *raw = static_cast<RawFormatNode *>(e.add(raw_opts(inline_ref(file_opts(path)), 4096, 65536)));
    raw->set_probed(true);
    auto b = e.backend(raw);
    ck_assert_int_eq(co_write(b.get(), 0, 4, "FAKE"), -EPERM);
    ck_assert_int_eq(co_write(b.get(), 0, 4, "FAKF"), 0);
    ck_assert_int_eq(run_in_coroutine([&] { return b->co_flush(); }), 0);
    ck_assert_int_eq(memcmp(file_bytes(path, 4096, 4).data(), "FAKF", 4), 0);
    ck_assert_int_eq(co_write(b.get(), 3, 1, "E"), -EPERM);
}
END_TEST

// With qcow2 registered, a qcow2 v3 header in sector 0 of a probed raw is
// refused; until then the builtin registry has no other format.
START_TEST(test_raw_probed_qcow2_magic)
{
    std::string path = tmp_path("img");
    make_file(path, 1 << 20);
    Env e;
    auto *raw = static_cast<RawFormatNode *>(e.add(raw_opts(inline_ref(file_opts(path)))));
    raw->set_probed(true);
    auto b = e.backend(raw);
    uint8_t sec[512] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    int r = co_write(b.get(), 0, 512, sec);
    if (builtin_drivers().find("qcow2")) ck_assert_int_eq(r, -EPERM);
    else ck_assert_int_eq(r, 0);
}
END_TEST

// ---------------------------------------------------------------- registry

START_TEST(test_registry_builtin)
{
    const DriverRegistry &reg = builtin_drivers();
    ck_assert_ptr_eq(&reg, &builtin_drivers());
    ck_assert_ptr_eq(reg.find("file"), &kDriverFile);
    ck_assert_ptr_eq(reg.find("raw"), &kDriverRaw);
    ck_assert_ptr_eq(reg.find("null-co"), &kDriverNullCo);
    ck_assert_ptr_eq(reg.find("null-aio"), &kDriverNullAio);
    ck_assert_ptr_eq(reg.find("blkdebug"), &kDriverBlkdebug);
    ck_assert_ptr_null(reg.find("nonesuch"));
    ck_assert_ptr_null(reg.find(""));
    for (const BlockDriver *d : reg.all()) {
        ck_assert_ptr_eq(reg.find(d->name), d);
        ck_assert(d->create != nullptr);
        ck_assert(d->summary && *d->summary);
    }
    // An empty registry probes nothing.
    DriverRegistry empty;
    uint8_t buf[512] = {};
    ck_assert_ptr_null(empty.probe_format(buf, sizeof(buf)));
    // Unknown drivers are an open error.
    Env e;
    BlockdevOptions o;
    o.driver = "nonesuch";
    auto r = e.graph.add_node(o);
    ck_assert(!r.ok());
}
END_TEST

static Suite *raw_suite()
{
    Suite *s = suite_create("raw");
    TCase *tc = tcase_create("raw");
    tcase_set_timeout(tc, 30);
    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_raw_filter);
    tcase_add_test(tc, test_raw_offset_zero_is_filter);
    tcase_add_test(tc, test_raw_window);
    tcase_add_test(tc, test_raw_offset_only);
    tcase_add_test(tc, test_raw_truncate);
    tcase_add_test(tc, test_raw_out_of_window);
    tcase_add_test(tc, test_raw_validation);
    tcase_add_test(tc, test_raw_block_status);
    tcase_add_test(tc, test_raw_probe_helpers);
    tcase_add_test(tc, test_raw_probed_refusal);
    tcase_add_test(tc, test_raw_probed_window);
    tcase_add_test(tc, test_raw_probed_qcow2_magic);
    tcase_add_test(tc, test_registry_builtin);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(raw_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

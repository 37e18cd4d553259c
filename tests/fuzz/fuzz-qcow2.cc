// libFuzzer target: open arbitrary bytes as a qcow2 image and read it.
//
// The image lives in memory (a protocol driver of its own, "fuzz-mem", below,
// which reads the input in place), so no file is written. For each input the
// target opens the image with cache options picked by its last byte, walks
// block status over the start of the image, reads what is allocated and some
// fixed ranges, and opens each snapshot (up to 4) as a read-only view and
// reads from it, and reads the persistent bitmaps (up to 4). The backing
// file is disabled (backing: null): names from fuzzed headers are never
// opened. An image with an external data file uses the same bytes as its
// data file.
//
// Build and run: make fuzz / make check-fuzz (tests/fuzz/fuzz.mk).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "block/block-driver.h"
#include "block/qcow2/qcow2.h"
#include "qapi/option-reader.h"
#include "util/aio.h"
#include "util/log.h"

using namespace bg;

namespace {

const uint8_t *g_data = nullptr;
size_t g_size = 0;

class FuzzMemNode final : public BlockNode {
  protected:
    Status open(const BlockdevOptions &) override { return {}; }
    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags) override
    {
        int64_t size = static_cast<int64_t>(g_size);
        int64_t n = offset < size ? std::min(bytes, size - offset) : 0;
        if (n > 0) qiov.from_buf(0, g_data + offset, static_cast<size_t>(n));
        if (n < bytes) qiov.memset(static_cast<size_t>(n), 0, static_cast<size_t>(bytes - n));
        return 0;
    }
    int64_t do_getlength() override { return static_cast<int64_t>(g_size); }
};

// fuzz-mem has no options of its own.
struct FuzzMemOptions : DriverOptionsOf<FuzzMemOptions> {
    void encode(nlohmann::json &) const override {}
};

Result<std::unique_ptr<DriverOptions>> decode_fuzz_mem_options(OptionReader &, const BlockdevOptions &)
{
    return std::unique_ptr<DriverOptions>(std::make_unique<FuzzMemOptions>());
}

const BlockDriver kDriverFuzzMem = {
    "fuzz-mem", BlockDriverKind::kProtocol, 0, "fuzzing: the input bytes", decode_fuzz_mem_options,
    []() -> std::unique_ptr<BlockNode> { return std::make_unique<FuzzMemNode>(); }, nullptr,
};

const DriverRegistry &registry()
{
    static const DriverRegistry reg = [] {
        DriverRegistry r;
        r.add(builtin_drivers().find("qcow2"));
        r.add(builtin_drivers().find("raw"));
        r.add(&kDriverFuzzMem);
        return r;
    }();
    return reg;
}

// The qcow2 node over "mem" (backing disabled), with cache options picked
// by config.
nlohmann::json qcow2_options(const char *node_name, uint8_t config, bool data_file)
{
    nlohmann::json o = {{"driver", "qcow2"}, {"node-name", node_name}, {"read-only", true},
                        {"file", "mem"},     {"backing", nullptr},      {"cache-clean-interval", 0}};
    if (data_file) o["data-file"] = "mem";
    switch (config & 3) {
    case 0: break;                                                          // defaults
    case 1: o["l2-cache-entry-size"] = 512; break;                          // smallest slices
    case 2: o["l2-cache-size"] = 1; break;                                  // two entries: evictions
    case 3: o["cache-size"] = 1; o["l2-cache-entry-size"] = 512; break;
    }
    return o;
}

// Reads at most 1 MiB of node from offset; the result does not matter.
void read_some(BlockNode *node, int64_t offset, int64_t bytes, std::vector<uint8_t> &buf)
{
    int64_t len = node->getlength();
    if (offset >= len) return;
    bytes = std::min({bytes, len - offset, static_cast<int64_t>(buf.size())});
    auto blk = BlockBackend::create(node, kPermConsistentRead, kPermAll, "fuzz");
    if (!blk) return;
    BlockBackend *b = blk.value().get();
    (void)run_in_coroutine([&] { return b->co_pread(offset, bytes, buf.data()); });
}

void exercise(BlockNode *node, std::vector<uint8_t> &buf)
{
    const int64_t len = node->getlength();
    read_some(node, 0, 1 << 20, buf);
    read_some(node, len / 2 + 333, 70000, buf);
    read_some(node, len - 4097, 4097, buf);
    // Block status over the start, reading what is allocated.
    int64_t off = 0;
    for (int i = 0; i < 64 && off < len; i++) {
        int64_t pnum = 0, map = 0;
        BlockNode *file = nullptr;
        int r = run_in_coroutine([&] { return node->co_block_status(true, off, len - off, &pnum, &map, &file); });
        if (r < 0 || pnum <= 0) break;
        if (r & kStatusAllocated) read_some(node, off, std::min<int64_t>(pnum, 256 << 10), buf);
        off += pnum;
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static std::unique_ptr<AioContext> ctx = [] {
        log_set_level(LogLevel::kError);
        return AioContext::create();
    }();
    g_data = data;
    g_size = size;
    const uint8_t config = size ? data[size - 1] : 0;
    const bool data_file = size >= 80 && (data[79] & qcow2::kIncompatDataFile);
    static std::vector<uint8_t> buf(1 << 20);
    {
        BlockGraph graph(&registry());
        if (!graph.add_node_json({{"driver", "fuzz-mem"}, {"node-name", "mem"}, {"read-only", true}}).ok()) return 0;
        auto r = graph.add_node_json(qcow2_options("q", config, data_file));
        if (r.ok()) {
            auto *q = static_cast<Qcow2Node *>(r.value());
            exercise(q, buf);
            // Persistent bitmaps: the directory, and the tables and data of
            // up to 4 (read-only: what info, measure and convert --bitmaps do).
            auto bms = q->persistent_bitmaps();
            if (bms.ok()) {
                for (size_t i = 0; i < bms.value().size() && i < 4; i++) (void)q->bitmap_data(bms.value()[i].name);
            }
            // Snapshot views.
            std::vector<std::string> ids;
            for (const auto &s : q->snapshots()) {
                if (ids.size() == 4) break;
                ids.push_back(s.id);
            }
            for (size_t i = 0; i < ids.size(); i++) {
                const char *names[] = {"s0", "s1", "s2", "s3"};
                nlohmann::json o = qcow2_options(names[i], config, data_file);
                o["snapshot.id"] = ids[i];
                auto s = graph.add_node_json(o);
                if (s.ok()) exercise(s.value(), buf);
            }
        }
        graph.close_all();
    }
    return 0;
}

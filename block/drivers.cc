// The list of built-in drivers and the registry's queries (lookup, format
// probing). Adding a driver: define its descriptor in its own source file,
// then declare and add it here, one line each.
#include <algorithm>

#include "block/block-driver.h"

namespace bg {

extern const BlockDriver kDriverFile;       // block/file-posix.cc
extern const BlockDriver kDriverRaw;        // block/raw-format.cc
extern const BlockDriver kDriverNullCo;     // block/null.cc
extern const BlockDriver kDriverNullAio;    // block/null.cc
extern const BlockDriver kDriverBlkdebug;   // block/blkdebug.cc
extern const BlockDriver kDriverQcow2;      // block/qcow2/qcow2.cc
extern const BlockDriver kDriverNbd;        // block/nbd.cc
extern const BlockDriver kDriverCopyOnRead; // block/copy-on-read.cc
extern const BlockDriver kDriverCopyBeforeWrite; // block/copy-before-write.cc
extern const BlockDriver kDriverRbd;        // block/rbd.cc
extern const BlockDriver kDriverMirrorTop;  // block/mirror.cc (internal: only the mirror job opens one)
extern const BlockDriver kDriverCommitTop;  // block/commit.cc
extern const BlockDriver kDriverBlkLogWrites; // block/blklogwrites.cc

void register_builtin_drivers(DriverRegistry *registry)
{
    registry->add(&kDriverFile);
    registry->add(&kDriverRaw);
    registry->add(&kDriverNullCo);
    registry->add(&kDriverNullAio);
    registry->add(&kDriverBlkdebug);
    registry->add(&kDriverQcow2);
    registry->add(&kDriverNbd);
    registry->add(&kDriverCopyOnRead);
    registry->add(&kDriverCopyBeforeWrite);
    registry->add(&kDriverRbd);
    registry->add(&kDriverMirrorTop);
    registry->add(&kDriverCommitTop);
    registry->add(&kDriverBlkLogWrites);
}

const DriverRegistry &builtin_drivers()
{
    // Thread-safe one-time initialisation (C++11 magic statics).
    static const DriverRegistry registry = [] {
        DriverRegistry r;
        register_builtin_drivers(&r);
        return r;
    }();
    return registry;
}

const BlockDriver *DriverRegistry::find(const std::string &name) const
{
    for (const BlockDriver *drv : drivers_) {
        if (name == drv->name) return drv;
    }
    return nullptr;
}

DriverOptionsDecoder DriverRegistry::options_decoder(const std::string &driver) const
{
    const BlockDriver *drv = find(driver);
    return drv ? drv->decode_options : nullptr;
}

// Highest score wins; on a tie the driver registered first wins (QEMU's
// bdrv_probe_all keeps the first maximum too).
const BlockDriver *DriverRegistry::probe_format(const uint8_t *buf, size_t len) const
{
    const BlockDriver *best = nullptr;
    int best_score = 0;
    for (const BlockDriver *drv : drivers_) {
        if (!drv->probe || drv->kind != BlockDriverKind::kFormat) continue;
        int score = drv->probe(buf, len);
        if (score > best_score) {
            best_score = score;
            best = drv;
        }
    }
    return best;
}

bool probe_is_catch_all(const BlockDriver *drv)
{
    return drv->kind == BlockDriverKind::kFormat && drv->probe && drv->probe(nullptr, 0) > 0;
}

bool DriverRegistry::probe_recognises(const uint8_t *sector0) const
{
    return std::any_of(drivers_.begin(), drivers_.end(), [sector0](const BlockDriver *drv) {
        return drv->probe && drv->kind == BlockDriverKind::kFormat && drv->probe(sector0, kProbeBufSize) > 1;
    });
}

Result<const BlockDriver *> DriverRegistry::probe_node_format(BlockNode *node) const
{
    Result<std::unique_ptr<BlockBackend>> blk =
        BlockBackend::create(node, kPermConsistentRead, kPermAll, "format probe");
    if (!blk) return blk.error();
    int64_t len = node->getlength();
    if (len < 0) return errno_error(static_cast<int>(-len), "Could not get image size");
    uint8_t buf[kProbeBufSize] = {};
    int64_t n = std::min<int64_t>(len, static_cast<int64_t>(kProbeBufSize));
    BlockBackend *b = blk.value().get();
    int ret = n > 0 ? run_in_coroutine([&] { return b->co_pread(0, n, buf); }) : 0;
    if (ret < 0) return errno_error(-ret, "Could not read image for determining its format");
    const BlockDriver *drv = probe_format(buf, static_cast<size_t>(n));
    if (!drv) return make_error(ENOENT, "Could not determine image format: no driver recognises it");
    return drv;
}

} // namespace bg

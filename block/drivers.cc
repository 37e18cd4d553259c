// The list of built-in drivers (STYLE.md rule 4) and the registry lookups.
#include "block/drivers.h"

#include <cstring>

namespace bg {

void register_builtin_drivers(DriverRegistry *registry)
{
    registry->add(&kDriverFile);
    registry->add(&kDriverRaw);
    registry->add(&kDriverNullCo);
    registry->add(&kDriverNullAio);
    registry->add(&kDriverBlkdebug);
    registry->add(&kDriverQcow2);
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

// Highest score wins; on a tie the driver registered first wins (QEMU's
// bdrv_probe_all keeps the first maximum too). nullptr if nothing scores > 0.
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

} // namespace bg

#define FUSE_USE_VERSION 35
#include "util/_probe.h"
#include <fuse_lowlevel.h>
#include <glib.h>
#include <liburing.h>
#include <nlohmann/json.hpp>
#include <zlib.h>
#include <zstd.h>
namespace bg {
int probe_value() noexcept
{
    struct io_uring ring;
    (void)ring;
    auto j = nlohmann::json::parse("{\"a\": 42}");
    (void)zlibVersion();
    (void)ZSTD_versionNumber();
    (void)g_get_monotonic_time();
    (void)fuse_version();
    return j["a"].get<int>();
}
}

// tools/dropin.cc -- the drop-in names of blockgraph (tools/dropin.h).

#include "tools/dropin.h"

#include <cstdio>
#include <cstring>

#include "util/log.h"
#include "util/version.h"

namespace bg {

namespace {

// The QEMU release whose command-line behaviour and messages the tools follow
// (also what the QMP monitor reports as its version).
constexpr const char *kQemuCompatVersion = "7.2.0";

constexpr DropinTool kDropinTools[] = {
    {"qemu-img", "img"},
    {"qemu-io", "io"},
    {"qemu-nbd", "nbd"},
    {"qemu-storage-daemon", "daemon"},
    {nullptr, nullptr},
};

// Written once by main() before any other thread exists.
const DropinTool *g_selected = nullptr;

} // namespace

const DropinTool *dropin_tools() noexcept { return kDropinTools; }

const DropinTool *dropin_find(const char *argv0) noexcept
{
    if (argv0 == nullptr) return nullptr;
    const char *slash = std::strrchr(argv0, '/');
    const char *base = slash ? slash + 1 : argv0;
    for (const DropinTool *t = kDropinTools; t->link; t++) {
        if (std::strcmp(t->link, base) == 0) return t;
    }
    return nullptr;
}

void dropin_select(const DropinTool *tool) noexcept
{
    g_selected = tool;
    log_set_program(tool->link);
}

const char *dropin_prog() noexcept { return g_selected ? g_selected->link : nullptr; }

const char *tool_prog(const char *fallback) noexcept
{
    const char *p = dropin_prog();
    return p ? p : fallback;
}

void print_tool_version(const char *fallback) noexcept
{
    const char *p = dropin_prog();
    if (p == nullptr) {
        std::printf("%s version %s\n", fallback, BG_VERSION);
    } else if (std::strcmp(p, "qemu-nbd") == 0) {
        std::printf("%s %s (blockgraph %s)\n", p, kQemuCompatVersion, BG_VERSION);
    } else {
        std::printf("%s version %s (blockgraph %s)\n", p, kQemuCompatVersion, BG_VERSION);
    }
}

} // namespace bg

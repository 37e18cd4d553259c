// tools/nbd-list.cc -- "blockgraph nbd -L": the exports of an NBD server,
// printed line for line as qemu-nbd --list (QEMU 7.2) prints them:
//
//   exports available: N
//    export: 'NAME'
//     description: TEXT                    (when not empty)
//     size:  BYTES                          (two spaces)
//     flags: 0xHEX ( NAME NAME ... )
//     min block: N / opt block: N / max block: N   (when the server sent them)
//     available meta contexts: N           (when any)
//      CONTEXT
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "tools/nbd.h"
#include "util/nbd-proto.h"

namespace bg {

namespace {

constexpr const char *kProg = "blockgraph nbd";

// One export as listed (what OPT_LIST, OPT_INFO and OPT_LIST_META_CONTEXT
// told about it).
struct ListedExport {
    std::string name;
    std::string description;
    uint64_t size = 0;
    uint16_t flags = 0;                 // transmission flags; 0: INFO failed
    uint32_t min_block = 0;             // 0: no BLOCK_SIZE info
    uint32_t opt_block = 0;
    uint32_t max_block = 0;
    std::vector<std::string> contexts;
};

// Transmission flag names by bit, as qemu-nbd --list 7.2 prints them
// (bits it has no name for are not printed).
constexpr const char *kFlagNames[] = {
    nullptr,      "readonly", "flush", "fua",    "rotational", "trim",
    "zeroes",     "df",       "multi", "resize", "cache",      "fast-zero",
};

void print_exports(const std::vector<ListedExport> &list)
{
    std::printf("exports available: %zu\n", list.size());
    for (const ListedExport &e : list) {
        std::printf(" export: '%s'\n", e.name.c_str());
        if (!e.description.empty()) std::printf("  description: %s\n", e.description.c_str());
        if (e.flags & 1) {   // HAS_FLAGS: the INFO answer came
            std::printf("  size:  %" PRIu64 "\n", e.size);
            std::printf("  flags: 0x%x (", e.flags);
            for (unsigned bit = 0; bit < sizeof(kFlagNames) / sizeof(kFlagNames[0]); bit++) {
                if (kFlagNames[bit] && (e.flags & (1u << bit))) std::printf(" %s", kFlagNames[bit]);
            }
            std::printf(" )\n");
        }
        if (e.min_block) {
            std::printf("  min block: %u\n", e.min_block);
            std::printf("  opt block: %u\n", e.opt_block);
            std::printf("  max block: %u\n", e.max_block);
        }
        if (!e.contexts.empty()) {
            std::printf("  available meta contexts: %zu\n", e.contexts.size());
            for (const std::string &c : e.contexts) std::printf("   %s\n", c.c_str());
        }
    }
}

// Until the NBD client (util/nbd-client.h) lands: unavailable.
Result<std::vector<ListedExport>> fetch_exports(const NbdArgs &a)
{
    (void)a;
    return make_error(ENOTSUP, "listing needs the NBD client, which is not available in this build");
}

} // namespace

int nbd_list_exports_cmd(const NbdArgs &a, std::shared_ptr<TlsCreds> creds)
{
    (void)creds;
    Result<std::vector<ListedExport>> l = fetch_exports(a);
    if (!l) {
        std::fprintf(stderr, "%s: %s\n", kProg, l.msg().c_str());
        return 1;
    }
    print_exports(l.value());
    return 0;
}

} // namespace bg

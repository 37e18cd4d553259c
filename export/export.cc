// Export types, dispatched on "type".
#include "export/export.h"

#include "export/fuse.h"
#include "export/nbd.h"

namespace bg {

const char *ExportStats::kind_name(int k)
{
    static const char *const names[] = {"read", "write", "flush", "getattr", "setattr", "fallocate", "lseek", "other"};
    return k >= 0 && k < 8 ? names[k] : "?";
}

Result<std::unique_ptr<BlockExport>> block_export_create(BlockGraph &graph, const BlockExportOptions &opts,
                                                         const std::vector<IoThread *> &iothreads,
                                                         ExportGoneFn on_gone)
{
    if (opts.type == "fuse") return fuse_export_create(graph, opts, iothreads, std::move(on_gone));
    // NBD exports serve in the main loop (export/nbd.h) and never go away
    // on their own.
    if (opts.type == "nbd") return nbd_export_create(graph, opts);
    return make_error(EINVAL, "export '%s': unknown export type '%s'", opts.id.c_str(), opts.type.c_str());
}

} // namespace bg

// The FUSE export: shows one graph node as a regular file at a mountpoint.
// See docs/fuse-export.md for the design (why /dev/fuse is read directly,
// what runs in which thread).
#pragma once

#include "export/export.h"

namespace bg {

Result<std::unique_ptr<BlockExport>> fuse_export_create(BlockGraph &graph, const BlockExportOptions &opts,
                                                        const std::vector<IoThread *> &iothreads,
                                                        ExportGoneFn on_gone);

} // namespace bg

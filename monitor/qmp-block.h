// monitor/qmp-block.h -- helpers shared by the graph commands of QMP
// (qmp-block.cc, qmp-graph.cc).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block.h"
#include "monitor/qmp-internal.h"
#include "util/error.h"

namespace bg {

// A message of our option decoders (--blockdev, --export, --object) or of
// opening a node, in QEMU's words where QEMU has some ("Parameter
// 'file.foo' is unexpected", "Parameter 'x' is missing", "Invalid parameter
// type for 'x', expected: string", "Parameter 'driver' does not accept value
// 'y'", "Invalid node-name: 'x'"), else without our "blockdev 'q': path: "
// context, which QEMU does not give. prefix goes before member paths
// ("options[0]." in blockdev-reopen).
std::string qmp_option_error(const std::string &msg, const std::string &prefix = "");
// QEMU's bdrv_lookup_bs(): the node named node_name (a daemon has no
// devices, so a device name never matches; commands that take a "device"
// meaning a node pass it as node_name too, as QEMU does). Error:
// "Cannot find device='d' nor node-name='n'".
Result<BlockNode *> qmp_find_node(Daemon &d, const std::string &device, const std::string &node_name);
// QEMU's check of commands that work on a whole device: n must have no
// parent node ("Need a root block node").
Status qmp_need_root(BlockNode *n);
// args[key] as a string, "" when absent (the table checked its type).
std::string qmp_str(const nlohmann::json &args, const char *key);
// blockdev-snapshot-internal-sync's work (also a transaction action).
// May yield. Errors in QEMU's words.
Status qmp_snapshot_internal_create(BlockNode *node, const std::string &device, const std::string &name);

// The commands of qmp-graph.cc (bitmaps, blockdev-snapshot, reopen,
// query-named-block-nodes, transaction).
void qmp_graph_commands(std::vector<QmpCommand> *out);

} // namespace bg

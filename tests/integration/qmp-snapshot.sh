#!/bin/bash
# tests/integration/qmp-snapshot.sh -- runs qmp-snapshot.py (blockdev-snapshot,
# internal snapshots; see there) through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" snapshot

#!/bin/bash
# tests/integration/qmp-live.sh -- runs qmp-live.py (monitor commands during
# fio --verify through a FUSE export; see there) through lib-qmp.sh.
command -v fio >/dev/null || { [ -n "${CI:-}" ] && { echo "FAIL: fio is not installed"; exit 1; }; echo "SKIP: fio is not installed"; exit 77; }
. "$(dirname "$0")/lib-qmp.sh" live

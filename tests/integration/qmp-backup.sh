#!/bin/bash
# tests/integration/qmp-backup.sh -- runs qmp-backup.py (blockdev-backup and
# the copy-before-write filter, under fio --verify through the FUSE and NBD
# exports; see there) through lib-qmp.sh.
command -v fio >/dev/null || { [ -n "${CI:-}" ] && { echo "FAIL: fio is not installed"; exit 1; }; echo "SKIP: fio is not installed"; exit 77; }
. "$(dirname "$0")/lib-qmp.sh" backup

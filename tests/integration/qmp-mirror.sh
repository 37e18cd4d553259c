#!/bin/bash
# tests/integration/qmp-mirror.sh -- runs qmp-mirror.py (blockdev-mirror and
# active commit under fio --verify through FUSE and NBD exports; see there)
# through lib-qmp.sh.
for t in fio nbdfuse fusermount3; do
    command -v $t >/dev/null || { [ -n "${CI:-}" ] && { echo "FAIL: $t is not installed"; exit 1; }; echo "SKIP: $t is not installed"; exit 77; }
done
QMP_BUDGET=${QMP_BUDGET:-180}
. "$(dirname "$0")/lib-qmp.sh" mirror

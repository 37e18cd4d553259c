#!/bin/bash
# tests/integration/qmp-commit.sh -- runs qmp-commit.py (block-commit of an
# intermediate layer under fio, cancel, pause, speed, on-error, kill -9; see
# there) through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" commit

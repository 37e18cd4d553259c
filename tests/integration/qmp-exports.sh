#!/bin/bash
# tests/integration/qmp-exports.sh -- runs qmp-exports.py (FUSE exports,
# iothread objects; see there) through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" exports

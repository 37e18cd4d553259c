#!/bin/bash
# tests/integration/qmp-stream.sh -- runs qmp-stream.py (block-stream under
# fio, base-node, cancel, pause, speed, on-error, kill -9; see there) through
# lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" stream

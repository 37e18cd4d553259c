#!/bin/bash
# tests/integration/qmp-bitmaps.sh -- runs qmp-bitmaps.py (dirty bitmaps,
# transactions; see there) through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" bitmaps

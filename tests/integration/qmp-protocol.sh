#!/bin/bash
# tests/integration/qmp-protocol.sh -- runs qmp-protocol.py (the QMP wire
# protocol; see there) through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" protocol

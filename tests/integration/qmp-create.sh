#!/bin/bash
# tests/integration/qmp-create.sh -- runs qmp-create.py (blockdev-create,
# the create job; see there) through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" create

#!/bin/bash
# tests/integration/qmp-control.sh -- runs qmp-control.py (query-version,
# query-commands, query-qmp-schema, quit; see there) through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" control

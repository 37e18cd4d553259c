#!/bin/bash
# tests/integration/qmp-jobs-stop.sh -- runs qmp-jobs-stop.py (quit and
# SIGTERM with several jobs running; see there) through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" jobs-stop

#!/bin/bash
# tests/integration/qmp-jobs.sh -- runs qmp-jobs.py (the job model and its
# control commands, on stream jobs; see there) through lib-qmp.sh.
. "$(dirname "$0")/lib-qmp.sh" jobs

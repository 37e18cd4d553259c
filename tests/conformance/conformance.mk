# tests/conformance/conformance.mk -- the driver conformance suite
# (docs/conformance.md); included by the top Makefile after the variables
# B, LIB, LIBS, CHECK_CFLAGS and CHECK_LIBS are defined.
#
#   make check-conformance   builds $(B)/tests/conformance/conformance, runs
#                            it over tests/conformance/stacks.txt (table of
#                            stacks x case groups), then
#                            tests/conformance/fuse-conformance.sh (every
#                            stack exported through FUSE and driven by
#                            python3 and fio through the kernel), and
#                            tests/conformance/selftest.sh (the suite must
#                            fail on deliberately broken stacks)
#
# Variables: CONF_ARGS (e.g. --filter-stacks 'qcow2*' --filter-cases 'rw_*'),
# CONF_FUSE=0 skips the FUSE part, CONF_FUSE_STACKS (glob list for the script),
# CONF_JOBS (worker processes of the API run, default 2: --jobs).

CONF_SRCS := $(sort $(wildcard tests/conformance/*.cc))
CONF_OBJS := $(CONF_SRCS:%.cc=$(B)/%.o)
CONF_BIN := $(B)/tests/conformance/conformance
CONF_ARGS ?=
CONF_FUSE ?= 1
CONF_FUSE_STACKS ?=
CONF_JOBS ?= 2
# The API run covers every stack in one process (about 12 minutes on two
# vCPUs with the NBD stacks): it gets more than TEST_TIMEOUT.
CONF_TIMEOUT ?= 1500

$(CONF_OBJS): $(B)/%.o: %.cc $(FLAGS_CXX_FILE)
	$(call msg,CXX,$<)
	@mkdir -p $(@D)
	$(Q)$(CXX) $(CPPFLAGS) $(CHECK_CFLAGS) $(BG_CXXFLAGS) -MMD -MP -c -o $@ $<

$(CONF_BIN): $(CONF_OBJS) $(LIB) $(FLAGS_LD_FILE)
	$(call msg,LINK,$@)
	$(Q)$(CXX) $(LDFLAGS) -o $@ $(CONF_OBJS) $(LIB) $(LIBS) $(CHECK_LIBS)

-include $(CONF_OBJS:.o=.d)

all: $(CONF_BIN)

.PHONY: check-conformance check-conformance-run
# Under scripts/with-ceph.sh (the rbd stacks find the cluster in
# BG_CEPH_DIR; an outer "make check" passes its own).
check-conformance: $(CONF_BIN) $(BIN)
	$(Q)$(WITH_CEPH) $(MAKE) check-conformance-run
# The two parts run at the same time (both mostly wait for I/O); each
# writes a log that is printed when both are done.
check-conformance-run: $(CONF_BIN) $(BIN)
	@rc=0; logdir=$$(mktemp -d "$${TMPDIR:-/tmp}/bg-conf-logs.XXXXXX"); \
	echo "  CONF    $(CONF_BIN) (block layer API)"; \
	( BLOCKGRAPH='$(abspath $(BIN))' timeout $(CONF_TIMEOUT) $(CONF_BIN) --stacks tests/conformance/stacks.txt --jobs $(CONF_JOBS) $(CONF_ARGS) \
	    >"$$logdir/api.log" 2>&1; echo $$? >"$$logdir/api.rc" ) & \
	if [ "$(CONF_FUSE)" = 1 ]; then \
	    echo "  CONF    tests/conformance/fuse-conformance.sh (FUSE, through the kernel)"; \
	    BLOCKGRAPH='$(abspath $(BIN))' CONFORMANCE='$(abspath $(CONF_BIN))' BG_SRCDIR='$(SRCDIR)' \
	        CONF_FUSE_STACKS='$(CONF_FUSE_STACKS)' \
	        timeout $(TEST_TIMEOUT) tests/conformance/fuse-conformance.sh >"$$logdir/fuse.log" 2>&1 || frc=$$?; \
	    case $${frc:-0} in 0) ;; 77) echo "  SKIP    fuse-conformance.sh (FUSE is not available)" ;; *) rc=1 ;; esac; \
	fi; \
	wait; \
	cat "$$logdir/api.log"; [ "$$(cat "$$logdir/api.rc")" = 0 ] || rc=1; \
	echo "  CONF    tests/conformance/selftest.sh (the suite fails on broken drivers)"; \
	CONFORMANCE='$(abspath $(CONF_BIN))' tests/conformance/selftest.sh || rc=1; \
	if [ "$(CONF_FUSE)" = 1 ]; then echo; grep -v '^  ok ' "$$logdir/fuse.log"; fi; \
	rm -rf "$$logdir"; \
	if [ $$rc = 0 ]; then echo "check-conformance: passed"; else echo "check-conformance: FAILED"; fi; \
	exit $$rc

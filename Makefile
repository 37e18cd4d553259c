# Makefile -- blockgraph.  Non-recursive GNU make (>= 4.2); every output goes
# to $(BUILD_DIR) (default build/).  Sources are found by wildcard: adding a
# file needs no edit here.  See docs/building.md; "make help" lists targets.

.DEFAULT_GOAL := all
SHELL := /bin/bash
MAKEFLAGS += --no-builtin-rules
.SUFFIXES:
.DELETE_ON_ERROR:

# All paths below are relative to the source root.
SRCDIR := $(realpath $(dir $(firstword $(MAKEFILE_LIST))))
ifneq ($(SRCDIR),$(realpath $(CURDIR)))
$(error run make in the source root: make -C $(SRCDIR))
endif

BUILD_DIR ?= build
B := $(patsubst %/,%,$(BUILD_DIR))
ifeq ($(filter-out . ./ / $(CURDIR) $(SRCDIR),$(B)),)
$(error BUILD_DIR='$(BUILD_DIR)' would clobber the tree; use a dedicated directory)
endif

# V=1 prints full commands; otherwise one short line per step.
V ?= 0
ifeq ($(V),1)
Q :=
msg =
else
Q := @
msg = @printf '  %-7s %s\n' '$(1)' '$(2)'
MAKEFLAGS += --no-print-directory
endif

# ---------------------------------------------------------------------------
# Configuration.  config.mk comes from ./configure; make runs configure when
# config.mk is missing, and re-runs it with the same arguments when configure
# is newer.  Goals that must work before configure can succeed (check, demo
# and deps install the packages configure looks for) skip it.

NOCONFIG_GOALS := clean distclean help deps check demo demo-rbd check-layering
ifneq ($(MAKECMDGOALS),)
ifeq ($(filter-out $(NOCONFIG_GOALS),$(MAKECMDGOALS)),)
SKIP_CONFIG := 1
endif
endif

ifndef SKIP_CONFIG
include config.mk
endif

# "make -j clean all" must not build while cleaning.
ifneq ($(filter clean distclean,$(MAKECMDGOALS)),)
ifneq ($(filter-out clean distclean,$(MAKECMDGOALS)),)
.NOTPARALLEL:
endif
endif

config.mk: configure
	$(call msg,CONFIG,./configure $(CONFIGURE_ARGS))
	$(Q)./configure $(CONFIGURE_ARGS)

WERROR ?= 1
# SANITIZE=1: an ASan+UBSan build (what ./configure --enable-asan gives),
# used by check-asan in its own build directory.
ifeq ($(SANITIZE),1)
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
CPPFLAGS += -DBG_ASAN=1
CXXFLAGS += $(SAN_FLAGS)
LDFLAGS += -fsanitize=address,undefined
endif
BG_CXXFLAGS = $(CXXFLAGS) $(if $(filter 1,$(WERROR)),-Werror)
AR ?= ar

# ---------------------------------------------------------------------------
# Sources.

# Library: everything but the entry point.  Subdirectories one level down
# (block/qcow2/, export/fuse/ ...) are included.
LIB_SRC_DIRS := util block qapi export monitor
LIB_SRCS := $(filter-out tools/main.cc,$(sort $(wildcard \
    $(addsuffix /*.cc,$(LIB_SRC_DIRS)) $(addsuffix /*/*.cc,$(LIB_SRC_DIRS)) tools/*.cc)))
LIB_OBJS := $(LIB_SRCS:%.cc=$(B)/%.o)
LIB := $(B)/libblockgraph.a

MAIN_OBJ := $(B)/tools/main.o
BIN := $(B)/blockgraph

# Unit tests: tests/unit/test-<module>.cc, one binary each.  Other .cc files in
# tests/unit/ are shared helpers linked into every test binary.
TEST_SRCS := $(sort $(wildcard tests/unit/test-*.cc))
TEST_BINS := $(TEST_SRCS:%.cc=$(B)/%)
TEST_OBJS := $(TEST_SRCS:%.cc=$(B)/%.o)
TESTUTIL_SRCS := $(filter-out $(TEST_SRCS),$(sort $(wildcard tests/unit/*.cc)))
TESTUTIL_OBJS := $(TESTUTIL_SRCS:%.cc=$(B)/%.o)
# make check-unit TESTS="test-coroutine test-aio" runs only those.
TESTS ?=
RUN_TEST_BINS := $(if $(strip $(TESTS)),$(filter $(addprefix $(B)/tests/unit/,$(TESTS)),$(TEST_BINS)),$(TEST_BINS))

INTEGRATION_SCRIPTS := $(sort $(wildcard tests/integration/*.sh))

# Benchmarks: bench/<name>.cc -> $(B)/bench/<name>, run by "make bench-<name>".
BENCH_SRCS := $(sort $(wildcard bench/*.cc))
BENCH_BINS := $(BENCH_SRCS:%.cc=$(B)/%)
BENCH_OBJS := $(BENCH_SRCS:%.cc=$(B)/%.o)
BENCH_PROG_TARGETS := $(patsubst bench/%.cc,bench-%,$(BENCH_SRCS))

ALL_OBJS := $(LIB_OBJS) $(MAIN_OBJ) $(TEST_OBJS) $(TESTUTIL_OBJS) $(BENCH_OBJS)

# Targets run by "make check" after deps and "all", in this order; each runs
# even if an earlier one failed.  Add e.g. check-conformance here.
CHECK_TARGETS := check-unit check-integration check-asan check-fuzz
CHECK_TARGETS += check-conformance
CHECK_TARGETS += check-layering
# Targets whose tests need a Ceph cluster (BG_CEPH_DIR): each runs under
# scripts/with-ceph.sh, which starts one unless BG_CEPH_DIR is set; "make
# check" starts ONE for all of its targets when any of them needs it.
CEPH_CHECK_TARGETS := check-integration check-conformance
WITH_CEPH := scripts/with-ceph.sh
# Targets run, one after another, by "make bench".  Add custom bench-* here.
BENCH_TARGETS := $(BENCH_PROG_TARGETS) bench-fuse

TEST_TIMEOUT ?= 900
# Unit test binaries and integration scripts run TEST_JOBS at a time
# (tests/run-parallel.sh; TEST_JOBS=1: one after another, output streamed).
TEST_JOBS ?= 2
# The longest integration scripts, started first so that the parallel run
# does not end on one of them.
INTEGRATION_FIRST ?= rbd-faults qcow2-read qcow2-crash img-inspect qcow2-check qcow2-write input-forms qcow2-amend objects-args
INTEGRATION_ORDERED := $(filter $(INTEGRATION_FIRST:%=tests/integration/%.sh),$(INTEGRATION_SCRIPTS)) \
    $(filter-out $(INTEGRATION_FIRST:%=tests/integration/%.sh),$(INTEGRATION_SCRIPTS))
BENCH_ARGS ?=

# ---------------------------------------------------------------------------
# Rebuild on flag changes: these files hold the compile/link command lines and
# the library's member list and are rewritten only when those change, so
# reconfiguring, "make CXXFLAGS=..." or deleting a source rebuilds what it must.

FLAGS_CXX_FILE := $(B)/.flags-cxx
FLAGS_LD_FILE := $(B)/.flags-ld
LIB_OBJS_FILE := $(B)/.lib-objs

ifndef SKIP_CONFIG
ifneq ($(wildcard config.mk),)
FLAGS_CXX := $(strip $(CXX) $(CPPFLAGS) $(BG_CXXFLAGS) / $(CHECK_CFLAGS))
FLAGS_LD := $(strip $(CXX) $(LDFLAGS) $(LIBS) / $(CHECK_LIBS))
LIB_OBJS_LIST := $(strip $(LIB_OBJS))
ifneq ($(file < $(FLAGS_CXX_FILE)),$(FLAGS_CXX))
$(shell mkdir -p $(B))
$(file > $(FLAGS_CXX_FILE),$(FLAGS_CXX))
endif
ifneq ($(file < $(FLAGS_LD_FILE)),$(FLAGS_LD))
$(shell mkdir -p $(B))
$(file > $(FLAGS_LD_FILE),$(FLAGS_LD))
endif
ifneq ($(file < $(LIB_OBJS_FILE)),$(LIB_OBJS_LIST))
$(shell mkdir -p $(B))
$(file > $(LIB_OBJS_FILE),$(LIB_OBJS_LIST))
endif
endif
endif

# Recreate a file that vanished after parsing ("make clean all").
$(FLAGS_CXX_FILE):
	@mkdir -p $(@D) && printf '%s\n' '$(FLAGS_CXX)' > $@
$(FLAGS_LD_FILE):
	@mkdir -p $(@D) && printf '%s\n' '$(FLAGS_LD)' > $@
$(LIB_OBJS_FILE):
	@mkdir -p $(@D) && printf '%s\n' '$(LIB_OBJS_LIST)' > $@

# ---------------------------------------------------------------------------
# Build.

.PHONY: all
all: $(BIN) $(TEST_BINS) $(BENCH_BINS)

# Header dependencies come from -MMD -MP (.d files next to the objects).
$(ALL_OBJS): $(B)/%.o: %.cc $(FLAGS_CXX_FILE)
	$(call msg,CXX,$<)
	@mkdir -p $(@D)
	$(Q)$(CXX) $(CPPFLAGS) $(EXTRA_CPPFLAGS) $(BG_CXXFLAGS) -MMD -MP -c -o $@ $<

$(TEST_OBJS) $(TESTUTIL_OBJS): private EXTRA_CPPFLAGS = $(CHECK_CFLAGS)

$(LIB): $(LIB_OBJS) $(LIB_OBJS_FILE)
	$(call msg,AR,$@)
	@mkdir -p $(@D)
	$(Q)rm -f $@ && $(AR) rcs $@ $(LIB_OBJS)

$(BIN): $(MAIN_OBJ) $(LIB) $(FLAGS_LD_FILE)
	$(call msg,LINK,$@)
	$(Q)$(CXX) $(LDFLAGS) -o $@ $(MAIN_OBJ) $(LIB) $(LIBS)

$(TEST_BINS): $(B)/%: $(B)/%.o $(TESTUTIL_OBJS) $(LIB) $(FLAGS_LD_FILE)
	$(call msg,LINK,$@)
	$(Q)$(CXX) $(LDFLAGS) -o $@ $< $(TESTUTIL_OBJS) $(LIB) $(LIBS) $(CHECK_LIBS)

$(BENCH_BINS): $(B)/%: $(B)/%.o $(LIB) $(FLAGS_LD_FILE)
	$(call msg,LINK,$@)
	$(Q)$(CXX) $(LDFLAGS) -o $@ $< $(LIB) $(LIBS)

-include $(ALL_OBJS:.o=.d)

# libFuzzer targets (make fuzz, make check-fuzz); never part of check.
include tests/fuzz/fuzz.mk

# The driver conformance suite (make check-conformance).
include tests/conformance/conformance.mk

# ---------------------------------------------------------------------------
# Tests.

# deps, then all, then every target in CHECK_TARGETS (all of them run; the
# result fails if any failed).  BG_NO_DEPS=1 skips installing packages.
# When a target in CEPH_CHECK_TARGETS is among them, the loop runs under
# scripts/with-ceph.sh: one cluster (BG_CEPH_DIR) for the whole run,
# stopped and removed at its end, also on failure or Ctrl-C.
.PHONY: check
check:
	$(Q)if [ "$(BG_NO_DEPS)" = 1 ]; then echo "  DEPS    skipped (BG_NO_DEPS=1)"; \
	    else scripts/install-deps.sh; fi
	$(Q)$(MAKE) all
	$(Q)$(if $(filter $(CEPH_CHECK_TARGETS),$(CHECK_TARGETS)),$(WITH_CEPH)) $(SHELL) -c 'failed=; \
	for t in $(CHECK_TARGETS); do $(MAKE) $$t || failed="$$failed $$t"; done; \
	if [ -n "$$failed" ]; then echo "make check: FAILED:$$failed"; exit 1; fi; \
	echo "make check: passed ($(CHECK_TARGETS))"'

# The include layering rules (scripts/check-layering.py: util/ stands
# alone, block/ knows no consumer, a driver includes no other driver's
# header, exports and tools include only consumer headers): first the
# checker's self-test, then the tree. Needs no build.
.PHONY: check-layering
check-layering:
	$(Q)tests/layering/selftest.sh
	$(Q)scripts/check-layering.py

# Runs every unit test binary (Check in fork mode), TEST_JOBS at a time
# (tests/run-parallel.sh), then reports.
.PHONY: check-unit
check-unit: $(RUN_TEST_BINS)
	@CK_FORK=yes tests/run-parallel.sh -j $(TEST_JOBS) -t $(TEST_TIMEOUT) -l TEST -n check-unit $(RUN_TEST_BINS)

# Runs every executable tests/integration/*.sh with BLOCKGRAPH set,
# TEST_JOBS at a time (the scripts are independent: own temporary
# directories, ports picked at run time), the INTEGRATION_FIRST ones first;
# exit status 77 means skipped.  Sourced libraries (lib-*.sh, *-lib.sh) are
# not executable and are ignored; any other script that is not executable
# fails the run (it would silently never run).  The last line is
# "check-integration: N passed, N failed[, N skipped]".  Under
# scripts/with-ceph.sh (the rbd tests find the cluster in BG_CEPH_DIR; an
# outer "make check" passes its own).
.PHONY: check-integration check-integration-run
check-integration: $(BIN)
	$(Q)$(WITH_CEPH) $(MAKE) check-integration-run
check-integration-run: $(BIN)
	@rc=0; for t in $(INTEGRATION_SCRIPTS); do [ -x "$$t" ] && continue; \
	    case $${t##*/} in lib-*|*-lib.sh) echo "  IGNORE  $$t (a sourced library)" ;; \
	    *) echo "  FAIL    $$t is not executable (chmod +x it, or name a sourced library lib-*.sh)"; rc=1 ;; esac; \
	done; \
	BLOCKGRAPH='$(abspath $(BIN))' BG_SRCDIR='$(SRCDIR)' BG_BUILD_DIR='$(abspath $(B))' \
	    tests/run-parallel.sh -j $(TEST_JOBS) -t $(TEST_TIMEOUT) -s -l ITEST -n check-integration \
	    $$(for t in $(INTEGRATION_ORDERED); do [ -x "$$t" ] && echo "./$$t"; done) || rc=1; \
	exit $$rc

# make check-crash N=1000: the SIGKILL crash test (tests/integration/
# qcow2-crash.sh: a qcow2 writer killed under load, then qemu-img check and
# every fsync'd write verified) with N iterations (default 1000) spread over
# its variants; "make check" runs it with its default of 25 (5 per variant).
.PHONY: check-crash
check-crash: $(BIN)
	$(Q)BLOCKGRAPH='$(abspath $(BIN))' BG_SRCDIR='$(SRCDIR)' BG_BUILD_DIR='$(abspath $(B))' \
	    BG_CRASH_ITERATIONS='$(or $(N),1000)' tests/integration/qcow2-crash.sh

# make check-powerloss: the power-loss replay campaign (tests/powerloss/
# powerloss.py, docs/reliability.md): every workload recorded through
# blklogwrites, replayed to every flush point and STATES_PER_FLUSH random
# crash states between flushes, each checked with qemu-img check, the
# opens and the fsync-acknowledged data. N: writer operations per thread
# and run (default 150); POWERLOSS_WORKLOADS (default all);
# POWERLOSS_DAEMON=qsd runs QEMU's qcow2 through the same harness.
# "make check" runs the fast subset (tests/integration/powerloss-quick.sh).
.PHONY: check-powerloss
check-powerloss: $(BIN)
	$(Q)BLOCKGRAPH='$(abspath $(BIN))' tests/powerloss/powerloss.py --ops '$(or $(N),150)' \
	    --states-per-flush '$(or $(STATES_PER_FLUSH),4)' --workloads '$(or $(POWERLOSS_WORKLOADS),all)' \
	    --daemon '$(or $(POWERLOSS_DAEMON),blockgraph)' --jobs '$(TEST_JOBS)'

# The unit tests and the tests that feed blockgraph hostile input, again
# under ASan+UBSan (build in $(B)/asan); any report aborts the test.  For
# the integration tests sanitizer output goes to $(B)/asan/reports/ (ASan's
# one-time swapcontext warning would otherwise change the stderr the tests
# compare with qemu-io's); an error report there fails the run too.  (Not
# for the unit tests: the log file would take the descriptor numbers that
# test-io expects to stay closed.)
ASAN_INTEGRATION ?= tests/integration/qcow2-read.sh tests/integration/io-errors.sh tests/integration/qcow2-write-errors.sh \
    tests/integration/qmp-jobs.sh tests/integration/qmp-jobs-stop.sh
# With TEST_JOBS > 1 the unit tests and these scripts run at the same time,
# each part TEST_JOBS / 2 at a time (the unit tests' output is printed after).
ASAN_UNIT_JOBS = $(if $(filter 1,$(TEST_JOBS)),1,$(shell echo $$(( $(TEST_JOBS) / 2 ))))
SAN_REPORTS = $(abspath $(B))/asan/reports
SAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:log_path=$(SAN_REPORTS)/asan \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(SAN_REPORTS)/ubsan
.PHONY: check-asan
check-asan:
	$(Q)if grep -q -- '-fsanitize=address' <<<'$(CXXFLAGS)'; then \
	    echo "  ASAN    skipped: this build is already sanitized (check-unit ran it)"; exit 0; fi; \
	set -e; rm -rf '$(SAN_REPORTS)'; mkdir -p '$(SAN_REPORTS)'; chmod 1777 '$(SAN_REPORTS)'; \
	$(MAKE) SANITIZE=1 BUILD_DIR=$(B)/asan $(B)/asan/blockgraph; \
	reports() { if grep -l -E 'ERROR: |runtime error|SUMMARY: ' '$(SAN_REPORTS)'/* 2>/dev/null; then \
	    echo "  FAIL    sanitizer reports in $(SAN_REPORTS):"; \
	    grep -h -E 'ERROR: |runtime error|SUMMARY: ' '$(SAN_REPORTS)'/* | head -20; return 1; fi; }; \
	$(MAKE) SANITIZE=1 BUILD_DIR=$(B)/asan $(TEST_BINS:$(B)/%=$(B)/asan/%); \
	unit() { ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    $(MAKE) SANITIZE=1 BUILD_DIR=$(B)/asan check-unit TEST_JOBS=$(ASAN_UNIT_JOBS); }; \
	integ() { $(SAN_ENV) BLOCKGRAPH='$(abspath $(B))/asan/blockgraph' BG_SRCDIR='$(SRCDIR)' BG_BUILD_DIR='$(abspath $(B))/asan' \
	    tests/run-parallel.sh -j $(ASAN_UNIT_JOBS) -t $(TEST_TIMEOUT) -l ITEST -n 'check-asan (integration)' \
	    $(ASAN_INTEGRATION:%=./%); }; \
	rc=0; \
	if [ $(TEST_JOBS) = 1 ]; then unit || rc=1; integ || rc=1; \
	else ulog='$(B)/asan/check-unit.log'; { unit >"$$ulog" 2>&1; echo $$? >"$$ulog.rc"; } & \
	    integ || rc=1; wait; cat "$$ulog"; [ "$$(cat "$$ulog.rc")" = 0 ] || rc=1; fi; \
	reports || rc=1; \
	[ $$rc = 0 ]; \
	echo "check-asan: passed"

# ---------------------------------------------------------------------------
# Benchmarks (never part of check).

.PHONY: bench $(BENCH_PROG_TARGETS)
bench: $(BENCH_BINS)
	$(Q)for t in $(BENCH_TARGETS); do $(MAKE) $$t || exit 1; done

# blockgraph img vs qemu-img in one run: convert qcow2->raw, raw->qcow2 and
# raw->qcow2 -c on a 2 GiB image of mixed data and holes, and bench with the
# same arguments; medians and ratios (bench/img.sh; RUNS, BENCH_DIR, BENCH_SIZE).
.PHONY: bench-img
BENCH_TARGETS += bench-img
bench-img: $(BIN)
	$(Q)BLOCKGRAPH='$(abspath $(BIN))' bench/img.sh

# Filling a mounted image: dd, a 1 GiB copy and qemu-img convert -n onto a
# fresh qcow2 FUSE mount, blockgraph daemon vs qemu-storage-daemon alternately,
# detect-zeroes off/on, medians and ratios, results checked by qemu-img
# compare; with HARNESS set also fio seqwrite-1m-qd16-direct with
# cache.direct=on: bench/fill.sh (root; RUNS, BENCH_DIR, CASES, HARNESS).
.PHONY: bench-fill
BENCH_TARGETS += bench-fill
bench-fill: $(BIN)
	$(Q)BLOCKGRAPH='$(abspath $(BIN))' bench/fill.sh

# FUSE export vs qemu-storage-daemon (and qemu-img bench), interleaved in one
# run, table of medians and ratios: bench/fuse.sh (root, fio, qemu-storage-daemon;
# knobs such as ROUNDS, RUNTIME, FORMATS, WORKLOADS are passed on).
.PHONY: bench-fuse
bench-fuse: $(BIN)
	$(Q)BLOCKGRAPH='$(abspath $(BIN))' bench/fuse.sh

# NBD: blockgraph nbd and blockgraph daemon's nbd export vs qemu-nbd and
# qemu-storage-daemon (fio's nbd engine), and img bench vs qemu-img bench on
# nbd+unix://, interleaved in one run, medians and ratios: bench/nbd.sh
# (fio with the nbd engine; ROUNDS, RUNTIME, SIZE, FORMATS, CONFIGS, CACHE).
.PHONY: bench-nbd
BENCH_TARGETS += bench-nbd
bench-nbd: $(BIN)
	$(Q)BLOCKGRAPH='$(abspath $(BIN))' bench/nbd.sh

# blockgraph's rbd driver vs QEMU's on a one-node Ceph cluster it starts
# itself: img bench vs qemu-img bench, a FUSE export of an rbd image by our
# daemon vs qemu-storage-daemon, fio's rbd engine as the ceiling; interleaved,
# medians and ratios: bench/rbd.sh (root for FUSE; ROUNDS, RUNTIME, SIZE).
.PHONY: bench-rbd
BENCH_TARGETS += bench-rbd
bench-rbd: $(BIN)
	$(Q)BLOCKGRAPH='$(abspath $(BIN))' bench/rbd.sh

# Block jobs (mirror, stream, commit, backup) against qemu-storage-daemon,
# interleaved, medians and ratios: bench/jobs.py (RUNS, BENCH_DIR,
# JOBS_MIB: MiB of data, default 1024).
.PHONY: bench-jobs
BENCH_TARGETS += bench-jobs
bench-jobs: $(BIN)
	$(Q)bench/jobs.py '$(abspath $(BIN))' $(or $(JOBS_MIB),1024)

$(BENCH_PROG_TARGETS): bench-%: $(B)/bench/%
	$(if $(CONFIG_DEBUG)$(CONFIG_ASAN),@echo "  WARNING benchmarking a debug/asan build")
	$(call msg,BENCH,$<)
	$(Q)$< $(BENCH_ARGS)

# ---------------------------------------------------------------------------
# Install, demo, deps, clean.

DESTDIR ?=
PREFIX ?= /usr/local
DOCS := README.md $(sort $(wildcard docs/*.md))

.PHONY: install uninstall install-qemu-links uninstall-qemu-links
install: $(BIN)
	$(call msg,INSTALL,$(DESTDIR)$(PREFIX))
	$(Q)install -d '$(DESTDIR)$(PREFIX)/bin' '$(DESTDIR)$(PREFIX)/share/doc/blockgraph'
	$(Q)install -m 755 $(BIN) '$(DESTDIR)$(PREFIX)/bin/blockgraph'
	$(Q)install -m 644 $(DOCS) '$(DESTDIR)$(PREFIX)/share/doc/blockgraph/'
ifeq ($(CONFIG_QEMU_LINKS),1)
	$(Q)scripts/qemu-links.sh install '$(DESTDIR)$(PREFIX)/bin'
endif

# The drop-in links qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon ->
# blockgraph (never by default: ./configure --with-qemu-links or this
# target; an existing file that is not such a link is never replaced).
install-qemu-links: install
	$(Q)scripts/qemu-links.sh install '$(DESTDIR)$(PREFIX)/bin'

uninstall-qemu-links:
	$(Q)scripts/qemu-links.sh uninstall '$(DESTDIR)$(PREFIX)/bin'

uninstall: uninstall-qemu-links
	$(Q)rm -f '$(DESTDIR)$(PREFIX)/bin/blockgraph'
	$(Q)rm -rf '$(DESTDIR)$(PREFIX)/share/doc/blockgraph'

.PHONY: deps
deps:
	$(Q)scripts/install-deps.sh

.PHONY: demo
demo:
	$(Q)if [ "$(BG_NO_DEPS)" = 1 ]; then echo "  DEPS    skipped (BG_NO_DEPS=1)"; \
	    else scripts/install-deps.sh; fi
	$(Q)$(MAKE) $(BIN)
	$(Q)BLOCKGRAPH='$(abspath $(BIN))' scripts/demo.sh

# The same on Ceph: a qcow2 image stored in an rbd image of a one-node
# cluster that the script starts and stops (scripts/demo-rbd.sh).
.PHONY: demo-rbd
demo-rbd:
	$(Q)if [ "$(BG_NO_DEPS)" = 1 ]; then echo "  DEPS    skipped (BG_NO_DEPS=1)"; \
	    else scripts/install-deps.sh; fi
	$(Q)$(MAKE) $(BIN)
	$(Q)BLOCKGRAPH='$(abspath $(BIN))' scripts/demo-rbd.sh

.PHONY: clean distclean
clean:
	$(call msg,CLEAN,$(B))
	$(Q)rm -rf '$(B)'

distclean: clean
	$(Q)rm -f config.mk

.PHONY: help
help:
	@echo 'Targets:'
	@echo '  all (default)      build $(B)/blockgraph, unit tests and benchmarks'
	@echo '  check              install deps, build, run: $(CHECK_TARGETS)'
	@echo '                     (under one Ceph cluster: scripts/with-ceph.sh, BG_CEPH_DIR)'
	@echo '  check-unit         run $(B)/tests/unit/test-* (TESTS="test-x ..." to filter)'
	@echo '  check-integration  run tests/integration/*.sh with BLOCKGRAPH set'
	@echo '  check-crash        the qcow2 SIGKILL crash test, N=1000 iterations'
	@echo '  check-powerloss    the power-loss replay campaign (N, STATES_PER_FLUSH)'
	@echo '  check-layering     check #include lines against the layering rules'
	@echo '  bench              run $(or $(BENCH_TARGETS),the bench-* targets) one at a time'
	@echo '  bench-NAME         build and run $(B)/bench/NAME (BENCH_ARGS=...)'
	@echo '  demo               install deps, build, run scripts/demo.sh'
	@echo '  demo-rbd           the same with the image on a one-node Ceph cluster'
	@echo '                     (scripts/demo-rbd.sh)'
	@echo '  deps               install missing Debian packages (scripts/install-deps.sh)'
	@echo '  install/uninstall  to $$(DESTDIR)$$(PREFIX) (PREFIX from configure)'
	@echo '  install-qemu-links also link qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon'
	@echo '                     to blockgraph (never over a real QEMU binary)'
	@echo '  clean / distclean  remove $(B)/ (and config.mk)'
	@echo 'Variables: V=1 (show commands), BUILD_DIR=dir, WERROR=0, BG_NO_DEPS=1,'
	@echo '  TEST_TIMEOUT=seconds, TEST_JOBS=2 (tests at a time), TESTS=..., BENCH_ARGS=...'

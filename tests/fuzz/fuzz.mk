# tests/fuzz/fuzz.mk -- libFuzzer targets; included by the top Makefile
# ("include tests/fuzz/fuzz.mk" after the variables LIB_SRCS, B, CPPFLAGS and
# LIBS are defined).
#
#   make fuzz         builds $(B)/fuzz/fuzz-<name> for every tests/fuzz/fuzz-<name>.cc
#   make check-fuzz   runs each for FUZZ_TIME seconds (default 60) on a copy of
#                     its seed corpus tests/fuzz/corpus-<name>/ ; fails on a crash,
#                     a leak, an ASan/UBSan report or a timeout; prints each
#                     target's executions and coverage (libFuzzer's last
#                     status line: cov = edges, ft = features, corp = inputs)
#   make fuzz-long HOURS=N   the same with N hours per target (FUZZ_JOBS at a
#                     time), for long campaigns (docs/reliability.md)
#
# The library is compiled again with clang++ and -fsanitize=address,undefined
# (plus fuzzer-no-link coverage) into $(B)/fuzz/obj/, separately from the
# normal build. Variables: FUZZ_CXX (clang++), FUZZ_TIME, FUZZ_ARGS (extra
# libFuzzer flags, e.g. -jobs=4), FUZZ_JOBS (targets run at the same time,
# default 2).

FUZZ_CXX ?= clang++
FUZZ_TIME ?= 60
FUZZ_ARGS ?=
FUZZ_JOBS ?= 2
FUZZ_DIR := $(B)/fuzz
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CXXFLAGS := -std=c++20 -O1 -g -pthread -Wall -Wextra -Wno-missing-field-initializers -DBG_ASAN=1 $(FUZZ_SAN)
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz-*.cc))
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.cc=$(FUZZ_DIR)/%)
FUZZ_LIB_OBJS := $(LIB_SRCS:%.cc=$(FUZZ_DIR)/obj/%.o)

$(FUZZ_LIB_OBJS): $(FUZZ_DIR)/obj/%.o: %.cc
	$(call msg,FUZZCXX,$<)
	@mkdir -p $(@D)
	$(Q)$(FUZZ_CXX) $(CPPFLAGS) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

$(FUZZ_BINS): $(FUZZ_DIR)/%: tests/fuzz/%.cc $(FUZZ_LIB_OBJS)
	$(call msg,FUZZLD,$@)
	@mkdir -p $(@D)
	$(Q)$(FUZZ_CXX) $(CPPFLAGS) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer -MMD -MP -MF $@.d -o $@ $< \
	    $(FUZZ_LIB_OBJS) $(LIBS)

-include $(FUZZ_LIB_OBJS:.o=.d) $(FUZZ_BINS:=.d)

.PHONY: fuzz check-fuzz fuzz-long
fuzz: $(FUZZ_BINS)

HOURS ?= 1
fuzz-long:
	$(Q)$(MAKE) --no-print-directory check-fuzz FUZZ_TIME=$$(( $(HOURS) * 3600 ))

# Each target runs on a scratch copy of its seed corpus (new inputs stay out
# of the source tree), bounded in time, memory and per-input run time.
# FUZZ_JOBS targets run at the same time (libFuzzer uses one core each, so
# on two cores two targets get as many executions as one after another);
# each one's result is printed, in order, when all are done.
check-fuzz: fuzz
	@rm -f "$(FUZZ_DIR)"/*.result "$(FUZZ_DIR)"/*.failed; \
	one() { \
	    local f=$$1 name=$${1##*/fuzz-} seeds work; seeds=tests/fuzz/corpus-$$name; \
	    work=$$(mktemp -d "$${TMPDIR:-/tmp}/bg-fuzz-$$name.XXXXXX"); \
	    [ -d "$$seeds" ] && cp "$$seeds"/* "$$work"/ 2>/dev/null; \
	    echo "  FUZZ    $$f ($(FUZZ_TIME) s, seeds $$seeds)"; \
	    if ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	        $$f -max_total_time=$(FUZZ_TIME) -timeout=20 -rss_limit_mb=2560 -max_len=2097152 \
	            -artifact_prefix="$(FUZZ_DIR)/" $(FUZZ_ARGS) "$$work" >"$(FUZZ_DIR)/$$name.log" 2>&1; then \
	        { grep -E '^#[0-9]+' "$(FUZZ_DIR)/$$name.log" | tail -n 1; tail -n 1 "$(FUZZ_DIR)/$$name.log"; } | \
	            sed 's/^/          /'; \
	    else \
	        echo "  FAIL    $$f: see $(FUZZ_DIR)/$$name.log and the crash-* / timeout-* files in $(FUZZ_DIR)/"; \
	        grep -E "ERROR|SUMMARY|runtime error" "$(FUZZ_DIR)/$$name.log" | head -5; \
	        touch "$(FUZZ_DIR)/$$name.failed"; \
	    fi; \
	    rm -rf "$$work"; \
	}; \
	for f in $(FUZZ_BINS); do \
	    while [ "$$(jobs -rp | wc -l)" -ge $(FUZZ_JOBS) ]; do wait -n; done; \
	    one "$$f" >"$(FUZZ_DIR)/$${f##*/fuzz-}.result" 2>&1 & \
	done; \
	wait; \
	failed=; \
	for f in $(FUZZ_BINS); do \
	    name=$${f##*/fuzz-}; cat "$(FUZZ_DIR)/$$name.result"; \
	    [ -e "$(FUZZ_DIR)/$$name.failed" ] && failed="$$failed $$name"; \
	done; \
	[ -z "$$failed" ] || { echo "check-fuzz: failed:$$failed"; exit 1; }; \
	echo "check-fuzz: passed"

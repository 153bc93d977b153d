# agentd - a tiny static PID 1 and guest agent for microVMs.
#
#   make            build ./agentd (musl, static) and ./agentctl (host CLI)
#   make check      unit tests (ASan+UBSan and musl), vectors, host-mode
#                   integration tests, VM tests when QEMU and a kernel exist
#   make fuzz       run every libFuzzer target for FUZZ_SECONDS each
#   make size       print the agent's size
#   make mutants    build deliberate bugs (test/mutants.txt) and check that
#                   the tests named for each one catch it
#   make bench      benchmarks (PEER=1 also measures microsandbox's agent; RUNS=3
#                   takes the median of three runs; BASELINE=REV adds the host
#                   fs figures of agentd at REV)
#   make ARCH=aarch64  static build/aarch64/agentd and agentctl (cross musl)
#   make dist       release binaries for x86_64 and aarch64 + SHA256SUMS

MUSL_CC   ?= musl-gcc
HOST_CC   ?= cc
SAN_CC    ?= clang
PYTHON    ?= /usr/bin/python3
FUZZ_SECONDS ?= 60
HOST_ARCH := $(shell uname -m)
ARCH      ?= $(HOST_ARCH)

WARN      = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CSTD      = -std=gnu11 -D_GNU_SOURCE
HARDEN    = -fstack-protector-strong -D_FORTIFY_SOURCE=2
CFLAGS_AGENT = $(CSTD) $(WARN) $(HARDEN) -Os -ffunction-sections -fdata-sections \
	-fno-asynchronous-unwind-tables -fno-unwind-tables -fno-pie
# common-page-size=16: ld may pad the file up to a page before the data
# segment to save a page of memory (it did, 1.3 KB); the segments stay
# congruent to the (max) page size, as the kernel's loader needs.
LDFLAGS_AGENT = -static -no-pie -s -Wl,--gc-sections -Wl,-z,norelro -Wl,--build-id=none \
	-Wl,-z,noseparate-code -Wl,-z,common-page-size=16
SAN_FLAGS = $(CSTD) $(WARN) -g -O1 -fno-omit-frame-pointer \
	-fsanitize=address,undefined -fno-sanitize-recover=all

# The agent speaks only the seed generation: leave the g7 codec tables out.
# Link-time optimisation: one unit, unused code dropped across files.
AGENT_DEFS = -DAGENTD_SEED_ONLY
AGENT_LTO  = -flto -flto-partition=one
# The agent is measured in bytes (issue 13: <= 80 KB); its hot path is system
# calls, so -Oz costs nothing measurable there (agentctl keeps -Os).  The
# rest are what measured smaller, none of them changes a check.
# -fstack-protector (after -strong in CFLAGS_AGENT, so it wins) keeps the
# canary on every function with a char buffer, the overflow that matters;
# -strong also guards every local array and address-taken local, 2.7 KB
# more than the agent's budget has room for.  agentctl keeps -strong.
AGENT_OPT  = -Oz -fipa-pta -fno-jump-tables -fno-caller-saves -fno-tree-dominator-opts \
	-fno-ipa-sra -fno-shrink-wrap -fstack-protector
# The agent's own small malloc, plain system call wrappers and string spans
# in place of musl's (not in agentd-san: the sanitizers keep theirs).
AGENT_ALLOC = alloc.c syscalls.c smallstr.c
# What must never be linked next to syscalls.c: functions that signal the
# calling thread by musl's cached tid (stale in a child of its raw fork) or
# read musl's own DIR layout.  --wrap turns any call to them into an
# undefined __wrap_NAME, so such a link fails.
AGENT_GUARD = $(foreach f,raise abort pthread_kill telldir seekdir scandir readdir_r,-Wl,--wrap=$(f))
AGENT_SRCS = agentd.c protocol.c session.c fsops.c fsworker.c heartbeat.c init.c initcfg.c netlink.c fmt.c userdb.c
AGENT_HDRS = agent.h protocol.h initcfg.h netlink.h fmt.h userdb.h rawsys.h
CTL_SRCS   = agentctl.c ctl_transport.c ctl_exec.c ctl_files.c protocol.c

.PHONY: all check unit integration vmtest fuzz size bench clean dist disttest mutants

all: $(if $(filter $(HOST_ARCH),$(ARCH)),agentd agentctl,build/$(ARCH)/agentd build/$(ARCH)/agentctl)

agentd: $(AGENT_SRCS) $(AGENT_ALLOC) $(AGENT_HDRS)
	$(MUSL_CC) $(CFLAGS_AGENT) $(AGENT_DEFS) $(AGENT_LTO) $(AGENT_OPT) -o $@ $(AGENT_SRCS) $(AGENT_ALLOC) \
		$(LDFLAGS_AGENT) $(AGENT_GUARD)

agentctl: $(CTL_SRCS) ctl.h protocol.h
	$(MUSL_CC) $(CFLAGS_AGENT) -o $@ $(CTL_SRCS) $(LDFLAGS_AGENT)

# The agent built with sanitizers, run by the integration tests too.
agentd-san: $(AGENT_SRCS) $(AGENT_HDRS)
	$(SAN_CC) $(SAN_FLAGS) $(AGENT_DEFS) -o $@ $(AGENT_SRCS)

size: agentd
	@stat -c '%s bytes  agentd' agentd

# ---- unit tests: the same sources under ASan+UBSan and under musl ----
test/unit-san: test/unit.c test/test_protocol.c test/test_initcfg.c test/test_support.c protocol.c initcfg.c fmt.c userdb.c $(AGENT_HDRS) test/unit.h fuzz/fuzz_common.h
	$(SAN_CC) $(SAN_FLAGS) -I. -o $@ test/unit.c test/test_protocol.c test/test_initcfg.c test/test_support.c protocol.c initcfg.c fmt.c userdb.c

test/unit-musl: test/unit.c test/test_protocol.c test/test_initcfg.c test/test_support.c protocol.c initcfg.c fmt.c userdb.c $(AGENT_HDRS) test/unit.h fuzz/fuzz_common.h
	$(MUSL_CC) $(CSTD) $(WARN) -O2 -I. -static -o $@ test/unit.c test/test_protocol.c test/test_initcfg.c test/test_support.c protocol.c initcfg.c fmt.c userdb.c

unit: test/unit-san test/unit-musl
	./test/unit-san test/vectors
	./test/unit-musl test/vectors

integration: agentd agentd-san agentctl
	$(PYTHON) -m pytest -q test/
	$(PYTHON) -m pytest -q -p no:cacheprovider bench/test_g7host.py
	$(PYTHON) -m pytest -q -p no:cacheprovider python/tests/
	AGENTD=$(CURDIR)/agentd-san $(PYTHON) -m pytest -q -m "not slow" test/

vmtest: agentd agentctl
	./test/vm/run-vm-tests

check: unit integration vmtest disttest fuzz mutants
	@echo "make check: all suites passed"

# Each mutant is built in a scratch copy of the tree and only its own tests
# run (tools/mutants); a mutant that no test catches fails the target.
mutants:
	$(PYTHON) tools/mutants

# ---- fuzzing (clang libFuzzer) ----
FUZZ_TARGETS = fuzz/fuzz-frames fuzz/fuzz-payload fuzz/fuzz-initcfg fuzz/fuzz-agent
FUZZ_FLAGS = $(CSTD) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I.

fuzz/fuzz-frames: fuzz/fuzz_frames.c fuzz/fuzz_common.h protocol.c protocol.h
	$(SAN_CC) $(FUZZ_FLAGS) -o $@ fuzz/fuzz_frames.c protocol.c
fuzz/fuzz-payload: fuzz/fuzz_payload.c fuzz/fuzz_common.h protocol.c protocol.h
	$(SAN_CC) $(FUZZ_FLAGS) -o $@ fuzz/fuzz_payload.c protocol.c
fuzz/fuzz-initcfg: fuzz/fuzz_initcfg.c initcfg.c fmt.c initcfg.h fmt.h
	$(SAN_CC) $(FUZZ_FLAGS) -o $@ fuzz/fuzz_initcfg.c initcfg.c fmt.c

# The whole agent in-process, confined to a jail (fuzz/fuzz_agent.c; root).
fuzz/fuzz-agent: fuzz/fuzz_agent.c $(AGENT_SRCS) $(AGENT_HDRS)
	$(SAN_CC) $(FUZZ_FLAGS) -DAGENTD_FUZZ -Wno-unused-function -o $@ fuzz/fuzz_agent.c $(AGENT_SRCS)

fuzz: $(FUZZ_TARGETS)
	./fuzz/run-fuzzers $(FUZZ_SECONDS)

bench: agentd agentctl
	$(PYTHON) bench/bench.py $(if $(PEER),--peer) $(if $(RUNS),--runs $(RUNS)) $(if $(BASELINE),--baseline $(BASELINE))

# ---- other architectures, release binaries ----
# make ARCH=aarch64: static build/aarch64/agentd and agentctl (musl, with
# Debian's cross gcc and musl-dev:arm64; tools/install-deps installs them).
# make dist: dist/ holds the release binaries and SHA256SUMS, the same bytes
# from every clean build (test/test-dist checks two).
CC_x86_64  ?= musl-gcc
CC_aarch64 ?= aarch64-linux-gnu-gcc -specs /usr/lib/aarch64-linux-musl/musl-gcc.specs
DIST_ARCHS = x86_64 aarch64

build/%/agentd: $(AGENT_SRCS) $(AGENT_ALLOC) $(AGENT_HDRS)
	@mkdir -p $(@D)
	$(CC_$*) $(CFLAGS_AGENT) $(AGENT_DEFS) $(AGENT_LTO) $(AGENT_OPT) -o $@ $(AGENT_SRCS) $(AGENT_ALLOC) \
		$(LDFLAGS_AGENT) $(AGENT_GUARD)

build/%/agentctl: $(CTL_SRCS) ctl.h protocol.h
	@mkdir -p $(@D)
	$(CC_$*) $(CFLAGS_AGENT) -o $@ $(CTL_SRCS) $(LDFLAGS_AGENT)

dist: $(foreach a,$(DIST_ARCHS),build/$(a)/agentd build/$(a)/agentctl)
	rm -rf dist && mkdir dist
	for a in $(DIST_ARCHS); do for p in agentd agentctl; do \
		cp build/$$a/$$p dist/$$p-$$a || exit 1; done; done
	cd dist && sha256sum agentd-* agentctl-* > SHA256SUMS
	@cat dist/SHA256SUMS
	@stat -c '%s bytes  %n' dist/agentd-*

disttest:
	./test/test-dist

clean:
	rm -f agentd agentctl agentd-san test/unit-san test/unit-musl $(FUZZ_TARGETS)
	rm -rf dist $(foreach a,$(DIST_ARCHS),build/$(a))
	rm -rf test/__pycache__ .pytest_cache

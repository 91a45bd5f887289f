# Entry points of the multi-process QEMU test suite; see README.md.
#
#   make check        pytest suite (harness units against real QEMU)
#   make functional   Avocado suite (TAGS=a,b  AVOCADO_ARGS='-p accel=tcg')
#
# Both install what they need on a Debian 12 host: Debian packages (as
# root; otherwise the exact apt-get line is printed) and a venv in build/.

PYTHON ?= python3
BUILD := build
VENV := $(BUILD)/venv
VPY := $(VENV)/bin/python
JOB_RESULTS := $(BUILD)/job-results
TAGS ?=
AVOCADO_ARGS ?=
PYTEST_ARGS ?=

# Debian packages the suite needs at run time.
HOST_PACKAGES := qemu-system-x86 qemu-system-data seabios qemu-utils python3-venv gcc libc6-dev \
                 binutils lz4 kmod openssh-client mtools syslinux mmdebstrap chromium \
                 openssh-server gdb

# Each TAGS word becomes one tag filter: 'a,b' = both tags, 'a b' = either tag.
# SPEED=quick (the default) leaves out the tests tagged 'thorough', the long
# fuzz campaigns (1-4 min each), as QEMU's own tests/functional does with its
# quick and thorough speeds; SPEED=thorough runs them too.
SPEED ?= quick
ifeq ($(SPEED),quick)
TAG_ARGS := $(if $(TAGS),$(foreach t,$(TAGS),--filter-by-tags=$(t),-thorough),\
                         --filter-by-tags=-thorough)
else ifeq ($(SPEED),thorough)
TAG_ARGS := $(foreach t,$(TAGS),--filter-by-tags=$(t))
else
$(error SPEED must be quick or thorough, not '$(SPEED)')
endif

.PHONY: all check functional images host-deps venv list clean distclean

all: check

host-deps:
	@sh scripts/ensure-host-packages $(HOST_PACKAGES)

# The venv is rebuilt only when the dependency declarations change.
$(VENV)/.installed: setup.cfg setup.py
	@$(MAKE) --no-print-directory host-deps
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(VENV)/.installed

check: host-deps venv
	$(VPY) -m pytest $(PYTEST_ARGS)

# Before the first test, the suite's Avocado plugin (harness/tools/prepare.py)
# builds or finds what the selected tests need: a qemu_src or qemu_deb, the
# vfio-user client and server, the guest images and the agent, showing each
# build's progress; no test's timeout pays for one.
# After the job, pass or fail, its report (harness/tools/report.py):
# JOB_RESULTS/latest/report/index.html, beside Avocado's results.html.
functional: host-deps venv
	mkdir -p $(JOB_RESULTS)
	status=0; $(VENV)/bin/avocado --config tests/functional/avocado.conf run \
	    --job-results-dir $(JOB_RESULTS) $(TAG_ARGS) $(AVOCADO_ARGS) tests/functional \
	    || status=$$?; \
	$(VPY) -m harness.tools.report $(JOB_RESULTS)/latest || [ $$status -ne 0 ] || status=1; \
	exit $$status

# The suite spread over test hosts (README.md, "A fleet of test hosts"):
# make qualify HOSTS=hosts.json [TAGS=...]; results in build/job-results-fleet.
HOSTS ?=
.PHONY: qualify
qualify: host-deps venv
	@test -n "$(HOSTS)" || { echo "make qualify needs HOSTS=<hosts file> (README.md)" >&2; exit 2; }
	$(VPY) -m harness.tools.qualify --hosts '$(HOSTS)' --tags '$(TAGS)'

# Guest images from Debian packages and the agent (make functional builds them first too).
images: host-deps venv
	$(VPY) -m harness.tools.images build all

list: host-deps venv
	$(VENV)/bin/avocado --config tests/functional/avocado.conf -V list $(TAG_ARGS) tests/functional

clean:
	rm -rf $(JOB_RESULTS) $(BUILD)/cache $(BUILD)/avocado

distclean:
	rm -rf $(BUILD)

# Benchmarks of a remote device through the fake proxy (figures, not asserts),
# then disk IO inside booted guests: remote vs in-process LSI, same workloads.
BENCH_OUT ?= $(BUILD)/bench
.PHONY: bench
bench: host-deps venv
	$(VPY) -m harness.tools.bench --out $(BENCH_OUT)
	$(VPY) -m harness.tools.agent_bench --out $(BENCH_OUT)
	$(VPY) -m harness.tools.diskio_bench bench --out $(BENCH_OUT)

# Boot to console marker and to SSH, remote vs in-process LSI (minutes).
BOOT_RUNS ?= 5
.PHONY: bench-boot
bench-boot: host-deps venv
	$(VPY) -m harness.tools.bootbench --runs $(BOOT_RUNS) --out $(BENCH_OUT)

# A long protocol fuzzing run (CI runs the campaigns as they stand in the
# suite: `make functional SPEED=thorough TAGS=thorough`).
# FUZZ_TRANSPORT: proxy (mpqemu to x-remote-object) or vfio-user (to
# x-vfio-user-server, the vfio_user_server QEMU: a cached source build), or
# hostile-remote (the harness as the remote of the guest-facing QEMU, the
# agent's accesses answered with hostile replies: an Avocado job, findings
# and the summary in its test's data directory).
FUZZ_TRANSPORT ?= proxy
FUZZ_SEED ?= 1
FUZZ_MESSAGES ?= 200000
FUZZ_OUT ?= $(BUILD)/fuzz/$(FUZZ_TRANSPORT)-seed-$(FUZZ_SEED)
.PHONY: fuzz
ifeq ($(FUZZ_TRANSPORT),hostile-remote)
fuzz: host-deps venv
	$(VPY) -m harness.tools.images build agent
	$(VENV)/bin/avocado --config tests/functional/avocado.conf run --job-results-dir $(FUZZ_OUT) \
	    -p fuzz_seed=$(FUZZ_SEED) -p hostile_cases=$(FUZZ_MESSAGES) $(AVOCADO_ARGS) \
	    tests/functional/test_hostile_remote.py:HostileFuzz.test_hostile_replies
else
fuzz: host-deps venv
	$(VPY) -m harness.tools.fuzz --transport $(FUZZ_TRANSPORT) --seed $(FUZZ_SEED) \
		--messages $(FUZZ_MESSAGES) --out $(FUZZ_OUT)
endif

# QEMU built from source with multi-process support (cached in ~/.cache/mpqemu-tests/).
QEMU_SRC ?= debian:bookworm
.PHONY: qemu
qemu: host-deps venv
	$(VPY) -m harness.tools.qemu_build $(QEMU_SRC)

# The qualification matrix: build/matrix/matrix.{md,html,json}, one Avocado
# job over the variants of MATRIX (QEMU x accelerator x machine type, each
# !mux node an axis, expanded by Avocado's multiplexer).  Rows: scenario x
# transport (proxy, vfio-user, in-process); columns: the variants
# (harness/tools/matrix.py).  MATRIX_TAGS: Avocado tags, each word one
# filter.  MATRIX_ONLY: leaves to keep (/run/qemu/debian-7.2 /run/accel/tcg).
MATRIX ?= tests/matrix/qualification.yaml
MATRIX_TAGS ?= topology protocol qtest build agent vfio-user
MATRIX_ONLY ?=
.PHONY: matrix
matrix: host-deps venv
	@# Guest images first (seconds when cached): no test's timeout pays for a build.
	$(VPY) -m harness.tools.images build all
	$(VPY) -m harness.tools.matrix --variants '$(MATRIX)' --tags '$(MATRIX_TAGS)' \
	    $(if $(strip $(MATRIX_ONLY)),--only $(MATRIX_ONLY))

# The default suite RUNS times, HOG_RUNS of them (every other one for half)
# beside a HOG_THREADS-thread CPU hog: build/soak/soak.md and soak.json, per
# test its pass rate and what is unexpected (a FAIL, ERROR or INTERRUPTED,
# a status that changes between runs), per figure its spread, hog vs quiet.
# Each run is a `make functional` (preparation included) into build/soak/run-NN.
RUNS ?= 10
HOG_RUNS ?= $(shell expr $(RUNS) / 2)
HOG_THREADS ?= 2
SOAK_OUT ?= $(BUILD)/soak
.PHONY: soak
soak: host-deps venv
	$(VPY) -m harness.tools.soak --runs $(RUNS) --hog-runs $(HOG_RUNS) --hog-threads $(HOG_THREADS) \
	    --tags '$(TAGS)' --avocado-args "$(AVOCADO_ARGS)" --out $(SOAK_OUT)

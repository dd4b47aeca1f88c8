# Make targets for drover's integration tests; the top-level Makefile includes this file.
#   make test-setup   prepare this machine (as root): host packages, the moto venv and the
#                     cached Debian root filesystem, under $(DROVER_TEST_CACHE)
#   make test-boot-stats   boot a few instances and print boot time and memory per container
#   make check-modules  no import cycles in agent/src, no file over 600 lines of code (part of
#                     `make check`, so of `make test`)
#   make race         the app-user race test (issue 13) as a soak: RACE_SECONDS, default 300
#   make transcripts  what an operator sees (journal events, `status --json`) of the e2e
#                     scenarios, from the build of TRANSCRIPT_BASE (a git revision, default
#                     HEAD) against this tree's: both written to target/transcripts, then diffed
#   make bench        the shipped binary against sha256sum, tar and boto3 on this machine, in
#                     one run (BENCH_RUNS, BENCH_DIR, BENCH_QUICK=1); not part of `make test`

TESTS_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
DROVER_TEST_CACHE ?= /var/cache/drover-test
export DROVER_TEST_CACHE

.PHONY: test-setup test-boot-stats bench race check-modules transcripts

test-setup:
	sh $(TESTS_DIR)/scripts/setup.sh

# The containers install target/debug/drover, which `cargo test` does not build by itself.
test-boot-stats: test-setup build
	$(CARGO) run -q --locked -p drover-tests --example boot_stats

bench: test-setup static
	$(CARGO) build --locked -p drover-tests --bin bench
	$(CARGO_TARGET_DIR)/debug/bench

RACE_SECONDS ?= 300
race: test-setup build
	DROVER_RACE_SECONDS=$(RACE_SECONDS) $(CARGO) test --locked -p drover-tests --test integration \
		-- --nocapture --exact adversarial::the_app_user_racing_the_tree_walks_reaches_nothing_outside

CHECKS += check-modules
check-modules:
	python3 $(TESTS_DIR)/scripts/module-cycles.py agent/src

# One test at a time, so that the names the harness numbers (parameters, buckets) come out the
# same in both runs. The base revision is built in a worktree with this tree's target directory, so only drover
# itself compiles again; its binary is copied aside before this tree's is built back.
TRANSCRIPT_BASE ?= HEAD
TRANSCRIPTS := $(CARGO_TARGET_DIR)/transcripts
TRANSCRIPT_TESTS ?= e2e::
transcripts: test-setup
	rm -rf $(TRANSCRIPTS) && mkdir -p $(TRANSCRIPTS)
	git worktree add --detach $(TRANSCRIPTS)/src $(TRANSCRIPT_BASE)
	cd $(TRANSCRIPTS)/src && $(CARGO) build --locked -p drover --bin drover \
		--target-dir $(abspath $(CARGO_TARGET_DIR))
	cp $(CARGO_TARGET_DIR)/debug/drover $(TRANSCRIPTS)/drover-base
	git worktree remove --force $(TRANSCRIPTS)/src
	$(MAKE) build
	DROVER_BIN=$(abspath $(TRANSCRIPTS))/drover-base DROVER_TRANSCRIPTS=$(abspath $(TRANSCRIPTS))/base \
		$(CARGO) test --locked -p drover-tests --test integration -- --test-threads=1 $(TRANSCRIPT_TESTS)
	DROVER_TRANSCRIPTS=$(abspath $(TRANSCRIPTS))/tree \
		$(CARGO) test --locked -p drover-tests --test integration -- --test-threads=1 $(TRANSCRIPT_TESTS)
	diff -ru $(TRANSCRIPTS)/base $(TRANSCRIPTS)/tree && echo "transcripts: no difference"

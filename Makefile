# drover's one entry point. `make test` and `make demo` set up everything they need on a fresh
# Debian machine (as root): host packages, the moto venv and the container root filesystem.

SHELL := /bin/bash
CARGO ?= cargo
# CI clones afresh each time; keeping its build outside the checkout keeps the AWS SDK warm.
ifeq ($(CI),true)
export CARGO_TARGET_DIR ?= /var/cache/drover-build/target
else
export CARGO_TARGET_DIR ?= $(CURDIR)/target
endif
export DROVER_BIN ?= $(CARGO_TARGET_DIR)/debug/drover

.PHONY: all build test test-unit demo static check fmt clippy clean

all: build

# Fragments add their own targets, and their checks to CHECKS (run by `make check`).
CHECKS :=
include tests/test.mk
-include packaging/packaging.mk
-include systemd/systemd.mk
-include cloud-init/cloud-init.mk
-include agent/fuzz/fuzz.mk

# The one debug build: every target that uses it (demo, test, the checks) depends on it rather
# than building a subset, which would resolve other features (tests/Cargo.toml says why) and
# compile the AWS SDK a second time.
build:
	$(CARGO) build --workspace --all-targets --locked

# How many tests run at once, set here rather than taken from the machine's core count. The
# integration tests (one binary) mostly wait on containers, polls and health checks: on 2 cores
# 3 at a time took 282 s, 2 took 350 s, and 4 took 268 s but stretched the load-sensitive tests
# (docs/PERFORMANCE.md, "Build and test times"). Tests that need the machine alone say so.
TEST_THREADS ?= 3

## What CI runs (.ci/run), a step a line: `make check` (fmt, clippy -D warnings, and the checks
## the fragments add: unit files, rendered user-data, CloudFormation, cargo-deny) without the
## RustSec advisories, which need GitHub; the release packages; then unit tests, integration
## tests against moto and container scenarios with real systemd (tests/packages.rs installs the
## .deb just checked).
test: test-setup build
	$(MAKE) --no-print-directory check DENY_OFFLINE=1
	$(MAKE) --no-print-directory check-dist
	$(CARGO) test --workspace --locked --no-fail-fast -- --test-threads=$(TEST_THREADS)

test-unit: build
	$(CARGO) test --workspace --locked --lib

## The main job: an instance deploying, upgrading and rolling back an app, narrated.
demo: test-setup build
	$(CARGO_TARGET_DIR)/debug/demo

## The shipped binary: glibc linked statically (runs in an empty chroot), size-tuned profile.
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_BIN := $(CARGO_TARGET_DIR)/$(STATIC_TARGET)/release/drover
export DROVER_STATIC_BIN ?= $(STATIC_BIN)
STATIC_RUSTFLAGS := -C target-feature=+crt-static -C force-unwind-tables=no -C link-arg=-Wl,-z,pack-relative-relocs
static:
	RUSTFLAGS='$(STATIC_RUSTFLAGS)' $(CARGO) build --release --locked -p drover --target $(STATIC_TARGET)
	@# Unwind tables (1 MB, mostly from the prebuilt std and glibc): panics abort, nothing unwinds.
	objcopy --remove-section=.eh_frame --remove-section=.eh_frame_hdr $(STATIC_BIN)
	@ls -l $(STATIC_BIN) | awk '{printf "static binary: %s, %d bytes (%.2f MiB)\n", $$9, $$5, $$5/1048576}'

check: fmt clippy $(CHECKS)

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean

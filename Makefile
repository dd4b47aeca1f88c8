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

.PHONY: all build test test-unit demo static static-all check fmt clippy clean

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
## `make static ARCH=aarch64` builds Graviton's, with Debian's cross toolchain
## (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross; tests/scripts/setup.sh installs them, and
## rustup's aarch64-unknown-linux-gnu target). `make static-all` builds both.
ARCH ?= x86_64
STATIC_ARCHES := x86_64 aarch64
static-bin = $(CARGO_TARGET_DIR)/$(1)-unknown-linux-gnu/release/drover
STATIC_TARGET := $(ARCH)-unknown-linux-gnu
STATIC_BIN := $(call static-bin,$(ARCH))
export DROVER_STATIC_BIN ?= $(call static-bin,x86_64)
export DROVER_STATIC_BIN_AARCH64 ?= $(call static-bin,aarch64)
STATIC_RUSTFLAGS := -C target-feature=+crt-static -C force-unwind-tables=no -C link-arg=-Wl,-z,pack-relative-relocs
# aarch64: position-independent objects, linked as a static PIE by a wrapper of Debian's cross
# gcc (packaging/cross/aarch64-static-pie-cc says why), which also builds the C in the tree
# (ring, zlib-ng, libzstd).
STATIC_RUSTFLAGS_aarch64 := -C relocation-model=pie
CROSS_ENV_aarch64 := CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
	CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
	AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$(CURDIR)/packaging/cross/aarch64-static-pie-cc
OBJCOPY_x86_64 := objcopy
OBJCOPY_aarch64 := aarch64-linux-gnu-objcopy
static:
	$(CROSS_ENV_$(ARCH)) RUSTFLAGS='$(STATIC_RUSTFLAGS) $(STATIC_RUSTFLAGS_$(ARCH))' $(CARGO) build --release --locked -p drover --target $(STATIC_TARGET)
	@# Unwind tables (1 MB, mostly from the prebuilt std and glibc): panics abort, nothing unwinds.
	$(OBJCOPY_$(ARCH)) --remove-section=.eh_frame --remove-section=.eh_frame_hdr $(STATIC_BIN)
	@ls -l $(STATIC_BIN) | awk '{printf "static binary: %s, %d bytes (%.2f MiB)\n", $$9, $$5, $$5/1048576}'

static-all:
	@for arch in $(STATIC_ARCHES); do $(MAKE) --no-print-directory static ARCH=$$arch || exit 1; done

check: fmt clippy $(CHECKS)

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean

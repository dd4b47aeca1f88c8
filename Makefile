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

.PHONY: all build test test-unit demo check fmt clippy clean

all: build

# Fragments add their own targets, and their checks to CHECKS (run by `make check`).
CHECKS :=
include tests/test.mk
-include packaging/packaging.mk
-include systemd/systemd.mk

build:
	$(CARGO) build --workspace --all-targets --locked

## Everything: unit tests, integration tests against moto, container scenarios with real systemd.
test: test-setup build
	$(CARGO) fmt --all -- --check
	$(CARGO) test --workspace --locked --no-fail-fast

test-unit: build
	$(CARGO) test --workspace --locked --lib

## The main job: an instance deploying, upgrading and rolling back an app, narrated.
demo: test-setup
	$(CARGO) build --locked -p drover -p drover-tests --bins
	$(CARGO_TARGET_DIR)/debug/demo

check: fmt clippy $(CHECKS)

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean

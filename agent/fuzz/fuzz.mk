# Fuzzing; the top-level Makefile includes this file. Neither `make test` nor `make check` runs it.
#   make fuzz        builds the cargo-fuzz targets in agent/fuzz/ (nightly toolchain, its own
#                    target directory agent/fuzz/target), seeds the corpora (seeds.sh), runs each
#                    target for FUZZ_SECONDS and prints per target: executions, executions/s,
#                    seconds, corpus size and findings. Fails when agent/fuzz/artifacts/ holds any.
#   make fuzz-build  only the build
# Targets: parse_value (the SSM parameter value), parse_sha256sum (the .sha256 file), unpack_targz
# (a downloaded artifact, .tar.gz or .tar.zst: its seeds hold both), unpack_tar (a tar stream,
# gzipped by the target) and unpack_tarzst (the same, compressed with zstd by the target).
# Installs cargo-fuzz $(CARGO_FUZZ_VERSION) when it is missing.
# What the unpacker says of each corpus file (accepted, or why not), in agent/fuzz/:
#   DROVER_FUZZ_VERBOSE=1 target/x86_64-unknown-linux-gnu/release/unpack_tar corpus/unpack_tar/*

FUZZ_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
FUZZ_SECONDS ?= 60
# libFuzzer's -timeout: one input taking longer is a finding.
FUZZ_TIMEOUT ?= 10
FUZZ_TOOLCHAIN ?= nightly
FUZZ_TARGETS ?= parse_value parse_sha256sum unpack_targz unpack_tar unpack_tarzst
CARGO_FUZZ_VERSION := 0.13.2

FUZZ_ENV = FUZZ_SECONDS='$(FUZZ_SECONDS)' FUZZ_TIMEOUT='$(FUZZ_TIMEOUT)' \
	FUZZ_TOOLCHAIN='$(FUZZ_TOOLCHAIN)' FUZZ_TARGETS='$(FUZZ_TARGETS)' \
	CARGO_FUZZ_VERSION='$(CARGO_FUZZ_VERSION)'

.PHONY: fuzz fuzz-build

fuzz:
	$(FUZZ_ENV) bash $(FUZZ_DIR)/fuzz.sh run

fuzz-build:
	$(FUZZ_ENV) bash $(FUZZ_DIR)/fuzz.sh build

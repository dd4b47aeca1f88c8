# Make targets for packaging; the top-level Makefile includes this file.
#   make check-cfn   cfn-lint on the example CloudFormation template; the IAM policies parse,
#                    use only documented placeholders, and match the template's role
#   make dist        the release artefacts in $(DIST_DIR), from the static binary (`make static`):
#                    the bare binary, a .tar.gz, a .deb, an .rpm and SHA256SUMS (dist.sh)
#   make check-dist  reads them back with dpkg-deb, rpm and tar (check-dist.sh); lintian, when
#                    installed, is reported but not enforced
#   make test-packages   the .deb installed and deploying in a test container: tests/packages.rs,
#                    the `packages::` tests of the integration binary
#   make deny        cargo-deny over Cargo.lock with deny.toml (in `make check`): licenses, bans,
#                    sources, and advisories from the RustSec database, which it clones from
#                    GitHub. Where that fails, so does the check, saying why; DENY_OFFLINE=1
#                    skips only the advisories and says so.
#
# `make test` runs check-dist before tests/packages.rs, so it builds the static binary: about
# 7 minutes cold on 2 cores, about 2 when only drover itself changed (docs/PACKAGING.md).

PACKAGING_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
DROVER_TEST_CACHE ?= /var/cache/drover-test
# Outside the checkout, so that CI's fresh clones reuse it. /usr/bin/python3, not whatever
# python3 is first on PATH (a pyenv shim on some machines).
CFN_VENV ?= $(DROVER_TEST_CACHE)/cfn-venv
CFN_LINT_VERSION := 1.58.0
CFN_LINT_STAMP := $(CFN_VENV)/.cfn-lint-$(CFN_LINT_VERSION)

CHECKS += check-cfn

.PHONY: check-cfn

check-cfn: $(CFN_LINT_STAMP)
	$(CFN_VENV)/bin/cfn-lint --version
	$(CFN_VENV)/bin/cfn-lint -- $(PACKAGING_DIR)/cloudformation/*.yaml
	for f in $(PACKAGING_DIR)/iam/*.json; do \
	  $(CFN_VENV)/bin/python3 -m json.tool "$$f" >/dev/null || { echo "$$f: not JSON" >&2; exit 1; }; \
	done
	$(CFN_VENV)/bin/python3 $(PACKAGING_DIR)/iam/check-policies.py \
	  $(PACKAGING_DIR)/iam $(PACKAGING_DIR)/cloudformation/drover-example.yaml

$(CFN_LINT_STAMP):
	test -x $(CFN_VENV)/bin/python3 || /usr/bin/python3 -m venv $(CFN_VENV)
	$(CFN_VENV)/bin/pip install --quiet --disable-pip-version-check 'cfn-lint==$(CFN_LINT_VERSION)'
	touch $@

# Artefacts go beside the build, outside the checkout in CI.
DIST_DIR ?= $(CARGO_TARGET_DIR)/dist
# The version of the drover package in agent/Cargo.toml; the packages write a Cargo
# pre-release "-" as "~" (dist.sh says why).
DROVER_VERSION := $(shell sed -n '/^\[package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' agent/Cargo.toml)
DIST_DEB := $(DIST_DIR)/drover_$(subst -,~,$(DROVER_VERSION))_amd64.deb
# tests/packages.rs installs this .deb, and tests/graviton.rs the arm64 one; without them, those
# tests fail and say to run make dist.
export DROVER_DEB ?= $(DIST_DEB)
export DROVER_DEB_ARM64 ?= $(DIST_DIR)/drover_$(subst -,~,$(DROVER_VERSION))_arm64.deb

.PHONY: dist check-dist test-packages

dist: static-all
	bash $(PACKAGING_DIR)/dist.sh '$(DROVER_VERSION)' '$(DIST_DIR)' \
	  x86_64='$(call static-bin,x86_64)' aarch64='$(call static-bin,aarch64)'

check-dist: dist
	bash $(PACKAGING_DIR)/check-dist.sh '$(DROVER_VERSION)' '$(DIST_DIR)'

# The host side of the test (drover publish/promote) uses the debug binary.
test-packages: test-setup build check-dist
	$(CARGO) test --locked -p drover-tests --test integration -- --nocapture packages::

# cargo-deny, built once per version into a directory of its own beside the test machine's other
# caches (outside the checkout, so that CI's fresh clones reuse it), with the versions of its
# own Cargo.lock (--locked). `cargo install` builds in a temporary directory, not in the
# CARGO_TARGET_DIR exported for the project's build. Building it takes about 2.5 minutes on 2 cores
# (docs/PERFORMANCE.md, "Build and test times"), once.
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY_ROOT ?= $(DROVER_TEST_CACHE)/cargo-deny-$(CARGO_DENY_VERSION)
CARGO_DENY_BIN := $(CARGO_DENY_ROOT)/bin/cargo-deny
CARGO_DENY = $(CARGO_DENY_BIN) deny --manifest-path Cargo.toml --config $(PACKAGING_DIR)/deny.toml --locked
DENY_OFFLINE ?=

CHECKS += deny

.PHONY: deny

$(CARGO_DENY_BIN):
	env -u CARGO_TARGET_DIR $(CARGO) install --locked --root $(CARGO_DENY_ROOT) cargo-deny --version $(CARGO_DENY_VERSION)

deny: $(CARGO_DENY_BIN)
	$(CARGO_DENY) check --hide-inclusion-graph licenses bans sources
ifeq ($(DENY_OFFLINE),1)
	@echo "deny: advisories SKIPPED (DENY_OFFLINE=1): Cargo.lock was NOT checked against the RustSec advisory database"
else
	@$(CARGO_DENY) fetch db || { \
	  echo "deny: FAILED: cannot fetch the RustSec advisory database (cloned from GitHub into" \
	    "~/.cargo/advisory-dbs), so Cargo.lock was NOT checked for advisories. Run where GitHub" \
	    "is reachable, or skip only this part with: make check DENY_OFFLINE=1" >&2; \
	  exit 1; }
	$(CARGO_DENY) --offline check advisories
endif

# Make targets for the units in systemd/; the top-level Makefile includes this file.
#   make check-units   `systemd-analyze verify` on every unit file here, and drover.service's
#                      exposure score at most $(SYSTEMD_MAX_EXPOSURE) (also run by `make check`)
#
# verify loads a unit the way systemd would, offline, with no systemd running on this machine. It
# also wants every Exec*= binary to exist and the units it names (network-online.target, ...) to
# be found. drover itself is not installed on the build machine, so each unit is verified inside
# a scratch root (--root=): this machine's own unit directory, the units under test in
# /etc/systemd/system, this machine's copy of every other Exec*= binary (a missing one is an
# error, as on an instance), and a stub for the binaries this repository installs.
# verify exits 0 on many mistakes (an unknown key, an unparsable value), so any output fails.
#
# The exposure score is `systemd-analyze security --offline=yes` on the file, which scores the
# unit as written; tests/units.rs measures the same score on a booted instance, with the same
# limit (MAX_EXPOSURE), and docs/SECURITY.md records it. The app units are examples, not scored.

SYSTEMD_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
SYSTEMD_UNITS = $(wildcard $(addprefix $(SYSTEMD_DIR)/*.,service socket timer path target))
# Where the units expect drover: stubbed in the scratch root, since it is built here.
SYSTEMD_OWN_BINARIES := /usr/local/bin/drover /usr/bin/drover
# The target of issue #4, with one decimal: systemd-analyze takes it in tenths.
SYSTEMD_MAX_EXPOSURE := 4.0

CHECKS += check-units
.PHONY: check-units

check-units:
	$(if $(SYSTEMD_UNITS),,$(error check-units: no unit files in $(SYSTEMD_DIR)))
	@command -v systemd-analyze >/dev/null || { \
	    echo "check-units: no systemd-analyze; run make test-setup (systemd-container brings it)" >&2; \
	    exit 1; }
	@set -eu; \
	root=$$(mktemp -d); trap 'rm -rf "$$root"' EXIT; \
	mkdir -p "$$root/etc/systemd/system" "$$root/usr/lib/systemd"; \
	cp -a /usr/lib/systemd/system "$$root/usr/lib/systemd/"; \
	ln -s usr/lib "$$root/lib"; \
	cp $(SYSTEMD_UNITS) "$$root/etc/systemd/system/"; \
	for exe in $$(sed -n 's|^Exec[A-Za-z]*=[-+!@:]*\(/[^ ]*\).*|\1|p' $(SYSTEMD_UNITS) | sort -u); do \
	    mkdir -p "$$root$${exe%/*}"; \
	    case " $(SYSTEMD_OWN_BINARIES) " in \
	        *" $$exe "*) printf '#!/bin/sh\n' >"$$root$$exe"; chmod 0755 "$$root$$exe" ;; \
	        *) if [ -x "$$exe" ]; then cp -L "$$exe" "$$root$$exe"; fi ;; \
	    esac; \
	done; \
	failed=0; \
	for unit in $(notdir $(SYSTEMD_UNITS)); do \
	    out=$$(systemd-analyze verify --root="$$root" "$$unit" 2>&1) || out="$$out (exit status $$?)"; \
	    if [ -n "$$out" ]; then \
	        printf 'check-units: %s:\n%s\n' "$$unit" "$$out" >&2; failed=1; \
	    else \
	        echo "check-units: $$unit: ok"; \
	    fi; \
	done; \
	table=$$(systemd-analyze security --offline=yes --root="$$root" --no-pager \
	    --threshold=$(subst .,,$(SYSTEMD_MAX_EXPOSURE)) drover.service 2>&1) || failed=2; \
	score=$$(printf '%s\n' "$$table" | sed -n 's/^.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'); \
	if [ $$failed = 2 ] || [ -z "$$score" ]; then \
	    printf '%s\ncheck-units: drover.service: exposure %s, over %s\n' \
	        "$$table" "$${score:-unknown}" "$(SYSTEMD_MAX_EXPOSURE)" >&2; failed=1; \
	else \
	    echo "check-units: drover.service: exposure $$score (at most $(SYSTEMD_MAX_EXPOSURE))"; \
	fi; \
	exit $$failed

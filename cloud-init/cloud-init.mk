# Make targets for the user-data template in cloud-init/; the top-level Makefile includes this file.
#   make check-userdata   renders the template with the built binary's `drover user-data`, once
#                         from flags and once from a config file (with its own release root and
#                         state directory, so a drop-in for them) with an app unit and a download
#                         CA, and validates each with `cloud-init schema` (also run by `make check`)
#
# The renderer refuses what cloud-init would misread (an unknown marker, an unsafe value, a
# block that starts indented), so this checks the template itself: its YAML and each module's
# schema. Offline: nothing is fetched from the URL rendered in.

CLOUD_INIT_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

CHECKS += check-userdata
.PHONY: check-userdata

check-userdata: build
	@command -v cloud-init >/dev/null || { \
	    echo "check-userdata: no cloud-init on this machine; run make test-setup" >&2; \
	    exit 1; }
	@set -eu; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	digest=$$(sha256sum $(DROVER_BIN) | cut -d' ' -f1); \
	printf '[artifact]\nbucket = "my-releases"\n\n[release]\nroot = "/srv/web"\n\n[agent]\nstate_dir = "/srv/drover"\n\n[service]\nunits = ["web.service"]\n' \
	    >"$$tmp/config.toml"; \
	printf '[Unit]\nConditionPathExists=/srv/web/current\n\n[Service]\nExecStart=/srv/web/current/web\n\n[Install]\nWantedBy=multi-user.target\n' \
	    >"$$tmp/web.service"; \
	printf -- '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' >"$$tmp/ca.pem"; \
	$(DROVER_BIN) user-data --source https://downloads.example.com/drover --sha256 "$$digest" \
	    --source aarch64=https://downloads.example.com/drover-aarch64 --sha256 "aarch64=$$digest" \
	    --bucket my-releases --health-url http://127.0.0.1:8080/health >"$$tmp/from-flags.yaml"; \
	$(DROVER_BIN) user-data --source /usr/lib/drover/drover --sha256 "$$digest" \
	    --config-file "$$tmp/config.toml" --app-unit "$$tmp/web.service" \
	    --download-ca "$$tmp/ca.pem" >"$$tmp/from-file.yaml"; \
	for doc in from-flags from-file; do \
	    cloud-init schema --config-file "$$tmp/$$doc.yaml" >"$$tmp/schema.out" 2>&1 || { \
	        cat "$$tmp/schema.out" >&2; \
	        echo "check-userdata: $$doc: cloud-init schema rejects the rendered user-data" >&2; \
	        exit 1; }; \
	    echo "check-userdata: $$doc: valid cloud-config"; \
	done

# The two commands an SRE needs: `make local` and `make test`. Each test tier also runs alone.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-from-pyproject
# Debian packages the control machine needs (the hosts get theirs from the deploy).
# prometheus: its promtool checks and unit-tests the alert rules (monitoring/).
DEPS   := debootstrap systemd-container apt-cacher-ng iproute2 openssh-client python3-venv prometheus

.PHONY: local test deps venv up deploy check down staging-rebuild test-unit test-fleet test-infra test-drills test-down bench bench-fleet bench-deploy bench-archive bench-archive-lag bench-replay bench-backup bench-rls bench-pgbouncer bench-failover bench-deps

## make local: virtualenv, fleet up, deploy to the fleet, post-deploy checks
local: deps venv up deploy check

deps:
	@command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null && command -v apt-cacher-ng >/dev/null \
	  && command -v ssh >/dev/null && command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEPS); }

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

venv: $(STAMP)

up: venv
	$(BIN)/fleet up

deploy: venv
	$(BIN)/pyinfra -y inventory/local.py deploy.py

check: venv
	$(BIN)/pytest -q tests/infra --inventory inventory/local.py

down: venv
	$(BIN)/fleet down

## make test: every tier, in order, on one fleet; ends with the fleet taken down
test: deps venv
	$(MAKE) test-unit
	$(BIN)/fleet down
	$(MAKE) test-fleet
	$(MAKE) test-infra
	$(MAKE) test-down

test-unit: venv
	$(BIN)/pytest -q tests/unit

# The fleet tier brings the fleet up itself (from nothing after `fleet down`) and drills it.
test-fleet: venv deps
	$(BIN)/pytest -q tests/fleet

# Deploy to the fleet twice (the second run must change nothing), the deploy's end-to-end tests, the drills that
# move the primary (they leave another host primary), then staging rebuilt from the tier they left, which ends with
# the post-deploy checks on the rebuilt tier.
test-infra: venv deps
	$(BIN)/fleet up
	$(BIN)/pytest -q --durations=30 tests/e2e
	$(BIN)/pytest -q --durations=20 tests/drills
	$(BIN)/pytest -q --durations=10 tests/rebuild

## make staging-rebuild INVENTORY=inventory/staging.py DATA="--data restore_source_prefix=prod [...]": staging
## rebuilt from production's archive, scrubbed, on a new cluster and archive prefix, then checked (docs/backups.md)
staging-rebuild: venv
	@test -n "$(INVENTORY)" || { echo "make staging-rebuild: set INVENTORY=inventory/<staging>.py" >&2; exit 2; }
	$(BIN)/pyinfra -y --fail-percent 0 $(INVENTORY) rebuild_staging.py $(DATA)
	$(BIN)/pyinfra -y --fail-percent 0 $(INVENTORY) deploy.py $(DATA)
	$(BIN)/pytest -q tests/infra --inventory $(INVENTORY)

# The drills alone, on a fleet that is up (they deploy first).
test-drills: venv deps
	$(BIN)/pytest -q tests/drills

test-down: venv
	$(BIN)/pytest -q tests/teardown

## make bench: every benchmark, one after another (the fleet's own first: it takes the fleet down and up)
bench: bench-fleet bench-deploy bench-archive bench-archive-lag bench-replay bench-backup bench-rls bench-pgbouncer bench-failover

bench-fleet: venv deps
	$(BIN)/python bench/fleet_up.py

bench-deploy: venv deps
	$(BIN)/python bench/deploy.py

bench-archive: venv deps
	$(BIN)/python bench/archive.py

bench-replay: bench-deps deps
	$(BIN)/python bench/replay.py

bench-backup: bench-deps deps
	$(BIN)/python bench/backup.py

bench-rls: venv deps
	$(BIN)/python bench/rls.py

bench-failover: bench-deps deps
	$(BIN)/python bench/failover.py

# The plots' library, for the benchmarks only.
bench-deps: venv
	$(BIN)/pip install -q -e '.[bench]'

bench-pgbouncer: bench-deps deps
	$(BIN)/python bench/pgbouncer.py

bench-archive-lag: bench-deps deps
	$(BIN)/python bench/archive_lag.py

# iotrust — two commands on a fresh Debian/Python 3.11 machine:
#   make run    install, initialise a trust domain in ./data if there is none, serve (SQLite)
#   make test   install what the tests need (Debian packages included), lint, type-check, test
.PHONY: run test lint unit bench venv clean fuzz demo soak

DATA ?= data
HOST ?= 127.0.0.1
PORT ?= 8443
export IOTRUST_DATA := $(abspath $(DATA))

venv:
	@scripts/venv.sh

run: venv
	@scripts/system-deps.sh run
	.venv/bin/iotrust --data $(DATA) run --host $(HOST) --port $(PORT)

demo: venv
	@scripts/system-deps.sh test
	.venv/bin/iotrust demo

lint: venv
	.venv/bin/ruff check src tests benchmarks scripts
	.venv/bin/mypy
	.venv/bin/lint-imports

test: venv
	@scripts/system-deps.sh test
	$(MAKE) --no-print-directory lint
	.venv/bin/pytest -m "not slow" --durations=30 $(PYTEST_ARGS)

unit: venv
	.venv/bin/pytest tests/unit tests/property -q

bench: venv
	.venv/bin/python -m benchmarks.run $(BENCH_ARGS)

# Soak (not in CI): simulated fleet against serve --workers 2 on PostgreSQL, 10 min by default,
# publishing signed telemetry through its own Mosquitto to iotrust ingest
# (SOAK_ARGS="--minutes 5 --devices 2000"; --sqlite for a file database, --no-mqtt without the
# broker, --publish-rate N messages/s). Exit 1 on any error, broken invariant or growing RSS.
# By default rotation and retirement stop after 4 minutes (--churn-minutes), so the memory
# verdict judges a steady phase whose revocation list no longer grows (benchmarks/README.md).
# Writes benchmarks/results/soak.json.
SOAK_ARGS ?= --minutes 10 --churn-minutes 4
soak: venv
	.venv/bin/python -m benchmarks.soak $(SOAK_ARGS)

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache

# Short run of every atheris fuzz target (fuzz/README.md has the long run).
FUZZ_RUNS ?= 2000
FUZZ_ARTIFACTS ?= /tmp/iotrust-fuzz-artifacts
fuzz: venv
	@mkdir -p $(FUZZ_ARTIFACTS)
	@for t in fuzz/fuzz_*.py; do echo "== $$t"; \
	  .venv/bin/python $$t -runs=$(FUZZ_RUNS) -artifact_prefix=$(FUZZ_ARTIFACTS)/ || exit 1; done

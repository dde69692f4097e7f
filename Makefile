# cdc-service. `make demo` and `make test` work on a fresh machine with Python 3.11, Java 17
# and Maven: `make install` puts the package in .venv and the pinned JARs of jvm/pom.xml in
# .venv/share/cdc-service/jars (fetched once by Maven, never at query start).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
S3_STAMP := $(VENV)/.installed-s3

.PHONY: install demo test test-unit lint typecheck bench bench-quick soak broker clean

$(STAMP): pyproject.toml jvm/pom.xml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	@command -v java >/dev/null 2>&1 || { echo "make: java not found: install a Java 17 runtime (Spark and Kafka need it)"; exit 2; }
	@command -v mvn >/dev/null 2>&1 || { echo "make: mvn not found: install Maven 3 (it fetches the pinned JARs)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m cdc.jvm install --profile spark --profile kafka --profile registry
	@touch $(STAMP)

install: $(STAMP)

## The S3A JARs (hadoop-aws, the AWS SDK bundle: ~700 MB) for a lake on S3 with delta-spark;
## the tests need them (the lake on a local S3 server), `make demo` does not.
$(S3_STAMP): $(STAMP)
	$(PY) -m cdc.jvm install --profile s3
	@touch $(S3_STAMP)

## Start an embedded broker, produce a realistic CRM + events data set, drain it through
## every pipeline and print a summary; then build gold, publish it to the embedded warehouse
## (DuckDB) and print one example query's answer. Data goes to var/demo (wiped first).
demo: $(STAMP)
	$(VENV)/bin/cdc demo

## Lint, type-check, then every test tier (unit, integration, slow Spark suites).
test: $(STAMP) $(S3_STAMP) lint typecheck
	@mkdir -p var
	@$(PY) -m pytest -q; rc=$$?; echo $$rc > var/pytest-exit-code; exit $$rc

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/cdc schemas check

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --quick

## Not part of `make test`: 30 minutes per writer of steady produce while the pipeline is
## SIGKILLed and the broker restarted at random; prints `soak:` lines (lost, duplicated,
## silver mismatches, driver RSS growth, freshness) and fails on any record lost or doubled.
## More options: SOAK_ARGS='--minutes 5 --writer delta-rs' (python -m benchmarks.soak --help).
soak: $(STAMP)
	$(PY) -m benchmarks.soak $(SOAK_ARGS)

broker: $(STAMP)
	$(VENV)/bin/cdc broker

clean:
	rm -rf var build dist .pytest_cache .mypy_cache .ruff_cache

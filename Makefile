# cdc-service. `make demo` and `make test` work on a fresh machine with Python 3.11, Java 17,
# Maven and Go: `make install` puts the package in .venv and the pinned JARs of jvm/pom.xml in
# .venv/share/cdc-service/jars (fetched once by Maven, never at query start); `make tools`
# builds the pinned helm and kubeconform that the tests render and validate the chart with.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
S3_STAMP := $(VENV)/.installed-s3

include deploy/tools.env
# One folder per tool version, outside the work tree: a fresh clone (CI) reuses the build.
TOOLS_DIR := $(or $(CDC_TOOLS_DIR),$(HOME)/.cache/cdc-service/tools)
export CDC_TOOLS_DIR := $(TOOLS_DIR)
HELM := $(TOOLS_DIR)/helm-$(HELM_VERSION)/helm
KUBECONFORM := $(TOOLS_DIR)/kubeconform-$(KUBECONFORM_VERSION)/kubeconform
GO_INSTALL = @command -v go >/dev/null 2>&1 || { echo "make: go not found: install Go >= 1.26 (it builds the pinned helm and kubeconform)"; exit 2; }; \
	echo "make: building $(1) $(2) into $(@D) (once per version)"; \
	GOBIN=$(@D) CGO_ENABLED=0 go install -trimpath -ldflags=-s $(1)@$(2)

.PHONY: install tools demo test test-unit lint typecheck docs bench bench-quick soak broker clean

$(STAMP): pyproject.toml jvm/pom.xml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	@command -v java >/dev/null 2>&1 || { echo "make: java not found: install a Java 17 runtime (Spark and Kafka need it)"; exit 2; }
	@command -v mvn >/dev/null 2>&1 || { echo "make: mvn not found: install Maven 3 (it fetches the pinned JARs)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m cdc.runtime.jvm install --profile spark --profile kafka --profile registry --profile lineage
	@touch $(STAMP)

install: $(STAMP)

## helm and kubeconform at the versions of deploy/tools.env (cold: helm ~5 min, kubeconform
## ~40 s on 2 cores; skipped when present).
tools: $(HELM) $(KUBECONFORM)

$(HELM):
	$(call GO_INSTALL,$(HELM_MODULE),$(HELM_VERSION))

$(KUBECONFORM):
	$(call GO_INSTALL,$(KUBECONFORM_MODULE),$(KUBECONFORM_VERSION))

## The S3A JARs (hadoop-aws, the AWS SDK bundle: ~700 MB) for a lake on S3 with delta-spark;
## the tests need them (the lake on a local S3 server), `make demo` does not.
$(S3_STAMP): $(STAMP)
	$(PY) -m cdc.runtime.jvm install --profile s3
	@touch $(S3_STAMP)

## Start an embedded broker, produce a realistic CRM + events data set, drain it through
## every pipeline and print a summary; then build gold, publish it to the embedded warehouse
## (DuckDB) and print one example query's answer. Data goes to var/demo (wiped first).
demo: $(STAMP)
	$(VENV)/bin/cdc demo

## Lint, type-check, then every test tier (unit, integration, slow Spark suites).
test: $(STAMP) $(S3_STAMP) tools lint typecheck
	@mkdir -p var
	@$(PY) -m pytest -q --durations=30; rc=$$?; echo $$rc > var/pytest-exit-code; exit $$rc

test-unit: $(STAMP) tools
	$(PY) -m pytest -q -m "not integration and not slow"

## ruff, then the import layers of src/ (import-linter contracts in pyproject.toml; see
## docs/architecture.md), then the schemas.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/cdc schemas check

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## Regenerate the generated docs (the configuration reference, from the settings model);
## tests/unit/test_config_reference.py fails while they are stale.
docs: $(STAMP)
	$(PY) -m cdc.config.reference --write docs/reference/configuration.md

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
	rm -rf var build dist .pytest_cache .mypy_cache .ruff_cache .import_linter_cache

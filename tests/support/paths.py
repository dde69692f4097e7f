"""Where the repository's files are, for tests and for the benchmarks that reuse test helpers."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONTRACTS_PATH", "REGISTRY_PATH", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_PATH = REPO_ROOT / "schemas" / "avro"
CONTRACTS_PATH = REPO_ROOT / "schemas" / "contracts.yaml"

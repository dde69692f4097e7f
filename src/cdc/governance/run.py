"""``cdc governance``: load the policy, resolve it, open the targets."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from cdc.config.settings import Settings
from cdc.errors import ConfigError
from cdc.governance.access import Access, resolve_access
from cdc.governance.base import Target
from cdc.governance.catalog import Catalog, build_catalog
from cdc.governance.policy import Policy, load_policy
from cdc.ingest.contracts import load_contracts
from cdc.ingest.registry import FileRegistry

__all__ = ["TARGETS", "load_access", "load_catalog", "open_target", "policy_path", "target_names"]

TARGETS = ("postgres", "lakeformation", "duckdb", "snowflake")


def policy_path(settings: Settings, config_dir: Path | None = None) -> Path:
    """The policy file: ``governance.policy``, else ``governance/<env>.yaml`` in the config
    folder (``--config-dir``, ``$CDC_CONFIG_DIR`` or ``./config``)."""
    if settings.governance.policy:
        return Path(settings.governance.policy)
    folder = config_dir or Path(os.environ.get("CDC_CONFIG_DIR", "config"))
    return folder / "governance" / f"{settings.env}.yaml"


def load_catalog(settings: Settings) -> Catalog:
    """The catalog of every table the configured pipelines and gold write (file registry)."""
    contracts = load_contracts(settings.registry.contracts)
    return build_catalog(settings, contracts, FileRegistry.load(settings.registry.path))


def load_access(settings: Settings, config_dir: Path | None = None) -> Access:
    """The environment's policy, resolved against its catalog.

    Raises:
        ConfigError: the policy file is missing or invalid, or does not fit the tables.
    """
    return resolve_access(load_policy(policy_path(settings, config_dir)), load_catalog(settings))


def target_names(policy: Policy, chosen: str | None) -> list[str]:
    """The targets to work on: ``chosen``, or every one the policy configures.

    Raises:
        ConfigError: ``chosen`` is not configured in the policy's ``targets``.
    """
    configured = [t for t in TARGETS if getattr(policy.targets, t) is not None]
    if chosen is None:
        if not configured:
            raise ConfigError("the policy configures no targets (targets: ...)")
        return configured
    if chosen not in configured:
        raise ConfigError(
            f"the policy has no targets.{chosen} section (configured: {', '.join(configured)})"
        )
    return [chosen]


_ADAPTERS = {
    "postgres": ("cdc.governance.postgres", "PostgresGovernance"),
    "lakeformation": ("cdc.governance.lakeformation", "LakeFormationGovernance"),
    "duckdb": ("cdc.governance.duckdb", "DuckDbGovernance"),
    "snowflake": ("cdc.governance.snowflake", "SnowflakeGovernance"),
}
"""Target -> (module, class): imported on use, so each target's driver loads only for it."""


def open_target(name: str, access: Access, settings: Settings) -> Target:
    """The target ``name``, connected where it needs a connection.

    Raises:
        ConfigError: the settings it needs are missing (one line naming them).
        WarehouseUnavailableError: the warehouse cannot be reached.
    """
    if name not in _ADAPTERS:
        raise ConfigError(f"unknown governance target {name!r}; valid: {', '.join(TARGETS)}")
    module, cls = _ADAPTERS[name]
    config = getattr(access.policy.targets, name)
    if config is None:
        raise ConfigError(f"the policy has no targets.{name} section")
    adapter = getattr(importlib.import_module(module), cls)
    target: Target = adapter.from_settings(access, config, settings)
    return target

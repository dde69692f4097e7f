"""The policy as AWS Lake Formation grants and LF-tags, through boto3.

What the policy becomes (``<p>`` is ``targets.lakeformation.tag_prefix``):

* **LF-tags**: ``<p>layer`` (values: the layers) on each layer's Glue database, inherited by
  its tables; ``<p><tag>`` (``yes``/``no``) per policy tag: ``no`` on every table, ``yes`` on
  the columns the catalog tags (a column's own value overrides the table's);
* **tag-based grants** for a role that reads whole layers and has no row scopes: ``DESCRIBE``
  on the databases and ``SELECT, DESCRIBE`` on the tables whose tags match
  ``<p>layer in (...)`` and, for each tag the role may not read in the clear, ``<p><tag> =
  no`` (so the columns tagged ``yes`` are left out, in every table of the layer, including
  tables created later);
* **named grants** for the tables a role reads by name: ``DESCRIBE`` on the database and the
  table, and ``SELECT`` on the table, or on ``TableWithColumns`` with the columns it may not
  read in the clear excluded;
* **data cells filters** for a role with row scopes: per audience and table, a filter
  ``<p><audience>`` with the row filter (``region = 'EMEA'``) and the excluded columns,
  ``SELECT`` on it granted to the audience's principal.

Lake Formation cannot mask a value: a column the policy masks (``hash``, ``partial``,
``null``) is excluded, like a denied one; the masked values are served by the warehouse
views and the DuckDB audience files. The Glue databases and tables must exist (a crawler,
or the jobs' table registration); Lake Formation refuses tags and grants on unknown ones.

Tested against moto's Lake Formation, which holds grants, LF-tags and column grants but has
no data cells filters: the filter requests are validated against botocore's model of the
API instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdc.config.settings import Settings
from cdc.errors import ConfigError
from cdc.governance.access import Access, RoleAccess, TableAccess
from cdc.governance.base import Change, GovernanceError, Item, Target
from cdc.governance.catalog import CatalogTable
from cdc.governance.policy import LakeFormationTarget

# boto3 is imported where Lake Formation is called: the pure compilation never needs it.

__all__ = ["Call", "LakeFormationGovernance", "lakeformation_items", "normalize_resource"]

_ORDER = ("lf-tag", "database tags", "table tags", "column tags", "cells filter", "grant")
_YES, _NO = "yes", "no"


@dataclass(frozen=True)
class Call:
    """One Lake Formation API call: the client method and its request."""

    method: str
    request: Mapping[str, Any]


@dataclass(frozen=True)
class _Calls:
    create: tuple[Call, ...]
    drop: tuple[Call, ...]
    change: tuple[Call, ...] | None = None
    """Calls that change the item in place (None: drop, then create)."""


def normalize_resource(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A resource in one canonical form, to compare what was granted with what is asked.

    Catalog ids are dropped, lists sorted, an LF-tag expression sorted by key, and
    ``TableWithColumns`` without excluded columns becomes ``Table`` (how Lake Formation
    reports a ``SELECT`` on a whole table).
    """
    out: dict[str, Any] = {}
    for kind, body in resource.items():
        body = {k: v for k, v in dict(body).items() if k not in ("CatalogId", "TableCatalogId")}
        if kind == "TableWithColumns":
            wildcard = body.get("ColumnWildcard")
            if wildcard is not None and not wildcard.get("ExcludedColumnNames"):
                return {"Table": {"DatabaseName": body["DatabaseName"], "Name": body["Name"]}}
            if wildcard is not None:
                excluded = sorted(wildcard["ExcludedColumnNames"])
                body["ColumnWildcard"] = {"ExcludedColumnNames": excluded}
            if "ColumnNames" in body:
                body["ColumnNames"] = sorted(body["ColumnNames"])
        if kind == "LFTagPolicy":
            body["Expression"] = sorted(
                (
                    {"TagKey": e["TagKey"], "TagValues": sorted(e["TagValues"])}
                    for e in body["Expression"]
                ),
                key=lambda e: e["TagKey"],
            )
        out[kind] = body
    return out


def _label(resource: Mapping[str, Any]) -> str:
    """A resource in words, for plans (from its normalized form)."""
    (kind, body), *_ = resource.items()
    if kind == "Database":
        return f"database {body['Name']}"
    if kind == "Table":
        return f"table {body['DatabaseName']}.{body['Name']}"
    if kind == "TableWithColumns":
        excluded = body.get("ColumnWildcard", {}).get("ExcludedColumnNames")
        if excluded is not None:
            return f"table {body['DatabaseName']}.{body['Name']} except {', '.join(excluded)}"
        return f"columns {', '.join(body['ColumnNames'])} of {body['DatabaseName']}.{body['Name']}"
    if kind == "DataCellsFilter":
        return f"cells filter {body['Name']} of {body['DatabaseName']}.{body['TableName']}"
    if kind == "LFTagPolicy":
        what = "databases" if body["ResourceType"] == "DATABASE" else "tables"
        terms = " and ".join(
            f"{e['TagKey']} in ({', '.join(e['TagValues'])})" for e in body["Expression"]
        )
        return f"{what} tagged {terms}"
    return json.dumps(resource, sort_keys=True)


def _tag_spec(tags: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))


def _lf_tags(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"TagKey": k, "TagValues": [v]} for k, v in sorted(tags.items())]


class _Names:
    def __init__(self, config: LakeFormationTarget, catalog_id: str) -> None:
        self.config = config
        self.catalog_id = catalog_id
        self.layer_key = f"{config.tag_prefix}layer"

    def tag_key(self, tag: str) -> str:
        return f"{self.config.tag_prefix}{tag}"

    def database(self, layer: str, role: str | None = None) -> str:
        try:
            return self.config.databases[layer]
        except KeyError:
            who = f" (role {role} reads it)" if role else ""
            raise ConfigError(
                f"targets.lakeformation.databases has no database for layer {layer}{who}"
            ) from None


def _resource_tags(access: Access, names: _Names) -> list[Item]:
    items: list[Item] = []
    layers = [layer for layer in names.config.databases]
    values = {
        names.layer_key: layers,
        **{names.tag_key(t): [_YES, _NO] for t in access.policy.tags},
    }
    for key, vals in values.items():
        spec = ", ".join(sorted(vals))
        items.append(
            Item(
                "lf-tag",
                key,
                spec,
                _Calls(
                    create=(Call("create_lf_tag", {"TagKey": key, "TagValues": vals}),),
                    drop=(Call("delete_lf_tag", {"TagKey": key}),),
                ),
            )
        )
    for layer, database in names.config.databases.items():
        items.append(
            _tagging(
                "database tags",
                database,
                {"Database": {"Name": database}},
                {names.layer_key: layer},
            )
        )
        for table in access.catalog.layer(layer):
            where = {"DatabaseName": database, "Name": table.name}
            no = {names.tag_key(t): _NO for t in access.policy.tags}
            items.append(_tagging("table tags", f"{database}.{table.name}", {"Table": where}, no))
            for column in table.columns:
                if column.tags:
                    yes = {names.tag_key(t): _YES for t in column.tags}
                    resource = {"TableWithColumns": {**where, "ColumnNames": [column.name]}}
                    items.append(
                        _tagging(
                            "column tags", f"{database}.{table.name}.{column.name}", resource, yes
                        )
                    )
    return items


def _tagging(kind: str, key: str, resource: Mapping[str, Any], tags: Mapping[str, str]) -> Item:
    """LF-tags assigned to one resource (the managed keys only)."""
    lf_tags = _lf_tags(tags)
    return Item(
        kind,
        key,
        _tag_spec(tags),
        _Calls(
            create=(Call("add_lf_tags_to_resource", {"Resource": resource, "LFTags": lf_tags}),),
            drop=(Call("remove_lf_tags_from_resource", {"Resource": resource, "LFTags": lf_tags}),),
        ),
    )


def _grant(
    audience: str, principal: str, resource: Mapping[str, Any], permissions: Sequence[str]
) -> Item:
    perms = sorted(set(permissions))
    # The key is the resource's canonical form; the calls send it as written (revokes: as
    # Lake Formation reported it).
    request = {"Principal": {"DataLakePrincipalIdentifier": principal}, "Resource": resource}
    return Item(
        "grant",
        f"{audience} on {_label(normalize_resource(resource))}",
        ", ".join(perms),
        _Calls(
            create=(Call("grant_permissions", {**request, "Permissions": perms}),),
            drop=(Call("revoke_permissions", {**request, "Permissions": perms}),),
        ),
    )


def _role_grants(role: RoleAccess, names: _Names) -> list[Item]:
    """The grants and data cells filters of one role's audiences."""
    items: list[Item] = []
    config = names.config
    whole = role.layers if role.row_values is None else ()
    for audience in role.audiences:
        principal = config.principals[audience]
        if whole:
            hidden_tags = sorted(t for t, how in role.treatments.items() if how != "clear")
            expression = [{"TagKey": names.layer_key, "TagValues": list(whole)}]
            expression += [{"TagKey": names.tag_key(t), "TagValues": [_NO]} for t in hidden_tags]
            for layer in whole:
                names.database(layer, role.name)
            db_policy = {"LFTagPolicy": {"ResourceType": "DATABASE", "Expression": expression[:1]}}
            table_policy = {"LFTagPolicy": {"ResourceType": "TABLE", "Expression": expression}}
            items.append(_grant(audience, principal, db_policy, ["DESCRIBE"]))
            items.append(_grant(audience, principal, table_policy, ["DESCRIBE", "SELECT"]))
        named = [t for t in role.tables if t.table.layer not in whole]
        for database in sorted({names.database(t.table.layer, role.name) for t in named}):
            items.append(
                _grant(audience, principal, {"Database": {"Name": database}}, ["DESCRIBE"])
            )
        for table in named:
            items += _table_grants(role, audience, principal, table, names)
    return items


def _table_grants(
    role: RoleAccess, audience: str, principal: str, access: TableAccess, names: _Names
) -> list[Item]:
    table: CatalogTable = access.table
    database = names.database(table.layer, role.name)
    where = {"DatabaseName": database, "Name": table.name}
    items = []
    if access.rows is None and not access.hidden:
        return [_grant(audience, principal, {"Table": where}, ["DESCRIBE", "SELECT"])]
    items.append(_grant(audience, principal, {"Table": where}, ["DESCRIBE"]))
    if access.rows is None:
        columns = {**where, "ColumnWildcard": {"ExcludedColumnNames": access.hidden}}
        items.append(_grant(audience, principal, {"TableWithColumns": columns}, ["SELECT"]))
        return items
    name = f"{names.config.tag_prefix}{audience}"
    expression = f"{access.rows.column} = '{access.rows.values[audience]}'"
    data: dict[str, Any] = {
        "TableCatalogId": names.catalog_id,
        "DatabaseName": database,
        "TableName": table.name,
        "Name": name,
        "RowFilter": {"FilterExpression": expression},
        "ColumnWildcard": {"ExcludedColumnNames": access.hidden},
    }
    ident = {k: data[k] for k in ("TableCatalogId", "DatabaseName", "TableName", "Name")}
    items.append(
        Item(
            "cells filter",
            f"{database}.{table.name} {name}",
            _filter_spec(expression, access.hidden),
            _Calls(
                create=(Call("create_data_cells_filter", {"TableData": data}),),
                drop=(Call("delete_data_cells_filter", ident),),
                change=(Call("update_data_cells_filter", {"TableData": data}),),
            ),
        )
    )
    items.append(_grant(audience, principal, {"DataCellsFilter": ident}, ["SELECT"]))
    return items


def _filter_spec(expression: str, excluded: Sequence[str]) -> str:
    return f"rows where {expression}" + (
        f"; without {', '.join(sorted(excluded))}" if excluded else ""
    )


def lakeformation_items(access: Access, config: LakeFormationTarget, catalog_id: str) -> list[Item]:
    """The desired Lake Formation state: pure, from the resolved policy.

    Args:
        access: the resolved policy.
        config: ``targets.lakeformation``.
        catalog_id: the Data Catalog's account (data cells filters name it).

    Returns:
        LF-tags and their assignments, data cells filters and grants; each item's payload
        holds the boto3 calls that create and remove it.

    Raises:
        ConfigError: a role reads a layer that has no database.
    """
    names = _Names(config, catalog_id)
    items = _resource_tags(access, names)
    for role in access.roles:
        items += _role_grants(role, names)
    return items


# ------------------------------------------------------------------------ the adapter


def _client_error(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    return str(error.get("Code") or type(exc).__name__)


class LakeFormationGovernance(Target):
    """The policy in Lake Formation (boto3 ``lakeformation`` client)."""

    name = "lakeformation"
    order = _ORDER

    def __init__(
        self, access: Access, config: LakeFormationTarget, client: Any, catalog_id: str
    ) -> None:
        """Create the target.

        Args:
            access: the resolved policy.
            config: ``targets.lakeformation``.
            client: a boto3 ``lakeformation`` client.
            catalog_id: the Data Catalog's account id.
        """
        self.access = access
        self.config = config
        self.client = client
        self.catalog_id = catalog_id
        self._notes: list[str] = []

    @classmethod
    def from_settings(
        cls, access: Access, config: LakeFormationTarget, settings: Settings
    ) -> LakeFormationGovernance:
        """The target in the region and account ``governance.*`` names (credentials: the AWS
        chain)."""
        import boto3

        gov = settings.governance
        region = gov.aws_region or settings.lake.storage_options.get("AWS_REGION")
        session = boto3.session.Session(region_name=region)
        options = {"endpoint_url": gov.aws_endpoint_url} if gov.aws_endpoint_url else {}
        try:
            client = session.client("lakeformation", **options)
            catalog_id = (
                gov.catalog_id or session.client("sts", **options).get_caller_identity()["Account"]
            )
        except Exception as exc:  # NoRegionError, NoCredentialsError, an endpoint refusing
            raise GovernanceError(
                f"cannot reach Lake Formation ({region or 'no region'}): {_client_error(exc)}"
                " (governance.aws_region, the AWS credentials)"
            ) from None
        return cls(access, config, client, str(catalog_id))

    def desired(self) -> list[Item]:
        """The LF-tags, filters and grants the policy asks for."""
        return lakeformation_items(self.access, self.config, self.catalog_id)

    def notes(self) -> list[str]:
        """What Lake Formation cannot do, and resources it does not know."""
        masked = sorted(
            f"{role.name} ({', '.join(f'{t}: {h}' for t, h in role.treatments.items())})"
            for role in self.access.roles
            if any(h not in ("clear", "deny") for h in role.treatments.values())
        )
        notes = list(self._notes)
        if masked:
            notes.append(
                "Lake Formation cannot mask values: the masked columns are excluded for "
                + ", ".join(masked)
            )
        return notes

    def _call(self, method: str, **request: Any) -> Any:
        try:
            return getattr(self.client, method)(**request)
        except Exception as exc:
            raise GovernanceError(f"lakeformation {method}: {_client_error(exc)}: {exc}") from None

    def _pages(self, method: str, key: str, **request: Any) -> list[Any]:
        found: list[Any] = []
        while True:
            page = self._call(method, **request)
            found += page.get(key, [])
            token = page.get("NextToken")
            if not token:
                return found
            request["NextToken"] = token

    def _tags_of(self, resource: Mapping[str, Any], field: str) -> Any:
        """The LF-tags assigned to a resource; None when Lake Formation does not know it."""
        try:
            return self.client.get_resource_lf_tags(Resource=resource, ShowAssignedLFTags=True).get(
                field, []
            )
        except Exception as exc:
            if _client_error(exc) == "EntityNotFoundException":
                return None
            raise GovernanceError(
                f"lakeformation get_resource_lf_tags: {_client_error(exc)}: {exc}"
            ) from None

    def _managed(self, tags: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """The LF-tags of the policy's keys, as ``key -> values``."""
        prefix = self.config.tag_prefix
        return {
            t["TagKey"]: ",".join(sorted(t["TagValues"]))
            for t in tags
            if t["TagKey"].startswith(prefix)
        }

    def _assigned(self, kind: str, key: str, resource: Mapping[str, Any], field: str) -> Any:
        """The managed tags of one database or table as an item (None: none), or False when
        Lake Formation does not know the resource (noted)."""
        found = self._tags_of(resource, field)
        if found is None:
            self._notes.append(f"{kind.split()[0]} {key} is not in the Glue catalog")
            return False
        tags = self._managed(found)
        return _tagging(kind, key, resource, tags) if tags else None

    def _actual_tags(self) -> list[Item]:
        """The managed LF-tags and their assignments to databases, tables and columns."""
        items: list[Item] = []
        for tag in self._pages("list_lf_tags", "LFTags"):
            if tag["TagKey"].startswith(self.config.tag_prefix):
                drop = _Calls((), (Call("delete_lf_tag", {"TagKey": tag["TagKey"]}),))
                spec = ", ".join(sorted(tag["TagValues"]))
                items.append(Item("lf-tag", tag["TagKey"], spec, drop))
        for layer, database in self.config.databases.items():
            named: dict[str, Any] = {"Database": {"Name": database}}
            found = self._assigned("database tags", database, named, "LFTagOnDatabase")
            if found is False:
                continue
            items += [found] if found else []
            for table in self.access.catalog.layer(layer):
                where: dict[str, Any] = {"DatabaseName": database, "Name": table.name}
                key = f"{database}.{table.name}"
                found = self._assigned("table tags", key, {"Table": where}, "LFTagsOnTable")
                if found is False:
                    continue
                items += [found] if found else []
                names = [c.name for c in table.columns]
                resource = {"TableWithColumns": {**where, "ColumnNames": names}}
                for column in self._tags_of(resource, "LFTagsOnColumns") or []:
                    tags = self._managed(column.get("LFTags", []))
                    one = {"TableWithColumns": {**where, "ColumnNames": [column["Name"]]}}
                    if tags:
                        items.append(_tagging("column tags", f"{key}.{column['Name']}", one, tags))
        return items

    def actual(self) -> list[Item]:
        """The managed LF-tags, their assignments, the filters and the audiences' grants."""
        prefix = self.config.tag_prefix
        self._notes = []
        items = self._actual_tags()
        databases = set(self.config.databases.values())
        for found in self._pages("list_data_cells_filter", "DataCellsFilters"):
            if found["DatabaseName"] not in databases or not found["Name"].startswith(prefix):
                continue
            ident = {k: found[k] for k in ("TableCatalogId", "DatabaseName", "TableName", "Name")}
            expression = found.get("RowFilter", {}).get("FilterExpression", "(all rows)")
            excluded = found.get("ColumnWildcard", {}).get("ExcludedColumnNames", [])
            items.append(
                Item(
                    "cells filter",
                    f"{found['DatabaseName']}.{found['TableName']} {found['Name']}",
                    _filter_spec(expression, excluded),
                    _Calls((), (Call("delete_data_cells_filter", ident),)),
                )
            )
        # Lake Formation filters by principal only together with a resource: list them all.
        audiences = {arn: audience for audience, arn in self.config.principals.items()}
        for grant in self._pages("list_permissions", "PrincipalResourcePermissions"):
            arn = grant["Principal"].get("DataLakePrincipalIdentifier")
            permissions = grant.get("Permissions", [])
            if arn in audiences and permissions and self._governed(grant["Resource"], databases):
                items.append(_grant(audiences[arn], arn, grant["Resource"], permissions))
        return items

    def _governed(self, resource: Mapping[str, Any], databases: set[str]) -> bool:
        """Whether a granted resource is one the policy governs (its databases, its tags)."""
        for kind, body in resource.items():
            if kind == "LFTagPolicy":
                return any(
                    e["TagKey"].startswith(self.config.tag_prefix) for e in body["Expression"]
                )
            if kind == "Database":
                return body.get("Name") in databases
            if kind in ("Table", "TableWithColumns", "DataCellsFilter"):
                return body.get("DatabaseName") in databases
        return False

    def apply_changes(self, changes: Sequence[Change]) -> None:
        """Make the calls (Lake Formation has no transactions: a failure stops the run and
        the next plan shows what is left)."""
        for change in changes:
            calls: _Calls = change.item.payload
            if change.action == "remove":
                steps = calls.drop
            elif change.action == "add":
                steps = calls.create
            elif change.item.kind == "lf-tag":
                steps = (self._update_tag(change),)
            elif calls.change is not None:
                steps = calls.change
            else:
                old: _Calls = change.was.payload if change.was is not None else calls
                steps = (*old.drop, *calls.create)
            for call in steps:
                answer = self._call(call.method, **call.request)
                failures = answer.get("Failures") if isinstance(answer, dict) else None
                if failures:
                    error = failures[0].get("Error", {})
                    raise GovernanceError(
                        f"lakeformation {call.method} ({change.line()}): "
                        f"{error.get('ErrorCode')}: {error.get('ErrorMessage')}"
                    )

    @staticmethod
    def _update_tag(change: Change) -> Call:
        want = set(change.item.spec.split(", "))
        have = set(change.was.spec.split(", ")) if change.was is not None else set()
        request: dict[str, Any] = {"TagKey": change.item.key}
        if want - have:
            request["TagValuesToAdd"] = sorted(want - have)
        if have - want:
            request["TagValuesToDelete"] = sorted(have - want)
        return Call("update_lf_tag", request)

"""The policy in Snowflake: roles and grants, tags on columns, tag-based masking policies and a
row access policy, rendered as SQL from the policy.

What the policy becomes (``<P>`` is ``targets.snowflake.role_prefix``; objects live in the
database and schemas of ``warehouse.*``, tags and policies in the gold schema):

* roles ``<P><ROLE>`` and ``<P><ROLE>_<SCOPE>`` (granted the role's), ``USAGE`` on the
  database and schemas, ``SELECT`` on each table a role reads (Snowflake has no column
  privileges: a column is hidden by its mask);
* a tag per policy tag (``PII``) set on every tagged column, and a masking policy per tag
  attached to the tag (``ALTER TAG ... SET MASKING POLICY ... FORCE``): the publisher's role
  and the roles that read the tag in the clear see the value, a ``partial`` role
  ``REGEXP_REPLACE(val, '^(.)[^@]*', '\\\\1***')``, a ``hash`` role ``SHA2(val, 256)`` (the
  same hex as PostgreSQL's and DuckDB's), everyone else (``null``, ``deny``) ``NULL``;
* a row access policy per row-scope column, attached to the filtered tables: true for the
  publisher and every role without scopes (grants decide whether they read the table at all),
  ``val = '<value>'`` for each scope role.

Every statement is idempotent (``IF NOT EXISTS``, ``SET BODY``, ``FORCE``); attaching a row
access policy is guarded by reading the table's policy references first. ``plan`` renders the
statements without connecting; ``apply`` and ``check`` connect with ``warehouse.*`` and need
the Snowflake connector (``pip install 'cdc-service[snowflake]'``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cdc.config.settings import Settings
from cdc.errors import ConfigError
from cdc.governance.access import Access
from cdc.governance.base import Change, GovernanceError, Item, Plan, Target
from cdc.governance.masks import SNOWFLAKE
from cdc.governance.policy import SnowflakeTarget
from cdc.warehouse import open_warehouse
from cdc.warehouse.base import Statement, Warehouse, WarehouseError

__all__ = ["MARKER", "SnowflakeGovernance", "SnowflakeNames", "snowflake_items"]

MARKER = "cdc-governance"
"""The comment of every role the policy creates: a role with the prefix but not this comment
(the publisher's, an administrator's) is not the policy's to drop."""
_ORDER = (
    "role",
    "grant",
    "tag",
    "masking policy",
    "tag masking",
    "column tag",
    "row access policy",
    "row access",
)


_literal = SNOWFLAKE.literal


def _body(text: str) -> str:
    """A policy body in one canonical spacing (Snowflake keeps the text as written)."""
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class SnowflakeNames:
    """The names of the policy's objects in one Snowflake account."""

    database: str
    schemas: Mapping[str, str]
    """Layer -> schema (upper case)."""
    prefix: str
    publisher: str | None
    """The role ``cdc publish`` runs as (``warehouse.role``): it reads everything."""

    @property
    def home(self) -> str:
        """Where tags and policies live: the gold schema."""
        return f"{self.database}.{self.schemas['gold']}"

    def role(self, name: str) -> str:
        return f"{self.prefix}{name.upper()}"

    def tag(self, tag: str) -> str:
        return f"{self.home}.{tag.upper()}"

    def mask(self, tag: str) -> str:
        return f"{self.home}.{self.prefix}{tag.upper()}_MASK"

    def rows(self, column: str) -> str:
        return f"{self.home}.{self.prefix}ROWS_{column.upper()}"

    def table(self, layer: str, name: str) -> str:
        return f"{self.database}.{self.schemas[layer]}.{name.upper()}"


def _item(kind: str, key: str, spec: str, create: Sequence[str], drop: Sequence[str]) -> Item:
    return Item(kind, key, spec, (tuple(create), tuple(drop)))


def _grant(role: str, privilege: str, on: str, name: str) -> Item:
    on_sql = f"{on} {name}" if on != "ROLE" else f"ROLE {name}"
    return _item(
        "grant",
        f"{role} {privilege} {on} {name}",
        "",
        [
            f"GRANT {privilege} ON {on_sql} TO ROLE {role}"
            if on != "ROLE"
            else f"GRANT ROLE {name} TO ROLE {role}"
        ],
        [
            f"REVOKE {privilege} ON {on_sql} FROM ROLE {role}"
            if on != "ROLE"
            else f"REVOKE ROLE {name} FROM ROLE {role}"
        ],
    )


def _mask_body(access: Access, tag: str, names: SnowflakeNames) -> str:
    """The masking policy of a tag: the clearest treatment first (a person in two roles sees
    what the clearer one sees), everyone else ``NULL``."""
    whens = []
    if names.publisher:
        whens.append(f"WHEN IS_ROLE_IN_SESSION({_literal(names.publisher)}) THEN VAL")
    for treatment in ("clear", "partial", "hash"):
        result = SNOWFLAKE.expression("VAL", treatment, "VARCHAR")
        for role in access.roles:
            if role.treatments[tag] == treatment:
                role_name = _literal(names.role(role.name))
                whens.append(f"WHEN IS_ROLE_IN_SESSION({role_name}) THEN {result}")
    return _body(f"CASE {' '.join(whens)} ELSE NULL END")


def _rows_body(access: Access, column: str, names: SnowflakeNames) -> str:
    terms = []
    if names.publisher:
        terms.append(f"IS_ROLE_IN_SESSION({_literal(names.publisher)})")
    for role in access.roles:
        if role.row_values is None:
            terms.append(f"IS_ROLE_IN_SESSION({_literal(names.role(role.name))})")
        elif role.row_column == column:
            for audience, value in role.row_values.items():
                terms.append(
                    f"(IS_ROLE_IN_SESSION({_literal(names.role(audience))})"
                    f" AND VAL = {_literal(value)})"
                )
    return _body(" OR ".join(terms))


def _role_items(access: Access, names: SnowflakeNames) -> list[Item]:
    """Roles, scope memberships, and the grants of the tables each role reads."""
    items: list[Item] = []
    db = names.database
    for role in access.roles:
        base = names.role(role.name)
        roles = [base, *(names.role(a) for a in role.audiences if a != role.name)]
        for name in roles:
            create = f"CREATE ROLE IF NOT EXISTS {name} COMMENT = {_literal(MARKER)}"
            drop = f"DROP ROLE IF EXISTS {name}"
            items.append(_item("role", name, "", [create], [drop]))
            if name != base:
                items.append(_grant(name, "USAGE", "ROLE", base))
        tables = [t.table for t in role.tables if t.table.layer in names.schemas]
        if tables:
            items.append(_grant(base, "USAGE", "DATABASE", db))
        for layer in sorted({t.layer for t in tables}):
            items.append(_grant(base, "USAGE", "SCHEMA", f"{db}.{names.schemas[layer]}"))
        for table in tables:
            items.append(_grant(base, "SELECT", "TABLE", names.table(table.layer, table.name)))
    return items


def _mask_items(access: Access, names: SnowflakeNames) -> list[Item]:
    """Per tag: the tag, its masking policy, the policy attached to the tag, and the tag on
    every tagged column of the tables Snowflake holds."""
    items: list[Item] = []
    for tag in access.policy.tags:
        tag_name, mask = names.tag(tag), names.mask(tag)
        create = f"CREATE TAG IF NOT EXISTS {tag_name}"
        items.append(_item("tag", tag_name, "", [create], [f"DROP TAG IF EXISTS {tag_name}"]))
        body = _mask_body(access, tag, names)
        policy = [
            f"CREATE MASKING POLICY IF NOT EXISTS {mask} AS (VAL VARCHAR) RETURNS VARCHAR -> NULL",
            f"ALTER MASKING POLICY {mask} SET BODY -> {body}",
        ]
        drop = f"DROP MASKING POLICY IF EXISTS {mask}"
        items.append(_item("masking policy", mask, body, policy, [drop]))
        attach = f"ALTER TAG {tag_name} SET MASKING POLICY {mask} FORCE"
        detach = f"ALTER TAG {tag_name} UNSET MASKING POLICY {mask}"
        items.append(_item("tag masking", f"{tag_name} {mask}", "", [attach], [detach]))
    for table in access.catalog:
        if table.layer not in names.schemas:
            continue
        target = names.table(table.layer, table.name)
        for column in table.columns:
            if column.tags and not column.is_string:
                raise ConfigError(
                    f"snowflake: {table.ref}.{column.name} is tagged but not text: only text"
                    " can be masked"
                )
            modify = f"ALTER TABLE {target} MODIFY COLUMN {column.name.upper()}"
            for tag in sorted(column.tags):
                tag_name = names.tag(tag)
                items.append(
                    _item(
                        "column tag",
                        f"{target}.{column.name.upper()} {tag_name}",
                        tag,
                        [f"{modify} SET TAG {tag_name} = {_literal(tag)}"],
                        [f"{modify} UNSET TAG {tag_name}"],
                    )
                )
    return items


def _row_items(access: Access, names: SnowflakeNames) -> list[Item]:
    """A row access policy per scoped column, attached to the tables filtered on it."""
    filtered: dict[str, str] = {}
    whole: set[str] = set()
    for table in access.catalog:
        for role, how in access.readers(table.ref):
            if table.layer not in names.schemas:
                continue
            if how.rows is not None:
                filtered[table.ref] = how.rows.column
            elif role.row_values is not None:
                whole.add(table.ref)
    clash = sorted(set(filtered) & whole)
    if clash:
        raise ConfigError(
            f"snowflake: {', '.join(clash)} is filtered for one role and read whole by another"
            " role with row scopes; one row access policy per table cannot say both"
        )
    items: list[Item] = []
    for column in sorted(set(filtered.values())):
        policy, body = names.rows(column), _rows_body(access, column, names)
        statements = [
            f"CREATE ROW ACCESS POLICY IF NOT EXISTS {policy} AS (VAL VARCHAR) RETURNS BOOLEAN"
            " -> FALSE",
            f"ALTER ROW ACCESS POLICY {policy} SET BODY -> {body}",
        ]
        drop = f"DROP ROW ACCESS POLICY IF EXISTS {policy}"
        items.append(_item("row access policy", policy, body, statements, [drop]))
    for ref, column in sorted(filtered.items()):
        layer, name = ref.split(".", 1)
        target, policy = names.table(layer, name), names.rows(column)
        attach = f"ALTER TABLE {target} ADD ROW ACCESS POLICY {policy} ON ({column.upper()})"
        detach = f"ALTER TABLE {target} DROP ROW ACCESS POLICY {policy}"
        items.append(_item("row access", f"{target} {policy}", column.upper(), [attach], [detach]))
    return items


def snowflake_items(access: Access, names: SnowflakeNames) -> list[Item]:
    """The desired Snowflake state: pure, from the resolved policy.

    Args:
        access: the resolved policy.
        names: the database, schemas, role prefix and the publisher's role.

    Returns:
        Items whose payloads are ``(create statements, drop statements)``.

    Raises:
        ConfigError: a tagged column is not text (only text can be masked), or a table is
            filtered for one role and read whole by another role with row scopes.
    """
    return [*_role_items(access, names), *_mask_items(access, names), *_row_items(access, names)]


class SnowflakeGovernance(Target):
    """The policy in Snowflake, over ``cdc.warehouse.snowflake``'s connection."""

    name = "snowflake"
    order = _ORDER

    def __init__(
        self, access: Access, names: SnowflakeNames, connect: Callable[[], Warehouse]
    ) -> None:
        """Create the target (nothing connects until ``apply`` or ``check``).

        Args:
            access: the resolved policy.
            names: where the objects live.
            connect: returns the (not connected) Snowflake warehouse.
        """
        self.access = access
        self.names = names
        self._connect = connect
        self.warehouse: Warehouse | None = None
        self._absent: list[str] | None = None

    @classmethod
    def from_settings(
        cls, access: Access, config: SnowflakeTarget, settings: Settings
    ) -> SnowflakeGovernance:
        """The target over ``warehouse.*`` (its ``target`` may be another)."""
        wh = settings.warehouse
        schemas = {"gold": wh.schema, **config.schemas}
        names = SnowflakeNames(
            database=(wh.database or "ANALYTICS").upper(),
            schemas={layer: s.upper() for layer, s in schemas.items()},
            prefix=config.role_prefix,
            publisher=wh.role.upper() if wh.role else None,
        )

        def connect() -> Warehouse:
            snowflake = wh.model_copy(update={"target": "snowflake"})
            return open_warehouse(settings.model_copy(update={"warehouse": snowflake}))

        return cls(access, names, connect)

    def _connection(self) -> Warehouse:
        if self.warehouse is None:
            warehouse = self._connect()
            warehouse.connect()
            self.warehouse = warehouse
        return self.warehouse

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self.warehouse is not None:
            self.warehouse.close()
            self.warehouse = None

    def _absent_tables(self) -> list[str]:
        """The policy's tables Snowflake does not hold (not published yet)."""
        if self._absent is None:
            wanted = {
                self.names.table(t.layer, t.name)
                for t in self.access.catalog
                if t.layer in self.names.schemas
            }
            held = set()
            for schema in sorted(set(self.names.schemas.values())):
                rows = self._rows(f"SHOW TABLES IN SCHEMA {self.names.database}.{schema}")
                held |= {f"{self.names.database}.{schema}.{str(r[1]).upper()}" for r in rows}
            self._absent = sorted(wanted - held)
        return self._absent

    def desired(self) -> list[Item]:
        """The objects the policy asks for, on the tables Snowflake holds."""
        absent = set(self._absent_tables())

        def on_absent(item: Item) -> bool:
            if item.kind == "grant" and " TABLE " in item.key:
                return item.key.rsplit(" ", 1)[1] in absent
            if item.kind in ("column tag", "row access"):
                return item.key.split(" ")[0].rsplit(".", 1)[0] in absent or (
                    item.key.split(" ")[0] in absent
                )
            return False

        return [i for i in snowflake_items(self.access, self.names) if not on_absent(i)]

    def notes(self) -> list[str]:
        """The policy's tables not in Snowflake yet (governed once published)."""
        absent = self._absent_tables()
        return (
            [f"not in Snowflake yet, governed once they are: {', '.join(absent)}"] if absent else []
        )

    def script(self) -> list[str]:
        """Every statement, in order: the whole policy as SQL (what ``plan`` prints)."""
        items = sorted(snowflake_items(self.access, self.names), key=lambda i: _ORDER.index(i.kind))
        return [f"{sql};" for item in items for sql in item.payload[0]]

    def plan(self) -> Plan:
        """The rendered statements; Snowflake is not contacted."""
        note = (
            "rendered from the policy without connecting: apply runs what Snowflake lacks,"
            " check compares"
        )
        return Plan(self.name, (), (note,), script=tuple(self.script()))

    def _rows(self, sql: str) -> list[tuple[object, ...]]:
        try:
            return self._connection().query(Statement(sql))
        except WarehouseError as exc:
            raise GovernanceError(f"snowflake: {exc}") from None

    def actual(self) -> list[Item]:
        """What Snowflake holds of the policy's objects (grants, tags, policies, attachments)."""
        names = self.names
        desired = snowflake_items(self.access, names)
        items: list[Item] = []
        wanted = {i.key for i in desired if i.kind == "role"}
        shown = self._rows(f"SHOW ROLES LIKE '{names.prefix}%'")
        # The policy's roles, and roles it created once (their comment) that it no longer has.
        roles = {
            str(r[1]).upper()
            for r in shown
            if str(r[1]).upper() in wanted or str(r[9] or "").startswith(MARKER)
        }
        for role in sorted(roles):
            items.append(_item("role", role, "", [], [f"DROP ROLE IF EXISTS {role}"]))
            for row in self._rows(f"SHOW GRANTS TO ROLE {role}"):
                privilege, on = str(row[1]).upper(), str(row[2]).upper()
                name = str(row[3]).upper().replace('"', "")
                # Governed: grants on the database and its objects, and the policy's roles.
                # A compute warehouse's USAGE, another database's grants are not its business.
                ours = name == names.database or name.startswith(f"{names.database}.")
                if privilege != "OWNERSHIP" and (ours or (on == "ROLE" and name in roles)):
                    items.append(_grant(role, privilege, on, name))
        for item in desired:
            if item.kind == "tag":
                found = self._rows(
                    f"SHOW TAGS LIKE '{item.key.rsplit('.', 1)[1]}' IN SCHEMA {names.home}"
                )
                if found:
                    items.append(Item("tag", item.key, "", item.payload))
                    items += self._tag_masking(item.key)
            elif item.kind in ("masking policy", "row access policy"):
                what = "MASKING POLICY" if item.kind == "masking policy" else "ROW ACCESS POLICY"
                try:
                    described = self._connection().query(Statement(f"DESCRIBE {what} {item.key}"))
                except WarehouseError:
                    continue
                if described:
                    body = _body(str(described[0][3]))
                    items.append(Item(item.kind, item.key, body, item.payload))
        for table in {
            i.key.split(" ")[0].rsplit(".", 1)[0] for i in desired if i.kind == "column tag"
        } | {i.key.split(" ")[0] for i in desired if i.kind == "row access"}:
            items += self._attachments(table)
        return items

    def _tag_masking(self, tag: str) -> list[Item]:
        """The masking policies attached to a tag."""
        rows = self._rows(
            "SELECT POLICY_DB, POLICY_SCHEMA, POLICY_NAME FROM TABLE("
            f"{self.names.database}.INFORMATION_SCHEMA.POLICY_REFERENCES(REF_ENTITY_NAME =>"
            f" {_literal(tag)}, REF_ENTITY_DOMAIN => 'tag'))"
        )
        found = []
        for policy_db, policy_schema, policy_name in rows:
            policy = f"{policy_db}.{policy_schema}.{policy_name}".upper()
            unset = f"ALTER TAG {tag} UNSET MASKING POLICY {policy}"
            found.append(Item("tag masking", f"{tag} {policy}", "", ((), (unset,))))
        return found

    def _attachments(self, table: str) -> list[Item]:
        """The tags on a table's columns and the row access policy attached to it."""
        schema = f"{self.names.database}.INFORMATION_SCHEMA"
        try:
            tags = self._connection().query(
                Statement(
                    "SELECT TAG_DATABASE, TAG_SCHEMA, TAG_NAME, COLUMN_NAME, TAG_VALUE FROM"
                    f" TABLE({schema}.TAG_REFERENCES_ALL_COLUMNS({_literal(table)}, 'table'))"
                )
            )
            policies = self._connection().query(
                Statement(
                    "SELECT POLICY_DB, POLICY_SCHEMA, POLICY_NAME, POLICY_KIND,"
                    f" REF_ARG_COLUMN_NAMES FROM TABLE({schema}.POLICY_REFERENCES("
                    f"REF_ENTITY_NAME => {_literal(table)}, REF_ENTITY_DOMAIN => 'table'))"
                )
            )
        except WarehouseError:  # the table is not there (not published yet)
            return []
        found: list[Item] = []
        for tag_db, tag_schema, tag_name, column, value in tags:
            if column is None:
                continue
            tag = f"{tag_db}.{tag_schema}.{tag_name}".upper()
            name = str(column).upper()
            unset = f"ALTER TABLE {table} MODIFY COLUMN {name} UNSET TAG {tag}"
            found.append(Item("column tag", f"{table}.{name} {tag}", str(value), ((), (unset,))))
        for policy_db, policy_schema, policy_name, kind, arg_columns in policies:
            if str(kind).upper() != "ROW_ACCESS_POLICY":
                continue
            policy = f"{policy_db}.{policy_schema}.{policy_name}".upper()
            columns = str(arg_columns or "").strip("[]\"' ").upper()
            drop = f"ALTER TABLE {table} DROP ROW ACCESS POLICY {policy}"
            found.append(Item("row access", f"{table} {policy}", columns, ((), (drop,))))
        return found

    def apply_changes(self, changes: Sequence[Change]) -> None:
        """Run the statements of each change (Snowflake's DDL commits one by one)."""
        warehouse = self._connection()
        for change in changes:
            create, drop = change.item.payload
            if change.action == "remove":
                statements = drop
            elif change.item.kind in ("masking policy", "row access policy"):
                statements = create[1:] if change.action == "change" else create
            elif change.action == "change" and change.was is not None:
                statements = (*change.was.payload[1], *create)
            else:
                statements = create
            for sql in statements:
                try:
                    warehouse.execute(Statement(sql))
                except WarehouseError as exc:
                    raise GovernanceError(f"applying '{change.line()}': {exc}") from None

    def apply(self) -> Plan:
        """Compare with Snowflake, then make the changes (unlike ``plan``, this connects)."""
        planned = Target.plan(self)
        if planned.changes:
            self.apply_changes(planned.changes)
        return planned

    def check(self) -> Plan:
        """The differences between the policy and what Snowflake holds (connects)."""
        return Target.plan(self)

"""The policy in a PostgreSQL warehouse: roles, privileges, masked views, row-level security
and pgaudit object auditing, enforced by the server itself.

What the policy becomes (``<p>`` is ``targets.postgres.role_prefix``):

* a NOLOGIN group role ``<p><role>`` per role, and ``<p><role>_<scope>`` per row scope
  (member of the role's); people log in as their own users, granted one of these;
* ``USAGE`` on the schemas a role reads; ``SELECT`` on a table whose columns it reads all in
  the clear, else ``SELECT`` on its clear columns only (the masked or denied column is
  refused: *permission denied*) plus a masked view ``<schema>_<role>.<table>`` created
  ``WITH (security_barrier)``: every column, masked as the policy says (``hash``, ``partial``,
  ``null``) or left out (``deny``), and, for a role with row scopes, only the rows of the
  caller's scopes (``pg_has_role``);
* row-level security on every table a scoped role reads: a policy per audience
  (``region = 'EMEA'``) and one ``USING (true)`` per role that reads it whole (the owner,
  the publisher, is not subject to it);
* pgaudit's object audit role ``<p><audit_role>`` with ``SELECT`` on every governed table
  and view, named by ``pgaudit.role`` for the database: every read of them is logged
  (``AUDIT: OBJECT,...,READ,SELECT,TABLE,gold.customer_360,...``). pgaudit must be in
  ``shared_preload_libraries``; setting ``pgaudit.role`` needs a superuser or
  ``GRANT SET ON PARAMETER pgaudit.role`` to the applying user.

What counts as governed (and is revoked or dropped when the policy does not ask for it):
every privilege of a role other than the owner on the catalog's tables the warehouse holds
and on the relations of the view schemas, their row policies and row-level security, the
privileges of the policy's roles and PUBLIC on the layer schemas, and the roles and view
schemas carrying the ``cdc-governance`` comment. Other relations of a layer schema (another
team's tables, the publish control table) are left alone. Views and row policies carry a
comment with the fingerprint of their definition and of the server's rendering of it, so
one altered by hand is drift.

Silver is not published to the warehouse by ``cdc publish``; a layer is governed here when
``targets.postgres.schemas`` names its schema (``gold``: ``warehouse.schema``), and each of
its tables once it exists there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cdc.config.settings import Settings
from cdc.governance.access import Access, RoleAccess, TableAccess
from cdc.governance.base import Change, GovernanceError, Item, Target
from cdc.governance.masks import POSTGRES
from cdc.governance.policy import PostgresTarget
from cdc.warehouse import open_warehouse
from cdc.warehouse.base import Statement, Warehouse, WarehouseError

__all__ = [
    "MARKER",
    "PgColumn",
    "PgRelation",
    "PostgresGovernance",
    "postgres_items",
    "quote_ident",
    "quote_literal",
]

MARKER = "cdc-governance"
"""The comment prefix of every role, schema, view and row policy the policy owns."""
_ORDER = (
    "role",
    "membership",
    "audit",
    "schema",
    "view",
    "row security",
    "row policy",
    "privilege",
    "column privilege",
)
_UNSEALED = "changed outside the policy"


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A PostgreSQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PgColumn:
    """A column of a warehouse relation."""

    name: str
    type: str
    """``format_type`` of it."""


@dataclass(frozen=True)
class PgRelation:
    """A table of the warehouse that holds a catalog table."""

    schema: str
    name: str
    columns: tuple[PgColumn, ...]

    @property
    def sql(self) -> str:
        """``"schema"."name"``."""
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


@dataclass(frozen=True)
class _Sql:
    """How to create, change and drop one item; ``seal`` names what to fingerprint after."""

    create: tuple[str, ...]
    drop: tuple[str, ...]
    alter: tuple[str, ...] | None = None
    """Statements that change the item in place (None: drop, then create)."""
    seal: tuple[str, str, str] | None = None
    """(``view`` | ``policy``, qualified relation, policy name): comment the live form."""
    spec: str = ""
    after: tuple[str, ...] = ()
    """Statements to run after a re-creation (a view's grants)."""


@dataclass
class _Names:
    prefix: str
    auditor: str

    def role(self, name: str) -> str:
        return self.prefix + name

    def view_schema(self, schema: str, role: str) -> str:
        return f"{schema}_{role}"


def _role_items(access: Access, names: _Names) -> list[Item]:
    items = []
    roles: list[tuple[str, str, str | None]] = [(r.name, r.description, None) for r in access.roles]
    roles += [
        (a, f"{r.name}, row scope {a}", r.name)
        for r in access.roles
        for a in r.audiences
        if a != r.name
    ]
    roles.append(
        (names.auditor[len(names.prefix) :], "pgaudit object audit role: never logs in", None)
    )
    for name, description, parent in roles:
        role = quote_ident(names.role(name))
        comment = quote_literal(f"{MARKER} role: {description}")
        items.append(
            Item(
                "role",
                names.role(name),
                "NOLOGIN",
                _Sql(
                    create=(f"CREATE ROLE {role} NOLOGIN", f"COMMENT ON ROLE {role} IS {comment}"),
                    drop=(f"DROP ROLE {role}",),
                    alter=(
                        f"ALTER ROLE {role} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                        " NOBYPASSRLS NOREPLICATION",
                        f"COMMENT ON ROLE {role} IS {comment}",
                    ),
                ),
            )
        )
        if parent is not None:
            member, group = names.role(name), names.role(parent)
            items.append(
                Item(
                    "membership",
                    f"{member} in {group}",
                    payload=_Sql(
                        create=(f"GRANT {quote_ident(group)} TO {quote_ident(member)}",),
                        drop=(f"REVOKE {quote_ident(group)} FROM {quote_ident(member)}",),
                    ),
                )
            )
    return items


def _privilege(grantee: str, privilege: str, kind: str, target: str) -> Item:
    who = "PUBLIC" if grantee == "PUBLIC" else quote_ident(grantee)
    on = f"SCHEMA {quote_ident(target)}" if kind == "schema" else f"TABLE {target}"
    label = f"schema {target}" if kind == "schema" else target.replace('"', "")
    return Item(
        "privilege",
        f"{grantee} {privilege} {label}",
        payload=_Sql(
            create=(f"GRANT {privilege} ON {on} TO {who}",),
            drop=(f"REVOKE {privilege} ON {on} FROM {who}",),
        ),
    )


def _column_privilege(grantee: str, relation: str, columns: Sequence[str]) -> Item:
    listed = ", ".join(quote_ident(c) for c in columns)
    who = "PUBLIC" if grantee == "PUBLIC" else quote_ident(grantee)
    return Item(
        "column privilege",
        f"{grantee} SELECT {relation.replace(chr(34), '')}",
        ", ".join(sorted(columns)),
        _Sql(
            create=(f"GRANT SELECT ({listed}) ON TABLE {relation} TO {who}",),
            drop=(f"REVOKE SELECT ({listed}) ON TABLE {relation} FROM {who}",),
        ),
    )


def _view_sql(
    role: RoleAccess, table: TableAccess, relation: PgRelation, names: _Names
) -> tuple[str, str]:
    """(qualified view name, its CREATE VIEW statement)."""
    schema = names.view_schema(relation.schema, role.name)
    view = f"{quote_ident(schema)}.{quote_ident(relation.name)}"
    select = [
        POSTGRES.column(quote_ident(c.name), table.treatment(c.name), c.type)
        for c in relation.columns
    ]
    columns = ", ".join(s for s in select if s is not None)
    where = ""
    if table.rows is not None:
        column = quote_ident(table.rows.column)
        scopes = " OR ".join(
            f"(pg_has_role({quote_literal(names.role(audience))}, 'MEMBER')"
            f" AND {column} = {quote_literal(value)})"
            for audience, value in table.rows.values.items()
        )
        where = f" WHERE {scopes}"
    sql = (
        f"CREATE VIEW {view} WITH (security_barrier = true) AS SELECT {columns}"
        f" FROM {relation.sql}{where}"
    )
    return view, sql


def _table_items(
    role: RoleAccess, table: TableAccess, relation: PgRelation, names: _Names
) -> tuple[list[Item], set[tuple[str, str]]]:
    """How one role reads one warehouse table: a table grant when it reads every column in
    the clear, else grants on its clear columns and a masked view; and the schemas it uses."""
    grantee = names.role(role.name)
    usage = {(grantee, relation.schema)}
    if table.all_clear:
        return [_privilege(grantee, "SELECT", "table", relation.sql)], usage
    items = []
    known = {c.name for c in relation.columns}
    clear = [c for c in table.clear if c in known]
    if clear:
        items.append(_column_privilege(grantee, relation.sql, clear))
    view, sql = _view_sql(role, table, relation, names)
    view_schema = names.view_schema(relation.schema, role.name)
    usage |= {(grantee, view_schema), (names.auditor, view_schema)}
    grants = [_privilege(who, "SELECT", "table", view) for who in (grantee, names.auditor)]
    spec = _fingerprint(sql)
    payload = _Sql(
        create=(sql,),
        drop=(f"DROP VIEW IF EXISTS {view}",),
        seal=("view", view, ""),
        spec=spec,
        after=tuple(s for g in grants for s in g.payload.create),  # a re-created view's grants
    )
    items += [*grants, Item("view", view.replace('"', ""), spec, payload, readable=False)]
    return items, usage


def _row_security_items(
    access: Access, ref: str, relation: PgRelation, names: _Names
) -> list[Item]:
    """Row-level security on a table a scoped role reads: a policy per audience, and one
    reading every row per role that reads it whole."""
    items = [
        Item(
            "row security",
            relation.sql.replace('"', ""),
            "enabled",
            _Sql(
                create=(f"ALTER TABLE {relation.sql} ENABLE ROW LEVEL SECURITY",),
                drop=(f"ALTER TABLE {relation.sql} DISABLE ROW LEVEL SECURITY",),
            ),
        )
    ]
    for role, table in access.readers(ref):
        if table.rows is None:
            rules = [(names.role(role.name), "true")]
        else:
            column = quote_ident(table.rows.column)
            rules = [
                (names.role(a), f"{column} = {quote_literal(v)}")
                for a, v in table.rows.values.items()
            ]
        for policy_role, using in rules:
            sql = (
                f"CREATE POLICY {quote_ident(policy_role)} ON {relation.sql} AS PERMISSIVE"
                f" FOR SELECT TO {quote_ident(policy_role)} USING ({using})"
            )
            spec = _fingerprint(sql)
            payload = _Sql(
                create=(sql,),
                drop=(_drop_policy(policy_role, relation.sql),),
                seal=("policy", relation.sql, policy_role),
                spec=spec,
            )
            key = f"{relation.sql.replace(chr(34), '')} {policy_role}"
            items.append(Item("row policy", key, spec, payload, readable=False))
    return items


def _view_schema_item(schema: str) -> Item:
    comment = quote_literal(f"{MARKER} schema: masked views of one role")
    return Item(
        "schema",
        schema,
        "governed",
        _Sql(
            create=(
                f"CREATE SCHEMA {quote_ident(schema)}",
                f"COMMENT ON SCHEMA {quote_ident(schema)} IS {comment}",
            ),
            drop=(f"DROP SCHEMA {quote_ident(schema)} CASCADE",),
            alter=(f"COMMENT ON SCHEMA {quote_ident(schema)} IS {comment}",),
        ),
    )


def postgres_items(
    access: Access,
    config: PostgresTarget,
    present: Mapping[str, PgRelation],
    database: str,
) -> list[Item]:
    """The desired state of the warehouse: pure, from the policy and the tables it holds.

    Args:
        access: the resolved policy.
        config: ``targets.postgres``.
        present: catalog table (``layer.name``) -> the warehouse table holding it (tables
            not there yet are governed once they are).
        database: the database's name (``pgaudit.role`` is set for it).

    Returns:
        Roles, memberships, the audit setting, view schemas, views, row security and row
        policies, privileges.
    """
    names = _Names(config.role_prefix, config.role_prefix + config.audit_role)
    items = _role_items(access, names)
    audit = _Sql(
        create=(
            f"ALTER DATABASE {quote_ident(database)} SET pgaudit.role ="
            f" {quote_literal(names.auditor)}",
        ),
        drop=(f"ALTER DATABASE {quote_ident(database)} RESET pgaudit.role",),
    )
    items.append(Item("audit", f"pgaudit.role of database {database}", names.auditor, audit))
    items.append(Item("audit", "pgaudit in shared_preload_libraries", _loaded(True)))
    usage: set[tuple[str, str]] = set()
    filtered: dict[str, PgRelation] = {}
    for role in access.roles:
        for table in role.tables:
            relation = present.get(table.table.ref)
            if relation is None:
                continue
            if table.rows is not None:
                filtered[table.table.ref] = relation
            found, used = _table_items(role, table, relation, names)
            items += found
            usage |= used
    for relation in {r.sql: r for r in present.values()}.values():
        items.append(_privilege(names.auditor, "SELECT", "table", relation.sql))
        usage.add((names.auditor, relation.schema))
    for ref, relation in filtered.items():
        items += _row_security_items(access, ref, relation, names)
    layer_schemas = {r.schema for r in present.values()}
    items += [_view_schema_item(s) for s in sorted({s for _, s in usage} - layer_schemas)]
    items += [_privilege(who, "USAGE", "schema", schema) for who, schema in sorted(usage)]
    return items


# ------------------------------------------------------------------------ reading state

_RELATIONS = """
SELECT n.nspname, c.relname, c.relkind, c.oid::bigint, pg_get_userbyid(c.relowner),
       c.relrowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""
_COLUMNS = """
SELECT attrelid::bigint, attname, format_type(atttypid, atttypmod)
FROM pg_attribute WHERE attrelid = ANY(%s::bigint[]::oid[]) AND attnum > 0 AND NOT attisdropped
ORDER BY attrelid, attnum
"""
_RELATION_ACL = """
SELECT n.nspname, c.relname, CASE WHEN a.grantee = 0 THEN 'PUBLIC'
       ELSE pg_get_userbyid(a.grantee) END, a.privilege_type
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
WHERE n.nspname = ANY(%s) AND a.grantee <> c.relowner
"""
_COLUMN_ACL = """
SELECT n.nspname, c.relname, CASE WHEN a.grantee = 0 THEN 'PUBLIC'
       ELSE pg_get_userbyid(a.grantee) END, t.attname
FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(t.attacl) a
WHERE n.nspname = ANY(%s) AND a.grantee <> c.relowner AND a.privilege_type = 'SELECT'
  AND NOT t.attisdropped
"""
_SCHEMA_ACL = """
SELECT n.nspname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type, coalesce(obj_description(n.oid, 'pg_namespace'), '')
FROM pg_namespace n LEFT JOIN LATERAL aclexplode(n.nspacl) a ON a.grantee <> n.nspowner
WHERE n.nspname = ANY(%s) OR obj_description(n.oid, 'pg_namespace') LIKE %s
"""
_ROLES = """
SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication,
       coalesce(shobj_description(oid, 'pg_authid'), '')
FROM pg_roles WHERE rolname = ANY(%s)
   OR (starts_with(rolname, %s) AND shobj_description(oid, 'pg_authid') LIKE %s)
"""
_MEMBERS = """
SELECT pg_get_userbyid(m.member), pg_get_userbyid(m.roleid) FROM pg_auth_members m
WHERE pg_get_userbyid(m.member) = ANY(%s) AND pg_get_userbyid(m.roleid) = ANY(%s)
"""
_POLICIES = """
SELECT n.nspname, c.relname, p.polname, coalesce(obj_description(p.oid, 'pg_policy'), ''),
       concat_ws(' | ', p.polcmd::text, p.polpermissive::text,
                 (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END, ','
                                    ORDER BY 1) FROM unnest(p.polroles) r),
                 pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%s)
"""
_VIEW_LIVE = """
SELECT coalesce(obj_description(c.oid, 'pg_class'), ''),
       concat_ws(' | ', pg_get_viewdef(c.oid), array_to_string(c.reloptions, ','))
FROM pg_class c WHERE c.oid = %s::regclass
"""
_POLICY_LIVE = """
SELECT coalesce(obj_description(p.oid, 'pg_policy'), ''),
       concat_ws(' | ', p.polcmd::text, p.polpermissive::text,
                 (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END, ','
                                    ORDER BY 1) FROM unnest(p.polroles) r),
                 pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
FROM pg_policy p WHERE p.polrelid = %s::regclass AND p.polname = %s
"""
_AUDIT = """
SELECT (SELECT count(*) FROM pg_settings WHERE name = 'pgaudit.role'),
       current_database(),
       (SELECT string_agg(s, ',') FROM pg_db_role_setting d, unnest(d.setconfig) s
        WHERE d.setrole = 0 AND s LIKE 'pgaudit.role=%%'
          AND d.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()))
"""


def _sealed(kind: str, key: str, comment: str, live: str, drop: str) -> Item:
    """An actual view or row policy: the spec it was created from (its comment), or, when
    its live form no longer matches the fingerprint sealed in the comment, altered by hand."""
    payload = _Sql((), (drop,))
    if not comment.startswith(MARKER):
        return Item(kind, key, "not created by the policy", payload)
    fields = dict(part.split("=", 1) for part in comment.split()[1:] if "=" in part)
    if fields.get("live") != _fingerprint(live):
        return Item(kind, key, _UNSEALED, payload)
    return Item(kind, key, fields.get("spec", ""), payload, readable=False)


def _drop_policy(policy: str, relation: str) -> str:
    return f"DROP POLICY IF EXISTS {quote_ident(policy)} ON {relation}"


def _loaded(loaded: bool) -> str:
    return "loaded" if loaded else "not loaded"


@dataclass
class _Warehouse:
    """What the warehouse holds that the policy governs."""

    database: str = ""
    audit_role: str | None = None
    present: dict[str, PgRelation] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)


class PostgresGovernance(Target):
    """The policy enforced by a PostgreSQL warehouse (``warehouse.*`` connects, as the
    tables' owner: the publisher)."""

    name = "postgres"
    order = _ORDER

    def __init__(self, access: Access, config: PostgresTarget, warehouse: Warehouse) -> None:
        """Create the target (the connection opens now).

        Args:
            access: the resolved policy.
            config: ``targets.postgres``.
            warehouse: a PostgreSQL warehouse (not connected).
        """
        self.access = access
        self.config = config
        self.warehouse = warehouse
        self.layer_schemas = {**config.schemas}
        self.layer_schemas.setdefault("gold", warehouse.schema)
        warehouse.connect()
        self._state: _Warehouse | None = None

    @classmethod
    def from_settings(
        cls, access: Access, config: PostgresTarget, settings: Settings
    ) -> PostgresGovernance:
        """The target over the warehouse ``warehouse.*`` names (its ``target`` may be another:
        the connection settings are read as PostgreSQL's)."""
        wh = settings.warehouse.model_copy(update={"target": "postgres"})
        return cls(access, config, open_warehouse(settings.model_copy(update={"warehouse": wh})))

    def close(self) -> None:
        """Close the connection."""
        self.warehouse.close()

    def _query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        return self.warehouse.query(Statement(sql, tuple(params)))

    def _read(self) -> _Warehouse:
        """Read the governed state (once per plan)."""
        if self._state is not None:
            return self._state
        state = _Warehouse()
        loaded, database, audit = self._query(_AUDIT)[0]
        state.database = str(database)
        state.items.append(
            Item("audit", "pgaudit in shared_preload_libraries", _loaded(bool(loaded)))
        )
        if audit:
            state.audit_role = str(audit).split(",")[0].partition("=")[2]
            reset = f"ALTER DATABASE {quote_ident(state.database)} RESET pgaudit.role"
            key = f"pgaudit.role of database {state.database}"
            state.items.append(Item("audit", key, state.audit_role, _Sql((), (reset,))))
        layer_schemas = sorted(set(self.layer_schemas.values()))
        schema_rows = self._query(_SCHEMA_ACL, layer_schemas, f"{MARKER}%")
        view_schemas = sorted({str(r[0]) for r in schema_rows if str(r[3]).startswith(MARKER)})
        governed = sorted({*layer_schemas, *view_schemas})
        relations = [
            (str(r[0]), str(r[1]), str(r[2]), int(str(r[3])), bool(r[5]))
            for r in self._query(_RELATIONS, governed)
        ]
        self._read_tables(state, relations)
        # Governed: the catalog's tables the warehouse holds and the policy's view schemas.
        # Other relations of a layer schema (another team's tables, the publish control
        # table) are left alone; on a layer schema only the policy's roles' and PUBLIC's
        # privileges are governed.
        tables = {(r.schema, r.name) for r in state.present.values()}

        def governed_relation(schema: str, name: str) -> bool:
            return (schema, name) in tables or schema in view_schemas

        self._read_privileges(state, schema_rows, view_schemas, governed, governed_relation)
        self._read_row_security(state, relations, governed, tables)
        for schema, name, kind, _, _ in relations:
            if kind == "v" and schema in view_schemas:
                view = f"{quote_ident(schema)}.{quote_ident(name)}"
                comment, live = self._query(_VIEW_LIVE, view)[0]
                drop = f"DROP VIEW IF EXISTS {view}"
                state.items.append(
                    _sealed("view", f"{schema}.{name}", str(comment), str(live), drop)
                )
        self._read_roles(state)
        self._state = state
        return state

    def _read_tables(
        self, state: _Warehouse, relations: list[tuple[str, str, str, int, bool]]
    ) -> None:
        """The warehouse tables holding catalog tables, with their columns."""
        tables = {(schema, name): oid for schema, name, kind, oid, _ in relations if kind in "rp"}
        columns: dict[int, list[PgColumn]] = {}
        for oid, name, type_sql in self._query(_COLUMNS, list(tables.values())):
            columns.setdefault(int(str(oid)), []).append(PgColumn(str(name), str(type_sql)))
        for table in self.access.catalog:
            schema = self.layer_schemas.get(table.layer)
            oid = tables.get((schema, table.name)) if schema is not None else None
            if schema is not None and oid is not None:
                held = tuple(columns.get(oid, ()))
                state.present[table.ref] = PgRelation(schema, table.name, held)

    def _read_privileges(
        self,
        state: _Warehouse,
        schema_rows: list[tuple[object, ...]],
        view_schemas: list[str],
        governed: list[str],
        governed_relation: Callable[[str, str], bool],
    ) -> None:
        """Every privilege a role other than the owner holds on the governed relations
        (columns included) and schemas, and the view schemas the policy created."""
        items = state.items
        policy_roles = {i.key for i in self._desired(state) if i.kind == "role"}

        def governed_grantee(schema: str, grantee: str) -> bool:
            if schema in view_schemas or grantee == "PUBLIC" or grantee in policy_roles:
                return True
            return grantee.startswith(self.config.role_prefix)

        for view_schema in view_schemas:
            drop = f"DROP SCHEMA {quote_ident(view_schema)} CASCADE"
            items.append(Item("schema", view_schema, "governed", _Sql((), (drop,))))
        for schema, grantee, privilege, _ in schema_rows:
            if grantee is not None and governed_grantee(str(schema), str(grantee)):
                items.append(_privilege(str(grantee), str(privilege), "schema", str(schema)))
        for schema, name, grantee, privilege in self._query(_RELATION_ACL, governed):
            if governed_relation(str(schema), str(name)):
                relation = f"{quote_ident(str(schema))}.{quote_ident(str(name))}"
                items.append(_privilege(str(grantee), str(privilege), "table", relation))
        granted: dict[tuple[str, str, str], list[str]] = {}
        for schema, name, grantee, column in self._query(_COLUMN_ACL, governed):
            if governed_relation(str(schema), str(name)):
                key = (str(schema), str(name), str(grantee))
                granted.setdefault(key, []).append(str(column))
        for (schema_name, table_name, who), names in granted.items():
            relation = f"{quote_ident(schema_name)}.{quote_ident(table_name)}"
            items.append(_column_privilege(who, relation, names))

    def _read_row_security(
        self,
        state: _Warehouse,
        relations: list[tuple[str, str, str, int, bool]],
        governed: list[str],
        tables: set[tuple[str, str]],
    ) -> None:
        """Row-level security switches and every row policy of the governed tables."""
        for schema, name, _, _, enabled in relations:
            if (schema, name) in tables and enabled:
                relation = f"{quote_ident(schema)}.{quote_ident(name)}"
                drop = f"ALTER TABLE {relation} DISABLE ROW LEVEL SECURITY"
                item = Item("row security", f"{schema}.{name}", "enabled", _Sql((), (drop,)))
                state.items.append(item)
        for row in self._query(_POLICIES, governed):
            if (str(row[0]), str(row[1])) not in tables:
                continue
            table, policy, comment, live = f"{row[0]}.{row[1]}", *map(str, row[2:])
            relation = f"{quote_ident(str(row[0]))}.{quote_ident(str(row[1]))}"
            drop = _drop_policy(policy, relation)
            state.items.append(_sealed("row policy", f"{table} {policy}", comment, live, drop))

    def _read_roles(self, state: _Warehouse) -> None:
        """The policy's roles (by name, and any role with the prefix and the marker), their
        attributes, and the memberships among them."""
        desired_roles = [i.key for i in self._desired(state) if i.kind == "role"]
        prefix = self.config.role_prefix
        roles = self._query(_ROLES, desired_roles, prefix, f"{MARKER}%")
        for name, *flags, comment in roles:
            words = ("LOGIN", "SUPERUSER", "CREATEDB", "CREATEROLE", "BYPASSRLS", "REPLICATION")
            spec = " ".join(w for w, on in zip(words, flags, strict=True) if on) or "NOLOGIN"
            if not str(comment).startswith(MARKER):
                spec += " (not created by the policy)"
            drop = f"DROP ROLE {quote_ident(str(name))}"
            state.items.append(Item("role", str(name), spec, _Sql((), (drop,))))
        names = [str(r[0]) for r in roles]
        for member, group in self._query(_MEMBERS, names, names):
            revoke = f"REVOKE {quote_ident(str(group))} FROM {quote_ident(str(member))}"
            state.items.append(
                Item("membership", f"{member} in {group}", payload=_Sql((), (revoke,)))
            )

    def _desired(self, state: _Warehouse) -> list[Item]:
        return postgres_items(self.access, self.config, state.present, state.database)

    def desired(self) -> list[Item]:
        """The items the policy asks for, given the tables the warehouse holds."""
        return self._desired(self._read())

    def actual(self) -> list[Item]:
        """The governed items the warehouse holds."""
        return list(self._read().items)

    def notes(self) -> list[str]:
        """Tables of the governed layers the warehouse does not hold (yet)."""
        state = self._read()
        notes = []
        for layer in ("bronze", "quarantine", "silver", "gold"):
            read = {
                t.table.ref for r in self.access.roles for t in r.tables if t.table.layer == layer
            }
            if not read:
                continue
            schema = self.layer_schemas.get(layer)
            if schema is None:
                notes.append(f"{layer} is not in the warehouse (targets.postgres.schemas)")
                continue
            absent = sorted(ref for ref in read if ref not in state.present)
            if absent:
                notes.append(
                    f"not in schema {schema} yet, governed once they are: "
                    + ", ".join(ref.split(".", 1)[1] for ref in absent)
                )
        return notes

    def apply_changes(self, changes: Sequence[Change]) -> None:
        """Run the changes in one transaction (PostgreSQL's DDL is transactional)."""
        for change in changes:
            if change.item.kind == "audit" and change.item.key.startswith("pgaudit in"):
                raise GovernanceError(
                    "pgaudit is not loaded by the server: add it to shared_preload_libraries"
                    " and restart PostgreSQL (Debian: apt-get install postgresql-15-pgaudit)"
                )
        try:
            with self.warehouse.transaction():
                for change in changes:
                    self._apply(change)
        except WarehouseError as exc:
            raise GovernanceError(f"applying '{change.line()}': {exc}") from None
        finally:
            self._state = None

    def _run(self, sql: str) -> None:
        self.warehouse.execute(Statement(sql))

    def _apply(self, change: Change) -> None:
        sql: _Sql = change.item.payload
        if change.action == "remove":
            statements = sql.drop
        elif change.action == "add":
            statements = sql.create
        else:
            old: _Sql = change.was.payload if change.was is not None else sql
            statements = sql.alter if sql.alter is not None else (*old.drop, *sql.create)
        for statement in statements:
            self._run(statement)
        if change.action != "remove" and sql.seal is not None:
            kind, relation, policy = sql.seal
            if kind == "view":
                rows = self._query(_VIEW_LIVE, relation)
                target = f"VIEW {relation}"
            else:
                rows = self._query(_POLICY_LIVE, relation, policy)
                target = f"POLICY {quote_ident(policy)} ON {relation}"
            live = _fingerprint(str(rows[0][1]))
            self._run(
                f"COMMENT ON {target} IS {quote_literal(f'{MARKER} spec={sql.spec} live={live}')}"
            )
        if change.action == "change":
            for statement in sql.after:
                self._run(statement)

"""The database side of the peer and the floor: the statements the API sends, written for asyncpg.

Both servers run exactly these, so the floor measures what the same database work costs with
nothing around it, and the peer what it costs with the API's checks around it. The statements
follow ``models/crud.py`` and ``models/access.py`` as ``bench/results/latest.json``'s
``sql_sample`` shows them:

- get by id: one statement, the read and its access row (``WITH shown AS (...), recorded AS
  (INSERT INTO access_log ...) SELECT * FROM shown``), committed without waiting for the WAL
  flush (the API's ``SET LOCAL synchronous_commit TO off``; here the pool's connections carry
  the setting, see ``Database``);
- a list: the page's ids from the list index joined to the page's rows and embeds, with the
  page's access row in the same statement; while no estimate is kept for the list, the same
  statement also carries the capped count as its last column (the planner's estimate, kept 30 s,
  past the limit). A patient search counts its matches up to SEARCH_COUNT_EXACT_LIMIT + 1, takes
  the page's ids from them, reads their rows and writes their access row in one statement;
- a create: one statement with the reference check, the INSERT, its audit row (the image built by
  PostgreSQL as ``models/audit.image_in_sql`` builds it) and the outbox rows (``models/events.py``).

Columns come from the catalog at start-up, less the ones the API never shows, so a column added
by a migration shows here as it does in the API.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg
import orjson

# The columns the API never shows (models/tables.py: PATIENT_INTERNAL, STAFF_SECRETS); one that is
# not there is simply not found.
HIDDEN = {"patient": {"search_text"}, "staff": {"password_hash", "password_changed_at"}}
SECRET_FIELDS = {"password", "password_hash", "refresh_token", "refresh_token_hash"}
SERVER_SET = {"id", "org_id", "created_at", "updated_at"}  # never "changed" by a client
ESTIMATE_TTL_S = 30.0
_NEWEST_FIRST = "{t}.created_at DESC, {t}.id DESC"


@dataclass(frozen=True)
class Resource:
    name: str
    plural: str
    patient_column: str  # whose data a row shows: every read of rows writes an access row
    embeds: dict  # embed name -> (table, column of this table naming it)
    references: dict = field(default_factory=dict)  # body field -> table it must name a live row of
    filters: dict = field(default_factory=dict)  # query parameter -> (kind, column)


PATIENTS = Resource("patient", "patients", "id", {"branch": ("branch", "branch_id")},
                    references={"branch_id": "branch"},
                    filters={"search": ("search", "search_text"), "status": ("equals", "status"),
                             "branchId": ("equals", "branch_id")})
APPOINTMENTS = Resource("appointment", "appointments", "patient_id",
                        {"patient": ("patient", "patient_id"), "staff": ("staff", "staff_id"),
                         "branch": ("branch", "branch_id")},
                        filters={"patientId": ("equals", "patient_id"), "staffId": ("equals", "staff_id"),
                                 "branchId": ("equals", "branch_id"), "status": ("equals", "status"),
                                 "date": ("on_day", "date"), "dateFrom": ("at_or_after", "date"),
                                 "dateTo": ("before", "date")})


def _recorded(resource: Resource, action: str, first: int) -> str:
    """The CTE ``recorded``: the access row of the patients in the CTE ``shown`` ($1 is the
    organization; ``$first`` and the three after it who read, and from where)."""
    patients = f"shown.{resource.patient_column}"
    return ("recorded AS (INSERT INTO access_log (org_id, user_id, action, resource, patient_ids, ip_address,"
            f" user_agent, request_id) SELECT $1, ${first}, '{action}', '{resource.name}',"
            f" array_agg(DISTINCT {patients}), ${first + 1}, ${first + 2}, ${first + 3} FROM shown"
            f" HAVING array_agg(DISTINCT {patients}) IS NOT NULL)")


class Refused(Exception):
    """What the API answers with an error envelope: its code, message and field."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


@dataclass
class Origin:
    user_id: str
    ip: str | None
    user_agent: str | None
    request_id: str | None


def escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _init_connection(conn) -> None:
    # jsonb (branch coordinates) as values, as psycopg2 gives them; ids as text, as the API keeps them.
    await conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                              schema="pg_catalog")
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")


async def _nothing_to_reset(_conn) -> None:
    """The pools' connections never change session state (autocommit, no LISTEN, no advisory
    locks): asyncpg's default reset would be one more round trip per request."""


class Database:
    """Two pools, as the API has two kinds of statement: reads that record an access row commit
    without waiting for the WAL flush (``synchronous_commit`` off for that pool's connections,
    set in the startup packet: no round trip), writes commit as usual. Both in autocommit, each
    statement its own transaction, as the API runs them."""

    def __init__(self, url: str, *, pool_size: int, application_name: str, exact_limit: int,
                 search_exact_limit: int, retry_window_s: int):
        self.url, self.pool_size, self.application_name = url, pool_size, application_name
        self.exact_limit, self.search_exact_limit = exact_limit, search_exact_limit
        self.retry_window_s = retry_window_s
        self.columns: dict[str, list[tuple[str, str]]] = {}
        self.statements: dict[tuple, object] = {}
        self.estimates: dict[tuple, tuple[float, int]] = {}

    async def open(self) -> None:
        # Idle connections close after 5 s: while the other servers of the bench run, the peer's and
        # the floor's 2 pools x DB_POOL_SIZE x workers would otherwise hold 80 connections and,
        # with the API's, exceed the server's max_connections.
        common = dict(min_size=1, max_size=self.pool_size, init=_init_connection, reset=_nothing_to_reset,
                      max_inactive_connection_lifetime=5.0)
        self.recorded = await asyncpg.create_pool(
            self.url, **common, server_settings={"application_name": self.application_name,
                                                 "synchronous_commit": "off"})
        self.writer = await asyncpg.create_pool(
            self.url, **common, server_settings={"application_name": self.application_name})
        async with self.writer.acquire() as conn:
            rows = await conn.fetch("""
                SELECT c.relname, a.attname, format_type(a.atttypid, NULL) AS type
                  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND a.attnum > 0
                   AND NOT a.attisdropped AND c.relname = ANY($1::text[])
                 ORDER BY c.relname, a.attnum""", ["patient", "appointment", "staff", "branch"])
        for row in rows:
            if row["attname"] not in HIDDEN.get(row["relname"], ()):
                self.columns.setdefault(row["relname"], []).append((row["attname"], row["type"]))

    async def session_member(self, sid: str):
        """The member of a session in force (not ended, the member not deleted), else None."""
        async with self.writer.acquire() as conn:
            return await conn.fetchval(
                "SELECT s.user_id FROM auth_session AS s JOIN staff AS m ON m.org_id = s.org_id AND m.id = s.user_id"
                " WHERE s.id = $1 AND s.ended_at IS NULL AND m.deleted_at IS NULL", sid)

    async def close(self) -> None:
        await self.recorded.close()
        await self.writer.close()

    def names(self, table: str) -> list[str]:
        return [name for name, _ in self.columns[table]]

    def _statement(self, key: tuple, build):
        built = self.statements.get(key)
        if built is None:
            built = self.statements[key] = build()
        return built

    # --- reading ----------------------------------------------------------------------------------

    def _selection(self, resource: Resource, embed: tuple[str, ...]) -> tuple[str, str, tuple]:
        """(SELECT list, FROM with the LEFT JOINed to-one embeds, how to split a row); $1 is the org."""
        t = resource.name
        columns = [f"{t}.{name}" for name in self.names(t)]
        source = t
        nested = []
        for name in embed:
            target, column = resource.embeds[name]
            alias = f"embed_{name}"
            source += (f" LEFT OUTER JOIN {target} AS {alias} ON {alias}.id = {t}.{column}"
                       f" AND {alias}.org_id = $1 AND {alias}.deleted_at IS NULL")
            columns += [f"{alias}.{c} AS {name}__{c}" for c in self.names(target)]
            nested.append((name, tuple(self.names(target))))
        return ", ".join(columns), source, (tuple(self.names(t)), tuple(nested))

    @staticmethod
    def split(shape: tuple, row) -> dict:
        base, nested = shape
        item = {name: row[name] for name in base}
        for name, columns in nested:
            item[name] = ({c: row[f"{name}__{c}"] for c in columns}
                          if row[f"{name}__id"] is not None else None)
        return item

    def _by_id(self, resource: Resource, embed: tuple[str, ...]) -> tuple[str, tuple]:
        def build():
            columns, source, shape = self._selection(resource, embed)
            t = resource.name
            return (f"WITH shown AS (SELECT {columns} FROM {source}"
                    f" WHERE {t}.id = $2 AND {t}.org_id = $1 AND {t}.deleted_at IS NULL),"
                    f" {_recorded(resource, 'get', 3)} SELECT * FROM shown", shape)
        return self._statement(("get", resource.name, embed), build)

    async def get_row(self, resource: Resource, org_id: str, origin: Origin, row_id: str,
                      embed: tuple[str, ...] = ()) -> dict:
        statement, shape = self._by_id(resource, embed)
        async with self.recorded.acquire() as conn:
            row = await conn.fetchrow(statement, org_id, row_id, origin.user_id, origin.ip,
                                      origin.user_agent, origin.request_id)
        if row is None:
            raise Refused("NOT_FOUND", f"{resource.name} not found")
        return self.split(shape, row)

    @staticmethod
    def _where(resource: Resource, filters: dict, first: int) -> tuple[str, list]:
        """The scope and the filters sent, numbered from ``$first`` ($1 is the organization)."""
        t = resource.name
        clauses, values = [f"{t}.org_id = $1", f"{t}.deleted_at IS NULL"], []
        for name in sorted(filters):
            kind, column = resource.filters[name]
            n = first + len(values)
            if kind == "search":
                clauses.append(f"{t}.{column} LIKE lower(${n})")
                values.append(f"%{escape_like(filters[name])}%")
            elif kind == "equals":
                clauses.append(f"{t}.{column} = ${n}")
                values.append(filters[name])
            elif kind == "on_day":
                clauses.append(f"{t}.{column} >= ${n} AND {t}.{column} < ${n} + interval '1 day'")
                values.append(filters[name])
            else:
                clauses.append(f"{t}.{column} {'>=' if kind == 'at_or_after' else '<'} ${n}")
                values.append(filters[name])
        return " AND ".join(clauses), values

    def _cached_estimate(self, key: tuple) -> int | None:
        cached = self.estimates.get(key)
        if cached is not None and time.monotonic() - cached[0] < ESTIMATE_TTL_S:
            return cached[1]
        return None

    async def _count(self, conn, resource: Resource, where: str, values: list, key: tuple, limit: int,
                     counted: int | None = None) -> tuple[int, bool]:
        cached = self._cached_estimate(key)
        if cached is not None:
            return cached, True
        t = resource.name
        if counted is None:
            counted = await conn.fetchval(
                f"SELECT count(*) FROM (SELECT 1 FROM {t} WHERE {where} LIMIT {limit + 1}) AS capped",
                *values)
        if counted <= limit:
            return counted, False
        plan = orjson.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {t} WHERE {where}", *values))
        estimate = max(int(plan[0]["Plan"]["Plan Rows"]), limit + 1)
        if len(self.estimates) > 10_000:
            self.estimates.clear()
        self.estimates[key] = (time.monotonic(), estimate)
        return estimate, True

    def _list(self, resource: Resource, names: tuple[str, ...], embed: tuple[str, ...], limit: int) -> dict:
        """The statements of one list shape (filters sent, embeds asked for), built once."""
        def build():
            t = resource.name
            columns, source, shape = self._selection(resource, embed)
            where, _ = self._where(resource, dict.fromkeys(names, ""), 2)
            n = 2 + len(names)
            order, shown_order = _NEWEST_FIRST.format(t=t), _NEWEST_FIRST.format(t="shown")
            # $n, $n+1: page size and offset; $n+2..$n+5: who read, and from where.
            recorded = _recorded(resource, "list", n + 2)
            page_ids = f"SELECT {t}.id FROM {t} WHERE {where} ORDER BY {order} LIMIT ${n} OFFSET ${n + 1}"
            counted = (f"(SELECT count(*) FROM (SELECT 1 FROM {t} WHERE {where} LIMIT {limit + 1}) AS capped)"
                       " AS list__counted")
            return {
                "shape": shape, "where": where,
                "searched": (f"WITH found AS (SELECT count(*) OVER () AS total, m.id FROM (SELECT {t}.id,"
                             f" {t}.created_at FROM {t} WHERE {where} LIMIT {limit + 1}) AS m"
                             f" ORDER BY m.created_at DESC, m.id DESC LIMIT ${n} OFFSET ${n + 1}),"
                             f" shown AS (SELECT {columns} FROM {source} WHERE {t}.id IN"
                             f" (SELECT found.id FROM found WHERE found.total < {limit + 1})), {recorded}"
                             " SELECT shown.*, found_total.list__counted FROM (SELECT max(found.total) AS"
                             f" list__counted FROM found) AS found_total LEFT OUTER JOIN shown ON true"
                             f" ORDER BY {shown_order}"),
                "counted_page": (f"WITH shown AS (SELECT {columns}, {counted} FROM {source} WHERE {t}.id IN"
                                 f" ({page_ids})), {recorded} SELECT * FROM shown ORDER BY {shown_order}"),
                "page": (f"WITH shown AS (SELECT {columns} FROM {source} WHERE {t}.id IN ({page_ids})),"
                         f" {recorded} SELECT * FROM shown ORDER BY {shown_order}"),
            }
        return self._statement(("list", resource.name, names, embed), build)

    async def list_rows(self, resource: Resource, org_id: str, origin: Origin, *, page: int, page_size: int,
                        embed: tuple[str, ...] = (), filters: dict | None = None) -> dict:
        filters = {k: v for k, v in (filters or {}).items() if v is not None}
        names = tuple(sorted(filters))
        searching = any(resource.filters[name][0] == "search" for name in names)
        limit = self.search_exact_limit if searching else self.exact_limit
        sql = self._list(resource, names, embed, limit)
        _, values = self._where(resource, filters, 2)
        key = (limit, resource.name, org_id, tuple((k, repr(filters[k])) for k in names))
        offset = (page - 1) * page_size
        params = (org_id, *values, page_size, offset, origin.user_id, origin.ip, origin.user_agent,
                  origin.request_id)
        async with self.recorded.acquire() as conn:
            found = counted = None
            exact = False
            if searching and self._cached_estimate(key) is None:
                found = await conn.fetch(sql["searched"], *params)
                counted = found[0]["list__counted"]
                exact = offset == 0 if counted is None else counted <= limit
            if exact:
                page_rows, total, estimated = (found if counted else []), counted or 0, False
            else:
                if counted is None and self._cached_estimate(key) is None:
                    page_rows = await conn.fetch(sql["counted_page"], *params)
                    counted = page_rows[0]["list__counted"] if page_rows else None
                else:
                    page_rows = await conn.fetch(sql["page"], *params)
                total, estimated = await self._count(conn, resource, sql["where"], [org_id, *values], key, limit,
                                                     counted)
        shape = sql["shape"]
        return {resource.plural: [self.split(shape, r) for r in page_rows], "total": total,
                "total_estimated": estimated}

    # --- writing ----------------------------------------------------------------------------------

    def _image(self, table: str) -> str:
        """The audit image PostgreSQL builds, with the text Python would write (models/audit.py)."""
        pairs = []
        for name, kind in self.columns[table]:
            if name in SECRET_FIELDS:
                continue
            value = f"created.{name}"
            if kind == "timestamp with time zone":
                value = (f"replace(to_char(timezone('UTC', {value}), 'YYYY-MM-DD\"T\"HH24:MI:SS.US'),"
                         f" '.000000', '') || '+00:00'")
            elif kind == "numeric":
                text = f"CAST(CAST({value} AS FLOAT(53)) AS TEXT)"
                value = f"CAST(CASE WHEN ({value} = trunc({value})) THEN {text} || '.0' ELSE {text} END AS JSONB)"
            pairs += [f"'{name}'", value]
        return f"jsonb_build_object({', '.join(pairs)})"

    def _insert(self, resource: Resource, names: tuple[str, ...], wanted: tuple[str, ...]) -> str:
        def build():
            t, types = resource.name, dict(self.columns[resource.name])
            number = {name: i + 1 for i, name in enumerate(names)}
            n = len(names)
            user, ip, agent, request, window = (f"${n + i}" for i in range(1, 6))
            org = f"${number['org_id']}::uuid"
            checks = [f"EXISTS (SELECT * FROM {resource.references[name]} AS target"
                      f" WHERE target.id = ${number[name]}::uuid AND target.org_id = {org}"
                      f" AND target.deleted_at IS NULL) AS {name}__found" for name in wanted]
            values = ", ".join(f"${number[name]}::{types[name]}" for name in names)
            returned = ", ".join(self.names(t))
            changed = [name for name in names if name not in SERVER_SET]
            changed_sql = ("ARRAY[" + ", ".join(f"'{c}'" for c in changed) + "]::text[]") if changed else "'{}'::text[]"
            image = self._image(t)
            listening = ("s.status = 'active' AND s.deleted_at IS NULL AND {event} = any(s.events)")
            parts = []
            if wanted:
                parts.append(f"found AS (SELECT {', '.join(checks)})")
                source = "FROM found WHERE " + " AND ".join(f"found.{name}__found" for name in wanted)
            else:
                source = ""
            parts.append(f"created AS (INSERT INTO {t} ({', '.join(names)}) SELECT {values} {source}"
                         f" RETURNING {returned})")
            parts.append("audited AS (INSERT INTO audit_log (org_id, user_id, action, resource, resource_id, after,"
                         f" ip_address, user_agent, request_id) SELECT created.org_id, {user}::uuid, 'create', '{t}',"
                         f" created.id, {image}, {ip}::text, {agent}::text, {request}::text FROM created)")
            parts.append("outbox_event_row AS (INSERT INTO outbox_event (org_id, type, resource, resource_id, record,"
                         f" changed) SELECT created.org_id, '{t}.created', '{t}', created.id, {image}, {changed_sql}"
                         " FROM created WHERE EXISTS (SELECT * FROM webhook_subscription AS s"
                         f" WHERE s.org_id = created.org_id AND {listening.format(event=repr(t + '.created'))})"
                         " RETURNING outbox_event.id, outbox_event.org_id, outbox_event.type, outbox_event.resource_id)")
            parts.append("outbox_deliveries AS (INSERT INTO webhook_delivery (org_id, subscription_id, event_id,"
                         " event_type, resource_id, give_up_at) SELECT e.org_id, s.id, e.id, e.type, e.resource_id,"
                         f" now() + interval '1 second' * {window}::integer FROM outbox_event_row AS e"
                         f" JOIN webhook_subscription AS s ON e.org_id = s.org_id AND {listening.format(event='e.type')})")
            found_columns = ", ".join(f"found.{name}__found" for name in wanted)
            tail = (f"SELECT {found_columns}, created.* FROM found LEFT OUTER JOIN created ON true" if wanted
                    else "SELECT created.* FROM created")
            return "WITH " + ", ".join(parts) + " " + tail
        return self._statement(("insert", resource.name, names, wanted), build)

    async def create_row(self, resource: Resource, org_id: str, origin: Origin, values: dict) -> dict:
        values = {"org_id": org_id, **values}
        names = tuple(sorted(values))
        wanted = tuple(name for name in resource.references if values.get(name) is not None)
        statement = self._insert(resource, names, wanted)
        try:
            async with self.writer.acquire() as conn:
                row = await conn.fetchrow(statement, *[values[name] for name in names], origin.user_id,
                                          origin.ip, origin.user_agent, origin.request_id, self.retry_window_s)
        except asyncpg.UniqueViolationError as exc:
            raise Refused("CONFLICT", "A record with these values already exists") from exc
        except asyncpg.ForeignKeyViolationError as exc:
            raise Refused("INVALID_REFERENCE", "A reference does not name a record of this organization") from exc
        except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError, asyncpg.DataError) as exc:
            raise Refused("VALIDATION_ERROR", "A value is out of the range the field accepts") from exc
        for name in wanted:
            if not row[f"{name}__found"]:
                raise Refused("INVALID_REFERENCE", f"{name} does not name a record of this organization", name)
        return {name: row[name] for name in self.names(resource.name)}

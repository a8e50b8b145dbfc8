"""The one CRUD engine. Every resource is a ``Resource`` descriptor served by these functions.

Tenant isolation lives below the handlers: every statement is built with ``models.tenancy.scoped()``,
which binds the caller's organization and hides soft-deleted rows. A row of another organization
is indistinguishable from a row that does not exist.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from functools import cached_property
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping

import sqlalchemy as sa
from sqlalchemy import Numeric, Table, func, select

import config
import state
from errors import ApiError
from models.instants import parse_instant
from models.tenancy import Caller, check_org, scoped
from models import access, audit
from models import events
from models import idempotency as idempotency_keys
from models.prepared import prepared
from models.idempotency import IdempotentRequest
from models import database, sync
from models.database import current_engine

Hook = Callable[..., Any]
_STATEMENTS_KEPT = 1_000
# Sees the row a change is about to apply to, under its lock; raises to refuse the change.
Precondition = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Embed:
    """A relation a client may expand with ``?embed=``.

    To-one relations (``column`` set) are LEFT JOINed into the page query; to-many relations
    (``back_column`` set) cost one extra query per page. Either way the number of statements per
    request depends on the embeds asked for, never on the number of rows.
    """

    target: Table
    column: str | None = None
    back_column: str | None = None
    hidden: frozenset[str] = frozenset()


def _one_value(value) -> tuple:
    return (value,)


@dataclass(frozen=True)
class Filter:
    """A list filter: ``condition(table, *params)`` is its clause over ``arity`` bind parameters,
    built once per list shape; ``convert(value)`` gives those parameters' values for a request."""

    condition: Callable[..., Any]
    convert: Callable[[Any], tuple] = _one_value
    arity: int = 1

    def clause(self, table: Table, name: str):
        return self.condition(table, *(sa.bindparam(f"filter_{name}_{i}") for i in range(self.arity)))

    def params(self, name: str, value) -> dict:
        return {f"filter_{name}_{i}": bound for i, bound in enumerate(self.convert(value))}


@dataclass(frozen=True)
class Reference:
    """A reference whose target must also meet a rule of its own (a prescriber must be a member
    who may prescribe): ``condition(target)`` is one more clause on the target row, checked in
    the same probe as the reference itself."""

    table: Table
    condition: Callable[[Table], Any]
    meaning: str  # what the target must be, for the 422 message


@dataclass(frozen=True)
class Resource:
    """What the engine needs to know about one resource.

    A descriptor in ``models/resources.py`` gives what the spec cannot say; ``models/contract.py``
    completes it from the spec at start-up (the fields marked "from the spec").
    """

    name: str
    plural: str
    table: Table
    # The collection's path in the spec (``/patients``); its item path is the one below it.
    path: str
    # Body fields naming another row, and the table that row must live in (same org, not deleted),
    # or a Reference when the row must meet a rule too.
    references: Mapping[str, Table | Reference] = field(default_factory=dict)
    # Filter kinds of this resource's own, by the name an ``x-filter`` gives.
    filter_kinds: Mapping[str, Filter] = field(default_factory=dict)
    # Those of them that search free text: with one, a total is exact only up to
    # SEARCH_COUNT_EXACT_LIMIT (proving that a common term has 8,000 matches costs what reading
    # them does).
    search_kinds: frozenset[str] = frozenset()
    # Columns that never leave the server (e.g. password hashes).
    hidden: frozenset[str] = frozenset()
    # Body fields that are not columns but that a hook turns into one (staff password -> hash).
    write_only: frozenset[str] = frozenset()
    # From the spec: the fields a create and an update may write.
    create_fields: frozenset[str] = frozenset()
    update_fields: frozenset[str] = frozenset()
    # From the spec: list query parameter (snake_case name) -> its filter, and the free-text ones.
    filters: Mapping[str, Filter] = field(default_factory=dict)
    search_filters: frozenset[str] = frozenset()
    # From the spec: the relations ``?embed=`` may expand.
    embeds: Mapping[str, Embed] = field(default_factory=dict)
    # A sub-resource lives under one parent row (loan payments under a loan): the column that
    # names it and the parent's table. A missing parent is a 404, like a missing row.
    parent: tuple[str, Table] | None = None
    # The column naming the patient whose data a row shows ("id" for patients): every read that
    # returns rows writes an access row naming those patients, in the read's own statement.
    patient_column: str | None = None
    # Hooks for resources with rules of their own, all inside the write's transaction:
    #   before_create(conn, caller, values) -> values     after_create(conn, caller, row)
    #   before_update(conn, caller, values, before) -> values
    #   after_update(conn, caller, before, after)         after_delete(conn, caller, before)
    #   before_delete(conn, caller, before)
    before_create: Hook | None = None
    after_create: Hook | None = None
    before_update: Hook | None = None
    after_update: Hook | None = None
    before_delete: Hook | None = None
    after_delete: Hook | None = None
    # Webhook events (models/events.py): every write emits <name>.created/.updated/.deleted unless
    # off; also_emits(action, before, after) -> [event types] adds the resource's own.
    emits_events: bool = True
    also_emits: Hook | None = None

    # Statements built once per shape (references sent, fields sent, embeds asked for) instead of
    # per request; bounded, since clients choose the shapes.
    statements: dict = field(default_factory=dict, compare=False, repr=False)

    def statement(self, key: tuple, build: Callable[[], Any]):
        """The statement of one shape, built by ``build()`` the first time it is asked for."""
        built = self.statements.get(key)
        if built is None:
            if len(self.statements) >= _STATEMENTS_KEPT:
                self.statements.clear()
            built = self.statements[key] = build()
        return built

    @cached_property  # read on every request; the table never changes
    def public_columns(self) -> list:
        return [c for c in self.table.c if c.name not in self.hidden]

    @cached_property
    def insert(self):
        """INSERT ... RETURNING the public columns; the values come as execute parameters, so
        the statement (and its cache key) is built once instead of per request."""
        return self.table.insert().returning(*self.public_columns)



# --- values coming in ---------------------------------------------------------------------------

def _normalise(resource: Resource, values: dict) -> dict:
    """Exact decimals for money (a JSON number becomes a Decimal with at most the column's scale)
    and instants as UTC datetimes."""
    for name, value in values.items():
        column = resource.table.c.get(name)
        if value is None or column is None:
            continue
        if isinstance(column.type, sa.DateTime) and isinstance(value, str):
            values[name] = parse_instant(value)
            continue
        if not isinstance(column.type, Numeric):
            continue
        try:
            # repr() is the shortest string that round-trips, so 0.1 stays 0.1, not 0.1000000000000000055.
            amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        except (InvalidOperation, ValueError) as exc:
            raise ApiError("VALIDATION_ERROR", f"{name} must be a number", field=name) from exc
        scale = column.type.scale or 0
        if not amount.is_finite() or amount.as_tuple().exponent < -scale:
            raise ApiError("VALIDATION_ERROR", f"{name} takes at most {scale} decimals", field=name)
        digits = (column.type.precision or 38) - scale
        if abs(amount) >= Decimal(10) ** digits:
            raise ApiError("VALIDATION_ERROR", f"{name} is too large", field=name)
        values[name] = amount
    return values


def _wanted_references(resource: Resource, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The reference fields that name a row (a null one names none and needs no check)."""
    return tuple(name for name in resource.references if values.get(name) is not None)


def _invalid_reference(resource: Resource, name: str) -> ApiError:
    target = resource.references[name]
    meaning = target.meaning if isinstance(target, Reference) else "a record of this organization"
    return ApiError("INVALID_REFERENCE", f"{name} does not name {meaning}", field=name)


def _check_references(conn, resource: Resource, caller: Caller, values: Mapping[str, Any]) -> None:
    """Each referenced row must be a live row of the caller's organization (one query for all)."""
    wanted = _wanted_references(resource, values)
    if wanted:
        found = conn.execute(_reference_probe(resource, wanted),
                             {"org_id": caller.org_id, **{name: values[name] for name in wanted}})
        _refuse_missing(resource, wanted, found.mappings().one())


def _refuse_missing(resource: Resource, wanted: tuple[str, ...], found: Mapping[str, Any]) -> None:
    for name in wanted:
        if not found[name + _FOUND]:
            raise _invalid_reference(resource, name)


# The suffix of the column that says whether a reference named a live row.
_FOUND = "__found"
def _reference_probe(resource: Resource, names: tuple[str, ...]):
    """One EXISTS per reference (``<name>__found``), as a single SELECT built once per
    combination of references: a query of its own before an update or a hooked create, the
    ``found`` part of an audited insert otherwise.

    Bound as ``{"org_id": org_id, name: id, ...}``, the names an INSERT binds its values with."""
    def build():
        checks = []
        for name in names:
            target = resource.references[name]
            rules = []
            if isinstance(target, Reference):
                target, rules = target.table, [target.condition(target.table)]
            exists = sa.exists().where(target.c.id == sa.bindparam(name), *scoped(target, sa.bindparam("org_id")),
                                       *rules)
            checks.append(exists.label(name + _FOUND))
        return select(*checks)

    return resource.statement(("probe", names), build)


def _audited_insert(resource: Resource, names: tuple[str, ...], wanted: tuple[str, ...]):
    """The whole of a create as one statement: reference checks, the row, its audit row and its
    outbox rows (``events.insert_from``)::

        WITH found AS (SELECT EXISTS (SELECT * FROM branch WHERE branch.id = :branch_id
                                      AND branch.org_id = :org_id AND branch.deleted_at IS NULL) AS ...),
        created AS (INSERT INTO patient (...) SELECT :org_id, ... FROM found WHERE found.branch_id__found
                    RETURNING ...),
        audited AS (INSERT INTO audit_log (...) SELECT ..., jsonb_build_object(...) FROM created)
        SELECT found.*, created.* FROM found LEFT OUTER JOIN created ON true

    A reference that names no live row of the organization inserts nothing, and ``found`` says
    which one it was. The client chooses which optional fields it sends, so the statements kept
    are bounded.
    """
    return resource.statement(("insert", names, wanted), lambda: _build_audited_insert(resource, names, wanted))


def _build_audited_insert(resource: Resource, names: tuple[str, ...], wanted: tuple[str, ...]):
    table = resource.table
    row = select(*[sa.bindparam(name, type_=table.c[name].type) for name in names])
    found = None
    if wanted:
        found = _reference_probe(resource, wanted).cte("found")
        row = row.where(*[found.c[name + _FOUND] for name in wanted])
    created = table.insert().from_select(names, row).returning(*resource.public_columns).cte("created")
    written = [audit.insert_from(created, "create", resource.name).cte("audited")]
    if resource.emits_events:
        written += events.insert_from(created, resource.name, names)
    # Planning this statement costs PostgreSQL more than running it: planned once per connection.
    if found is None:
        return prepared(select(created).add_cte(*written))
    return prepared(select(found, created).select_from(found.outerjoin(created, sa.true())).add_cte(*written))


def _insert_audited(conn, resource: Resource, caller: Caller, values: Mapping[str, Any]) -> dict:
    """Create a row of an unhooked resource and its audit row with one statement (atomic even
    outside a transaction); 422 when a reference names no live row of the organization."""
    values = {"org_id": caller.org_id, **values}
    wanted = _wanted_references(resource, values)
    # Sorted: the same fields sent in another order are the same statement.
    statement = _audited_insert(resource, tuple(sorted(values)), wanted)
    row = conn.execute(statement, {**values, **audit.params_for(caller), **events.params()}).mappings().one()
    _refuse_missing(resource, wanted, row)
    return {column.name: row[column.name] for column in resource.public_columns}


# --- reading ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _EmbedQuery:
    """A SELECT with LEFT JOINed to-one embeds, and where each column of its rows goes."""

    select: Any
    base: tuple[tuple[int, str], ...]
    nested: tuple[tuple[str, int, tuple[tuple[int, str], ...]], ...]  # (embed, index of its id, columns)
    # The same SELECT narrowed to one live row of the organization, executed with {ROW_ID, EMBED_ORG}:
    # one statement object per shape keeps SQLAlchemy's cache key memoized instead of rebuilt.
    by_id: Any
    # by_id with its access row, for a resource that shows patient data (else None).
    by_id_recorded: Any = None

    def split(self, row) -> dict:
        item = {key: row[i] for i, key in self.base}
        for name, id_index, columns in self.nested:
            item[name] = {key: row[i] for i, key in columns} if row[id_index] is not None else None
        return item


EMBED_ORG = "embed_org_id"  # bind parameter: the caller's organization, in every join condition
ROW_ID = "row_id"


def _select_with_embeds(resource: Resource, embed: list[str]) -> _EmbedQuery:
    """Built once per resource and combination of embeds (building joins and labels per request
    cost more CPU than the query); executed with ``{EMBED_ORG: org_id}``."""
    return resource.statement(("embed", tuple(embed)), lambda: _build_select_with_embeds(resource, embed))


def _build_select_with_embeds(resource: Resource, embed: list[str]) -> _EmbedQuery:
    table = resource.table
    columns = list(resource.public_columns)
    base = tuple(enumerate(c.name for c in columns))
    source = table
    nested = []
    for name in embed:
        relation = resource.embeds[name]
        if relation.column is None:
            continue
        target = relation.target.alias(f"embed_{name}")
        source = source.outerjoin(
            target,
            sa.and_(target.c.id == table.c[relation.column],
                    *scoped(relation.target, sa.bindparam(EMBED_ORG), alias=target)),
        )
        first = len(columns)
        shown = [c for c in target.c if c.name not in relation.hidden]
        columns += [c.label(f"{name}__{c.name}") for c in shown]
        placed = tuple((first + i, c.name) for i, c in enumerate(shown))
        nested.append((name, next(i for i, col in placed if col == "id"), placed))
    query = select(*columns).select_from(source)
    # One row by its id is cheap to run and dear to plan: planned once per connection.
    by_id = prepared(query.where(table.c.id == sa.bindparam(ROW_ID), *scoped(table, sa.bindparam(EMBED_ORG))))
    by_id_recorded = None
    if resource.patient_column:
        by_id_recorded = prepared(access.recorded(by_id, resource.patient_column, "get", resource.name))
    return _EmbedQuery(query, base, tuple(nested), by_id, by_id_recorded)


def _attach_many(conn, resource: Resource, caller: Caller, items: list[dict], embed: list[str]) -> None:
    """To-many embeds: one query per relation for the whole page."""
    ids = [item["id"] for item in items]
    for name in embed:
        relation = resource.embeds[name]
        if relation.back_column is None:
            continue
        rows = conn.execute(_to_many(resource, name), {FOUND_IDS: ids, EMBED_ORG: caller.org_id}).mappings()
        grouped: dict[str, list] = {i: [] for i in ids}
        for row in rows:
            grouped[row[relation.back_column]].append(dict(row))
        for item in items:
            item[name] = grouped[item["id"]]


def _to_many(resource: Resource, name: str):
    """The rows of a to-many embed whose back column names one of ``FOUND_IDS``."""
    def build():
        relation = resource.embeds[name]
        target = relation.target
        return (select(*[c for c in target.c if c.name not in relation.hidden])
                .where(target.c[relation.back_column].in_(sa.bindparam(FOUND_IDS, expanding=True)),
                       *scoped(target, sa.bindparam(EMBED_ORG)))
                .order_by(target.c.created_at.desc(), target.c.id.desc()))
    return resource.statement(("to_many", name), build)


def _check_parent(conn, resource: Resource, caller: Caller, parent_id: str | None) -> None:
    """For a sub-resource: 404 unless the parent is a live row of the caller's organization."""
    if resource.parent is None:
        return
    _, parent_table = resource.parent
    probe = resource.statement(("parent",), lambda: select(parent_table.c.id).where(
        parent_table.c.id == sa.bindparam(PARENT_ID), *scoped(parent_table, sa.bindparam(EMBED_ORG))))
    if conn.execute(probe, {PARENT_ID: parent_id, EMBED_ORG: caller.org_id}).first() is None:
        raise ApiError("NOT_FOUND", f"{parent_table.name} not found")


def _parent_condition(resource: Resource, parent_id):
    """The condition that keeps a sub-resource's statement to one parent's rows."""
    return resource.table.c[resource.parent[0]] == parent_id


# Bind parameters of the list statements, besides EMBED_ORG and each filter's own.
PARENT_ID, PAGE_SIZE, PAGE_OFFSET, COUNT_LIMIT, FOUND_IDS = (
    "parent_id", "page_size", "page_offset", "count_limit", "found_ids")


def _where(resource: Resource, active: tuple[str, ...], *, deleted_too: bool = False) -> list:
    """A list's conditions over bind parameters: the organization, the filters sent, the parent."""
    table = resource.table
    where = scoped(table, sa.bindparam(EMBED_ORG), deleted_too=deleted_too)
    where += [resource.filters[name].clause(table, name) for name in active]
    if resource.parent is not None:
        where.append(_parent_condition(resource, sa.bindparam(PARENT_ID)))
    return where


def _matching(table: Table, where: list):
    """SELECT 1 of every row ``where`` matches: what the planner's estimate is asked about."""
    return select(sa.literal(1)).select_from(table).where(*where)


@dataclass(frozen=True)
class _ListStatements:
    """A list's statements for one shape (embeds asked for, filters sent), built once: per request
    only their parameters change. Building them and their cache keys per request cost a list page
    about a sixth of its CPU (decision record on lists)."""

    page: Any         # the page's rows, ids from the list index (PAGE_SIZE, PAGE_OFFSET)
    counted_page: Any  # the same rows, each with the count of the matches as its last column (+ COUNT_LIMIT)
    searched_page: Any  # a search's page and its matches counted up to COUNT_LIMIT (last column; see _searched)
    count: Any        # the matches, counted up to COUNT_LIMIT
    matching: Any     # SELECT 1 of every match, for the planner's estimate


_COUNTED = "list__counted"  # the counted page's last column, named apart from any column of the rows


def _list_statements(resource: Resource, embed: tuple[str, ...], active: tuple[str, ...]) -> _ListStatements:
    return resource.statement(("list", embed, active), lambda: _build_list_statements(resource, embed, active))


def _build_list_statements(resource: Resource, embed: tuple[str, ...], active: tuple[str, ...]) -> _ListStatements:
    table = resource.table
    where = _where(resource, active)
    rows = _select_with_embeds(resource, list(embed)).select
    newest_first = (table.c.created_at.desc(), table.c.id.desc())
    # The page's ids come from the list index alone (a deep page skips index entries, not rows),
    # and only those rows are joined to their embeds. Joined first, the planner hashed every
    # appointment of the organization with its patients before sorting: 18 ms against 0.7 ms
    # for a page with three embeds at 1,000 appointments.
    page_ids = (select(table.c.id).where(*where).order_by(*newest_first)
                .limit(sa.bindparam(PAGE_SIZE)).offset(sa.bindparam(PAGE_OFFSET)))
    capped = select(sa.literal(1)).select_from(table).where(*where).limit(sa.bindparam(COUNT_LIMIT)).subquery()
    count = select(func.count()).select_from(capped)
    page = rows.where(table.c.id.in_(page_ids)).order_by(*newest_first)
    return _ListStatements(
        page=_shown(resource, "list", page, "created_at"),
        counted_page=_shown(resource, "list", page.add_columns(count.scalar_subquery().label(_COUNTED)),
                            "created_at"),
        searched_page=_searched(resource, rows, where),
        count=count,
        matching=_matching(table, where),
    )


def _searched(resource: Resource, rows, where: list):
    """A search's page in one statement: its matches counted (up to COUNT_LIMIT) and sorted
    from one scan of the index that finds them (the trigram index, for a rare term), the rows of
    the page's window of them, and their access row.

    The count comes back as the last column of every row, and of one row of NULLs when the page
    is empty. When it reaches COUNT_LIMIT the window is not the page (the matches were cut off
    unsorted), so no row is shown: the caller estimates, and reads the page from the list index,
    which holds search_text, so a common term fills a page within a few hundred index entries."""
    table = resource.table
    matches = select(table.c.id, table.c.created_at).where(*where).limit(sa.bindparam(COUNT_LIMIT)).subquery()
    window = (select(func.count().over().label("total"), matches.c.id)
              .order_by(matches.c.created_at.desc(), matches.c.id.desc())
              .limit(sa.bindparam(PAGE_SIZE)).offset(sa.bindparam(PAGE_OFFSET))).cte("found")
    page = rows.where(table.c.id.in_(select(window.c.id).where(window.c.total < sa.bindparam(COUNT_LIMIT))))
    counted = select(func.max(window.c.total).label(_COUNTED)).subquery("found_total")
    shown = page.cte("shown")
    statement = select(shown, counted.c[_COUNTED]).select_from(counted.outerjoin(shown, sa.true()))
    if resource.patient_column:
        statement = access.with_access_row(statement, shown, resource.patient_column, "list", resource.name)
    newest_first = (statement.selected_columns.created_at.desc(), statement.selected_columns.id.desc())
    return statement.order_by(*newest_first)


def list_rows(resource: Resource, caller: Caller, *, page: int = 1, page_size: int = 20,
              embed: list[str] | None = None, filters: Mapping[str, Any] | None = None,
              parent_id: str | None = None, updated_since: str | None = None,
              cursor: str | None = None) -> dict:
    """One page of live rows, newest first, with the total that matches the filters.

    With ``updated_since`` or ``cursor``, a sync page instead: the rows changed since then,
    deleted ones included, oldest change first, and the ``next_cursor`` to go on from."""
    embed = embed or []
    syncing = updated_since is not None or cursor is not None
    active = tuple(sorted(name for name, value in (filters or {}).items() if value is not None))
    bound = {EMBED_ORG: caller.org_id, PARENT_ID: parent_id}
    for name in active:
        bound.update(resource.filters[name].params(name, filters[name]))
    query = _select_with_embeds(resource, embed)
    offset = (page - 1) * page_size
    if syncing:  # a sync pages by cursor: page is not used
        position = sync.position(updated_since, cursor)

        def sync_page(conn):
            _check_parent(conn, resource, caller, parent_id)
            return _changes(conn, resource, caller, query, page_size, embed, active, bound, position)
        # On the primary: a sync page of patient data writes its access row, and the horizon is
        # the primary's open transactions.
        return database.recorded_read(sync_page)
    settings = config.current()
    searching = bool(set(active) & resource.search_filters)
    exact_limit = settings.search_count_exact_limit if searching else settings.count_exact_limit
    count_key = (resource.name, caller.org_id, parent_id, tuple((n, repr(filters[n])) for n in active))
    statements = _list_statements(resource, tuple(embed), active)

    def work(conn):
        _check_parent(conn, resource, caller, parent_id)
        params = {**bound, PAGE_SIZE: page_size, PAGE_OFFSET: offset}
        # A term already known to match more than the limit skips straight to the estimate.
        found = counted = None
        exact = False
        if searching and _cached_estimate(count_key, exact_limit) is None:
            found = _page(conn, resource, caller, statements.searched_page, {**params, COUNT_LIMIT: exact_limit + 1})
            counted = found[0][-1]
            # No match in the window: none at all on the first page; past the last, a count tells.
            exact = offset == 0 if counted is None else counted <= exact_limit
        if exact:
            rows, total, estimated = (found if counted else []), counted or 0, False
        else:
            # A search that found more than the limit has counted already: only the estimate is
            # left. One past its last page found nothing to count: it is counted like a list.
            if counted is None and _cached_estimate(count_key, exact_limit) is None:
                # The total is still to be found: the page counts it in the same statement (an
                # empty page, past the last one, leaves it to _count).
                rows = _page(conn, resource, caller, statements.counted_page, {**params, COUNT_LIMIT: exact_limit + 1})
                counted = rows[0][-1] if rows else None
            else:
                rows = _page(conn, resource, caller, statements.page, params)
            total, estimated = _count(conn, statements, bound, count_key, exact_limit, counted)
        items = [query.split(row) for row in rows]
        if items:
            _attach_many(conn, resource, caller, items, embed)
        return {resource.plural: items, "total": total, "total_estimated": estimated}

    return _read(resource, work)


def _read(resource: Resource, work):
    # A read that writes access rows needs the primary; any other read may go where reads go.
    return database.recorded_read(work) if resource.patient_column else database.read(work)


def _shown(resource: Resource, action: str, page, stamp: str, *, oldest_first: bool = False):
    """``page`` (ordered by ``stamp``, then id), and when it shows patient data, the same page
    read inside the statement that writes its access row (``access.recorded``), in that order."""
    if not resource.patient_column:
        return page
    recorded = access.recorded(page, resource.patient_column, action, resource.name)
    order = (recorded.selected_columns[stamp], recorded.selected_columns.id)
    return recorded.order_by(*(column.asc() if oldest_first else column.desc() for column in order))


def _page(conn, resource: Resource, caller: Caller, statement, params: dict) -> list:
    """A page's rows, its access row committed with them when they show patient data."""
    if resource.patient_column:
        params = {**params, **access.params_for(caller)}
    return conn.execute(statement, params).all()


# --- sync: what changed since a point, tombstones included ---------------------------------------

def sync_stamp(table: Table):
    """The column a sync orders by: updated_at, or created_at for an append-only table."""
    return table.c.updated_at if "updated_at" in table.c else table.c.created_at




# Bind parameters of the sync statements: the position a page starts after.
SYNC_STAMP, SYNC_ID = "sync_stamp", "sync_id"


@dataclass(frozen=True)
class _SyncStatements:
    """A sync's statements for one shape (embeds asked for, filters sent), built once."""

    page: Any       # the page's rows, oldest change first (SYNC_STAMP, SYNC_ID, PAGE_SIZE)
    matching: Any   # SELECT 1 of every change from the position on, for the planner's estimate


def _sync_statements(resource: Resource, embed: tuple[str, ...], active: tuple[str, ...]) -> _SyncStatements:
    return resource.statement(("sync", embed, active), lambda: _build_sync_statements(resource, embed, active))


def _build_sync_statements(resource: Resource, embed: tuple[str, ...], active: tuple[str, ...]) -> _SyncStatements:
    table = resource.table
    stamp = sync_stamp(table)
    after = sa.tuple_(stamp, table.c.id) > sa.tuple_(sa.bindparam(SYNC_STAMP, type_=stamp.type),
                                                    sa.cast(sa.bindparam(SYNC_ID), table.c.id.type))
    changes = [*_where(resource, active, deleted_too=True), after]
    oldest_first = (stamp.asc(), table.c.id.asc())
    # The rows straight from the sync index in its order: a keyset page skips nothing, so the
    # ids-first shape of a list page (for its OFFSET) would only add a primary-key lookup per row.
    rows = _select_with_embeds(resource, list(embed)).select
    page = (rows.where(*changes, sync.before_horizon(stamp))
            .order_by(*oldest_first).limit(sa.bindparam(PAGE_SIZE)))
    # The estimate leaves the horizon out: the planner cannot know the subquery's value and takes
    # a third of the rows to be older than it, where nearly all are; and the changes a page must
    # wait for still belong to what is left to sync.
    return _SyncStatements(page=_shown(resource, "sync", page, stamp.name, oldest_first=True),
                           matching=_matching(table, changes))


def _changes(conn, resource: Resource, caller: Caller, query: _EmbedQuery, page_size: int,
             embed: list[str], active: tuple[str, ...], bound: dict, position: tuple[dt.datetime, str]) -> dict:
    """One sync page: a keyset range on (stamp, id) of the (org_id, stamp, id) index, up to the
    horizon. ``total`` counts the changes from this position on: a page that is not full holds
    them all; a full one asks the planner, since counting from a point far back walks up to
    COUNT_EXACT_LIMIT index entries, which cost more than the page (decision record)."""
    statements = _sync_statements(resource, tuple(embed), active)
    stamp = sync_stamp(resource.table)
    bound = {**bound, SYNC_STAMP: position[0], SYNC_ID: position[1], PAGE_SIZE: page_size}
    rows = _page(conn, resource, caller, statements.page, bound)
    items = [query.split(row) for row in rows]
    if items:
        _attach_many(conn, resource, caller, items, embed)
        last = items[-1]
        position = (last[stamp.name], last["id"])
    if len(items) < page_size:
        total, estimated = len(items), False
    else:
        total, estimated = max(_planned_rows(conn, statements.matching, bound), len(items)), True
    return {resource.plural: items, "total": total, "total_estimated": estimated,
            "next_cursor": sync.encode_cursor(*position), "has_more": len(items) == page_size}


ESTIMATE_TTL_S = 30.0


def _count(conn, statements: _ListStatements, bound: dict, key: tuple, limit: int,
           counted: int | None = None) -> tuple[int, bool]:
    """The number of matching rows: exact up to ``limit``, the planner's estimate beyond.

    Counting every row of a large organization costs as much as reading it; past the limit the
    estimate (never below the limit) is what a pager needs, and ``total_estimated`` says so.
    An estimate is kept for 30 s under ``key`` (resource, organization, parent and filter values:
    what decides the conditions), so paging through a large list does not count it again.
    ``counted``, when given, is a count already capped at ``limit + 1``.
    """
    cached = _cached_estimate(key, limit)
    if cached is not None:
        return cached, True
    if counted is None:
        counted = conn.execute(statements.count, {**bound, COUNT_LIMIT: limit + 1}).scalar_one()
    if counted <= limit:
        return counted, False
    estimate = max(_planned_rows(conn, statements.matching, bound), limit + 1)
    estimates = state.current().count_estimates
    if len(estimates) > 10_000:
        estimates.clear()
    estimates[(limit, *key)] = (time.monotonic(), estimate)
    return estimate, True


def _planned_rows(conn, matching, bound: dict) -> int:
    """How many rows the planner expects ``matching`` to return (one EXPLAIN: planned, not run)."""
    explain, defaults = _explained(matching, conn.dialect)
    plan = conn.exec_driver_sql(explain, {**defaults, **bound}).scalar_one()
    return int(plan[0]["Plan"]["Plan Rows"])


# EXPLAIN's text of each statement a planner is asked about, compiled once; each key is held with
# its statement, so that an id is never reused for another. Bounded like the statements it
# explains, since clients choose their shapes.
_explains: dict[int, tuple[Any, str, dict]] = {}


def _explained(matching, dialect) -> tuple[str, dict]:
    cached = _explains.get(id(matching))
    if cached is None or cached[0] is not matching:
        if len(_explains) >= _STATEMENTS_KEPT:
            _explains.clear()
        query = matching.compile(dialect=dialect)
        cached = _explains[id(matching)] = (matching, "EXPLAIN (FORMAT JSON) " + str(query), dict(query.params))
    return cached[1], cached[2]


def _cached_estimate(key: tuple, limit: int) -> int | None:
    cached = state.current().count_estimates.get((limit, *key))
    if cached is not None and time.monotonic() - cached[0] < ESTIMATE_TTL_S:
        return cached[1]
    return None


def get_row(resource: Resource, caller: Caller, row_id: str, *, embed: list[str] | None = None,
            parent_id: str | None = None) -> dict:
    """One live row of the caller's organization, or 404."""
    embed = embed or []
    query = _select_with_embeds(resource, embed)

    def work(conn):
        _check_parent(conn, resource, caller, parent_id)
        params = {EMBED_ORG: caller.org_id, ROW_ID: row_id}
        if query.by_id_recorded is not None:  # no sub-resource shows patient data: no parent
            statement, params = query.by_id_recorded, {**params, **access.params_for(caller)}
        elif resource.parent is not None:
            statement = resource.statement(("by_id of parent", tuple(embed)), lambda: query.by_id.where(
                _parent_condition(resource, sa.bindparam(PARENT_ID))))
            params[PARENT_ID] = parent_id
        else:
            statement = query.by_id
        row = conn.execute(statement, params).first()
        if row is None:
            raise ApiError("NOT_FOUND", f"{resource.name} not found")
        item = query.split(row)
        _attach_many(conn, resource, caller, [item], embed)
        return item

    return _read(resource, work)


# --- writing ------------------------------------------------------------------------------------

def _incoming(resource: Resource, caller: Caller, body: Mapping[str, Any], fields: frozenset[str]) -> dict:
    body = dict(body)
    check_org(body.pop("org_id", None), caller)
    return _normalise(resource, {k: v for k, v in body.items() if k in fields})


def create_row(resource: Resource, caller: Caller, body: Mapping[str, Any], *,
               parent_id: str | None = None, idempotency: IdempotentRequest | None = None) -> dict:
    """Insert a row for the caller's organization and its audit record, atomically.

    With an idempotency key, a retry returns the first create's row instead of a second row.
    """
    values = _incoming(resource, caller, body, resource.create_fields)
    hooked = resource.before_create is not None or resource.after_create is not None
    if not hooked and resource.parent is None and idempotency is None:
        # One statement is atomic by itself: no BEGIN and COMMIT round trips around it.
        with database.single_statement() as conn:
            return _insert_audited(conn, resource, caller, values)
    with current_engine().begin() as conn:
        if idempotency is not None:
            replay = idempotency_keys.claim(conn, caller, idempotency)
            if replay is not None:
                return replay
        if resource.parent:
            _check_parent(conn, resource, caller, parent_id)
            values[resource.parent[0]] = parent_id
        if hooked:
            # A hook may read the rows referenced: they are checked before it runs.
            _check_references(conn, resource, caller, values)
            if resource.before_create:
                values = resource.before_create(conn, caller, values)
            created = _insert(conn, resource, {"org_id": caller.org_id, **values})
            if resource.after_create:
                resource.after_create(conn, caller, created)
            audit.record_for(conn, caller, "create", resource.name, created["id"], after=created)
            events.record(conn, caller, resource, "created", None, created)
        else:
            created = _insert_audited(conn, resource, caller, values)
        if idempotency is not None:
            idempotency_keys.store(conn, caller, idempotency, 201, created)
    return created


def update_row(resource: Resource, caller: Caller, row_id: str, body: Mapping[str, Any], *,
               parent_id: str | None = None, expect: Precondition | None = None) -> dict:
    """Change the fields sent (and only those), under a row lock, with its audit record.

    ``expect``, when given, sees the locked row before anything changes and may refuse it (the
    HTTP layer's If-Match)."""
    values = _incoming(resource, caller, body, resource.update_fields)
    with current_engine().begin() as conn:
        before = _lock(conn, resource, caller, row_id, parent_id, expect)
        _check_references(conn, resource, caller, values)
        if resource.before_update:
            values = resource.before_update(conn, caller, values, before)
        if not values:
            return before
        after = _write(conn, resource, caller, row_id, {"updated_at": func.now(), **values})
        if resource.after_update:
            resource.after_update(conn, caller, before, after)
        audit.record_for(conn, caller, "update", resource.name, row_id, before=before, after=after)
        events.record(conn, caller, resource, "updated", before, after)
    return after


Change = Callable[[Any, Caller, dict], Mapping[str, Any] | None]


def change_row(resource: Resource, caller: Caller, row_id: str, values: Mapping[str, Any] | Change, *,
               action: str) -> dict:
    """An action on one row (a like, a write-off), atomically and with an audit record named after it.

    ``values`` are SQL expressions (e.g. ``likes + 1``), or a function of (conn, caller, locked row)
    that returns them: it may check the row or write other rows first, and returns None when the
    action changes nothing (no write, no audit row)."""
    with current_engine().begin() as conn:
        before = _lock(conn, resource, caller, row_id, None, None)
        if callable(values):
            values = values(conn, caller, before)
            if values is None:
                return before
        after = _write(conn, resource, caller, row_id, {"updated_at": func.now(), **values})
        audit.record_for(conn, caller, action, resource.name, row_id, before=before, after=after)
        events.record(conn, caller, resource, "updated", before, after)
    return after


def delete_row(resource: Resource, caller: Caller, row_id: str, *, parent_id: str | None = None,
               expect: Precondition | None = None) -> None:
    """Soft delete: the row disappears from every read but stays for the audit trail."""
    with current_engine().begin() as conn:
        before = _lock(conn, resource, caller, row_id, parent_id, expect)
        if resource.before_delete:
            resource.before_delete(conn, caller, before)
        after = _write(conn, resource, caller, row_id, {"deleted_at": func.now(), "updated_at": func.now()})
        if resource.after_delete:
            resource.after_delete(conn, caller, before)
        audit.record_for(conn, caller, "delete", resource.name, row_id, before=before, after=after)
        events.record(conn, caller, resource, "deleted", before, after)


def _insert(conn, resource: Resource, values: Mapping[str, Any]) -> dict:
    """The new row; SQL expressions among the values (a hook's ``now()``) go inline."""
    expressions = {k: v for k, v in values.items() if isinstance(v, sa.sql.ClauseElement)}
    statement = resource.insert
    if expressions:
        statement = statement.values(**expressions)
        values = {k: v for k, v in values.items() if k not in expressions}
    return dict(conn.execute(statement, values).mappings().one())


def _write(conn, resource: Resource, caller: Caller, row_id: str, values: Mapping[str, Any]) -> dict:
    table = resource.table
    row = conn.execute(
        table.update()
        .where(table.c.id == row_id, *scoped(table, caller.org_id))
        .values(**values)
        .returning(*resource.public_columns)
    ).mappings().one()
    return dict(row)


def _build_lock(resource: Resource):
    """SELECT ... FOR UPDATE of one live row of the organization (and of the parent, for a
    sub-resource), executed with {ROW_ID, EMBED_ORG, PARENT_ID}."""
    table = resource.table
    where = [table.c.id == sa.bindparam(ROW_ID), *scoped(table, sa.bindparam(EMBED_ORG))]
    if resource.parent is not None:
        where.append(_parent_condition(resource, sa.bindparam(PARENT_ID)))
    return select(*resource.public_columns).where(*where).with_for_update()


def _lock(conn, resource: Resource, caller: Caller, row_id: str, parent_id: str | None,
          expect: Precondition | None) -> dict:
    """The row, locked for the rest of the transaction, once ``expect`` has accepted it."""
    _check_parent(conn, resource, caller, parent_id)
    row = conn.execute(resource.statement(("lock",), lambda: _build_lock(resource)),
                       {ROW_ID: row_id, EMBED_ORG: caller.org_id, PARENT_ID: parent_id}).mappings().first()
    if row is None:
        raise ApiError("NOT_FOUND", f"{resource.name} not found")
    row = dict(row)
    if expect is not None:
        expect(row)
    return row

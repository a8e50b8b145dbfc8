"""What the engine takes from the contract: each resource's writable fields, list filters and
embeds, derived from ``spec/openapi.yaml`` at start-up.

A descriptor in ``models/resources.py`` says only what the spec cannot: its table, the references
it checks, its hooks, the columns it hides and the filter kinds of its own. Everything the spec
already says is read here, once, by ``create_app()``:

- writable fields: the properties of the create (POST on the collection) and update (PATCH on the
  item) request schemas. A nullable property that the model's table lacks is taken as a column of
  that name and the schema's JSON type, so a property added to the spec and to a migration is
  served with no Python edit.
- filters: every query parameter of the list operation other than the engine's own (paging,
  ``embed``, ``orgId``, sync's ``updatedSince`` and ``cursor``) declares ``x-filter``: a kind (``equals``, ``on_day``, ``at_or_after``,
  ``before``, ``contains``, or one the descriptor defines) and optionally the column it applies
  to (the parameter's snake_case name by default).
- embeds: the ``embed`` parameter's enum. ``patient`` embeds the row ``patient_id`` names (the
  table of that reference, or of the resource called ``patient``); a name that is another
  resource's plural (``payments``) embeds that sub-resource's rows.

Anything that does not fit stops the start with a ``ContractError`` naming it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Callable, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

from models.crud import Embed, Filter, Reference, Resource
from models.instants import parse_instant
from models.tenancy import TENANT_COLUMN

# Query parameters the engine itself answers to, on every list.
ENGINE_PARAMETERS = frozenset({"page", "pageSize", "embed", "orgId", "updatedSince", "cursor"})


class ContractError(RuntimeError):
    """The spec asks for something the engine cannot serve; the message names it."""


# --- filter kinds -------------------------------------------------------------------------------

def escape_like(term: str) -> str:
    """A term for LIKE, its wildcards taken literally."""
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def equals(table: sa.Table, column: str) -> Filter:
    """The column equals the value (instants compared as instants)."""
    instant = isinstance(table.c[column].type, sa.DateTime)
    return Filter(lambda t, value: t.c[column] == value,
                  lambda value: (parse_instant(value) if instant and isinstance(value, str) else value,))


def like_pattern(term: str) -> tuple:
    """The LIKE pattern of a substring, as the one value of a filter's parameter."""
    return (f"%{escape_like(term)}%",)


def contains(_table: sa.Table, column: str) -> Filter:
    """Case-insensitive substring match on one column."""
    return Filter(lambda t, pattern: t.c[column].ilike(pattern), like_pattern)


def _instant(value: str) -> tuple:
    return (parse_instant(value),)


def at_or_after(_table: sa.Table, column: str) -> Filter:
    return Filter(lambda t, instant: t.c[column] >= instant, _instant)


def before(_table: sa.Table, column: str) -> Filter:
    return Filter(lambda t, instant: t.c[column] < instant, _instant)


_DAY_LESS_A_MICROSECOND = dt.timedelta(days=1, microseconds=-1)


def _day(day: str) -> tuple:
    # Its first and last microsecond (PostgreSQL's resolution): the calendar's last day,
    # 9999-12-31, has no next day to stop before.
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), dt.timezone.utc)
    return start, start + _DAY_LESS_A_MICROSECOND


def on_day(_table: sa.Table, column: str) -> Filter:
    """Rows whose timestamp falls on that calendar day, in UTC."""
    return Filter(lambda t, first, last: (t.c[column] >= first) & (t.c[column] <= last), _day, arity=2)


STANDARD_KINDS: Mapping[str, Callable[[sa.Table, str], Filter]] = {
    "equals": equals, "contains": contains, "at_or_after": at_or_after, "before": before, "on_day": on_day,
}


# --- reading the spec ---------------------------------------------------------------------------

def snake_case(name: str) -> str:
    """``dateFrom`` -> ``date_from``: the name a handler receives a parameter under."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


class _Spec:
    def __init__(self, document: dict):
        self.document = document

    def resolve(self, node):
        while isinstance(node, dict) and "$ref" in node:
            target = self.document
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node = target
        return node

    def operation(self, path: str, method: str) -> dict | None:
        return (self.document["paths"].get(path) or {}).get(method)

    def body_schema(self, operation: dict | None) -> dict | None:
        if operation is None or "requestBody" not in operation:
            return None
        content = self.resolve(operation["requestBody"])["content"]
        return self.resolve(content["application/json"]["schema"])

    def query_parameters(self, operation: dict | None) -> list[dict]:
        if operation is None:
            return []
        parameters = [self.resolve(p) for p in operation.get("parameters", [])]
        return [p for p in parameters if p["in"] == "query"]


def _item_path(document: dict, collection: str) -> str | None:
    pattern = re.compile(re.escape(collection) + r"/\{[^/]+\}")
    return next((path for path in document["paths"] if pattern.fullmatch(path)), None)


_JSON_TYPES = {"string": sa.Text, "integer": sa.BigInteger, "number": sa.Numeric, "boolean": sa.Boolean,
               "object": JSONB, "array": JSONB}


def _column_for(name: str, schema: dict) -> sa.Column:
    """A column for a nullable property the model's table does not declare, typed as the JSON
    value it holds."""
    kind = {"date": sa.Date, "date-time": lambda: TIMESTAMP(timezone=True)}.get(schema.get("format"))
    return sa.Column(name, (kind or _JSON_TYPES.get(schema.get("type"), sa.Text))(), nullable=True)


def _fields(spec: _Spec, base: Resource, schema: dict | None, where: str) -> frozenset[str]:
    if schema is None:
        return frozenset()
    fields = set()
    for name, prop in schema.get("properties", {}).items():
        prop = spec.resolve(prop)
        if name == TENANT_COLUMN:  # checked against the caller's organization, never written from the body
            continue
        if name not in base.table.c and name not in base.write_only:
            if not prop.get("nullable") or name in schema.get("required", ()):
                raise ContractError(f"{where}.{name} is not a column of table {base.table.name} "
                                    "(only a nullable property becomes one by itself)")
            base.table.append_column(_column_for(name, prop))
        fields.add(name)
    return frozenset(fields)


def _filters(spec: _Spec, base: Resource, listing: dict | None, where: str) -> tuple[dict, frozenset[str]]:
    """The list's filters, and which of them search free text."""
    filters, searches = {}, set()
    for parameter in spec.query_parameters(listing):
        name = parameter["name"]
        if name in ENGINE_PARAMETERS:
            continue
        declared = parameter.get("x-filter")
        if declared is None:
            raise ContractError(f"{where}: query parameter {name} has no x-filter, so nothing would filter by it")
        kind, column = (declared, snake_case(name)) if isinstance(declared, str) else (
            declared.get("kind"), declared.get("column", snake_case(name)))
        if kind in base.filter_kinds:
            filters[snake_case(name)] = base.filter_kinds[kind]
            if kind in base.search_kinds:
                searches.add(snake_case(name))
        elif kind in STANDARD_KINDS:
            if column not in base.table.c:
                raise ContractError(f"{where}: x-filter of {name} names column {column}, which {base.table.name} lacks")
            filters[snake_case(name)] = STANDARD_KINDS[kind](base.table, column)
        else:
            raise ContractError(f"{where}: x-filter of {name} has an unknown kind {kind!r}")
    return filters, frozenset(searches)


def _embeds(spec: _Spec, base: Resource, listing: dict | None, bases: Iterable[Resource], where: str) -> dict:
    parameter = next((p for p in spec.query_parameters(listing) if p["name"] == "embed"), None)
    if parameter is None:
        return {}
    by_table = {other.table.name: other for other in bases}
    by_name = {other.name: other for other in bases}
    embeds = {}
    for name in spec.resolve(parameter["schema"])["items"]["enum"]:
        column = f"{name}_id"
        reference = base.references.get(column)
        target = reference.table if isinstance(reference, Reference) else reference
        if target is None and column in base.table.c and name in by_name:
            target = by_name[name].table  # a column set by the server (a post's author)
        if target is not None:
            shown_as = by_table.get(target.name)
            embeds[name] = Embed(target, column=f"{name}_id", hidden=shown_as.hidden if shown_as else frozenset())
            continue
        child = next((other for other in bases if other.plural == name and other.parent
                      and other.parent[1] is base.table), None)
        if child is None:
            raise ContractError(f"{where}: embed {name!r} is neither a reference ({name}_id) nor a sub-resource")
        embeds[name] = Embed(child.table, back_column=child.parent[0], hidden=child.hidden)
    return embeds


def derive(document: dict, bases: Iterable[Resource]) -> dict[str, Resource]:
    """Each descriptor completed from the spec, by resource name."""
    spec = _Spec(document)
    bases = list(bases)
    derived = {}
    for base in bases:
        if base.path not in document["paths"]:
            raise ContractError(f"resource {base.name}: the spec has no path {base.path}")
        item = _item_path(document, base.path)
        create = spec.operation(base.path, "post")
        update = spec.operation(item, "patch") if item else None
        listing = spec.operation(base.path, "get")
        where = (listing or create or {}).get("operationId", base.path)
        filters, searches = _filters(spec, base, listing, where)
        derived[base.name] = dataclasses.replace(
            base,
            create_fields=_fields(spec, base, spec.body_schema(create), f"{base.path} POST body"),
            update_fields=_fields(spec, base, spec.body_schema(update), f"{item} PATCH body"),
            filters=filters, search_filters=searches,
            embeds=_embeds(spec, base, listing, bases, where),
            statements={},
        )
    return derived

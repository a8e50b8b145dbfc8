"""Statements PostgreSQL plans once per connection, over a driver that only sends text.

psycopg2 sends every statement as text, which PostgreSQL parses and plans each time; for a get by
id or a create, planning is most of what the server does. A statement marked with the execution
option ``PREPARED`` is sent, on an autocommit connection, as ``PREPARE <name> AS ...; EXECUTE
<name>(...)`` the first time that connection runs it, and as ``EXECUTE <name>(...)`` after that.
The two parts travel in one query string, which PostgreSQL runs as one implicit transaction: a
pooler in transaction mode keeps them on one server connection, and no round trip is added.

The name is a digest of the statement's text, so two clients that meet on one server connection
behind a pooler mean the same statement by the same name. A pooler that hands a client another
server connection between statements shows itself by a prepared statement that is missing: the
statement then goes again as text (it had no effect: it failed whole), and that engine prepares
nothing more in this process. Statements inside an explicit transaction are never prepared,
since a failed one would abort the transaction.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions

log = logging.getLogger(__name__)

PREPARED = "prepared"  # execution option of a statement worth planning once per connection

# A server connection keeps each statement's plan; a bounded number per connection, since an
# embed or field combination is a statement of its own.
PER_CONNECTION = 64
_PLANS_KEPT = 512

# psycopg2's placeholders, and its escaped percent sign, which stays as it is.
_PARAMETER = re.compile(r"%%|%\((\w+)\)s")

# The statement this connection prepared is missing: a pooler gave it another server connection.
_MOVED = "26000"
# The name is taken already: by an attempt of this connection whose PREPARE stayed while its
# EXECUTE failed (a prepared statement outlives the transaction that made it), or, behind a
# pooler, by another client on this server connection. Either way it is the same statement.
_THERE = "42P05"
# The server could not prepare the text (a parameter whose type it cannot infer without the
# literal's own, an operator it cannot resolve): this statement stays text.
_UNPREPARABLE = {"42P18", "42804", "42883", "42725", "42P08"}
# The schema changed under a kept plan ("cached plan must not change result type").
_STALE = "0A000"


@dataclass(frozen=True)
class _Plan:
    body: str       # the statement as SQLAlchemy compiled it
    name: str
    prepare: str    # PREPARE ...; EXECUTE ...
    execute: str    # EXECUTE ...


# Statement text -> its plan, or None for a text the server refused to prepare.
_plans: dict[str, _Plan | None] = {}
_UNKNOWN = object()


def positional(body: str) -> tuple[str, list[str]]:
    """psycopg2's text with ``$1..$n`` for its named placeholders (its ``%%`` kept), and the
    names in the order of their numbers."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match.group(1) is None:
            return match.group(0)
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PARAMETER.sub(number, body), names


def _plan_of(body: str) -> _Plan | None:
    # One lookup, not a test and a read: another thread may clear the dict between the two.
    plan = _plans.get(body, _UNKNOWN)
    if plan is not _UNKNOWN:
        return plan
    text, names = positional(body)
    name = "clinic_" + hashlib.sha1(body.encode()).hexdigest()[:24]
    execute = f"EXECUTE {name}(" + ", ".join(f"%({n})s" for n in names) + ")" if names else f"EXECUTE {name}"
    if len(_plans) >= _PLANS_KEPT:
        _plans.clear()
    plan = _plans[body] = _Plan(body, name, f"PREPARE {name} AS {text}; {execute}", execute)
    return plan


@dataclass
class Switch:
    """Whether one engine's connections prepare; off for good once a pooler shows itself."""
    engine: str
    on: bool = True

    def off(self, reason: str) -> None:
        if self.on:
            self.on = False
            log.warning("prepared statements are off for the %s pool: %s; statements go as text",
                        self.engine, reason)


class _Cursor(psycopg2.extensions.cursor):
    plan: _Plan | None = None  # set by ``mark`` for the next execute only

    def execute(self, query, vars=None):
        plan, self.plan = self.plan, None
        if plan is None or not query.endswith(plan.body):
            return super().execute(query, vars)
        connection = self.connection
        prefix = query[:len(query) - len(plan.body)]  # SET LOCAL ...; before it, if any
        known = plan.name in connection.prepared
        try:
            result = super().execute(prefix + (plan.execute if known else plan.prepare), vars)
        except psycopg2.Error as exc:
            if not self._recovered(plan, known, exc):
                raise
        else:
            connection.prepared.add(plan.name)
            return result
        # Outside the except block: an error of the text is the statement's own, unchained.
        return self.execute(query, vars)

    def _recovered(self, plan: _Plan, known: bool, exc: psycopg2.Error) -> bool:
        """Whether a failure was the preparing's, not the statement's; if so, the connection's
        record is set right and the next ``execute`` sends the statement again."""
        connection, code = self.connection, exc.pgcode
        if code == _THERE and not known:
            connection.prepared.add(plan.name)
            self.plan = plan  # now known: the EXECUTE goes alone
        elif code == _MOVED and known:
            connection.switch.off(f"{code} {str(exc).strip()}")
            connection.prepared.discard(plan.name)
        elif code == _STALE and known:
            connection.prepared.discard(plan.name)
            try:
                super().execute(f"DEALLOCATE {plan.name}")
            except psycopg2.Error:  # behind a pooler, maybe another server connection's
                pass
        elif code in _UNPREPARABLE and not known:
            _plans[plan.body] = None
        else:
            return False
        return True


def connection_factory(switch: Switch) -> type:
    """The psycopg2 connection class of one engine: it remembers what the server has prepared."""

    class PreparingConnection(psycopg2.extensions.connection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.prepared: set[str] = set()
            self.switch = switch
            self.cursor_factory = _Cursor

    return PreparingConnection


def mark(_conn, cursor, statement, _parameters, context, executemany) -> None:
    """``before_cursor_execute``: hand a marked statement's plan to the cursor that runs it."""
    if executemany or context is None or not context.execution_options.get(PREPARED):
        return
    connection = cursor.connection
    if not (isinstance(cursor, _Cursor) and connection.autocommit and connection.switch.on):
        return
    plan = _plan_of(statement)
    if plan is not None and (plan.name in connection.prepared or len(connection.prepared) < PER_CONNECTION):
        cursor.plan = plan


def prepared(statement):
    """``statement``, to be planned once per connection when it runs outside a transaction."""
    return statement.execution_options(**{PREPARED: True})

"""Login sessions: what every access token names (its ``sid``), and how every worker learns within
a second that one has ended or that its member's access changed.

A session opens at login and lasts until logout, its end by the member or an admin, a password
change, the member's deletion, its absolute lifetime (SESSION_ABSOLUTE_LIFETIME_SECONDS after the
login) or its idle timeout (SESSION_IDLE_TIMEOUT_SECONDS without a request or a refresh). Its
refresh tokens are the rows of ``session`` whose ``family_id`` is its id (``models/accounts.py``
rotates them).

Each worker keeps the standing of the sessions its requests name (``SessionCache``): whether it
is live, its age and last use, and its member's roles and scopes now. PostgreSQL tells the workers
of every instance what changed: triggers ``NOTIFY auth_change`` at commit (sql/0028), and a
listener thread per worker drops what each notification names. The listener proves that it hears
by notifying itself every HEARTBEAT_S; an entry is trusted only while the listener has heard itself
within TRUST_S. When it has not (its connection is down, or it goes through a pooler in transaction
mode that cannot carry LISTEN), a request reads its session again once its entry is older than
TRUST_S: news then takes at most TRUST_S plus one read, listener or not. Those reads run on the
request's thread, within its deadline (``models/deadline.py``), like any other query.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import secrets
import select
import threading
import time

import psycopg2
import sqlalchemy as sa
from sqlalchemy import func

import config
import state
from errors import ApiError
from models import audit, database, mfa
from models.tables import auth_session, role, session as refresh_token_row, staff, staff_mfa, user_role
from models.tenancy import same_org, scoped

log = logging.getLogger(__name__)

CHANNEL = "auth_change"
HEARTBEAT_S = 0.2
TRUST_S = 0.5
# Entries kept per worker; beyond, the cache starts again (each session is read once more).
MAX_ENTRIES = 50_000

def _standing_query():
    """The standing of one session, in one statement on the primary (a replica may lag behind a
    revocation). Times are the server's, as ages: the worker's clock only measures from the read."""
    grants = user_role.join(role, role.c.id == user_role.c.role_id)
    of_member = (same_org(user_role, auth_session), user_role.c.user_id == auth_session.c.user_id)
    # Joined ON true: a function in FROM beside its argument's table reads as a cartesian product to
    # SQLAlchemy's linter, which warned at every start.
    granted = func.unnest(role.c.scopes).table_valued("granted").alias("granted")
    second_factor = sa.exists().where(same_org(staff_mfa, auth_session), staff_mfa.c.staff_id == auth_session.c.user_id,
                                      staff_mfa.c.confirmed_at.is_not(None))
    return (
        sa.select(
            auth_session.c.user_id,
            (auth_session.c.ended_at.is_not(None) | staff.c.deleted_at.is_not(None)).label("ended"),
            func.extract("epoch", func.now() - auth_session.c.created_at).label("age_s"),
            func.extract("epoch", func.now() - auth_session.c.last_used_at).label("idle_s"),
            sa.select(func.array_agg(role.c.name)).select_from(grants).where(*of_member)
            .scalar_subquery().label("roles"),
            sa.select(func.array_agg(granted.c.granted.distinct())).select_from(grants.join(granted, sa.true()))
            .where(*of_member)
            .scalar_subquery().label("scopes"),
            second_factor.label("second_factor"),
        )
        .select_from(auth_session.join(staff, same_org(staff, auth_session) & (staff.c.id == auth_session.c.user_id)))
        .where(auth_session.c.id == sa.bindparam("sid"))
    )


_STANDING = _standing_query()

# Each worker's record of use, a few times a minute, on the listener's own connection (psycopg2's
# parameters): ages in seconds, so that the server's clock sets the time.
_TOUCH = """
UPDATE auth_session AS s
   SET last_used_at = greatest(s.last_used_at, now() - make_interval(secs => u.age_s))
  FROM unnest(%(ids)s::uuid[], %(ages)s::float8[]) AS u (id, age_s)
 WHERE s.id = u.id AND s.ended_at IS NULL
"""


@dataclasses.dataclass(eq=False)
class Standing:
    """A session as its worker last read it; times are ``time.monotonic()``."""

    user_id: str
    ended: bool
    scopes: frozenset[str]
    scope_text: str  # as an access token's ``scope`` claim writes them, to compare at no cost
    read_at: float
    ends_at: float  # the absolute lifetime
    last_used: float  # moved by this worker's requests too


def _ended(message: str) -> ApiError:
    return ApiError("UNAUTHORIZED", message)


class SessionCache:
    """The standing of the sessions one worker's requests name, kept true by ``LISTEN auth_change``."""

    def __init__(self, settings: config.Settings, listen_url: str | None):
        self.absolute_s = settings.session_absolute_lifetime_s
        self.idle_s = settings.session_idle_timeout_s
        self.mfa_required_roles = frozenset(settings.mfa_required_roles)
        self.listen_url = listen_url
        self.connect_timeout_s = settings.db_connect_timeout_s
        # Use is written back well within the idle timeout, so another worker never finds a
        # session idle that this one served.
        self.touch_every_s = min(30.0, max(0.2, self.idle_s / 4))
        self.entries: dict[str, Standing] = {}
        self.touched: dict[str, float] = {}
        # Bumped by every notification: a read that overlapped one is not kept (it may predate it).
        self.generation = 0
        # All news committed before heard_through has been applied; entries read before
        # listening_since may have missed some (the listener was reconnecting).
        self.heard_through = -math.inf
        self.listening_since = math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clinic-api-sessions", daemon=True)

    # --- per request ----------------------------------------------------------------------

    def standing(self, claims: dict) -> Standing:
        """The live session an access token names, or 401: ended, expired, idle or not its bearer's."""
        sid = claims["sid"]
        now = time.monotonic()
        entry = self.entries.get(sid)
        if entry is None or not self._trusted(entry, now):
            entry = self._read(sid, now)
        # A staff id belongs to one organization: the session's member is the token's, in its organization.
        if entry is None or entry.ended or entry.user_id != claims["sub"]:
            raise _ended("The session has ended; log in again")
        if now >= entry.ends_at:
            raise _ended("The session has reached its lifetime; log in again")
        if now - entry.last_used > self.idle_s:
            entry = self._read(sid, now)  # another worker or instance may have served it since
            if entry is None or entry.ended or now - entry.last_used > self.idle_s:
                raise _ended("The session has been idle too long; log in again")
        entry.last_used = now
        self.touched[sid] = now
        return entry

    def known(self, sid: str) -> Standing | None:
        """The entry for ``sid`` if it is trusted now, without reading anything (the event loop's view)."""
        entry = self.entries.get(sid)
        return entry if entry is not None and self._trusted(entry, time.monotonic()) else None

    def _trusted(self, entry: Standing, now: float) -> bool:
        return entry.read_at >= self.listening_since and now - self.heard_through <= TRUST_S

    def _read(self, sid: str, now: float) -> Standing | None:
        generation = self.generation
        row = database.read(lambda conn: conn.execute(_STANDING, {"sid": sid}).mappings().first(), on_primary=True)
        if row is None:
            return None
        roles = tuple(sorted(row["roles"] or ()))
        scopes = frozenset() if mfa.enrolment_due(roles, row["second_factor"], self.mfa_required_roles) \
            else frozenset(row["scopes"] or ())
        used_here = self.touched.get(sid, -math.inf)
        entry = Standing(user_id=str(row["user_id"]), ended=row["ended"], scopes=scopes,
                         scope_text=" ".join(sorted(scopes)), read_at=now,
                         ends_at=now + self.absolute_s - float(row["age_s"]),
                         last_used=max(now - float(row["idle_s"]), used_here))
        if generation == self.generation:
            if len(self.entries) >= MAX_ENTRIES:
                self.entries.clear()
            self.entries[sid] = entry
        return entry

    # --- the listener ---------------------------------------------------------------------

    def start(self) -> "SessionCache":
        if self.listen_url:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def apply(self, payload: str) -> None:
        """Drop what a notification names: ``session:<id>``, ``staff:<id>`` or ``all``."""
        self.generation += 1
        kind, _, key = payload.partition(":")
        if kind == "session":
            self.entries.pop(key, None)
        elif kind == "staff":
            for sid in [sid for sid, entry in list(self.entries.items()) if entry.user_id == key]:
                self.entries.pop(sid, None)
        else:
            self.entries.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except (psycopg2.Error, OSError) as exc:
                log.warning("the session listener lost its connection (%s): sessions are read again "
                            "every %.1f s meanwhile", " ".join(str(exc).split()), TRUST_S)
            self.heard_through = -math.inf
            self._stop.wait(1.0)

    def _listen(self) -> None:
        # Keepalives: a listener whose server vanished finds out in seconds, not at TCP's timeout.
        connection = psycopg2.connect(self.listen_url, connect_timeout=self.connect_timeout_s,
                                      application_name="clinic-api-sessions",
                                      keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        try:
            connection.autocommit = True
            cursor = connection.cursor()
            own = f"auth_heartbeat_{secrets.token_hex(8)}"
            cursor.execute(f"LISTEN {CHANNEL}; LISTEN {own}")
            since = time.monotonic()
            sent: dict[str, float] = {}
            beat = touched = since
            number = 0
            hearing = False
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= beat:
                    number += 1
                    sent[str(number)] = now
                    cursor.execute(f"NOTIFY {own}, '{number}'")
                    beat = now + HEARTBEAT_S
                    if len(sent) > 100:  # heartbeats that never came back (a pooler between us)
                        sent.clear()
                if now >= touched + self.touch_every_s:
                    self._flush_touches(cursor)
                    touched = now
                if not connection.notifies and select.select([connection], [], [], max(0.0, beat - time.monotonic()))[0]:
                    connection.poll()
                # In the order PostgreSQL committed them: news before a heartbeat is applied before it.
                for notification in connection.notifies:
                    if notification.channel != own:
                        self.apply(notification.payload)
                    elif (heard := sent.pop(notification.payload, None)) is not None:
                        if not hearing:  # what was read before this connection listened may be stale
                            self.listening_since, hearing = since, True
                        self.heard_through = heard
                connection.notifies.clear()
            self._flush_touches(cursor)  # stopping: what this worker served is not lost
        finally:
            connection.close()

    def _flush_touches(self, cursor) -> None:
        """Write this worker's use of its sessions (the idle timeout reads it)."""
        if not self.touched:
            return
        now = time.monotonic()
        used, self.touched = self.touched, {}
        ids = list(used)
        ages = [max(0.0, now - used[sid]) for sid in ids]
        try:
            if cursor is not None:
                cursor.execute(_TOUCH, {"ids": ids, "ages": ages})
                return
        except psycopg2.Error:
            pass
        for sid, at in used.items():  # kept for the next try
            self.touched.setdefault(sid, at)


# --- the sessions of a member ---------------------------------------------------------------

def changed(conn, payload: str) -> None:
    """``conn``'s transaction changes someone's access (``payload`` as ``auth_change`` carries it):
    once it commits, this worker's own cache drops what it names. The commit's notification reaches
    this worker's listener a moment later, and a client that asks again at once would otherwise be
    answered by the old standing. Other workers hear the notification as usual. Every statement
    that changes what a standing holds (a session's end, a member's roles, password, deletion or
    second factor) calls this beside it."""
    cache = state.current().sessions
    if cache is not None:
        database.after_commit(conn, lambda: cache.apply(payload))


def open_session(conn, member, origin: dict) -> str:
    """A new session for a member who proved who they are; returns its id (the tokens' sid)."""
    return conn.execute(
        auth_session.insert().values(org_id=member["org_id"], user_id=member["id"],
                                     ip_address=origin.get("ip_address"), user_agent=origin.get("user_agent"))
        .returning(auth_session.c.id)
    ).scalar_one()


def _bounds(table=auth_session):
    """When a session ends by itself: its absolute lifetime, and its idle timeout from last use."""
    conf = config.current()
    return (table.c.created_at + dt.timedelta(seconds=conf.session_absolute_lifetime_s),
            table.c.last_used_at + dt.timedelta(seconds=conf.session_idle_timeout_s))


def live(table=auth_session):
    """Conditions of a session still in force: not ended, within its lifetime and idle timeout."""
    return (table.c.ended_at.is_(None), *(bound > func.now() for bound in _bounds(table)))


def end(conn, *conditions, reason: str) -> list[str]:
    """End the live sessions that meet ``conditions`` and revoke their refresh tokens; their ids."""
    ended = conn.execute(
        auth_session.update().where(auth_session.c.ended_at.is_(None), *conditions)
        .values(ended_at=func.now(), end_reason=reason).returning(auth_session.c.id)
    ).scalars().all()
    for sid in ended:
        changed(conn, f"session:{sid}")
    if ended:
        conn.execute(
            refresh_token_row.update()
            .where(refresh_token_row.c.family_id.in_(ended), refresh_token_row.c.revoked.is_(False))
            .values(revoked=True, revoked_at=func.now())
        )
    return ended


def end_all_of(conn, org_id: str, staff_id: str, *, reason: str, keep: str | None = None) -> list[str]:
    """End every session of a member (but ``keep``, the caller's own, when given)."""
    conditions = [*scoped(auth_session, org_id), auth_session.c.user_id == staff_id]
    if keep is not None:
        conditions.append(auth_session.c.id != keep)
    return end(conn, *conditions, reason=reason)


def sessions_of(caller) -> dict:
    """The caller's sessions in force, newest first, the current one marked."""
    columns = [auth_session.c.id, auth_session.c.created_at, auth_session.c.last_used_at,
               auth_session.c.ip_address, auth_session.c.user_agent, func.least(*_bounds()).label("expires_at")]
    query = (sa.select(*columns)
             .where(*scoped(auth_session, caller.org_id), auth_session.c.user_id == caller.user_id, *live())
             .order_by(auth_session.c.created_at.desc(), auth_session.c.id))
    rows = database.read(lambda conn: conn.execute(query).mappings().all(), on_primary=True)
    found = [{**row, "current": row["id"] == caller.session_id} for row in rows]
    return {"sessions": found, "total": len(found), "total_estimated": False}


def end_own(caller, sid: str, origin: dict) -> None:
    """The caller ends one of their sessions (their current one too: a logout); 404 when not theirs."""
    with database.current_engine().begin() as conn:
        ended = end(conn, *scoped(auth_session, caller.org_id), auth_session.c.user_id == caller.user_id,
                    auth_session.c.id == sid, reason="ended_by_member")
        if not ended:
            raise ApiError("NOT_FOUND", "session not found")
        audit.record(conn, org_id=caller.org_id, user_id=caller.user_id, action="session_end", resource="session",
                     resource_id=sid, origin=origin)


def end_member_sessions(caller, staff_id: str, origin: dict) -> None:
    """An admin ends every session of a member of their organization (404 when there is no such member)."""
    with database.current_engine().begin() as conn:
        member = conn.execute(sa.select(staff.c.id).where(staff.c.id == staff_id, *scoped(staff, caller.org_id),
                                                          staff.c.deleted_at.is_(None))).first()
        if member is None:
            raise ApiError("NOT_FOUND", "staff not found")
        ended = end_all_of(conn, caller.org_id, staff_id, reason="ended_by_admin")
        audit.record(conn, org_id=caller.org_id, user_id=caller.user_id, action="sessions_end", resource="staff",
                     resource_id=staff_id, after={"sessions_ended": len(ended)}, origin=origin)

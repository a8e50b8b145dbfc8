"""Logins, refresh-token sessions, role grants and new organizations."""
from __future__ import annotations

import datetime as dt
import logging

import sqlalchemy as sa
from sqlalchemy import func, select

import config
from errors import ApiError
from models import audit, credentials, mfa, sessions
from models.database import current_engine
from models.tenancy import own_organization, same_org, scoped
from models.tables import STAFF_SECRETS, auth_session, branch, login_origin, organization, role, session, staff, user_role

log = logging.getLogger(__name__)

# How long an address a member logged in from stays theirs for the login throttle.
KNOWN_ORIGIN_DAYS = 90

STAFF_PUBLIC = [c for c in staff.c if c.name not in STAFF_SECRETS]


def grants(conn, org_id: str, staff_id: str) -> tuple[list[str], list[str]]:
    """The role names and the union of scopes granted to a staff member."""
    rows = conn.execute(
        select(role.c.name, role.c.scopes)
        .join(user_role, user_role.c.role_id == role.c.id)
        .where(*scoped(user_role, org_id), user_role.c.user_id == staff_id)
        .order_by(role.c.name)
    ).all()
    scopes = sorted({scope for _, granted in rows for scope in granted})
    return [name for name, _ in rows], scopes


def login_name(value):
    """An address as people read it: NFKC-normalised and lower-cased, by PostgreSQL, the way the
    staff_email_live_key and staff_login_name_idx indexes compare it (sql/0027)."""
    return func.lower(func.normalize(value, sa.literal_column("NFKC")))


def _live_memberships(conn, email: str, org_id: str | None):
    """Every live staff row this address logs in as (one per organization), or only ``org_id``'s."""
    query = (select(*STAFF_PUBLIC, staff.c.password_hash)
             .where(login_name(staff.c.email) == login_name(sa.literal(email, sa.String)),
                    staff.c.deleted_at.is_(None))
             .order_by(staff.c.created_at, staff.c.id))
    if org_id is not None:
        query = query.where(*scoped(staff, org_id))
    return conn.execute(query).mappings().all()


def _issue_refresh_token(conn, member, session_id: str, origin: dict, *, session_started=None) -> tuple[str, str]:
    """A new refresh token of a session; returns the token (shown once) and its row's id. It
    expires with the session's absolute lifetime at the latest."""
    conf = config.current()
    token, token_hash = credentials.new_refresh_token()
    expires = func.now() + dt.timedelta(seconds=conf.refresh_token_ttl_s)
    if session_started is not None:
        expires = func.least(expires, session_started + dt.timedelta(seconds=conf.session_absolute_lifetime_s))
    else:
        expires = func.now() + dt.timedelta(seconds=min(conf.refresh_token_ttl_s, conf.session_absolute_lifetime_s))
    row_id = conn.execute(
        session.insert().values(
            org_id=member["org_id"],
            user_id=member["id"],
            family_id=session_id,
            refresh_token_hash=token_hash,
            expires_at=expires,
            ip_address=origin.get("ip_address"),
            user_agent=origin.get("user_agent"),
        ).returning(session.c.id)
    ).scalar_one()
    return token, row_id


def _tokens(conn, member, refresh_token: str, session_id: str) -> dict:
    roles, scopes = grants(conn, member["org_id"], member["id"])
    # A role that requires a second factor grants nothing until the member has one: the token
    # still lets them enrol (operations that need no scope).
    enrolment_due = mfa.required_for(conn, member["org_id"], member["id"], roles)
    access = credentials.issue_access_token(
        staff_id=member["id"], org_id=member["org_id"], session_id=session_id, roles=roles,
        scopes=[] if enrolment_due else scopes,
    )
    tokens = {"access_token": access, "refresh_token": refresh_token, "token_type": "Bearer",
              "expires_in": config.current().access_token_ttl_s}
    if enrolment_due:
        tokens["mfa_enrolment_required"] = True
    return tokens


def login(email: str, password: str, origin: dict, org_id: str | None = None) -> dict:
    """Check the credentials and open a session; unknown email and bad password look the same.

    An address may log in to several organizations (each membership has its own password): when
    the password opens more than one and ``org_id`` names none of them, the answer lists those.
    """
    if not credentials.password_fits(password):
        raise ApiError("VALIDATION_ERROR", "password must be 1 to 72 bytes", field="password")
    engine = current_engine()
    with engine.connect() as conn:
        members = _live_memberships(conn, email, org_id)
    # bcrypt runs outside any transaction so a slow hash never holds a database connection.
    if not members:
        credentials.check_password(password, None)  # the same cost as a wrong password
    opened = [m for m in members if credentials.check_password(password, m["password_hash"])]
    member = opened[0] if len(opened) == 1 else None
    accepted = bool(opened)
    rehashed = _rehashed(member, password)
    with engine.begin() as conn:
        if rehashed is not None:
            conn.execute(staff.update().where(staff.c.id == member["id"], *scoped(staff, member["org_id"]),
                                              staff.c.password_hash == member["password_hash"])
                         .values(password_hash=rehashed))
        if not accepted:
            if not members:
                log.info("login failed for an unknown email", extra={"event": "login_failed"})
            for failed in members:
                audit.record(conn, org_id=failed["org_id"], user_id=failed["id"],
                             action="login_failed", resource="session", origin=origin)
        elif member is None:
            result = {"organization_required": True, "organizations": _organizations(conn, opened)}
        elif mfa.enrolled(conn, member["org_id"], member["id"]):
            result = mfa.open_challenge(conn, member)
            audit.record(conn, org_id=member["org_id"], user_id=member["id"], action="login_mfa_challenge",
                         resource="session", origin=origin)
        else:
            result = _open_session(conn, member, origin)
    if not accepted:
        raise ApiError("INVALID_CREDENTIALS")
    return result


def _rehashed(member, password: str) -> str | None:
    """A new hash of the password a member just proved, when theirs was made at another
    BCRYPT_ROUNDS: raising the cost reaches every member at their next login. Outside any
    transaction, as bcrypt is slow."""
    if member is None or not credentials.needs_rehash(member["password_hash"]):
        return None
    return credentials.hash_password(password)


def change_password(caller, current_password: str, new_password: str) -> None:
    """The member changes their own password: every other session of theirs ends, theirs goes on.
    A wrong current password is 422 on ``current_password`` (counted by the login throttles)."""
    with current_engine().connect() as conn:
        member = conn.execute(select(staff.c.id, staff.c.password_hash).where(
            staff.c.id == caller.user_id, *scoped(staff, caller.org_id))).mappings().first()
    if member is None:
        raise ApiError("UNAUTHORIZED", "The account no longer exists")
    if not credentials.password_fits(current_password) or \
            not credentials.check_password(current_password, member["password_hash"]):
        raise ApiError("BUSINESS_RULE_VIOLATION", "current_password is not the member's password",
                       field="current_password")
    credentials.check_new_password(new_password, "new_password")
    new_hash = credentials.hash_password(new_password)
    with current_engine().begin() as conn:
        changed = conn.execute(staff.update().where(
            staff.c.id == caller.user_id, *scoped(staff, caller.org_id),
            staff.c.password_hash == member["password_hash"]).values(password_hash=new_hash, updated_at=func.now()))
        if changed.rowcount != 1:  # changed meanwhile by someone else (an admin's reset)
            raise ApiError("CONFLICT", "The password was changed meanwhile", field="current_password")
        password_changed(conn, caller, caller.user_id)


def password_changed(conn, caller, staff_id: str) -> None:
    """A member's password changed (by themselves or an admin): their sessions end but the
    caller's own, and the audit says so (never the value)."""
    keep = caller.session_id if staff_id == caller.user_id else None
    sessions.changed(conn, f"staff:{staff_id}")
    ended = sessions.end_all_of(conn, caller.org_id, staff_id, reason="password_changed", keep=keep)
    audit.record(conn, org_id=caller.org_id, user_id=caller.user_id, action="password_change", resource="staff",
                 resource_id=staff_id, after={"sessions_ended": len(ended)}, origin=caller.origin)


def login_email(caller) -> str | None:
    """The caller's login name (for the login throttles of a password check)."""
    with current_engine().connect() as conn:
        return conn.execute(select(staff.c.email).where(staff.c.id == caller.user_id,
                                                        *scoped(staff, caller.org_id))).scalar_one_or_none()


def _organizations(conn, members) -> list[dict]:
    """The organizations a password opened, for the caller to choose from (and nothing more)."""
    names = {}
    for member in members:
        names[member["org_id"]] = conn.execute(
            select(organization.c.name).where(own_organization(organization, member["org_id"]))).scalar_one()
    return [{"org_id": key, "name": name} for key, name in names.items()]


def _open_session(conn, member, origin: dict, *, second_factor: str | None = None) -> dict:
    """A new session for a member who proved who they are: tokens, the user, the audit row."""
    session_id = sessions.open_session(conn, member, origin)
    refresh, _ = _issue_refresh_token(conn, member, session_id, origin)
    _remember_origin(conn, member, origin)
    result = _tokens(conn, member, refresh, session_id)
    result["user"] = _public(member)
    audit.record(conn, org_id=member["org_id"], user_id=member["id"], action="login", resource="session",
                 after={"second_factor": second_factor} if second_factor else None, origin=origin)
    return result


def verify_mfa(mfa_token: str, code: str, origin: dict) -> dict:
    """The login's second step: a TOTP code or a recovery code for the challenge of the first."""
    with current_engine().begin() as conn:
        outcome = mfa.redeem(conn, mfa_token, code)
        if not isinstance(outcome, ApiError):
            org_id, staff_id, how = outcome
            member = conn.execute(
                select(*STAFF_PUBLIC).where(staff.c.id == staff_id, *scoped(staff, org_id))
            ).mappings().first()
            outcome = ApiError("INVALID_MFA_CODE") if member is None else _open_session(
                conn, member, origin, second_factor=how)
    if isinstance(outcome, ApiError):
        raise outcome  # after the commit, so that a wasted attempt counts
    return outcome


def _remember_origin(conn, member, origin: dict) -> None:
    if not origin.get("ip_address"):
        return
    conn.execute(
        sa.dialects.postgresql.insert(login_origin)
        .values(staff_id=member["id"], org_id=member["org_id"], ip_address=origin["ip_address"])
        .on_conflict_do_update(index_elements=[login_origin.c.staff_id, login_origin.c.ip_address],
                               set_={"last_login_at": func.now()})
    )


def logged_in_from(email: str, ip_address: str | None) -> bool:
    """Whether a live member with this email logged in from this address in the last 90 days."""
    if not ip_address:
        return False
    with current_engine().connect() as conn:
        return conn.execute(
            select(sa.exists().where(
                login_name(staff.c.email) == login_name(sa.literal(email, sa.String)), staff.c.deleted_at.is_(None),
                login_origin.c.staff_id == staff.c.id, same_org(login_origin, staff),
                login_origin.c.ip_address == ip_address,
                login_origin.c.last_login_at > func.now() - dt.timedelta(days=KNOWN_ORIGIN_DAYS),
            ))
        ).scalar_one()


def refresh(refresh_token: str, origin: dict) -> dict:
    """Rotate a refresh token. A token that was already rotated revokes its whole family."""
    token_hash = credentials.hash_refresh_token(refresh_token)
    with current_engine().begin() as conn:
        current = conn.execute(
            select(session).where(session.c.refresh_token_hash == token_hash).with_for_update()
        ).mappings().first()
        outcome = _rotate(conn, current, origin)
    if isinstance(outcome, ApiError):
        raise outcome  # raised after commit, so a reuse revocation is kept
    return outcome


def _rotate(conn, current, origin):
    if current is None:
        return ApiError("INVALID_TOKEN")
    owner = conn.execute(
        select(auth_session.c.created_at, sa.and_(*sessions.live()).label("in_force"))
        .where(auth_session.c.id == current["family_id"]).with_for_update()
    ).mappings().first()
    in_force = owner is not None and owner["in_force"]
    if current["revoked"] and current["replaced_by"] is not None:
        if in_force and _double_submit(conn, current):
            outcome = _successor(conn, current, owner, origin)
            return outcome if isinstance(outcome, ApiError) else outcome[0]
        revoked = sessions.end(conn, auth_session.c.id == current["family_id"], reason="token_reuse")
        audit.record(conn, org_id=current["org_id"], user_id=current["user_id"],
                     action="token_reuse", resource="session", resource_id=current["family_id"],
                     after={"sessions_revoked": len(revoked)}, origin=origin)
        return ApiError("INVALID_TOKEN")
    if current["revoked"]:
        return ApiError("INVALID_TOKEN")
    expired = conn.execute(select(current["expires_at"] <= func.now())).scalar_one()
    if expired or not in_force:
        sessions.end(conn, auth_session.c.id == current["family_id"], reason="expired")
        return ApiError("INVALID_TOKEN")
    outcome = _successor(conn, current, owner, origin)
    if isinstance(outcome, ApiError):
        return outcome
    tokens, successor_id = outcome
    conn.execute(session.update().where(session.c.id == current["id"])
                 .values(revoked=True, revoked_at=func.now(), replaced_by=successor_id))
    return tokens


def _double_submit(conn, current) -> bool:
    """A rotated token presented again within REFRESH_GRACE_SECONDS, while the token it was rotated
    into is still unused: a client that sent its refresh twice, not a thief (who would come later,
    or after the client had moved on)."""
    grace = config.current().refresh_grace_s
    return conn.execute(
        select(sa.and_(current["revoked_at"] > func.now() - dt.timedelta(seconds=grace),
                       select(session.c.revoked).where(session.c.id == current["replaced_by"])
                       .scalar_subquery().is_(False)))
    ).scalar_one() if grace > 0 else False


def _successor(conn, current, owner, origin):
    """A new token pair of the session ``current`` belongs to, and the new refresh token's row id."""
    member = conn.execute(
        select(*STAFF_PUBLIC).where(staff.c.id == current["user_id"], *scoped(staff, current["org_id"]),
                                    staff.c.deleted_at.is_(None))
    ).mappings().first()
    if member is None:
        sessions.end(conn, auth_session.c.id == current["family_id"], reason="staff_deleted")
        return ApiError("INVALID_TOKEN")
    token, row_id = _issue_refresh_token(conn, member, current["family_id"], origin, session_started=owner["created_at"])
    conn.execute(auth_session.update().where(auth_session.c.id == current["family_id"])
                 .values(last_used_at=func.now()))
    return _tokens(conn, member, token, current["family_id"]), row_id


def logout(refresh_token: str, origin: dict) -> None:
    """End the session of this refresh token. An unknown token is not an error."""
    token_hash = credentials.hash_refresh_token(refresh_token)
    with current_engine().begin() as conn:
        current = conn.execute(
            select(session).where(session.c.refresh_token_hash == token_hash)
        ).mappings().first()
        if current is None:
            return
        sessions.end(conn, auth_session.c.id == current["family_id"], reason="logout")
        audit.record(conn, org_id=current["org_id"], user_id=current["user_id"], action="logout",
                     resource="session", resource_id=current["family_id"], origin=origin)


def revoke_sessions_of(conn, org_id: str, staff_id: str) -> None:
    """End every session of a staff member (used when the member is deleted)."""
    sessions.changed(conn, f"staff:{staff_id}")
    sessions.end_all_of(conn, org_id, staff_id, reason="staff_deleted")


def me(org_id: str, staff_id: str) -> dict:
    """The caller's staff record with the roles and scopes granted now."""
    with current_engine().connect() as conn:
        member = conn.execute(
            select(*STAFF_PUBLIC).where(
                staff.c.id == staff_id, *scoped(staff, org_id)
            )
        ).mappings().first()
        if member is None:
            raise ApiError("UNAUTHORIZED", "The account no longer exists")
        roles, scopes = grants(conn, org_id, staff_id)
    return {**_public(member), "roles": roles, "scopes": scopes}


def grant_role(conn, org_id: str, staff_id: str, role_name: str) -> bool:
    """Grant a role; False when it was already granted."""
    role_id = conn.execute(select(role.c.id).where(role.c.name == role_name)).scalar_one_or_none()
    if role_id is None:
        raise ApiError("VALIDATION_ERROR", f"unknown role {role_name!r}", field="role")
    inserted = conn.execute(
        sa.dialects.postgresql.insert(user_role)
        .values(user_id=staff_id, role_id=role_id, org_id=org_id)
        .on_conflict_do_nothing()
    )
    if inserted.rowcount != 1:
        return False
    sessions.changed(conn, f"staff:{staff_id}")
    return True


def _revoke(conn, org_id: str, staff_id: str, role_name: str) -> bool:
    if role_name == "admin":
        ensure_another_admin(conn, org_id, staff_id)
    removed = conn.execute(
        user_role.delete().where(
            *scoped(user_role, org_id), user_role.c.user_id == staff_id,
            user_role.c.role_id == select(role.c.id).where(role.c.name == role_name).scalar_subquery(),
        )
    )
    if removed.rowcount != 1:
        return False
    sessions.changed(conn, f"staff:{staff_id}")
    return True


def ensure_another_admin(conn, org_id: str, staff_id: str) -> None:
    """409 when ``staff_id`` is the organization's last live admin (nobody could manage it)."""
    admin_id = select(role.c.id).where(role.c.name == "admin").scalar_subquery()
    # Locking every admin grant of the organization serializes concurrent revocations, so two
    # admins removing each other cannot both succeed.
    holders = conn.execute(
        select(user_role.c.user_id, staff.c.deleted_at.is_(None).label("live"))
        .join(staff, (staff.c.id == user_role.c.user_id) & same_org(staff, user_role))
        .where(*scoped(user_role, org_id), user_role.c.role_id == admin_id)
        .with_for_update(of=user_role)
    ).all()
    holds_admin = any(user_id == staff_id for user_id, _ in holders)
    other_live_admins = [user_id for user_id, live in holders if live and user_id != staff_id]
    if holds_admin and not other_live_admins:
        raise ApiError("CONFLICT", "The organization's last admin cannot be removed", field="role")


def replace_primary_role(conn, caller, staff_id: str, old_role: str, new_role: str) -> None:
    """The staff record's ``role`` changed: its grant follows (other grants are kept)."""
    _revoke(conn, caller.org_id, staff_id, old_role)
    grant_role(conn, caller.org_id, staff_id, new_role)


def _live_member(conn, org_id: str, staff_id: str):
    member = conn.execute(
        select(staff.c.id).where(staff.c.id == staff_id, *scoped(staff, org_id))
        .with_for_update()
    ).first()
    if member is None:
        raise ApiError("NOT_FOUND", "staff not found")


def list_roles() -> dict:
    with current_engine().connect() as conn:
        rows = conn.execute(select(role.c.id, role.c.name, role.c.description, role.c.scopes)
                            .order_by(role.c.name)).mappings().all()
    return {"roles": [dict(r) for r in rows], "total": len(rows), "total_estimated": False}


def staff_roles(caller, staff_id: str) -> dict:
    """The roles of a live staff member of the caller's organization."""
    with current_engine().begin() as conn:
        _live_member(conn, caller.org_id, staff_id)
        return _roles_of(conn, caller.org_id, staff_id)


def _roles_of(conn, org_id: str, staff_id: str) -> dict:
    roles, scopes = grants(conn, org_id, staff_id)
    return {"staff_id": staff_id, "roles": roles, "scopes": scopes}


def grant(caller, staff_id: str, role_name: str) -> dict:
    """Grant a role the caller could exercise themselves; audited."""
    with current_engine().begin() as conn:
        _live_member(conn, caller.org_id, staff_id)
        granted_scopes = conn.execute(select(role.c.scopes).where(role.c.name == role_name)).scalar_one()
        missing = set(granted_scopes) - caller.scopes
        if missing:
            raise ApiError("INSUFFICIENT_SCOPE", f"You cannot grant scopes you do not hold: {', '.join(sorted(missing))}")
        before = _roles_of(conn, caller.org_id, staff_id)
        granted = grant_role(conn, caller.org_id, staff_id, role_name)
        if granted:
            after = _roles_of(conn, caller.org_id, staff_id)
            audit.record_for(conn, caller, "grant_role", "staff", staff_id, before=before, after=after)
    return after if granted else before


def revoke(caller, staff_id: str, role_name: str) -> None:
    """Revoke a role; the organization always keeps one admin; audited."""
    with current_engine().begin() as conn:
        _live_member(conn, caller.org_id, staff_id)
        before = _roles_of(conn, caller.org_id, staff_id)
        if not _revoke(conn, caller.org_id, staff_id, role_name):
            raise ApiError("NOT_FOUND", f"the staff member does not hold the role {role_name}")
        after = _roles_of(conn, caller.org_id, staff_id)
        audit.record_for(conn, caller, "revoke_role", "staff", staff_id, before=before, after=after)


def create_organization(*, name: str, branch_name: str, admin_email: str, admin_password: str,
                        admin_name: str = "Administrator") -> dict:
    """A new tenant with its first branch and an admin who can log in."""
    credentials.check_new_password(admin_password)
    with current_engine().begin() as conn:
        org_id = conn.execute(organization.insert().values(name=name).returning(organization.c.id)).scalar_one()
        branch_id = conn.execute(
            branch.insert().values(org_id=org_id, name=branch_name).returning(branch.c.id)
        ).scalar_one()
        admin_id = conn.execute(
            staff.insert().values(
                org_id=org_id, branch_id=branch_id, name=admin_name, email=admin_email,
                role="admin", password_hash=credentials.hash_password(admin_password),
            ).returning(staff.c.id)
        ).scalar_one()
        grant_role(conn, org_id, admin_id, "admin")
        audit.record(conn, org_id=org_id, user_id=None, action="create", resource="organization",
                     resource_id=org_id, after={"name": name, "branch_id": branch_id, "admin_id": admin_id})
    return {"org_id": org_id, "branch_id": branch_id, "admin_id": admin_id}


def _public(member) -> dict:
    return {key: value for key, value in dict(member).items() if key not in STAFF_SECRETS}

"""TOTP second factor (RFC 6238, with pyotp) and one-time recovery codes: enrolment, the login's
second step, and an admin's reset. Sessions themselves are opened by ``models/accounts.py``."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time

import pyotp
import sqlalchemy as sa
from sqlalchemy import func, select

import config
from errors import ApiError
from models import audit, sessions
from models.database import current_engine
from models.tables import mfa_challenge, mfa_recovery_code, organization, staff, staff_mfa
from models.tenancy import own_organization, same_org, scoped

CHALLENGE_TTL_S = 300
CHALLENGE_ATTEMPTS = 5  # wrong codes one challenge takes; the login throttles bound the rest
RECOVERY_CODES = 10
# Recovery codes are typed by people: no 0/o, 1/l/i; 10 characters of 31 are about 50 bits.
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _member_row(conn, caller):
    return conn.execute(
        select(staff.c.email, select(organization.c.name).where(own_organization(organization, caller.org_id))
               .scalar_subquery().label("org_name"))
        .where(staff.c.id == caller.user_id, *scoped(staff, caller.org_id))
    ).mappings().one()


def _mfa_row(conn, org_id: str, staff_id: str):
    return conn.execute(
        select(staff_mfa).where(staff_mfa.c.staff_id == staff_id, *scoped(staff_mfa, org_id)).with_for_update()
    ).mappings().first()


def start_enrolment(caller) -> dict:
    """A new TOTP secret for the caller, pending until a code confirms it; shown this once."""
    secret = pyotp.random_base32()  # 160 bits, RFC 4226's recommendation
    with current_engine().begin() as conn:
        member = _member_row(conn, caller)
        current = _mfa_row(conn, caller.org_id, caller.user_id)
        if current is not None and current["confirmed_at"] is not None:
            raise ApiError("CONFLICT", "Two-factor login is already on; an admin can reset it")
        conn.execute(
            sa.dialects.postgresql.insert(staff_mfa)
            .values(staff_id=caller.user_id, org_id=caller.org_id, totp_secret=secret)
            .on_conflict_do_update(index_elements=[staff_mfa.c.staff_id],
                                   set_={"totp_secret": secret, "last_used_step": None, "created_at": func.now()})
        )
        audit.record_for(conn, caller, "mfa_enrolment_started", "staff", caller.user_id)
    uri = pyotp.TOTP(secret).provisioning_uri(name=member["email"], issuer_name=member["org_name"])
    return {"secret": secret, "otpauth_uri": uri, "algorithm": "SHA1", "digits": 6, "period": 30}


def confirm_enrolment(caller, code: str) -> dict:
    """Turn the pending secret on with a code from the authenticator; the recovery codes, once."""
    with current_engine().begin() as conn:
        current = _mfa_row(conn, caller.org_id, caller.user_id)
        if current is None:
            raise ApiError("CONFLICT", "No enrolment to confirm: start one with POST /auth/mfa/totp")
        if current["confirmed_at"] is not None:
            raise ApiError("CONFLICT", "Two-factor login is already on")
        step = _matching_step(current, code)
        if step is None:
            raise ApiError("BUSINESS_RULE_VIOLATION",
                           "The code does not match the secret (check the device's clock)", field="code")
        conn.execute(staff_mfa.update().where(staff_mfa.c.staff_id == caller.user_id)
                     .values(confirmed_at=func.now(), last_used_step=step))
        sessions.changed(conn, f"staff:{caller.user_id}")  # a role that requires it grants its scopes now
        codes = _new_recovery_codes(conn, caller.org_id, caller.user_id)
        audit.record_for(conn, caller, "mfa_enabled", "staff", caller.user_id)
    return {"recovery_codes": codes}


def _new_recovery_codes(conn, org_id: str, staff_id: str) -> list[str]:
    codes = ["".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10)) for _ in range(RECOVERY_CODES)]
    conn.execute(mfa_recovery_code.delete().where(mfa_recovery_code.c.staff_id == staff_id,
                                                  *scoped(mfa_recovery_code, org_id)))
    conn.execute(mfa_recovery_code.insert(),
                 [{"org_id": org_id, "staff_id": staff_id, "code_hash": _hash(code)} for code in codes])
    return [f"{code[:5]}-{code[5:]}" for code in codes]


def _matching_step(row, code: str) -> int | None:
    """The time step whose code this is (the current one or a neighbour, for clock drift), if it
    is newer than the last one accepted: a code works once."""
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(row["totp_secret"])
    now = totp.timecode(time.time())
    for step in (now, now - 1, now + 1):
        fresh = row["last_used_step"] is None or step > row["last_used_step"]
        if fresh and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def required_for(conn, org_id: str, staff_id: str, roles: list[str]) -> bool:
    """Whether a role of the member requires a second factor (MFA_REQUIRED_ROLES) they lack."""
    required = config.current().mfa_required_roles
    if not set(roles) & set(required):
        return False
    return enrolment_due(roles, enrolled(conn, org_id, staff_id), required)


def enrolment_due(roles, has_second_factor: bool, required_roles) -> bool:
    """A role requires a second factor the member lacks: their access grants no scope until they enrol."""
    return bool(set(roles) & set(required_roles)) and not has_second_factor


def enrolled(conn, org_id: str, staff_id: str) -> bool:
    return conn.execute(
        select(sa.exists().where(staff_mfa.c.staff_id == staff_id, *scoped(staff_mfa, org_id),
                                 staff_mfa.c.confirmed_at.is_not(None)))
    ).scalar_one()


def open_challenge(conn, member) -> dict:
    """The first step's answer for an enrolled member: a short-lived challenge for the second."""
    token = secrets.token_urlsafe(32)
    conn.execute(mfa_challenge.insert().values(
        org_id=member["org_id"], staff_id=member["id"], token_hash=_hash(token),
        expires_at=func.now() + dt.timedelta(seconds=CHALLENGE_TTL_S)))
    return {"mfa_required": True, "mfa_token": token, "expires_in": CHALLENGE_TTL_S,
            "methods": ["totp", "recovery_code"]}


def challenged_email(mfa_token: str) -> str | None:
    """The login name a live challenge belongs to (for the login throttles), else None."""
    with current_engine().connect() as conn:
        return conn.execute(
            select(staff.c.email).join(mfa_challenge, (mfa_challenge.c.staff_id == staff.c.id)
                                       & same_org(mfa_challenge, staff))
            .where(mfa_challenge.c.token_hash == _hash(mfa_token), mfa_challenge.c.used_at.is_(None),
                   mfa_challenge.c.expires_at > func.now())
        ).scalar_one_or_none()


def redeem(conn, mfa_token: str, code: str):
    """Check the second factor of a challenge: ``(org_id, staff_id, how)`` when it is right,
    else an ``ApiError`` to raise after the commit (so that the wasted attempt is kept)."""
    challenge = conn.execute(
        select(mfa_challenge).where(mfa_challenge.c.token_hash == _hash(mfa_token)).with_for_update()
    ).mappings().first()
    refused = ApiError("INVALID_MFA_CODE")
    if challenge is None or challenge["used_at"] is not None or challenge["attempts"] >= CHALLENGE_ATTEMPTS:
        return refused
    if conn.execute(select(challenge["expires_at"] <= func.now())).scalar_one():
        return refused
    org_id, staff_id = challenge["org_id"], challenge["staff_id"]
    how = _second_factor(conn, org_id, staff_id, code)
    if how is None:
        conn.execute(mfa_challenge.update().where(mfa_challenge.c.id == challenge["id"])
                     .values(attempts=mfa_challenge.c.attempts + 1))
        audit.record(conn, org_id=org_id, user_id=staff_id, action="mfa_failed", resource="session")
        return refused
    conn.execute(mfa_challenge.update().where(mfa_challenge.c.id == challenge["id"]).values(used_at=func.now()))
    return org_id, staff_id, how


def _second_factor(conn, org_id: str, staff_id: str, code: str) -> str | None:
    """``totp`` or ``recovery_code`` when the code is one of the member's, consuming it; else None."""
    current = _mfa_row(conn, org_id, staff_id)
    if current is None or current["confirmed_at"] is None:
        return None
    step = _matching_step(current, code.strip())
    if step is not None:
        conn.execute(staff_mfa.update().where(staff_mfa.c.staff_id == staff_id).values(last_used_step=step))
        return "totp"
    typed = code.strip().lower().replace("-", "").replace(" ", "")
    used = conn.execute(
        mfa_recovery_code.update()
        .where(mfa_recovery_code.c.staff_id == staff_id, *scoped(mfa_recovery_code, org_id),
               mfa_recovery_code.c.code_hash == _hash(typed), mfa_recovery_code.c.used_at.is_(None))
        .values(used_at=func.now())
    )
    return "recovery_code" if used.rowcount == 1 else None


def recovery_codes_left(conn, org_id: str, staff_id: str) -> int:
    return conn.execute(
        select(func.count()).where(mfa_recovery_code.c.staff_id == staff_id, *scoped(mfa_recovery_code, org_id),
                                   mfa_recovery_code.c.used_at.is_(None))
    ).scalar_one()


def reset(caller, staff_id: str) -> None:
    """An admin turns a member's second factor off (a lost phone); they enrol again. Audited."""
    with current_engine().begin() as conn:
        member = conn.execute(
            select(staff.c.id).where(staff.c.id == staff_id, *scoped(staff, caller.org_id)).with_for_update()
        ).first()
        if member is None:
            raise ApiError("NOT_FOUND", "staff not found")
        had = conn.execute(staff_mfa.delete().where(staff_mfa.c.staff_id == staff_id,
                                                    *scoped(staff_mfa, caller.org_id))).rowcount
        sessions.changed(conn, f"staff:{staff_id}")  # a role that requires it grants nothing until they enrol
        for table in (mfa_recovery_code, mfa_challenge):
            conn.execute(table.delete().where(table.c.staff_id == staff_id, *scoped(table, caller.org_id)))
        audit.record_for(conn, caller, "mfa_reset", "staff", staff_id, after={"was_enrolled": bool(had)})

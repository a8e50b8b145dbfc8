"""Passwords, refresh tokens and access tokens: issuing and checking them, with no web framework.

The security layer (``middleware/auth.py``) turns a refused access token into connexion's 401.
"""
from __future__ import annotations

import hashlib
import secrets
import time
import uuid

import bcrypt
import jwt

import config
import state
from config import Settings
from errors import ApiError
from models.signing import ALGORITHM
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti", "sid"]
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 raises beyond it

def dummy_hash(settings: Settings) -> bytes:
    """A hash to check a password against when the email is unknown, so that both paths cost one
    bcrypt check at the configured cost (kept on the app's state)."""
    return bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(settings.bcrypt_rounds))


def issue_access_token(*, staff_id: str, org_id: str, session_id: str, roles: list[str], scopes: list[str]) -> str:
    """A short-lived signed access token carrying who, in which session and organization, and what
    they may do (each request checks that the session is still in force: models/sessions.py)."""
    conf = config.current()
    now = int(time.time())
    claims = {
        "sub": staff_id,
        "sid": session_id,
        "org_id": org_id,
        "roles": roles,
        "scope": " ".join(sorted(scopes)),
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + conf.access_token_ttl_s,
        "iss": conf.jwt_issuer,
        "aud": conf.jwt_audience,
    }
    signing = state.current().keys.signing
    return jwt.encode(claims, signing.private, algorithm=ALGORITHM, headers={"kid": signing.kid})


def decode_access_token(token: str) -> dict:
    """The claims of a valid access token; ``ApiError("UNAUTHORIZED")`` for anything else, but
    ``ORG_CONTEXT_REQUIRED`` for a valid one that names no organization."""
    conf = config.current()
    try:
        claims = jwt.decode(
            token,
            _verifying_key(token),
            algorithms=[ALGORITHM],  # pinned: 'none' and algorithm confusion are refused
            audience=conf.jwt_audience,
            issuer=conf.jwt_issuer,
            options={"require": _REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as exc:
        raise ApiError("UNAUTHORIZED", "The access token has expired") from exc
    except jwt.PyJWTError as exc:
        raise ApiError("UNAUTHORIZED", "The access token is invalid") from exc
    if not isinstance(claims.get("scope"), str) or not isinstance(claims.get("org_id"), (str, type(None))) \
            or not isinstance(claims.get("sub"), str) or not _is_uuid(claims.get("sid")) \
            or not _whole_seconds(claims["exp"], claims["iat"]):
        # PyJWT takes "exp": "9999999999" (it calls int() on it); every later use compares numbers.
        raise ApiError("UNAUTHORIZED", "The access token is invalid")
    if not claims.get("org_id"):
        # A genuine token that names no organization: its bearer is known, but nothing here is theirs.
        raise ApiError("ORG_CONTEXT_REQUIRED")
    return claims


def _verifying_key(token: str):
    """The public key the token's ``kid`` names: the signing key, or one kept for verification."""
    key = state.current().keys.verifying.get(jwt.get_unverified_header(token).get("kid"))
    if key is None:
        raise jwt.InvalidKeyError("the token names no key of this server")
    return key.public


def _is_uuid(value) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _whole_seconds(*values) -> bool:
    return all(isinstance(value, int) and not isinstance(value, bool) for value in values)


def new_refresh_token() -> tuple[str, str]:
    """A random opaque refresh token and the hash that is stored in its place."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    # The token carries 256 random bits, so a fast hash is enough; bcrypt would only slow refresh.
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(config.current().bcrypt_rounds)).decode()


def password_fits(password: str) -> bool:
    return 0 < len(password.encode()) <= MAX_PASSWORD_BYTES


def check_new_password(password: str, field: str = "password") -> None:
    """400 unless ``password`` may become one: PASSWORD_MIN_LENGTH characters at least, 72 bytes
    at most. The message states the rule, never the value."""
    shortest = config.current().password_min_length
    if len(password) < shortest or not password_fits(password):
        raise ApiError("VALIDATION_ERROR", f"{field} must be at least {shortest} characters and at most "
                       f"{MAX_PASSWORD_BYTES} bytes in UTF-8", field=field)


def needs_rehash(password_hash: str) -> bool:
    """Whether a bcrypt hash was made at another cost than BCRYPT_ROUNDS ($2b$<cost>$...)."""
    try:
        return int(password_hash.split("$")[2]) != config.current().bcrypt_rounds
    except (IndexError, ValueError):
        return False


def check_password(password: str, password_hash: str | None) -> bool:
    """bcrypt check; with no hash (unknown account) it still spends the same time and fails."""
    candidate = password.encode()[:MAX_PASSWORD_BYTES]
    if password_hash is None:
        bcrypt.checkpw(candidate, state.current().dummy_password_hash)
        return False
    return bcrypt.checkpw(candidate, password_hash.encode())

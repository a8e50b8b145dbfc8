"""Access tokens and passwords.

``token_info`` is connexion's ``x-tokenInfoFunc``: it runs on the event loop for every secured
request, so it only decodes and checks the JWT (no database call). Scopes are checked by connexion
against each operation's security requirement before the handler runs.
"""
from __future__ import annotations

import functools
import hashlib
import secrets
import time
import uuid

import bcrypt
import jwt
from connexion.exceptions import OAuthProblem
from connexion.security import SECURITY_HANDLERS, OAuthSecurityHandler

import config
from config import Settings

ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 raises beyond it

def configure(settings: Settings) -> None:
    """Prepare for ``settings`` (called once by the app factory, after ``config.use``)."""
    global _dummy_hash
    _verified.clear()  # a new secret, issuer or audience invalidates what was verified
    # Verified against when the email is unknown, so both paths cost one bcrypt check.
    _dummy_hash = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(settings.bcrypt_rounds))


_dummy_hash = b""


def issue_access_token(*, staff_id: str, org_id: str, roles: list[str], scopes: list[str]) -> str:
    """A short-lived signed access token carrying who, which organization and what they may do."""
    conf = config.current()
    now = int(time.time())
    claims = {
        "sub": staff_id,
        "org_id": org_id,
        "roles": roles,
        "scope": " ".join(sorted(scopes)),
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + conf.access_token_ttl_s,
        "iss": conf.jwt_issuer,
        "aud": conf.jwt_audience,
    }
    return jwt.encode(claims, conf.jwt_secret, algorithm=ALGORITHM)


# Verified tokens, so that the rate limiter and the security check of the same request, and the
# next requests with the same token, do not verify the signature again (PyJWT costs about a
# third of a simple request's CPU). Expiry is still checked on every use.
_verified: dict[str, dict] = {}
_VERIFIED_MAX = 10_000


def token_info(token: str) -> dict:
    """Decode and check an access token; any failure is a 401."""
    claims = _verified.get(token)
    if claims is not None:
        if claims["exp"] > time.time():
            return claims
        _verified.pop(token, None)
    claims = _decode(token)
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[token] = claims
    return claims


class _OAuthHandler(OAuthSecurityHandler):
    """connexion's OAuth handler, minus a per-request ``inspect.signature`` of ``token_info``.

    It asks twice per secured request whether the token function takes ``required_scopes`` and
    ``request``; the answer never changes, and computing it was 3% of a get-by-id's CPU.
    """

    _accepts_kwarg = staticmethod(functools.cache(OAuthSecurityHandler._accepts_kwarg))


# Passed to connexion as its security_map.
SECURITY_MAP = {**SECURITY_HANDLERS, "oauth2": _OAuthHandler}


def _decode(token: str) -> dict:
    conf = config.current()
    try:
        claims = jwt.decode(
            token,
            conf.jwt_secret,
            algorithms=[ALGORITHM],  # pinned: 'none' and algorithm confusion are refused
            audience=conf.jwt_audience,
            issuer=conf.jwt_issuer,
            options={"require": _REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as exc:
        raise OAuthProblem(detail="The access token has expired") from exc
    except jwt.PyJWTError as exc:
        raise OAuthProblem(detail="The access token is invalid") from exc
    if not isinstance(claims.get("org_id"), str) or not isinstance(claims.get("scope"), str):
        raise OAuthProblem(detail="The access token is invalid")
    return claims


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


def check_password(password: str, password_hash: str | None) -> bool:
    """bcrypt check; with no hash (unknown account) it still spends the same time and fails."""
    candidate = password.encode()[:MAX_PASSWORD_BYTES]
    if password_hash is None:
        bcrypt.checkpw(candidate, _dummy_hash)
        return False
    return bcrypt.checkpw(candidate, password_hash.encode())

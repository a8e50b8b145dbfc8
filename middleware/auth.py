"""The security layer: connexion's token check for every secured request.

``token_info`` is connexion's ``x-tokenInfoFunc``: it runs on the event loop for every secured
request, so it only decodes and checks the JWT (``models/credentials.py``; no database call).
Scopes are checked by connexion against each operation's security requirement before the handler
runs.
"""
from __future__ import annotations

import time

from connexion.exceptions import OAuthProblem

from config import Settings
from errors import ApiError
from models import credentials

# Verified tokens, so that the rate limiter and the security check of the same request, and the
# next requests with the same token, do not verify the signature again (PyJWT costs about a
# third of a simple request's CPU). Expiry is still checked on every use.
_verified: dict[str, dict] = {}
_VERIFIED_MAX = 10_000


def configure(settings: Settings) -> None:
    """Prepare for ``settings`` (called once by the app factory, after ``config.use``)."""
    _verified.clear()  # a new secret, issuer or audience invalidates what was verified
    credentials.configure(settings)


def token_info(token: str) -> dict:
    """Decode and check an access token; any failure is a 401."""
    claims = _verified.get(token)
    if claims is not None:
        if claims["exp"] > time.time():
            return claims
        _verified.pop(token, None)
    try:
        claims = credentials.decode_access_token(token)
    except ApiError as exc:
        raise OAuthProblem(detail=exc.message) from exc
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[token] = claims
    return claims

"""The security layer: connexion's token check for every secured request.

``token_info`` is connexion's ``x-tokenInfoFunc``: it runs on the event loop for every secured
request, so it only decodes and checks the JWT (``models/credentials.py``; no database call).
Scopes are checked by connexion against each operation's security requirement before the handler
runs.
"""
from __future__ import annotations

import time

from connexion.exceptions import OAuthProblem

import state
from errors import ApiError
from models import credentials

# Verified tokens are kept on the app's state, so that the rate limiter and the security check of
# the same request, and the next requests with the same token, do not verify the signature again
# (PyJWT costs about a third of a simple request's CPU). Expiry is still checked on every use.
_VERIFIED_MAX = 10_000


def token_info(token: str) -> dict:
    """Decode and check an access token; any failure is a 401, a token without an organization a 403."""
    _verified = state.current().verified_tokens
    claims = _verified.get(token)
    if claims is not None:
        if claims["exp"] > time.time():
            return claims
        _verified.pop(token, None)
    try:
        claims = credentials.decode_access_token(token)
    except ApiError as exc:
        if exc.status == 403:  # authenticated, but with no organization to act in
            raise
        raise OAuthProblem(detail=exc.message) from exc
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[token] = claims
    return claims

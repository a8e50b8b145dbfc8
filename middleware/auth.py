"""The security layer: connexion's token check for every secured request, then its session's.

``token_info`` is connexion's ``x-tokenInfoFunc``: it runs on the event loop for every secured
request, so it only decodes and checks the JWT (``models/credentials.py``) and reads nothing
from the database. Scopes are checked by connexion against each operation's security requirement
before the handler runs; where this worker already knows its session's standing, only the scopes
its member still holds count.

``check_session`` runs next, on the request's thread and within its deadline: the session the
token names must still be in force (``models/sessions.py``), and when a role was taken from the
member since the token was issued, the operation is checked again against what they still hold.
"""
from __future__ import annotations

import time

import flask
from connexion.context import context, operation
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
    claims = verified_claims(token)
    cache = state.current().sessions
    known = cache.known(claims["sid"]) if cache is not None else None
    return claims if known is None else _narrowed(claims, known)


def verified_claims(token: str) -> dict:
    """The claims of a genuine, unexpired access token (its session is not looked at)."""
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


def install(flask_app: flask.Flask) -> None:
    flask_app.before_request(check_session)


def check_session() -> None:
    """401 unless the token's session is in force; 403 when the member no longer holds a scope
    the operation requires."""
    try:
        claims = context.get("token_info")
    except RuntimeError:  # no operation matched (Flask answers 404): nobody to check
        return
    cache = state.current().sessions
    if not claims or cache is None:
        return
    narrowed = _narrowed(claims, cache.standing(claims))
    if narrowed is claims:
        return
    context["token_info"] = narrowed
    if not _allowed(_scopes_of(narrowed)):
        raise ApiError("INSUFFICIENT_SCOPE", "The caller's roles no longer grant a scope this operation requires")


def _narrowed(claims: dict, standing) -> dict:
    """The claims with only the scopes the member still holds: a role taken away since the token
    was issued takes its scopes with it at once. A role granted since arrives with the next
    refresh: a token never carries more than it was issued with."""
    if standing.scope_text == claims["scope"]:
        return claims
    issued = _scopes_of(claims)
    held = issued & standing.scopes
    return claims if held == issued else {**claims, "scope": " ".join(sorted(held))}


def _scopes_of(claims: dict) -> frozenset[str]:
    return frozenset(claims["scope"].split())


def _allowed(scopes: frozenset[str]) -> bool:
    """Whether ``scopes`` meet one of the operation's security requirements."""
    requirements = operation.security or []
    return not requirements or any(set(needed) <= scopes for requirement in requirements
                                   for needed in requirement.values())

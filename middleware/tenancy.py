"""The caller of the current request: the verified token's claims, and where the request came from.

Scoping itself lives in ``models/tenancy.py``; this module only reads the request.
"""
from __future__ import annotations

import ipaddress

import flask
from connexion.context import context

import config
from errors import ApiError
from models.tenancy import Caller


def current_caller() -> Caller:
    """The authenticated caller of the current request."""
    claims = context.get("token_info")
    if not claims:
        raise ApiError("UNAUTHORIZED")
    return Caller(user_id=claims["sub"], org_id=claims["org_id"], scopes=frozenset(claims["scope"].split()),
                  origin_of=request_origin, session_id=claims.get("sid"))


def request_origin() -> dict:
    """Request id, client IP and user agent of the current request (for audit rows and sessions)."""
    request = flask.request
    return {
        "request_id": request.headers.get("X-Request-ID"),
        "ip_address": client_ip(request.remote_addr, request.headers.get("X-Forwarded-For")),
        "user_agent": request.headers.get("User-Agent"),
    }


def client_ip(peer: str | None, forwarded_for: str | None) -> str | None:
    """The client's address: X-Forwarded-For is believed only when the peer is a trusted proxy."""
    trusted = config.current().trusted_proxies
    if not forwarded_for or not peer or not _is_trusted(peer, trusted):
        return peer
    # Walk from the nearest hop outwards, skipping our own proxies.
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop[:45]
    return peer


def _is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in trusted)

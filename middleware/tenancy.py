"""Who is calling, for which organization, from where.

The organization always comes from the verified token, never from the request. Handlers pass the
``Caller`` to the engine, which scopes every statement with it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

import flask
from connexion.context import context

import config
from middleware.errors import ApiError


@dataclass(frozen=True)
class Caller:
    user_id: str | None
    org_id: str
    scopes: frozenset[str]

    @cached_property
    def origin(self) -> dict:
        """Request id, client IP and user agent, read from the request when a write records them
        (a read never does, and working them out was about 2% of a get-by-id)."""
        return request_origin()


def current_caller() -> Caller:
    """The authenticated caller of the current request."""
    claims = context.get("token_info")
    if not claims:
        raise ApiError("UNAUTHORIZED")
    return Caller(user_id=claims["sub"], org_id=claims["org_id"], scopes=frozenset(claims["scope"].split()))


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


def check_org(org_id: str | None, caller: Caller) -> None:
    """An org_id sent by the client may only repeat the caller's own."""
    if org_id is not None and org_id != caller.org_id:
        raise ApiError("ORG_MISMATCH", field="org_id")

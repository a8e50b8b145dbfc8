"""Rate limits, decided at the edge (middleware/http.py), so every request counts, including
those connexion refuses.

Built on ``limits`` (the library flask-limiter wraps): flask-limiter sits on the inner Flask app
and never sees the 400/401/404/405 answers connexion gives before it. Storage is in-process by
default and Redis when ``RATE_LIMIT_STORAGE_URI`` points at one, shared by every worker and
instance. Headers follow the IETF httpapi RateLimit draft: ``RateLimit-Policy`` and ``RateLimit``.
"""
from __future__ import annotations

import logging
import math
import time

from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

import state
from config import Settings
from middleware.errors import ApiError

log = logging.getLogger(__name__)

# Probes and the scraper must never be throttled: a limited /ready takes an instance out of rotation.
EXEMPT = frozenset({"/health", "/ready", "/metrics"})
# Both ways of presenting a password: the JSON login and the OAuth token endpoint.
LOGINS = frozenset({"/auth/login", "/auth/token"})


class RateLimits:
    """The configured policies and their shared storage."""

    def __init__(self, settings: Settings):
        self.enabled = settings.rate_limit_enabled
        self.storage = storage_from_string(settings.rate_limit_storage_uri)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.default = parse(settings.rate_limit_default)
        self.login = parse(settings.rate_limit_login)
        self.login_account = parse(settings.rate_limit_login_account)

    def check(self, route: str, method: str, claims: dict | None, ip: str) -> tuple[bool, str, list]:
        """Count one request: (allowed, the policy that decided, the RateLimit response headers).

        Per user with a valid token, per client IP otherwise; /auth/login also per IP under its
        and /auth/token also per IP under their
        own, stricter policy; the probes and the scraper are never limited.
        """
        if route in EXEMPT:
            return True, "", []
        key = f"user:{claims['sub']}" if claims else f"ip:{ip}"
        policies = [("default", self.default, key)]
        if route in LOGINS and method == "POST":
            policies.append(("login", self.login, f"ip:{ip}"))
        results = [(name, item, *self.hit(name, item, k)) for name, item, k in policies]
        refused = [r for r in results if not r[2]]
        name, item, _, remaining, reset = min(results, key=lambda r: (r[2], r[3]))
        headers = [
            (b"ratelimit-policy", ", ".join(f'"{n}";q={i.amount};w={i.get_expiry()}' for n, i, *_ in results).encode()),
            (b"ratelimit", f'"{name}";r={max(remaining, 0)};t={reset}'.encode()),
        ]
        if refused:
            headers.append((b"retry-after", str(max(reset, 1)).encode()))
            return False, refused[0][0], headers
        return True, name, headers

    def hit(self, name: str, item, key: str) -> tuple[bool, int, int]:
        """Count one request; returns (allowed, remaining, seconds until the window frees)."""
        try:
            allowed = self.limiter.hit(item, name, key)
            reset, remaining = self.limiter.get_window_stats(item, name, key)
        except Exception:  # storage down: serve rather than refuse everyone
            log.exception("rate-limit storage unavailable; request not counted")
            return True, item.amount, item.get_expiry()
        return allowed, remaining, max(0, math.ceil(reset - time.time()))


def _account_key(email: str) -> str:
    return email.strip().lower()


def check_login_account(email: str) -> None:
    """Refuse a login for an account whose failed attempts are used up, whatever the client IP."""
    limits = state.current().limits
    if limits is None or not limits.enabled:
        return
    try:
        allowed = limits.limiter.test(limits.login_account, "login-account", _account_key(email))
        reset, _ = limits.limiter.get_window_stats(limits.login_account, "login-account", _account_key(email))
    except Exception:
        log.exception("rate-limit storage unavailable; login not checked")
        return
    if not allowed:
        retry = max(1, math.ceil(reset - time.time()))
        raise ApiError("RATE_LIMITED", "Too many failed logins for this account; retry later",
                       headers={"Retry-After": str(retry)})


def record_failed_login(email: str) -> None:
    limits = state.current().limits
    if limits is not None and limits.enabled:
        limits.hit("login-account", limits.login_account, _account_key(email))

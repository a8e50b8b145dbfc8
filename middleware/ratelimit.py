"""Rate limits, decided at the edge (middleware/http.py), so every request counts, including
those connexion refuses.

Built on ``limits`` (the library flask-limiter wraps): flask-limiter sits on the inner Flask app
and never sees the 400/401/404/405 answers connexion gives before it. Storage is in-process for
one worker; with several, ``clinic-api serve`` starts one ``limits`` memory storage in a process
of its own before forking them, and each worker reaches it over a Unix socket
(``middleware/shared_limits.py``), so one instance enforces the documented numbers in aggregate without
Redis. ``RATE_LIMIT_STORAGE_URI=redis://...`` shares them between instances. Headers follow the
IETF httpapi RateLimit draft: ``RateLimit-Policy`` and ``RateLimit``.
"""
from __future__ import annotations

import logging
import math
import time
import unicodedata
from typing import Callable

from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

import state
from config import Settings
from middleware.errors import ApiError
from middleware import shared_limits  # noqa: F401  (registers the clinic-shared:// storage with limits)

log = logging.getLogger(__name__)

# Probes and the scraper must never be throttled: a limited /ready takes an instance out of rotation.
EXEMPT = frozenset({"/health", "/ready", "/metrics"})
# Both ways of presenting a password (the JSON login and the OAuth token endpoint) and the second factor.
LOGINS = frozenset({"/auth/login", "/auth/token", "/auth/mfa/verify"})


class RateLimits:
    """The configured policies and their shared storage."""

    def __init__(self, settings: Settings):
        self.enabled = settings.rate_limit_enabled
        self.storage = storage_from_string(settings.rate_limit_storage_uri)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.default = parse(settings.rate_limit_default)
        self.login = parse(settings.rate_limit_login)
        self.login_account = parse(settings.rate_limit_login_account)
        self.login_ceiling = parse(settings.rate_limit_login_account_ceiling)

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
    # As the database compares login names (models/accounts.py): a full-width look-alike is the
    # same account, not a fresh budget.
    return unicodedata.normalize("NFKC", email).strip().lower()


def _pair_key(email: str, ip: str | None) -> str:
    return f"{_account_key(email)} from {ip or 'unknown'}"


def _reserve(ceiling) -> int:
    """The last tenth of the ceiling, kept for the addresses the member logs in from."""
    return max(1, ceiling.amount // 10)


def check_login_account(email: str, ip: str | None, known_origin: Callable[[], bool]) -> bool:
    """Refuse a login attempt for an account whose budget is used up, before the password is
    checked; True when the attempt holds a stranger's slot, which ``release_stranger`` gives back.

    Two budgets of failures, so that guessing stays bounded without a lockout anyone can cause:
    per account and address (``RATE_LIMIT_LOGIN_ACCOUNT``), which stops each guessing address
    and no one else; and per account over all addresses (``RATE_LIMIT_LOGIN_ACCOUNT_CEILING``,
    NIST SP 800-63B's 100 an hour), whose last tenth only the addresses the member logged in from
    (``known_origin()``) may use. Strangers stop at nine tenths counting their attempts still in
    flight: each takes a slot in an atomic counter of the shared storage before it reads the
    account's failures, and gives it back only after its own failure is counted. However many try
    at once, on however many workers and instances, their failures cannot pass nine tenths.
    """
    limits = state.current().limits
    if limits is None or not limits.enabled:
        return False
    pair, account = _pair_key(email, ip), _account_key(email)
    try:
        allowed = limits.limiter.test(limits.login_account, "login-account-ip", pair)
        reset, _ = limits.limiter.get_window_stats(limits.login_account, "login-account-ip", pair)
        if not allowed:
            _refuse(reset, "Too many failed logins for this account from this address; retry later")
        ceiling_reset, remaining = limits.limiter.get_window_stats(limits.login_ceiling, "login-account", account)
        if remaining <= 0:
            _refuse(ceiling_reset, "Too many failed logins for this account; retry later")
        if known_origin():
            return False
        in_flight = limits.storage.incr(_stranger_key(account), STRANGER_SLOT_S, 1)
        _, remaining = limits.limiter.get_window_stats(limits.login_ceiling, "login-account", account)
    except ApiError:
        raise
    except Exception:
        log.exception("rate-limit storage unavailable; login not checked")
        return False
    failures = limits.login_ceiling.amount - remaining
    if failures + in_flight > limits.login_ceiling.amount - _reserve(limits.login_ceiling):
        release_stranger(email)
        _refuse(ceiling_reset, "Too many failed logins for this account; retry later")
    return True


# A slot outlives a worker that died holding it by at most this long (the counter's key expires).
STRANGER_SLOT_S = 60


def _stranger_key(account: str) -> str:
    return f"clinic-login-strangers-in-flight/{account}"


def release_stranger(email: str) -> None:
    """Give back a stranger's slot once the attempt is over (and its failure, if any, counted)."""
    limits = state.current().limits
    try:
        limits.storage.incr(_stranger_key(_account_key(email)), STRANGER_SLOT_S, -1)
    except Exception:
        log.exception("rate-limit storage unavailable; a login slot was not given back")


def _refuse(reset: float, message: str) -> None:
    raise ApiError("RATE_LIMITED", message, headers={"Retry-After": str(max(1, math.ceil(reset - time.time())))})


def record_failed_login(email: str, ip: str | None) -> None:
    limits = state.current().limits
    if limits is not None and limits.enabled:
        limits.hit("login-account-ip", limits.login_account, _pair_key(email, ip))
        limits.hit("login-account", limits.login_ceiling, _account_key(email))


def record_login(email: str, ip: str | None) -> None:
    """A right password from this address wipes its failures (not the account's ceiling)."""
    limits = state.current().limits
    if limits is not None and limits.enabled:
        try:
            limits.limiter.clear(limits.login_account, "login-account-ip", _pair_key(email, ip))
        except Exception:
            log.exception("rate-limit storage unavailable; failures not cleared")

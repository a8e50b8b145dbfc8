"""The running application's state: one object per app, built by ``create_app()``.

Settings, database pools, rate limits and the per-app caches live on an ``AppState``, never in
module globals, so that two apps with different settings can serve in one process. The edge
(``middleware/http.py``) binds its app's state for each request; the command line and the tests
bind one with ``bind()`` for work done outside a request. ``config.current()`` and
``models.database.current_pools()`` read the bound state.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from config import Settings


@dataclass(eq=False)
class AppState:
    """Everything one app holds between requests."""

    settings: "Settings"
    pools: Any = None  # models.database.Pools
    limits: Any = None  # middleware.ratelimit.RateLimits
    keys: Any = None  # models.signing.Keyring: the key that signs access tokens, those that verify
    # Each resource's descriptor as completed from the spec (models/contract.py), by name.
    resources: dict = field(default_factory=dict)
    # bcrypt hash checked when a login names no account, so both paths cost one bcrypt check.
    dummy_password_hash: bytes = b""
    # Verified access tokens (middleware/auth.py) and list-count estimates (models/crud.py).
    verified_tokens: dict = field(default_factory=dict)
    # The standing of the sessions this worker's requests name (models/sessions.py).
    sessions: Any = None
    count_estimates: dict = field(default_factory=dict)
    # /ready's last look at the migration record: (monotonic time, pending count).
    migrations_checked: tuple[float, int] | None = None
    # When the pool gauges were last sampled (middleware/observability.py).
    pool_sampled_at: float = 0.0
    # The app's tracer when OTEL_EXPORTER_OTLP_ENDPOINT is set (middleware/telemetry.py), else None.
    tracing: Any = None


_bound: ContextVar[AppState] = ContextVar("clinic_api_state")


def current() -> AppState:
    """The state of the app serving this request (or bound by the command line or a test)."""
    try:
        return _bound.get()
    except LookupError:
        raise RuntimeError("no application state is bound; create the app (and bind its state) first") from None


def bind(app_state: AppState):
    """Bind ``app_state`` in this context until it is reset with the returned token."""
    return _bound.set(app_state)


def unbind(token) -> None:
    _bound.reset(token)


@contextlib.contextmanager
def bound(app_state: AppState) -> Iterator[AppState]:
    """``with bound(s):`` runs its block with ``s`` as the current state."""
    token = bind(app_state)
    try:
        yield app_state
    finally:
        unbind(token)

"""The one place that reads the environment.

Every setting the service understands is declared here with its default; nothing else in the code
base touches ``os.environ``. The README's configuration table mirrors this module.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


def _int(name: str, default: int, env) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _bool(name: str, default: bool, env) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _float(name: str, default: float, env) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _list(name: str, env) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Immutable snapshot of the configuration, built once at start-up."""

    env: str = "production"
    database_url: str | None = None
    # The schema owner's URL for `clinic-api migrate` (a direct connection, never through a
    # transaction-mode pooler: its lock lives in the session); DATABASE_URL when unset.
    database_migration_url: str | None = None
    # A direct connection for LISTEN (a pooler in transaction mode cannot carry it); None: the database URL.
    database_listen_url: str | None = None
    # The role the API runs as, granted row privileges by `clinic-api migrate`; DATABASE_URL's user
    # when unset (a pooler may log in to the server as another user than its clients).
    database_runtime_role: str = ""
    # Streaming replicas that serve reads (models/database.py routes them), and how far behind
    # the primary one may be and still serve them.
    database_replica_urls: tuple[str, ...] = ()
    replica_max_lag_seconds: float = 5.0
    data_dir: Path = ROOT / ".local"
    db_pool_size: int = 10
    db_max_overflow: int = 5
    db_statement_timeout_ms: int = 5000
    db_lock_timeout_ms: int = 2000
    db_idle_in_transaction_timeout_ms: int = 10000
    db_connect_timeout_s: int = 3
    db_prepared_statements: bool = True
    # The PEM private key access tokens are signed with (ES256); development: DATA_DIR's, generated.
    jwt_signing_key_file: Path | None = None
    # Keys that verify but never sign (PEM, private or public): the previous key during a rotation.
    jwt_verification_key_files: tuple[str, ...] = ()
    jwt_issuer: str = "clinic-api"
    jwt_audience: str = "clinic-api"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    # A login session ends this long after the login whatever its use, or after this long unused
    # (models/sessions.py); both are checked on every refresh and every request.
    session_absolute_lifetime_s: int = 12 * 3600
    session_idle_timeout_s: int = 30 * 60
    # A refresh token presented again this soon after its rotation (a client's double submit)
    # gets a pair of its own instead of ending the session as a theft would.
    refresh_grace_s: int = 10
    bcrypt_rounds: int = 12
    # The fewest characters a new password may have (NIST SP 800-63B asks for at least 8; the spec
    # refuses fewer than 8 whatever this says).
    password_min_length: int = 12
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Handler threads per worker; 0 runs handlers on the worker's event loop (middleware/adapter.py),
    # where a frozen database freezes the worker, probes included.
    request_threads: int = 4
    log_level: str = "INFO"
    rate_limit_default: str = "100/minute"
    rate_limit_login: str = "10/minute"
    # Failed logins per account from one address, and per account from all addresses together
    # (NIST SP 800-63B: at most 100); middleware/ratelimit.py says how the two keep the owner in.
    rate_limit_login_account: str = "5/15minute"
    rate_limit_login_account_ceiling: str = "100/hour"
    rate_limit_storage_uri: str = "memory://"
    # Roles whose members must log in with a second factor (TOTP); until they enrol, their tokens
    # carry no scope but what enrolment needs (models/mfa.py).
    mfa_required_roles: tuple[str, ...] = ()
    rate_limit_enabled: bool = True
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    # The request line and headers, bounded by the serving layer (middleware/server.py): 431 beyond.
    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    # A client that has not sent its whole request head this long after connecting (or after the
    # first byte of its next request) is disconnected: slow clients cannot hold sockets open.
    header_timeout_s: int = 5
    # The bearer token /metrics asks for; unset: /metrics is open in development, 404 otherwise.
    metrics_token: str = ""
    # Swagger UI (/ui) and the spec (/openapi.json, /openapi.yaml).
    serve_docs: bool = True
    cors_origins: tuple[str, ...] = ()
    validate_responses: bool = False
    demo_org_name: str = "Demo Clinic"
    demo_branch_name: str = "Main Branch"
    demo_admin_email: str = "admin@demo.clinic"
    demo_admin_password: str = ""
    admin_password: str = ""
    prometheus_multiproc_dir: str = ""
    require_if_match: bool = False
    appointment_default_minutes: int = 30
    idempotency_ttl_hours: int = 24
    count_exact_limit: int = 10_000
    search_count_exact_limit: int = 1_000
    sentry_dsn: str = ""
    # Access rows (reads of patient data) committed without waiting for the WAL flush: see
    # docs/decisions/2026-12-01-access-rows-in-the-read.md for what that costs and risks.
    access_log_synchronous_commit: bool = False
    audit_retention_months: int = 72
    # How old a row must be before `clinic-api audit seal` seals it: longer than any transaction
    # that inserts audit rows lives, so that none commits below a seal.
    audit_seal_settle_seconds: int = 300
    otel_endpoint: str = ""  # the OTLP/HTTP collector's base URL; unset: no tracing
    otel_service_name: str = "clinic-api"
    # Webhooks (models/webhooks.py, worker.py).
    webhook_allow_private_targets: bool = False
    webhook_retry_window_s: int = 24 * 3600
    webhook_retry_base_ms: int = 5_000
    webhook_retry_max_ms: int = 3_600_000
    webhook_poll_interval_ms: int = 1_000
    webhook_worker_threads: int = 4
    webhook_worker: bool = True
    # Succeeded and failed deliveries older than this are deleted by the worker (0: kept for ever).
    webhook_delivery_retention_days: int = 30

    @property
    def is_development(self) -> bool:
        return self.env in ("development", "test")

    def with_overrides(self, **changes) -> "Settings":
        """A copy with some values replaced (tests and the dev runner use it)."""
        return replace(self, **changes)


def load(env=None, *, serving: bool = True) -> Settings:
    """Read the settings from the environment (or the given mapping) and check them.

    ``serving=False`` is for commands that issue no tokens (migrate, rollback, create-org): they
    do not need JWT_SIGNING_KEY_FILE.
    """
    env = os.environ if env is None else env
    defaults = Settings()
    settings = Settings(
        env=env.get("APP_ENV", defaults.env),
        database_url=env.get("DATABASE_URL") or None,
        database_migration_url=env.get("DATABASE_MIGRATION_URL") or env.get("DATABASE_URL") or None,
        database_listen_url=env.get("DATABASE_LISTEN_URL") or None,
        database_runtime_role=env.get("DATABASE_RUNTIME_ROLE", ""),
        database_replica_urls=_list("DATABASE_REPLICA_URLS", env),
        replica_max_lag_seconds=_float("REPLICA_MAX_LAG_SECONDS", defaults.replica_max_lag_seconds, env),
        data_dir=Path(env.get("DATA_DIR", str(defaults.data_dir))),
        db_pool_size=_int("DB_POOL_SIZE", defaults.db_pool_size, env),
        db_max_overflow=_int("DB_MAX_OVERFLOW", defaults.db_max_overflow, env),
        db_statement_timeout_ms=_int("DB_STATEMENT_TIMEOUT_MS", defaults.db_statement_timeout_ms, env),
        db_lock_timeout_ms=_int("DB_LOCK_TIMEOUT_MS", defaults.db_lock_timeout_ms, env),
        db_idle_in_transaction_timeout_ms=_int(
            "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", defaults.db_idle_in_transaction_timeout_ms, env
        ),
        db_connect_timeout_s=_int("DB_CONNECT_TIMEOUT_S", defaults.db_connect_timeout_s, env),
        db_prepared_statements=_bool("DB_PREPARED_STATEMENTS", defaults.db_prepared_statements, env),
        jwt_signing_key_file=Path(env["JWT_SIGNING_KEY_FILE"]) if env.get("JWT_SIGNING_KEY_FILE") else None,
        jwt_verification_key_files=_list("JWT_VERIFICATION_KEY_FILES", env),
        jwt_issuer=env.get("JWT_ISSUER", defaults.jwt_issuer),
        jwt_audience=env.get("JWT_AUDIENCE", defaults.jwt_audience),
        access_token_ttl_s=_int("ACCESS_TOKEN_TTL_SECONDS", defaults.access_token_ttl_s, env),
        refresh_token_ttl_s=_int("REFRESH_TOKEN_TTL_SECONDS", defaults.refresh_token_ttl_s, env),
        session_absolute_lifetime_s=_int("SESSION_ABSOLUTE_LIFETIME_SECONDS", defaults.session_absolute_lifetime_s, env),
        session_idle_timeout_s=_int("SESSION_IDLE_TIMEOUT_SECONDS", defaults.session_idle_timeout_s, env),
        refresh_grace_s=_int("REFRESH_GRACE_SECONDS", defaults.refresh_grace_s, env),
        bcrypt_rounds=_int("BCRYPT_ROUNDS", defaults.bcrypt_rounds, env),
        password_min_length=_int("PASSWORD_MIN_LENGTH", defaults.password_min_length, env),
        host=env.get("HOST", defaults.host),
        port=_int("PORT", defaults.port, env),
        workers=_int("WEB_CONCURRENCY", defaults.workers, env),
        request_threads=_int("REQUEST_THREADS", defaults.request_threads, env),
        log_level=env.get("LOG_LEVEL", defaults.log_level).upper(),
        rate_limit_default=env.get("RATE_LIMIT_DEFAULT", defaults.rate_limit_default),
        rate_limit_login=env.get("RATE_LIMIT_LOGIN", defaults.rate_limit_login),
        rate_limit_login_account=env.get("RATE_LIMIT_LOGIN_ACCOUNT", defaults.rate_limit_login_account),
        rate_limit_login_account_ceiling=env.get("RATE_LIMIT_LOGIN_ACCOUNT_CEILING",
                                                 defaults.rate_limit_login_account_ceiling),
        rate_limit_storage_uri=env.get("RATE_LIMIT_STORAGE_URI", defaults.rate_limit_storage_uri),
        mfa_required_roles=_list("MFA_REQUIRED_ROLES", env),
        rate_limit_enabled=_bool("RATE_LIMIT_ENABLED", defaults.rate_limit_enabled, env),
        trusted_proxies=_list("TRUSTED_PROXIES", env),
        max_body_bytes=_int("MAX_BODY_BYTES", defaults.max_body_bytes, env),
        max_header_bytes=_int("MAX_HEADER_BYTES", defaults.max_header_bytes, env),
        max_header_count=_int("MAX_HEADER_COUNT", defaults.max_header_count, env),
        header_timeout_s=_int("HEADER_TIMEOUT_S", defaults.header_timeout_s, env),
        metrics_token=env.get("METRICS_TOKEN", ""),
        serve_docs=_bool("SERVE_DOCS", defaults.serve_docs, env),
        cors_origins=_list("CORS_ORIGINS", env),
        validate_responses=_bool("VALIDATE_RESPONSES", defaults.validate_responses, env),
        demo_org_name=env.get("DEMO_ORG_NAME", defaults.demo_org_name),
        demo_branch_name=env.get("DEMO_BRANCH_NAME", defaults.demo_branch_name),
        demo_admin_email=env.get("DEMO_ADMIN_EMAIL", defaults.demo_admin_email),
        demo_admin_password=env.get("DEMO_ADMIN_PASSWORD", ""),
        admin_password=env.get("ADMIN_PASSWORD", ""),
        prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR", ""),
        require_if_match=_bool("REQUIRE_IF_MATCH", defaults.require_if_match, env),
        appointment_default_minutes=_int("APPOINTMENT_DEFAULT_MINUTES", defaults.appointment_default_minutes, env),
        idempotency_ttl_hours=_int("IDEMPOTENCY_TTL_HOURS", defaults.idempotency_ttl_hours, env),
        count_exact_limit=_int("COUNT_EXACT_LIMIT", defaults.count_exact_limit, env),
        search_count_exact_limit=_int("SEARCH_COUNT_EXACT_LIMIT", defaults.search_count_exact_limit, env),
        sentry_dsn=env.get("SENTRY_DSN", ""),
        access_log_synchronous_commit=_bool("ACCESS_LOG_SYNCHRONOUS_COMMIT", defaults.access_log_synchronous_commit, env),
        audit_retention_months=_int("AUDIT_RETENTION_MONTHS", defaults.audit_retention_months, env),
        audit_seal_settle_seconds=_int("AUDIT_SEAL_SETTLE_SECONDS", defaults.audit_seal_settle_seconds, env),
        otel_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        otel_service_name=env.get("OTEL_SERVICE_NAME", defaults.otel_service_name),
        webhook_allow_private_targets=_bool("WEBHOOK_ALLOW_PRIVATE_TARGETS", defaults.webhook_allow_private_targets, env),
        webhook_retry_window_s=_int("WEBHOOK_RETRY_WINDOW_S", defaults.webhook_retry_window_s, env),
        webhook_retry_base_ms=_int("WEBHOOK_RETRY_BASE_MS", defaults.webhook_retry_base_ms, env),
        webhook_retry_max_ms=_int("WEBHOOK_RETRY_MAX_MS", defaults.webhook_retry_max_ms, env),
        webhook_poll_interval_ms=_int("WEBHOOK_POLL_INTERVAL_MS", defaults.webhook_poll_interval_ms, env),
        webhook_worker_threads=_int("WEBHOOK_WORKER_THREADS", defaults.webhook_worker_threads, env),
        webhook_worker=_bool("WEBHOOK_WORKER", defaults.webhook_worker, env),
        webhook_delivery_retention_days=_int("WEBHOOK_DELIVERY_RETENTION_DAYS",
                                             defaults.webhook_delivery_retention_days, env),
    )
    if settings.is_development and settings.jwt_signing_key_file is None:
        # Generated there on first use (models/signing.py), so tokens survive restarts and every
        # worker signs with the same key.
        settings = replace(settings, jwt_signing_key_file=settings.data_dir / "jwt_signing_key.pem")
    check(settings, serving=serving)
    return settings


def current() -> Settings:
    """The settings of the app serving this request (``state.current()``)."""
    import state

    return state.current().settings


def check(settings: Settings, *, serving: bool = True) -> None:
    """Refuse to start with settings that would be unsafe or meaningless."""
    if serving and settings.jwt_signing_key_file is None:
        raise ConfigError("JWT_SIGNING_KEY_FILE must name the PEM private key access tokens are signed with "
                          "when APP_ENV is not development (`clinic-api generate-key PATH` writes one; "
                          "JWT_SECRET and HS256 are no longer used)")
    if not 4 <= settings.bcrypt_rounds <= 31:
        raise ConfigError("BCRYPT_ROUNDS must be between 4 and 31")
    if not 8 <= settings.password_min_length <= 72:
        raise ConfigError("PASSWORD_MIN_LENGTH must be between 8 and 72 (bcrypt reads 72 bytes at most)")
    if not 1 <= settings.appointment_default_minutes <= 1440:
        raise ConfigError("APPOINTMENT_DEFAULT_MINUTES must be between 1 and 1440")
    if settings.access_token_ttl_s <= 0 or settings.refresh_token_ttl_s <= 0:
        raise ConfigError("ACCESS_TOKEN_TTL_SECONDS and REFRESH_TOKEN_TTL_SECONDS must be positive")
    if settings.session_absolute_lifetime_s < 1 or settings.session_idle_timeout_s < 1:
        raise ConfigError("SESSION_ABSOLUTE_LIFETIME_SECONDS and SESSION_IDLE_TIMEOUT_SECONDS must be at least 1")
    if not 0 <= settings.refresh_grace_s <= 60:
        raise ConfigError("REFRESH_GRACE_SECONDS must be between 0 and 60 (a longer window is a longer theft window)")
    if not 0 <= settings.request_threads <= 64:
        raise ConfigError("REQUEST_THREADS must be between 0 and 64")
    if settings.max_header_bytes < 1024 or settings.max_header_count < 10 or settings.header_timeout_s < 1:
        raise ConfigError("MAX_HEADER_BYTES must be at least 1024, MAX_HEADER_COUNT at least 10 and "
                          "HEADER_TIMEOUT_S at least 1: browsers send about 1 KiB and 10 headers")
    if settings.metrics_token and len(settings.metrics_token) < 16:
        raise ConfigError("METRICS_TOKEN must be at least 16 characters (a guessable token opens /metrics)")
    if settings.database_migration_url and not settings.database_url:
        raise ConfigError("DATABASE_MIGRATION_URL is set but DATABASE_URL is not: the API's role needs its own URL")
    if settings.database_replica_urls and not settings.database_url:
        raise ConfigError("DATABASE_REPLICA_URLS is set but DATABASE_URL is not: replicas need a primary")
    if settings.replica_max_lag_seconds <= 0:
        raise ConfigError("REPLICA_MAX_LAG_SECONDS must be more than 0")
    if settings.audit_retention_months < 1:
        raise ConfigError("AUDIT_RETENTION_MONTHS must be at least 1 (a month is the smallest part pruned)")
    if settings.audit_seal_settle_seconds < 0:
        raise ConfigError("AUDIT_SEAL_SETTLE_SECONDS must be 0 or more")
    if settings.count_exact_limit < 1 or settings.search_count_exact_limit < 1:
        raise ConfigError("COUNT_EXACT_LIMIT and SEARCH_COUNT_EXACT_LIMIT must be at least 1")
    if settings.otel_endpoint and not settings.otel_endpoint.startswith(("http://", "https://")):
        raise ConfigError("OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL (OTLP over HTTP), "
                          f"got {settings.otel_endpoint!r}")
    _check_webhooks(settings)


def _check_webhooks(settings: Settings) -> None:
    if settings.webhook_retry_window_s < 1:
        raise ConfigError("WEBHOOK_RETRY_WINDOW_S must be at least 1")
    if not 1 <= settings.webhook_retry_base_ms <= settings.webhook_retry_max_ms:
        raise ConfigError("WEBHOOK_RETRY_BASE_MS must be at least 1 and at most WEBHOOK_RETRY_MAX_MS")
    if not 10 <= settings.webhook_poll_interval_ms <= 60_000:
        raise ConfigError("WEBHOOK_POLL_INTERVAL_MS must be between 10 and 60000")
    if not 1 <= settings.webhook_worker_threads <= 64:
        raise ConfigError("WEBHOOK_WORKER_THREADS must be between 1 and 64")
    if settings.webhook_delivery_retention_days < 0:
        raise ConfigError("WEBHOOK_DELIVERY_RETENTION_DAYS must be 0 (keep every delivery) or more")


def test_database_url(env=None) -> str | None:
    """Where the test suite should run: TEST_DATABASE_URL, else DATABASE_URL, else embedded."""
    env = os.environ if env is None else env
    return env.get("TEST_DATABASE_URL") or env.get("DATABASE_URL") or None


def ci_postgres_url(env=None) -> str | None:
    """A second server for the migration tests (CI sets it when PostgreSQL 15 answers)."""
    env = os.environ if env is None else env
    return env.get("SECONDARY_DATABASE_URL") or None


def contract_examples(env=None) -> int:
    """How many examples schemathesis tries per operation (``make fuzz`` raises it)."""
    env = os.environ if env is None else env
    return _int("CONTRACT_EXAMPLES", 25, env)


def share_metrics_between_workers(settings: Settings) -> Settings:
    """Before forking workers: point prometheus_client at a folder of per-process files.

    prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is first imported, so the variable
    must be in the environment the workers inherit. Unless the operator names the folder, each
    instance gets one of its own under ``DATA_DIR/metrics`` (two instances from one data
    directory would otherwise count into, and clear, each other's files); folders of instances
    no longer running are removed. A named folder is cleared of a previous run's files.
    """
    if settings.prometheus_multiproc_dir:
        path = Path(settings.prometheus_multiproc_dir)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        shared = settings.data_dir / "metrics"
        shared.mkdir(parents=True, exist_ok=True)
        for stale in shared.iterdir():
            if stale.is_file() or (stale.name.isdigit() and not _running(int(stale.name))):
                _remove(stale)
        path = shared / str(os.getpid())
        path.mkdir(exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return replace(settings, prometheus_multiproc_dir=str(path))


def forget_shared_metrics(settings: Settings) -> None:
    """When the instance stops: its own folder under ``DATA_DIR/metrics`` goes with it."""
    path = Path(settings.prometheus_multiproc_dir)
    if path.parent == settings.data_dir / "metrics" and path.name == str(os.getpid()):
        _remove(path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def child_environment(**overrides: str) -> dict[str, str]:
    """The environment a process started by the command line (the webhook worker) runs with:
    this one's, with ``overrides``."""
    return {**os.environ, **overrides}


def contract_random(env=None) -> bool:
    """``make fuzz`` explores new examples each run; ``make test`` replays the same ones."""
    env = os.environ if env is None else env
    return _bool("CONTRACT_RANDOM", False, env)

"""Prometheus metrics and one JSON log line per request, measured at the ASGI layer.

prometheus-flask-exporter sits on the inner Flask app: it misses the requests connexion answers
itself and labels 404 and 429 as 500. Measuring here sees every request with its real status.
With several gunicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` makes the values shared files.
"""
from __future__ import annotations

import json
import sys
import logging
import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

import state


REQUESTS = Counter("http_requests_total", "HTTP requests by method, route template and status",
                   ["method", "route", "status"])
LATENCY = Histogram("http_request_duration_seconds", "Time to answer a request, by route template",
                    ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
IN_PROGRESS = Gauge("http_requests_in_progress", "Requests being answered now", ["method"],
                    multiprocess_mode="livesum")
DB_POOL = Gauge("db_pool_connections", "Database pool connections by pool and state", ["pool", "state"],
                multiprocess_mode="livesum")
# Set by each worker's database probe (models/database.py) once a second, traffic or not, and by a
# read that finds a replica gone. An instance shows the worst of its workers' views.
DB_UP = Gauge("db_up", "1 when the database server answered this instance's last look, else 0", ["server"],
              multiprocess_mode="livemin")
# REPLICA_MAX_LAG_SECONDS, so that the lagging alert (ops/prometheus-alerts.yml) follows the setting.
DB_REPLICA_MAX_LAG = Gauge("db_replica_max_lag_seconds", "How far behind a replica may be and still serve reads "
                           "(REPLICA_MAX_LAG_SECONDS)", multiprocess_mode="livemax")
DB_REPLICA_LAG = Gauge("db_replica_lag_seconds", "How far a replica's data is behind the primary, in seconds",
                       ["server"], multiprocess_mode="livemax")
LOGIN_FAILURES = Counter("auth_login_failures_total", "Failed logins (unknown email or wrong password)")
RATE_LIMITED = Counter("rate_limited_requests_total", "Requests refused with 429, by policy", ["policy"])
# Counted by the delivery worker (worker.py); shared through PROMETHEUS_MULTIPROC_DIR when serve or
# run starts it, on the worker's own registry otherwise.
WEBHOOK_DELIVERIES = Counter("webhook_deliveries_total",
                             "Webhook delivery attempts by outcome (succeeded, retrying, failed)", ["outcome"])


class _OutboxBacklog:
    """Outbox depth and the age of its oldest undelivered event, read from the database at each
    scrape: the same for every instance, whichever worker is scraped."""

    def describe(self):
        return []  # registering must not query a database that is not there yet

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        from models import database, webhooks

        try:
            depth, oldest = database.read(webhooks.backlog)
        except Exception:  # no database (yet): /metrics still answers
            return
        yield GaugeMetricFamily("webhook_outbox_depth", "Webhook deliveries waiting to be delivered", value=depth)
        yield GaugeMetricFamily("webhook_outbox_oldest_age_seconds",
                                "Age of the oldest webhook delivery waiting to be delivered", value=oldest)


OUTBOX_BACKLOG = _OutboxBacklog()
REGISTRY.register(OUTBOX_BACKLOG)

access_log = logging.getLogger("clinic_api.access")

# The classic text format every Prometheus version scrapes; the spec declares this exact type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics() -> tuple[bytes, str]:
    """The exposition text: this process's registry, or every worker's in multiprocess mode."""
    if state.current().settings.prometheus_multiproc_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(OUTBOX_BACKLOG)
        return generate_latest(registry), CONTENT_TYPE
    return generate_latest(), CONTENT_TYPE


def _pool_gauges() -> None:
    """Pool usage, sampled at most once a second: exact enough for a gauge, cheap per request."""
    app_state = state.current()
    now = time.monotonic()
    if now - app_state.pool_sampled_at < 1.0:
        return
    app_state.pool_sampled_at = now
    from models.database import current_pools

    try:
        pools = current_pools()
        for name, engine in pools.named():
            pool = engine.pool
            DB_POOL.labels(name, "checked_out").set(pool.checkedout())
            DB_POOL.labels(name, "idle").set(pool.checkedin())
            DB_POOL.labels(name, "overflow").set(max(pool.overflow(), 0))
    except Exception:  # no pools yet, or a pool without these counters
        pass


def replicas_configured(max_lag_seconds: float) -> None:
    DB_REPLICA_MAX_LAG.set(max_lag_seconds)


def server_health(server: str, health) -> None:
    """The probe's report on one server (``primary``, ``replica1``, ...)."""
    DB_UP.labels(server).set(1 if health.up else 0)
    # A replica that is down keeps its last measured lag: read it together with db_up.
    if server != "primary" and health.up and health.lag_seconds is not None:
        DB_REPLICA_LAG.labels(server).set(health.lag_seconds)


# prometheus_client's labels() checks and locks on every call; the label sets a request can
# produce are few (methods x route templates x statuses), so each child is looked up once.
_children: dict[tuple, object] = {}


def _child(metric, *labels):
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def begin(method: str) -> None:
    """A request arrived (the edge calls ``record`` when it is answered)."""
    _child(IN_PROGRESS, method).inc()


def record(method: str, route: str, status: int, elapsed: float, state: dict, path: str) -> None:
    """Count, time and log one answered request (called by the edge for every request)."""
    _child(IN_PROGRESS, method).dec()
    _child(REQUESTS, method, route, str(status)).inc()
    _child(LATENCY, method, route).observe(elapsed)
    if status == 429 and state.get("rate_limited"):
        RATE_LIMITED.labels(state["rate_limited"]).inc()
    _pool_gauges()
    if access_log.isEnabledFor(logging.INFO):
        claims = state.get("claims") or {}
        access_log.info("request", extra={"access": {
            "request_id": state.get("request_id"),
            "method": method,
            "route": route,
            # The path names the record read or changed (ids only; the query string, which
            # may hold patient names being searched, is left out).
            "path": path,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "user_id": claims.get("sub"),
            "org_id": claims.get("org_id"),
            "trace_id": state.get("trace_id"),  # set only while tracing is on
        }})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the request fields if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "access", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure_logging(level: str) -> None:
    """JSON lines on stderr for every logger (the server's own included)."""
    formatter = JsonFormatter()
    formatter.converter = time.gmtime
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "gunicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's own access log would duplicate ours, without the route template or the user.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)

"""The app factory: the spec, the middleware stack and the error handlers wired together."""
from __future__ import annotations

import contextlib
import importlib
import json
from pathlib import Path

import connexion
import yaml
from connexion.middleware import MiddlewarePosition
from connexion.resolver import Resolver
from inflection import underscore
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

import config
from handlers import JSONIFIER, health
from middleware import adapter, auth, errors, observability, telemetry
from middleware.ratelimit import RateLimits
from middleware.http import Edge
from middleware import replicas
from middleware.routes import RouteTable
from models import contract, credentials, database, resources, sessions, signing
from state import AppState

SPEC_DIR = Path(__file__).resolve().parent / "spec"

class SnakeCaseResolver(Resolver):
    """``listPatients`` in ``x-openapi-router-controller: handlers.patients`` -> ``list_patients``."""

    def resolve_operation_id(self, operation):
        return f"{operation.router_controller}.{underscore(operation.operation_id)}"


def create_app(settings: config.Settings | None = None, *, database_url: str | None = None) -> connexion.FlaskApp:
    """Build the ASGI application. The database URL defaults to the configured or embedded one."""
    adapter.check_versions()
    settings = settings or config.load()
    observability.configure_logging(settings.log_level)
    telemetry.configure_sentry(settings)
    document = yaml.load((SPEC_DIR / "openapi.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    check_handlers(document)
    url = database_url or database.resolve_url(settings)
    app_state = AppState(settings=settings, pools=database.create_pools(url, settings),
                         limits=RateLimits(settings), keys=signing.load(settings),
                         dummy_password_hash=credentials.dummy_hash(settings),
                         resources=contract.derive(document, resources.ALL))
    # Replicas' statements are traced as the primary's are.
    app_state.tracing = telemetry.configure(settings, [engine for _, engine in app_state.pools.named()])
    if app_state.pools.replicas:
        observability.replicas_configured(settings.replica_max_lag_seconds)
    app_state.sessions = sessions.SessionCache(settings, settings.database_listen_url or url).start()
    app_state.pools.companions.append(app_state.sessions)

    app = connexion.FlaskApp(
        __name__,
        specification_dir=str(SPEC_DIR),
        lifespan=_closing_pools_of(app_state),
        jsonifier=JSONIFIER,
        security_map=adapter.SECURITY_MAP,
        middlewares=list(adapter.MIDDLEWARES),
    )
    app.add_api(
        "openapi.yaml",
        resolver=SnakeCaseResolver(),
        strict_validation=True,
        validate_responses=settings.validate_responses,
        pythonic_params=True,
        validator_map=adapter.VALIDATORS,
        swagger_ui_options=adapter.swagger_ui_options(settings.serve_docs),
    )
    adapter.install(app, settings.request_threads, request_deadlines(settings))
    for exc_class in (errors.ApiError, connexion.ProblemException, HTTPException, Exception):
        app.add_error_handler(exc_class, errors.connexion_handler)
    app.app.register_error_handler(Exception, errors.flask_handler)

    # Everything connexion does runs inside the edge, so that the requests it refuses itself are
    # counted, limited, logged and carry the same headers. CORS, when on, wraps it (added first:
    # the first middleware added is the outermost).
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION,
                           allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID",
                                          "If-Match", "If-None-Match", "Idempotency-Key"],
                           expose_headers=["X-Request-ID", "ETag", "RateLimit", "RateLimit-Policy",
                                           "Retry-After", "Idempotent-Replayed"])
    app.add_middleware(Edge, position=MiddlewarePosition.BEFORE_EXCEPTION,
                       routes=RouteTable(document), app_state=app_state)
    app.state = app_state
    replicas.install(app.app, app_state.pools)
    auth.install(app.app)
    # Each worker looks at its database servers once a second, traffic or not (db_up, replica lag).
    database.Probe(app_state.pools, url, report=observability.server_health,
                   connect_timeout_s=settings.db_connect_timeout_s).start()
    return app


def request_deadlines(settings: config.Settings) -> adapter.Deadlines:
    """How long a handler may wait on the database before the loop answers for it: a statement's
    own timeout and a little (a frozen server never sends its timeout error); /ready its second;
    /health never waits for a thread."""
    return adapter.Deadlines(
        default_s=settings.db_statement_timeout_ms / 1000 + REQUEST_DEADLINE_MARGIN_S,
        by_path={"/ready": (health.READINESS_DEADLINE_S, 503, json.dumps(health.UNREACHABLE).encode())},
        on_loop=frozenset({"/health"}),
    )


# After the statement timeout: a live server's own timeout error (a 503 too) comes first.
REQUEST_DEADLINE_MARGIN_S = 0.25


def check_handlers(document: dict) -> None:
    """Every operation of the spec has its function, or the app does not start: connexion would
    only find out on the first request, and answer every request with a plain-text 500."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "put", "post", "patch", "delete") or "operationId" not in operation:
                continue
            controller = operation.get("x-openapi-router-controller", "")
            function = underscore(operation["operationId"])  # as SnakeCaseResolver resolves it
            try:
                found = hasattr(importlib.import_module(controller), function)
            except ImportError:
                found = False
            if not found:
                raise contract.ContractError(f"operationId {operation['operationId']} ({method.upper()} {path}) "
                                             f"has no handler: {controller}.{function} does not exist")


def _closing_pools_of(app_state: AppState):
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        """On SIGTERM the server drains in-flight requests, then the pools close their connections."""
        yield
        if app_state.tracing is not None:
            app_state.tracing.shutdown()  # export the spans still buffered
        app_state.pools.dispose()

    return lifespan

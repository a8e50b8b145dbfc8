"""Traces (OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT is set) and error reports (Sentry, when
SENTRY_DSN is set and the ``sentry`` extra is installed).

A trace is one request: a server span named by the route template, with its status and the
caller's organization, and a child span per SQL statement. Nothing in a span or a report names a
patient: no paths, query strings, bodies, headers or bound values.

Off (the default), the edge calls ``start_request`` and ``end_request`` for every request and each
returns at once; the SDK and the exporter are not even imported.
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from opentelemetry import context, trace

import config
from models import database

log = logging.getLogger(__name__)

class Tracing:
    """One app's tracer, its exporter and the pools whose statements it traces (on AppState)."""

    def __init__(self, settings: config.Settings, engines: list):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.otel_endpoint.rstrip("/") + "/v1/traces")))
        self.tracer = self.provider.get_tracer("clinic-api")
        # Kept, so that shutdown() removes the very listeners it added.
        self.listeners = (("before_cursor_execute", self._statement_started),
                          ("after_cursor_execute", _statement_ended), ("handle_error", _statement_failed))
        self.engines = list(engines)
        for engine in self.engines:
            for name, listener in self.listeners:
                sa.event.listen(engine, name, listener)

    def shutdown(self) -> None:
        """Export what is buffered and stop listening to the pools."""
        for engine in self.engines:
            for name, listener in self.listeners:
                sa.event.remove(engine, name, listener)
        self.engines = []
        self.provider.shutdown()

    def _statement_started(self, conn, cursor, statement, parameters, context, executemany):
        # The statement with its placeholders only: bound values (names, notes) never reach a span.
        context._clinic_span = self.tracer.start_span(
            _operation(statement, context), kind=trace.SpanKind.CLIENT,
            attributes={"db.system.name": "postgresql", "db.query.text": statement})


def _operation(statement: str, execution) -> str:
    """The SQL verb a statement's span is named by: that of the statement the API built, not of
    the ``SET LOCAL`` an access row's read is sent behind, and for a statement with CTEs (a read
    with its access row, a create with its audit row) that of its outer statement."""
    for flag, verb in (("isinsert", "INSERT"), ("isupdate", "UPDATE"), ("isdelete", "DELETE")):
        if getattr(execution, flag, False):
            return verb
    words = statement.removeprefix(database.ASYNCHRONOUS_PREFIX).split(None, 1)
    verb = words[0].upper() if words else "SQL"
    return "SELECT" if verb == "WITH" and getattr(execution, "compiled", None) is not None else verb


def configure(settings: config.Settings, engines: list) -> Tracing | None:
    """Export traces to settings.otel_endpoint (OTLP over HTTP); None when it is unset."""
    return Tracing(settings, engines) if settings.otel_endpoint else None


def start_request(tracing: Tracing | None, method: str, route: str, state: dict):
    """The request's server span, made current for everything below the edge; None when off."""
    if tracing is None:
        return None
    span = tracing.tracer.start_span(f"{method} {route}", kind=trace.SpanKind.SERVER,
                                     attributes={"http.request.method": method, "http.route": route})
    state["trace_id"] = format(span.get_span_context().trace_id, "032x")
    return span, context.attach(trace.set_span_in_context(span))


def end_request(traced, status: int, claims: dict | None) -> None:
    """Close the request's span with its status and organization."""
    if traced is None:
        return
    span, token = traced
    span.set_attribute("http.response.status_code", status)
    if claims and claims.get("org_id"):
        span.set_attribute("clinic.org_id", claims["org_id"])
    if status >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
    context.detach(token)


# --- SQL statements ------------------------------------------------------------------------------
# A span per statement, child of the request's. By hand, on SQLAlchemy's cursor events:
# opentelemetry-instrumentation-sqlalchemy (0.66b2) refuses SQLAlchemy 2.1 and imports its asyncio
# extension, which needs greenlet, a dependency this synchronous service has no other use for.

def _statement_ended(conn, cursor, statement, parameters, context, executemany):
    span = getattr(context, "_clinic_span", None)
    if span is not None:
        span.end()


def _statement_failed(exception_context):
    span = getattr(exception_context.execution_context, "_clinic_span", None)
    if span is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(exception_context.original_exception).__name__))
        span.end()


# --- Sentry ----------------------------------------------------------------------------------------

def configure_sentry(settings: config.Settings) -> None:
    """Report unhandled errors to Sentry when SENTRY_DSN is set (``pip install clinic-api[sentry]``)."""
    if not settings.sentry_dsn:
        return
    try:
        import sentry_sdk
    except ImportError:
        log.warning("SENTRY_DSN is set but sentry-sdk is not installed: pip install 'clinic-api[sentry]'")
        return
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        send_default_pii=False,
        max_request_body_size="never",
        include_local_variables=False,  # a handler's locals hold bodies and patient records
        max_breadcrumbs=0,  # earlier log lines name paths and ids
        traces_sample_rate=0,
        before_send=_without_request_data,
    )


def _without_request_data(event: dict, _hint) -> dict:
    """An error report keeps what went wrong and where in the code; of the request, its method.

    The integrations would add the URL (a search query holds a patient's name), headers, cookies
    and the user; local variables and breadcrumbs are off in ``init``."""
    request = event.get("request") or {}
    event["request"] = {"method": request["method"]} if "method" in request else {}
    for key in ("user", "breadcrumbs", "extra"):
        event.pop(key, None)
    return event

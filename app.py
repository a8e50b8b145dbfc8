"""The app factory: the spec, the middleware stack and the error handlers wired together."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import connexion
from connexion.jsonifier import Jsonifier
from connexion.middleware import MiddlewarePosition
from connexion.resolver import Resolver
from inflection import underscore
from starlette.exceptions import HTTPException

import config
from middleware import auth, errors
from middleware.http import BodySizeLimit, MethodCheck, RequestId, SecurityHeaders
from middleware.validation import VALIDATORS
from models import database

SPEC_DIR = Path(__file__).resolve().parent / "spec"


class SnakeCaseResolver(Resolver):
    """``listPatients`` in ``x-openapi-router-controller: handlers.patients`` -> ``list_patients``."""

    def resolve_operation_id(self, operation):
        return f"{operation.router_controller}.{underscore(operation.operation_id)}"


def create_app(settings: config.Settings | None = None, *, database_url: str | None = None) -> connexion.FlaskApp:
    """Build the ASGI application. The database URL defaults to the configured or embedded one."""
    settings = settings or config.load()
    auth.configure(settings)
    url = database_url or database.resolve_url(settings)
    database.install(database.create_engine(url, settings))

    app = connexion.FlaskApp(
        __name__,
        specification_dir=str(SPEC_DIR),
        jsonifier=Jsonifier(json, separators=(",", ":")),
    )
    app.add_api(
        "openapi.yaml",
        resolver=SnakeCaseResolver(),
        strict_validation=True,
        validate_responses=settings.validate_responses,
        pythonic_params=True,
        validator_map=VALIDATORS,
    )
    for exc_class in (errors.ApiError, connexion.ProblemException, HTTPException, Exception):
        app.add_error_handler(exc_class, errors.connexion_handler)
    app.app.register_error_handler(Exception, errors.flask_handler)

    # Outermost first: every response, errors included, gets an id and the security headers, and
    # oversized bodies are refused before anything reads them.
    app.add_middleware(RequestId, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(SecurityHeaders, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(MethodCheck, position=MiddlewarePosition.BEFORE_EXCEPTION,
                       spec_path=SPEC_DIR / "openapi.yaml")
    app.add_middleware(BodySizeLimit, position=MiddlewarePosition.BEFORE_EXCEPTION,
                       max_bytes=settings.max_body_bytes)
    logging.getLogger().setLevel(settings.log_level)
    return app

"""The spec's path templates, matched against raw paths.

Metrics and logs label requests by template (``/patients/{id}``), never by raw path; the method
check answers 405 with every method a template allows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from connexion.middleware.swagger_ui import SwaggerUIAPI, SwaggerUIMiddleware
from starlette.responses import Response

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_PARAMETER = re.compile(r"\\\{[^/]+?\\\}")  # an escaped {name} in re.escape()'s output


@dataclass(frozen=True)
class Route:
    template: str
    methods: tuple[str, ...]


class RouteTable:
    """Every path template of the spec, with the methods it answers, matched by one regex."""

    def __init__(self, spec_path: Path):
        spec = yaml.safe_load(spec_path.read_text())
        routes = []
        for template, item in spec["paths"].items():
            methods = {m.upper() for m in item if m in _METHODS}
            if "GET" in methods:
                methods.add("HEAD")
            routes.append(Route(template, tuple(sorted(methods))))
        # Literal segments win over parameters (/auth/me before /auth/{x}), as in the router.
        routes.sort(key=lambda r: r.template.count("{"))
        self.routes = {f"r{i}": route for i, route in enumerate(routes)}
        alternatives = "|".join(f"(?P<{name}>{_pattern_of(route.template)})"
                                for name, route in self.routes.items())
        self._pattern = re.compile(f"(?:{alternatives})")

    def match(self, path: str) -> Route | None:
        found = self._pattern.fullmatch(path)
        return self.routes[found.lastgroup] if found else None


def _pattern_of(template: str) -> str:
    """``/patients/{id}`` -> ``/patients/[^/]+``."""
    return _PARAMETER.sub("[^/]+", re.escape(template))


class _SpecAsWritten(SwaggerUIAPI):
    """Serves the spec as written: its ``$ref``s kept, only ``servers`` set to where the API is
    mounted (behind a path-altering proxy, its root path).

    connexion serves the resolved document instead: every ``$ref`` inlined (1 MB instead of
    160 KB), so that generators see thousands of anonymous copies of each schema."""

    def _spec_for_prefix(self, request) -> dict:
        document = dict(self.specification.raw)
        document["servers"] = [{"url": self._base_path_for_prefix(request) or "/"}]
        return document

    async def _get_openapi_yaml(self, request):
        return Response(content=as_yaml(self._spec_for_prefix(request)), status_code=200, media_type="text/yaml")


def as_yaml(document: dict) -> str:
    """The document in YAML, keys in the order written: connexion's dumper sorts them, and
    generators emit properties in document order, so a sorted copy gives a different client."""
    return yaml.dump(document, allow_unicode=True, sort_keys=False, Dumper=_NoAnchors)


class _NoAnchors(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


class SwaggerUI(SwaggerUIMiddleware):
    """connexion's Swagger UI layer, stepped over by requests that cannot be for it, and with the
    spec documents rendered once.

    It runs a starlette router for every request, only to find that an API call is none of the
    few paths it serves (``/openapi.json``, ``/ui``...) and pass it on unchanged, as here: the
    paths its routes can match all start with one of their own paths.

    It also rebuilt and re-serialised the whole resolved spec for each anonymous request of
    ``/openapi.json`` (1 MB, 0.26 s of CPU) or ``/openapi.yaml`` (2 MB, 1.7 s), on the event
    loop that serves every other request of the worker. The document only depends on the path
    and the root path, so each answer is kept after the first.
    """

    def __init__(self, app):
        super().__init__(app)
        self._prefixes: tuple[str, ...] = ()
        self._documents: dict[tuple[str, str, str], list[dict]] = {}

    def add_api(self, specification, base_path=None, arguments=None, **kwargs):
        api = _SpecAsWritten(specification, base_path=base_path, arguments=arguments,
                             default=self.default_fn, **kwargs)
        self.router.mount(api.base_path, app=api.router)
        self._prefixes = tuple(mount.path.rstrip("/") + route.path
                               for mount in self.router.routes for route in mount.routes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path = scope["path"]
        if not path.startswith(self._prefixes):
            await self.app(scope, receive, send)
            return
        if not path.endswith(_SPEC_DOCUMENTS) or scope["method"] not in ("GET", "HEAD"):
            await super().__call__(scope, receive, send)
            return
        key = (scope["method"], path, scope.get("root_path", ""))
        answer = self._documents.get(key)
        if answer is None:
            answer = []

            async def keep(message):
                answer.append(message)

            await super().__call__(scope, receive, keep)
            # The keys come from the server's routes and root path, but a 404 for a near miss
            # (``/x/openapi.json``) is not worth keeping.
            if answer and answer[0].get("status") == 200 and len(self._documents) < _DOCUMENTS_KEPT:
                self._documents[key] = answer
        for message in answer:
            await send(message)


_SPEC_DOCUMENTS = ("/openapi.json", "/openapi.yaml")
_DOCUMENTS_KEPT = 16

"""The spec's path templates, matched against raw paths.

Metrics and logs label requests by template (``/patients/{id}``), never by raw path; the method
check answers 405 with every method a template allows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@dataclass(frozen=True)
class Route:
    template: str
    methods: tuple[str, ...]
    pattern: re.Pattern


class RouteTable:
    """Every path template of the spec, with the methods it answers."""

    def __init__(self, spec_path: Path):
        spec = yaml.safe_load(spec_path.read_text())
        routes = []
        for template, item in spec["paths"].items():
            pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            methods = {m.upper() for m in item if m in _METHODS}
            if "GET" in methods:
                methods.add("HEAD")
            routes.append(Route(template, tuple(sorted(methods)), re.compile(pattern)))
        # Literal segments win over parameters (/auth/me before /auth/{x}), as in the router.
        self.routes = sorted(routes, key=lambda r: r.template.count("{"))

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            if route.pattern.fullmatch(path):
                return route
        return None

    def template_of(self, path: str) -> str:
        route = self.match(path)
        return route.template if route else "unmatched"

"""The spec's path templates, matched against raw paths.

Metrics and logs label requests by template (``/patients/{id}``), never by raw path; the method
check answers 405 with every method a template allows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_PARAMETER = re.compile(r"\\\{[^/]+?\\\}")  # an escaped {name} in re.escape()'s output


@dataclass(frozen=True)
class Route:
    template: str
    methods: tuple[str, ...]


class RouteTable:
    """Every path template of the spec, with the methods it answers, matched by one regex."""

    def __init__(self, spec: dict):
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

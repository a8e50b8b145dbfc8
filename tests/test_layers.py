"""The layer rule: handlers -> middleware -> models -> (config, errors), and no web framework below
the middleware (docs/architecture.md)."""
from __future__ import annotations

import ast
import subprocess
import sys

import config

# Lower numbers sit lower; a module may import its own layer or a lower one.
LAYERS = {"errors": 0, "config": 0, "models": 1, "middleware": 2, "handlers": 3}
WEB_FRAMEWORKS = ("flask", "connexion", "starlette", "jsonschema", "a2wsgi", "werkzeug", "uvicorn", "gunicorn")


def _layer_of(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in LAYERS else None


def _imports(path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _modules():
    for path in sorted(config.ROOT.glob("*.py")):
        if path.stem in LAYERS:
            yield path.stem, path
    for package in ("models", "middleware", "handlers"):
        for path in sorted((config.ROOT / package).glob("*.py")):
            yield package, path


def test_every_import_points_down_or_sideways():
    broken = []
    for layer, path in _modules():
        for name in _imports(path):
            target = _layer_of(name)
            if target is not None and LAYERS[target] > LAYERS[layer]:
                broken.append(f"{path.relative_to(config.ROOT)} imports {name}")
    assert broken == []


def test_no_web_framework_below_the_middleware():
    broken = []
    for layer, path in _modules():
        if LAYERS[layer] > LAYERS["models"]:
            continue
        for name in _imports(path):
            if name.split(".")[0] in WEB_FRAMEWORKS:
                broken.append(f"{path.relative_to(config.ROOT)} imports {name}")
    assert broken == []


def test_the_data_layer_loads_without_the_web_stack():
    """Imported in a fresh interpreter, the CRUD engine and the resources pull in no framework."""
    probe = (
        "import sys; import models.crud, models.resources, models.accounts, models.idempotency,"
        " models.events, models.webhooks;"
        f"print(','.join(sorted(m for m in {WEB_FRAMEWORKS!r} if m in sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=config.ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == ""

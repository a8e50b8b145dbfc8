"""The floor of the API's own stack: connexion 3 and Flask, served as the API is, and nothing else.

The baseline's get-by-id handler (Flask and one psycopg2 statement: no SQLAlchemy, auth, access row
nor audit) behind a stock ``connexion.FlaskApp`` that routes the spec's ``/patients/{patient_id}``
and validates its path parameter, under gunicorn with uvicorn workers as ``clinic-api serve``
runs. What it costs per request, less the baseline's, is what connexion and its ASGI layers cost
before the API does any of its own work. Served by ``bench/run.py`` as::

    BASELINE_DATABASE_URL=... BASELINE_ORG_ID=... \\
      .venv/bin/gunicorn --chdir bench -k uvicorn_worker.UvicornWorker -w <cores> 'stack_floor:create_app()'
"""
from __future__ import annotations

from pathlib import Path

import connexion

import baseline

_views = {}


def health():
    return {"status": "ok"}


def get_patient(patient_id: str):
    return _views["get_patient"](patient_id)


def create_app() -> connexion.FlaskApp:
    _views.update(baseline.create_app(application_name="bench-stack").view_functions)
    app = connexion.FlaskApp(__name__, specification_dir=str(Path(__file__).parent))
    app.add_api("stack_floor.yaml", strict_validation=True)
    return app

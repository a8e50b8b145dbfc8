"""The bare baseline: what get-patient-by-id and create-patient cost with nothing around them.

Plain Flask and a psycopg2 connection pool: no SQLAlchemy, no OpenAPI validation, no auth, no
audit row. The organization is fixed per process (``BASELINE_ORG_ID``); statements are scoped by it
exactly as the API scopes them. The answers have the API's JSON shape:
``{"success": true, "data": {...patient columns...}, "error": null}``.

Served by ``bench/run.py`` as::

    BASELINE_DATABASE_URL=... BASELINE_ORG_ID=... \\
      .venv/bin/gunicorn --chdir bench -k gthread --threads 1 -w <cores> 'baseline:create_app()'
"""
from __future__ import annotations

import datetime
import decimal
import json
import os
import threading

import psycopg2
from flask import Flask, Response, request
from psycopg2.extras import RealDictCursor
from psycopg2.pool import ThreadedConnectionPool

COLUMNS = ("id, org_id, branch_id, name, email, phone, date_of_birth, gender, status, photo, "
           "created_at, updated_at, deleted_at")
WRITABLE = ("branch_id", "name", "email", "phone", "date_of_birth", "gender", "status", "photo")


def _default(value):
    # The same text the API's jsonifier writes.
    if isinstance(value, datetime.datetime):
        return value.isoformat("T") if value.tzinfo else value.isoformat("T") + "Z"
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def _answer(data, status: int) -> Response:
    body = {"success": status < 400, "data": data if status < 400 else None,
            "error": None if status < 400 else {"code": data}}
    return Response(json.dumps(body, default=_default, separators=(",", ":")), status=status,
                    mimetype="application/json")


def create_app(dsn: str | None = None, org_id: str | None = None,
               application_name: str = "bench-baseline") -> Flask:
    dsn = dsn or os.environ["BASELINE_DATABASE_URL"]
    org_id = org_id or os.environ["BASELINE_ORG_ID"]
    size = int(os.environ.get("BASELINE_POOL_SIZE", "1"))
    app = Flask(__name__)
    pool: list[ThreadedConnectionPool] = []
    # More threads than connections wait for one, as an application's pool makes them wait
    # (psycopg2's pool raises instead).
    free = threading.BoundedSemaphore(size)

    def connection():
        # Created on first use, i.e. in the worker after gunicorn forked; every connection kept
        # open (psycopg2's pool closes those beyond its minimum when they come back).
        if not pool:
            pool.append(ThreadedConnectionPool(size, size, dsn, options="-c timezone=UTC",
                                               application_name=application_name))
        conn = pool[0].getconn()
        conn.autocommit = True  # one statement per request: no BEGIN/COMMIT round trips
        return conn

    def run(sql: str, params) -> dict | None:
        with free:
            conn = connection()
            try:
                with conn.cursor(cursor_factory=RealDictCursor) as cur:
                    cur.execute(sql, params)
                    return cur.fetchone()
            finally:
                pool[0].putconn(conn)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/patients/<patient_id>")
    def get_patient(patient_id: str):
        try:
            row = run(f"SELECT {COLUMNS} FROM patient WHERE id = %s AND org_id = %s AND deleted_at IS NULL",
                      (patient_id, org_id))
        except psycopg2.DataError:
            return _answer("BAD_REQUEST", 400)
        if row is None:
            return _answer("NOT_FOUND", 404)
        return _answer(row, 200)

    @app.post("/patients")
    def create_patient():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not body.get("name") or not body.get("branch_id"):
            return _answer("VALIDATION_ERROR", 400)
        names = [name for name in WRITABLE if name in body]
        try:
            row = run(
                f"INSERT INTO patient (org_id, {', '.join(names)})"
                f" VALUES (%s{', %s' * len(names)}) RETURNING {COLUMNS}",
                (org_id, *[body[name] for name in names]),
            )
        except psycopg2.IntegrityError:
            return _answer("CONFLICT", 409)
        except psycopg2.DataError:
            return _answer("VALIDATION_ERROR", 400)
        return _answer(row, 201)

    return app

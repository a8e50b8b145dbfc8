"""The floor: bare Starlette + asyncpg running the peer's statements (``store.py``) and nothing else.

No token, no validation beyond what the statements need, no metrics, headers or ETag: what the
database work of each scenario costs in Python with the least around it. The organization and
the user the access and audit rows name are fixed per process (``FLOOR_ORG_ID``,
``FLOOR_USER_ID``), as the baseline's organization is.

    PEER_DATABASE_URL=... FLOOR_ORG_ID=... FLOOR_USER_ID=... gunicorn --chdir bench/peer \\
      -k uvicorn_worker.UvicornWorker 'floor:create_app()'
"""
from __future__ import annotations

import datetime as dt
import os

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import store
from store import APPOINTMENTS, PATIENTS, Origin, Refused

ENV = os.environ


def _answer(data, status: int = 200) -> Response:
    return Response(orjson.dumps({"success": True, "data": data, "error": None}), status_code=status,
                    media_type="application/json")


def create_app() -> Starlette:
    database = store.Database(
        ENV["PEER_DATABASE_URL"], pool_size=int(ENV.get("DB_POOL_SIZE", "10")),
        application_name=ENV.get("PEER_APPLICATION_NAME", "bench-floor"),
        exact_limit=int(ENV.get("COUNT_EXACT_LIMIT", "10000")),
        search_exact_limit=int(ENV.get("SEARCH_COUNT_EXACT_LIMIT", "1000")),
        retry_window_s=int(ENV.get("WEBHOOK_RETRY_WINDOW_S", "86400")))
    org_id = ENV["FLOOR_ORG_ID"]

    def origin(request: Request) -> Origin:
        return Origin(ENV["FLOOR_USER_ID"], request.client.host if request.client else None,
                      request.headers.get("user-agent"), request.headers.get("x-request-id"))

    async def health(_request):
        return _answer({"status": "ok"})

    async def get_patient(request: Request):
        try:
            row = await database.get_row(PATIENTS, org_id, origin(request), request.path_params["id"])
        except Refused as exc:
            return Response(orjson.dumps({"success": False, "data": None, "error": {"code": exc.code}}), 404,
                            media_type="application/json")
        return _answer(row)

    def _page(request: Request) -> dict:
        query = request.query_params
        embed = query.get("embed")
        return {"page": int(query.get("page", 1)), "page_size": int(query.get("pageSize", 20)),
                "embed": tuple(embed.split(",")) if embed else ()}

    async def list_patients(request: Request):
        result = await database.list_rows(PATIENTS, org_id, origin(request), **_page(request),
                                          filters={"search": request.query_params.get("search")})
        return _answer(result)

    async def list_appointments(request: Request):
        return _answer(await database.list_rows(APPOINTMENTS, org_id, origin(request), **_page(request)))

    async def create_patient(request: Request):
        body = orjson.loads(await request.body())
        if body.get("date_of_birth"):
            body["date_of_birth"] = dt.date.fromisoformat(body["date_of_birth"])
        return _answer(await database.create_row(PATIENTS, org_id, origin(request), body), 201)

    async def lifespan(_app):
        await database.open()
        yield
        await database.close()

    return Starlette(lifespan=lifespan, routes=[
        Route("/health", health), Route("/patients/{id}", get_patient),
        Route("/patients", list_patients), Route("/patients", create_patient, methods=["POST"]),
        Route("/appointments", list_appointments),
    ])

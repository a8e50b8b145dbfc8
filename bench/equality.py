"""Before any load: the FastAPI peer answers as the API does, and writes what the API writes.

Every case is sent to both servers (same path, body and token; a request id of its own each) and
compared: the status; for an error its code and field; for a success the data (a create's new
id and instants aside), ``total``/``total_estimated``, and the headers the API sets (ETag, Link,
Location, Cache-Control, X-Content-Type-Options, X-Request-ID, WWW-Authenticate, Content-Type).
Then the rows each request left, found by request id: access rows (action, resource, patients,
user, address, user agent), audit rows (the same, and the image less id and instants) and outbox
rows. The floor's answers to the scenarios' requests are compared with the API's data too.

Any difference fails the bench (``run.py`` exits non-zero): a peer that does less, or answers
otherwise, makes its figures meaningless.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import psycopg2

# What differs between two creates of the same body.
_NEW = ("id", "created_at", "updated_at")
# Headers whose presence depends on the server software or the moment, not on the API's rules.
_VOLATILE_HEADERS = {"date", "server", "content-length", "transfer-encoding", "connection", "keep-alive",
                     "ratelimit", "ratelimit-policy", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining",
                     "x-ratelimit-reset"}
_COMPARED_HEADERS = ("content-type", "cache-control", "x-content-type-options", "www-authenticate")


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: bytes | None = None
    auth: str = "token"  # a key of _tokens(), or basic
    headers: dict = field(default_factory=dict)
    creates: bool = False
    floor: bool = False  # one of the scenarios' own requests: the floor answers it too
    # False: only the status is compared, not the error's code and field (a rule being changed:
    # NUL in a body is MALFORMED_REQUEST on main and VALIDATION_ERROR naming the field in the
    # hardening work of issue 16; whichever lands, both are 400).
    codes: bool = True


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: dict | None
    request_id: str


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def cases(ctx: dict) -> list[Case]:
    """Reads first, creates last (their rows would otherwise show on the lists compared)."""
    pid, other_pid, branch, other_branch = ctx["patient_id"], ctx["other_patient_id"], ctx["branch_id"], ctx["other_branch_id"]
    org, other_org = ctx["org_id"], ctx["other_org_id"]
    unknown = str(uuid.uuid4())
    body = {"branch_id": branch, "name": "Equal Patient", "email": "equal.patient@bench.example",
            "phone": "+15550001111", "gender": "female", "date_of_birth": "1985-04-12"}
    json_header = {"Content-Type": "application/json"}

    def create(name, payload, **kw):
        raw = payload if isinstance(payload, bytes) else _json(payload)
        return Case(name, "POST", "/patients", raw, headers=kw.pop("headers", json_header), creates=True, **kw)

    return [
        Case("get by id", "GET", f"/patients/{pid}", floor=True),
        Case("get with embed=branch", "GET", f"/patients/{pid}?embed=branch"),
        Case("get, If-None-Match", "GET", f"/patients/{pid}", headers={"If-None-Match": "ETAG"}),
        Case("get unknown id", "GET", f"/patients/{unknown}"),
        Case("get another organization's patient", "GET", f"/patients/{other_pid}"),
        Case("get bad uuid", "GET", "/patients/not-a-uuid"),
        Case("get unknown parameter", "GET", f"/patients/{pid}?color=red"),
        Case("get embed=bogus", "GET", f"/patients/{pid}?embed=bogus"),
        Case("get without token", "GET", f"/patients/{pid}", auth="none"),
        Case("get garbage token", "GET", f"/patients/{pid}", auth="garbage"),
        Case("get Basic credentials", "GET", f"/patients/{pid}", auth="basic"),
        Case("get expired token", "GET", f"/patients/{pid}", auth="expired"),
        Case("get token of another key", "GET", f"/patients/{pid}", auth="unknown_key"),
        Case("get token without organization", "GET", f"/patients/{pid}", auth="no_org"),
        Case("get without patients:read", "GET", f"/patients/{pid}", auth="appointments_only"),
        Case("list page 1", "GET", "/patients?page=1&pageSize=20", floor=True),
        Case("list page 3 of 7", "GET", "/patients?page=3&pageSize=7"),
        Case("list past the last page", "GET", "/patients?page=100000&pageSize=20"),
        Case("list default page", "GET", "/patients"),
        Case("list embed=branch", "GET", "/patients?pageSize=5&embed=branch"),
        Case("list status=active", "GET", "/patients?status=active&pageSize=5"),
        Case("list branchId", "GET", f"/patients?branchId={branch}&pageSize=5"),
        Case("list orgId own", "GET", f"/patients?orgId={org}&pageSize=5"),
        Case("list orgId other", "GET", f"/patients?orgId={other_org}"),
        Case("list page=0", "GET", "/patients?page=0"),
        Case("list pageSize=101", "GET", "/patients?pageSize=101"),
        Case("list page=abc", "GET", "/patients?page=abc"),
        Case("list unknown parameter", "GET", "/patients?sort=name"),
        Case("list status=bogus", "GET", "/patients?status=bogus"),
        Case("list branchId not a uuid", "GET", "/patients?branchId=12"),
        Case("list embed twice", "GET", "/patients?embed=branch,branch"),
        Case("list without token", "GET", "/patients", auth="none"),
        Case("search common", "GET", f"/patients?search={ctx['common']}&pageSize=20", floor=True),
        Case("search rare", "GET", f"/patients?search={ctx['rare']}&pageSize=20", floor=True),
        Case("search rare, page 2 of 2", "GET", f"/patients?search={ctx['rare']}&page=2&pageSize=3"),
        Case("search matching nothing", "GET", "/patients?search=zzqqxxj"),
        Case("search a wildcard", "GET", "/patients?search=%25&pageSize=3"),
        Case("search empty", "GET", "/patients?search="),
        Case("search 101 characters", "GET", "/patients?search=" + "a" * 101),
        Case("search with NUL", "GET", "/patients?search=a%00b"),
        Case("appointments +3 embeds", "GET", "/appointments?embed=patient,staff,branch&page=1&pageSize=20",
             floor=True),
        Case("appointments page 2 of 5", "GET", "/appointments?embed=staff&page=2&pageSize=5"),
        Case("appointments, no embed", "GET", "/appointments?pageSize=5"),
        Case("appointments status=scheduled", "GET", "/appointments?status=scheduled&pageSize=5"),
        Case("appointments embed=bogus", "GET", "/appointments?embed=bogus"),
        Case("appointments without appointments:read", "GET", "/appointments", auth="patients_only"),
        create("create", body, floor=True),
        create("create, two fields", {"branch_id": branch, "name": "Equal Minimal"}),
        create("create, own org_id", {**body, "org_id": org}),
        create("create, another org_id", {**body, "org_id": other_org}),
        create("create, org_id null", {**body, "org_id": None}),
        create("create without name", {"branch_id": branch}),
        create("create, unknown field", {**body, "height": 180}),
        create("create, empty name", {**body, "name": ""}),
        create("create, name of 101", {**body, "name": "n" * 101}),
        create("create, email without @", {**body, "email": "nobody"}),
        create("create, month 13", {**body, "date_of_birth": "1985-13-01"}),
        create("create, date as 12/04/1985", {**body, "date_of_birth": "12/04/1985"}),
        create("create, status bogus", {**body, "status": "bogus"}),
        create("create, name a number", {**body, "name": 5}),
        create("create, branch_id not a uuid", {**body, "branch_id": "x"}),
        create("create, another organization's branch", {**body, "branch_id": other_branch}),
        create("create, unknown branch", {**body, "branch_id": unknown}),
        create("create, broken JSON", b'{"name": '),
        create("create, a list", b"[]"),
        create("create, NUL in name", b'{"branch_id": "%s", "name": "a\\u0000b"}' % branch.encode(), codes=False),
        create("create, text/plain", body, headers={"Content-Type": "text/plain"}),
        create("create without token", body, auth="none"),
        create("create without patients:write", body, auth="read_only"),
    ]


def _tokens(token: str, key_file: str) -> dict[str, str | None]:
    """The bench's token, and tokens minted from its claims with one thing wrong each, signed with
    the servers' key under the token's own header (so that whatever else a token carries, a
    session id say, stays as the API issued it)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    key = Path(key_file).read_bytes()

    def mint(**changes):
        minted = {**claims, "jti": str(uuid.uuid4()), **changes}
        return jwt.encode({k: v for k, v in minted.items() if v is not None}, key, algorithm=header["alg"],
                          headers={"kid": header.get("kid")})

    now = int(time.time())
    return {"token": token, "none": None, "garbage": "not.a.jwt", "basic": None,
            "expired": mint(iat=now - 3600, exp=now - 1800),
            "unknown_key": jwt.encode({**claims, "jti": str(uuid.uuid4())}, _other_key(), algorithm=header["alg"],
                                      headers={"kid": "not-a-key-of-this-server"}),
            "no_org": mint(org_id=None),
            "read_only": mint(scope="patients:read appointments:read"),
            "appointments_only": mint(scope="appointments:read"),
            "patients_only": mint(scope="patients:read")}


def _other_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _send(client: httpx.Client, base: str, case: Case, tokens: dict, request_id: str, etag: str | None) -> Answer:
    headers = {"X-Request-ID": request_id, **case.headers}
    if headers.get("If-None-Match") == "ETAG":
        headers["If-None-Match"] = etag or '"none"'
    if case.auth == "basic":
        headers["Authorization"] = "Basic YWRtaW46cGFzc3dvcmQ="
    elif tokens.get(case.auth):
        headers["Authorization"] = f"Bearer {tokens[case.auth]}"
    answer = client.request(case.method, base + case.path, content=case.body, headers=headers)
    try:
        body = answer.json() if answer.content else None
    except ValueError:
        body = {"unparsed": answer.text[:200]}
    return Answer(answer.status_code, answer.headers, body, request_id)


def _data(answer: Answer, creates: bool):
    data = (answer.body or {}).get("data")
    if creates and isinstance(data, dict):
        return {k: v for k, v in data.items() if k not in _NEW}
    return data


def _same_data(api, other) -> bool:
    """Equal; but two estimated totals (the planner's, asked by each server at its own moment and
    kept 30 s) may differ by 1%: the estimate follows the table's size on disk."""
    if (isinstance(api, dict) and isinstance(other, dict) and api.get("total_estimated") is True
            and other.get("total_estimated") is True):
        close = abs(api["total"] - other["total"]) <= max(2, api["total"] // 100)
        return close and {**api, "total": 0} == {**other, "total": 0}
    return api == other


def _differences(case: Case, api: Answer, other: Answer, *, headers: bool = True) -> list[str]:
    problems = []
    if api.status != other.status:
        return [f"status {api.status} vs {other.status}: {json.dumps(api.body)[:200]} | {json.dumps(other.body)[:200]}"]
    if api.status >= 400:
        a, b = (api.body or {}).get("error") or {}, (other.body or {}).get("error") or {}
        for key in ("code", "field") if case.codes else ():
            if a.get(key) != b.get(key):
                problems.append(f"error {key} {a.get(key)!r} vs {b.get(key)!r}")
        if (api.body or {}).get("success") is not False or (other.body or {}).get("success") is not False:
            problems.append("an error without success: false")
    elif api.status != 304:
        if not _same_data(_data(api, case.creates), _data(other, case.creates)):
            problems.append(f"data differ:\n      api:  {json.dumps(_data(api, case.creates), sort_keys=True)[:600]}"
                            f"\n      peer: {json.dumps(_data(other, case.creates), sort_keys=True)[:600]}")
    if not headers:
        return problems
    for name in _COMPARED_HEADERS + (() if case.creates else ("etag", "link")):
        if api.headers.get(name) != other.headers.get(name):
            problems.append(f"header {name}: {api.headers.get(name)!r} vs {other.headers.get(name)!r}")
    if case.creates and api.status == 201:
        for answer, who in ((api, "api"), (other, "peer")):
            new_id = answer.body["data"]["id"]
            if answer.headers.get("location") != f"/patients/{new_id}" or not answer.headers.get("etag"):
                problems.append(f"{who}: Location {answer.headers.get('location')!r}, ETag {answer.headers.get('etag')!r}")
    missing = sorted(set(api.headers) - set(other.headers) - _VOLATILE_HEADERS)
    if missing:
        problems.append(f"headers the API sends and the peer does not: {', '.join(missing)}")
    for answer, who in ((api, "api"), (other, "peer")):
        if answer.headers.get("x-request-id") != answer.request_id:
            problems.append(f"{who} X-Request-ID {answer.headers.get('x-request-id')!r}, sent {answer.request_id!r}")
    return problems


def _left_behind(url: str, request_ids: list[str]) -> dict[str, dict]:
    """Per request id: its access rows, audit rows and outbox rows, in comparable form."""
    out = {rid: {"access": [], "audit": [], "outbox": 0} for rid in request_ids}
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("""SELECT request_id, action, resource, patient_ids::text[], user_id::text, ip_address, user_agent
                         FROM access_log WHERE request_id = ANY(%s) ORDER BY seq""", (request_ids,))
        for rid, *row in cur.fetchall():
            row[2] = sorted(row[2])
            out[rid]["access"].append(row)
        cur.execute("""SELECT request_id, action, resource, user_id::text, ip_address, user_agent, after,
                              resource_id::text FROM audit_log WHERE request_id = ANY(%s) ORDER BY seq""",
                    (request_ids,))
        for rid, *row, resource_id in cur.fetchall():
            after = row[-1] or {}
            row[-1] = {k: v for k, v in after.items() if k not in _NEW}
            out[rid]["audit"].append(row)
            cur2 = conn.cursor()
            cur2.execute("SELECT count(*) FROM outbox_event WHERE resource_id = %s", (resource_id,))
            out[rid]["outbox"] += cur2.fetchone()[0]
    return out


def check(*, api: str, peer: str, floor: str | None, token: str, key_file: str, url: str, ctx: dict,
          log=print) -> list[str]:
    """Every difference found (empty when the peer and the floor answer as the API does)."""
    tokens = _tokens(token, key_file)
    problems: list[str] = []
    sent: list[tuple[Case, str, str, str | None]] = []
    etag = None
    stamp = uuid.uuid4().hex[:8]
    with httpx.Client(timeout=30) as client:
        for i, case in enumerate(cases(ctx)):
            ids = {who: f"equality-{stamp}-{i}-{who}" for who in ("api", "peer", "floor")}
            a = _send(client, api, case, tokens, ids["api"], etag)
            b = _send(client, peer, case, tokens, ids["peer"], etag)
            if case.name == "get by id":
                etag = a.headers.get("etag")
            found = _differences(case, a, b)
            floor_id = None
            if floor and case.floor:
                floor_id = ids["floor"]
                f = _send(client, floor, Case(case.name, case.method, case.path, case.body, auth="none",
                                              headers=case.headers, creates=case.creates), {}, floor_id, None)
                found += [f"floor: {p}" for p in _differences(case, a, f, headers=False)]
            sent.append((case, ids["api"], ids["peer"], floor_id))
            problems += [f"{case.name}: {p}" for p in found]
            log(f"  {'ok  ' if not found else 'DIFF'} {case.name:<42} {case.method} {case.path[:60]:<60} "
                f"api {a.status} peer {b.status}")
    rows = _left_behind(url, [rid for _, *rids in sent for rid in rids if rid])
    for case, api_id, peer_id, floor_id in sent:
        if rows[api_id] != rows[peer_id]:
            problems.append(f"{case.name}: rows written differ:\n      api:  {rows[api_id]}\n      peer: {rows[peer_id]}")
        if floor_id and rows[api_id] != rows[floor_id]:
            problems.append(f"{case.name}: floor's rows differ:\n      api:   {rows[api_id]}\n      floor: {rows[floor_id]}")
    written = sum(len(r["access"]) + len(r["audit"]) for r in rows.values())
    log(f"  {len(sent)} cases, {written} access and audit rows compared: "
        + ("the peer and the floor answer as the API does" if not problems else f"{len(problems)} difference(s)"))
    return problems

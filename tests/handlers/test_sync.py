"""Sync: every list answers what changed since an instant, tombstones included, oldest first,
paged by an opaque cursor that nothing written meanwhile can overtake."""
from __future__ import annotations

import re
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from models import database
from tests.conftest import error_of
from tests.factories import NAMES, RESOURCES, make_row, openapi, post, statements_sent

_NEXT = re.compile(r'<([^>]*)>; rel="next"')


def sync(client, org, path, **query):
    response = client.get(path, params=query, headers=org.headers)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("name", NAMES)
def test_every_list_answers_changes_oldest_first_with_tombstones(client, world_a, name):
    path, key, create, patch, _, _ = RESOURCES[name]
    org = world_a.org
    kept, gone = post(client, org, path, create(world_a)), post(client, org, path, create(world_a))
    assert client.patch(f"{path}/{kept['id']}", json=patch, headers=org.headers).status_code == 200
    assert client.delete(f"{path}/{gone['id']}", headers=org.headers).status_code == 204
    page = sync(client, org, path, updatedSince=kept["created_at"]).json()["data"]
    changed = [row for row in page[key] if row["id"] in (kept["id"], gone["id"])]
    assert [row["id"] for row in changed] == [kept["id"], gone["id"]]  # the update, then the delete
    assert changed[0]["deleted_at"] is None and changed[1]["deleted_at"] is not None
    stamps = [row["updated_at"] for row in page[key]]
    assert stamps == sorted(stamps) and page["has_more"] is False and page["next_cursor"]
    # Up to date: the cursor answers nothing more until something changes.
    after = sync(client, org, path, cursor=page["next_cursor"]).json()["data"]
    assert after[key] == [] and after["next_cursor"] == page["next_cursor"] and after["total"] == 0


def test_a_full_sync_page_estimates_what_is_left_and_the_last_page_counts_it(client, world_a):
    """Counting from a point far back would walk up to COUNT_EXACT_LIMIT index entries per page:
    a full page asks the planner instead, and the last page, which holds what is left, is exact."""
    org = world_a.org
    made = [post(client, org, "/patients", {"branch_id": org.branch_id, "name": f"Left {n}"}) for n in range(3)]
    full = sync(client, org, "/patients", pageSize=2, updatedSince=made[0]["created_at"]).json()["data"]
    assert full["has_more"] is True and full["total_estimated"] is True and full["total"] >= 2
    last = sync(client, org, "/patients", pageSize=2, cursor=full["next_cursor"]).json()["data"]
    assert last["has_more"] is False and last["total_estimated"] is False
    assert last["total"] == len(last["patients"]) == 1 and last["patients"][0]["id"] == made[2]["id"]


def test_a_full_sync_pages_estimate_is_near_what_is_left(client, world_a, owner_engine):
    """The planner cannot know the horizon (a subquery) and takes a third of the rows to be older
    than it: the estimate asks about the changes from the position on, without it."""
    org, made = world_a.org, 600
    with owner_engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO patient (org_id, branch_id, name, created_at, updated_at)"
            " SELECT :org, :branch, 'Earlier ' || n, stamp, stamp FROM generate_series(1, :made) AS n,"
            " LATERAL (SELECT timestamptz '2001-01-01' + n * interval '1 day' AS stamp) AS at"),
            {"org": org.org_id, "branch": org.branch_id, "made": made})
        conn.execute(sa.text("ANALYZE patient"))
    page = sync(client, org, "/patients", pageSize=20, updatedSince="2000-06-01T00:00:00Z").json()["data"]
    left = made + 1  # world_a's own patient changed after them all
    assert page["total_estimated"] is True and left / 1.5 <= page["total"] <= left * 1.5, page["total"]


def test_a_sync_walks_every_change_once_while_rows_are_written(client, world_a):
    org = world_a.org
    first = [post(client, org, "/patients", {"branch_id": org.branch_id, "name": f"Early {n}"}) for n in range(5)]
    since = first[0]["created_at"]
    seen, cursor, late = [], None, []
    for turn in range(10):
        query = {"cursor": cursor} if cursor else {"updatedSince": since}
        page = sync(client, org, "/patients", pageSize=2, **query)
        data = page.json()["data"]
        seen += [(row["id"], row["updated_at"]) for row in data["patients"]]
        if turn < 2:  # written between pages: new rows, and a row already read changing again
            late.append(post(client, org, "/patients", {"branch_id": org.branch_id, "name": f"Late {turn}"}))
            changed = client.patch(f"/patients/{first[0]['id']}", json={"name": f"Early 0, turn {turn}"},
                                   headers=org.headers)
            assert changed.status_code == 200, changed.text
        cursor = data["next_cursor"]
        if not data["has_more"] and turn >= 2:
            assert not _NEXT.search(page.headers["link"])
            break
        if data["has_more"]:
            assert quote(cursor) in _NEXT.search(page.headers["link"]).group(1)
    ids = [row_id for row_id, _ in seen]
    assert {p["id"] for p in first + late} <= set(ids)
    assert len(seen) == len(set(seen))  # no version twice
    assert ids.count(first[0]["id"]) == 2  # read, then (changed twice since) its latest version
    assert [stamp for _, stamp in seen] == sorted(stamp for _, stamp in seen)


def test_a_transaction_committing_late_is_not_skipped(client, world_a, engine):
    """now() is a transaction's start: a row committed after a later one was read must still come
    after the cursor. A page stops short of the oldest transaction under way."""
    org = world_a.org
    start = post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Before"})
    with engine.connect() as slow:
        slow.execute(sa.text("INSERT INTO patient (org_id, branch_id, name) VALUES (:org, :branch, 'Slow')"),
                     {"org": org.org_id, "branch": org.branch_id})
        quick = post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Quick"})
        page = sync(client, org, "/patients", updatedSince=start["created_at"]).json()["data"]
        assert [p["name"] for p in page["patients"]] == ["Before"]  # Quick waits behind Slow's transaction
        slow.commit()
    rest = sync(client, org, "/patients", cursor=page["next_cursor"]).json()["data"]
    assert [p["name"] for p in rest["patients"]] == ["Slow", "Quick"] and rest["patients"][1]["id"] == quick["id"]


def test_payments_and_the_audit_trail_sync_too(client, world_a):
    org = world_a.org
    payment = post(client, org, f"/loans/{world_a.loan_id}/payments", {"amount": 10})
    page = sync(client, org, f"/loans/{world_a.loan_id}/payments", updatedSince=payment["created_at"]).json()["data"]
    assert [p["id"] for p in page["payments"]] == [payment["id"]]
    trail = sync(client, org, "/audit-logs", updatedSince=payment["created_at"], pageSize=100).json()["data"]
    stamps = [row["created_at"] for row in trail["audit_logs"]]
    assert stamps and stamps == sorted(stamps) and "create" in [row["action"] for row in trail["audit_logs"]]


def test_a_sync_cannot_see_another_organization(client, world_a, make_org):
    other = make_org("Elsewhere")
    mine = post(client, world_a.org, "/patients", {"branch_id": world_a.org.branch_id, "name": "Mine"})
    post(client, other, "/patients", {"branch_id": other.branch_id, "name": "Theirs"})
    page = sync(client, world_a.org, "/patients", updatedSince=mine["created_at"]).json()["data"]
    assert [p["name"] for p in page["patients"]] == ["Mine"]


@pytest.mark.parametrize("cursor", ["bm90LWEtY3Vyc29y", "12.x", "12." + "0" * 31])
def test_a_cursor_the_server_did_not_write_is_400(client, world_a, cursor):
    response = client.get("/patients", params={"cursor": cursor}, headers=world_a.org.headers)
    assert response.status_code == 400 and error_of(response)["field"] == "cursor"


def test_every_write_moves_updated_at(client, world_a, engine):
    """A statement that forgets updated_at (a hook, an account change) still moves it, so no
    change is invisible to a sync."""
    org = world_a.org
    patient = post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Touched"})
    with engine.begin() as conn:
        moved = conn.execute(sa.text("UPDATE patient SET name = 'Touched again' WHERE id = :id RETURNING updated_at"),
                             {"id": patient["id"]}).scalar_one()
    assert moved.isoformat() > patient["updated_at"].replace("Z", "+00:00")


def test_a_sync_page_is_an_index_range_scan(client, world_a, engine):
    """The page's rows come from (org_id, updated_at, id) in its order: the keyset is an index
    condition, not a filter over the organization's rows, and no row is looked up again by id."""
    org = world_a.org
    post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Planned"})
    primary = database.current_pools().writer  # a sync reads where its horizon is true
    sent = statements_sent(primary, lambda: sync(client, org, "/patients", updatedSince="2026-01-01T00:00:00Z"))
    statement, parameters = [(s, p) for s, p in sent if "ORDER BY patient.updated_at ASC" in s][0]
    # A page of patient data is sent with its access row's commit setting ahead of it.
    statement = statement.removeprefix(database.ASYNCHRONOUS_PREFIX)
    with engine.connect() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    assert "patient_org_sync_idx" in plan
    assert re.search(r"Index Cond: .*org_id = .*ROW\(updated_at, id\) >", plan), plan
    assert "patient_pkey" not in plan, plan


def test_every_list_in_the_spec_syncs():
    """A list operation (it pages) declares updatedSince and cursor, so none is left out of a sync."""
    lists = [(path, operation["operationId"], {p.get("$ref", "").rsplit("/", 1)[-1] for p in operation.get("parameters", [])})
             for path, item in openapi()["paths"].items() for method, operation in item.items() if method == "get"]
    paged = [(path, op, refs) for path, op, refs in lists if "Page" in refs]
    assert len(paged) >= 16
    assert [op for _, op, refs in paged if not {"UpdatedSince", "Cursor"} <= refs] == []


def test_a_subscriptions_deliveries_sync(client, world_a):
    org = world_a.org
    subscription = make_row(org, "webhook", {"url": "https://127.0.0.1/hooks", "events": ["patient.created"]})
    since = subscription["created_at"].isoformat()
    created = [post(client, org, "/patients", {"branch_id": org.branch_id, "name": f"Synced {n}"}) for n in range(3)]
    path = f"/webhooks/{subscription['id']}/deliveries"
    first = sync(client, org, path, updatedSince=since, pageSize=2).json()["data"]
    rest = sync(client, org, path, cursor=first["next_cursor"], pageSize=2).json()["data"]
    resources = [d["resource_id"] for d in first["deliveries"] + rest["deliveries"]]
    assert resources == [p["id"] for p in created] and first["has_more"] and not rest["has_more"]


def test_a_patients_access_history_syncs_reads_and_changes_in_order(client, world_a):
    org = world_a.org
    patient = post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Watched"})
    client.get(f"/patients/{patient['id']}", headers=org.headers)
    client.patch(f"/patients/{patient['id']}", json={"phone": "555"}, headers=org.headers)
    client.get(f"/patients/{patient['id']}", headers=org.headers)
    path = f"/patients/{patient['id']}/access-log"
    entries, cursor, pages = [], None, 0
    query = {"updatedSince": patient["created_at"], "pageSize": 1}
    while True:
        page = sync(client, org, path, **({"cursor": cursor, "pageSize": 1} if cursor else query)).json()["data"]
        entries += page["entries"]
        cursor, pages = page["next_cursor"], pages + 1
        if not page["has_more"]:
            break
    assert [(e["kind"], e["action"]) for e in entries] == [("change", "create"), ("read", "get"),
                                                            ("change", "update"), ("read", "get")]
    assert pages == 5  # four full pages, then an empty one that says the sync is done
    later = sync(client, org, path, cursor=cursor).json()["data"]
    assert later["entries"] == [] and later["total"] == 0

"""HTTP conventions generic clients reach for: Location on every 201, RFC 8288 Link on every list."""
from __future__ import annotations

import re

import pytest

from tests.factories import NAMES, RESOURCES, as_read, post

_LINK = re.compile(r'<([^>]*)>; rel="(\w+)"')


def links(response) -> dict[str, str]:
    return {rel: target for target, rel in _LINK.findall(response.headers["link"])}


@pytest.mark.parametrize("name", NAMES)
def test_every_create_says_where_the_record_lives(client, world_a, name):
    path, _, create, _, _, _ = RESOURCES[name]
    org = world_a.org
    response = client.post(path, json=create(world_a), headers=org.headers)
    assert response.status_code == 201
    assert response.headers["location"] == f"{path}/{response.json()['data']['id']}"
    read = client.get(response.headers["location"], headers=org.headers).json()
    assert read["data"] == as_read(name, response.json()["data"])


def test_a_payment_says_where_it_lives_under_its_loan(client, world_a):
    org = world_a.org
    response = client.post(f"/loans/{world_a.loan_id}/payments", json={"amount": 10}, headers=org.headers)
    assert response.headers["location"] == f"/loans/{world_a.loan_id}/payments/{response.json()['data']['id']}"
    assert client.get(response.headers["location"], headers=org.headers).status_code == 200


def test_list_pages_link_to_first_prev_next_and_last(client, world_a):
    org = world_a.org
    for n in range(5):
        post(client, org, "/patients", {"branch_id": org.branch_id, "name": f"Linked {n}", "status": "inactive"})
    # Filters and embeds ride along on every link; only the page moves.
    middle = client.get("/patients?status=inactive&embed=branch&page=2&pageSize=2", headers=org.headers)
    query = "status=inactive&embed=branch&page={}&pageSize=2"
    assert links(middle) == {"first": "/patients?" + query.format(1), "next": "/patients?" + query.format(3),
                             "prev": "/patients?" + query.format(1), "last": "/patients?" + query.format(3)}
    assert set(links(client.get("/patients?status=inactive&pageSize=2", headers=org.headers))) == {"first", "next", "last"}
    last = client.get("/patients?status=inactive&pageSize=2&page=3", headers=org.headers)
    assert set(links(last)) == {"first", "prev", "last"} and len(last.json()["data"]["patients"]) == 1
    # Following next until it is gone visits every row once.
    seen, url = [], "/patients?status=inactive&pageSize=3"
    while url:
        page = client.get(url, headers=org.headers)
        seen += [row["id"] for row in page.json()["data"]["patients"]]
        url = links(page).get("next")
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize("path", ["/branches", "/audit-logs", "/community/posts"])
def test_other_lists_link_too(client, world_a, path):
    response = client.get(path, headers=world_a.org.headers)
    assert response.status_code == 200 and {"first", "last"} <= set(links(response))


def test_an_empty_list_has_one_page(client, world_a):
    response = client.get(f"/loans/{world_a.loan_id}/payments", headers=world_a.org.headers)
    assert links(response) == {"first": f"/loans/{world_a.loan_id}/payments?page=1&pageSize=20",
                               "last": f"/loans/{world_a.loan_id}/payments?page=1&pageSize=20"}

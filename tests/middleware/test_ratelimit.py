"""Rate limits: every request counts, per user or per IP, stricter on login, shared through Redis."""
import socket
import uuid

import httpx
import pytest

from tests.conftest import PASSWORD, error_of, spawn_server


@pytest.fixture
def limited(app_with):
    return app_with(rate_limit_enabled=True, rate_limit_default="5/minute", rate_limit_login="3/minute",
                    rate_limit_login_account="2/minute")


def test_sixth_request_is_429_in_the_error_format(limited):
    client = limited.test_client(client=("10.1.0.1", 1000))
    statuses = [client.get("/no-such-route").status_code for _ in range(5)]
    assert statuses == [404] * 5  # refused by routing, still counted
    refused = client.get("/patients")
    assert refused.status_code == 429
    assert error_of(refused)["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Policy"] == '"default";q=5;w=60'
    assert refused.headers["RateLimit"].startswith('"default";r=0;t=')


def test_headers_count_down(limited):
    client = limited.test_client(client=("10.1.0.2", 1000))
    first = client.get("/patients")
    second = client.get("/patients")
    assert first.status_code == 401  # no token: limited per IP, and a 401 counts
    assert first.headers["RateLimit"].startswith('"default";r=4;')
    assert second.headers["RateLimit"].startswith('"default";r=3;')


def test_users_are_limited_separately_from_their_ip(limited, make_org):
    org_a, org_b = make_org(), make_org()
    client = limited.test_client(client=("10.1.0.3", 1000))
    for _ in range(5):
        assert client.get("/patients", headers=org_a.headers).status_code == 200
    assert client.get("/patients", headers=org_a.headers).status_code == 429
    assert client.get("/patients", headers=org_b.headers).status_code == 200
    assert client.get("/patients").status_code == 401  # the IP itself still has its own budget


def test_probes_are_never_limited(limited):
    client = limited.test_client(client=("10.1.0.4", 1000))
    for _ in range(10):
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_login_is_stricter_per_ip(limited):
    client = limited.test_client(client=("10.1.0.5", 1000))
    statuses = [client.post("/auth/login", json={"email": f"{uuid.uuid4().hex}@example.com",
                                                 "password": "whatever1"}).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


def test_failed_logins_lock_the_account_across_ips(limited, make_org):
    org = make_org()
    bad = {"email": org.admin_email, "password": "not the password"}
    for i in range(2):
        client = limited.test_client(client=(f"10.2.0.{i}", 1000))
        assert client.post("/auth/login", json=bad).status_code == 401
    fresh_ip = limited.test_client(client=("10.2.0.99", 1000))
    locked = fresh_ip.post("/auth/login", json={"email": org.admin_email, "password": PASSWORD})
    assert locked.status_code == 429 and error_of(locked)["code"] == "RATE_LIMITED"
    assert "Retry-After" in locked.headers


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379 (development and CI machines have one)")
def test_two_processes_share_the_limit_through_redis(database_url, make_org):
    org = make_org()  # a fresh user, so no earlier run's counters apply
    env = {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_DEFAULT": "10/minute",
           "RATE_LIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0"}
    servers = [spawn_server(database_url, **env) for _ in range(2)]
    try:
        statuses = []
        for i in range(16):
            base = servers[i % 2][1]
            statuses.append(httpx.get(f"{base}/patients", headers=org.headers).status_code)
        assert statuses.count(200) == 10 and statuses.count(429) == 6
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=30)

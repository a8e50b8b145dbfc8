"""Rate limits: every request counts, per user or per IP, stricter on login, shared through Redis."""
import socket
import uuid

import httpx
import pytest
import sqlalchemy as sa

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


def _login(client, email, password):
    return client.post("/auth/login", json={"email": email, "password": password})


def _failures(engine, staff_id) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE user_id = :id AND action = 'login_failed'"),
                            {"id": staff_id}).scalar_one()


def test_failed_logins_stop_the_guessing_address_not_the_owner(limited, make_org):
    org = make_org()
    guesser = limited.test_client(client=("10.2.0.1", 1000))
    assert [_login(guesser, org.admin_email, "not the password").status_code for _ in range(2)] == [401, 401]
    stopped = _login(guesser, org.admin_email, PASSWORD)  # even the right password, from there
    assert stopped.status_code == 429 and error_of(stopped)["code"] == "RATE_LIMITED"
    assert 1 <= int(stopped.headers["Retry-After"]) <= 60
    assert "password" not in error_of(stopped)["message"].lower()
    owner = limited.test_client(client=("10.2.0.99", 1000))
    assert _login(owner, org.admin_email, PASSWORD).status_code == 200


def test_a_right_password_wipes_the_addresses_failures(limited, make_org):
    org = make_org()
    client = limited.test_client(client=("10.2.1.1", 1000))
    assert _login(client, org.admin_email, "not the password").status_code == 401
    assert _login(client, org.admin_email, PASSWORD).status_code == 200
    assert _login(client, org.admin_email, "a typo").status_code == 401  # one failure again, not two


def test_a_look_alike_address_shares_the_accounts_budget(limited, make_org):
    org = make_org()
    full_width = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and c != "@" else c for c in org.admin_email)
    client = limited.test_client(client=("10.2.2.1", 1000))
    assert _login(client, org.admin_email.upper(), "not the password").status_code == 401
    assert _login(client, full_width, "not the password").status_code == 401
    assert _login(client, org.admin_email, PASSWORD).status_code == 429  # two failures of one account


@pytest.fixture
def ceiling(app_with):
    """A ceiling of 10 failures an hour (the last one kept for the member's own addresses), 2 per address."""
    return app_with(rate_limit_enabled=True, rate_limit_login="100/minute", rate_limit_login_account="2/minute",
                    rate_limit_login_account_ceiling="10/hour")


def test_the_ceiling_bounds_guesses_from_many_addresses_and_keeps_the_owner_in(ceiling, make_org, engine):
    org = make_org()
    home = ceiling.test_client(client=("10.3.0.1", 1000))
    assert _login(home, org.admin_email, PASSWORD).status_code == 200  # the owner's own address
    statuses = []
    for i in range(10):  # ten addresses, two guesses each: 20 tries
        guesser = ceiling.test_client(client=(f"10.3.1.{i}", 1000))
        statuses += [_login(guesser, org.admin_email, "guess").status_code for _ in range(2)]
    assert statuses.count(401) == 9 and statuses.count(429) == 11  # strangers stop at nine tenths
    assert _failures(engine, org.admin_id) == 9
    newcomer = ceiling.test_client(client=("10.3.2.1", 1000))
    refused = _login(newcomer, org.admin_email, PASSWORD)  # a new address: it could be one more guess
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 60
    assert _login(home, org.admin_email, PASSWORD).status_code == 200  # the owner is not kept out


def test_the_last_tenth_is_the_owners_addresses_and_then_nobodys(ceiling, make_org, engine):
    org = make_org()
    home = ceiling.test_client(client=("10.4.0.1", 1000))
    assert _login(home, org.admin_email, PASSWORD).status_code == 200
    for i in range(5):
        guesser = ceiling.test_client(client=(f"10.4.1.{i}", 1000))
        [_login(guesser, org.admin_email, "guess") for _ in range(2)]
    assert _failures(engine, org.admin_id) == 9
    assert _login(home, org.admin_email, "a typo at home").status_code == 401  # the tenth failure
    assert _login(home, org.admin_email, PASSWORD).status_code == 429  # 100% used: nobody for the hour
    assert _failures(engine, org.admin_id) == 10


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


@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379 (development and CI machines have one)")
def test_an_attack_from_eight_addresses_on_two_instances_does_not_keep_the_owner_out(database_url, make_org, engine):
    """Two `clinic-api serve` behind a proxy (X-Forwarded-For from TRUSTED_PROXIES), limits in Redis.
    The ceiling is lowered to 20 an hour so that the attack reaches it within the test."""
    import random
    import threading
    import time

    org = make_org()
    net = f"10.{random.randrange(256)}.{random.randrange(256)}"  # Redis keeps counters between runs
    owner_ip, attackers = f"{net}.1", [f"{net}.{100 + i}" for i in range(8)]
    env = {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0",
           "RATE_LIMIT_LOGIN_ACCOUNT_CEILING": "20/hour", "TRUSTED_PROXIES": "127.0.0.1",
           # Two workers with 4 handler threads each (the default) per instance: up to 16 guesses in
           # flight at once, and still not one beyond the strangers' nine tenths.
           "WEB_CONCURRENCY": "2", "WEBHOOK_WORKER": "false"}
    servers = [spawn_server(database_url, production=True, **env) for _ in range(2)]
    bases = [base for _, base in servers]

    def attempt(base, ip, password):
        return httpx.post(f"{base}/auth/login", json={"email": org.admin_email, "password": password},
                          headers={"X-Forwarded-For": ip}, timeout=30)

    stop, answers = threading.Event(), []

    def attack(ip):
        for n in range(10_000):
            if stop.is_set():
                return
            answers.append(attempt(bases[n % 2], ip, f"guess {n}").status_code)
            time.sleep(0.05)

    try:
        assert attempt(bases[0], owner_ip, PASSWORD).status_code == 200  # the owner's usual address
        started = time.monotonic()
        threads = [threading.Thread(target=attack, args=(ip,)) for ip in attackers]
        for thread in threads:
            thread.start()
        while _failures(engine, org.admin_id) < 18 and time.monotonic() - started < 45:
            time.sleep(0.25)  # until the strangers' nine tenths of the ceiling are used
        assert _failures(engine, org.admin_id) >= 18, "the attack did not reach the ceiling"
        owner = attempt(bases[1], owner_ip, PASSWORD)
        owner_in = time.monotonic() - started
        stranger = attempt(bases[0], f"{net}.250", PASSWORD)  # a new address, even with the password
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        stop.set()
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=30)
    print(f"owner in after {owner_in:.2f} s; failures {_failures(engine, org.admin_id)}; answers {len(answers)}")
    assert owner.status_code == 200, owner.text
    assert owner_in < 60, f"the owner got in after {owner_in:.1f} s"
    assert stranger.status_code == 429
    # Both kinds of answer were seen; how many of each depends on the machine's speed, not the limit.
    assert answers.count(429) > 0 and answers.count(401) > 0
    # Guesses stay bounded at nine tenths of the ceiling exactly: each takes its slot before its
    # password is checked, so the attempts in flight when it was reached could not pass it.
    assert _failures(engine, org.admin_id) == 18


def test_two_workers_enforce_the_documented_limits_in_aggregate_without_redis(database_url, make_org):
    """`clinic-api serve` with two workers and the default storage: 100/min per user, 10/min login
    per IP and 5 failed logins per account, counted once for the instance (each worker used to
    count its own: 164-200 requests got through)."""
    from concurrent.futures import ThreadPoolExecutor

    org = make_org()
    process, base = spawn_server(database_url, production=True, WEB_CONCURRENCY="2", RATE_LIMIT_ENABLED="true",
                                 WEBHOOK_WORKER="false")
    try:
        def get(_):  # a new connection each: the kernel hands them to either worker
            return httpx.get(f"{base}/patients?pageSize=1", headers=org.headers, timeout=30).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(get, range(130)))
        assert (statuses.count(200), statuses.count(429)) == (100, 30), statuses

        def login(email, password="not the password"):
            return httpx.post(f"{base}/auth/login", json={"email": email, "password": password}, timeout=30).status_code

        # The account's 5 failures, then its lock; the IP's 10 logins a minute count them all.
        logins = [login(org.admin_email) for _ in range(7)]
        logins += [login(f"{uuid.uuid4().hex}@example.com") for _ in range(5)]
        assert logins == [401] * 5 + [429] * 2 + [401] * 3 + [429] * 2
    finally:
        process.terminate()
        process.wait(timeout=40)

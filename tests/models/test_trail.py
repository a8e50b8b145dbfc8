"""The trails as a whole: seals that catch a superuser's edit or deletion, retention by partition."""
import threading

import pytest
import sqlalchemy as sa

import cli


@pytest.fixture
def audit_cli(monkeypatch, database_url, owner_url, capsys):
    """``clinic-api audit ...`` against the test database, with the deployment's two roles;
    returns (exit status, output)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DATABASE_MIGRATION_URL", owner_url)
    monkeypatch.setenv("APP_ENV", "test")

    def run(*args):
        status = cli.main(["audit", *args])
        return status, capsys.readouterr().out

    return run


def busy_org(client, make_org):
    """An organization with a few changes and reads in its trails."""
    org = make_org()
    patient = client.post("/patients", json={"branch_id": org.branch_id, "name": "Sealed"}, headers=org.headers)
    patient_id = patient.json()["data"]["id"]
    client.patch(f"/patients/{patient_id}", json={"phone": "555-0199"}, headers=org.headers)
    client.get(f"/patients/{patient_id}", headers=org.headers)
    client.get("/patients", headers=org.headers)
    return org


def seqs_of(engine, trail, org_id):
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT seq FROM {trail} WHERE org_id = :org ORDER BY seq"),
                            {"org": org_id}).scalars().all()


def as_superuser(owner_engine, statement, params):
    """What an owner or superuser can do: switch the append-only triggers off and change a row."""
    with owner_engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text(statement), params)


def test_an_untouched_trail_verifies(client, make_org, audit_cli):
    org = busy_org(client, make_org)
    status, out = audit_cli("seal", "--settle", "0")
    assert status == 0 and '"blocks_sealed"' in out
    verified = audit_cli("verify", "--org", org.org_id)
    assert verified == (0, "verified: every seal matches its rows and the chains are unbroken\n"), verified[1]
    seals = client.get("/audit-seals", headers=org.headers).json()["data"]["seals"]
    assert {s["trail"] for s in seals} == {"audit_log", "access_log"} and all(len(s["hash"]) == 64 for s in seals)


@pytest.mark.parametrize("trail", ["audit_log", "access_log"])
def test_verify_names_the_row_a_superuser_edited_then_the_one_deleted(client, make_org, engine, owner_engine,
                                                                      audit_cli, trail):
    org = busy_org(client, make_org)
    audit_cli("seal", "--settle", "0")
    first, second, *_ = seqs_of(engine, trail, org.org_id)
    as_superuser(owner_engine, f"UPDATE {trail} SET user_agent = 'innocent' WHERE seq = :seq", {"seq": second})
    status, out = audit_cli("verify", "--org", org.org_id)
    assert status == 1 and f"TAMPERED: {trail} of organization {org.org_id}: row seq {second} was edited" in out
    as_superuser(owner_engine, f"DELETE FROM {trail} WHERE seq = :seq", {"seq": first})
    status, out = audit_cli("verify", "--org", org.org_id)
    assert status == 1 and f"row seq {first} was deleted" in out


def test_verify_names_a_row_slipped_in_below_a_seal_and_a_rewritten_seal(client, make_org, engine, owner_engine,
                                                                          audit_cli):
    org = busy_org(client, make_org)
    audit_cli("seal", "--settle", "0")
    first = seqs_of(engine, "audit_log", org.org_id)[0]
    with engine.begin() as conn:  # an insert needs no trigger switched off: a back-dated row
        conn.execute(sa.text("INSERT INTO audit_log (org_id, action, resource, seq) "
                             "VALUES (:org, 'delete', 'patient', :seq)"), {"org": org.org_id, "seq": first - 1 if first > 1 else 0})
    status, out = audit_cli("verify", "--org", org.org_id)
    assert status == 1 and "was inserted out of order" in out
    other = busy_org(client, make_org)
    audit_cli("seal", "--settle", "0")
    as_superuser(owner_engine, "UPDATE audit_seal SET hash = sha256(hash) WHERE org_id = :org", {"org": other.org_id})
    status, out = audit_cli("verify", "--org", other.org_id)
    assert status == 1 and "a seal was changed" in out


def test_rows_too_young_wait_for_the_next_seal(client, make_org, engine, audit_cli):
    org = busy_org(client, make_org)
    audit_cli("seal", "--settle", "3600")
    with engine.connect() as conn:
        sealed = conn.execute(sa.text("SELECT count(*) FROM audit_seal WHERE org_id = :org"), {"org": org.org_id}).scalar()
    assert sealed == 0
    assert audit_cli("verify", "--org", org.org_id)[0] == 0


def test_sealing_holds_no_lock_a_request_waits_on(client, make_org, engine):
    from models import trail

    org = busy_org(client, make_org)
    with engine.begin() as conn:  # a seal in progress: its advisory lock is held until commit
        trail.seal(conn, settle_seconds=0)
        done = []
        worker = threading.Thread(target=lambda: done.append(
            client.post("/patients", json={"branch_id": org.branch_id, "name": "During seal"}, headers=org.headers)
            .status_code))
        worker.start()
        worker.join(timeout=10)
        assert done == [201]


def test_prune_drops_whole_months_past_retention_and_nothing_else(client, make_org, engine, owner_engine, audit_cli,
                                                                  monkeypatch):
    org = make_org()
    recent = len(seqs_of(engine, "audit_log", org.org_id))  # its creation and its admin's login
    with owner_engine.begin() as conn:
        conn.execute(sa.text("SELECT audit_create_month_partitions('audit_log', DATE '2019-03-01', 1)"))
        conn.execute(sa.text("INSERT INTO audit_log (org_id, action, resource, created_at) "
                             "VALUES (:org, 'create', 'patient', TIMESTAMPTZ '2019-03-15 12:00:00+00')"),
                     {"org": org.org_id})
    audit_cli("seal", "--settle", "0")
    monkeypatch.setenv("AUDIT_RETENTION_MONTHS", "72")
    status, out = audit_cli("prune")
    assert status == 0 and "audit_log_y2019m03" in out
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE org_id = :org"), {"org": org.org_id}).scalar()
        months = conn.execute(sa.text("SELECT count(*) FROM pg_class WHERE relname LIKE 'access_log_y%'")).scalar()
    assert left == recent  # this month's rows: kept
    assert months >= 13  # the months ahead are ready
    assert audit_cli("verify", "--org", org.org_id)[0] == 0  # a pruned month is not a deletion
    assert "audit_log_y2019m03" not in audit_cli("prune")[1]


def test_seals_are_append_only_even_for_their_owner(owner_engine):
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), owner_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_seal"))

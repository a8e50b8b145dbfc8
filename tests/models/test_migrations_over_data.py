"""Every migration applies over a database that holds data: rows in every table older than it,
written through the engine as the API writes them, survive it unchanged."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import sqlalchemy as sa

import state
from models import accounts, database
from tests.conftest import PASSWORD
from tests.factories import RESOURCES, build_world, make_row

# Tables whose rows the seed writes, and the migration that creates each.
SEEDED = {"organization": "0002", "branch": "0003", "staff": "0004", "patient": "0005", "supplier": "0006",
          "appointment": "0007", "prescription": "0008", "transaction": "0009", "inventory_item": "0010",
          "loan": "0011", "community_post": "0012", "financial_report": "0013", "audit_log": "0016"}


def _seed(org_ids) -> None:
    """One row of every resource, through the engine (no HTTP): the rows a clinic would have."""
    org = SimpleNamespace(**org_ids)
    world = build_world(org)
    for name, sample in RESOURCES.items():
        if name not in ("staff", "patient", "supplier", "loan"):  # build_world made those
            make_row(org, name, sample.create(world))


def _counts(url) -> dict[str, int]:
    engine = sa.create_engine(database.sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            present = set(sa.inspect(conn).get_table_names())
            return {t: conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in SEEDED if t in present}
    finally:
        engine.dispose()


def test_each_migration_applies_over_rows_it_does_not_own(server_url, settings):
    from app import create_app

    name = f"clinic_over_data_{uuid.uuid4().hex[:10]}"
    database.ensure_database(server_url, name)
    url = database.with_database(server_url, name)
    try:
        database.migrate(url)
        app = create_app(settings, database_url=url)
        with state.bound(app.state):
            ids = accounts.create_organization(name="Seeded", branch_name="Main", admin_email=f"seed-{name}@example.com",
                                               admin_password=PASSWORD)
            _seed(ids)
        app.state.pools.dispose()
        seeded = _counts(url)
        assert all(seeded[t] > 0 for t in SEEDED), seeded
        ids_newest_first = sorted((p.stem for p in database.MIGRATIONS_DIR.glob("*.sql")
                                   if not p.stem.endswith(".rollback")), reverse=True)
        for steps, migration in enumerate(ids_newest_first, start=1):
            if migration[:4] <= max(SEEDED.values()):
                break  # older migrations create the seeded tables themselves
            # Undo the newest `steps` migrations, then apply them again over the seeded rows.
            assert database.rollback(url, steps) == steps
            assert database.migrate(url) == steps, migration
            assert _counts(url) == seeded, f"rows changed when {migration} was applied over them"
    finally:
        database.drop_database(server_url, name)

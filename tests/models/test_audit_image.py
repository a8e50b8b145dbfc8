"""An audit image reads the same whichever path wrote it.

Updates, deletes and hooked creates render their images in Python (``database._json_dumps``, the
pools' JSON serializer); an unhooked create has PostgreSQL render its image inside its own
statement (``audit.image_in_sql``). Each column type the tables use is compared between the two,
as stored JSONB text, over values where the renderings could part: instants with no or trailing
zero fractions, money with trailing zeros, quoting, nulls.
"""
import datetime as dt
import json
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from models import audit, database, tables

UTC = dt.timezone.utc


def _samples(kind) -> list:
    """Values worth comparing for one column type; None is added for every type."""
    if isinstance(kind, postgresql.TIMESTAMP):
        return [dt.datetime(2026, 11, 27, 9, 30, tzinfo=UTC), dt.datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),
                dt.datetime(2026, 1, 2, 3, 4, 5, 5, tzinfo=UTC), dt.datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    if isinstance(kind, sa.Numeric):
        whole = 10 ** (kind.precision - kind.scale) - 1
        return [Decimal("12.50"), Decimal("0.10"), Decimal("-3.00"), Decimal("0.07"),
                Decimal(whole) + Decimal("0.99"), Decimal(whole), Decimal(0)]
    if isinstance(kind, sa.Date):
        return [dt.date(2026, 11, 27), dt.date(999, 1, 2)]
    if isinstance(kind, sa.Boolean):
        return [True, False]
    if isinstance(kind, sa.Integer):
        return [0, -5, 2**31 - 1]
    if isinstance(kind, postgresql.UUID):
        return [str(uuid.uuid4())]
    if isinstance(kind, sa.ARRAY) and isinstance(kind.item_type, postgresql.UUID):
        return [[str(uuid.uuid4()), str(uuid.uuid4())], []]
    if isinstance(kind, sa.ARRAY):
        return [["a", 'quote " back \\ slash'], []]
    if isinstance(kind, postgresql.JSONB):
        # The API stores documents it parsed from JSON, so their numbers are in Python's form.
        return [{"lat": 51.5072, "tags": ["a", None], "n": 3, "deep": {"x": -0.1}}, [], "text"]
    if isinstance(kind, sa.CHAR):
        return ["a" * kind.length, "a"]
    if isinstance(kind, sa.String):  # Text and VARCHAR
        return [text[:kind.length] for text in ("plain", 'quote " back \\ slash', "ünïcode ☃ \n tab\t", "")]
    raise AssertionError(f"no samples for {kind!r}: add some, then see that the images still agree")


# The trail's own bookkeeping: never a record with an audit image.
NEVER_IMAGED = {"audit_seal"}


def _column_types() -> dict[str, sa.types.TypeEngine]:
    dialect = postgresql.dialect()
    return {str(column.type.compile(dialect)): column.type
            for table in tables.metadata.tables.values() if table.name not in NEVER_IMAGED for column in table.c}


def test_sql_and_python_write_the_same_image_for_every_column_type(engine):
    kinds = _column_types()
    probe = sa.Table("audit_image_probe", sa.MetaData(),
                     *[sa.Column(f"c{i}", kind) for i, kind in enumerate(kinds.values())],
                     prefixes=["TEMPORARY"])
    samples = [_samples(kind) + [None] for kind in kinds.values()]
    rows = [{f"c{i}": values[n % len(values)] for i, values in enumerate(samples)}
            for n in range(max(len(values) for values in samples))]
    with engine.connect() as conn:  # rolled back on close: the probe table goes with it
        probe.create(conn)
        conn.execute(probe.insert(), rows)
        stored = conn.execute(sa.select(sa.cast(audit.image_in_sql(probe.c), sa.Text).label("image"),
                                        *probe.c)).mappings().all()
        assert len(stored) == len(rows)
        for row in stored:
            values = {name: value for name, value in row.items() if name != "image"}
            from_python = conn.execute(sa.text("SELECT CAST(CAST(:image AS JSONB) AS TEXT)"),
                                       {"image": database._json_dumps(audit.scrub(values))}).scalar_one()
            assert row["image"] == from_python, sorted(kinds)
        assert set(json.loads(stored[0]["image"])) == {f"c{i}" for i in range(len(kinds))}


def test_a_created_patients_image_is_the_row_the_client_got(client, org_a, engine):
    created = client.post("/patients", headers=org_a.headers, json={
        "branch_id": org_a.branch_id, "name": "Image Check", "date_of_birth": "1990-02-03"}).json()["data"]
    with engine.connect() as conn:
        image = conn.execute(sa.text("SELECT after FROM audit_log WHERE resource_id = :id AND action = 'create'"),
                             {"id": created["id"]}).scalar_one()
    assert image == created

"""models/ must describe exactly the schema the migrations build."""
import re

import sqlalchemy as sa

from models.tables import metadata

YOYO_TABLES = {"_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock"}


def _default(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, sa.Computed):
        # PostgreSQL prints a generated column's expression with casts, every parenthesis and
        # upper-case function names.
        expression = re.sub(r"::[a-z ]+(\[\])?|[()\s]", "", str(value.sqltext)).lower()
        return f"generated {'stored' if value.persisted else 'virtual'}: {expression}"
    text = str(getattr(value, "arg", value))
    text = getattr(text, "text", text)
    return re.sub(r"::[a-z ]+(\[\])?", "", str(text)).strip()


def test_models_match_the_migrated_database(engine):
    reflected = sa.MetaData()
    with engine.connect() as conn:
        # A partition (audit_log_y2026m12...) is part of its table, not a table of the model.
        partitions = set(conn.execute(sa.text("SELECT relname FROM pg_class WHERE relispartition")).scalars())
    reflected.reflect(engine, only=lambda name, _: name not in partitions)
    assert set(reflected.tables) - YOYO_TABLES == set(metadata.tables)
    dialect = engine.dialect
    for name, model in metadata.tables.items():
        table = reflected.tables[name]
        assert [c.name for c in table.c] == [c.name for c in model.c], name
        for column in model.c:
            actual = table.c[column.name]
            where = f"{name}.{column.name}"
            assert actual.type.compile(dialect) == column.type.compile(dialect), where
            assert actual.nullable == column.nullable, where
            assert _default(actual.server_default) == _default(column.server_default), where
        assert {c.name for c in table.primary_key} == {c.name for c in model.primary_key}, name

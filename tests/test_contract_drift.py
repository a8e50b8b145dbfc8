"""The contract and the migrated schema agree, resource by resource.

For each resource: every column a client may see is a property of its spec schema and the other
way round; types, formats, nullability and string lengths match; create and update schemas offer
exactly the columns a client may write; a NOT NULL column without a default is required on create.
"""
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.dialects import postgresql

from config import ROOT
from models import contract
from models import resources as r

SPEC = yaml.safe_load((ROOT / "spec" / "openapi.yaml").read_text())
SCHEMAS = SPEC["components"]["schemas"]
# Each resource by its spec schema's name: patient -> Patient, inventory_item -> InventoryItem.
RESOURCES = {"".join(part.capitalize() for part in resource.name.split("_")): resource
             for resource in contract.derive(SPEC, r.ALL).values()}
# Filled in by the server when a create leaves them out (hooks or column defaults of the app).
DEFAULTED_BY_SERVER = {("Loan", "remaining_balance"), ("LoanPayment", "date"), ("Webhook", "secret")}


def resolve(schema: dict) -> dict:
    if "$ref" in schema:
        return resolve(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]])
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return {**resolve(schema["allOf"][0]), **{k: v for k, v in schema.items() if k != "allOf"}}
    return schema


def expected_type(column) -> tuple[str, str | None]:
    kind = column.type
    if isinstance(kind, postgresql.UUID):
        return "string", "uuid"
    if isinstance(kind, sa.DateTime):
        return "string", "date-time"
    if isinstance(kind, sa.Date):
        return "string", "date"
    if isinstance(kind, sa.Boolean):
        return "boolean", None
    if isinstance(kind, sa.Integer):
        return "integer", None
    if isinstance(kind, sa.Numeric):
        return "number", None
    if isinstance(kind, postgresql.JSONB):
        return "json", None
    if isinstance(kind, sa.ARRAY):
        return "array", None
    return "string", None


@pytest.mark.parametrize("name", list(RESOURCES))
def test_output_schema_matches_the_table(name):
    resource = RESOURCES[name]
    properties = {k: resolve(v) for k, v in SCHEMAS[name]["properties"].items()}
    columns = {c.name: c for c in resource.public_columns}
    embeds = set(resource.embeds)
    assert set(properties) - embeds == set(columns), name
    required = set(SCHEMAS[name].get("required", []))
    for column_name, column in columns.items():
        prop = properties[column_name]
        kind, fmt = expected_type(column)
        where = f"{name}.{column_name}"
        if kind in ("json", "array"):
            assert prop["type"] in ("object", "array"), where
        else:
            assert prop["type"] == kind, where
            assert prop.get("format") == fmt or (fmt is None and prop.get("format") in (None, "email", "uri")), where
        assert bool(prop.get("nullable")) == column.nullable, where
        if not column.nullable:
            assert column_name in required, where
        length = getattr(column.type, "length", None)
        if length and "maxLength" in prop:
            assert prop["maxLength"] == length, where
    assert not any(secret in properties for secret in ("password_hash", "refresh_token_hash"))


@pytest.mark.parametrize("name", [n for n in RESOURCES if f"{n}Create" in SCHEMAS])
def test_write_schemas_offer_exactly_the_writable_columns(name):
    resource = RESOURCES[name]
    create = SCHEMAS[f"{name}Create"]
    update = SCHEMAS[f"{name}Update"]
    assert create["additionalProperties"] is False and update["additionalProperties"] is False
    assert set(create["properties"]) - {"org_id"} == resource.create_fields, name
    assert set(update["properties"]) == resource.update_fields, name
    internal = {"id", "org_id", "created_at", "updated_at", "deleted_at", *(resource.parent or ())[:1]}
    assert resource.create_fields <= {c.name for c in resource.public_columns} - internal | resource.write_only, name
    table = resource.table
    for field, schema in create["properties"].items():
        column = table.c.get(field)
        if column is None or field == "org_id":  # org_id comes from the token
            continue
        prop = resolve(schema)
        length = getattr(column.type, "length", None)
        if length and "enum" in prop:
            assert all(len(value) <= length for value in prop["enum"]), f"{name}Create.{field}"
        elif length and prop.get("type") == "string":
            assert prop.get("maxLength") == length, f"{name}Create.{field}"
        if column.nullable:
            assert prop.get("nullable") is True or field not in create.get("required", []), f"{name}Create.{field}"
        elif column.server_default is None and (name, field) not in DEFAULTED_BY_SERVER:
            assert field in create.get("required", []), f"{name}Create.{field} is NOT NULL without default"

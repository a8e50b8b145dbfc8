"""SQLAlchemy Core tables that mirror the migrated schema in ``sql/``.

The migrations are the truth; ``tests/models/test_schema_drift.py`` reflects a freshly migrated
database and fails on any difference in tables, columns, types, nullability or defaults.
"""
from sqlalchemy import (
    ARRAY,
    BigInteger,
    CHAR,
    Boolean,
    Column,
    Computed,
    Date,
    Identity,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID

metadata = MetaData()

# Columns that never leave the server, whatever the resource or embed.
STAFF_SECRETS = frozenset({"password_hash"})
PATIENT_INTERNAL = frozenset({"search_text"})  # kept by PostgreSQL for search (sql/0019)


NOW = text("now()")
NEW_UUID = text("gen_random_uuid()")


def _id():
    return Column("id", UUID(as_uuid=False), primary_key=True, server_default=NEW_UUID)


def _org():
    return Column("org_id", UUID(as_uuid=False), nullable=False)


def _ref(name, nullable=False):
    return Column(name, UUID(as_uuid=False), nullable=nullable)


def _timestamps():
    return (
        Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=NOW),
        Column("updated_at", TIMESTAMP(timezone=True), nullable=False, server_default=NOW),
        Column("deleted_at", TIMESTAMP(timezone=True)),
    )


def _ts(name, nullable=True, default=None):
    return Column(name, TIMESTAMP(timezone=True), nullable=nullable, server_default=default)


def _money(name, nullable=True):
    return Column(name, Numeric(12, 2), nullable=nullable)


organization = Table(
    "organization", metadata,
    _id(),
    Column("name", String(100), nullable=False),
    *_timestamps(),
)

branch = Table(
    "branch", metadata,
    _id(), _org(),
    Column("name", String(100), nullable=False),
    Column("address", Text),
    Column("status", String(20), nullable=False, server_default=text("'active'")),
    Column("coordinates", JSONB),
    *_timestamps(),
)

staff = Table(
    "staff", metadata,
    _id(), _org(), _ref("branch_id"),
    Column("name", String(100), nullable=False),
    Column("email", String(100), nullable=False),
    Column("role", String(30), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("avatar", Text),
    *_timestamps(),
    # Every role the member holds, kept by PostgreSQL from user_role (sql/0020); never written here.
    Column("roles", postgresql.ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
)

patient = Table(
    "patient", metadata,
    _id(), _org(), _ref("branch_id"),
    Column("name", String(100), nullable=False),
    Column("email", String(100)),
    Column("phone", String(20)),
    Column("date_of_birth", Date),
    Column("gender", String(10)),
    Column("status", String(20), nullable=False, server_default=text("'active'")),
    Column("photo", Text),
    *_timestamps(),
    # What search matches (sql/0019): kept by PostgreSQL, never written or shown (PATIENT_INTERNAL).
    Column("search_text", Text, Computed(
        "lower(name || ' ' || coalesce(email, '') || ' ' || coalesce(phone, ''))", persisted=True)),
)

supplier = Table(
    "supplier", metadata,
    _id(), _org(),
    Column("name", String(100), nullable=False),
    Column("contact_name", String(100)),
    Column("email", String(100)),
    Column("phone", String(20)),
    Column("address", Text),
    Column("notes", Text),
    *_timestamps(),
)

appointment = Table(
    "appointment", metadata,
    _id(), _org(), _ref("patient_id"), _ref("staff_id"), _ref("branch_id"),
    Column("type", String(50)),
    _ts("date", nullable=False),
    Column("status", String(20), nullable=False, server_default=text("'scheduled'")),
    Column("notes", Text),
    *_timestamps(),
    Column("duration_minutes", Integer, nullable=False, server_default=text("30")),
)

prescription = Table(
    "prescription", metadata,
    _id(), _org(), _ref("patient_id"), _ref("staff_id"),
    Column("type", String(50), nullable=False),
    Column("data", JSONB, nullable=False),
    _ts("date", nullable=False),
    Column("notes", Text),
    *_timestamps(),
)

transaction = Table(
    "transaction", metadata,
    _id(), _org(), _ref("patient_id"), _ref("staff_id"),
    Column("description", Text),
    _money("amount", nullable=False),
    Column("type", String(20)),
    Column("method", String(20)),
    _ts("date", nullable=False),
    *_timestamps(),
)

inventory_item = Table(
    "inventory_item", metadata,
    _id(), _org(), _ref("branch_id"), _ref("supplier_id", nullable=True),
    Column("name", String(100), nullable=False),
    Column("sku", String(50), nullable=False),
    Column("category", String(50)),
    Column("quantity", Integer, nullable=False, server_default=text("0")),
    Column("reorder_point", Integer, nullable=False, server_default=text("0")),
    _money("price", nullable=False),
    Column("status", String(20), nullable=False, server_default=text("'in_stock'")),
    Column("is_custom", Boolean, nullable=False, server_default=text("false")),
    _ts("last_updated", nullable=False, default=NOW),
    *_timestamps(),
)

loan = Table(
    "loan", metadata,
    _id(), _org(),
    Column("lender", String(100), nullable=False),
    Column("loan_type", String(50)),
    _money("original_amount", nullable=False),
    _money("remaining_balance", nullable=False),
    Column("interest_rate", Numeric(5, 2)),
    Column("term", Integer),
    _ts("start_date", nullable=False),
    _ts("next_payment_date"),
    _money("monthly_payment"),
    Column("status", String(20), nullable=False, server_default=text("'current'")),
    Column("collateral", Text),
    Column("purpose", Text),
    Column("notes", Text),
    *_timestamps(),
)

loan_payment = Table(
    "loan_payment", metadata,
    _id(), _org(), _ref("loan_id"),
    _ts("date", nullable=False),
    _money("amount", nullable=False),
    _money("principal"),
    _money("interest"),
    *_timestamps(),
)

community_post = Table(
    "community_post", metadata,
    _id(), _org(), _ref("staff_id"),
    Column("title", String(200), nullable=False),
    Column("content", Text, nullable=False),
    Column("image", Text),
    Column("tags", JSONB),
    Column("likes", Integer, nullable=False, server_default=text("0")),
    *_timestamps(),
)

community_post_like = Table(
    "community_post_like", metadata,
    Column("org_id", UUID(as_uuid=False), primary_key=True),
    Column("post_id", UUID(as_uuid=False), primary_key=True),
    Column("staff_id", UUID(as_uuid=False), primary_key=True),
    _ts("created_at", nullable=False, default=NOW),
)

financial_report = Table(
    "financial_report", metadata,
    _id(), _org(),
    Column("type", String(50), nullable=False),
    Column("data", JSONB, nullable=False),
    _ts("period", nullable=False),
    *_timestamps(),
)

role = Table(
    "role", metadata,
    _id(),
    Column("name", String(50), nullable=False),
    Column("description", Text),
    Column("scopes", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
)

user_role = Table(
    "user_role", metadata,
    Column("user_id", UUID(as_uuid=False), primary_key=True),
    Column("role_id", UUID(as_uuid=False), primary_key=True),
    Column("org_id", UUID(as_uuid=False), primary_key=True),
)

session = Table(
    "session", metadata,
    _id(), _org(), _ref("user_id"), _ref("family_id"),
    Column("refresh_token_hash", Text, nullable=False),
    _ts("created_at", nullable=False, default=NOW),
    _ts("expires_at", nullable=False),
    Column("ip_address", String(45)),
    Column("user_agent", Text),
    Column("revoked", Boolean, nullable=False, server_default=text("false")),
    _ts("revoked_at"),
    _ref("replaced_by", nullable=True),
)

auth_session = Table(
    "auth_session", metadata,
    _id(), _org(), _ref("user_id"),
    _ts("created_at", nullable=False, default=NOW),
    _ts("last_used_at", nullable=False, default=NOW),
    Column("ip_address", String(45)),
    Column("user_agent", Text),
    _ts("ended_at"),
    Column("end_reason", String(30)),
)

audit_log = Table(
    "audit_log", metadata,
    # Partitioned by created_at (sql/0021), so the key holds it too.
    _id(), _org(), _ref("user_id", nullable=True),
    Column("action", String(50), nullable=False),
    Column("resource", String(50), nullable=False),
    _ref("resource_id", nullable=True),
    Column("before", JSONB),
    Column("after", JSONB),
    Column("ip_address", String(45)),
    Column("user_agent", Text),
    Column("request_id", String(100)),
    Column("created_at", TIMESTAMP(timezone=True), primary_key=True, server_default=NOW),
    # The order in which seals chain an organization's rows; PostgreSQL assigns it.
    Column("seq", BigInteger, nullable=False, server_default=text("nextval('audit_log_seq'::regclass)")),
)

# Who read which patients' records (sql/0021): one row per request that returned them. No key:
# written on the read path, it carries as little as it can.
access_log = Table(
    "access_log", metadata,
    Column("seq", BigInteger, nullable=False, server_default=text("nextval('access_log_seq'::regclass)")),
    _org(), _ref("user_id", nullable=True),
    Column("action", String(20), nullable=False),
    Column("resource", String(50), nullable=False),
    Column("patient_ids", postgresql.ARRAY(UUID(as_uuid=False)), nullable=False),
    Column("ip_address", String(45)),
    Column("user_agent", Text),
    Column("request_id", String(100)),
    _ts("created_at", nullable=False, default=NOW),
)

# Tamper-evidence seals of audit_log and access_log (sql/0022), and the months pruned from them.
audit_seal = Table(
    "audit_seal", metadata,
    Column("id", BigInteger, Identity(always=True, start=1, increment=1, minvalue=1, maxvalue=2**63 - 1,
                                     cycle=False, cache=1), primary_key=True),
    _org(),
    Column("trail", String(20), nullable=False),
    Column("month", Date, nullable=False),
    Column("seqs", postgresql.ARRAY(BigInteger), nullable=False),
    Column("digests", postgresql.ARRAY(postgresql.BYTEA), nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("previous_hash", postgresql.BYTEA),
    Column("hash", postgresql.BYTEA, nullable=False),
    _ts("sealed_at", nullable=False, default=NOW),
)

audit_pruned_month = Table(
    "audit_pruned_month", metadata,
    Column("trail", String(20), primary_key=True),
    Column("month", Date, primary_key=True),
    _ts("pruned_at", nullable=False, default=NOW),
)

idempotency_key = Table(
    "idempotency_key", metadata,
    Column("user_id", UUID(as_uuid=False), primary_key=True),
    Column("key", String(255), primary_key=True),
    _org(),
    Column("request_hash", CHAR(64), nullable=False),
    Column("response_status", Integer, nullable=False),
    Column("response_body", JSONB, nullable=False),
    _ts("created_at", nullable=False, default=NOW),
    _ts("expires_at", nullable=False),
)

webhook_subscription = Table(
    "webhook_subscription", metadata,
    _id(), _org(),
    Column("url", Text, nullable=False),
    Column("events", ARRAY(Text), nullable=False),
    Column("description", Text),
    Column("include", String(10), nullable=False, server_default=text("'ids'")),
    Column("status", String(20), nullable=False, server_default=text("'active'")),
    Column("secret", Text, nullable=False),
    Column("previous_secret", Text),
    _ts("previous_secret_expires_at"),
    _ts("failing_since"),
    *_timestamps(),
)

outbox_event = Table(
    "outbox_event", metadata,
    Column("id", BigInteger, primary_key=True, server_default=text("nextval('outbox_event_id_seq')")),
    _org(),
    Column("type", String(60), nullable=False),
    Column("resource", String(50), nullable=False),
    _ref("resource_id"),
    Column("record", JSONB, nullable=False),
    Column("changed", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    _ts("created_at", nullable=False, default=NOW),
)

webhook_delivery = Table(
    "webhook_delivery", metadata,
    _id(), _org(), _ref("subscription_id"),
    Column("event_id", BigInteger, nullable=False),
    Column("event_type", String(60), nullable=False),
    _ref("resource_id"),
    Column("status", String(20), nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    _ts("next_attempt_at", nullable=False, default=NOW),
    _ts("first_attempt_at"),
    _ts("last_attempt_at"),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    _ts("give_up_at", nullable=False, default=text("(now() + '24:00:00'::interval)")),
    _ts("delivered_at"),
    _ts("created_at", nullable=False, default=NOW),
    _ts("updated_at", nullable=False, default=NOW),
    # The delivery worker's lease (sql/0029): internal, never shown by the API.
    _ts("locked_until"),
    _ref("lease_token", nullable=True),
)

login_origin = Table(
    "login_origin", metadata,
    Column("staff_id", UUID(as_uuid=False), primary_key=True),
    Column("ip_address", String(45), primary_key=True),
    _org(),
    _ts("last_login_at", nullable=False, default=NOW),
)

staff_mfa = Table(
    "staff_mfa", metadata,
    Column("staff_id", UUID(as_uuid=False), primary_key=True),
    _org(),
    Column("totp_secret", Text, nullable=False),
    _ts("confirmed_at"),
    Column("last_used_step", BigInteger),
    _ts("created_at", nullable=False, default=NOW),
)

mfa_recovery_code = Table(
    "mfa_recovery_code", metadata,
    _id(), _org(), _ref("staff_id"),
    Column("code_hash", CHAR(64), nullable=False),
    _ts("used_at"),
    _ts("created_at", nullable=False, default=NOW),
)

mfa_challenge = Table(
    "mfa_challenge", metadata,
    _id(), _org(), _ref("staff_id"),
    Column("token_hash", CHAR(64), nullable=False),
    _ts("expires_at", nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    _ts("used_at"),
    _ts("created_at", nullable=False, default=NOW),
)

# Until when a delivery worker that has just found deliveries claims again: commits before then
# need not wake one (sql/0030). One row, internal.
webhook_worker_awake = Table(
    "webhook_worker_awake", metadata,
    Column("id", Boolean, primary_key=True, server_default=text("true")),
    _ts("awake_until", nullable=False),
    prefixes=["UNLOGGED"],
)

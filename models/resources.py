"""One descriptor per resource: everything that differs between them, and nothing else."""
from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

import sqlalchemy as sa
from sqlalchemy import func, select

import config

from errors import ApiError
from models import accounts, credentials, webhooks
from models import tables as t
from models.contract import like_pattern
from models.crud import Filter, Reference, Resource
from models.tenancy import same_org, scoped
from models.tables import PATIENT_INTERNAL, STAFF_SECRETS

CENT = Decimal("0.01")


# --- filter kinds of their own (the standard ones are in models/contract.py) -------------------

# search_text is lower-cased by PostgreSQL; lowering the pattern there too is what ILIKE does.
patient_search = Filter(lambda table, pattern: table.c.search_text.like(func.lower(pattern)),
                        like_pattern)

# At or below its reorder point, or (false) above it.
low_stock = Filter(lambda table, wanted: (table.c.quantity <= table.c.reorder_point) == wanted)


def _one_of(value) -> tuple:
    return ([value],)


has_tag = Filter(lambda table, tags: table.c.tags.contains(tags), _one_of)
has_role = Filter(lambda table, roles: table.c.roles.contains(roles), _one_of)


# --- references that must meet a rule ----------------------------------------------------------

def holding(scope: str) -> Reference:
    """A staff member of the organization granted a role that carries ``scope``."""
    def condition(member):
        return sa.exists().where(same_org(t.user_role, member), t.user_role.c.user_id == member.c.id,
                                 t.role.c.id == t.user_role.c.role_id, sa.literal(scope) == sa.any_(t.role.c.scopes))
    return Reference(t.staff, condition, f"a staff member of this organization who holds {scope}")


# --- hooks --------------------------------------------------------------------------------------

def _hash_password(values: dict) -> dict:
    if "password" in values:
        password = values.pop("password")
        credentials.check_new_password(password)
        values["password_hash"] = credentials.hash_password(password)
    return values


def _staff_before_create(conn, caller, values):
    # What PostgreSQL will keep there once the grant below exists (sql/0020), shown by this response.
    values["roles"] = [values["role"]]
    return _hash_password(values)


def _staff_after_create(conn, caller, row):
    accounts.grant_role(conn, caller.org_id, row["id"], row["role"])


def _staff_before_update(conn, caller, values, before):
    # Before the write, so that the row it returns lists the roles after the change.
    if values.get("role", before["role"]) != before["role"]:
        accounts.replace_primary_role(conn, caller, before["id"], before["role"], values["role"])
    if "password" in values:  # an admin's reset: whoever held the old password is out
        accounts.password_changed(conn, caller, before["id"])
    return _hash_password(values)


def _staff_after_delete(conn, caller, before):
    accounts.ensure_another_admin(conn, caller.org_id, before["id"])
    accounts.revoke_sessions_of(conn, caller.org_id, before["id"])


def _inventory_before_update(conn, caller, values, before):
    if "quantity" in values and values["quantity"] != before["quantity"]:
        values["last_updated"] = func.now()
    return values


def _loan_before_create(conn, caller, values):
    values.setdefault("remaining_balance", values["original_amount"])
    _check_balance(values["original_amount"], values["remaining_balance"])
    # A loan recorded with nothing left to pay was paid off; the status is never the client's word.
    values["status"] = "paid_off" if values["remaining_balance"] == 0 else "current"
    return values


def _loan_before_update(conn, caller, values, before):
    # The balance and the status are not in LoanUpdate: only payments and the loan actions move them.
    if {"remaining_balance", "status"} & set(values):
        raise ApiError("BUSINESS_RULE_VIOLATION", "a loan's balance and status move only through payments "
                       "and the loan's actions", field="remaining_balance")
    _check_balance(values.get("original_amount", before["original_amount"]), before["remaining_balance"])
    return values


def _check_balance(original, remaining):
    if remaining > original:
        raise ApiError("BUSINESS_RULE_VIOLATION", "remaining_balance cannot exceed original_amount",
                       field="remaining_balance")


def _locked_loan(conn, caller, loan_id):
    loan = t.loan
    # The row lock serializes concurrent payments on one loan: no update is ever lost.
    return conn.execute(
        select(loan).where(loan.c.id == loan_id, *scoped(loan, caller.org_id)).with_for_update()
    ).mappings().one()


def _move_balance(conn, loan_row, delta: Decimal) -> None:
    """Lower (delta > 0) or raise the remaining balance; zero means paid off."""
    if loan_row["status"] == "written_off":
        raise ApiError("BUSINESS_RULE_VIOLATION", "the loan was written off: its payments are final",
                       field="amount")
    remaining = loan_row["remaining_balance"] - delta
    if remaining < 0:
        raise ApiError("BUSINESS_RULE_VIOLATION",
                       f"the payment exceeds the remaining balance of {loan_row['remaining_balance']}",
                       field="amount")
    if remaining > loan_row["original_amount"]:
        remaining = loan_row["original_amount"]
    status = loan_row["status"]
    if remaining == 0:
        status = "paid_off"
    elif status == "paid_off":
        status = "current"
    conn.execute(
        t.loan.update().where(t.loan.c.id == loan_row["id"])
        .values(remaining_balance=remaining, status=status, updated_at=func.now())
    )


def _split(values: dict, loan_row) -> dict:
    """Principal and interest: as sent, or one month of interest at the yearly rate on the balance."""
    amount = values["amount"]
    principal, interest = values.get("principal"), values.get("interest")
    if principal is None and interest is None:
        rate = loan_row["interest_rate"] or Decimal(0)
        interest = min(amount, (loan_row["remaining_balance"] * rate / 1200).quantize(CENT, ROUND_HALF_UP))
        principal = amount - interest
    elif principal is None:
        principal = amount - interest
    elif interest is None:
        interest = amount - principal
    if principal < 0 or interest < 0 or principal + interest != amount:
        raise ApiError("BUSINESS_RULE_VIOLATION", "principal and interest must add up to the amount",
                       field="principal")
    return {**values, "principal": principal, "interest": interest}


def _payment_before_create(conn, caller, values):
    loan_row = _locked_loan(conn, caller, values["loan_id"])
    values = _split(values, loan_row)
    values.setdefault("date", func.now())
    _move_balance(conn, loan_row, values["amount"])
    return values


def _payment_before_update(conn, caller, values, before):
    if not {"amount", "principal", "interest"} & set(values):
        return values
    loan_row = _locked_loan(conn, caller, before["loan_id"])
    amount = values.get("amount", before["amount"])
    sent = {k: values[k] for k in ("principal", "interest") if k in values}
    if not sent:
        # A corrected amount is split as if it were recorded now, against the balance before it.
        restored = {**loan_row, "remaining_balance": loan_row["remaining_balance"] + before["amount"]}
        split = _split({"amount": amount}, restored)
    else:
        split = _split({"amount": amount, **sent}, loan_row)
    _move_balance(conn, loan_row, amount - before["amount"])
    return {**values, **split}


def _payment_after_delete(conn, caller, before):
    _move_balance(conn, _locked_loan(conn, caller, before["loan_id"]), -before["amount"])


def _appointment_before_create(conn, caller, values):
    values.setdefault("duration_minutes", config.current().appointment_default_minutes)
    return values


def write_off(conn, caller, loan_row):
    """The loan action that clears what is left without a payment (the audit row keeps the amount)."""
    if loan_row["remaining_balance"] == 0:
        raise ApiError("BUSINESS_RULE_VIOLATION", "the loan has no balance left to write off")
    return {"remaining_balance": 0, "status": "written_off"}


def change_standing(status: str):
    """The loan action that marks an open loan current, late or defaulted."""
    def change(conn, caller, loan_row):
        if loan_row["remaining_balance"] == 0:
            raise ApiError("BUSINESS_RULE_VIOLATION", f"the loan is {loan_row['status']}: its standing is final",
                           field="status")
        return None if loan_row["status"] == status else {"status": status}
    return change


def _post_before_create(conn, caller, values):
    values["staff_id"] = caller.user_id  # the author is whoever posts, never someone named in the body
    return values


def _only_author_or_admin(conn, caller, post, *_):
    if post["staff_id"] != caller.user_id and "admin" not in accounts.grants(conn, caller.org_id, caller.user_id)[0]:
        raise ApiError("NOT_AUTHOR", "Only the post's author or an admin may change or delete it")


def _post_before_update(conn, caller, values, before):
    _only_author_or_admin(conn, caller, before)
    return values


def like(conn, caller, post):
    """The caller's like, once: a second like by the same member changes nothing."""
    added = conn.execute(
        sa.dialects.postgresql.insert(t.community_post_like)
        .values(org_id=caller.org_id, post_id=post["id"], staff_id=caller.user_id)
        .on_conflict_do_nothing()
    )
    return {"likes": t.community_post.c.likes + 1} if added.rowcount == 1 else None


def unlike(conn, caller, post):
    """Take the caller's like back; nothing changes if there was none."""
    likes = t.community_post_like
    removed = conn.execute(
        likes.delete()
        .where(*scoped(likes, caller.org_id), likes.c.post_id == post["id"], likes.c.staff_id == caller.user_id)
    )
    return {"likes": func.greatest(t.community_post.c.likes - 1, 0)} if removed.rowcount == 1 else None


def _webhook_before_create(conn, caller, values):
    # A signing key of the server's making unless the client brought its own.
    values.setdefault("secret", webhooks.new_secret())
    return values


def _webhook_before_update(conn, caller, values, before):
    if "secret" in values:
        # The old key keeps signing alongside the new one, so receivers can switch without a gap.
        subscription = t.webhook_subscription
        values["previous_secret"] = subscription.c.secret
        values["previous_secret_expires_at"] = func.now() + dt.timedelta(seconds=config.current().webhook_retry_window_s)
    if values.get("status") == "active":
        values["failing_since"] = None  # resumed: the count of failing time starts again
    return values


# --- the events a resource emits besides <name>.created/.updated/.deleted -----------------------

def _appointment_events(action, before, after):
    cancelled = action == "updated" and after["status"] == "cancelled" and before["status"] != "cancelled"
    return ["appointment.cancelled"] if cancelled else []


def _payment_events(action, before, after):
    return ["loan_payment.recorded"] if action == "created" else []


def _inventory_events(action, before, after):
    def low(row):
        return row["quantity"] <= row["reorder_point"]
    return ["inventory_item.low_stock"] if action == "updated" and low(after) and not low(before) else []


# --- the resources ------------------------------------------------------------------------------
# Writable fields, filters and embeds come from the spec (models/contract.py).

PATIENTS = Resource(
    name="patient", plural="patients", table=t.patient, path="/patients",
    references={"branch_id": t.branch},
    filter_kinds={"patient_search": patient_search}, search_kinds=frozenset({"patient_search"}),
    hidden=PATIENT_INTERNAL,
    patient_column="id",
)

BRANCHES = Resource(name="branch", plural="branches", table=t.branch, path="/branches")

STAFF_MEMBERS = Resource(
    name="staff", plural="staff", table=t.staff, path="/staff",
    references={"branch_id": t.branch},
    filter_kinds={"has_role": has_role},
    hidden=STAFF_SECRETS, write_only=frozenset({"password"}),
    before_create=_staff_before_create, after_create=_staff_after_create,
    before_update=_staff_before_update, after_delete=_staff_after_delete,
)

SUPPLIERS = Resource(name="supplier", plural="suppliers", table=t.supplier, path="/suppliers")

APPOINTMENTS = Resource(
    name="appointment", plural="appointments", table=t.appointment, path="/appointments",
    references={"patient_id": t.patient, "staff_id": t.staff, "branch_id": t.branch},
    before_create=_appointment_before_create,
    patient_column="patient_id",
    also_emits=_appointment_events,
)

PRESCRIPTIONS = Resource(
    name="prescription", plural="prescriptions", table=t.prescription, path="/prescriptions",
    references={"patient_id": t.patient, "staff_id": holding("prescriptions:write")},
    patient_column="patient_id",
)

TRANSACTIONS = Resource(
    name="transaction", plural="transactions", table=t.transaction, path="/transactions",
    references={"patient_id": t.patient, "staff_id": holding("transactions:write")},
    patient_column="patient_id",
)

INVENTORY = Resource(
    name="inventory_item", plural="inventory", table=t.inventory_item, path="/inventory",
    references={"branch_id": t.branch, "supplier_id": t.supplier},
    filter_kinds={"low_stock": low_stock},
    before_update=_inventory_before_update,
    also_emits=_inventory_events,
)

LOANS = Resource(
    name="loan", plural="loans", table=t.loan, path="/loans",
    before_create=_loan_before_create, before_update=_loan_before_update,
)

LOAN_PAYMENTS = Resource(
    name="loan_payment", plural="payments", table=t.loan_payment, path="/loans/{id}/payments",
    parent=("loan_id", t.loan),
    before_create=_payment_before_create, before_update=_payment_before_update,
    after_delete=_payment_after_delete,
    also_emits=_payment_events,
)

COMMUNITY_POSTS = Resource(
    name="community_post", plural="posts", table=t.community_post, path="/community/posts",
    filter_kinds={"has_tag": has_tag},
    before_create=_post_before_create, before_update=_post_before_update,
    before_delete=_only_author_or_admin,
)

FINANCIAL_REPORTS = Resource(name="financial_report", plural="reports", table=t.financial_report,
                             path="/financial/reports")

AUDIT_LOGS = Resource(name="audit_log", plural="audit_logs", table=t.audit_log, path="/audit-logs",
                      emits_events=False)

WEBHOOKS = Resource(
    name="webhook", plural="webhooks", table=t.webhook_subscription, path="/webhooks",
    # The signing keys are shown once, by the operation that makes them (models/webhooks.py).
    hidden=frozenset({"secret", "previous_secret", "previous_secret_expires_at"}),
    # rotate_secret is no column: models/webhooks.change() turns it into a new secret.
    write_only=frozenset({"secret", "rotate_secret"}),
    before_create=_webhook_before_create,
    before_update=_webhook_before_update,
    emits_events=False,
)

WEBHOOK_DELIVERIES = Resource(
    name="webhook_delivery", plural="deliveries", table=t.webhook_delivery, path="/webhooks/{id}/deliveries",
    parent=("subscription_id", t.webhook_subscription),
    # The worker's lease says which worker holds a delivery until when: nothing a client acts on.
    hidden=frozenset({"locked_until", "lease_token"}),
    emits_events=False,
)

# Every resource the engine serves; create_app() completes each from the spec.
ALL = (PATIENTS, BRANCHES, STAFF_MEMBERS, SUPPLIERS, APPOINTMENTS, PRESCRIPTIONS, TRANSACTIONS, INVENTORY,
       LOANS, LOAN_PAYMENTS, COMMUNITY_POSTS, FINANCIAL_REPORTS, AUDIT_LOGS, WEBHOOKS, WEBHOOK_DELIVERIES)

"""Bench data, generated inside PostgreSQL with INSERT ... SELECT FROM generate_series.

Every id is derived from a counter (``md5('bench-patient-' || i)::uuid``), so rows of one table can
reference rows of another without any lookup, and every reference stays inside its organization by
construction: patient ``i`` belongs to organization ``i % 20 + 1`` and an appointment of
organization ``o`` only names patients ``o - 1 + 20 * j``, staff and branches of ``o``.

The secondary indexes and exclusion constraints of the two big tables are dropped before the load
and rebuilt afterwards from their own definitions (``pg_get_indexdef``/``pg_get_constraintdef``),
which is several times faster than maintaining a trigram GIN index row by row. Primary and unique
keys stay in place (foreign keys depend on them).

Appointments never overlap for one staff member (an exclusion constraint may forbid it): staff
member ``s`` gets its ``q``-th appointment in its own hour-long slot, eight a day.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg2

ORGS = 20
BRANCHES_PER_ORG = 5
STAFF_PER_ORG = 10
PASSWORD = "bench-password"

# The rare search term: ~5 patients of every organization carry this surname, whatever the size.
RARE_SURNAME = "Quixley"
# The common search term: part of 10 of the 80 surnames (and of a few first names).
COMMON_TERM = "son"

FIRST_NAMES = [
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William",
    "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Charles", "Karen", "Christopher", "Nancy", "Daniel", "Lisa", "Matthew", "Betty", "Anthony",
    "Margaret", "Mark", "Sandra", "Donald", "Ashley", "Steven", "Kimberly", "Paul", "Emily",
    "Andrew", "Donna", "Joshua", "Michelle", "Kenneth", "Carol", "Kevin", "Amanda", "Brian",
    "Dorothy", "George", "Melissa", "Edward", "Deborah", "Ronald", "Stephanie", "Timothy",
    "Rebecca", "Jason", "Sharon", "Jeffrey", "Laura", "Ryan", "Cynthia", "Jacob", "Kathleen",
    "Gary", "Amy", "Nicholas", "Angela", "Eric", "Shirley", "Jonathan", "Anna", "Madison",
    "Allison", "Noah", "Olivia", "Liam", "Emma", "Lucas", "Sofia", "Mateo", "Amira",
]
LAST_NAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gomez", "Phillips", "Evans", "Turner",
    "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris", "Morales",
    "Murphy", "Cook", "Rogers", "Gutierrez", "Ortiz", "Morgan", "Cooper", "Peterson", "Bailey",
    "Reed", "Kelly", "Howard", "Ramos", "Kim", "Cox", "Harrison", "Carson",
]
STAFF_ROLES = ["admin", "doctor", "doctor", "doctor", "nurse", "nurse", "nurse",
               "receptionist", "receptionist", "accountant"]

# Tables whose secondary indexes are rebuilt after the load.
REBUILT = ("patient", "appointment")


@dataclass
class Seeded:
    org_id: str            # the organization the load runs against (organization 1)
    branch_id: str         # its first branch (create-patient bodies name it)
    admin_email: str
    password: str
    patients: int
    appointments: int
    timings: dict          # step -> seconds


def org_uuid(n: int) -> str:
    return str(_md5_uuid(f"bench-org-{n}"))


def _md5_uuid(text: str):
    import hashlib
    import uuid

    return uuid.UUID(hashlib.md5(text.encode()).hexdigest())


def seed(url: str, *, patients: int, appointments: int | None = None, log=print) -> Seeded:
    """Fill a freshly migrated database; returns where the load should aim."""
    import bcrypt

    per_org = max(patients // ORGS, 1)
    patients = per_org * ORGS  # a whole number per organization keeps the arithmetic exact
    if appointments is None:
        appointments = patients // 5
    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    params = {
        "orgs": ORGS, "branches": BRANCHES_PER_ORG, "staff": STAFF_PER_ORG,
        "patients": patients, "per_org": per_org, "appointments": appointments,
        "first": FIRST_NAMES, "nf": len(FIRST_NAMES), "last": LAST_NAMES, "nl": len(LAST_NAMES),
        "rare": RARE_SURNAME, "rare_every": max(per_org // 5, 1), "roles": STAFF_ROLES,
        "hash": password_hash,
    }
    timings: dict[str, float] = {}
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SET synchronous_commit = off")
        cur.execute("SET maintenance_work_mem = '512MB'")
        cur.execute("SET work_mem = '256MB'")
        cur.execute("SELECT setseed(0.4242)")
        try:
            # The rows are consistent by construction; skipping the per-row foreign-key triggers
            # halves the load time. Needs a superuser; elsewhere the checks simply run.
            cur.execute("SET session_replication_role = replica")
        except psycopg2.Error:
            log("  seed: not a superuser, foreign keys are checked row by row (slower)")

        def step(name: str, sql: str):
            started = time.perf_counter()
            cur.execute(sql, params)
            timings[name] = round(time.perf_counter() - started, 2)
            log(f"  seed {name:<22} {timings[name]:6.2f}s")

        # Secondary indexes of the big tables: remember their definitions, drop, rebuild later.
        cur.execute(
            """
            SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
            FROM pg_index i
            JOIN pg_class t ON t.oid = i.indrelid
            WHERE t.relname = ANY(%s) AND t.relnamespace = 'public'::regnamespace
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
            """,
            (list(REBUILT),),
        )
        secondary = cur.fetchall()
        cur.execute(
            """
            SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
            FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
            WHERE c.contype = 'x' AND t.relname = ANY(%s) AND t.relnamespace = 'public'::regnamespace
            """,
            (list(REBUILT),),
        )
        exclusions = cur.fetchall()
        for table, name, _ in exclusions:
            cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _ in secondary:
            cur.execute(f"DROP INDEX {name}")

        conn.autocommit = False
        step("organizations+branches", """
            INSERT INTO organization (id, name)
            SELECT md5('bench-org-' || o)::uuid, 'Bench Clinic ' || o
            FROM generate_series(1, %(orgs)s) o;
            INSERT INTO branch (id, org_id, name, address)
            SELECT md5('bench-branch-' || o || '-' || b)::uuid, md5('bench-org-' || o)::uuid,
                   'Branch ' || b, b || ' Harbour Road'
            FROM generate_series(1, %(orgs)s) o, generate_series(1, %(branches)s) b;
        """)
        step("staff+roles", """
            INSERT INTO staff (id, org_id, branch_id, name, email, role, password_hash)
            SELECT md5('bench-staff-' || o || '-' || s)::uuid, md5('bench-org-' || o)::uuid,
                   md5('bench-branch-' || o || '-' || (1 + (s - 1) %% %(branches)s))::uuid,
                   CASE WHEN s = 1 THEN 'Bench Admin ' || o ELSE 'Staff Member ' || o || '-' || s END,
                   CASE WHEN s = 1 THEN 'admin@org' || o || '.bench.example'
                        ELSE 'staff' || s || '@org' || o || '.bench.example' END,
                   (%(roles)s::text[])[s], %(hash)s
            FROM generate_series(1, %(orgs)s) o, generate_series(1, %(staff)s) s;
            INSERT INTO user_role (user_id, role_id, org_id)
            SELECT md5('bench-staff-' || o || '-' || s)::uuid, r.id, md5('bench-org-' || o)::uuid
            FROM generate_series(1, %(orgs)s) o, generate_series(1, %(staff)s) s
            JOIN role r ON r.name = (%(roles)s::text[])[s];
        """)
        # Patient i: organization i % 20 + 1, per-organization index j = i / 20, branch j % 5 + 1.
        # The subquery is not flattened (volatile target list), so each row draws its name once.
        step("patients", """
            INSERT INTO patient (id, org_id, branch_id, name, email, phone, date_of_birth, gender,
                                 status, created_at, updated_at)
            SELECT md5('bench-patient-' || i)::uuid,
                   md5('bench-org-' || (i %% %(orgs)s + 1))::uuid,
                   md5('bench-branch-' || (i %% %(orgs)s + 1) || '-'
                       || ((i / %(orgs)s) %% %(branches)s + 1))::uuid,
                   fn || ' ' || ln,
                   lower(fn || '.' || ln) || i || '@mail.example',
                   '+1' || lpad(floor(random() * 1e10)::bigint::text, 10, '0'),
                   date '1940-01-01' + floor(random() * 29000)::int,
                   (ARRAY['female', 'male', 'female', 'male', 'other'])[1 + i %% 5],
                   CASE WHEN i %% 50 = 0 THEN 'inactive' ELSE 'active' END,
                   ts, ts
            FROM (
              SELECT i,
                     (%(first)s::text[])[1 + floor(random() * %(nf)s)::int] AS fn,
                     CASE WHEN (i / %(orgs)s) %% %(rare_every)s = 7 THEN %(rare)s
                          ELSE (%(last)s::text[])[1 + floor(random() * %(nl)s)::int] END AS ln,
                     now() - random() * interval '1095 days' AS ts
              FROM generate_series(0, %(patients)s - 1) i
            ) s
            -- In key order, the primary and unique indexes grow at their right edge instead of
            -- taking random inserts all over (several times faster once they outgrow the cache).
            ORDER BY 1;
        """)
        step("appointments", """
            INSERT INTO appointment (id, org_id, patient_id, staff_id, branch_id, type, date, status,
                                     notes, created_at, updated_at)
            SELECT md5('bench-appointment-' || k)::uuid,
                   md5('bench-org-' || o)::uuid,
                   md5('bench-patient-' || (o - 1 + %(orgs)s * j))::uuid,
                   md5('bench-staff-' || o || '-' || s)::uuid,
                   md5('bench-branch-' || o || '-' || b)::uuid,
                   (ARRAY['checkup', 'consultation', 'follow_up', 'vaccination'])[1 + k %% 4],
                   -- the q-th slot of staff member s: 8 one-hour slots a day from 08:00 UTC
                   date_trunc('day', now()) - interval '180 days' + (q / 8) * interval '1 day'
                     + interval '8 hours' + (q %% 8) * interval '1 hour',
                   (ARRAY['scheduled', 'confirmed', 'completed', 'completed', 'cancelled',
                          'no_show'])[1 + floor(random() * 6)::int],
                   CASE WHEN k %% 3 = 0 THEN 'Bring previous test results' END,
                   ts, ts
            FROM (
              -- within an organization staff members take turns; q counts the turns
              SELECT k, k %% %(orgs)s + 1 AS o,
                     floor(random() * %(per_org)s)::int AS j,
                     1 + (k / %(orgs)s) %% %(staff)s AS s,
                     (k / %(orgs)s) / %(staff)s AS q,
                     1 + floor(random() * %(branches)s)::int AS b,
                     now() - random() * interval '365 days' AS ts
              FROM generate_series(0, %(appointments)s - 1) k
            ) a
            ORDER BY 1;
        """)
        conn.commit()

        conn.autocommit = True
        started = time.perf_counter()
        rebuilt = [(name, definition) for name, definition in secondary]
        rebuilt += [(name, f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
                    for table, name, definition in exclusions]
        for name, definition in rebuilt:
            one = time.perf_counter()
            cur.execute(definition)
            if time.perf_counter() - one > 1:
                log(f"    index {name}: {time.perf_counter() - one:.1f}s")
        timings["indexes"] = round(time.perf_counter() - started, 2)
        log(f"  seed {'rebuild indexes':<22} {timings['indexes']:6.2f}s  ({len(secondary)} indexes, "
            f"{len(exclusions)} exclusion constraints)")
        started = time.perf_counter()
        # VACUUM sets hint bits and the visibility map now, so the first benchmark requests do not
        # pay for it; ANALYZE gives the planner the statistics of the real sizes.
        for table in ("organization", "branch", "staff", "user_role", "patient", "appointment"):
            cur.execute(f"VACUUM (ANALYZE) {table}")
        timings["vacuum_analyze"] = round(time.perf_counter() - started, 2)
        log(f"  seed {'vacuum+analyze':<22} {timings['vacuum_analyze']:6.2f}s")
    finally:
        conn.close()
    return Seeded(
        org_id=org_uuid(1),
        branch_id=str(_md5_uuid("bench-branch-1-1")),
        admin_email="admin@org1.bench.example",
        password=PASSWORD,
        patients=patients,
        appointments=appointments,
        timings=timings,
    )


def sample_patient_ids(url: str, org_id: str, limit: int = 10000) -> list[str]:
    """Random ids of one organization's live patients (the get-by-id scenario picks among them)."""
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT id FROM patient WHERE org_id = %s AND deleted_at IS NULL ORDER BY random() LIMIT %s",
            (org_id, limit),
        )
        return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def count_matches(url: str, org_id: str, term: str) -> int:
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT count(*) FROM patient WHERE org_id = %s AND deleted_at IS NULL"
            " AND (name || ' ' || coalesce(email, '') || ' ' || coalesce(phone, '')) ILIKE %s",
            (org_id, f"%{term}%"),
        )
        return cur.fetchone()[0]
    finally:
        conn.close()

"""The audit and access trails as a whole: monthly partitions and their retention, and the seals
that make an edited, deleted or slipped-in row detectable (``clinic-api audit prune|seal|verify``).

Nothing here runs on a request's path. Sealing takes a transaction-scoped advisory lock that only
another sealer waits on; requests keep inserting rows meanwhile (they are sealed next time).
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import func, select

from models.tables import audit_pruned_month, audit_seal
from models.tenancy import scoped

TRAILS = ("audit_log", "access_log")
MONTHS_AHEAD = 13  # partitions kept ready, so that a missed month of cron never lands rows in default
_SEAL_LOCK = 0x5EA1  # pg_advisory_xact_lock key: one sealer at a time


# --- partitions and retention -------------------------------------------------------------------

def _month_of(partition: str, trail: str) -> dt.date | None:
    """The month a partition named ``<trail>_yYYYYmMM`` holds (None for the default partition)."""
    suffix = partition[len(trail):]
    if len(suffix) != 9 or not suffix.startswith("_y") or suffix[6] != "m":
        return None
    return dt.date(int(suffix[2:6]), int(suffix[7:9]), 1)


def prepare_months(conn) -> int:
    """Create the partitions of the months ahead that are missing; returns how many were made."""
    return sum(conn.execute(sa.text("SELECT audit_create_month_partitions(CAST(:trail AS regclass), "
                                    "CAST(now() AS date), :months)"),
                            {"trail": trail, "months": MONTHS_AHEAD}).scalar_one() for trail in TRAILS)


def prune(conn, retention_months: int) -> list[str]:
    """Drop every monthly partition whose rows are all older than ``retention_months``; the only
    way audit rows ever leave the database. Returns the partitions dropped."""
    horizon = conn.execute(select(func.now() - func.make_interval(0, retention_months))).scalar_one()
    dropped = []
    for trail in TRAILS:
        partitions = conn.execute(sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:trail AS regclass) ORDER BY c.relname"), {"trail": trail}).scalars()
        for partition in list(partitions):
            month = _month_of(partition, trail)
            if month is None or _next_month(month) > horizon.date():
                continue
            conn.execute(sa.text(f'DROP TABLE "{partition}"'))  # the name was read from the catalog
            conn.execute(sa.dialects.postgresql.insert(audit_pruned_month)
                         .values(trail=trail, month=month).on_conflict_do_nothing())
            dropped.append(partition)
    return dropped


def _next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


# --- seals --------------------------------------------------------------------------------------

def _rows(trail: str, where: str = "") -> str:
    """Each row of a trail with its seq, org, UTC month and the SHA-256 of its JSONB text (the
    whole row: any column edited changes it)."""
    return (f"SELECT r.seq, CAST(r.org_id AS text), CAST(date_trunc('month', r.created_at AT TIME ZONE 'UTC') AS date) AS month, "
            f"sha256(convert_to(CAST(to_jsonb(r) AS text), 'UTF8')) AS digest FROM {trail} r {where} ORDER BY r.seq")


def _in_utc(conn) -> None:
    # to_jsonb writes an instant in the session's time zone: the digests must not depend on it.
    conn.execute(sa.text("SET LOCAL TIME ZONE 'UTC'"))


def block_hash(previous: bytes | None, trail: str, org_id: str, month: dt.date, seqs: list[int],
               digests: list[bytes]) -> bytes:
    """SHA-256 over the previous seal's hash and the block: what a copy kept outside can check."""
    chained = hashlib.sha256(previous or b"")
    chained.update(f"|{trail}|{org_id}|{month.isoformat()}|".encode())
    for seq, digest in zip(seqs, digests):
        chained.update(seq.to_bytes(8, "big") + bytes(digest))
    return chained.digest()


def seal(conn, *, settle_seconds: int) -> int:
    """Seal every row older than ``settle_seconds`` that no seal covers yet; returns the number
    of blocks written. Rows younger than that may still have transactions in flight below them
    (seq is taken at insert, rows are visible at commit), so they wait for the next run."""
    conn.execute(select(func.pg_advisory_xact_lock(_SEAL_LOCK)))
    _in_utc(conn)
    written = 0
    for trail in TRAILS:
        sealed_through = conn.execute(select(func.coalesce(func.max(audit_seal.c.last_seq), 0))
                                      .where(audit_seal.c.trail == trail)).scalar_one()
        # Up to just below the oldest row that is too young: every row sealed is settled.
        young = conn.execute(sa.text(f"SELECT min(seq) FROM {trail} WHERE seq > :after AND "
                                     "created_at >= now() - make_interval(secs => :settle)"),
                             {"after": sealed_through, "settle": settle_seconds}).scalar_one()
        rows = conn.execute(sa.text(_rows(trail, "WHERE r.seq > :after AND r.seq < :before")),
                            {"after": sealed_through, "before": young if young is not None else 2**63 - 1})
        for block in _blocks(rows):
            previous = conn.execute(select(audit_seal.c.hash).where(audit_seal.c.trail == trail,
                                                                    *scoped(audit_seal, block.org_id))
                                    .order_by(audit_seal.c.last_seq.desc()).limit(1)).scalar_one_or_none()
            conn.execute(audit_seal.insert().values(
                org_id=block.org_id, trail=trail, month=block.month, seqs=block.seqs, digests=block.digests,
                last_seq=block.seqs[-1], previous_hash=previous,
                hash=block_hash(previous, trail, block.org_id, block.month, block.seqs, block.digests)))
            written += 1
    return written


@dataclass
class _Block:
    org_id: str
    month: dt.date
    seqs: list[int]
    digests: list[bytes]


def _blocks(rows) -> Iterator[_Block]:
    """Consecutive rows of one organization in one month, in seq order, per organization."""
    open_blocks: dict[str, _Block] = {}
    for seq, org_id, month, digest in rows:
        block = open_blocks.get(org_id)
        if block is not None and block.month != month:
            yield open_blocks.pop(org_id)
            block = None
        if block is None:
            block = open_blocks[org_id] = _Block(org_id, month, [], [])
        block.seqs.append(seq)
        block.digests.append(bytes(digest))
    yield from open_blocks.values()


@dataclass(frozen=True)
class Finding:
    """The first thing verify found wrong in one organization's trail."""

    trail: str
    org_id: str
    seq: int | None
    problem: str

    def __str__(self) -> str:
        where = f"row seq {self.seq}" if self.seq is not None else "its seals"
        return f"{self.trail} of organization {self.org_id}: {where} {self.problem}"


def verify(conn, org_id: str | None = None) -> list[Finding]:
    """Recompute every seal chain (of one organization, or all) against the rows; the first
    problem of each organization's trail, in seq order. Empty when everything matches."""
    _in_utc(conn)
    findings = []
    for trail in TRAILS:
        pruned = set(conn.execute(select(audit_pruned_month.c.month).where(audit_pruned_month.c.trail == trail)).scalars())
        seals = select(audit_seal).where(audit_seal.c.trail == trail)
        if org_id is not None:
            seals = seals.where(*scoped(audit_seal, org_id))
        by_org: dict[str, list] = {}
        for row in conn.execute(seals.order_by(audit_seal.c.org_id, audit_seal.c.last_seq)).mappings():
            by_org.setdefault(row["org_id"], []).append(row)
        where = "WHERE r.org_id = CAST(:org AS uuid)" if org_id is not None else ""
        rows: dict[str, dict[int, bytes]] = {}
        for seq, row_org, _month, digest in conn.execute(sa.text(_rows(trail, where)), {"org": org_id}):
            rows.setdefault(row_org, {})[seq] = bytes(digest)
        for org, org_seals in by_org.items():
            finding = _verify_org(trail, org, org_seals, rows.get(org, {}), pruned)
            if finding is not None:
                findings.append(finding)
    return findings


def _verify_org(trail: str, org_id: str, seals: list, rows: dict[int, bytes], pruned: set) -> Finding | None:
    previous, after = None, 0
    for sealed in seals:
        expected = block_hash(previous, trail, org_id, sealed["month"], sealed["seqs"],
                              [bytes(d) for d in sealed["digests"]])
        if sealed["previous_hash"] != previous or bytes(sealed["hash"]) != expected:
            return Finding(trail, org_id, None, f"break at the seal of seq {sealed['last_seq']}: a seal was changed")
        if sealed["month"] not in pruned:
            finding = _compare_block(trail, org_id, sealed, rows, after)
            if finding is not None:
                return finding
        previous, after = bytes(sealed["hash"]), sealed["last_seq"]
    return None


def _compare_block(trail: str, org_id: str, sealed, rows: dict[int, bytes], after: int) -> Finding | None:
    """The block's rows against the organization's rows in its seq range, lowest seq first."""
    sealed_rows = dict(zip(sealed["seqs"], (bytes(d) for d in sealed["digests"])))
    present = {seq for seq in rows if after < seq <= sealed["last_seq"]}
    for seq in sorted(present | set(sealed_rows)):
        if seq not in rows:
            return Finding(trail, org_id, seq, "was deleted")
        if seq not in sealed_rows:
            return Finding(trail, org_id, seq, "was inserted out of order (below a seal)")
        if rows[seq] != sealed_rows[seq]:
            return Finding(trail, org_id, seq, "was edited")
    return None


def latest_seals(conn, org_id: str) -> list[dict]:
    """The organization's newest seal of each trail: the value to copy outside the database."""
    newest = []
    for trail in TRAILS:
        row = conn.execute(
            select(audit_seal.c.trail, audit_seal.c.last_seq, audit_seal.c.hash, audit_seal.c.sealed_at,
                   func.cardinality(audit_seal.c.seqs).label("rows"))
            .where(audit_seal.c.trail == trail, *scoped(audit_seal, org_id))
            .order_by(audit_seal.c.last_seq.desc()).limit(1)).mappings().first()
        if row is not None:
            newest.append({**row, "hash": bytes(row["hash"]).hex()})
    return newest

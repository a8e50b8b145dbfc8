-- depends: 0021.partition-audit-trail
-- Tamper evidence. `clinic-api audit seal` hashes each new block of an organization's rows of
-- audit_log or access_log (in seq order, never across a month, so that a pruned month's blocks are
-- known) and chains the block to that organization's previous seal of the same trail. A row
-- edited, deleted or slipped in below a seal afterwards no longer matches it
-- (`clinic-api audit verify`); a seal rewritten breaks the chain up to the latest one, which is
-- exported (GET /audit-seals) for keeping outside the database.
CREATE TABLE audit_seal (
  id             BIGINT       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  org_id         UUID         NOT NULL,
  trail          VARCHAR(20)  NOT NULL CHECK (trail IN ('audit_log', 'access_log')),
  -- The UTC month of every row of the block: the partition they live in.
  month          DATE         NOT NULL,
  -- The block's rows, by seq, and the SHA-256 of each row's JSONB text: what lets verify name
  -- the row that changed, not only the block.
  seqs           BIGINT[]     NOT NULL,
  digests        BYTEA[]      NOT NULL,
  last_seq       BIGINT       NOT NULL,
  previous_hash  BYTEA,
  hash           BYTEA        NOT NULL,
  sealed_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
  CONSTRAINT audit_seal_block_key UNIQUE (org_id, trail, last_seq)
);

-- The months `clinic-api audit prune` dropped: their rows are gone on purpose, so verify checks
-- only the chain of their seals, not the rows.
CREATE TABLE audit_pruned_month (
  trail      VARCHAR(20)  NOT NULL,
  month      DATE         NOT NULL,
  pruned_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  PRIMARY KEY (trail, month)
);

CREATE TRIGGER audit_seal_append_only BEFORE UPDATE OR DELETE ON audit_seal
  FOR EACH ROW EXECUTE FUNCTION trail_refuse_change();
CREATE TRIGGER audit_seal_no_truncate BEFORE TRUNCATE ON audit_seal
  FOR EACH STATEMENT EXECUTE FUNCTION trail_refuse_change();
CREATE TRIGGER audit_pruned_month_append_only BEFORE UPDATE OR DELETE ON audit_pruned_month
  FOR EACH ROW EXECUTE FUNCTION trail_refuse_change();

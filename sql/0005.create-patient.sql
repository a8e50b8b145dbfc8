-- depends: 0003.create-branch
CREATE TABLE patient (
  id             UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id         UUID         NOT NULL REFERENCES organization (id),
  branch_id      UUID         NOT NULL,
  name           VARCHAR(100) NOT NULL,
  email          VARCHAR(100),
  phone          VARCHAR(20),
  date_of_birth  DATE,
  gender         VARCHAR(10),
  status         VARCHAR(20)  NOT NULL DEFAULT 'active'
                              CHECK (status IN ('active', 'inactive', 'archived', 'deceased')),
  photo          TEXT,
  created_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
  updated_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
  deleted_at     TIMESTAMPTZ,
  CONSTRAINT patient_org_id_id_key UNIQUE (org_id, id),
  CONSTRAINT patient_branch_fkey FOREIGN KEY (org_id, branch_id) REFERENCES branch (org_id, id)
);
-- The list's filter and order in one index: a page is an index range scan, page 50 like page 1.
CREATE INDEX patient_org_list_idx ON patient (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX patient_org_status_list_idx ON patient (org_id, status, created_at DESC, id DESC)
  WHERE deleted_at IS NULL;
CREATE INDEX patient_branch_idx ON patient (org_id, branch_id) WHERE deleted_at IS NULL;
-- Case-insensitive substring search over name, email and phone. The expression must match the one
-- in models/resources.py exactly. org_id leads (btree_gin) so the trigram lookup is per tenant.
CREATE INDEX patient_search_trgm_idx ON patient
  USING gin (org_id, (name || ' ' || coalesce(email, '') || ' ' || coalesce(phone, '')) gin_trgm_ops)
  WHERE deleted_at IS NULL;

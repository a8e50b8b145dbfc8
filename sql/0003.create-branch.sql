-- depends: 0002.create-organization
CREATE TABLE branch (
  id           UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id       UUID         NOT NULL REFERENCES organization (id),
  name         VARCHAR(100) NOT NULL,
  address      TEXT,
  status       VARCHAR(20)  NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
  coordinates  JSONB,
  created_at   TIMESTAMPTZ  NOT NULL DEFAULT now(),
  updated_at   TIMESTAMPTZ  NOT NULL DEFAULT now(),
  deleted_at   TIMESTAMPTZ,
  -- Target of every child's (org_id, branch_id) foreign key: a row can only point at a branch of
  -- its own organization, whatever the application does.
  CONSTRAINT branch_org_id_id_key UNIQUE (org_id, id)
);
-- Serves the default list order (newest first, id as tie-break) for live rows of one organization.
CREATE INDEX branch_org_list_idx ON branch (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;

-- depends: 0003.create-branch
CREATE TABLE staff (
  id             UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id         UUID         NOT NULL REFERENCES organization (id),
  branch_id      UUID         NOT NULL,
  name           VARCHAR(100) NOT NULL,
  email          VARCHAR(100) NOT NULL,
  -- The staff member's primary role, as the seed has it; the grants that count are in user_role.
  role           VARCHAR(30)  NOT NULL,
  password_hash  TEXT         NOT NULL,
  avatar         TEXT,
  created_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
  updated_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
  deleted_at     TIMESTAMPTZ,
  CONSTRAINT staff_org_id_id_key UNIQUE (org_id, id),
  CONSTRAINT staff_branch_fkey FOREIGN KEY (org_id, branch_id) REFERENCES branch (org_id, id)
);
-- The email is the login name: unique across the whole system, case-insensitively, among live
-- staff only, so a deleted member's address can be given to a new hire.
CREATE UNIQUE INDEX staff_email_live_key ON staff (lower(email)) WHERE deleted_at IS NULL;
CREATE INDEX staff_org_list_idx ON staff (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX staff_branch_idx ON staff (org_id, branch_id) WHERE deleted_at IS NULL;

-- depends: 0002.create-organization
-- Inventory items reference suppliers; the seed never defines the table.
CREATE TABLE supplier (
  id              UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id          UUID         NOT NULL REFERENCES organization (id),
  name            VARCHAR(100) NOT NULL,
  contact_name    VARCHAR(100),
  email           VARCHAR(100),
  phone           VARCHAR(20),
  address         TEXT,
  notes           TEXT,
  created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
  updated_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
  deleted_at      TIMESTAMPTZ,
  CONSTRAINT supplier_org_id_id_key UNIQUE (org_id, id)
);
CREATE INDEX supplier_org_list_idx ON supplier (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;

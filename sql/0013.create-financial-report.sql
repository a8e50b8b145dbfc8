-- depends: 0002.create-organization
CREATE TABLE financial_report (
  id          UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id      UUID         NOT NULL REFERENCES organization (id),
  type        VARCHAR(50)  NOT NULL,
  data        JSONB        NOT NULL,
  period      TIMESTAMPTZ  NOT NULL,
  created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  updated_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  deleted_at  TIMESTAMPTZ,
  CONSTRAINT financial_report_org_id_id_key UNIQUE (org_id, id)
);
CREATE INDEX financial_report_org_list_idx ON financial_report (org_id, created_at DESC, id DESC)
  WHERE deleted_at IS NULL;

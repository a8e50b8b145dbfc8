-- depends: 0004.create-staff 0005.create-patient
CREATE TABLE prescription (
  id          UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id      UUID         NOT NULL REFERENCES organization (id),
  patient_id  UUID         NOT NULL,
  staff_id    UUID         NOT NULL,
  type        VARCHAR(50)  NOT NULL,
  data        JSONB        NOT NULL,
  date        TIMESTAMPTZ  NOT NULL,
  notes       TEXT,
  created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  updated_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  deleted_at  TIMESTAMPTZ,
  CONSTRAINT prescription_org_id_id_key UNIQUE (org_id, id),
  CONSTRAINT prescription_patient_fkey FOREIGN KEY (org_id, patient_id) REFERENCES patient (org_id, id),
  CONSTRAINT prescription_staff_fkey FOREIGN KEY (org_id, staff_id) REFERENCES staff (org_id, id)
);
CREATE INDEX prescription_org_list_idx ON prescription (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX prescription_patient_idx ON prescription (org_id, patient_id) WHERE deleted_at IS NULL;

-- depends: 0004.create-staff 0005.create-patient
CREATE TABLE appointment (
  id          UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id      UUID         NOT NULL REFERENCES organization (id),
  patient_id  UUID         NOT NULL,
  staff_id    UUID         NOT NULL,
  branch_id   UUID         NOT NULL,
  type        VARCHAR(50),
  date        TIMESTAMPTZ  NOT NULL,
  status      VARCHAR(20)  NOT NULL DEFAULT 'scheduled'
                           CHECK (status IN ('scheduled', 'confirmed', 'checked_in', 'completed',
                                             'cancelled', 'no_show')),
  notes       TEXT,
  created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  updated_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  deleted_at  TIMESTAMPTZ,
  CONSTRAINT appointment_org_id_id_key UNIQUE (org_id, id),
  CONSTRAINT appointment_patient_fkey FOREIGN KEY (org_id, patient_id) REFERENCES patient (org_id, id),
  CONSTRAINT appointment_staff_fkey FOREIGN KEY (org_id, staff_id) REFERENCES staff (org_id, id),
  CONSTRAINT appointment_branch_fkey FOREIGN KEY (org_id, branch_id) REFERENCES branch (org_id, id)
);
CREATE INDEX appointment_org_list_idx ON appointment (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
-- Calendar views: one organization's appointments by time.
CREATE INDEX appointment_org_date_idx ON appointment (org_id, date) WHERE deleted_at IS NULL;
CREATE INDEX appointment_patient_idx ON appointment (org_id, patient_id) WHERE deleted_at IS NULL;
CREATE INDEX appointment_staff_idx ON appointment (org_id, staff_id, date) WHERE deleted_at IS NULL;
CREATE INDEX appointment_branch_idx ON appointment (org_id, branch_id, date) WHERE deleted_at IS NULL;

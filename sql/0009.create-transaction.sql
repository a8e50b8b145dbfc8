-- depends: 0004.create-staff 0005.create-patient
CREATE TABLE transaction (
  id           UUID           PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id       UUID           NOT NULL REFERENCES organization (id),
  patient_id   UUID           NOT NULL,
  staff_id     UUID           NOT NULL,
  description  TEXT,
  -- NUMERIC, never float: money must add up to the cent.
  amount       NUMERIC(12, 2) NOT NULL,
  type         VARCHAR(20)    CHECK (type IN ('payment', 'refund', 'charge', 'adjustment')),
  method       VARCHAR(20)    CHECK (method IN ('cash', 'card', 'bank_transfer', 'insurance', 'other')),
  date         TIMESTAMPTZ    NOT NULL,
  created_at   TIMESTAMPTZ    NOT NULL DEFAULT now(),
  updated_at   TIMESTAMPTZ    NOT NULL DEFAULT now(),
  deleted_at   TIMESTAMPTZ,
  CONSTRAINT transaction_org_id_id_key UNIQUE (org_id, id),
  CONSTRAINT transaction_patient_fkey FOREIGN KEY (org_id, patient_id) REFERENCES patient (org_id, id),
  CONSTRAINT transaction_staff_fkey FOREIGN KEY (org_id, staff_id) REFERENCES staff (org_id, id)
);
CREATE INDEX transaction_org_list_idx ON transaction (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX transaction_org_date_idx ON transaction (org_id, date) WHERE deleted_at IS NULL;
CREATE INDEX transaction_patient_idx ON transaction (org_id, patient_id) WHERE deleted_at IS NULL;

-- depends: 0002.create-organization
CREATE TABLE loan (
  id                 UUID           PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id             UUID           NOT NULL REFERENCES organization (id),
  lender             VARCHAR(100)   NOT NULL,
  loan_type          VARCHAR(50),
  original_amount    NUMERIC(12, 2) NOT NULL CHECK (original_amount > 0),
  -- Lowered only by recorded payments, under a row lock; never below zero.
  remaining_balance  NUMERIC(12, 2) NOT NULL CHECK (remaining_balance >= 0),
  interest_rate      NUMERIC(5, 2)  CHECK (interest_rate >= 0),
  term               INT            CHECK (term > 0),
  start_date         TIMESTAMPTZ    NOT NULL,
  next_payment_date  TIMESTAMPTZ,
  monthly_payment    NUMERIC(12, 2) CHECK (monthly_payment >= 0),
  status             VARCHAR(20)    NOT NULL DEFAULT 'current'
                                    CHECK (status IN ('current', 'late', 'defaulted', 'paid_off')),
  collateral         TEXT,
  purpose            TEXT,
  notes              TEXT,
  created_at         TIMESTAMPTZ    NOT NULL DEFAULT now(),
  updated_at         TIMESTAMPTZ    NOT NULL DEFAULT now(),
  deleted_at         TIMESTAMPTZ,
  CONSTRAINT loan_org_id_id_key UNIQUE (org_id, id)
);
CREATE INDEX loan_org_list_idx ON loan (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;

CREATE TABLE loan_payment (
  id          UUID           PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id      UUID           NOT NULL REFERENCES organization (id),
  loan_id     UUID           NOT NULL,
  date        TIMESTAMPTZ    NOT NULL,
  amount      NUMERIC(12, 2) NOT NULL CHECK (amount > 0),
  principal   NUMERIC(12, 2) CHECK (principal >= 0),
  interest    NUMERIC(12, 2) CHECK (interest >= 0),
  created_at  TIMESTAMPTZ    NOT NULL DEFAULT now(),
  updated_at  TIMESTAMPTZ    NOT NULL DEFAULT now(),
  deleted_at  TIMESTAMPTZ,
  CONSTRAINT loan_payment_org_id_id_key UNIQUE (org_id, id),
  CONSTRAINT loan_payment_loan_fkey FOREIGN KEY (org_id, loan_id) REFERENCES loan (org_id, id)
);
CREATE INDEX loan_payment_loan_idx ON loan_payment (org_id, loan_id, created_at DESC, id DESC)
  WHERE deleted_at IS NULL;

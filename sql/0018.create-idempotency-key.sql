-- depends: 0004.create-staff
-- Idempotency-Key (IETF httpapi draft): a retried create replays the first response instead of
-- creating a second row. The key row is inserted in the same transaction as what it creates, so a
-- concurrent retry waits on the unique key and then replays; keys are per user and expire.
CREATE TABLE idempotency_key (
  user_id          UUID          NOT NULL,
  key              VARCHAR(255)  NOT NULL,
  org_id           UUID          NOT NULL REFERENCES organization (id),
  request_hash     CHAR(64)      NOT NULL,
  response_status  INT           NOT NULL,
  response_body    JSONB         NOT NULL,
  created_at       TIMESTAMPTZ   NOT NULL DEFAULT now(),
  expires_at       TIMESTAMPTZ   NOT NULL,
  PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_key_expires_idx ON idempotency_key (expires_at);

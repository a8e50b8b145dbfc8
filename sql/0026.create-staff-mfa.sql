-- depends: 0025.create-login-origin
-- TOTP (RFC 6238) second factor. The secret must be readable to check a code, so it is kept as
-- issued; recovery codes are shown once and kept as SHA-256 hashes (50 random bits each, so a
-- slow hash would add nothing but latency). last_used_step refuses a code seen before (RFC 6238
-- section 5.2): neither a replayed login nor a shoulder-surfed code gets a second session.
CREATE TABLE staff_mfa (
  staff_id        UUID         PRIMARY KEY,
  org_id          UUID         NOT NULL REFERENCES organization (id),
  totp_secret     TEXT         NOT NULL,
  confirmed_at    TIMESTAMPTZ,
  last_used_step  BIGINT,
  created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
  CONSTRAINT staff_mfa_staff_fkey FOREIGN KEY (org_id, staff_id) REFERENCES staff (org_id, id)
);

CREATE TABLE mfa_recovery_code (
  id          UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id      UUID         NOT NULL REFERENCES organization (id),
  staff_id    UUID         NOT NULL,
  code_hash   CHAR(64)     NOT NULL,
  used_at     TIMESTAMPTZ,
  created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  CONSTRAINT mfa_recovery_code_staff_fkey FOREIGN KEY (org_id, staff_id) REFERENCES staff (org_id, id)
);
CREATE INDEX mfa_recovery_code_staff_idx ON mfa_recovery_code (staff_id) WHERE used_at IS NULL;

-- The second step of a login: the password was right, a code is still due. Opaque, hashed like
-- a refresh token, short-lived, a few attempts, used once.
CREATE TABLE mfa_challenge (
  id          UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id      UUID         NOT NULL REFERENCES organization (id),
  staff_id    UUID         NOT NULL,
  token_hash  CHAR(64)     NOT NULL,
  expires_at  TIMESTAMPTZ  NOT NULL,
  attempts    INT          NOT NULL DEFAULT 0,
  used_at     TIMESTAMPTZ,
  created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  CONSTRAINT mfa_challenge_staff_fkey FOREIGN KEY (org_id, staff_id) REFERENCES staff (org_id, id)
);
CREATE UNIQUE INDEX mfa_challenge_token_hash_key ON mfa_challenge (token_hash);

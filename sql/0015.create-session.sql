-- depends: 0004.create-staff
-- One row per refresh token. Only a hash of the token is kept, so a leaked table grants nothing.
-- Rotation revokes the row and inserts its successor in the same family; a revoked token that
-- comes back means it was stolen, and the whole family is revoked.
CREATE TABLE session (
  id                  UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id              UUID         NOT NULL REFERENCES organization (id),
  user_id             UUID         NOT NULL,
  family_id           UUID         NOT NULL,
  refresh_token_hash  TEXT         NOT NULL,
  created_at          TIMESTAMPTZ  NOT NULL DEFAULT now(),
  expires_at          TIMESTAMPTZ  NOT NULL,
  ip_address          VARCHAR(45),
  user_agent          TEXT,
  revoked             BOOLEAN      NOT NULL DEFAULT false,
  revoked_at          TIMESTAMPTZ,
  -- Set when the token was rotated: presenting it again is theft; a token revoked by logout is not.
  replaced_by         UUID,
  CONSTRAINT session_user_fkey FOREIGN KEY (org_id, user_id) REFERENCES staff (org_id, id)
);
CREATE UNIQUE INDEX session_refresh_token_hash_key ON session (refresh_token_hash);
CREATE INDEX session_family_idx ON session (family_id);
CREATE INDEX session_user_idx ON session (user_id) WHERE NOT revoked;

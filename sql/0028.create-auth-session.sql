-- depends: 0015.create-session 0026.create-staff-mfa 0027.scope-staff-email-to-organization
-- A login session: from a login until logout, its end by the member or an admin, a password change,
-- the member's deletion, or its absolute lifetime or idle timeout (settings, applied by the API).
-- Every access token names one (its `sid` claim); the refresh tokens rotated within it are the
-- rows of `session` whose family_id is its id.
CREATE TABLE auth_session (
  id            UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id        UUID         NOT NULL REFERENCES organization (id),
  user_id       UUID         NOT NULL,
  created_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
  -- Moved by each refresh and, a few times a minute, by each worker for the access it served.
  last_used_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  ip_address    VARCHAR(45),
  user_agent    TEXT,
  ended_at      TIMESTAMPTZ,
  -- logout, ended_by_member, ended_by_admin, password_changed, staff_deleted, token_reuse, expired
  end_reason    VARCHAR(30),
  CONSTRAINT auth_session_user_fkey FOREIGN KEY (org_id, user_id) REFERENCES staff (org_id, id),
  CONSTRAINT auth_session_end_check CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
CREATE INDEX auth_session_user_idx ON auth_session (org_id, user_id) WHERE ended_at IS NULL;

-- Every family of refresh tokens becomes a session: a live one where one of its tokens still is.
INSERT INTO auth_session (id, org_id, user_id, created_at, last_used_at, ip_address, user_agent, ended_at, end_reason)
SELECT DISTINCT ON (family_id)
       family_id, org_id, user_id,
       min(created_at) OVER family, max(created_at) OVER family,
       ip_address, user_agent,
       CASE WHEN bool_or(NOT revoked AND expires_at > now()) OVER family THEN NULL
            ELSE coalesce(max(revoked_at) OVER family, max(expires_at) OVER family) END,
       CASE WHEN bool_or(NOT revoked AND expires_at > now()) OVER family THEN NULL ELSE 'expired' END
  FROM session
WINDOW family AS (PARTITION BY family_id)
 ORDER BY family_id, created_at;
ALTER TABLE session ADD CONSTRAINT session_family_fkey FOREIGN KEY (family_id) REFERENCES auth_session (id);

-- Tell every worker at commit what changed about whose access (LISTEN auth_change, models/sessions.py):
-- 'session:<id>' when a session ends, 'staff:<id>' when a member's password, standing, roles or
-- second factor change, 'all' when a role's scopes do. PostgreSQL folds identical notifications
-- of one transaction into one.
CREATE FUNCTION auth_change_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  changed jsonb := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
BEGIN
  IF TG_ARGV[0] = 'all' THEN
    PERFORM pg_notify('auth_change', 'all');
  ELSE
    PERFORM pg_notify('auth_change', TG_ARGV[0] || ':' || (changed ->> TG_ARGV[1]));
  END IF;
  RETURN NULL;
END;
$$;
CREATE TRIGGER auth_session_ended AFTER UPDATE OF ended_at ON auth_session
  FOR EACH ROW WHEN (OLD.ended_at IS DISTINCT FROM NEW.ended_at)
  EXECUTE FUNCTION auth_change_notify('session', 'id');
CREATE TRIGGER staff_access_changed AFTER UPDATE OF password_hash, deleted_at, role ON staff
  FOR EACH ROW WHEN ((OLD.password_hash, OLD.deleted_at, OLD.role) IS DISTINCT FROM (NEW.password_hash, NEW.deleted_at, NEW.role))
  EXECUTE FUNCTION auth_change_notify('staff', 'id');
CREATE TRIGGER user_role_changed AFTER INSERT OR UPDATE OR DELETE ON user_role
  FOR EACH ROW EXECUTE FUNCTION auth_change_notify('staff', 'user_id');
CREATE TRIGGER staff_mfa_changed AFTER INSERT OR UPDATE OR DELETE ON staff_mfa
  FOR EACH ROW EXECUTE FUNCTION auth_change_notify('staff', 'staff_id');
CREATE TRIGGER role_scopes_changed AFTER UPDATE OF scopes ON role
  FOR EACH STATEMENT EXECUTE FUNCTION auth_change_notify('all');

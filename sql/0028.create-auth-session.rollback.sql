DROP TRIGGER role_scopes_changed ON role;
DROP TRIGGER staff_mfa_changed ON staff_mfa;
DROP TRIGGER user_role_changed ON user_role;
DROP TRIGGER staff_access_changed ON staff;
DROP TRIGGER auth_session_ended ON auth_session;
DROP FUNCTION auth_change_notify();
ALTER TABLE session DROP CONSTRAINT session_family_fkey;
DROP TABLE auth_session;

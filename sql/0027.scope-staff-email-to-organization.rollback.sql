-- Fails while one address is a login of several organizations: resolve those first.
DROP INDEX staff_login_name_idx;
DROP INDEX staff_email_live_key;
CREATE UNIQUE INDEX staff_email_live_key ON staff (lower(email)) WHERE deleted_at IS NULL;

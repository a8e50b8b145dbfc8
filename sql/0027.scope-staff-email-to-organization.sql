-- depends: 0004.create-staff
-- One person may work for several organizations with one address (a locum): the address is unique
-- per organization, no longer across the system, so that an admin cannot learn from a 409 that an
-- address logs in to another organization. Addresses compare as people read them: case-insensitively
-- and NFKC-normalised, so a full-width look-alike (ａｄｍｉｎ@...) is the same address.
-- normalize() is immutable (PostgreSQL 13+). Login finds every membership through the second index.
DROP INDEX staff_email_live_key;
CREATE UNIQUE INDEX staff_email_live_key ON staff (org_id, lower(normalize(email, NFKC))) WHERE deleted_at IS NULL;
CREATE INDEX staff_login_name_idx ON staff (lower(normalize(email, NFKC))) WHERE deleted_at IS NULL;

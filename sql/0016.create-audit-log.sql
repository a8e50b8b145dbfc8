-- depends: 0002.create-organization
-- The audit trail. user_id has no foreign key on purpose: the trail must outlive what it describes.
CREATE TABLE audit_log (
  id           UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id       UUID         NOT NULL REFERENCES organization (id),
  user_id      UUID,
  action       VARCHAR(50)  NOT NULL,
  resource     VARCHAR(50)  NOT NULL,
  resource_id  UUID,
  before       JSONB,
  after        JSONB,
  ip_address   VARCHAR(45),
  user_agent   TEXT,
  request_id   VARCHAR(100),
  created_at   TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_org_list_idx ON audit_log (org_id, created_at DESC, id DESC);
CREATE INDEX audit_log_resource_idx ON audit_log (org_id, resource, resource_id);

-- Append-only: a record once written can be neither changed nor removed, even by the application's
-- own database role.
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_append_only
  BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate
  BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

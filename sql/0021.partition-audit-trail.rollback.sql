DROP TABLE access_log;
DROP FUNCTION trail_refuse_change();

ALTER TABLE audit_log RENAME TO audit_log_partitioned;
ALTER INDEX audit_log_org_list_idx RENAME TO audit_log_partitioned_list_idx;
ALTER INDEX audit_log_resource_idx RENAME TO audit_log_partitioned_resource_idx;
ALTER TABLE audit_log_partitioned RENAME CONSTRAINT audit_log_pkey TO audit_log_partitioned_pkey;
CREATE TABLE audit_log (
  id           UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
  -- Named: the default name is taken by the constraints of the other table's partitions.
  org_id       UUID         NOT NULL CONSTRAINT audit_log_org_id_fkey REFERENCES organization (id),
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
INSERT INTO audit_log SELECT id, org_id, user_id, action, resource, resource_id, before, after, ip_address,
                             user_agent, request_id, created_at
  FROM audit_log_partitioned ORDER BY seq;
DROP TABLE audit_log_partitioned;
CREATE INDEX audit_log_org_list_idx ON audit_log (org_id, created_at DESC, id DESC);
CREATE INDEX audit_log_resource_idx ON audit_log (org_id, resource, resource_id);
CREATE TRIGGER audit_log_append_only
  BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate
  BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
DROP FUNCTION audit_create_month_partitions(regclass, date, int);

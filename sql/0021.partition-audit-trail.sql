-- depends: 0016.create-audit-log 0020.enforce-record-rules
-- The audit trail (changes) and the access trail (reads of patient data), partitioned by month so
-- that retention drops whole partitions (`clinic-api audit prune`): no DELETE ever touches them.
-- Each row gets `seq` from a sequence of its table: the order in which tamper-evidence seals
-- chain the rows of an organization (`clinic-api audit seal` / `verify`).

-- Creates the monthly partitions of `parent` for `months` months from `first_month` (UTC months),
-- skipping those that exist. A month whose rows already landed in the default partition (the
-- months ahead were not created in time) is left there with a warning: creating it would fail.
CREATE FUNCTION audit_create_month_partitions(parent regclass, first_month date, months int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
  month_start date;
  partition_name text;
  created int := 0;
BEGIN
  FOR i IN 0 .. months - 1 LOOP
    month_start := (date_trunc('month', first_month) + make_interval(months => i))::date;
    partition_name := format('%s_y%sm%s', parent::text, to_char(month_start, 'YYYY'), to_char(month_start, 'MM'));
    CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;
    BEGIN
      EXECUTE format('CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)', partition_name, parent,
                     month_start::timestamp AT TIME ZONE 'UTC',
                     (month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC');
      created := created + 1;
    EXCEPTION WHEN check_violation THEN
      RAISE WARNING '% has rows of % in its default partition; that month stays there', parent, month_start;
    END;
  END LOOP;
  RETURN created;
END;
$$;

-- audit_log becomes partitioned: the same columns, plus seq; rows are copied in their order.
ALTER TABLE audit_log RENAME TO audit_log_unpartitioned;
ALTER INDEX audit_log_org_list_idx RENAME TO audit_log_unpartitioned_list_idx;
ALTER INDEX audit_log_resource_idx RENAME TO audit_log_unpartitioned_resource_idx;
ALTER TABLE audit_log_unpartitioned RENAME CONSTRAINT audit_log_pkey TO audit_log_unpartitioned_pkey;
CREATE SEQUENCE audit_log_seq AS bigint;
CREATE TABLE audit_log (
  id           UUID         NOT NULL DEFAULT gen_random_uuid(),
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
  created_at   TIMESTAMPTZ  NOT NULL DEFAULT now(),
  seq          BIGINT       NOT NULL DEFAULT nextval('audit_log_seq'),
  -- A partitioned table's keys must hold the partition column.
  PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE audit_log_seq OWNED BY audit_log.seq;
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;
SELECT audit_create_month_partitions('audit_log',
  LEAST((SELECT min(created_at) FROM audit_log_unpartitioned), now())::date,
  (SELECT (extract(year FROM age(date_trunc('month', now()),
                                 date_trunc('month', LEAST(min(created_at), now())))) * 12
           + extract(month FROM age(date_trunc('month', now()),
                                    date_trunc('month', LEAST(min(created_at), now())))))::int
   FROM audit_log_unpartitioned) + 13);
INSERT INTO audit_log (id, org_id, user_id, action, resource, resource_id, before, after, ip_address,
                       user_agent, request_id, created_at)
  SELECT id, org_id, user_id, action, resource, resource_id, before, after, ip_address, user_agent,
         request_id, created_at
  FROM audit_log_unpartitioned ORDER BY created_at, id;
DROP TABLE audit_log_unpartitioned;
CREATE INDEX audit_log_org_list_idx ON audit_log (org_id, created_at DESC, id DESC);
CREATE INDEX audit_log_resource_idx ON audit_log (org_id, resource, resource_id);
CREATE INDEX audit_log_org_seq_idx ON audit_log (org_id, seq);

-- Append-only, as before (audit_log_refuse_change() of 0016); row triggers reach every partition.
CREATE TRIGGER audit_log_append_only
  BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate
  BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- Who read which patients' data: one row per request that returned patient-identifying records.
-- It is written on the read path, so it carries as little as it can: no foreign key to
-- organization (checking it would lock the organization's row on every read), no primary key, and
-- a BRIN index for seq (rows arrive in seq order; the sealer and the verifier walk seq ranges).
CREATE SEQUENCE access_log_seq AS bigint;
CREATE TABLE access_log (
  seq          BIGINT       NOT NULL DEFAULT nextval('access_log_seq'),
  org_id       UUID         NOT NULL,
  user_id      UUID,
  action       VARCHAR(20)  NOT NULL,
  resource     VARCHAR(50)  NOT NULL,
  patient_ids  UUID[]       NOT NULL,
  ip_address   VARCHAR(45),
  user_agent   TEXT,
  request_id   VARCHAR(100),
  created_at   TIMESTAMPTZ  NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE access_log_seq OWNED BY access_log.seq;
CREATE TABLE access_log_default PARTITION OF access_log DEFAULT;
SELECT audit_create_month_partitions('access_log', now()::date, 13);
-- "Who looked at this patient": the patient's id among the ids of each row. GIN's pending list
-- keeps the insert on the read path cheap.
CREATE INDEX access_log_patient_idx ON access_log USING gin (patient_ids);
CREATE INDEX access_log_seq_idx ON access_log USING brin (seq);

-- For every append-only table from here on (the seals of 0022 too): it names the table refused.
CREATE FUNCTION trail_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE ON access_log
  FOR EACH ROW EXECUTE FUNCTION trail_refuse_change();
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log
  FOR EACH STATEMENT EXECUTE FUNCTION trail_refuse_change();

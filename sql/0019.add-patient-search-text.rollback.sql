DROP INDEX patient_org_list_idx;
DROP INDEX patient_search_trgm_idx;
ALTER TABLE patient DROP COLUMN search_text;
CREATE INDEX patient_org_list_idx ON patient (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX patient_search_trgm_idx ON patient
  USING gin (org_id, (name || ' ' || coalesce(email, '') || ' ' || coalesce(phone, '')) gin_trgm_ops)
  WHERE deleted_at IS NULL;

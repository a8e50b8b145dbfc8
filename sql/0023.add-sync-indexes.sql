-- depends: 0022.create-audit-seal
-- Sync (`?updatedSince=`, `?cursor=` on every list) reads a tenant's changes oldest first, deleted
-- rows included, as a keyset on (updated_at, id). Each table gets:
--  * an index on (org_id, updated_at, id) without the `deleted_at IS NULL` predicate of the list
--    indexes, since tombstones are part of a sync: a page is one index range scan, whatever the
--    table's size;
--  * a trigger that moves updated_at on every UPDATE that did not move it itself, so that no write
--    path (a hook, an account change, a hand-written statement) can change a row unseen by sync.
--    now() is the transaction's start, which is what the engine's sync horizon reasons about.
CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
    NEW.updated_at := now();
  END IF;
  RETURN NEW;
END $$;

CREATE INDEX branch_org_sync_idx ON branch (org_id, updated_at, id);
CREATE TRIGGER branch_touch_updated_at BEFORE UPDATE ON branch FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX staff_org_sync_idx ON staff (org_id, updated_at, id);
CREATE TRIGGER staff_touch_updated_at BEFORE UPDATE ON staff FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX patient_org_sync_idx ON patient (org_id, updated_at, id);
CREATE TRIGGER patient_touch_updated_at BEFORE UPDATE ON patient FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX supplier_org_sync_idx ON supplier (org_id, updated_at, id);
CREATE TRIGGER supplier_touch_updated_at BEFORE UPDATE ON supplier FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX appointment_org_sync_idx ON appointment (org_id, updated_at, id);
CREATE TRIGGER appointment_touch_updated_at BEFORE UPDATE ON appointment FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX prescription_org_sync_idx ON prescription (org_id, updated_at, id);
CREATE TRIGGER prescription_touch_updated_at BEFORE UPDATE ON prescription FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX transaction_org_sync_idx ON transaction (org_id, updated_at, id);
CREATE TRIGGER transaction_touch_updated_at BEFORE UPDATE ON transaction FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX inventory_item_org_sync_idx ON inventory_item (org_id, updated_at, id);
CREATE TRIGGER inventory_item_touch_updated_at BEFORE UPDATE ON inventory_item FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX loan_org_sync_idx ON loan (org_id, updated_at, id);
CREATE TRIGGER loan_touch_updated_at BEFORE UPDATE ON loan FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX loan_payment_org_sync_idx ON loan_payment (org_id, updated_at, id);
CREATE TRIGGER loan_payment_touch_updated_at BEFORE UPDATE ON loan_payment FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX community_post_org_sync_idx ON community_post (org_id, updated_at, id);
CREATE TRIGGER community_post_touch_updated_at BEFORE UPDATE ON community_post FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE INDEX financial_report_org_sync_idx ON financial_report (org_id, updated_at, id);
CREATE TRIGGER financial_report_touch_updated_at BEFORE UPDATE ON financial_report FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

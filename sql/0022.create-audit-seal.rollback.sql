DROP TABLE audit_pruned_month;
DROP TABLE audit_seal;
DROP FUNCTION audit_seal_refuse_change();

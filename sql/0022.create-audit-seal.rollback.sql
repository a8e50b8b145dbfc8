DROP TABLE audit_pruned_month;
DROP TABLE audit_seal;

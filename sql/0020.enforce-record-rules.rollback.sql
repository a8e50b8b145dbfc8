DROP TRIGGER staff_roles_follow_grants ON user_role;
DROP FUNCTION staff_roles_follow_grants();
ALTER TABLE staff DROP COLUMN roles;
DROP TABLE community_post_like;
ALTER TABLE loan DROP CONSTRAINT loan_settled_check;
ALTER TABLE loan DROP CONSTRAINT loan_status_check;
UPDATE loan SET status = 'defaulted' WHERE status = 'written_off';
ALTER TABLE loan ADD CONSTRAINT loan_status_check
  CHECK (status IN ('current', 'late', 'defaulted', 'paid_off'));

-- depends: 0011.create-loan 0012.create-community-post 0014.create-role
-- Rules a record must obey whatever statement writes it, not only what the API's hooks check.

-- A loan is settled (no balance left) exactly when its status says so: paid off by payments, or
-- written off by the explicit write-off action. NOT VALID: rows written before this rule keep
-- their values (an auditor sees them as they were); every new or changed row must obey it.
ALTER TABLE loan DROP CONSTRAINT loan_status_check;
ALTER TABLE loan ADD CONSTRAINT loan_status_check
  CHECK (status IN ('current', 'late', 'defaulted', 'paid_off', 'written_off'));
ALTER TABLE loan ADD CONSTRAINT loan_settled_check
  CHECK ((remaining_balance = 0) = (status IN ('paid_off', 'written_off'))) NOT VALID;

-- One like per member per post. The post's likes column stays the count shown (a list of posts
-- would otherwise count this table per page); it moves only when a like row is added or removed.
-- Likes given before this table existed have no row here and stay counted.
CREATE TABLE community_post_like (
  org_id      UUID         NOT NULL,
  post_id     UUID         NOT NULL,
  staff_id    UUID         NOT NULL,
  created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, post_id, staff_id),
  CONSTRAINT community_post_like_post_fkey FOREIGN KEY (org_id, post_id) REFERENCES community_post (org_id, id),
  CONSTRAINT community_post_like_staff_fkey FOREIGN KEY (org_id, staff_id) REFERENCES staff (org_id, id)
);

-- Every role a member holds, kept on the staff row by PostgreSQL from the grants themselves, so a
-- staff record can never say "receptionist" for a member who also holds admin, and ?role= can
-- filter on it. updated_at moves with it: a grant is a change of the record (its ETag changes).
ALTER TABLE staff ADD COLUMN roles TEXT[] NOT NULL DEFAULT '{}';

CREATE FUNCTION staff_roles_follow_grants() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  grant_row user_role%ROWTYPE;
BEGIN
  IF TG_OP = 'DELETE' THEN grant_row := OLD; ELSE grant_row := NEW; END IF;
  UPDATE staff SET
    roles = ARRAY(SELECT r.name FROM user_role g JOIN role r ON r.id = g.role_id
                  WHERE g.org_id = grant_row.org_id AND g.user_id = grant_row.user_id ORDER BY r.name),
    updated_at = now()
  WHERE staff.org_id = grant_row.org_id AND staff.id = grant_row.user_id;
  RETURN NULL;
END;
$$;
CREATE TRIGGER staff_roles_follow_grants
  AFTER INSERT OR DELETE ON user_role
  FOR EACH ROW EXECUTE FUNCTION staff_roles_follow_grants();

UPDATE staff SET roles = ARRAY(
  SELECT r.name FROM user_role g JOIN role r ON r.id = g.role_id
  WHERE g.org_id = staff.org_id AND g.user_id = staff.id ORDER BY r.name);

-- depends: 0004.create-staff
-- The addresses each member last logged in from successfully. When an account's failed logins near
-- their hourly ceiling (someone guessing from many addresses), only these addresses may still try:
-- guesses stay bounded and the stranger cannot keep the owner out (middleware/ratelimit.py).
-- One row per member and address, refreshed at each login, so it grows with addresses, not logins.
CREATE TABLE login_origin (
  staff_id       UUID         NOT NULL,
  ip_address     VARCHAR(45)  NOT NULL,
  org_id         UUID         NOT NULL REFERENCES organization (id),
  last_login_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
  PRIMARY KEY (staff_id, ip_address),
  CONSTRAINT login_origin_staff_fkey FOREIGN KEY (org_id, staff_id) REFERENCES staff (org_id, id)
);

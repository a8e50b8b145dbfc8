-- depends: 0007.create-appointment
-- The seed's appointment has a start only; a length lets the database refuse overlapping bookings
-- of one staff member, not just equal start times.
ALTER TABLE appointment
  ADD COLUMN duration_minutes INT NOT NULL DEFAULT 30 CHECK (duration_minutes BETWEEN 1 AND 1440);

-- timestamptz + interval is only STABLE (a day can be 23 or 25 hours under a time zone), so it
-- cannot appear in a constraint. Adding minutes never depends on the time zone, which makes this
-- wrapper truly IMMUTABLE.
CREATE FUNCTION appointment_slot(starts TIMESTAMPTZ, minutes INT) RETURNS tstzrange
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT tstzrange(starts, starts + make_interval(mins => minutes), '[)') $$;

-- One staff member, one live booking at a time: concurrent attempts cannot both commit.
ALTER TABLE appointment ADD CONSTRAINT appointment_staff_no_overlap
  EXCLUDE USING gist (org_id WITH =, staff_id WITH =, appointment_slot(date, duration_minutes) WITH &&)
  WHERE (deleted_at IS NULL AND status NOT IN ('cancelled', 'no_show'));

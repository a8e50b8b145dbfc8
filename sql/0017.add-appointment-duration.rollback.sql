ALTER TABLE appointment DROP CONSTRAINT appointment_staff_no_overlap;
DROP FUNCTION appointment_slot(TIMESTAMPTZ, INT);
ALTER TABLE appointment DROP COLUMN duration_minutes;

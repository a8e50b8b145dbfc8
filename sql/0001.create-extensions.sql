-- Extensions the schema relies on.
-- pg_trgm: substring search on patient name/email/phone served by an index (ILIKE '%term%').
-- btree_gin: lets one GIN index hold org_id next to the trigrams, so a search is scoped to the
--   organization inside the index instead of filtering a global match list afterwards.
-- btree_gist: exclusion constraints that mix equality (staff) with range overlap (bookings).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE EXTENSION IF NOT EXISTS btree_gist;

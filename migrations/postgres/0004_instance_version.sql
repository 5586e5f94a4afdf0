-- The leadsync version each instance runs, from its heartbeat, so `status` shows a rolling
-- upgrade's progress. NULL for a row written by a version before this column.
ALTER TABLE instances ADD COLUMN version TEXT;

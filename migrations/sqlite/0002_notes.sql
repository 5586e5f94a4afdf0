-- A connector's own one-line report on a target (e.g. Salesforce's API quota), shown by
-- `status`; written by the process that pushes, read by any.
CREATE TABLE target_notes (
    target     TEXT    NOT NULL PRIMARY KEY,
    note       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The last error of a source's pull (an unreachable account), cleared by a good pull.
ALTER TABLE source_cursors ADD COLUMN last_error TEXT;

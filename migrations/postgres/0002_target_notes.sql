-- A connector's own one-line report on a target (e.g. Salesforce's API quota), shown by
-- `status`; written by the process that pushes, read by any.
CREATE TABLE target_notes (
    target     TEXT    NOT NULL PRIMARY KEY,
    note       TEXT    NOT NULL,
    updated_at BIGINT  NOT NULL
);

-- Targets found down (bad credentials, refused connections), shown by `status` and read by
-- every instance that pushes; a row exists only while its target is down. `reason` is a
-- class or code (e.g. `invalid_client`), never personal data.
CREATE TABLE target_down (
    target     TEXT    NOT NULL PRIMARY KEY,
    down_since BIGINT  NOT NULL,
    reason     TEXT    NOT NULL
);

-- The leadsync ledger (SQLite). Timestamps are INTEGER unix milliseconds (UTC).
-- Kept close to portable SQL: the PostgreSQL migration mirrors it with BIGINT/BIGSERIAL.

-- One row per lead ever staged; `body` is the normalised lead as JSON.
CREATE TABLE leads (
    id        TEXT    NOT NULL PRIMARY KEY,
    source    TEXT    NOT NULL,
    staged_at INTEGER NOT NULL,
    body      TEXT    NOT NULL
);

-- One row per (lead, target): what that target is owed and what happened so far.
CREATE TABLE deliveries (
    id              INTEGER NOT NULL PRIMARY KEY,
    lead_id         TEXT    NOT NULL REFERENCES leads (id),
    target          TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When the next attempt is due (pending only; NULL once delivered or dead).
    next_attempt_at INTEGER,
    -- When the retry-age clock started: staging, or an operator's retry.
    age_from        INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    crm_ref         TEXT,
    error_code      TEXT,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    UNIQUE (lead_id, target)
);

-- Claims: due pending deliveries of one target, oldest first.
CREATE INDEX deliveries_claim ON deliveries (target, state, next_attempt_at);
-- Dead letters and the latest error, by recency.
CREATE INDEX deliveries_state_updated ON deliveries (state, updated_at);

-- Where each source has read up to; written in the same transaction as the leads.
CREATE TABLE source_cursors (
    source     TEXT    NOT NULL PRIMARY KEY,
    cursor     TEXT,
    updated_at INTEGER NOT NULL
);

-- Target-wide pauses (throttling), so a restart honours them.
CREATE TABLE target_pauses (
    target       TEXT    NOT NULL PRIMARY KEY,
    paused_until INTEGER NOT NULL,
    reason       TEXT    NOT NULL
);

-- Records a source could not read as leads (no personal data: origin and reason only).
CREATE TABLE quarantine (
    id     INTEGER NOT NULL PRIMARY KEY,
    source TEXT    NOT NULL,
    origin TEXT    NOT NULL,
    reason TEXT    NOT NULL,
    at     INTEGER NOT NULL,
    UNIQUE (source, origin, reason)
);

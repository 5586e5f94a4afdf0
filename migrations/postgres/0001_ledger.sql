-- The leadsync ledger (PostgreSQL). It mirrors migrations/sqlite/0001_ledger.sql: timestamps
-- are BIGINT unix milliseconds (UTC), leads are JSON text, every integer is BIGINT (so the
-- Rust side reads i64 from both backends). Several leadsync instances share it: deliveries
-- are leased per instance, each source is pulled under a lease row, and every instance
-- reports a heartbeat.

-- One row per lead ever staged; `body` is the normalised lead as JSON.
CREATE TABLE leads (
    id        TEXT   NOT NULL PRIMARY KEY,
    source    TEXT   NOT NULL,
    staged_at BIGINT NOT NULL,
    body      TEXT   NOT NULL
);

-- One row per (lead, target): what that target is owed and what happened so far.
CREATE TABLE deliveries (
    id              BIGSERIAL NOT NULL PRIMARY KEY,
    lead_id         TEXT      NOT NULL REFERENCES leads (id),
    target          TEXT      NOT NULL,
    idempotency_key TEXT      NOT NULL,
    state           TEXT      NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        BIGINT    NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When the next attempt is due (pending only; NULL once delivered or dead).
    next_attempt_at BIGINT,
    -- When the retry-age clock started: staging, or an operator's retry.
    age_from        BIGINT    NOT NULL,
    -- The instance id (`host:pid`) holding the delivery, and until when.
    lease_owner     TEXT,
    lease_until     BIGINT,
    crm_ref         TEXT,
    error_code      TEXT,
    error           TEXT,
    created_at      BIGINT    NOT NULL,
    updated_at      BIGINT    NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (lead_id, target)
);

-- Claims: due pending deliveries of one target, oldest first (only pending rows indexed).
CREATE INDEX deliveries_claim ON deliveries (target, next_attempt_at, id)
    WHERE state = 'pending';
-- Dead letters and the latest error, by recency.
CREATE INDEX deliveries_state_updated ON deliveries (state, updated_at);
-- `status`: live delivery leases per instance.
CREATE INDEX deliveries_lease_owner ON deliveries (lease_owner)
    WHERE lease_owner IS NOT NULL;

-- Where each source has read up to; written in the same transaction as the leads.
CREATE TABLE source_cursors (
    source     TEXT   NOT NULL PRIMARY KEY,
    cursor     TEXT,
    updated_at BIGINT NOT NULL
);

-- Target-wide pauses (throttling), so a restart honours them.
CREATE TABLE target_pauses (
    target       TEXT   NOT NULL PRIMARY KEY,
    paused_until BIGINT NOT NULL,
    reason       TEXT   NOT NULL
);

-- Records a source could not read as leads (no personal data: origin and reason only).
CREATE TABLE quarantine (
    id     BIGSERIAL NOT NULL PRIMARY KEY,
    source TEXT      NOT NULL,
    origin TEXT      NOT NULL,
    reason TEXT      NOT NULL,
    at     BIGINT    NOT NULL,
    UNIQUE (source, origin, reason)
);

-- Which instance pulls each source: one at a time, taken over once `lease_until` passed.
CREATE TABLE source_leases (
    source      TEXT   NOT NULL PRIMARY KEY,
    owner       TEXT   NOT NULL,
    lease_until BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL
);

-- Every daemon instance's heartbeat, for `status`.
CREATE TABLE instances (
    id         TEXT   NOT NULL PRIMARY KEY,
    host       TEXT   NOT NULL,
    pid        BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);

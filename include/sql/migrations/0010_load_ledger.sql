-- 0010: the loader's ledger (one row per write to Autotask), its runs, and the read-back verification.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- One row per write the loader makes, written before the request leaves (state pending) and moved after it:
--   pending -> sent -> confirmed | failed | unknown;  unknown (or a sent row after a crash) -> confirmed | resent;
--   resent behaves like sent. A write rejected before processing (429, unreachable) goes back to pending.
-- idempotency_key is the plan's slot key (month, kind family, target, effective date): one write per slot.
-- payload is the JSON body sent (never a secret: the hook puts credentials in headers only).
-- autotask_id: the record created or updated (NULL for an adjustment found applied by its units).
CREATE TABLE load_ledger (
    idempotency_key   VARCHAR(400)  PRIMARY KEY,
    action_id         VARCHAR(40)   NOT NULL,
    month             VARCHAR(7)    NOT NULL,
    run_id            VARCHAR(250)  NOT NULL,
    load_id           VARCHAR(40)   NOT NULL,
    kind              VARCHAR(30)   NOT NULL,
    entity            VARCHAR(60)   NOT NULL,
    verb              VARCHAR(10)   NOT NULL,
    payload           TEXT          NOT NULL,
    state             VARCHAR(20)   NOT NULL,
    autotask_id       BIGINT,
    response_summary  TEXT,
    error             TEXT,
    attempts          INTEGER       NOT NULL DEFAULT 0,
    created_at        TIMESTAMP     NOT NULL,
    sent_at           TIMESTAMP,
    finished_at       TIMESTAMP
);
CREATE INDEX ix_load_ledger_month ON load_ledger (month, state);
CREATE INDEX ix_load_ledger_action ON load_ledger (action_id);

-- One row per call of the loader for a month. status: running | succeeded | incomplete | paused | failed |
-- interrupted (a later load found it still running: the process died). counts: JSON of the LoadSummary.
CREATE TABLE load_runs (
    load_id        VARCHAR(40)   PRIMARY KEY,
    month          VARCHAR(7)    NOT NULL,
    run_id         VARCHAR(250)  NOT NULL,
    started_at     TIMESTAMP     NOT NULL,
    finished_at    TIMESTAMP,
    status         VARCHAR(20)   NOT NULL,
    writes         INTEGER       NOT NULL DEFAULT 0,
    requests_used  INTEGER       NOT NULL DEFAULT 0,
    counts         TEXT,
    resume_at      TIMESTAMP,
    message        TEXT
);
CREATE INDEX ix_load_runs_month ON load_runs (month, started_at);

-- The read-back after a load: one row per (contract service, date) compared, expected units from the plan,
-- found units from Autotask's ContractServiceUnits. matches = 0 rows are the differences.
-- check_kind: effective_date | month_end.
CREATE TABLE load_verifications (
    run_id               VARCHAR(250)   NOT NULL,
    month                VARCHAR(7)     NOT NULL,
    contract_id          BIGINT         NOT NULL,
    service_id           BIGINT         NOT NULL,
    check_date           DATE           NOT NULL,
    check_kind           VARCHAR(20)    NOT NULL,
    contract_service_id  BIGINT,
    subscription_ids     TEXT           NOT NULL,
    expected_units       NUMERIC(18, 4) NOT NULL,
    found_units          NUMERIC(18, 4),
    matches              INTEGER        NOT NULL,
    checked_at           TIMESTAMP      NOT NULL,
    PRIMARY KEY (run_id, contract_id, service_id, check_date, check_kind)
);

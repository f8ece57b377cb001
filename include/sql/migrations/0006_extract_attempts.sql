-- 0006: every extract attempt keeps its own row and its own raw records. A retried Airflow task reuses its
-- run id; the attempt number (1, 2, ...) tells the attempts apart, so a failed attempt and its reason stay
-- in the audit trail instead of being replaced by the retry. Existing rows become attempt 1.
-- Portable DDL: a primary key cannot be changed in place on SQLite, so both tables are rebuilt
-- (create new, copy, drop, rename), which runs unchanged on SQLite and PostgreSQL.

CREATE TABLE extract_runs_by_attempt (
    run_id         VARCHAR(250) NOT NULL,
    attempt        INTEGER      NOT NULL DEFAULT 1,
    month          VARCHAR(7)   NOT NULL,
    status         VARCHAR(20)  NOT NULL,  -- running | succeeded | rejected | failed
    started_at     TIMESTAMP    NOT NULL,
    finished_at    TIMESTAMP,
    raw_count      INTEGER      NOT NULL DEFAULT 0,
    line_count     INTEGER      NOT NULL DEFAULT 0,
    rejected_count INTEGER      NOT NULL DEFAULT 0,
    message        TEXT,
    PRIMARY KEY (run_id, attempt)
);
INSERT INTO extract_runs_by_attempt
    (run_id, attempt, month, status, started_at, finished_at, raw_count, line_count, rejected_count, message)
SELECT run_id, 1, month, status, started_at, finished_at, raw_count, line_count, rejected_count, message
FROM extract_runs;
DROP TABLE extract_runs;
ALTER TABLE extract_runs_by_attempt RENAME TO extract_runs;
CREATE INDEX ix_extract_runs_month ON extract_runs (month, started_at);

CREATE TABLE bss_charges_raw_by_attempt (
    run_id        VARCHAR(250) NOT NULL,
    attempt       INTEGER      NOT NULL DEFAULT 1,
    seq           INTEGER      NOT NULL,
    month         VARCHAR(7)   NOT NULL,
    charge_id     VARCHAR(100),
    payload       TEXT         NOT NULL,
    reject_field  VARCHAR(100),
    reject_reason TEXT,
    PRIMARY KEY (run_id, attempt, seq)
);
INSERT INTO bss_charges_raw_by_attempt (run_id, attempt, seq, month, charge_id, payload, reject_field, reject_reason)
SELECT run_id, 1, seq, month, charge_id, payload, reject_field, reject_reason
FROM bss_charges_raw;
DROP TABLE bss_charges_raw;
ALTER TABLE bss_charges_raw_by_attempt RENAME TO bss_charges_raw;
CREATE INDEX ix_bss_charges_raw_month ON bss_charges_raw (month, charge_id);

-- 0025: the charge lines a data-quality check holds. A check of severity `hold` (expectations/suites/) that
-- fails on some lines holds those lines' subscriptions (their plan lines are blocked, with this reason and what
-- a person can do), never the month. One row per run, held charge line and check. Portable DDL: runs unchanged
-- on SQLite and PostgreSQL.
CREATE TABLE quality_holds (
    run_id       VARCHAR(250)  NOT NULL,
    month        VARCHAR(7)    NOT NULL,
    charge_id    VARCHAR(200)  NOT NULL,
    expectation  VARCHAR(100)  NOT NULL,
    reason       TEXT          NOT NULL,
    held_at      TIMESTAMP     NOT NULL,
    PRIMARY KEY (run_id, charge_id, expectation)
);
CREATE INDEX ix_quality_holds_month ON quality_holds (month, run_id);

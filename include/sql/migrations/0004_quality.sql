-- 0004: the data-quality gate. One row per suite validated in a run: the outcome the review and the audit
-- trail show, and where the run's Data Docs report is. Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- stage: charges (raw + typed lines, before mapping) | plan (snapshot + change plan, before approval).
-- failures: JSON list of the failed expectations (name, severity, unexpected count, example keys).
CREATE TABLE quality_results (
    run_id             VARCHAR(250)  NOT NULL,
    suite              VARCHAR(100)  NOT NULL,
    month              VARCHAR(7)    NOT NULL,
    stage              VARCHAR(20)   NOT NULL,
    success            BOOLEAN       NOT NULL,
    row_count          INTEGER       NOT NULL DEFAULT 0,
    evaluated          INTEGER       NOT NULL DEFAULT 0,
    critical_failures  INTEGER       NOT NULL DEFAULT 0,
    warning_failures   INTEGER       NOT NULL DEFAULT 0,
    failures           TEXT          NOT NULL,
    data_docs_index    TEXT,
    validated_at       TIMESTAMP     NOT NULL,
    PRIMARY KEY (run_id, suite)
);
CREATE INDEX ix_quality_results_month ON quality_results (month, validated_at);

-- 0040: runs as snapshots, and approvals that record exactly what they approved (include/runs.py,
-- include/approval.py). Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- Every run that wrote a plan: the DAG it is a run of (a review route serves a run only under its own DAG), its
-- month, the sync settings it was planned with (JSON: a re-plan of a decision uses these, never the api-server's
-- environment), and, for a reversal run, the sync run it reverses. superseded_by / superseded_at: a later run's
-- plan of the month replaced this run's open lines (they are kept in superseded_plan_actions, so this run's review,
-- exports and months row never change).
CREATE TABLE billing_runs (
    run_id           VARCHAR(250)  PRIMARY KEY,
    dag_id           VARCHAR(250)  NOT NULL,
    month            VARCHAR(7)    NOT NULL,
    settings         TEXT,
    planned_at       TIMESTAMP     NOT NULL,
    reverses_run_id  VARCHAR(250),
    superseded_by    VARCHAR(250),
    superseded_at    TIMESTAMP
);
CREATE INDEX ix_billing_runs_month ON billing_runs (month, planned_at);

-- Runs planned before this migration: a run that extracted the month is a sync run, any other a reversal.
INSERT INTO billing_runs (run_id, dag_id, month, settings, planned_at)
SELECT p.run_id,
       CASE WHEN EXISTS (SELECT 1 FROM extract_runs e WHERE e.run_id = p.run_id)
            THEN 'bss_autotask_billing_sync' ELSE 'bss_autotask_billing_reversal' END,
       MIN(p.month), NULL, MIN(p.created_at)
FROM plan_actions p
GROUP BY p.run_id;

-- The open (proposed, flagged, needs-mapping, blocked) plan lines of a run that a later run of the month replaced:
-- what the earlier run's review shows of them (status, reason) and what its grid was built from (created_at).
CREATE TABLE superseded_plan_actions (
    run_id            VARCHAR(250)  NOT NULL,
    action_id         VARCHAR(40)   NOT NULL,
    month             VARCHAR(7)    NOT NULL,
    kind              VARCHAR(30)   NOT NULL,
    status            VARCHAR(20)   NOT NULL,
    reason            TEXT,
    account_id        VARCHAR(100),
    subscription_ids  TEXT,
    product_id        VARCHAR(100),
    decided_by        VARCHAR(100),
    created_at        TIMESTAMP     NOT NULL,
    superseded_by     VARCHAR(250)  NOT NULL,
    superseded_at     TIMESTAMP     NOT NULL,
    PRIMARY KEY (run_id, action_id)
);

-- What an approval signed: the fingerprint of the exact set of plan lines it approved (sha256 of their sorted ids;
-- the load refuses to write when its set differs), the figures the form showed for that set (JSON: lines by kind,
-- units and cost added and removed per currency) and the fingerprint of the form the person answered.
ALTER TABLE month_approvals ADD COLUMN approved_fingerprint VARCHAR(64);
ALTER TABLE month_approvals ADD COLUMN approved_figures TEXT;
ALTER TABLE month_approvals ADD COLUMN form_fingerprint VARCHAR(64);

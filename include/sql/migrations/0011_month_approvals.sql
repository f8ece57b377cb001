-- 0011: the approval of a month's change plan. One row per decision on a run's plan: who decided, when, how.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- decision: approved (the proposed actions) | approved_with_flagged (proposed and flagged) | rejected |
--   timed_out (nobody answered within approval_timeout_hours: counts as rejected) |
--   approved_by_policy (approval_policy auto_if_clean, the run was clean and small) |
--   dry_run (nothing approved: the run only reports what it would write).
-- decided_by: the responding user's name (NULL for a timeout; "policy:auto_if_clean" for the policy).
-- options: JSON list of the options chosen in the approval form. approved_actions: plan rows it approved.
-- note: a sentence for the run report and the audit trail (e.g. why the policy did or did not approve).
CREATE TABLE month_approvals (
    run_id            VARCHAR(250)  NOT NULL,
    month             VARCHAR(7)    NOT NULL,
    decision          VARCHAR(30)   NOT NULL,
    decided_by        VARCHAR(100),
    decided_at        TIMESTAMP     NOT NULL,
    options           TEXT          NOT NULL,
    approved_actions  INTEGER       NOT NULL DEFAULT 0,
    note              TEXT,
    PRIMARY KEY (run_id, decided_at)
);
CREATE INDEX ix_month_approvals_month ON month_approvals (month, decided_at);

-- 0012: the review page's decisions (plugins/billing_review, include/review.py).
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- The audit trail of every decision taken on the review page: who, when, what, and the state before and after
-- (JSON). decision: confirm_suggestion | reject_suggestion | link | create | exclude | include | approve_line |
-- unapprove_line. A mapping decision names its link (kind, source_key, target_id); a line decision its action.
CREATE TABLE review_decisions (
    decision_id   VARCHAR(40)   PRIMARY KEY,
    run_id        VARCHAR(250)  NOT NULL,
    month         VARCHAR(7)    NOT NULL,
    decision      VARCHAR(30)   NOT NULL,
    action_id     VARCHAR(40),
    kind          VARCHAR(20),
    source_key    VARCHAR(100),
    target_id     BIGINT,
    before_state  TEXT          NOT NULL,
    after_state   TEXT          NOT NULL,
    decided_by    VARCHAR(100)  NOT NULL,
    decided_at    TIMESTAMP     NOT NULL,
    note          TEXT
);
CREATE INDEX ix_review_decisions_run ON review_decisions (run_id, decided_at);

-- Flagged lines a reviewer approved one by one before the month's approval. The month's approval
-- (include/approval.py record_decision) approves them with the proposed lines; an action whose content changes
-- on re-planning gets a new action_id and needs approving again.
CREATE TABLE review_line_approvals (
    run_id        VARCHAR(250)  NOT NULL,
    action_id     VARCHAR(40)   NOT NULL,
    month         VARCHAR(7)    NOT NULL,
    approved_by   VARCHAR(100)  NOT NULL,
    approved_at   TIMESTAMP     NOT NULL,
    PRIMARY KEY (run_id, action_id)
);

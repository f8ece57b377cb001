-- 0003: mappings (remembered across months), fuzzy suggestions, the per-run resolution, and the change plan.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- The remembered links: BSS account -> Company, subscription -> Contract, product -> Service.
-- kind: company | contract | service. method: how the link was made
-- (key | name | confirmed_suggestion | manual | created | remembered). A manual link is never replaced by
-- auto-linking. flag: set while the Autotask record is missing (target_missing) or inactive (target_inactive).
CREATE TABLE mapping_links (
    kind          VARCHAR(20)  NOT NULL,
    source_key    VARCHAR(100) NOT NULL,
    target_id     BIGINT       NOT NULL,
    method        VARCHAR(30)  NOT NULL,
    linked_by     VARCHAR(100) NOT NULL,
    linked_at     TIMESTAMP    NOT NULL,
    source_name   VARCHAR(255),
    target_name   VARCHAR(255),
    first_month   VARCHAR(7),
    last_month    VARCHAR(7),
    flag          VARCHAR(30),
    flagged_at    TIMESTAMP,
    PRIMARY KEY (kind, source_key)
);
CREATE INDEX ix_mapping_links_target ON mapping_links (kind, target_id);

-- Every change to a link (who, when, from what to what): the audit trail of mapping decisions.
CREATE TABLE mapping_link_events (
    event_id      VARCHAR(40)  PRIMARY KEY,
    kind          VARCHAR(20)  NOT NULL,
    source_key    VARCHAR(100) NOT NULL,
    old_target_id BIGINT,
    new_target_id BIGINT,
    method        VARCHAR(30)  NOT NULL,
    changed_by    VARCHAR(100) NOT NULL,
    changed_at    TIMESTAMP    NOT NULL,
    note          TEXT
);
CREATE INDEX ix_mapping_link_events_source ON mapping_link_events (kind, source_key, changed_at);

-- Fuzzy candidates: shown to a person, never applied until confirmed.
-- status: open | confirmed | rejected | stale (the source got linked another way).
CREATE TABLE mapping_suggestions (
    kind          VARCHAR(20)    NOT NULL,
    source_key    VARCHAR(100)   NOT NULL,
    target_id     BIGINT         NOT NULL,
    score         NUMERIC(18, 4) NOT NULL,
    source_name   VARCHAR(255),
    target_name   VARCHAR(255),
    month         VARCHAR(7)     NOT NULL,
    run_id        VARCHAR(250)   NOT NULL,
    status        VARCHAR(20)    NOT NULL,
    created_at    TIMESTAMP      NOT NULL,
    decided_by    VARCHAR(100),
    decided_at    TIMESTAMP,
    PRIMARY KEY (kind, source_key, target_id)
);
CREATE INDEX ix_mapping_suggestions_status ON mapping_suggestions (status, kind);

-- How each source of a run's month was resolved. resolution: remembered | key | name | manual |
-- confirmed_suggestion | created | unlinked. target_id NULL when unlinked.
CREATE TABLE month_links (
    run_id        VARCHAR(250) NOT NULL,
    month         VARCHAR(7)   NOT NULL,
    kind          VARCHAR(20)  NOT NULL,
    source_key    VARCHAR(100) NOT NULL,
    target_id     BIGINT,
    resolution    VARCHAR(30)  NOT NULL,
    link_method   VARCHAR(30),
    flag          VARCHAR(30),
    suggestions   INTEGER      NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, kind, source_key)
);

-- The change plan: one row per action. action_id is stable for the same inputs; idempotency_key names the
-- slot in Autotask the action writes (month, target, effective date, kind family) for the loader's ledger.
-- *_action_id columns reference the plan row that creates a record not yet in Autotask.
-- status: proposed | needs-mapping | flagged | excluded | approved | applied | failed.
CREATE TABLE plan_actions (
    action_id                   VARCHAR(40)    PRIMARY KEY,
    idempotency_key             VARCHAR(400)   NOT NULL,
    month                       VARCHAR(7)     NOT NULL,
    run_id                      VARCHAR(250)   NOT NULL,
    seq                         INTEGER        NOT NULL,
    kind                        VARCHAR(30)    NOT NULL,
    status                      VARCHAR(20)    NOT NULL,
    reason                      TEXT,
    account_id                  VARCHAR(100),
    subscription_ids            TEXT,
    product_id                  VARCHAR(100),
    company_id                  BIGINT,
    company_action_id           VARCHAR(40),
    contract_id                 BIGINT,
    contract_action_id          VARCHAR(40),
    service_id                  BIGINT,
    service_action_id           VARCHAR(40),
    contract_service_id         BIGINT,
    contract_service_action_id  VARCHAR(40),
    effective_date              DATE,
    units_before                NUMERIC(18, 4),
    units_after                 NUMERIC(18, 4),
    unit_change                 NUMERIC(18, 4),
    unit_cost_before            NUMERIC(18, 4),
    unit_cost_after             NUMERIC(18, 4),
    end_date_before             DATE,
    end_date_after              DATE,
    payload                     TEXT           NOT NULL,
    charge_ids                  TEXT           NOT NULL,
    depends_on                  TEXT           NOT NULL,
    created_at                  TIMESTAMP      NOT NULL,
    decided_by                  VARCHAR(100),
    decided_at                  TIMESTAMP,
    applied_entity_id           BIGINT,
    error                       TEXT
);
CREATE INDEX ix_plan_actions_month ON plan_actions (month, status);
CREATE INDEX ix_plan_actions_key ON plan_actions (idempotency_key);
CREATE INDEX ix_plan_actions_run ON plan_actions (run_id, seq);

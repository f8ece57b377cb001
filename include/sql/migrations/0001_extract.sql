-- 0001: the extract stage. Raw BSS payloads per extract run, typed charge lines per month, accounts.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- One row per extract attempt of a month: what happened and why.
CREATE TABLE extract_runs (
    run_id         VARCHAR(250) PRIMARY KEY,
    month          VARCHAR(7)   NOT NULL,
    status         VARCHAR(20)  NOT NULL,  -- running | succeeded | rejected | failed
    started_at     TIMESTAMP    NOT NULL,
    finished_at    TIMESTAMP,
    raw_count      INTEGER      NOT NULL DEFAULT 0,
    line_count     INTEGER      NOT NULL DEFAULT 0,
    rejected_count INTEGER      NOT NULL DEFAULT 0,
    message        TEXT
);
CREATE INDEX ix_extract_runs_month ON extract_runs (month, started_at);

-- Every record the BSS returned, exactly as received, kept per run. A record that could not be typed
-- stays here with its reason, so nothing is dropped silently.
CREATE TABLE bss_charges_raw (
    run_id        VARCHAR(250) NOT NULL,
    seq           INTEGER      NOT NULL,
    month         VARCHAR(7)   NOT NULL,
    charge_id     VARCHAR(100),
    payload       TEXT         NOT NULL,
    reject_field  VARCHAR(100),
    reject_reason TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX ix_bss_charges_raw_month ON bss_charges_raw (month, charge_id);

-- The month's typed charge lines: replaced as a whole by each successful extract of that month.
CREATE TABLE charge_lines (
    month                 VARCHAR(7)     NOT NULL,
    charge_id             VARCHAR(100)   NOT NULL,
    account_id            VARCHAR(100)   NOT NULL,
    account_name          VARCHAR(255)   NOT NULL,
    account_code          VARCHAR(100),
    subscription_id       VARCHAR(100)   NOT NULL,
    subscription_status   VARCHAR(50),
    product_id            VARCHAR(100)   NOT NULL,
    product_sku           VARCHAR(100),
    product_name          VARCHAR(255)   NOT NULL,
    billing_plan_id       VARCHAR(100),
    billing_plan_name     VARCHAR(255),
    billing_period        VARCHAR(20)    NOT NULL,
    billing_cycle         VARCHAR(20)    NOT NULL,
    charge_type           VARCHAR(20)    NOT NULL,
    action                VARCHAR(30)    NOT NULL,
    quantity              NUMERIC(18, 4) NOT NULL,
    subscription_quantity NUMERIC(18, 4) NOT NULL,
    unit_cost             NUMERIC(18, 4) NOT NULL,
    unit_price            NUMERIC(18, 4) NOT NULL,
    currency              VARCHAR(3)     NOT NULL,
    charge_start_date     DATE           NOT NULL,
    charge_end_date       DATE           NOT NULL,
    effective_date        DATE           NOT NULL,
    invoice_id            VARCHAR(100),
    run_id                VARCHAR(250)   NOT NULL,
    PRIMARY KEY (month, charge_id)
);
CREATE INDEX ix_charge_lines_subscription ON charge_lines (month, subscription_id);
CREATE INDEX ix_charge_lines_account ON charge_lines (month, account_id);

-- BSS accounts (end customers) as last seen: what is needed to create an Autotask company.
CREATE TABLE bss_accounts (
    account_id   VARCHAR(100) PRIMARY KEY,
    name         VARCHAR(255) NOT NULL,
    code         VARCHAR(100),
    status       VARCHAR(50),
    phone        VARCHAR(50),
    email        VARCHAR(255),
    vat_number   VARCHAR(50),
    street       VARCHAR(255),
    city         VARCHAR(100),
    postal_code  VARCHAR(20),
    country      VARCHAR(100),
    run_id       VARCHAR(250) NOT NULL,
    fetched_at   TIMESTAMP    NOT NULL
);

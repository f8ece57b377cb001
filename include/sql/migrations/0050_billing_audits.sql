-- 0050: the leakage audit of a posted month (include/audit.py): what the BSS billed the MSP against what Autotask
-- billed the customers, per account and product. Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- One row per audit of a month. status: leaks_found | clean. leakage: JSON {currency: amount} of what was not
-- billed (expected price minus billed, over the findings), never summed across currencies. reads: JSON
-- {entity: ids asked} of the Autotask reads the audit made (BillingItems by contract, the others by their id).
CREATE TABLE billing_audits (
    audit_id        VARCHAR(64)   PRIMARY KEY,
    month           VARCHAR(7)    NOT NULL,
    audited_at      TIMESTAMP     NOT NULL,
    status          VARCHAR(20)   NOT NULL,
    bss_invoices    INTEGER       NOT NULL DEFAULT 0,
    bss_lines       INTEGER       NOT NULL DEFAULT 0,
    billing_items   INTEGER       NOT NULL DEFAULT 0,
    findings        INTEGER       NOT NULL DEFAULT 0,
    leakage         TEXT          NOT NULL,
    reads           TEXT          NOT NULL,
    report_dir      TEXT,
    triggered_by    VARCHAR(250)
);
CREATE INDEX ix_billing_audits_month ON billing_audits (month, audited_at);

-- The findings of an audit, one per account, product and currency with a leak. reason: not_billed |
-- billed_below_cost | under_billed | billed_not_in_bss | billed_in_other_currency. difference = billed - bss_cost.
CREATE TABLE billing_audit_findings (
    audit_id        VARCHAR(64)    NOT NULL,
    month           VARCHAR(7)     NOT NULL,
    seq             INTEGER        NOT NULL,
    account_id      VARCHAR(100),
    account_name    VARCHAR(255)   NOT NULL,
    company_id      BIGINT,
    product_id      VARCHAR(100),
    product_sku     VARCHAR(100),
    product_name    VARCHAR(255)   NOT NULL,
    currency        VARCHAR(3)     NOT NULL,
    bss_cost        NUMERIC(18, 4) NOT NULL,
    bss_price       NUMERIC(18, 4) NOT NULL,
    billed_amount   NUMERIC(18, 4) NOT NULL,
    billed_cost     NUMERIC(18, 4) NOT NULL,
    difference      NUMERIC(18, 4) NOT NULL,
    reason          VARCHAR(30)    NOT NULL,
    PRIMARY KEY (audit_id, seq)
);
CREATE INDEX ix_billing_audit_findings_month ON billing_audit_findings (month, reason);

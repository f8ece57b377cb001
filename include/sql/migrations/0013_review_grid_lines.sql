-- 0013: the review grid's lines as the page shows them (include/review.py build_grid).
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- What a run's plan lines show on the review page apart from their live status: names (customer, subscription,
-- product, SKU, contract), billing period and commitment, units, prices and costs, the proposed change and the
-- mapping state. Written when the plan is written or re-planned, so no page request gathers names.
-- plan_fingerprint: the plan and link state the lines were built from; a page request that sees another state
-- builds them again. The added/removed figures are scaled by 10,000 (exact sums). customer_key and search_text:
-- the customer name and the searchable names and ids, casefolded in Python (so "ü" finds "Ü" on both warehouses).
CREATE TABLE review_grids (
    run_id            VARCHAR(250)  PRIMARY KEY,
    plan_fingerprint  TEXT          NOT NULL,
    lines             INTEGER       NOT NULL,
    built_at          TIMESTAMP     NOT NULL
);

CREATE TABLE review_grid_lines (
    run_id            VARCHAR(250)  NOT NULL,
    action_id         VARCHAR(40)   NOT NULL,
    seq               INTEGER       NOT NULL,
    kind              VARCHAR(40)   NOT NULL,
    kind_label        TEXT          NOT NULL,
    customer          TEXT          NOT NULL,
    account_id        TEXT          NOT NULL,
    subscription      TEXT          NOT NULL,
    product           TEXT          NOT NULL,
    sku               TEXT          NOT NULL,
    contract          TEXT          NOT NULL,
    billing_period    TEXT          NOT NULL,
    commitment        TEXT          NOT NULL,
    bss_units         DOUBLE PRECISION,
    autotask_units    DOUBLE PRECISION,
    unit_change       DOUBLE PRECISION,
    change            TEXT          NOT NULL,
    effective_date    VARCHAR(10)   NOT NULL,
    unit_price        DOUBLE PRECISION,
    unit_cost         DOUBLE PRECISION,
    unit_cost_before  DOUBLE PRECISION,
    currency          VARCHAR(10)   NOT NULL,
    cost_change       DOUBLE PRECISION,
    mapping           VARCHAR(40)   NOT NULL,
    mapping_detail    TEXT          NOT NULL,
    units_added       BIGINT        NOT NULL,
    units_removed     BIGINT        NOT NULL,
    cost_added        BIGINT        NOT NULL,
    cost_removed      BIGINT        NOT NULL,
    customer_key      TEXT          NOT NULL,
    search_text       TEXT          NOT NULL,
    PRIMARY KEY (run_id, action_id)
);
CREATE INDEX ix_review_grid_lines_run ON review_grid_lines (run_id, seq);

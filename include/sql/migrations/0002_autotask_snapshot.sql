-- 0002: the Autotask snapshot. What Autotask held when a run compared against it, keyed by run_id, so
-- review and load work from exactly what was compared (never from a later, different state).
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- One row per snapshot taken: the month it serves and how much it holds.
CREATE TABLE at_snapshots (
    run_id                  VARCHAR(250) PRIMARY KEY,
    month                   VARCHAR(7)   NOT NULL,
    taken_at                TIMESTAMP    NOT NULL,
    units_from              DATE         NOT NULL,
    units_to                DATE         NOT NULL,
    companies               INTEGER      NOT NULL DEFAULT 0,
    contracts               INTEGER      NOT NULL DEFAULT 0,
    services                INTEGER      NOT NULL DEFAULT 0,
    contract_services       INTEGER      NOT NULL DEFAULT 0,
    contract_service_units  INTEGER      NOT NULL DEFAULT 0,
    reader_calls            INTEGER      NOT NULL DEFAULT 0
);
CREATE INDEX ix_at_snapshots_month ON at_snapshots (month, taken_at);

-- Companies; external_key is the value of the configured key (Company UDF or field) used to link accounts.
CREATE TABLE at_companies (
    run_id        VARCHAR(250) NOT NULL,
    company_id    BIGINT       NOT NULL,
    company_name  VARCHAR(255) NOT NULL,
    company_type  INTEGER,
    is_active     BOOLEAN      NOT NULL,
    phone         VARCHAR(50),
    external_key  VARCHAR(255),
    PRIMARY KEY (run_id, company_id)
);

-- Recurring-service contracts (contractType 7).
CREATE TABLE at_contracts (
    run_id           VARCHAR(250) NOT NULL,
    contract_id      BIGINT       NOT NULL,
    company_id       BIGINT       NOT NULL,
    contract_name    VARCHAR(255) NOT NULL,
    contract_number  VARCHAR(100),
    contract_type    INTEGER      NOT NULL,
    status           INTEGER,
    start_date       DATE,
    end_date         DATE,
    PRIMARY KEY (run_id, contract_id)
);

-- The service catalogue.
CREATE TABLE at_services (
    run_id           VARCHAR(250)   NOT NULL,
    service_id       BIGINT         NOT NULL,
    service_name     VARCHAR(255)   NOT NULL,
    sku              VARCHAR(100),
    period_type      INTEGER,
    unit_price       NUMERIC(18, 4),
    unit_cost        NUMERIC(18, 4),
    billing_code_id  BIGINT,
    is_active        BOOLEAN        NOT NULL,
    PRIMARY KEY (run_id, service_id)
);

-- Services on the snapshot's contracts (Autotask keeps no unit count here).
CREATE TABLE at_contract_services (
    run_id               VARCHAR(250)   NOT NULL,
    contract_service_id  BIGINT         NOT NULL,
    contract_id          BIGINT         NOT NULL,
    service_id           BIGINT         NOT NULL,
    unit_price           NUMERIC(18, 4),
    unit_cost            NUMERIC(18, 4),
    PRIMARY KEY (run_id, contract_service_id)
);
CREATE INDEX ix_at_contract_services_pair ON at_contract_services (run_id, contract_id, service_id);

-- ContractServiceUnits overlapping the snapshot's window: the units (and unit price/cost) per billing period.
CREATE TABLE at_contract_service_units (
    run_id                    VARCHAR(250)   NOT NULL,
    contract_service_unit_id  BIGINT         NOT NULL,
    contract_service_id       BIGINT         NOT NULL,
    contract_id               BIGINT,
    service_id                BIGINT,
    start_date                DATE           NOT NULL,
    end_date                  DATE           NOT NULL,
    units                     NUMERIC(18, 4) NOT NULL,
    price                     NUMERIC(18, 4),
    cost                      NUMERIC(18, 4),
    approve_and_post_date     TIMESTAMP,
    PRIMARY KEY (run_id, contract_service_unit_id)
);
CREATE INDEX ix_at_csu_contract_service ON at_contract_service_units (run_id, contract_service_id, start_date);

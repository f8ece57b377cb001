-- 0030: money on the change plan, and the price policy a person chose for one customer.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- What an action sets the customer's unit price from and to (NULL when it does not touch the price), and the
-- currency of its money (the BSS line's, which is the company's Autotask currency when it loads): unit_cost_*
-- and unit_price_* of one action are in this currency, never summed with another's.
ALTER TABLE plan_actions ADD COLUMN unit_price_before NUMERIC(18, 4);
ALTER TABLE plan_actions ADD COLUMN unit_price_after NUMERIC(18, 4);
ALTER TABLE plan_actions ADD COLUMN currency VARCHAR(3);

-- A customer's own price policy (include/prices.py): `keep`, `bss` or `markup:<percent>`, in place of the
-- BILLING_SYNC_PRICE_POLICY setting for the lines of this BSS account. One row per account; who set it and when.
CREATE TABLE price_policy_overrides (
    account_id  VARCHAR(100)  PRIMARY KEY,
    policy      VARCHAR(40)   NOT NULL,
    set_by      VARCHAR(250)  NOT NULL,
    set_at      TIMESTAMP     NOT NULL
);

-- Every change of an override, kept: who set which policy (NULL: back to the setting) when.
CREATE TABLE price_policy_override_events (
    event_id    VARCHAR(40)   PRIMARY KEY,
    account_id  VARCHAR(100)  NOT NULL,
    policy      VARCHAR(40),
    set_by      VARCHAR(250)  NOT NULL,
    set_at      TIMESTAMP     NOT NULL
);

-- 0035: billed, cost and margin on the review grid's lines (include/money.py line_money).
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- Per line: the BSS unit price and cost of the subscription's recurring line (never a setup fee), Autotask's unit
-- price and cost of the contract service (the run's snapshot), the monthly change in what the customer is billed and
-- the margin change; billed_added/billed_removed scaled by 10,000 like cost_added/cost_removed (exact sums).
ALTER TABLE review_grid_lines ADD COLUMN bss_unit_price DOUBLE PRECISION;
ALTER TABLE review_grid_lines ADD COLUMN bss_unit_cost DOUBLE PRECISION;
ALTER TABLE review_grid_lines ADD COLUMN autotask_unit_price DOUBLE PRECISION;
ALTER TABLE review_grid_lines ADD COLUMN autotask_unit_cost DOUBLE PRECISION;
ALTER TABLE review_grid_lines ADD COLUMN billed_change DOUBLE PRECISION;
ALTER TABLE review_grid_lines ADD COLUMN margin_change DOUBLE PRECISION;
ALTER TABLE review_grid_lines ADD COLUMN billed_added BIGINT NOT NULL DEFAULT 0;
ALTER TABLE review_grid_lines ADD COLUMN billed_removed BIGINT NOT NULL DEFAULT 0;

-- Lines stored before this migration have no billed figures: every grid is built again on its next request.
DELETE FROM review_grid_lines;
DELETE FROM review_grids;

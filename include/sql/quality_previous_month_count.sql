-- How many typed charge lines the previous month has: the centre of this month's row-count band.
-- 0 means no previous month in this warehouse (first run): no band is applied.
SELECT COUNT(*) FROM charge_lines WHERE month = :previous_month

-- The month's BSS products, one row each: sku, name and billing period (for linking to Autotask Services).
SELECT product_id, MAX(product_sku) AS product_sku, MAX(product_name) AS product_name,
       MAX(billing_period) AS billing_period
FROM charge_lines
WHERE month = :month
GROUP BY product_id
ORDER BY product_id

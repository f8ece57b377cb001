-- The Autotask ContractServiceUnits in a run's snapshot, with helper columns for the `autotask_snapshot` suite.
--   units_fraction: the non-integral part of units (0 for whole units);
--   contract_service_known: 1 when the unit row's contract service is in the same snapshot, else 0.
SELECT
    units.contract_service_unit_id,
    units.contract_service_id,
    units.contract_id,
    units.service_id,
    units.start_date,
    units.end_date,
    CAST(units.units AS DOUBLE PRECISION) AS units,
    CAST(units.price AS DOUBLE PRECISION) AS price,
    CAST(units.cost AS DOUBLE PRECISION) AS cost,
    CAST(units.units - ROUND(units.units) AS DOUBLE PRECISION) AS units_fraction,
    CASE WHEN services.contract_service_id IS NULL THEN 0 ELSE 1 END AS contract_service_known
FROM at_contract_service_units units
LEFT JOIN at_contract_services services
    ON services.run_id = units.run_id AND services.contract_service_id = units.contract_service_id
WHERE units.run_id = :run_id
ORDER BY units.contract_service_unit_id

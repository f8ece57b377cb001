-- The run's ContractServiceUnits rows: units, unit cost and unit price of each contract service per billing period.
SELECT contract_service_id, start_date, end_date, units, cost, price
FROM at_contract_service_units
WHERE run_id = :run_id
ORDER BY contract_service_id, start_date

"""An in-memory Autotask for reconciliation tests and the benchmark: the read methods of `AutotaskReader`,
plus the few writes a loader makes, applied with Autotask's unit rules.

Units model (what autotask-api.md §5–6 describes): a contract service's units change only through
adjustments; an adjustment changes the units from its effective date on and splits the billing period it
falls in; `ContractServiceUnits` are the periods (by the service's periodType, from the contract's start)
split at adjustment dates, for the contract's term. Two adjustments on one date, or one outside the
contract's dates, are refused as Autotask refuses them (here the initial units, an adjustment at the
contract's start, count as one; the HTTP sandbox exempts them).

Currencies: `Companies.currencyID` and a `Currencies` entity (id, name = ISO code, isInternalCurrency,
isActive), as the sandbox serves them; a company without currencyID bills in the internal currency.
"""

from __future__ import annotations

import bisect
import calendar
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from include.plan import ActionKind, PlanAction

PERIOD_MONTHS = {2: 1, 3: 3, 4: 6, 5: 12}


class FakeAutotaskError(RuntimeError):
    pass


@dataclass
class _ContractService:
    id: int
    contract_id: int
    service_id: int
    unit_price: float | None
    unit_cost: float | None
    # (effective date, unit change, adjusted unit cost or None), sorted by date
    adjustments: list[tuple[date, float, float | None]] = field(default_factory=list)
    # (effective date, adjusted unit price): the price an adjustment set from its date on
    price_changes: list[tuple[date, float]] = field(default_factory=list)


class FakeAutotask:
    def __init__(self) -> None:
        self.companies: dict[int, dict] = {}
        self.contracts: dict[int, dict] = {}
        self.services: dict[int, dict] = {}
        self.contract_services: dict[int, _ContractService] = {}
        # the tenant's currencies; the internal one is what a company without currencyID bills in
        self.currencies: dict[int, dict] = {
            1: {"id": 1, "name": "EUR", "isInternalCurrency": True, "isActive": True},
            2: {"id": 2, "name": "GBP", "isInternalCurrency": False, "isActive": True},
            3: {"id": 3, "name": "USD", "isInternalCurrency": False, "isActive": True},
        }
        self.calls: list[tuple[str, str, int]] = []  # (method, entity, values)
        self._next_id = {"Companies": 100, "Contracts": 1000, "Services": 500, "ContractServices": 5000}

    # -- building a state ------------------------------------------------------------------------------
    def _new_id(self, entity: str) -> int:
        self._next_id[entity] += 1
        return self._next_id[entity]

    def add_company(
        self,
        name: str,
        key: str | None = None,
        active: bool = True,
        phone: str = "+1 555 0100",
        udf_name: str = "BSS Account ID",
        currency: str | None = None,
    ) -> int:
        """A company; `currency` (an ISO code of `self.currencies`) sets its currencyID, None leaves it
        unset (the tenant's internal currency)."""
        company_id = self._new_id("Companies")
        udfs = [{"name": udf_name, "value": key}] if key is not None else []
        self.companies[company_id] = {
            "id": company_id,
            "companyName": name,
            "companyType": 1,
            "isActive": active,
            "phone": phone,
            "userDefinedFields": udfs,
            "currencyID": self.currency_id(currency) if currency else None,
        }
        return company_id

    def currency_id(self, iso_code: str) -> int:
        return next(record["id"] for record in self.currencies.values() if record["name"] == iso_code)

    def company_currency(self, company_id: int) -> str:
        """The ISO code a company bills in: its currencyID, else the internal currency."""
        currency_id = self.companies[company_id].get("currencyID")
        if currency_id is None:
            return next(record["name"] for record in self.currencies.values() if record["isInternalCurrency"])
        return self.currencies[currency_id]["name"]

    def add_contract(
        self,
        company_id: int,
        name: str,
        number: str | None,
        start: date,
        end: date,
        status: int = 1,
        contract_type: int = 7,
    ) -> int:
        contract_id = self._new_id("Contracts")
        self.contracts[contract_id] = {
            "id": contract_id,
            "companyID": company_id,
            "contractName": name,
            "contractNumber": number,
            "contractType": contract_type,
            "status": status,
            "startDate": _api(start),
            "endDate": _api(end),
        }
        return contract_id

    def add_service(
        self, name: str, sku: str | None, unit_cost: float, unit_price: float, period_type: int = 2, active: bool = True
    ) -> int:
        service_id = self._new_id("Services")
        self.services[service_id] = {
            "id": service_id,
            "name": name,
            "sku": sku,
            "periodType": period_type,
            "unitPrice": unit_price,
            "unitCost": unit_cost,
            "billingCodeID": 29682801,
            "isActive": active,
        }
        return service_id

    def add_contract_service(
        self,
        contract_id: int,
        service_id: int,
        units: float = 0,
        unit_cost: float | None = None,
        unit_price: float | None = None,
    ) -> int:
        cs_id = self._new_id("ContractServices")
        service = self.services[service_id]
        self.contract_services[cs_id] = _ContractService(
            cs_id,
            contract_id,
            service_id,
            unit_price if unit_price is not None else service["unitPrice"],
            unit_cost if unit_cost is not None else service["unitCost"],
        )
        if units:
            start = _day(self.contracts[contract_id]["startDate"])
            self.contract_services[cs_id].adjustments.append((start, float(units), None))
        return cs_id

    def adjust(
        self,
        cs_id: int,
        effective: date,
        unit_change: float,
        adjusted_unit_cost: float | None = None,
        check: bool = True,
        adjusted_unit_price: float | None = None,
    ) -> None:
        contract_service = self.contract_services[cs_id]
        contract = self.contracts[contract_service.contract_id]
        if check:
            if not _day(contract["startDate"]) <= effective <= _day(contract["endDate"]):
                raise FakeAutotaskError("effectiveDate must be between the start date and end date of the Contract")
            if any(day == effective for day, _, _ in contract_service.adjustments):
                raise FakeAutotaskError("Attempt to insert duplicate data into contract_service_period")
        bisect.insort(
            contract_service.adjustments, (effective, float(unit_change), adjusted_unit_cost), key=lambda item: item[0]
        )
        if adjusted_unit_price is not None:
            bisect.insort(contract_service.price_changes, (effective, float(adjusted_unit_price)), key=lambda x: x[0])

    # -- reading ---------------------------------------------------------------------------------------
    def units_on(self, cs_id: int, day: date) -> float:
        return sum(change for when, change, _ in self.contract_services[cs_id].adjustments if when <= day)

    def cost_on(self, cs_id: int, day: date) -> float | None:
        contract_service = self.contract_services[cs_id]
        cost = contract_service.unit_cost
        for when, _, adjusted in contract_service.adjustments:
            if when <= day and adjusted is not None:
                cost = adjusted
        return cost

    def price_on(self, cs_id: int, day: date) -> float | None:
        contract_service = self.contract_services[cs_id]
        price = contract_service.unit_price
        for when, adjusted in contract_service.price_changes:
            if when <= day:
                price = adjusted
        return price

    def unit_rows(self, cs_id: int, start: date, end: date) -> list[dict]:
        contract_service = self.contract_services[cs_id]
        contract = self.contracts[contract_service.contract_id]
        months = PERIOD_MONTHS.get(self.services[contract_service.service_id]["periodType"], 1)
        term_start, term_end = _day(contract["startDate"]), _day(contract["endDate"])
        # periods run from the term's start; begin at the last one starting on or before the window
        elapsed = (start.year - term_start.year) * 12 + start.month - term_start.month
        index = max(0, elapsed // months - 1)
        first = _add_months(term_start, months * index)
        boundaries = set()
        period = first
        while period <= min(term_end, end):
            boundaries.add(period)
            index += 1
            period = _add_months(term_start, months * index)
        boundaries.update(day for day, _, _ in contract_service.adjustments if first <= day <= term_end)
        ordered = sorted(boundaries)
        rows = []
        for index, row_start in enumerate(ordered):
            row_end = (ordered[index + 1] - timedelta(days=1)) if index + 1 < len(ordered) else term_end
            if row_end < start or row_start > end:
                continue
            rows.append(
                {
                    "id": cs_id * 100_000 + (row_start - date(2000, 1, 1)).days,
                    "contractServiceID": cs_id,
                    "contractID": contract_service.contract_id,
                    "serviceID": contract_service.service_id,
                    "startDate": _api(row_start),
                    "endDate": _api(row_end),
                    "units": self.units_on(cs_id, row_start),
                    "price": self.price_on(cs_id, row_start),
                    "cost": self.cost_on(cs_id, row_start),
                    "approveAndPostDate": None,
                }
            )
        return rows

    def _records(self, entity: str) -> list[dict]:
        if entity == "Companies":
            return list(self.companies.values())
        if entity == "Contracts":
            return list(self.contracts.values())
        if entity == "Services":
            return list(self.services.values())
        if entity == "Currencies":
            return list(self.currencies.values())
        if entity == "ContractServices":
            return [
                {
                    "id": cs.id,
                    "contractID": cs.contract_id,
                    "serviceID": cs.service_id,
                    "unitPrice": cs.unit_price,
                    "unitCost": cs.unit_cost,
                }
                for cs in self.contract_services.values()
            ]
        raise FakeAutotaskError(f"entity {entity} cannot be queried here")

    def query(
        self,
        entity: str,
        filters: list[dict] | None = None,
        include_fields: list[str] | None = None,
        max_records: int | None = None,
    ) -> list[dict]:
        self.calls.append(("query", entity, 0))
        found = [record for record in self._records(entity) if all(_matches(record, f) for f in filters or [])]
        found.sort(key=lambda record: record["id"])
        if include_fields:
            wanted = {"id", *include_fields}
            found = [{key: value for key, value in record.items() if key in wanted} for record in found]
        return found[:max_records] if max_records else found

    def query_in(
        self,
        entity: str,
        field: str,
        values: Iterable[Any],
        filters: list[dict] | None = None,
        include_fields: list[str] | None = None,
    ) -> list[dict]:
        wanted = set(values)
        self.calls.append(("query_in", entity, len(wanted)))
        found = [
            record
            for record in self._records(entity)
            if record.get(field) in wanted and all(_matches(record, f) for f in filters or [])
        ]
        found.sort(key=lambda record: record["id"])
        if include_fields:
            keep = {"id", *include_fields}
            found = [{key: value for key, value in record.items() if key in keep} for record in found]
        return found

    def get(self, entity: str, record_id: int) -> dict | None:
        self.calls.append(("get", entity, 1))
        return next((record for record in self._records(entity) if record["id"] == record_id), None)

    def contract_service_units(self, contract_service_ids: Iterable[int], start: date, end: date) -> list[dict]:
        ids = sorted(set(contract_service_ids))
        self.calls.append(("contract_service_units", "ContractServiceUnits", len(ids)))
        return [row for cs_id in ids if cs_id in self.contract_services for row in self.unit_rows(cs_id, start, end)]

    # -- a loader double -------------------------------------------------------------------------------
    def apply(self, actions: Iterable[PlanAction]) -> dict[str, tuple[str, int]]:
        """Apply plan actions in order, resolving symbolic references. Returns action id -> (kind, new id)."""
        created: dict[str, tuple[str, int]] = {}

        def resolve(record_id: int | None, action_id: str | None) -> int:
            if record_id is not None:
                return record_id
            if action_id not in created:
                raise FakeAutotaskError(f"reference to an action not applied: {action_id}")
            return created[action_id][1]

        for action in actions:
            if action.kind is ActionKind.REVIEW_UNBILLED:
                continue  # writes nothing unless a person chooses a change
            payload = json.loads(json.dumps(dict(action.payload)))
            if action.kind is ActionKind.CREATE_COMPANY:
                key = next((udf["value"] for udf in payload.get("userDefinedFields", [])), None)
                new_id = self.add_company(payload["companyName"], key, phone=payload["phone"])
            elif action.kind is ActionKind.CREATE_SERVICE:
                new_id = self.add_service(
                    payload["name"], payload["sku"], payload["unitCost"], payload["unitPrice"], payload["periodType"]
                )
            elif action.kind is ActionKind.CREATE_CONTRACT:
                new_id = self.add_contract(
                    resolve(action.company_id, action.company_action_id),
                    payload["contractName"],
                    payload["contractNumber"],
                    _day(payload["startDate"]),
                    _day(payload["endDate"]),
                    payload["status"],
                )
            elif action.kind is ActionKind.CREATE_CONTRACT_SERVICE:
                new_id = self.add_contract_service(
                    resolve(action.contract_id, action.contract_action_id),
                    resolve(action.service_id, action.service_action_id),
                    0,
                    payload["unitCost"],
                    payload["unitPrice"],
                )
            elif action.kind is ActionKind.EXTEND_CONTRACT:
                self.contracts[action.contract_id]["endDate"] = payload["endDate"]
                new_id = action.contract_id
            else:
                cs_id = resolve(action.contract_service_id, action.contract_service_action_id)
                self.adjust(
                    cs_id,
                    action.effective_date,
                    float(action.unit_change),
                    payload.get("adjustedUnitCost"),
                    adjusted_unit_price=payload.get("adjustedUnitPrice"),
                )
                new_id = cs_id
            created[action.action_id] = (str(action.kind), new_id)
        return created


def _matches(record: dict, condition: dict) -> bool:
    op = condition["op"]
    if op in ("and", "or"):
        results = [_matches(record, item) for item in condition["items"]]
        return all(results) if op == "and" else any(results)
    value = record.get(condition["field"])
    expected = condition.get("value")
    if isinstance(value, str) and isinstance(expected, str) and "T" in value and "T" not in expected:
        value = value[:10]
    return {
        "eq": lambda: value == expected,
        "noteq": lambda: value != expected,
        "in": lambda: value in expected,
        "notIn": lambda: value not in expected,
        "gt": lambda: value is not None and value > expected,
        "gte": lambda: value is not None and value >= expected,
        "lt": lambda: value is not None and value < expected,
        "lte": lambda: value is not None and value <= expected,
    }[op]()


def _api(day: date) -> str:
    return f"{day.isoformat()}T00:00:00"


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return day.replace(year=year, month=month + 1, day=min(day.day, calendar.monthrange(year, month + 1)[1]))

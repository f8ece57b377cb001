"""State of the Autotask sandbox: tables with lazy indexes, write validation, billing rules, persistence.

ContractServiceUnits are not stored: they are derived per contract service from the contract dates,
the service's period type and the unit adjustments (seeded initial units included), and cached
until one of those changes.
"""

from __future__ import annotations

import bisect
import calendar
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path

from sandbox.autotask_errors import ApiError
from sandbox.autotask_query import IndexHint, Page, Query, count_matches, index_key, page_after, page_before, udf_value
from sandbox.autotask_schema import (
    COMPANY_UDFS,
    ENTITIES,
    FIRST_IDS,
    PERIOD_MONTHS,
    PICKLISTS,
    RECURRING_SERVICE_CONTRACT,
    STRING,
    EntitySpec,
    Field,
    coerce,
    format_date,
    now_text,
    to_date,
    udf_name,
)

STORED_ENTITIES = (
    "Resources", "BillingCodes", "Companies", "Contracts", "Services", "ContractServices",
    "ContractServiceAdjustments",
)
# Units rows get ids derived from their contract service: contractServiceID * UNIT_ID_FACTOR + row number.
UNIT_ID_FACTOR = 1000
STATE_FORMAT = 1
CONTRACT_SERVICE_WRITABLE = {"adjustedPrice", "invoiceDescription"}


class Table:
    """Records of one entity by id, ids ascending, with equality indexes built on first use."""

    def __init__(self, name: str, records: Sequence[dict] = (), next_id: int = 1) -> None:
        self.name = name
        self.records: dict[int, dict] = {}
        self.ids: list[int] = []
        for record in sorted(records, key=lambda item: item["id"]):
            self.records[record["id"]] = record
            self.ids.append(record["id"])
        self.next_id = max([next_id, *(record_id + 1 for record_id in self.ids)])
        self._indexes: dict[tuple[str, bool], dict[object, set[int]]] = {}

    def get(self, record_id: int) -> dict | None:
        return self.records.get(record_id)

    def insert(self, record: dict) -> int:
        record_id = self.next_id
        self.next_id += 1
        record["id"] = record_id
        self.records[record_id] = record
        self.ids.append(record_id)  # ids only grow, so the list stays sorted
        for (field_name, udf), index in self._indexes.items():
            index.setdefault(self._key(record, field_name, udf), set()).add(record_id)
        return record_id

    def replace(self, record: dict) -> None:
        record_id = record["id"]
        old = self.records[record_id]
        for (field_name, udf), index in self._indexes.items():
            old_key, new_key = self._key(old, field_name, udf), self._key(record, field_name, udf)
            if old_key != new_key:
                index.get(old_key, set()).discard(record_id)
                index.setdefault(new_key, set()).add(record_id)
        self.records[record_id] = record

    def lookup(self, field_name: str, keys: frozenset | set, udf: bool = False) -> set[int]:
        """Ids whose `field_name` (compared by index_key) is one of `keys`."""
        if field_name == "id" and not udf:
            return {key for key in keys if isinstance(key, int) and key in self.records}
        index = self._indexes.get((field_name, udf))
        if index is None:
            index = {}
            for record_id, record in self.records.items():
                index.setdefault(self._key(record, field_name, udf), set()).add(record_id)
            self._indexes[(field_name, udf)] = index
        found: set[int] = set()
        for key in keys:
            found |= index.get(key, set())
        return found

    def find(self, field_name: str, value: object) -> list[dict]:
        return [self.records[record_id] for record_id in sorted(self.lookup(field_name, {index_key(value)}))]

    @staticmethod
    def _key(record: dict, field_name: str, udf: bool) -> object:
        return index_key(udf_value(record, field_name) if udf else record.get(field_name))


class Store:
    """The sandbox's data; every method raises ApiError with Autotask's texts on invalid input."""

    def __init__(self, state: dict[str, list[dict]] | None = None) -> None:
        self.tables: dict[str, Table] = {}
        self.writes = 0
        self.dirty = False
        self._units_cache: dict[int, list[dict]] = {}
        self.load(state or {})

    # --- state ---------------------------------------------------------------------------------------

    def load(self, state: dict) -> None:
        """Load either a seed (`{entity: [records]}`) or a saved state file's content."""
        tables = state.get("tables") if state.get("format") == STATE_FORMAT else None
        self.tables = {}
        for name in STORED_ENTITIES:
            if tables is not None:
                saved = tables.get(name, {})
                self.tables[name] = Table(name, saved.get("records", []), saved.get("next_id", 1))
            else:
                self.tables[name] = Table(name, state.get(name, []), FIRST_IDS.get(name, 1))
        self._units_cache.clear()

    def dump(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "tables": {
                name: {"next_id": table.next_id, "records": list(table.records.values())}
                for name, table in self.tables.items()
            },
        }

    def save(self, path: Path) -> None:
        """Write the state atomically: a temporary file in the same folder, then rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.dirty = False
        handle, temp_name = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as temp:
                json.dump(self.dump(), temp, ensure_ascii=False, separators=(",", ":"))
            os.replace(temp_name, path)
        except BaseException:
            self.dirty = True
            Path(temp_name).unlink(missing_ok=True)
            raise

    def _changed(self) -> None:
        self.writes += 1
        self.dirty = True

    # --- reads ---------------------------------------------------------------------------------------

    def get(self, entity: str, record_id: int) -> dict | None:
        if entity == "ContractServiceUnits":
            for row in self.unit_rows(record_id // UNIT_ID_FACTOR):
                if row["id"] == record_id:
                    return row
            return None
        return self.tables[entity].get(record_id)

    def page(self, entity: str, query: Query, after: int | None = None, before: int | None = None,
             size: int | None = None) -> Page:
        ids, get = self._candidates(entity, query)
        size = size or query.max_records
        if before is not None:
            return page_before(ids, get, query.predicate, before, size)
        return page_after(ids, get, query.predicate, after, size)

    def count(self, entity: str, query: Query) -> int:
        ids, get = self._candidates(entity, query)
        return count_matches(ids, get, query.predicate)

    def all_records(self, entity: str) -> list[dict]:
        if entity == "ContractServiceUnits":
            return [row for cs_id in self.tables["ContractServices"].ids for row in self.unit_rows(cs_id)]
        return list(self.tables[entity].records.values())

    def children(self, child: str, contract_id: int) -> list[dict]:
        if child == "ContractServiceUnits":
            return [row for cs in self.tables["ContractServices"].find("contractID", contract_id)
                    for row in self.unit_rows(cs["id"])]
        return self.tables[child].find("contractID", contract_id)

    def _candidates(self, entity: str, query: Query) -> tuple[Sequence[int], Callable[[int], dict]]:
        if entity == "ContractServiceUnits":
            return self._unit_candidates(query.hints, query.ranges)
        hints = query.hints
        table = self.tables[entity]
        best: set[int] | None = None
        for hint in hints:
            found = table.lookup(hint.field, hint.keys, hint.udf)
            best = found if best is None else best & found
        if best is None:
            return table.ids, table.records.__getitem__
        return sorted(best), table.records.__getitem__

    def _unit_candidates(self, hints: list[IndexHint], ranges: Sequence[tuple[str, str, object]]
                         ) -> tuple[Sequence[int], Callable[[int], dict]]:
        services = self.tables["ContractServices"]
        chosen: set[int] | None = None
        for hint in hints:
            if hint.field == "contractServiceID":
                found = services.lookup("id", hint.keys)
            elif hint.field == "id":
                found = services.lookup("id", {key // UNIT_ID_FACTOR for key in hint.keys if isinstance(key, int)})
            elif hint.field in ("contractID", "serviceID"):
                found = services.lookup(hint.field, hint.keys)
            else:
                continue
            chosen = found if chosen is None else chosen & found
        cs_ids = services.ids if chosen is None else sorted(chosen)
        rows = {row["id"]: row for cs_id in cs_ids for row in self.unit_rows(cs_id, ranges)}
        return list(rows), rows.__getitem__

    # --- generic writes ------------------------------------------------------------------------------

    def create(self, entity: str, body: object) -> int:
        spec = ENTITIES[entity]
        record = self._validated(spec, _body(body), existing=None, replace=False)
        self._check_rules(spec, record, None)
        record_id = self.tables[entity].insert(record)
        self._changed()
        return record_id

    def update(self, entity: str, body: object, replace: bool) -> int:
        spec = ENTITIES[entity]
        data = _body(body)
        existing = self.tables[entity].get(_record_id(data, entity))
        if existing is None:
            raise ApiError(f"Unable to find the {entity} record with id {data.get('id')}.")
        record = self._validated(spec, data, existing=existing, replace=replace)
        self._check_rules(spec, record, existing)
        self.tables[entity].replace(record)
        self._after_update(entity, existing, record)
        self._changed()
        return record["id"]

    def _validated(self, spec: EntitySpec, data: dict, existing: dict | None, replace: bool) -> dict:
        """The new stored record: coerced, checked against lengths, picklists, references, required."""
        errors: list[str] = []
        given: dict[str, object] = {}
        for key, value in data.items():
            spec_field = spec.field_named(key)
            if spec_field is None or spec_field.read_only or spec_field.name == "id":
                continue  # Autotask ignores unknown and read-only properties
            given[spec_field.name] = coerce(spec_field, value)
        if existing is None:
            record = {f.name: None for f in spec.fields if not f.write_only}
            record.update(_DEFAULTS.get(spec.name, {}))
        elif replace:
            record = {f.name: (existing.get(f.name) if f.read_only or f.create_only else None)
                      for f in spec.fields if not f.write_only}
        else:
            record = dict(existing)
        for name, value in given.items():
            spec_field = spec.by_name[name]
            if existing is not None and spec_field.create_only:
                if value != existing.get(name):
                    errors.append(f"The field {name} is read-only and cannot be changed after creation.")
                continue
            errors.extend(self._field_errors(spec_field, value))
            if not spec_field.write_only:
                record[name] = value
        if existing is None or replace:
            for spec_field in spec.fields:
                if spec_field.required and record.get(spec_field.name) in (None, ""):
                    errors.append(f"Required field {spec_field.name} is missing.")
        if spec.has_udfs:
            record["userDefinedFields"] = self._udfs(data, existing, errors)
        if errors:
            raise ApiError(errors)
        now = now_text()
        if existing is None:
            for stamp in ("createDate", "lastActivityDate", "lastModifiedDate", "lastModifiedDateTime"):
                if stamp in spec.by_name:
                    record[stamp] = now
        else:
            for stamp in ("lastActivityDate", "lastModifiedDate", "lastModifiedDateTime"):
                if stamp in spec.by_name:
                    record[stamp] = now
            record["id"] = existing["id"]
        return record

    def _field_errors(self, spec_field: Field, value: object) -> list[str]:
        if value is None:
            return []
        name = spec_field.name
        if spec_field.type == STRING and spec_field.length and len(str(value)) > spec_field.length:
            return [f"The value for field {name} exceeds the maximum length of {spec_field.length} characters."]
        if spec_field.picklist and value not in PICKLISTS[spec_field.picklist]:
            return [f"Value {value} is not a valid picklist value for field {name}."]
        reference = self.tables.get(spec_field.reference or "")
        if reference is not None and reference.get(value) is None:
            return [f"Reference value {value} for field {name} does not exist."]
        return []

    def _udfs(self, data: dict, existing: dict | None, errors: list[str]) -> list[dict]:
        values = {name: None for name, _, _ in COMPANY_UDFS}
        for udf in (existing or {}).get("userDefinedFields") or ():
            values[udf["name"]] = udf.get("value")
        sent = next((value for key, value in data.items() if key.lower() == "userdefinedfields"), None) or []
        if not isinstance(sent, list):
            errors.append("userDefinedFields must be a list of {name, value} objects.")
            sent = []
        for udf in sent:
            name = udf_name(str(udf.get("name"))) if isinstance(udf, dict) else None
            if name is None:
                errors.append(f"Unable to find user-defined field {udf.get('name') if isinstance(udf, dict) else udf}.")
                continue
            value = udf.get("value")
            values[name] = None if value in (None, "") else str(value)
        return [{"name": name, "value": value} for name, value in values.items()]

    def _check_rules(self, spec: EntitySpec, record: dict, existing: dict | None) -> None:
        if spec.name == "Companies":
            owner = self.tables["Resources"].get(record["ownerResourceID"])
            if owner is None or not owner.get("isActive"):
                raise ApiError(f"Reference value {record['ownerResourceID']} for field ownerResourceID does not exist.")
        elif spec.name == "Contracts":
            if record["endDate"] < record["startDate"]:
                raise ApiError("The endDate must be on or after the startDate.")
        elif spec.name == "Services":
            code = self.tables["BillingCodes"].get(record["billingCodeID"])
            if code is None or not code.get("isActive"):
                raise ApiError(f"Reference value {record['billingCodeID']} for field billingCodeID does not exist.")
            for other in self.tables["Services"].find("name", record["name"]):
                if existing is None or other["id"] != existing["id"]:
                    raise ApiError(f"A Service with the name '{record['name']}' already exists.")

    def _after_update(self, entity: str, old: dict, new: dict) -> None:
        if entity == "Contracts" and (old["startDate"], old["endDate"]) != (new["startDate"], new["endDate"]):
            for cs in self.tables["ContractServices"].find("contractID", new["id"]):
                self._units_cache.pop(cs["id"], None)
        elif entity == "Services" and old.get("periodType") != new.get("periodType"):
            self._units_cache.clear()

    # --- contract services ---------------------------------------------------------------------------

    def create_contract_service(self, body: object, contract_id: int | None = None) -> int:
        data = _body(body)
        contract_id = self._route_contract(data, contract_id)
        spec = ENTITIES["ContractServices"]
        record = self._validated(spec, {**data, "contractID": contract_id}, existing=None, replace=False)
        contract = self.tables["Contracts"].get(record["contractID"])
        if contract["contractType"] != RECURRING_SERVICE_CONTRACT:
            raise ApiError("Contract Services can only be added to Recurring Service contracts (contractType 7).")
        service = self.tables["Services"].get(record["serviceID"])
        if not service.get("isActive"):
            raise ApiError("An inactive Service cannot be added to a Contract.")
        for other in self.tables["ContractServices"].find("contractID", contract_id):
            if other["serviceID"] == record["serviceID"]:
                raise ApiError("The Service is already associated with this Contract.")
        record_id = self._insert_contract_service(record, data, service)
        self._changed()
        return record_id

    def _insert_contract_service(self, record: dict, data: dict, service: dict) -> int:
        if record.get("unitPrice") is None:
            record["unitPrice"] = service.get("unitPrice")
        if record.get("unitCost") is None:
            record["unitCost"] = service.get("unitCost")
        adjusted = next((value for key, value in data.items() if key.lower() == "adjustedprice"), None)
        adjusted = coerce(ENTITIES["ContractServices"].by_name["adjustedPrice"], adjusted)
        record["internalCurrencyUnitPrice"] = record["unitPrice"]
        record["internalCurrencyAdjustedPrice"] = adjusted if adjusted is not None else record["unitPrice"]
        return self.tables["ContractServices"].insert(record)

    def update_contract_service(self, body: object, contract_id: int | None = None) -> int:
        data = _body(body)
        table = self.tables["ContractServices"]
        existing = table.get(_record_id(data, "ContractServices"))
        if existing is None or (contract_id is not None and existing["contractID"] != contract_id):
            raise ApiError(f"Unable to find the ContractServices record with id {data.get('id')}.")
        spec = ENTITIES["ContractServices"]
        record = dict(existing)
        errors = []
        for key, value in data.items():
            spec_field = spec.field_named(key)
            if spec_field is None or spec_field.name == "id":
                continue
            value = coerce(spec_field, value)
            if spec_field.name == "adjustedPrice":
                record["internalCurrencyAdjustedPrice"] = value
            elif spec_field.name == "invoiceDescription":
                errors.extend(self._field_errors(spec_field, value))
                record["invoiceDescription"] = value
            elif value != existing.get(spec_field.name):
                errors.append(f"The field {spec_field.name} cannot be updated on a ContractService; "
                              "only adjustedPrice and invoiceDescription are writable.")
        if errors:
            raise ApiError(errors)
        table.replace(record)
        self._units_cache.pop(record["id"], None)
        self._changed()
        return record["id"]

    def _route_contract(self, data: dict, contract_id: int | None) -> int:
        body_contract = next((value for key, value in data.items() if key.lower() == "contractid"), None)
        if body_contract is not None:
            body_contract = coerce(ENTITIES["Contracts"].by_name["id"], body_contract)
            if contract_id is not None and body_contract != contract_id:
                raise ApiError("The contractID in the request body does not match the Contract in the URL.")
            return body_contract
        if contract_id is None:
            raise ApiError("Required field contractID is missing.")
        return contract_id

    # --- unit adjustments ----------------------------------------------------------------------------

    def create_adjustment(self, body: object, contract_id: int | None = None) -> int:
        data = _body(body)
        if contract_id is not None:
            data = {**data, "contractID": self._route_contract(data, contract_id)}
        spec = ENTITIES["ContractServiceAdjustments"]
        record = self._validated(spec, data, existing=None, replace=False)
        record["unitChange"] = record.get("unitChange") or 0
        services = self.tables["ContractServices"]
        cs = None
        if record.get("contractServiceID") is not None:
            cs = services.get(record["contractServiceID"])
            if record.get("contractID") not in (None, cs["contractID"]) or \
                    record.get("serviceID") not in (None, cs["serviceID"]):
                raise ApiError("The contractServiceID does not belong to the given contractID and serviceID.")
        elif record.get("contractID") is not None and record.get("serviceID") is not None:
            matches = [item for item in services.find("contractID", record["contractID"])
                       if item["serviceID"] == record["serviceID"]]
            cs = matches[0] if matches else None
        else:
            raise ApiError("Either contractServiceID or both contractID and serviceID are required.")
        contract = self.tables["Contracts"].get(cs["contractID"] if cs else record["contractID"])
        effective = record["effectiveDate"]
        if not contract["startDate"] <= effective <= contract["endDate"]:
            raise ApiError("effectiveDate must be between the start date and end date of the Contract")
        if cs is None:
            # Autotask adds the missing service to the contract before adjusting it.
            self._check_new_contract_service(contract, record["serviceID"])
            service = self.tables["Services"].get(record["serviceID"])
            cs_record = {f.name: None for f in ENTITIES["ContractServices"].fields if not f.write_only}
            cs_record.update(contractID=contract["id"], serviceID=service["id"])
            self._insert_contract_service(cs_record, {}, service)
            cs = cs_record
        history = self.tables["ContractServiceAdjustments"].find("contractServiceID", cs["id"])
        if any(item["effectiveDate"] == effective and not item.get("_initial") for item in history):
            raise ApiError("Attempt to insert duplicate data into contract_service_period")
        self._check_units_stay_positive(history, effective, record["unitChange"])
        record.update(contractServiceID=cs["id"], contractID=cs["contractID"], serviceID=cs["serviceID"])
        record_id = self.tables["ContractServiceAdjustments"].insert(record)
        self._units_cache.pop(cs["id"], None)
        self._changed()
        return record_id

    def _check_new_contract_service(self, contract: dict, service_id: int) -> None:
        if contract["contractType"] != RECURRING_SERVICE_CONTRACT:
            raise ApiError("Contract Services can only be added to Recurring Service contracts (contractType 7).")
        service = self.tables["Services"].get(service_id)
        if service is None or not service.get("isActive"):
            raise ApiError("An inactive Service cannot be added to a Contract.")

    @staticmethod
    def _check_units_stay_positive(history: list[dict], effective: str, unit_change: int) -> None:
        changes = sorted([(item["effectiveDate"], item["unitChange"] or 0) for item in history]
                         + [(effective, unit_change)])
        units = 0
        for day, change in changes:
            units += change
            if day >= effective and units < 0:
                raise ApiError("The unitChange would reduce the units of the contract service below zero.")

    # --- units -----------------------------------------------------------------------------------------

    def unit_rows(self, cs_id: int, ranges: Sequence[tuple[str, str, object]] = ()) -> list[dict]:
        """The ContractServiceUnits rows of one contract service; `ranges` may skip rows early."""
        rows = self._units_cache.get(cs_id)
        if rows is not None:
            return rows
        cs = self.tables["ContractServices"].get(cs_id)
        if cs is None:
            return []
        bounds = _UnitBounds(ranges)
        rows = self._build_unit_rows(cs, bounds)
        if bounds.empty:
            self._units_cache[cs_id] = rows
        return rows

    def _build_unit_rows(self, cs: dict, bounds: _UnitBounds) -> list[dict]:
        contract = self.tables["Contracts"].get(cs["contractID"])
        service = self.tables["Services"].get(cs["serviceID"]) or {}
        start, end = to_date(contract["startDate"]), to_date(contract["endDate"])
        months = PERIOD_MONTHS.get(service.get("periodType"), 1)
        changes = sorted(
            (to_date(item["effectiveDate"]), item["id"], item)
            for item in self.tables["ContractServiceAdjustments"].find("contractServiceID", cs["id"])
        )
        change_days = sorted({day for day, _, _ in changes})
        price = cs.get("internalCurrencyAdjustedPrice")
        price = cs.get("unitPrice") if price is None else price
        cost = cs.get("unitCost")
        units = 0
        applied = 0
        period = bounds.first_period(start, months)
        # rows of skipped periods still take their ids: one per period plus one per mid-period change
        row_number = period + sum(
            1 for day in change_days if start < day < _add_months(start, period * months)
            and day != _add_months(start, _months_between(start, day) // months * months)
        )
        rows: list[dict] = []
        while row_number < UNIT_ID_FACTOR - 1:
            period_start = _add_months(start, period * months)
            if period_start > end or bounds.after_all(period_start):
                break
            period += 1
            period_end = min(_add_months(start, period * months) - timedelta(days=1), end)
            low, high = bisect.bisect_right(change_days, period_start), bisect.bisect_right(change_days, period_end)
            starts = [period_start, *change_days[low:high]]
            if bounds.before_all(period_end):
                row_number += len(starts)  # skipped rows still take their ids
                continue
            for position, segment_start in enumerate(starts):
                row_number += 1
                while applied < len(changes) and changes[applied][0] <= segment_start:
                    adjustment = changes[applied][2]
                    units += adjustment.get("unitChange") or 0
                    if adjustment.get("adjustedUnitPrice") is not None:
                        price = adjustment["adjustedUnitPrice"]
                    if adjustment.get("adjustedUnitCost") is not None:
                        cost = adjustment["adjustedUnitCost"]
                    applied += 1
                segment_end = starts[position + 1] - timedelta(days=1) if position + 1 < len(starts) else period_end
                start_text, end_text = format_date(segment_start), format_date(segment_end)
                if not bounds.admits(start_text, end_text):
                    continue
                rows.append({
                    "id": cs["id"] * UNIT_ID_FACTOR + row_number,
                    "contractID": cs["contractID"],
                    "contractServiceID": cs["id"],
                    "serviceID": cs["serviceID"],
                    "startDate": start_text,
                    "endDate": end_text,
                    "units": units,
                    "price": price,
                    "cost": cost,
                    "internalCurrencyPrice": price,
                    "approveAndPostDate": None,
                    "vendorCompanyID": service.get("vendorCompanyID"),
                })
        return rows


class _UnitBounds:
    """Conservative date bounds from a query's top-level startDate/endDate ranges (the filter still runs)."""

    def __init__(self, ranges: Sequence[tuple[str, str, object]]) -> None:
        self.start_max: str | None = None
        self.start_min: str | None = None
        self.end_min: str | None = None
        self.end_max: str | None = None
        for name, op, value in ranges:
            if not isinstance(value, str):
                continue
            value = value.upper()  # filter values arrive case-folded; stored dates use "T"
            if name == "startDate" and op in ("lt", "lte"):
                self.start_max = min(self.start_max or value, value)
            elif name == "startDate" and op in ("gt", "gte"):
                self.start_min = max(self.start_min or value, value)
            elif name == "endDate" and op in ("gt", "gte"):
                self.end_min = max(self.end_min or value, value)
            elif name == "endDate" and op in ("lt", "lte"):
                self.end_max = min(self.end_max or value, value)
        self.empty = not (self.start_max or self.start_min or self.end_min or self.end_max)
        self.start_max_day = to_date(self.start_max) if self.start_max else None
        self.end_min_day = to_date(self.end_min) if self.end_min else None

    def first_period(self, start: date, months: int) -> int:
        """A period index no later than the first period that can end on or after end_min."""
        if self.end_min_day is None:
            return 0
        return max(0, _months_between(start, self.end_min_day) // months - 1)

    def after_all(self, period_start: date) -> bool:
        """Rows from here on start too late."""
        return self.start_max_day is not None and period_start > self.start_max_day

    def before_all(self, period_end: date) -> bool:
        """Every row of this period ends too early."""
        return self.end_min_day is not None and period_end < self.end_min_day

    def admits(self, start_text: str, end_text: str) -> bool:
        return not (
            (self.start_max is not None and start_text > self.start_max)
            or (self.start_min is not None and start_text < self.start_min[:10] + "T00:00:00")
            or (self.end_min is not None and end_text < self.end_min[:10] + "T00:00:00")
            or (self.end_max is not None and end_text > self.end_max)
        )


_DEFAULTS = {
    "Companies": {"isActive": True},
    "Services": {"isActive": True},
    "Contracts": {"isDefaultContract": False},
    "ContractServiceAdjustments": {"allowRepeatService": False},
}


def _body(body: object) -> dict:
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    return body


def _record_id(data: dict, entity: str) -> int:
    raw = next((value for key, value in data.items() if key.lower() == "id"), None)
    if raw in (None, 0, "0"):
        raise ApiError(f"An id is required to update a {entity} record.")
    return coerce(ENTITIES[entity].by_name["id"], raw)


def _months_between(first: date, later: date) -> int:
    return (later.year - first.year) * 12 + later.month - first.month


_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    if day.day <= 28:  # the common case needs no month length (hot in unit row generation)
        return date(year, month + 1, day.day)
    last = _DAYS_IN_MONTH[month] + (month == 1 and calendar.isleap(year))
    return date(year, month + 1, min(day.day, last))

"""State of the Autotask sandbox: tables with lazy indexes, write validation, billing rules, persistence.

ContractServiceUnits are not stored: they are derived per contract service from the contract dates,
the service's period type and the unit adjustments (seeded initial units included). What a contract
service's rows derive from (its "plan") and its full list of rows are cached until one of those changes;
a query with date ranges builds only the rows of its window, and pages walk the contract services in id
order, stopping as soon as a page is full.
"""

from __future__ import annotations

import bisect
import calendar
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from sandbox.autotask_errors import ApiError
from sandbox.autotask_query import IndexHint, Page, Query, count_matches, index_key, page_after, page_before, udf_value
from sandbox.autotask_schema import (
    CHARGE_REFUSING_CONTRACT_TYPES,
    COMPANY_UDFS,
    ENTITIES,
    FIRST_IDS,
    MATERIAL_BILLING_CODE_USE_TYPE,
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
    "Resources",
    "Currencies",
    "BillingCodes",
    "Companies",
    "Contracts",
    "Services",
    "ContractServices",
    "ContractServiceAdjustments",
    "ContractCharges",
    "BillingItems",
    "Invoices",
)
# Units rows get ids derived from their contract service: contractServiceID * UNIT_ID_FACTOR + row number.
UNIT_ID_FACTOR = 1000
# The saved state's format; 2: Currencies and Companies.currencyID; 3: ContractCharges, BillingItems, Invoices and
# the material billing codes (a state file of another format is seeded afresh).
STATE_FORMAT = 3
CONTRACT_SERVICE_WRITABLE = {"adjustedPrice", "invoiceDescription"}


_BILLED_CHARGE = "The ContractCharge {id} has been billed (Approve and Post) and cannot be {verb}."


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

    def remove(self, record_id: int) -> None:
        record = self.records.pop(record_id)
        self.ids.remove(record_id)
        for (field_name, udf), index in self._indexes.items():
            index.get(self._key(record, field_name, udf), set()).discard(record_id)

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
        self.accept_duplicate_adjustments = False  # the server's fault switch of the same name
        self.dirty = False
        self._units_cache: dict[int, list[dict]] = {}
        self._unit_plans: dict[int, _UnitPlan] = {}
        # contract service id -> {period row startDate: approveAndPostDate}, from the posted BillingItems
        self.posted_periods: dict[int, dict[str, str]] = {}
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
        self.posted_periods = {}
        for item in self.tables["BillingItems"].records.values():
            if item.get("_contractServiceID") is not None:
                self.posted_periods.setdefault(item["_contractServiceID"], {})[item["itemDate"]] = item["postedDate"]
        self._forget_units()
        self.plan_units()

    def forget_units(self, cs_id: int) -> None:
        """Drop one contract service's cached rows (posting changed their approveAndPostDate)."""
        self._forget_units(cs_id)

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

    def page(
        self, entity: str, query: Query, after: int | None = None, before: int | None = None, size: int | None = None
    ) -> Page:
        size = size or query.max_records
        if entity == "ContractServiceUnits":
            return self._unit_page(query, after, before, size)
        ids, get = self._candidates(entity, query)
        if before is not None:
            return page_before(ids, get, query.predicate, before, size)
        return page_after(ids, get, query.predicate, after, size)

    def count(self, entity: str, query: Query) -> int:
        if entity == "ContractServiceUnits":
            predicate = query.predicate
            bounds = _UnitBounds(query.ranges)
            return sum(
                1
                for cs_id in self._unit_services(query.hints)
                for row in self._unit_rows(cs_id, bounds)
                if predicate(row)
            )
        ids, get = self._candidates(entity, query)
        return count_matches(ids, get, query.predicate)

    def all_records(self, entity: str) -> list[dict]:
        if entity == "ContractServiceUnits":
            return [row for cs_id in self.tables["ContractServices"].ids for row in self.unit_rows(cs_id)]
        return list(self.tables[entity].records.values())

    def children(self, child: str, contract_id: int) -> list[dict]:
        if child == "ContractServiceUnits":
            return [
                row
                for cs in self.tables["ContractServices"].find("contractID", contract_id)
                for row in self.unit_rows(cs["id"])
            ]
        return self.tables[child].find("contractID", contract_id)

    def _candidates(self, entity: str, query: Query) -> tuple[Sequence[int], Callable[[int], dict]]:
        hints = query.hints
        table = self.tables[entity]
        best: set[int] | None = None
        for hint in hints:
            found = table.lookup(hint.field, hint.keys, hint.udf)
            best = found if best is None else best & found
        if best is None:
            return table.ids, table.records.__getitem__
        return sorted(best), table.records.__getitem__

    def _unit_services(self, hints: list[IndexHint]) -> Sequence[int]:
        """Ids (ascending) of the contract services whose rows the query's index hints allow."""
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
        return services.ids if chosen is None else sorted(chosen)

    def _unit_page(self, query: Query, after: int | None, before: int | None, size: int) -> Page:
        """Like page_after/page_before over all matching rows in id order, but rows are built per contract
        service (a row's id // UNIT_ID_FACTOR is its contract service) and only until the page is full."""
        cs_ids = self._unit_services(query.hints)
        bounds = _UnitBounds(query.ranges)
        predicate = query.predicate
        found: list[dict] = []
        if before is not None:
            end = bisect.bisect_right(cs_ids, before // UNIT_ID_FACTOR)
            has_previous = False
            for row in self._unit_rows_descending(cs_ids[:end], bounds):
                if row["id"] < before and predicate(row):
                    if len(found) == size:
                        has_previous = True
                        break
                    found.append(row)
            found.reverse()
            return Page(found, True, has_previous)
        if after is not None:
            cs_ids = cs_ids[bisect.bisect_left(cs_ids, after // UNIT_ID_FACTOR) :]
        for cs_id in cs_ids:
            for row in self._unit_rows(cs_id, bounds):
                if (after is None or row["id"] > after) and predicate(row):
                    if len(found) == size:
                        return Page(found, True, after is not None)
                    found.append(row)
        return Page(found, False, after is not None)

    def _unit_rows_descending(self, cs_ids: Sequence[int], bounds: _UnitBounds) -> Iterator[dict]:
        for cs_id in reversed(cs_ids):
            yield from reversed(self._unit_rows(cs_id, bounds))

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
        if entity == "ContractCharges" and existing.get("isBilled"):
            raise ApiError(_BILLED_CHARGE.format(verb="updated", id=existing["id"]))
        record = self._validated(spec, data, existing=existing, replace=replace)
        self._check_rules(spec, record, existing)
        self.tables[entity].replace(record)
        self._after_update(entity, existing, record)
        self._changed()
        return record["id"]

    def delete(self, entity: str, record_id: int) -> int:
        """DELETE a record the entity allows deleting (ContractCharges only while not billed)."""
        table = self.tables[entity]
        existing = table.get(record_id)
        if existing is None:
            raise ApiError(f"Unable to find the {entity} record with id {record_id}.")
        if entity == "ContractCharges" and existing.get("isBilled"):
            raise ApiError(_BILLED_CHARGE.format(verb="deleted", id=record_id))
        table.remove(record_id)
        self._changed()
        return record_id

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
            record = {
                f.name: (existing.get(f.name) if f.read_only or f.create_only else None)
                for f in spec.fields
                if not f.write_only
            }
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
        elif spec.name == "ContractCharges":
            self._check_charge(record, existing)

    def _check_charge(self, record: dict, existing: dict | None) -> None:
        """A contract charge's rules [doc]: a product or a billing code; refused on block, retainer and incident
        contracts unless the billing code is a purchase (material) code; a null unit price takes the code's;
        billableAmount = unitQuantity × unitPrice; a new charge is not billed."""
        if record.get("productID") is None and record.get("billingCodeID") is None:
            raise ApiError("Either productID or billingCodeID is required for a ContractCharge.")
        code = self.tables["BillingCodes"].get(record["billingCodeID"]) if record.get("billingCodeID") else None
        if code is not None and not code.get("isActive"):
            raise ApiError(f"Reference value {record['billingCodeID']} for field billingCodeID does not exist.")
        contract = self.tables["Contracts"].get(record["contractID"])
        refusing = CHARGE_REFUSING_CONTRACT_TYPES.get(contract["contractType"])
        if refusing and (code is None or code.get("useType") != MATERIAL_BILLING_CODE_USE_TYPE):
            raise ApiError(
                f"Contract Charges cannot be added to {refusing} contracts unless the billing code is a purchase code."
            )
        if record.get("unitPrice") is None and code is not None:
            record["unitPrice"] = code.get("unitPrice")
        quantity, price = record.get("unitQuantity"), record.get("unitPrice")
        record["billableAmount"] = None if price is None else round(quantity * price, 4)
        if existing is None:
            record["isBilled"] = False
            if record.get("isBillableToCompany") is None:
                record["isBillableToCompany"] = True

    def _after_update(self, entity: str, old: dict, new: dict) -> None:
        if entity == "Contracts" and (old["startDate"], old["endDate"]) != (new["startDate"], new["endDate"]):
            for cs in self.tables["ContractServices"].find("contractID", new["id"]):
                self._forget_units(cs["id"])
        elif entity == "Services" and (old.get("periodType"), old.get("vendorCompanyID")) != (
            new.get("periodType"),
            new.get("vendorCompanyID"),
        ):
            for cs in self.tables["ContractServices"].find("serviceID", new["id"]):
                self._forget_units(cs["id"])

    def _forget_units(self, cs_id: int | None = None) -> None:
        """Drop the cached plan and rows of one contract service (all when None) after a change."""
        if cs_id is None:
            self._units_cache.clear()
            self._unit_plans.clear()
        else:
            self._units_cache.pop(cs_id, None)
            self._unit_plans.pop(cs_id, None)

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
                errors.append(
                    f"The field {spec_field.name} cannot be updated on a ContractService; "
                    "only adjustedPrice and invoiceDescription are writable."
                )
        if errors:
            raise ApiError(errors)
        table.replace(record)
        self._forget_units(record["id"])
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
            if record.get("contractID") not in (None, cs["contractID"]) or record.get("serviceID") not in (
                None,
                cs["serviceID"],
            ):
                raise ApiError("The contractServiceID does not belong to the given contractID and serviceID.")
        elif record.get("contractID") is not None and record.get("serviceID") is not None:
            matches = [
                item
                for item in services.find("contractID", record["contractID"])
                if item["serviceID"] == record["serviceID"]
            ]
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
        same_day = any(item["effectiveDate"] == effective and not item.get("_initial") for item in history)
        if same_day and not self.accept_duplicate_adjustments:
            raise ApiError("Attempt to insert duplicate data into contract_service_period")
        self._check_units_stay_positive(history, effective, record["unitChange"])
        record.update(contractServiceID=cs["id"], contractID=cs["contractID"], serviceID=cs["serviceID"])
        record_id = self.tables["ContractServiceAdjustments"].insert(record)
        self._forget_units(cs["id"])
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
        changes = sorted(
            [(item["effectiveDate"], item["unitChange"] or 0) for item in history] + [(effective, unit_change)]
        )
        units = 0
        for day, change in changes:
            units += change
            if day >= effective and units < 0:
                raise ApiError("The unitChange would reduce the units of the contract service below zero.")

    # --- units -----------------------------------------------------------------------------------------

    def unit_rows(self, cs_id: int, ranges: Sequence[tuple[str, str, object]] = ()) -> list[dict]:
        """The ContractServiceUnits rows of one contract service; `ranges` may skip rows early."""
        return self._unit_rows(cs_id, _UnitBounds(ranges))

    def _unit_rows(self, cs_id: int, bounds: _UnitBounds) -> list[dict]:
        rows = self._units_cache.get(cs_id)
        if rows is not None:
            return rows
        plan = self._unit_plans.get(cs_id)
        if plan is None:
            cs = self.tables["ContractServices"].get(cs_id)
            if cs is None:
                return []
            plan = self._unit_plans[cs_id] = self._unit_plan(cs)
        rows = _build_unit_rows(plan, bounds)
        if bounds.empty:
            self._units_cache[cs_id] = rows
        return rows

    def plan_units(self) -> None:
        """Derive the unit plan of every contract service now (one pass over the adjustments), so that
        reads only build the rows of their window; a write drops the plans it touches again."""
        by_service: dict[object, list[dict]] = {}
        for item in self.tables["ContractServiceAdjustments"].records.values():  # ids ascending
            by_service.setdefault(index_key(item.get("contractServiceID")), []).append(item)
        for cs_id, cs in self.tables["ContractServices"].records.items():
            self._unit_plans[cs_id] = self._unit_plan(cs, by_service.get(cs_id, ()))

    def _unit_plan(self, cs: dict, adjustments: Sequence[dict] | None = None) -> _UnitPlan:
        contract = self.tables["Contracts"].get(cs["contractID"])
        service = self.tables["Services"].get(cs["serviceID"]) or {}
        start, end = to_date(contract["startDate"]), to_date(contract["endDate"])
        months = PERIOD_MONTHS.get(service.get("periodType"), 1)
        if adjustments is None:
            adjustments = self.tables["ContractServiceAdjustments"].find("contractServiceID", cs["id"])
        changes = sorted(
            (
                to_date(item["effectiveDate"]),
                item["id"],
                item.get("unitChange") or 0,
                item.get("adjustedUnitPrice"),
                item.get("adjustedUnitCost"),
            )
            for item in adjustments
        )
        change_days = sorted({change[0] for change in changes}) if len(changes) > 1 else [c[0] for c in changes]
        # changes that split a period (not on a period's first day): each adds a row
        splits = [
            day
            for day in change_days
            if start < day and day != _add_months(start, _months_between(start, day) // months * months)
        ]
        price = cs.get("internalCurrencyAdjustedPrice")
        return _UnitPlan(
            cs_id=cs["id"],
            contract_id=cs["contractID"],
            service_id=cs["serviceID"],
            vendor_id=service.get("vendorCompanyID"),
            start=start,
            end=end,
            months=months,
            changes=[
                (day, unit_change, adjusted_price, adjusted_cost)
                for day, _, unit_change, adjusted_price, adjusted_cost in changes
            ],
            change_days=change_days,
            splits=splits,
            price=cs.get("unitPrice") if price is None else price,
            cost=cs.get("unitCost"),
            posted=self.posted_periods.get(cs["id"], {}),
        )


@dataclass(slots=True)
class _UnitPlan:
    """What the ContractServiceUnits rows of one contract service derive from."""

    cs_id: int
    contract_id: int
    service_id: int
    vendor_id: int | None
    start: date
    end: date
    months: int
    changes: list[tuple[date, int, object, object]]  # (effective day, unit change, price, cost), in order
    change_days: list[date]
    splits: list[date]
    price: object
    cost: object
    posted: dict[str, str]  # period row startDate -> approveAndPostDate


_ONE_DAY = timedelta(days=1)
_DATE_TEXTS: dict[date, str] = {}  # format_date's results: few distinct dates, shared by many rows


def _date_text(day: date) -> str:
    text = _DATE_TEXTS[day] = format_date(day)
    return text


def _build_unit_rows(plan: _UnitPlan, bounds: _UnitBounds) -> list[dict]:
    start, end, months, changes, change_days = plan.start, plan.end, plan.months, plan.changes, plan.change_days
    last_start_day, first_end_day = bounds.last_start_day, bounds.first_end_day
    low_start, high_start, low_end, high_end = bounds.low_start, bounds.high_start, bounds.low_end, bounds.high_end
    price, cost = plan.price, plan.cost
    units = 0
    applied = 0
    pending = len(changes)
    period = bounds.first_period(start, months)
    # rows of skipped periods still take their ids: one per period plus one per mid-period change
    row_number = period + (bisect.bisect_left(plan.splits, _add_months(start, period * months)) if period else 0)
    rows: list[dict] = []
    base_id = plan.cs_id * UNIT_ID_FACTOR
    period_start = _add_months(start, period * months)
    while row_number < UNIT_ID_FACTOR - 1:
        if period_start > end or period_start > last_start_day:
            break
        period += 1
        next_start = _add_months(start, period * months)
        period_end = next_start - _ONE_DAY
        if period_end > end:
            period_end = end
        if change_days and change_days[-1] > period_start:
            low, high = bisect.bisect_right(change_days, period_start), bisect.bisect_right(change_days, period_end)
            starts = [period_start, *change_days[low:high]]
        else:
            starts = [period_start]
        if period_end < first_end_day:
            row_number += len(starts)  # skipped rows still take their ids
            period_start = next_start
            continue
        last = len(starts) - 1
        for position, segment_start in enumerate(starts):
            row_number += 1
            while applied < pending and changes[applied][0] <= segment_start:
                _, unit_change, adjusted_price, adjusted_cost = changes[applied]
                units += unit_change
                if adjusted_price is not None:
                    price = adjusted_price
                if adjusted_cost is not None:
                    cost = adjusted_cost
                applied += 1
            segment_end = starts[position + 1] - _ONE_DAY if position < last else period_end
            start_text = _DATE_TEXTS.get(segment_start) or _date_text(segment_start)
            end_text = _DATE_TEXTS.get(segment_end) or _date_text(segment_end)
            if not (low_start <= start_text <= high_start and low_end <= end_text <= high_end):
                continue
            rows.append(
                {
                    "id": base_id + row_number,
                    "contractID": plan.contract_id,
                    "contractServiceID": plan.cs_id,
                    "serviceID": plan.service_id,
                    "startDate": start_text,
                    "endDate": end_text,
                    "units": units,
                    "price": price,
                    "cost": cost,
                    "internalCurrencyPrice": price,
                    "approveAndPostDate": plan.posted.get(start_text),
                    "vendorCompanyID": plan.vendor_id,
                }
            )
        period_start = next_start
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
        # the same bounds without None, for the row loop: a row is admitted when
        # low_start <= startDate <= high_start and low_end <= endDate <= high_end
        self.low_start = self.start_min[:10] + "T00:00:00" if self.start_min is not None else ""
        self.high_start = self.start_max if self.start_max is not None else _TOP
        self.low_end = self.end_min[:10] + "T00:00:00" if self.end_min is not None else ""
        self.high_end = self.end_max if self.end_max is not None else _TOP
        self.start_max_day = to_date(self.start_max) if self.start_max else None
        self.end_min_day = to_date(self.end_min) if self.end_min else None
        self.last_start_day = self.start_max_day or date.max  # periods starting later hold no rows
        self.first_end_day = self.end_min_day or date.min  # periods ending earlier hold no rows

    def first_period(self, start: date, months: int) -> int:
        """A period index no later than the first period that can end on or after end_min."""
        if self.end_min_day is None:
            return 0
        return max(0, _months_between(start, self.end_min_day) // months - 1)

    def after_all(self, period_start: date) -> bool:
        """Rows from here on start too late."""
        return period_start > self.last_start_day

    def before_all(self, period_end: date) -> bool:
        """Every row of this period ends too early."""
        return period_end < self.first_end_day

    def admits(self, start_text: str, end_text: str) -> bool:
        return self.low_start <= start_text <= self.high_start and self.low_end <= end_text <= self.high_end


_TOP = "\U0010ffff"  # sorts after every date text


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

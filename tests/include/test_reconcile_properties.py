"""Properties of reconciliation: applying the plan makes Autotask's units equal the BSS units on every
compared date, and reconciling again afterwards finds nothing to do; on months with every shape of issue 8,
applying the loadable actions (proposed and flagged, never blocked) gives every linked subscription its BSS
units, never writes two adjustments on one date, and never touches another customer's company except to
zero the old contract service of a subscription that moved."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.field_mapping import autotask_effective_date
from include.mapping import link_month, set_manual_link
from include.plan import ActionKind, ActionStatus, load_plan
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.sync_settings import EffectiveDatePolicy, SyncSettings
from include.warehouse import Warehouse
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import account_row, line, store_month

MONTH = "2026-10"
ACCOUNT = ("ACC-1", "Contoso Ltd")
PRODUCT = ("PRD-1", "SKU-1", "Microsoft 365 Business Standard")


@st.composite
def subscription_histories(draw) -> list[tuple[str, bool, list[tuple[int, int]]]]:
    """1-3 subscriptions: (id, has a contract, [(day, units in force from that day)])."""
    histories = []
    for number in range(draw(st.integers(1, 3))):
        start_day = draw(st.sampled_from([1, 1, 1, draw(st.integers(2, 27))]))
        changes = [(start_day, draw(st.integers(0 if start_day == 1 else 1, 30)))]
        for day in sorted(draw(st.sets(st.integers(start_day + 1, 28), max_size=3))):
            changes.append((day, draw(st.integers(0, 30))))
        histories.append((f"SUB-{number + 1}", draw(st.booleans()) or number == 0, changes))
    return histories


def _lines(histories) -> list[dict]:
    rows = []
    for subscription, _, changes in histories:
        first_day, units = changes[0]
        rows.append(
            line(
                MONTH,
                ACCOUNT,
                subscription,
                PRODUCT,
                "Cycle" if first_day == 1 else "New",
                units,
                units,
                date(2026, 10, first_day),
            )
        )
        for day, total in changes[1:]:
            delta = total - units
            action = "Cancellation" if total == 0 else "QuantityIncrease" if delta >= 0 else "QuantityDecrease"
            rows.append(line(MONTH, ACCOUNT, subscription, PRODUCT, action, delta, total, date(2026, 10, day)))
            units = total
    return rows


def _bss_units(histories, day: date) -> int:
    total = 0
    for _, _, changes in histories:
        in_force = 0
        for change_day, units in changes:
            if date(2026, 10, change_day) <= day:
                in_force = units
        total += in_force
    return total


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    histories=subscription_histories(),
    initial_units=st.integers(0, 30),
    policy=st.sampled_from(list(EffectiveDatePolicy)),
)
def test_applied_plan_matches_bss_units_and_a_second_reconcile_is_empty(histories, initial_units, policy):
    sync = SyncSettings(
        owner_resource_id=1, billing_code_id=2, effective_date_policy=policy, review_decreases_from_months=10_000
    )
    fake = FakeAutotask()
    company = fake.add_company("Contoso Ltd", key="ACC-1")
    service = fake.add_service(PRODUCT[2], PRODUCT[1], 10.0, 12.0)
    shared = fake.add_contract(company, "M365", "SUB-1", date(2026, 1, 1), date(2026, 12, 31))
    cs_id = fake.add_contract_service(shared, service, initial_units)
    with tempfile.TemporaryDirectory() as directory:
        warehouse = Warehouse(f"sqlite:///{Path(directory) / 'w.db'}")
        warehouse.migrate()
        store_month(warehouse, MONTH, _lines(histories), [account_row(*ACCOUNT)])
        # subscriptions "with a contract" share SUB-1's (many-to-one); the others get their own, created
        for subscription, shares, _ in histories[1:]:
            if shares:
                set_manual_link(warehouse, "contract", subscription, shared, by="test")
        for run in ("run-1", "run-2"):
            take_snapshot(fake, warehouse, MONTH, run, sync)
            link_month(warehouse, MONTH, run, sync)
            reconcile_month(warehouse, MONTH, run, sync)
            plan = load_plan(warehouse, MONTH, run)
            if run == "run-2":
                assert plan == []
                break
            assert all(action.status is ActionStatus.PROPOSED for action in plan)
            created = fake.apply(plan)
        warehouse.dispose()

    # every compared date: the units of all contract services of the product equal the BSS units in force
    # at the last BSS date the policy posts there
    new_services = [value for kind, value in created.values() if kind == "create_contract_service"]
    bss_days = sorted({date(2026, 10, day) for _, _, changes in histories for day, _ in changes})
    for posted in sorted({autotask_effective_date(day, policy) for day in bss_days}):
        latest = max(day for day in bss_days if autotask_effective_date(day, policy) <= posted)
        autotask = fake.units_on(cs_id, posted) + sum(fake.units_on(cs, posted) for cs in new_services)
        assert autotask == _bss_units(histories, latest)


# -- every shape of issue 8 at once ------------------------------------------------------------------------

SEPTEMBER = "2026-09"
OTHER = ("ACC-OLD", "Contoso SARL")


@st.composite
def shaped_months(draw) -> dict:
    """A month with the shapes real BSS months take: per subscription a first line that is New, a restating
    Cycle/Renewal on any day (with or without a known September total), or a change line of an annual plan
    (with or without September); later changes, several on one day (ids whose text order is not their
    order); subscriptions sharing one contract service; a hand-made Autotask adjustment on a BSS date; a
    subscription billed in another currency; a subscription that moved here from another customer."""
    subscriptions = []
    for number in range(draw(st.integers(1, 3))):
        first = draw(st.sampled_from(["New", "Cycle", "Renewal", "change"]))
        known = first != "New" and draw(st.booleans())
        before = draw(st.integers(0 if first != "change" else 1, 20)) if first != "New" else 0
        day = draw(st.integers(1, 27))
        total = draw(st.integers(1, 25))
        later = sorted(draw(st.lists(st.integers(day, 28), max_size=3)))
        subscriptions.append(
            {
                "id": f"SUB-{number + 1}",
                "first": first,
                "known": known,
                "before": before,
                "day": day,
                "total": total,
                "changes": [(change_day, draw(st.integers(0, 25))) for change_day in later],
                "shares": number == 0 or draw(st.booleans()),
                "currency": "EUR" if number == 0 or draw(st.integers(0, 4)) else "GBP",
            }
        )
    return {
        "subscriptions": subscriptions,
        "initial_units": draw(st.integers(0, 30)),
        "contract_end": draw(st.sampled_from([date(2026, 12, 31), date(2026, 10, 10)])),
        "hand_adjustment": draw(st.one_of(st.none(), st.integers(-2, 3).filter(bool))),
        "moved": draw(st.one_of(st.none(), st.tuples(st.integers(1, 28), st.integers(1, 20), st.integers(0, 20)))),
        "policy": draw(st.sampled_from(list(EffectiveDatePolicy))),
    }


class _Ids:
    """Charge ids numbered from 8, so "CHG-9" and "CHG-10" meet; the text order is not the BSS order."""

    def __init__(self) -> None:
        self.next = 8

    def __call__(self) -> str:
        self.next += 1
        return f"CHG-{self.next}"


def _shaped_lines(month: dict) -> tuple[list[dict], list[dict], dict[str, list[tuple[date, int | None]]]]:
    """September's and October's lines, and per subscription the BSS truth: [(from date, units)], where
    units None means the BSS says nothing (before a restating line of a subscription nothing is known of)."""
    ids = _Ids()
    september, october, truth = [], [], {}
    for sub in month["subscriptions"]:
        options = {"cycle": "Annual" if sub["first"] == "change" else "Monthly", "currency": sub["currency"]}
        if sub["known"]:
            september.append(
                line(SEPTEMBER, ACCOUNT, sub["id"], PRODUCT, "Cycle", sub["before"], sub["before"], date(2026, 9, 1),
                     charge_id=ids(), **options)
            )  # fmt: skip
        first_day = date(2026, 10, sub["day"])
        if sub["first"] == "change":
            delta = sub["total"] - sub["before"] or 1
            total = sub["before"] + delta
            action = "QuantityIncrease" if delta > 0 else "QuantityDecrease"
            october.append(
                line(MONTH, ACCOUNT, sub["id"], PRODUCT, action, delta, total, first_day, charge_id=ids(), **options)
            )
            start: int | None = sub["before"]
        else:
            total = sub["total"]
            october.append(
                line(MONTH, ACCOUNT, sub["id"], PRODUCT, sub["first"], total, total, first_day, charge_id=ids(),
                     **options)
            )  # fmt: skip
            start = 0 if sub["first"] == "New" else sub["before"] if sub["known"] else None
        history = [(date(2026, 10, 1), start), (first_day, total)]
        for day, new_total in sub["changes"]:
            delta = new_total - total
            action = "Cancellation" if new_total == 0 else "QuantityIncrease" if delta >= 0 else "QuantityDecrease"
            october.append(
                line(MONTH, ACCOUNT, sub["id"], PRODUCT, action, delta, new_total, date(2026, 10, day),
                     charge_id=ids(), **options)
            )  # fmt: skip
            history.append((date(2026, 10, day), new_total))
            total = new_total
        truth[sub["id"]] = history
    return september, october, truth


def _in_force(history: list[tuple[date, int | None]], day: date) -> int | None:
    units: int | None = None
    for start, value in history:
        if start <= day:
            units = value
    return units


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(month=shaped_months())
def test_applying_the_loadable_plan_gives_every_linked_subscription_its_bss_units(month):
    policy = month["policy"]
    sync = SyncSettings(
        owner_resource_id=1, billing_code_id=2, effective_date_policy=policy, review_decreases_from_months=10_000
    )
    fake = FakeAutotask()
    company = fake.add_company(ACCOUNT[1], key=ACCOUNT[0], currency="EUR")
    other_company = fake.add_company(OTHER[1], key=OTHER[0], currency="EUR")
    service = fake.add_service(PRODUCT[2], PRODUCT[1], 10.0, 12.0)
    shared = fake.add_contract(company, "M365", "SUB-1", date(2026, 1, 1), month["contract_end"])
    shared_cs = fake.add_contract_service(shared, service, month["initial_units"])
    september, october, truth = _shaped_lines(month)
    shared_subscriptions = [sub["id"] for sub in month["subscriptions"] if sub["shares"]]
    bss_days = sorted({day for sub in shared_subscriptions for day, _ in truth[sub][1:]})
    hand_day = bss_days[len(bss_days) // 2] if bss_days else None
    if month["hand_adjustment"] is not None and hand_day and hand_day <= month["contract_end"]:
        # a person changed the units in Autotask on a BSS date (Autotask's own rules hold: inside the term)
        fake.adjust(shared_cs, hand_day, month["hand_adjustment"])
    old_cs = None
    if month["moved"]:
        move_day, units, old_units = month["moved"]
        old_contract = fake.add_contract(other_company, "M365 (SUB-M)", "SUB-M", date(2026, 1, 1), date(2026, 12, 31))
        old_cs = fake.add_contract_service(old_contract, service, old_units)
        october.append(line(MONTH, ACCOUNT, "SUB-M", PRODUCT, "Cycle", units, units, date(2026, 10, move_day)))
        truth["SUB-M"] = [(date(2026, 10, move_day), units)]
    with tempfile.TemporaryDirectory() as directory:
        warehouse = Warehouse(f"sqlite:///{Path(directory) / 'w.db'}")
        warehouse.migrate()
        if september:
            store_month(warehouse, SEPTEMBER, september, [account_row(*ACCOUNT)])
        store_month(warehouse, MONTH, october, [account_row(*ACCOUNT)])
        for sub in shared_subscriptions[1:]:
            set_manual_link(warehouse, "contract", sub, shared, by="test")
        take_snapshot(fake, warehouse, MONTH, "run-1", sync)
        with warehouse.begin() as conn:
            conn.execute(warehouse.table("at_companies").update().values(currency="EUR"))
        link_month(warehouse, MONTH, "run-1", sync)
        reconcile_month(warehouse, MONTH, "run-1", sync)
        plan = load_plan(warehouse, MONTH, "run-1")
        warehouse.dispose()

    adjustments = [a for a in plan if a.kind in (ActionKind.ADJUST_UNITS, ActionKind.CHANGE_COST)]
    # never two adjustments of one contract service on one date
    slots = [(a.target, a.effective_date) for a in adjustments]
    assert len(slots) == len(set(slots))
    # nothing written on another customer's company, except the flagged zeroing of the moved subscription
    for action in plan:
        if action.contract_id is not None and action.contract_id in fake.contracts:
            owner = fake.contracts[action.contract_id]["companyID"]
            if owner != company:
                assert action.subscription_ids == ("SUB-M",) and action.kind is ActionKind.ADJUST_UNITS
                assert action.status is ActionStatus.FLAGGED and action.units_after == 0
        if action.kind is ActionKind.CREATE_CONTRACT:
            assert action.company_id == company
    assert not [a for a in plan if a.status is ActionStatus.NEEDS_MAPPING]

    created = fake.apply([action for action in plan if action.loadable])  # no write Autotask refuses
    created_cs = {
        fake.contract_services[new_id].contract_id: new_id
        for kind, new_id in created.values()
        if kind == "create_contract_service"
    }
    cs_of = {sub: shared_cs for sub in shared_subscriptions}
    for contract_id, cs_id in created_cs.items():
        cs_of[fake.contracts[contract_id]["contractNumber"]] = cs_id

    def blocked_at(target: str, day: date) -> bool:
        """A blocked change on or before `day` that no later writable adjustment of the cs carries yet."""
        blocked = [a.effective_date for a in adjustments if a.target == target and a.status is ActionStatus.BLOCKED]
        written = [a.effective_date for a in adjustments if a.target == target and a.loadable]
        return any(b <= day and not any(b < w <= day for w in written) for b in blocked)

    in_other_currency = {sub["id"] for sub in month["subscriptions"] if sub["currency"] != "EUR"}
    shared_target = f"cs:C{shared}/V{service}"
    changed_days = sorted({day for history in truth.values() for day, _ in history})
    posted_days = sorted({autotask_effective_date(day, policy) for day in changed_days})
    for posted in [*posted_days, date(2026, 10, 31)]:
        # the BSS state Autotask must show from `posted` on: as of the last BSS date posted there
        latest = max((day for day in changed_days if autotask_effective_date(day, policy) <= posted), default=None)
        if latest is None:
            continue
        # the contract service all "sharing" subscriptions are on
        if not in_other_currency & set(shared_subscriptions) and not blocked_at(shared_target, posted):
            expected = [_in_force(truth[sub], latest) for sub in shared_subscriptions]
            if None not in expected:
                assert fake.units_on(shared_cs, posted) == sum(expected), (posted, plan)
        # subscriptions on contracts of their own, created by the plan, from their first line on
        for sub in month["subscriptions"]:
            if sub["shares"] or sub["id"] in in_other_currency:
                continue
            first_posted = autotask_effective_date(truth[sub["id"]][1][0], policy)
            if posted >= first_posted:
                # a subscription that never holds units needs no contract
                units = fake.units_on(cs_of[sub["id"]], posted) if sub["id"] in cs_of else 0
                assert units == _in_force(truth[sub["id"]], latest)
        if old_cs is not None and posted >= autotask_effective_date(truth["SUB-M"][0][0], policy):
            assert fake.units_on(old_cs, posted) == 0
            units = fake.units_on(cs_of["SUB-M"], posted) if "SUB-M" in cs_of else 0
            assert units == _in_force(truth["SUB-M"], latest)
    # a subscription in another currency is never written
    for sub in in_other_currency:
        assert all(sub not in a.subscription_ids for a in plan if a.loadable)

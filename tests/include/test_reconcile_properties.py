"""Properties of reconciliation: applying the plan makes Autotask's units equal the BSS units on every
compared date, and reconciling again afterwards finds nothing to do."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.field_mapping import autotask_effective_date
from include.mapping import link_month, set_manual_link
from include.plan import ActionStatus, load_plan
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

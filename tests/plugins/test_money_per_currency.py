"""Billed, cost and margin on every surface, per currency: a month of EUR, GBP and USD customers planned by the real
pipeline against the Autotask sandbox (over HTTP), then the approval form, the review page's totals, both exports, the
run report and the months page checked against the figures computed here from the plan lines one by one. No figure
anywhere may mix currencies, and every surface shows the same figures (one cent off is a failure)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from openpyxl import load_workbook

from include import review
from include.approval import OPTION_APPROVE, OPTION_APPROVE_WITH_FLAGGED, render_body, summarise_plan
from include.money import (
    BUCKETS,
    LOADS,
    SEAT_CHARGE_TYPES,
    MoneyTotals,
    PriceBook,
    line_money,
    money_bucket,
    money_text,
)
from include.report import write_run_report
from include.review_export import to_csv, to_xlsx
from include.warehouse import Warehouse
from stacks.launcher import RunningServer
from tests.plugins.review_support import MONTH, RUN_ID, plan_month, start_autotask

CURRENCIES = {"EUR", "GBP", "USD"}


@pytest.fixture(scope="module")
def autotask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_autotask(tmp_path_factory.mktemp("money-per-currency"))
    yield server
    server.stop()


@pytest.fixture
def planned(warehouse: Warehouse, autotask: RunningServer) -> Warehouse:
    httpx = pytest.importorskip("httpx")
    httpx.post(autotask.url + "/_admin/reset", timeout=30).raise_for_status()
    plan_month(autotask, warehouse)
    return warehouse


def expected_money(warehouse: Warehouse) -> tuple[MoneyTotals, dict[str, dict[str, Decimal]]]:
    """The run's money per currency and bucket, line by line from the plan rows, and per currency the Approve
    proposed answer's billed/cost added and removed (no line approved one by one here: the proposed lines)."""
    rows = warehouse.query("SELECT * FROM plan_actions WHERE run_id = :run ORDER BY seq", {"run": RUN_ID})
    book = PriceBook(warehouse, MONTH, RUN_ID, rows)
    totals = MoneyTotals()
    proposed: dict[str, dict[str, Decimal]] = {}
    for row in rows:
        if row["kind"] not in ("adjust_units", "change_cost"):
            continue
        money = line_money(row, book)
        totals.add(money, money_bucket(row["status"]))
        if row["status"] == "proposed":
            of = proposed.setdefault(money.currency, {"billed": Decimal(0), "cost": Decimal(0)})
            of["billed"] += money.billed_change
            of["cost"] += money.cost_change
    return totals, proposed


def test_no_figure_on_any_surface_mixes_currencies_and_every_surface_shows_the_same(
    planned: Warehouse, tmp_path: Path
) -> None:
    expected, proposed = expected_money(planned)
    figures = expected.as_dict()
    # the month really has three currencies with money in them, so a sum across currencies would show
    assert set(figures) == CURRENCIES
    moving = {currency for currency, parts in figures.items() if parts[LOADS]["lines"]}
    assert len(moving) >= 2, figures
    assert len({parts[LOADS]["billed"] for parts in figures.values()}) == len(figures)  # distinct amounts

    # -- the review page's totals (SQL over the stored grid lines) -----------------------------------------------
    page = review.grid_page(planned, RUN_ID, review.GridQuery(page_size=500))
    assert page["totals"]["money"] == figures
    json.dumps(page)  # what the page's JSON endpoint sends as it stands
    # and per line: the grid's billed change per currency adds up to the same amounts
    per_line: dict[str, Decimal] = {}
    for line in review.grid_rows(planned, RUN_ID):
        if line["billed_change"] is not None:
            per_line[line["currency"]] = per_line.get(line["currency"], Decimal(0)) + Decimal(
                str(line["billed_change"])
            ).quantize(Decimal("0.01"))
    for currency, parts in figures.items():
        assert sum(Decimal(parts[bucket]["billed"]) for bucket in BUCKETS) == per_line.get(currency, 0), currency

    # -- the approval form ----------------------------------------------------------------------------------------
    summary = summarise_plan(planned, MONTH, RUN_ID)
    assert summary.money.as_dict() == figures
    approve = summary.answers[OPTION_APPROVE]
    assert set(approve.currencies) == set(proposed)
    for currency, changes in approve.currencies.items():
        assert changes.billed_added - changes.billed_removed == proposed[currency]["billed"], currency
        assert changes.cost_added - changes.cost_removed == proposed[currency]["cost"], currency
        loads = figures[currency][LOADS]
        assert str(changes.margin) == loads["margin"], currency  # the form's margin is the page's
    body = render_body(summary)
    for currency, parts in figures.items():
        for bucket, label in BUCKETS.items():
            if parts[bucket]["lines"]:
                text = parts[bucket]["text"]
                row = f"| {currency} | {label}: {parts[bucket]['lines']} | {text['billed']} | {text['cost']} | "
                assert row in body, row
    form_rows = [line for line in body.splitlines() if line.startswith(f"| {OPTION_APPROVE_WITH_FLAGGED} |")]
    # one row per currency, each naming exactly one currency
    assert sorted(line.split("|")[2].strip() for line in form_rows) == sorted(
        summary.answers[OPTION_APPROVE_WITH_FLAGGED].currencies
    )

    # -- both exports ----------------------------------------------------------------------------------------------
    rows, totals = review.grid_export(planned, RUN_ID, review.GridQuery())
    assert totals["money"] == figures
    exported = list(csv.DictReader(io.StringIO(to_csv(rows))))
    csv_billed: dict[str, Decimal] = {}
    for row in exported:
        if row["Billed change per month"]:
            amount = Decimal(row["Billed change per month"])
            assert amount == amount.quantize(Decimal("0.01")) and not row["Billed change per month"].startswith("-0.00")
            csv_billed[row["Currency"]] = csv_billed.get(row["Currency"], Decimal(0)) + amount
    assert csv_billed == {currency: value for currency, value in per_line.items() if value or currency in csv_billed}
    sheet = load_workbook(io.BytesIO(to_xlsx(rows, totals, "money"))).active
    header = [cell.value for cell in sheet[1]]
    column = {name: index for index, name in enumerate(header)}
    found = {}
    for row in sheet.iter_rows(min_row=2):
        label = row[column["Product"]].value
        currency = row[column["Currency"]].value
        billed = row[column["Billed change per month"]]
        if isinstance(label, str) and " lines)" in label and currency:
            # a totals row: numeric cells in the currency's own number format
            assert isinstance(billed.value, (int, float)) and f'"{currency}"' in billed.number_format
            found[(currency, label.split(" (")[0])] = Decimal(str(billed.value)).quantize(Decimal("0.01"))
        elif row[column["Action id"]].value and isinstance(billed.value, (int, float)):
            assert f'"{currency}"' in billed.number_format  # a line's money in its own currency
    assert found == {
        (currency, label): Decimal(parts[bucket]["billed"])
        for currency, parts in figures.items()
        for bucket, label in BUCKETS.items()
    }

    # -- the run report ----------------------------------------------------------------------------------------------
    report = write_run_report(planned, MONTH, RUN_ID, tmp_path / "report", dry_run=True)
    shown = _month_money_rows(report.html_path)
    for currency, parts in figures.items():
        for bucket in BUCKETS:
            if parts[bucket]["lines"]:
                assert shown[(currency, bucket)] == (
                    f"{parts[bucket]['text']['billed']} {currency}",
                    f"{parts[bucket]['text']['cost']} {currency}",
                    f"{parts[bucket]['text']['margin']} {currency}",
                ), (currency, bucket)
            else:
                assert (currency, bucket) not in shown
    workbook = load_workbook(report.xlsx_path)
    summary_rows = {
        (row[0].value, row[2].value): row[1].value for row in workbook["Summary"].iter_rows(min_row=2) if row[2].value
    }
    for currency, parts in figures.items():
        for bucket, label in BUCKETS.items():
            if parts[bucket]["lines"]:
                value = summary_rows[(f"The month, {label}: margin", currency)]
                assert Decimal(str(value)) == Decimal(parts[bucket]["margin"])

    # -- the months page -----------------------------------------------------------------------------------------------
    [month] = review.months_overview(planned)
    assert month["money"] == figures


def test_a_subscription_with_a_setup_fee_is_priced_at_its_recurring_line_and_the_fee_is_shown_not_posted(
    planned: Warehouse, tmp_path: Path
) -> None:
    one_off = planned.query(
        "SELECT subscription_id, unit_price, quantity, currency, charge_id FROM charge_lines"
        " WHERE month = :month AND charge_type = 'OneTime'",
        {"month": MONTH},
    )
    assert one_off, "the sandbox month has setup fees"
    seats = {}
    for row in planned.query(
        "SELECT subscription_id, unit_price FROM charge_lines WHERE month = :month AND charge_type IN "
        f"({', '.join(repr(kind) for kind in SEAT_CHARGE_TYPES)}) ORDER BY effective_date, charge_id",
        {"month": MONTH},
    ):
        seats[row["subscription_id"]] = Decimal(str(row["unit_price"]))
    fees = {row["subscription_id"]: Decimal(str(row["unit_price"])) for row in one_off}
    lines = [
        line
        for line in review.grid_rows(planned, RUN_ID)
        if line["kind"] == "adjust_units" and line["subscription"] in fees
    ]
    assert lines, "a subscription with a setup fee has an adjustment this month"
    for line in lines:
        price = Decimal(str(line["unit_price"])).quantize(Decimal("0.0001"))
        assert price == seats[line["subscription"]].quantize(Decimal("0.0001")), line
        assert line["text"]["unit_price"] and "." in line["text"]["unit_price"]
    assert any(fees[line["subscription"]] != seats[line["subscription"]] for line in lines)

    page = review.grid_page(planned, RUN_ID, review.GridQuery())
    assert json.loads(json.dumps(page))["one_off_totals"] == page["one_off_totals"]
    assert {charge["charge_id"] for charge in page["one_off"]} == {row["charge_id"] for row in one_off}
    for charge in page["one_off"]:
        assert charge["state"] == "one-off charge, not posted yet"
        assert charge["text"]["amount"] == money_text(
            Decimal(str(charge["quantity"])) * Decimal(str(charge["unit_price"]))
        )
    report = write_run_report(planned, MONTH, RUN_ID, tmp_path / "report", dry_run=True)
    html = report.html_path.read_text(encoding="utf-8")
    assert "One-off charges, not posted yet" in html
    for row in one_off:
        assert f'data-charge-id="{row["charge_id"]}"' in html
    charges = load_workbook(report.xlsx_path)["One-off charges"]
    assert charges.max_row >= len(one_off) + 1
    # nothing of a setup fee is in the plan: no plan line carries a OneTime charge id
    plan_charges = {
        charge
        for row in planned.query("SELECT charge_ids FROM plan_actions")
        for charge in json.loads(row["charge_ids"])
    }
    assert not plan_charges & {row["charge_id"] for row in one_off}


class _MonthMoney(HTMLParser):
    """The report's "month-money" table: (currency, bucket) -> (billed, cost, margin) texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._in_table = False
        self._row: tuple[str, str] | None = None
        self._cell: str | None = None
        self._cells: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table" and found.get("data-table") == "month-money":
            self._in_table = True
        elif self._in_table and tag == "tr" and found.get("data-bucket"):
            self._row, self._cells = (str(found["data-currency"]), str(found["data-bucket"])), {}
        elif self._row and tag == "td" and found.get("data-total"):
            self._cell = str(found["data-total"])
            self._cells[self._cell] = ""

    def handle_data(self, data: str) -> None:
        if self._cell:
            self._cells[self._cell] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr" and self._row:
            self.rows[self._row] = (self._cells["billed"], self._cells["cost"], self._cells["margin"])
            self._row = None
        elif tag == "table":
            self._in_table = False


def _month_money_rows(path: Path) -> dict[tuple[str, str], tuple[str, str, str]]:
    parser = _MonthMoney()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.rows

"""The review grid as CSV and XLSX, with the grid's current filter and sort (see `include.review`).

Both are safe to open in a spreadsheet: a text that starts like a formula (=, +, -, @, tab, carriage return) stays
text. In CSV it is prefixed with a single quote (OWASP "CSV injection"); in XLSX its cell is typed as a string,
so the value reads back unchanged and is never evaluated. XLSX cells are typed: numbers as numbers, dates as
dates; a header row, frozen panes, an autofilter, and totals (units; cost per currency) under the lines.
The XLSX is written by XlsxWriter (see `to_xlsx`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import xlsxwriter

from include.money import cents
from include.report import FORMULA_START  # what a spreadsheet reads as a formula, as the run report escapes it

# (key in the grid row, header, type): text | number | units | unit (a unit price or cost) | money | date.
# Money and unit prices are in the line's currency (its Currency column; XLSX: a number format naming it).
COLUMNS: Sequence[tuple[str, str, str]] = (
    ("seq", "Line", "number"),
    ("customer", "Customer", "text"),
    ("account_id", "BSS account", "text"),
    ("subscription", "Subscription", "text"),
    ("product", "Product", "text"),
    ("sku", "SKU", "text"),
    ("contract", "Autotask contract", "text"),
    ("billing_period", "Billing period", "text"),
    ("commitment", "Commitment", "text"),
    ("kind_label", "Action", "text"),
    ("change", "Proposed change", "text"),
    ("bss_units", "BSS units", "units"),
    ("autotask_units", "Autotask units", "units"),
    ("unit_change", "Unit change", "units"),
    ("effective_date", "Effective date", "date"),
    ("unit_price", "Unit price (loads)", "unit"),
    ("unit_cost", "Unit cost", "unit"),
    ("currency", "Currency", "text"),
    ("bss_unit_price", "BSS unit price", "unit"),
    ("bss_unit_cost", "BSS unit cost", "unit"),
    ("autotask_unit_price", "Autotask unit price", "unit"),
    ("autotask_unit_cost", "Autotask unit cost", "unit"),
    ("billed_change", "Billed change per month", "money"),
    ("cost_change", "Cost change per month", "money"),
    ("margin_change", "Margin change per month", "money"),
    ("mapping", "Mapping", "text"),
    ("mapping_detail", "Mapping detail", "text"),
    ("status", "Status", "text"),
    ("line_approved_by", "Line approved by", "text"),
    ("reason", "Reason", "text"),
    ("action_id", "Action id", "text"),
)


def safe_text(value: Any) -> str:
    """A text value for CSV: one that a spreadsheet would read as a formula gets a leading quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([header for _key, header, _kind in COLUMNS])
    for row in rows:
        writer.writerow(
            [
                safe_text(row.get(key))
                if kind not in _NUMBERS or row.get(key) is None
                else _csv_number(row.get(key), kind)
                for key, _header, kind in COLUMNS
            ]
        )
    return buffer.getvalue()


_NUMBERS = ("number", "units", "unit", "money")


def _csv_number(value: Any, kind: str) -> str:
    """A number for CSV as a spreadsheet reads it: money to the cent, unit prices to their 4 places at most, whole
    units without ".0"; no thousands separators (a CSV reader would split or misread them), never "-0.00"."""
    number = Decimal(str(value))
    if kind == "money":
        return str(cents(number))
    if kind == "unit":
        whole, _, places = f"{number.quantize(Decimal('0.0001')):f}".partition(".")
        return f"{whole}.{places.rstrip('0').ljust(2, '0')}"
    return _number_text(value)


def to_xlsx(rows: Iterable[Mapping[str, Any]], totals: Mapping[str, Any], title: str) -> bytes:
    """The workbook as bytes, written by XlsxWriter in constant-memory mode (rows are streamed in order).

    Every text goes through `write_string`, so a value starting with =, +, - or @ is a string cell and never a
    formula; numbers are number cells, dates are dates with a date format. A bold header, panes frozen at C2
    (header and line/customer columns), an autofilter over the lines, the totals under them and an "About"
    sheet. XlsxWriter escapes the control characters XML cannot carry. openpyxl (write-only mode) took 9.7 s for
    20,000 lines on this machine, XlsxWriter about 3 s."""
    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(buffer, {"constant_memory": True})
    bold = workbook.add_format({"bold": True})
    day = workbook.add_format({"num_format": "yyyy-mm-dd"})
    amount = workbook.add_format({"num_format": "#,##0.00##"})
    whole = workbook.add_format({"num_format": "0"})
    units = {
        True: workbook.add_format({"num_format": "#,##0"}),
        False: workbook.add_format({"num_format": "#,##0.####"}),
    }
    formats: dict[tuple[str, str, bool], Any] = {}

    def currency_format(currency: str, kind: str, bold_cell: bool = False) -> Any:
        """A number format in the line's currency: money `#,##0.00 "EUR"`, unit prices with up to 4 places."""
        key = (currency, kind, bold_cell)
        if key not in formats:
            pattern = "#,##0.00" if kind == "money" else "#,##0.00##"
            label = "".join(char for char in currency if char.isalnum())
            suffix = f' "{label}"' if label else ""
            # negative amounts with a minus, zero as 0.00 (never -0.00)
            formats[key] = workbook.add_format(
                {"num_format": f"{pattern}{suffix};-{pattern}{suffix};{pattern}{suffix}", "bold": bold_cell}
            )
        return formats[key]

    sheet = workbook.add_worksheet("Review")
    keys = [key for key, _name, _kind in COLUMNS]
    widths = {"customer": 32, "product": 30, "contract": 30, "change": 26, "reason": 60, "mapping_detail": 30}
    for index, key in enumerate(keys):
        sheet.set_column(index, index, widths.get(key, 14))
    sheet.freeze_panes(1, 2)
    for index, (_key, name, _kind) in enumerate(COLUMNS):
        sheet.write_string(0, index, name, bold)
    write_text, write_number, write_date = sheet.write_string, sheet.write_number, sheet.write_datetime
    typed = [(index, key, kind, whole if key == "seq" else amount) for index, (key, _n, kind) in enumerate(COLUMNS)]
    last = 0
    for last, row in enumerate(rows, start=1):
        currency = str(row.get("currency") or "")
        for index, key, kind, number_format in typed:
            value = row.get(key)
            if value is None or value == "":
                continue
            if kind == "number" and _finite(value):
                write_number(last, index, value, number_format)
            elif kind == "units" and _finite(value):
                write_number(last, index, value, units[float(value).is_integer()])
            elif kind in ("unit", "money") and _finite(value):
                number = float(cents(value)) if kind == "money" else float(value)
                write_number(last, index, number + 0.0, currency_format(currency, kind))
            elif kind == "date":
                write_date(last, index, value if isinstance(value, date) else date.fromisoformat(str(value)[:10]), day)
            else:
                write_text(last, index, str(value))
    sheet.autofilter(0, 0, last, len(COLUMNS) - 1)
    column = {key: index for index, key in enumerate(keys)}

    def totals_row(at: int, label: str, values: Mapping[str, Any], currency: str = "") -> None:
        if label:
            sheet.write_string(at, column["customer"], label, bold)
        for key, value in values.items():
            if isinstance(value, (int, float, Decimal)) and _finite(value):
                kind = dict((k, t) for k, _h, t in COLUMNS).get(key)
                if kind == "money":
                    sheet.write_number(
                        at, column[key], float(cents(value)) + 0.0, currency_format(currency, kind, True)
                    )
                else:
                    sheet.write_number(at, column[key], float(value), units[float(value).is_integer()])
            else:
                sheet.write_string(at, column[key], str(value), bold)

    at = last + 2
    totals_row(
        at,
        f"Totals: {totals['lines']} lines ({totals['counted_lines']} counted; excluded lines count nothing)",
        {"product": "units added", "bss_units": totals["units_added"]},
    )
    at += 1
    totals_row(at, "", {"product": "units removed", "bss_units": totals["units_removed"]})
    # per currency and part of the month: billed, cost and margin, never added across currencies
    for currency, buckets in totals.get("money", {}).items():
        for bucket, label in totals.get("buckets", {}).items():
            figures = buckets[bucket]
            at += 1
            totals_row(
                at,
                "",
                {
                    "product": f"{label} ({figures['lines']} lines)",
                    "currency": currency,
                    "billed_change": Decimal(figures["billed"]),
                    "cost_change": Decimal(figures["cost"]),
                    "margin_change": Decimal(figures["margin"]),
                },
                currency,
            )
    one_off = totals.get("one_off") or []
    if one_off:
        charges = workbook.add_worksheet("One-off charges")
        headers = (
            "Customer",
            "BSS account",
            "Subscription",
            "Product",
            "SKU",
            "Date",
            "Quantity",
            "Unit price",
            "Amount",
            "Currency",
            "State",
            "Charge id",
        )
        for index, name in enumerate(headers):
            charges.write_string(0, index, name, bold)
        for at_row, charge in enumerate(one_off, start=1):
            for index, key in enumerate(("customer", "account_id", "subscription", "product", "sku")):
                charges.write_string(at_row, index, str(charge[key] or ""))
            if charge["effective_date"]:
                charges.write_datetime(at_row, 5, date.fromisoformat(charge["effective_date"]), day)
            charges.write_number(at_row, 6, charge["quantity"], units[float(charge["quantity"]).is_integer()])
            charges.write_number(at_row, 7, charge["unit_price"], currency_format(charge["currency"], "unit"))
            charges.write_number(at_row, 8, charge["amount"] + 0.0, currency_format(charge["currency"], "money"))
            charges.write_string(at_row, 9, charge["currency"])
            charges.write_string(at_row, 10, charge["state"])
            charges.write_string(at_row, 11, charge["charge_id"])
    about = workbook.add_worksheet("About")
    about.write_string(0, 0, str(title), bold)
    about.write_string(1, 0, "Excluded lines are listed but count for nothing in the units and cost totals.")
    about.write_string(
        2,
        0,
        "Billed: unit price × units; cost: unit cost × units; margin: billed − cost — the change per month, in the "
        "line's currency. Totals are per currency and never added across currencies.",
    )
    about.write_string(3, 0, "One-off charges (setup fees) are listed on their own sheet: shown, not posted yet.")
    workbook.close()
    return buffer.getvalue()


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _number_text(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)

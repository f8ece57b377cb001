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
from typing import Any

import xlsxwriter

from include.report import FORMULA_START  # what a spreadsheet reads as a formula, as the run report escapes it

# (key in the grid row, header, type): text | number | date
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
    ("bss_units", "BSS units", "number"),
    ("autotask_units", "Autotask units", "number"),
    ("unit_change", "Unit change", "number"),
    ("effective_date", "Effective date", "date"),
    ("unit_price", "Unit price", "number"),
    ("unit_cost", "Unit cost", "number"),
    ("currency", "Currency", "text"),
    ("cost_change", "Monthly cost change", "number"),
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
                safe_text(row.get(key)) if kind != "number" or row.get(key) is None else _number_text(row.get(key))
                for key, _header, kind in COLUMNS
            ]
        )
    return buffer.getvalue()


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
    bold_amount = workbook.add_format({"bold": True, "num_format": "#,##0.00##"})
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
        for index, key, kind, number_format in typed:
            value = row.get(key)
            if value is None or value == "":
                continue
            if kind == "number" and _finite(value):
                write_number(last, index, value, number_format)
            elif kind == "date":
                write_date(last, index, value if isinstance(value, date) else date.fromisoformat(str(value)[:10]), day)
            else:
                write_text(last, index, str(value))
    sheet.autofilter(0, 0, last, len(COLUMNS) - 1)
    column = {key: index for index, key in enumerate(keys)}

    def totals_row(at: int, label: str, values: Mapping[str, Any]) -> None:
        if label:
            sheet.write_string(at, column["customer"], label, bold)
        for key, value in values.items():
            if isinstance(value, (int, float)) and _finite(value):
                sheet.write_number(at, column[key], value, bold_amount)
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
    for currency, money in totals["cost"].items():
        at += 1
        totals_row(at, "", {"product": "monthly cost added", "currency": currency, "cost_change": money["cost_added"]})
        at += 1
        totals_row(
            at, "", {"product": "monthly cost removed", "currency": currency, "cost_change": -money["cost_removed"]}
        )
    about = workbook.add_worksheet("About")
    about.write_string(0, 0, str(title), bold)
    about.write_string(1, 0, "Excluded lines are listed but count for nothing in the totals.")
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

"""The review grid as CSV and XLSX, with the grid's current filter and sort (see `include.review`).

Both are safe to open in a spreadsheet: a text that starts like a formula (=, +, -, @, tab, carriage return) stays
text. In CSV it is prefixed with a single quote (OWASP "CSV injection"); in XLSX its cell is typed as a string,
so the value reads back unchanged and is never evaluated. XLSX cells are typed: numbers as numbers, dates as
dates; a header row, frozen panes, an autofilter, and totals (units; cost per currency) under the lines.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any

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
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_text(value: Any) -> str:
    """A text value for CSV: one that a spreadsheet would read as a formula gets a leading quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


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
    """The workbook as bytes (openpyxl write-only: fast at tens of thousands of lines)."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Review")
    sheet.freeze_panes = "C2"
    widths = {"customer": 32, "product": 30, "contract": 30, "change": 26, "reason": 60, "mapping_detail": 30}
    for index, (key, _header, _kind) in enumerate(COLUMNS, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = widths.get(key, 14)
    bold = Font(bold=True)

    def text_cell(value: Any, font: Font | None = None) -> WriteOnlyCell:
        cell = WriteOnlyCell(sheet, value=None)
        cell._value = "" if value is None else str(value)  # set directly: a leading "=" must not become a formula
        cell.data_type = "s"
        if font is not None:
            cell.font = font
        return cell

    header = [text_cell(name, bold) for _key, name, _kind in COLUMNS]
    sheet.append(header)
    count = 0
    for row in rows:
        count += 1
        cells = []
        for key, _name, kind in COLUMNS:
            value = row.get(key)
            if value is None or value == "":
                cells.append(None)
            elif kind == "number":
                cell = WriteOnlyCell(sheet, value=float(value) if not isinstance(value, int) else value)
                cell.number_format = "0" if key == "seq" else "#,##0.00##"
                cells.append(cell)
            elif kind == "date":
                cell = WriteOnlyCell(sheet, value=date.fromisoformat(str(value)[:10]))
                cell.number_format = "yyyy-mm-dd"
                cells.append(cell)
            else:
                cells.append(text_cell(value))
        sheet.append(cells)
    last = count + 1
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(COLUMNS))}{last}"
    sheet.append([])
    column = {key: index for index, (key, _name, _kind) in enumerate(COLUMNS)}

    def totals_row(label: str, values: Mapping[str, Any]) -> list[Any]:
        cells: list[Any] = [None] * len(COLUMNS)
        cells[column["customer"]] = text_cell(label, bold)
        for key, value in values.items():
            if isinstance(value, (int, float)):
                cell = WriteOnlyCell(sheet, value=value)
                cell.number_format = "#,##0.00##"
                cell.font = bold
            else:
                cell = text_cell(value, bold)
            cells[column[key]] = cell
        return cells

    sheet.append(
        totals_row(
            f"Totals: {totals['lines']} lines ({totals['counted_lines']} counted; excluded lines count nothing)",
            {"product": "units added", "bss_units": totals["units_added"]},
        )
    )
    sheet.append(totals_row("", {"product": "units removed", "bss_units": totals["units_removed"]}))
    for currency, money in totals["cost"].items():
        sheet.append(
            totals_row("", {"product": "monthly cost added", "currency": currency, "cost_change": money["cost_added"]})
        )
        sheet.append(
            totals_row(
                "", {"product": "monthly cost removed", "currency": currency, "cost_change": -money["cost_removed"]}
            )
        )
    info = workbook.create_sheet("About")
    info.append([text_cell(title, bold)])
    info.append([text_cell("Excluded lines are listed but count for nothing in the totals.")])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _number_text(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)

"""The review grid as CSV and XLSX, with the grid's current filter and sort (see `include.review`).

Both are safe to open in a spreadsheet: a text that starts like a formula (=, +, -, @, tab, carriage return) stays
text. In CSV it is prefixed with a single quote (OWASP "CSV injection"); in XLSX its cell is typed as a string,
so the value reads back unchanged and is never evaluated. XLSX cells are typed: numbers as numbers, dates as
dates; a header row, frozen panes, an autofilter, and totals (units; cost per currency) under the lines.
The XLSX is written as SpreadsheetML directly (see `to_xlsx`): every text is an inline string.
"""

from __future__ import annotations

import csv
import io
import math
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any
from xml.sax.saxutils import escape

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
    """The workbook as bytes: SpreadsheetML written directly (openpyxl took 8 s for 20,000 lines here; this
    takes about one). Text is always an inline string (never a formula), numbers are numbers, dates are date
    serials with a date format; openpyxl and spreadsheet programs read it back typed."""
    keys = [key for key, _name, _kind in COLUMNS]
    kinds = [kind for _key, _name, kind in COLUMNS]
    letters = [_column_letter(index) for index in range(1, len(COLUMNS) + 1)]
    out: list[str] = []
    out.append(_row_xml(1, [_text_xml(letters[i] + "1", name, _BOLD) for i, (_k, name, _t) in enumerate(COLUMNS)]))
    number = 1
    for row in rows:
        number += 1
        cells = []
        for index, key in enumerate(keys):
            value = row.get(key)
            if value is None or value == "":
                continue
            ref = f"{letters[index]}{number}"
            kind = kinds[index]
            if kind == "number":
                cells.append(_number_xml(ref, value, _INTEGER if key == "seq" else _NUMBER))
            elif kind == "date":
                cells.append(_number_xml(ref, _date_serial(value), _DATE))
            else:
                cells.append(_text_xml(ref, value))
        out.append(_row_xml(number, cells))
    last = number
    column = {key: letters[index] for index, key in enumerate(keys)}

    def totals_row(at: int, label: str, values: Mapping[str, Any]) -> str:
        cells = [_text_xml(f"{column['customer']}{at}", label, _BOLD)] if label else []
        for key in keys:
            if key in values:
                value = values[key]
                ref = f"{column[key]}{at}"
                cells.append(
                    _number_xml(ref, value, _BOLD_NUMBER)
                    if isinstance(value, (int, float))
                    else _text_xml(ref, value, _BOLD)
                )
        return _row_xml(at, cells)

    at = last + 2
    out.append(
        totals_row(
            at,
            f"Totals: {totals['lines']} lines ({totals['counted_lines']} counted; excluded lines count nothing)",
            {"product": "units added", "bss_units": totals["units_added"]},
        )
    )
    at += 1
    out.append(totals_row(at, "", {"product": "units removed", "bss_units": totals["units_removed"]}))
    for currency, money in totals["cost"].items():
        at += 1
        out.append(
            totals_row(
                at, "", {"product": "monthly cost added", "currency": currency, "cost_change": money["cost_added"]}
            )
        )
        at += 1
        out.append(
            totals_row(
                at, "", {"product": "monthly cost removed", "currency": currency, "cost_change": -money["cost_removed"]}
            )
        )
    widths = {"customer": 32, "product": 30, "contract": 30, "change": 26, "reason": 60, "mapping_detail": 30}
    cols = "".join(
        f'<col min="{index}" max="{index}" width="{widths.get(key, 14)}" customWidth="1"/>'
        for index, key in enumerate(keys, start=1)
    )
    filter_ref = f"A1:{letters[-1]}{last}"
    review_sheet = (
        _XML_HEAD + f'<worksheet xmlns="{_MAIN_NS}" xmlns:r="{_REL_NS}">'
        '<sheetViews><sheetView workbookViewId="0">'
        '<pane xSplit="2" ySplit="1" topLeftCell="C2" activePane="bottomRight" state="frozen"/>'
        '<selection pane="bottomRight" activeCell="C2" sqref="C2"/></sheetView></sheetViews>'
        f"<cols>{cols}</cols><sheetData>{''.join(out)}</sheetData>"
        f'<autoFilter ref="{filter_ref}"/></worksheet>'
    )
    about_rows = [
        _row_xml(1, [_text_xml("A1", title, _BOLD)]),
        _row_xml(2, [_text_xml("A2", "Excluded lines are listed but count for nothing in the totals.")]),
    ]
    about_sheet = _XML_HEAD + f'<worksheet xmlns="{_MAIN_NS}"><sheetData>{"".join(about_rows)}</sheetData></worksheet>'
    workbook = (
        _XML_HEAD + f'<workbook xmlns="{_MAIN_NS}" xmlns:r="{_REL_NS}"><sheets>'
        '<sheet name="Review" sheetId="1" r:id="rId1"/><sheet name="About" sheetId="2" r:id="rId2"/></sheets>'
        f'<definedNames><definedName name="_xlnm._FilterDatabase" localSheetId="0" hidden="1">'
        f"Review!$A$1:${letters[-1]}${last}</definedName></definedNames></workbook>"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", workbook)
        archive.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        archive.writestr("xl/styles.xml", _STYLES)
        archive.writestr("xl/worksheets/sheet1.xml", review_sheet)
        archive.writestr("xl/worksheets/sheet2.xml", about_sheet)
    return buffer.getvalue()


# -- SpreadsheetML ----------------------------------------------------------------------------------------------

_XML_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PACKAGE_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
_SHEET_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"
_CONTENT_TYPES = (
    _XML_HEAD + '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_SHEET_TYPE}"/>'
    f'<Override PartName="/xl/worksheets/sheet2.xml" ContentType="{_SHEET_TYPE}"/>'
    '<Override PartName="/xl/styles.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/></Types>'
)
_ROOT_RELS = (
    _XML_HEAD + f'<Relationships xmlns="{_PACKAGE_RELS}">'
    f'<Relationship Id="rId1" Type="{_REL_NS}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
)
_WORKBOOK_RELS = (
    _XML_HEAD + f'<Relationships xmlns="{_PACKAGE_RELS}">'
    f'<Relationship Id="rId1" Type="{_REL_NS}/worksheet" Target="worksheets/sheet1.xml"/>'
    f'<Relationship Id="rId2" Type="{_REL_NS}/worksheet" Target="worksheets/sheet2.xml"/>'
    f'<Relationship Id="rId3" Type="{_REL_NS}/styles" Target="styles.xml"/></Relationships>'
)
# cell styles (cellXfs index): 0 plain, 1 bold text, 2 date, 3 number, 4 whole number, 5 bold number
_BOLD, _DATE, _NUMBER, _INTEGER, _BOLD_NUMBER = 1, 2, 3, 4, 5
_STYLES = (
    _XML_HEAD + f'<styleSheet xmlns="{_MAIN_NS}">'
    '<numFmts count="2"><numFmt numFmtId="164" formatCode="yyyy-mm-dd"/>'
    '<numFmt numFmtId="165" formatCode="#,##0.00##"/></numFmts>'
    '<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
    '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
    '<fills count="2"><fill><patternFill patternType="none"/></fill><fill><patternFill patternType="gray125"/></fill>'
    "</fills>"
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="6"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
    '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="1" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="165" fontId="1" fillId="0" borderId="0" xfId="0" applyNumberFormat="1" applyFont="1"/>'
    "</cellXfs>"
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles></styleSheet>'
)
# characters XML 1.0 cannot carry (control characters other than tab, line feed, carriage return)
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_EPOCH = date(1899, 12, 30)


def _column_letter(index: int) -> str:
    letters = ""
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(65 + remainder) + letters
    return letters


def _row_xml(number: int, cells: Sequence[str]) -> str:
    return f'<row r="{number}">{"".join(cells)}</row>'


def _text_xml(ref: str, value: Any, style: int = 0) -> str:
    """A text cell: an inline string, escaped; never a formula whatever it starts with."""
    text = escape(_XML_ILLEGAL.sub("", str(value)))
    styled = f' s="{style}"' if style else ""
    return f'<c r="{ref}" t="inlineStr"{styled}><is><t xml:space="preserve">{text}</t></is></c>'


def _number_xml(ref: str, value: Any, style: int) -> str:
    number = float(value)
    if not math.isfinite(number):
        return _text_xml(ref, value)
    text = str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)
    return f'<c r="{ref}" s="{style}"><v>{text}</v></c>'


def _date_serial(value: Any) -> int:
    day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
    return (day - _EPOCH).days


def _number_text(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)

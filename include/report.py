"""PLACEHOLDER run report (approve part): the interface of the report part's `write_run_report`, so the DAG and
its end-to-end test run before that part is merged. The lead replaces this file with the report part's.

Writes `run-report.html` and `run-report.xlsx` into `directory` with the plan's counts by kind and status,
the recorded approval, the load and the verification.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from include.warehouse import Warehouse


@dataclass
class RunReport:
    html_path: Path
    xlsx_path: Path
    summary: dict[str, Any] = field(default_factory=dict)


def write_run_report(
    warehouse: Warehouse, month: str, run_id: str, directory: Path, *, dry_run: bool = False
) -> RunReport:
    from openpyxl import Workbook

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan = warehouse.query(
        "SELECT kind, status, COUNT(*) AS actions FROM plan_actions WHERE month = :m GROUP BY kind, status"
        " ORDER BY kind, status",
        {"m": month},
    )
    approvals = warehouse.query(
        "SELECT decision, decided_by, decided_at FROM month_approvals WHERE run_id = :r ORDER BY decided_at",
        {"r": run_id},
    )
    differences = warehouse.scalar(
        "SELECT COUNT(*) FROM load_verifications WHERE run_id = :r AND matches = 0", {"r": run_id}
    )
    summary = {
        "month": month,
        "run_id": run_id,
        "dry_run": dry_run,
        "plan": [dict(row) for row in plan],
        "approval": {k: str(v) for k, v in approvals[-1].items()} if approvals else "approval not recorded",
        "verification_differences": differences,
    }
    html_path, xlsx_path = directory / "run-report.html", directory / "run-report.xlsx"
    title = f"{'Dry run: what would be written' if dry_run else 'Run report'} {month}"
    html_path.write_text(
        f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"
        f"<pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre>",
        encoding="utf-8",
    )
    book = Workbook()
    sheet = book.active
    sheet.append(["kind", "status", "actions"])
    for row in plan:
        sheet.append([row["kind"], row["status"], row["actions"]])
    book.save(xlsx_path)
    return RunReport(html_path=html_path, xlsx_path=xlsx_path, summary=summary)

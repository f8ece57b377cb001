"""The data-quality gate: Great Expectations suites over the warehouse, with a severity per expectation.

Two gates per run, each a function the DAG calls:
- `validate_charges` (after the extract, before mapping): the raw BSS records of the run and the month's
  typed charge lines;
- `validate_plan` (after reconciliation, before approval): the Autotask snapshot and the month's change plan.

Each expectation carries `meta.severity`: a `critical` failure stops the run before review
(`raise_on_critical` raises `DataQualityError` naming each failed expectation with example rows): only a
problem that makes the whole month untrustworthy (the feed truncated or repeating records, the wrong month);
a `hold` failure holds the lines it fails on, never the month: their subscriptions' plan lines are blocked with
the check's reason and `meta.remedy` (what a person can do), stored in `quality_holds` for reconciliation
(`held_lines`); unless it fails on more than `meta.stops_month_above_percent` of the lines (the suite's
`hold_stops_month_above_percent`, default 20) or on more than `HOLD_LIMIT` lines: then the feed is broken, not
some lines, and it stops the month as a critical one would; a `warning` lets the run continue and is listed in
the report for the reviewer. Every validation renders
Data Docs into `$BILLING_DATA_DOCS_DIR/<month>/<run_id>/index.html` (both gates of a run share the site;
`include/report_assets.py` then makes every page self-contained: no CDN, readable offline) and stores a
summary per suite in `quality_results`.

The suites are JSON in `expectations/suites/`, the GX project config is `expectations/gx/`. Helper columns
(expected totals, currencies per customer, adjustment slots) are computed by `include/sql/quality_*.sql`, so
a suite only compares columns. GX is imported lazily (it takes seconds) and never calls the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include import bss_adapter as bss
from include import report_assets
from include.extract import ensure_run_reads_own_lines
from include.models import BillingMonth
from include.warehouse import Warehouse, sql, utcnow

# Before GX is ever imported: no usage statistics, and none of the hundreds of INFO lines GX's API
# registry logs at import ("Skipping registering function ...") in Airflow task logs.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.data_context import AbstractDataContext

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPECTATIONS_DIR = REPO_ROOT / "expectations"
GX_CONFIG_PATH = EXPECTATIONS_DIR / "gx" / "great_expectations.yml"
SUITES_DIR = EXPECTATIONS_DIR / "suites"
DATA_DOCS_DIR_ENV = "BILLING_DATA_DOCS_DIR"
DEFAULT_DATA_DOCS_DIR = REPO_ROOT / "var" / "data_docs"
_DATA_DOCS_SITE = "local_site"
_DATASOURCE = "warehouse"
# Example rows per failed expectation: enough to find the problem, small enough for XCom and the log.
EXAMPLE_LIMIT = 10
_RUN_FOLDER_KEPT = re.compile(r"[A-Za-z0-9._-]")
# folder names stay well under file systems' 255 bytes; longer ones are cut and hashed
_RUN_FOLDER_MAX = 180
_RUN_FOLDER_PREFIX = 120
# A hold check failing on more lines than this stops the month (and every held line's key is read from GX).
HOLD_LIMIT = 2000
_HOLD_STOPS_MONTH_ABOVE_PERCENT = 20.0
_DEFAULT_REMEDY = "correct the line in the BSS and run the month again; the month's other lines go on"

# The raw suite reads these ChargeLine fields from each payload; the BSS names come from the adapter, so a
# field rename on a live tenant stays a one-line change there.
RAW_FIELDS: dict[str, str] = {
    "account_id": bss.ACCOUNT_ID,
    "account_name": bss.ACCOUNT_NAME,
    "subscription_id": bss.SUBSCRIPTION_ID,
    "product_id": bss.PRODUCT_ID,
    "product_name": bss.PRODUCT_NAME,
    "billing_period": bss.BILLING_PERIOD,
    "billing_cycle": bss.BILLING_CYCLE,
    "charge_type": bss.CHARGE_TYPE,
    "action": bss.ACTION,
    "quantity": bss.QUANTITY,
    "subscription_quantity": bss.SUBSCRIPTION_QUANTITY,
    "unit_cost": bss.UNIT_COST,
    "unit_price": bss.UNIT_PRICE,
    "currency": bss.CURRENCY,
    "charge_start_date": bss.CHARGE_START_DATE,
    "charge_end_date": bss.CHARGE_END_DATE,
    "effective_date": bss.EFFECTIVE_DATE,
}
_DATE_COLUMNS = {
    "charge_lines": ("charge_start_date", "charge_end_date", "effective_date"),
    "autotask_snapshot": ("start_date", "end_date"),
    "change_plan": ("effective_date",),
}


class Severity(StrEnum):
    CRITICAL = "critical"  # stops the month
    HOLD = "hold"  # holds the lines it fails on (their subscriptions' plan lines blocked), not the month
    WARNING = "warning"  # listed for the reviewer


class Stage(StrEnum):
    CHARGES = "charges"
    PLAN = "plan"


class SuiteConfigurationError(ValueError):
    """A suite file is not usable (unknown severity, no name, not JSON)."""


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation: what was expected, how bad it is, and example offending rows."""

    suite: str
    name: str
    description: str
    expectation_type: str
    severity: Severity
    column: str | None = None
    unexpected_count: int | None = None
    examples: tuple[dict[str, str], ...] = ()
    observed: str | None = None
    error: str | None = None
    # a hold check's: every line it holds (its keys), and what a person can do
    held_keys: tuple[str, ...] = ()
    remedy: str | None = None

    @property
    def hold_reason(self) -> str:
        """Why a held line is held, and what a person can do (the plan line's reason)."""
        return f"held by the data-quality check {self.suite}.{self.name} ({self.description}): {self.remedy}"

    def example_keys(self, index_column: str | None = None) -> list[str]:
        """The example rows' keys (charge ids, action ids ...): the first value of each example."""
        keys = []
        for example in self.examples:
            if index_column and index_column in example:
                keys.append(example[index_column])
            elif example:
                keys.append(next(iter(example.values())))
        return keys

    def __str__(self) -> str:
        text = f"[{self.severity}] {self.suite}.{self.name}: {self.description}"
        if self.error:
            return f"{text} — could not be evaluated: {self.error}"
        if self.unexpected_count is not None:
            text += f" — {self.unexpected_count} row(s)"
        if self.observed is not None:
            text += f" — observed {self.observed}"
        if self.examples:
            shown = "; ".join(", ".join(f"{key}={value}" for key, value in row.items()) for row in self.examples)
            text += f"; e.g. {shown}"
        return text


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    success: bool
    row_count: int
    evaluated: int
    critical_failures: int
    warning_failures: int
    held_failures: int = 0


@dataclass(frozen=True)
class QualityReport:
    """The outcome of one gate: per-suite results, every failure, and where the Data Docs are."""

    stage: Stage
    month: str
    run_id: str
    suites: tuple[SuiteResult, ...]
    failures: tuple[ExpectationFailure, ...]
    data_docs_index: str
    parameters: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def critical(self) -> list[ExpectationFailure]:
        return [failure for failure in self.failures if failure.severity is Severity.CRITICAL]

    @property
    def warnings(self) -> list[ExpectationFailure]:
        return [failure for failure in self.failures if failure.severity is Severity.WARNING]

    @property
    def holds(self) -> list[ExpectationFailure]:
        """Failures that hold some lines (never the month)."""
        return [failure for failure in self.failures if failure.severity is Severity.HOLD]

    @property
    def held_lines(self) -> dict[str, list[ExpectationFailure]]:
        """Each held line's key (charge id) and the checks that hold it."""
        held: dict[str, list[ExpectationFailure]] = {}
        for failure in self.holds:
            for key in failure.held_keys:
                held.setdefault(key, []).append(failure)
        return held

    @property
    def passed(self) -> bool:
        """True when nothing critical failed (warnings may remain for the review)."""
        return not self.critical

    def summary(self) -> str:
        counts = ", ".join(f"{suite.suite}: {suite.row_count} rows" for suite in self.suites)
        return (
            f"data quality ({self.stage}) for {self.month}, run {self.run_id}: "
            f"{len(self.critical)} critical, {len(self.holds)} holding {len(self.held_lines)} line(s), "
            f"{len(self.warnings)} warning(s) ({counts}); "
            f"report: {self.data_docs_index}"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe, for XCom and the approval body."""
        return {
            "stage": str(self.stage),
            "month": self.month,
            "run_id": self.run_id,
            "passed": self.passed,
            "data_docs_index": self.data_docs_index,
            "seconds": self.seconds,
            "parameters": _jsonable(self.parameters),
            "suites": [asdict(suite) for suite in self.suites],
            "critical": [_failure_dict(failure) for failure in self.critical],
            "holds": [_failure_dict(failure) for failure in self.holds],
            "held_lines": len(self.held_lines),
            "warnings": [_failure_dict(failure) for failure in self.warnings],
        }


class DataQualityError(RuntimeError):
    """Critical expectations failed: the run stops before review. Names each one with example rows."""

    def __init__(self, report: QualityReport) -> None:
        self.report = report
        lines = "\n".join(f"  - {failure}" for failure in report.critical)
        super().__init__(
            f"{len(report.critical)} critical data-quality check(s) failed for {report.month} "
            f"(run {report.run_id}, stage {report.stage}); nothing was sent to Autotask.\n{lines}\n"
            f"Data Docs: {report.data_docs_index}"
        )


# --- public API ---------------------------------------------------------------------------------------


def validate_charges(warehouse: Warehouse, month: str, run_id: str) -> QualityReport:
    """Validate the run's raw BSS records and the month's typed lines; never raises for bad data.

    Raises `StaleRunError` when the month's lines are no longer the ones this run extracted.
    """
    billing_month = BillingMonth.parse(month)
    ensure_run_reads_own_lines(warehouse, billing_month.key, run_id)
    parameters = charge_parameters(warehouse, billing_month)
    frames = {
        "bss_charges_raw": raw_charges_frame(warehouse, billing_month.key, run_id),
        "charge_lines": _frame(warehouse, charge_lines_query(), {"month": billing_month.key}, "charge_lines"),
    }
    report = _run_gate(warehouse, Stage.CHARGES, billing_month.key, run_id, frames, parameters)
    store_holds(warehouse, report)
    return report


def store_holds(warehouse: Warehouse, report: QualityReport) -> int:
    """Replace the run's held lines in `quality_holds` with the report's (a retried task validates again)."""
    table = warehouse.table("quality_holds")
    now = utcnow()
    rows = [
        {
            "run_id": report.run_id,
            "month": report.month,
            "charge_id": key,
            "expectation": failure.name,
            "reason": failure.hold_reason,
            "held_at": now,
        }
        for key, failures in sorted(report.held_lines.items())
        for failure in failures
    ]
    with warehouse.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.run_id == report.run_id))
        warehouse.insert(conn, "quality_holds", rows)
    return len(rows)


def held_lines(warehouse: Warehouse, month: str, run_id: str) -> dict[str, str]:
    """The run's held charge lines and why (the checks' reasons joined), for reconciliation to block."""
    rows = warehouse.query(
        "SELECT charge_id, reason FROM quality_holds WHERE run_id = :run_id AND month = :month"
        " ORDER BY charge_id, expectation",
        {"run_id": run_id, "month": month},
    )
    held: dict[str, str] = {}
    for row in rows:
        earlier = held.get(row["charge_id"])
        held[row["charge_id"]] = f"{earlier}; {row['reason']}" if earlier else row["reason"]
    return held


def validate_plan(warehouse: Warehouse, month: str, run_id: str) -> QualityReport:
    """Validate the run's Autotask snapshot and the month's change plan; never raises for bad data."""
    billing_month = BillingMonth.parse(month)
    parameters = _month_parameters(billing_month)
    frames = {
        "autotask_snapshot": _frame(warehouse, "quality_snapshot_units", {"run_id": run_id}, "autotask_snapshot"),
        "change_plan": _frame(warehouse, "quality_plan_actions", {"month": billing_month.key}, "change_plan"),
    }
    return _run_gate(warehouse, Stage.PLAN, billing_month.key, run_id, frames, parameters)


def charge_lines_query() -> str:
    """`quality_charge_lines.sql` with `subscription_history.sql` composed in: the suite checks a first line
    of the month against the same previous total reconciliation starts from."""
    history = sql("subscription_history").strip().removesuffix(";")
    return sql("quality_charge_lines").replace("{subscription_history}", history)


def raise_on_critical(report: QualityReport) -> QualityReport:
    """Raise `DataQualityError` if a critical expectation failed; else return the report (warnings and all)."""
    if report.critical:
        raise DataQualityError(report)
    return report


def data_docs_dir(month: str, run_id: str) -> Path:
    """Where a run's Data Docs and report go: `$BILLING_DATA_DOCS_DIR/<month>/<run folder>/` (`run_folder_name`)."""
    base = Path(os.environ.get(DATA_DOCS_DIR_ENV) or DEFAULT_DATA_DOCS_DIR)
    return base / BillingMonth.parse(month).key / run_folder_name(run_id)


def run_folder_name(run_id: str) -> str:
    """The run's folder name: a reversible, collision-free encoding of its id, so no run writes into another's folder.

    Letters, digits, `_`, `-` and `.` stay as they are (a leading `.` does not: no hidden or `..` folder); every
    other byte of the id's UTF-8 becomes `~XX` (its hex), `~` itself included. Two ids give two names: the run
    `manual__2026-12-07T17:47:48.743912+00:00` is `manual__2026-12-07T17~3A47~3A48.743912~2B00~3A00`, and an id
    crafted to look like the old name (`…T17_47_48.743912_00_00`) keeps its own. A name longer than
    `_RUN_FOLDER_MAX` is cut and followed by `~~` and a hash of the whole id (`~~` never occurs otherwise)."""
    encoded = "".join(
        char if _RUN_FOLDER_KEPT.fullmatch(char) and not (index == 0 and char == ".") else _escape(char)
        for index, char in enumerate(run_id)
    )
    if not encoded:
        return "~"  # the empty id (no run has one): a name no other id encodes to
    if len(encoded) <= _RUN_FOLDER_MAX:
        return encoded
    prefix = encoded[:_RUN_FOLDER_PREFIX]
    prefix = prefix[: prefix.rfind("~")] if "~" in prefix[-2:] else prefix  # never half an escape
    return f"{prefix}~~{hashlib.sha256(run_id.encode()).hexdigest()[:32]}"


def run_id_of_folder(name: str) -> str | None:
    """The run id a folder name encodes (`run_folder_name` reversed); None for a cut name (it holds a hash)."""
    if "~~" in name or name == "~":
        return None
    data = bytearray()
    index = 0
    while index < len(name):
        if name[index] == "~":
            data.append(int(name[index + 1 : index + 3], 16))
            index += 3
        else:
            data += name[index].encode()
            index += 1
    return data.decode()


def _escape(char: str) -> str:
    return "".join(f"~{byte:02X}" for byte in char.encode())


def load_suite_definition(name: str) -> dict[str, Any]:
    """The suite file `expectations/suites/<name>.json`, checked: every expectation has a name and severity."""
    path = SUITES_DIR / f"{name}.json"
    try:
        definition = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SuiteConfigurationError(f"suite {name}: cannot read {path}: {error}") from error
    for position, expectation in enumerate(definition.get("expectations", [])):
        meta = expectation.get("meta") or {}
        if not meta.get("name"):
            raise SuiteConfigurationError(f"suite {name}: expectation #{position} has no meta.name")
        if meta.get("severity") not in {str(severity) for severity in Severity}:
            raise SuiteConfigurationError(
                f"suite {name}: expectation {meta['name']} needs meta.severity critical, hold or warning, "
                f"got {meta.get('severity')!r}"
            )
        if meta["severity"] == Severity.HOLD and not (definition.get("meta") or {}).get("index_column"):
            raise SuiteConfigurationError(
                f"suite {name}: hold expectation {meta['name']} needs the suite's meta.index_column"
            )
        # GX's own severity field follows meta, so Data Docs show the same severity the gate applies (GX knows
        # critical, warning and info: a hold shows as a warning there, its description names it a hold).
        expectation["severity"] = Severity.WARNING if meta["severity"] == Severity.HOLD else meta["severity"]
    return definition


def _with_names_in_descriptions(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The suite as run: each description ends with "(severity: name)", so Data Docs show what errors say."""
    expectations = []
    for expectation in definition.get("expectations", []):
        meta = expectation["meta"]
        description = expectation.get("description") or meta["name"]
        expectations.append({**expectation, "description": f"{description} ({meta['severity']}: {meta['name']})"})
    return {**definition, "expectations": expectations}


def charge_parameters(warehouse: Warehouse, month: BillingMonth) -> dict[str, Any]:
    """Suite parameters of the charges gate: the month's bounds and the row-count band around last month's."""
    band = load_suite_definition("charge_lines").get("meta", {}).get("row_count_band", {})
    previous = int(warehouse.scalar("quality_previous_month_count", {"previous_month": month.previous().key}) or 0)
    parameters: dict[str, Any] = {**_month_parameters(month), "previous_month_line_count": previous}
    if previous == 0:
        # First month in this warehouse: nothing to compare with; the month must merely not be empty.
        parameters.update(
            row_count_critical_min=0, row_count_critical_max=None, row_count_warning_min=0, row_count_warning_max=None
        )
        return parameters
    critical, warning = band.get("critical", {}), band.get("warning", {})
    parameters.update(
        row_count_critical_min=previous * float(critical.get("lower", 0.5)),
        row_count_critical_max=math.floor(previous * float(critical.get("upper", 2.0))),
        row_count_warning_min=math.ceil(previous * float(warning.get("lower", 0.8))),
        row_count_warning_max=math.floor(previous * float(warning.get("upper", 1.25))),
    )
    return parameters


def raw_charges_frame(warehouse: Warehouse, month: str, run_id: str) -> pd.DataFrame:
    """The run's raw records, one column per required ChargeLine field (None where the payload lacks it)."""
    import pandas as pd

    rows = warehouse.query("quality_charges_raw", {"run_id": run_id, "month": month})
    readers = [_reader(tuple(bss_field.split("."))) for bss_field in RAW_FIELDS.values()]
    records = []
    loads = json.loads
    for row in rows:
        try:
            payload = loads(row["payload"])
        except (TypeError, json.JSONDecodeError):
            payload = None
        if type(payload) is not dict:
            payload = {}
        records.append((row["charge_id"], row["seq"], row["reject_field"], *[read(payload) for read in readers]))
    columns = ["charge_id", "seq", "reject_field", *RAW_FIELDS]
    return pd.DataFrame.from_records(records, columns=columns)


# --- running a gate -----------------------------------------------------------------------------------


def _run_gate(
    warehouse: Warehouse,
    stage: Stage,
    month: str,
    run_id: str,
    frames: Mapping[str, pd.DataFrame],
    parameters: Mapping[str, Any],
) -> QualityReport:
    started = time.monotonic()
    run_dir = data_docs_dir(month, run_id)
    context = configure_context(run_dir)
    gx_run_id = _gx_run_id(run_id)
    suites: list[SuiteResult] = []
    failures: list[ExpectationFailure] = []
    for suite_name, frame in frames.items():
        definition = load_suite_definition(suite_name)
        index_column = definition.get("meta", {}).get("index_column")
        holds = any(item["meta"]["severity"] == Severity.HOLD for item in definition.get("expectations", []))
        validation = configure_validation(context, suite_name, definition)
        result = validation.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=dict(parameters),
            result_format=_result_format(index_column, frame, HOLD_LIMIT if holds else EXAMPLE_LIMIT),
            run_id=gx_run_id,
        )
        suite_failures = _failures(suite_name, result, index_column, definition.get("meta") or {}, len(frame))
        failures.extend(suite_failures)
        suites.append(
            SuiteResult(
                suite=suite_name,
                success=not suite_failures,
                row_count=len(frame),
                evaluated=len(result.results),
                critical_failures=sum(failure.severity is Severity.CRITICAL for failure in suite_failures),
                warning_failures=sum(failure.severity is Severity.WARNING for failure in suite_failures),
                held_failures=sum(failure.severity is Severity.HOLD for failure in suite_failures),
            )
        )
    context.build_data_docs(site_names=[_DATA_DOCS_SITE])
    report_assets.make_offline(run_dir)
    report = QualityReport(
        stage=stage,
        month=month,
        run_id=run_id,
        suites=tuple(suites),
        failures=tuple(failures),
        data_docs_index=str(run_dir / "index.html"),
        parameters=dict(parameters),
        seconds=round(time.monotonic() - started, 3),
    )
    store_report(warehouse, report)
    log_report(report)
    return report


def log_report(report: QualityReport) -> None:
    log.info("%s", report.summary())
    for failure in report.failures:
        (log.error if failure.severity is Severity.CRITICAL else log.warning)("data quality: %s", failure)


def store_report(warehouse: Warehouse, report: QualityReport) -> None:
    """Replace this run's rows for these suites in `quality_results` (a retried task re-validates)."""
    table = warehouse.table("quality_results")
    now = utcnow()
    rows = []
    for suite in report.suites:
        suite_failures = [_failure_dict(failure) for failure in report.failures if failure.suite == suite.suite]
        rows.append(
            {
                "run_id": report.run_id,
                "suite": suite.suite,
                "month": report.month,
                "stage": str(report.stage),
                "success": suite.success,
                "row_count": suite.row_count,
                "evaluated": suite.evaluated,
                "critical_failures": suite.critical_failures,
                "warning_failures": suite.warning_failures,
                "failures": json.dumps(suite_failures, ensure_ascii=False),
                "data_docs_index": report.data_docs_index,
                "validated_at": now,
            }
        )
    with warehouse.begin() as conn:
        conn.execute(
            sa.delete(table).where(
                table.c.run_id == report.run_id, table.c.suite.in_([suite.suite for suite in report.suites])
            )
        )
        warehouse.insert(conn, "quality_results", rows)


# --- GX objects -------------------------------------------------------------------------------------------


def configure_context(run_dir: Path) -> AbstractDataContext:
    """An in-process GX context from `expectations/gx/great_expectations.yml`, writing only under run_dir.

    Suites and validation results are kept as files beside the report (`_gx/`), so a run's second gate adds
    to the same Data Docs site, and the report shows the suites exactly as they were run.
    """
    gx = _gx()
    config = _project_config()
    state_dir = run_dir / "_gx"
    run_dir.mkdir(parents=True, exist_ok=True)
    config["analytics_enabled"] = False
    config["stores"] = {
        "expectations_store": _store("ExpectationsStore", state_dir / "suites"),
        "validation_results_store": _store("ValidationResultsStore", state_dir / "validations"),
        "checkpoint_store": {"class_name": "CheckpointStore", "store_backend": {"class_name": "InMemoryStoreBackend"}},
        "validation_definition_store": {
            "class_name": "ValidationDefinitionStore",
            "store_backend": {"class_name": "InMemoryStoreBackend"},
        },
    }
    config["expectations_store_name"] = "expectations_store"
    config["validation_results_store_name"] = "validation_results_store"
    config["checkpoint_store_name"] = "checkpoint_store"
    site = dict(config.get("data_docs_sites", {}).get(_DATA_DOCS_SITE) or {"class_name": "SiteBuilder"})
    site["store_backend"] = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(run_dir)}
    config["data_docs_sites"] = {_DATA_DOCS_SITE: site}
    for key in ("config_variables_file_path", "plugins_directory"):
        config.pop(key, None)
    context = gx.get_context(project_config=config, mode="ephemeral")
    context.data_sources.add_pandas(_DATASOURCE)
    return context


def configure_validation(context: AbstractDataContext, suite_name: str, definition: Mapping[str, Any]) -> Any:
    """A Validation Definition of one suite over its own DataFrame asset (the frame comes at run time)."""
    gx = _gx()
    suite = context.suites.add_or_update(gx.ExpectationSuite(**_suite_kwargs(_with_names_in_descriptions(definition))))
    datasource = context.data_sources.get(_DATASOURCE)
    asset = datasource.add_dataframe_asset(name=suite_name)
    batch_definition = asset.add_batch_definition_whole_dataframe(f"{suite_name}_run")
    return context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}_validation", data=batch_definition, suite=suite)
    )


def _suite_kwargs(definition: Mapping[str, Any]) -> dict[str, Any]:
    allowed = ("name", "expectations", "meta", "notes")
    kwargs = {key: definition[key] for key in allowed if key in definition}
    kwargs["expectations"] = [dict(expectation) for expectation in definition.get("expectations", [])]
    return kwargs


def _store(class_name: str, directory: Path) -> dict[str, Any]:
    return {
        "class_name": class_name,
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(directory),
            "suppress_store_backend_id": True,
        },
    }


@cache
def _project_config_text() -> str:
    return GX_CONFIG_PATH.read_text()


def _project_config() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load(_project_config_text()) or {})


def _gx() -> Any:
    # GX's import logs its API registry at INFO; Airflow's logging setup may have reset levels since this
    # module was imported, so quiet it again right before the (cached) import.
    logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def _gx_run_id(run_id: str) -> Any:
    from great_expectations.core.run_identifier import RunIdentifier

    return RunIdentifier(run_name=run_id, run_time=datetime.now().astimezone())


def _result_format(index_column: str | None, frame: pd.DataFrame, rows: int = EXAMPLE_LIMIT) -> dict[str, Any]:
    # SUMMARY keeps results small however many rows fail; the index column turns examples into row keys. A suite
    # with hold checks reads up to HOLD_LIMIT failing rows (every line a hold holds).
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": rows}
    if index_column and index_column in frame.columns:
        result_format["unexpected_index_column_names"] = [index_column]
    return result_format


# --- reading results ------------------------------------------------------------------------------------


def _failures(
    suite_name: str,
    result: ExpectationSuiteValidationResult,
    index_column: str | None,
    suite_meta: Mapping[str, Any] | None = None,
    row_count: int = 0,
) -> list[ExpectationFailure]:
    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        meta = config.meta or {}
        kwargs = config.kwargs or {}
        details = outcome.result or {}
        observed = details.get("observed_value")
        severity = Severity(meta.get("severity", Severity.CRITICAL))
        error = _exception_message(outcome.exception_info)
        held: tuple[str, ...] = ()
        if severity is Severity.HOLD:
            held = _held_keys(details, index_column)
            if error or _stops_month(details, held, meta, suite_meta or {}, row_count):
                severity = Severity.CRITICAL  # the feed is broken, not some lines: nothing to hold precisely
                held = ()
        failures.append(
            ExpectationFailure(
                suite=suite_name,
                name=str(meta.get("name") or config.type),
                description=_plain_description(config.description, meta) or config.type,
                expectation_type=config.type,
                severity=severity,
                column=kwargs.get("column") or kwargs.get("column_A"),
                unexpected_count=details.get("unexpected_count"),
                examples=_examples(details, index_column),
                observed=None if observed is None else _text(observed),
                error=error,
                held_keys=held,
                remedy=str(meta.get("remedy") or _DEFAULT_REMEDY) if held else None,
            )
        )
    return failures


def _held_keys(details: Mapping[str, Any], index_column: str | None) -> tuple[str, ...]:
    """Every failing row's key of a hold check (the index column of each row GX lists)."""
    keys = []
    for row in details.get("partial_unexpected_index_list") or []:
        if isinstance(row, Mapping) and index_column in row and row[index_column] is not None:
            keys.append(_text(row[index_column]))
    return tuple(sorted(set(keys)))


def _stops_month(
    details: Mapping[str, Any],
    held: tuple[str, ...],
    meta: Mapping[str, Any],
    suite_meta: Mapping[str, Any],
    row_count: int,
) -> bool:
    """Whether a failing hold check stops the month instead: it fails on more than its share of the month's lines
    (all of them, not only those a row condition checks), on more lines than GX lists (HOLD_LIMIT), or on rows it
    cannot name."""
    limit = float(
        meta.get("stops_month_above_percent")
        or suite_meta.get("hold_stops_month_above_percent")
        or _HOLD_STOPS_MONTH_ABOVE_PERCENT
    )
    count = int(details.get("unexpected_count") or 0)
    percent = 100.0 * count / row_count if row_count else 100.0
    return percent > limit or count > HOLD_LIMIT or not held


def _plain_description(description: str | None, meta: Mapping[str, Any]) -> str | None:
    suffix = f" ({meta.get('severity')}: {meta.get('name')})"
    return description.removesuffix(suffix) if description else None


def _examples(details: Mapping[str, Any], index_column: str | None) -> tuple[dict[str, str], ...]:
    rows = details.get("partial_unexpected_index_list") or []
    if not rows:
        values = (details.get("partial_unexpected_list") or [])[:EXAMPLE_LIMIT]
        return tuple({"value": _text(value)} for value in values)
    examples, seen = [], set()
    for row in rows:
        if not isinstance(row, Mapping):
            row = {"row": row}
        # The row key first (charge id, action id ...), then the values that broke the expectation.
        ordered = sorted(row.items(), key=lambda item: item[0] != index_column)
        example = {str(key): _text(value) for key, value in ordered}
        marker = tuple(example.items())
        if marker not in seen:
            seen.add(marker)
            examples.append(example)
        if len(examples) >= EXAMPLE_LIMIT:
            break
    return tuple(examples)


def _exception_message(info: Any) -> str | None:
    """GX reports an expectation that raised either flat or per metric; either way, the first message."""
    if not isinstance(info, Mapping):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, Mapping) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


# --- frames ------------------------------------------------------------------------------------------------


def _frame(warehouse: Warehouse, statement: str, params: Mapping[str, Any], suite_name: str) -> pd.DataFrame:
    import pandas as pd

    frame = warehouse.read_frame(statement, params)
    # SQLite hands dates back as text, PostgreSQL as date objects: make both datetime64 so suites compare them.
    for column in _DATE_COLUMNS.get(suite_name, ()):
        frame[column] = pd.to_datetime(frame[column], errors="coerce")
    return frame


def _month_parameters(month: BillingMonth) -> dict[str, Any]:
    return {
        "month_first_day": datetime.combine(month.first_day, datetime.min.time()),
        "month_last_day": datetime.combine(month.last_day, datetime.min.time()),
    }


def _reader(path: tuple[str, ...]) -> Any:
    """A fast reader of one (dotted) payload field: None when absent, null or blank (this runs per raw field)."""

    def present(value: Any) -> Any:
        if value is None or (type(value) is str and not value.strip()):
            return None
        # Only presence matters to the raw suite; nested objects become text so pandas keeps one column.
        return value if type(value) in (str, int, float, bool) else json.dumps(value)

    if len(path) == 1:
        (key,) = path
        return lambda payload: present(payload.get(key))
    if len(path) == 2:
        outer, inner = path

        def nested(payload: dict) -> Any:
            parent = payload.get(outer)
            return present(parent.get(inner)) if type(parent) is dict else None

        return nested

    def deep(payload: dict) -> Any:
        value: Any = payload
        for part in path:
            if type(value) is not dict:
                return None
            value = value.get(part)
        return present(value)

    return deep


def _failure_dict(failure: ExpectationFailure) -> dict[str, Any]:
    data = asdict(failure)
    # the held lines are in `quality_holds`; XCom and `quality_results` keep their count and the examples
    data["held_lines"] = len(data.pop("held_keys"))
    data["severity"] = str(failure.severity)
    data["examples"] = [dict(example) for example in failure.examples]
    data["message"] = str(failure)
    return data


def _text(value: Any) -> str:
    if hasattr(value, "isoformat"):
        text = value.isoformat()
        return text[:10] if text.endswith("T00:00:00") else text
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item"):  # numpy scalars
        return _text(value.item())
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    return _text(value)

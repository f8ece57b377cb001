"""The knobs of mapping and reconciliation: one dataclass the DAG builds from its params/environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from include.models import BillingPeriod
from include.prices import PricePolicy

# Autotask Services.periodType per BSS billing period (autotask-api.md §5: 2 Monthly, 3 Quarterly,
# 4 Semi-Annual, 5 Yearly). The only place these numbers live; a tenant with other ids overrides them.
DEFAULT_PERIOD_TYPES: Mapping[str, int] = {
    BillingPeriod.MONTHLY: 2,
    BillingPeriod.QUARTERLY: 3,
    BillingPeriod.SEMI_ANNUALLY: 4,
    BillingPeriod.ANNUALLY: 5,
}
DEFAULT_COMPANY_KEY_UDF = "BSS Account ID"
RECURRING_SERVICE_CONTRACT_TYPE = 7
CUSTOMER_COMPANY_TYPE = 1
ACTIVE_CONTRACT_STATUS = 1
# Airflow's simple auth manager's roles, least to most: who may approve is named by one of them (approver_role).
APPROVER_ROLES = ("viewer", "user", "op", "admin")


class ApprovalPolicy(StrEnum):
    """Who approves a month's plan."""

    MANUAL = "manual"  # always a person, in the approval form
    # the policy approves a clean, small month (quality passed without warnings, nothing to map, flag or
    # block, changes under the auto_approve_max_* thresholds); any other month waits for a person
    AUTO_IF_CLEAN = "auto_if_clean"


class EffectiveDatePolicy(StrEnum):
    """Which Autotask effective date a BSS change gets (prorated lines in Autotask cannot be deleted)."""

    CHANGE_DATE = "change_date"  # the BSS effective date itself
    PERIOD_START = "period_start"  # the first day of the billing month the change falls in
    NEXT_PERIOD_START = "next_period_start"  # the first day of the following billing month


@dataclass(frozen=True)
class SyncSettings:
    """Settings of the map and reconcile steps, with defaults that work against the sandbox."""

    effective_date_policy: EffectiveDatePolicy = EffectiveDatePolicy.CHANGE_DATE
    # What a customer pays (include/prices.py): `keep` (an existing contract service keeps its Autotask price; a new
    # one gets the BSS price of its recurring line), `bss` (every contract service follows the BSS price), or
    # `markup:<percent>` (the BSS unit cost plus that markup). A customer's override (review page) wins.
    price_policy: str = "keep"
    # Required by Autotask to create a company / a service; None leaves such creates flagged for review.
    owner_resource_id: int | None = None
    billing_code_id: int | None = None
    # The company's external key: a Company UDF (default) or, when company_key_field is set, that field.
    company_key_udf: str | None = DEFAULT_COMPANY_KEY_UDF
    company_key_field: str | None = None
    period_types: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PERIOD_TYPES))
    contract_status: int = ACTIVE_CONTRACT_STATUS
    company_type: int = CUSTOMER_COMPANY_TYPE
    time_reporting_requires_start_and_stop_times: int = 0
    # Fuzzy candidates at or above this rapidfuzz score (0-100) become suggestions; at most this many each.
    suggestion_min_score: float = 80.0
    suggestion_limit: int = 3
    # Decreases inside a commitment of at least this many months go to review instead of being applied.
    review_decreases_from_months: int = 12
    # Autotask contracts of shorter commitments (month-to-month) are created and extended this many months
    # at a time, so a rolling subscription does not cost a contract write every month.
    minimum_contract_months: int = 12
    linked_by: str = "auto-linker"
    # Approval (include/approval.py): who approves, what "small" means for auto_if_clean, how long a person
    # has to answer before the month counts as rejected (168 h = 7 days).
    approval_policy: ApprovalPolicy = ApprovalPolicy.MANUAL
    auto_approve_max_units: float = 50.0  # units added plus units removed, over the whole month
    auto_approve_max_monthly_cost: float = 1000.0  # cost added plus cost removed, in the customers' currencies
    approval_timeout_hours: float = 168.0
    # Who may answer the approval form: these users (Airflow user ids, comma-separated in BILLING_SYNC_APPROVERS);
    # when none are named, anyone whose Airflow role is at least approver_role (viewer < user < op < admin).
    approvers: tuple[str, ...] = ()
    approver_role: str = "op"
    # The two-person rule: whoever took a review decision on a run does not approve it.
    four_eyes: bool = False
    # Everything up to the load, then the report of what would be written; zero writes to Autotask.
    dry_run: bool = False
    # Share of Autotask's hourly request budget a load leaves for the customer's other integrations.
    budget_reserve_share: float = 0.2
    # The month's close (include/month_close.py): a scheduled run waits until the BSS month is closed, asking
    # /api/invoices every close_poll_minutes; past the close_deadline_day of the next month it alerts once.
    close_poll_minutes: float = 60.0
    close_deadline_day: int = 10
    # The leakage audit (include/audit.py): it runs on audit_posting_day of the month after the billing month
    # (once Autotask has posted it); differences within audit_tolerance are rounding; leakage above
    # audit_alert_threshold (in any one currency) alerts.
    audit_posting_day: int = 15
    audit_tolerance: float = 0.05
    audit_alert_threshold: float = 100.0
    # Alerts (include/alerts.py): Airflow connections, each off when not set; a load paused on the hourly
    # budget for longer than budget_pause_alert_minutes alerts.
    alert_email_conn_id: str = "billing_alerts_smtp"
    alert_email_to: str | None = None
    alert_webhook_conn_id: str = "billing_alerts_webhook"
    budget_pause_alert_minutes: float = 60.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> SyncSettings:
        """Build from DAG params / JSON; unknown keys are an error so a typo does not pass silently."""
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown sync settings: {sorted(unknown)}")
        if "effective_date_policy" in values:
            values["effective_date_policy"] = EffectiveDatePolicy(values["effective_date_policy"])
        if "approval_policy" in values:
            values["approval_policy"] = ApprovalPolicy(values["approval_policy"])
        for name in ("dry_run", "four_eyes"):
            if isinstance(values.get(name), str):
                values[name] = _flag(values[name])
        if "approvers" in values:
            raw = values["approvers"]
            names = raw.split(",") if isinstance(raw, str) else list(raw or ())
            values["approvers"] = tuple(name.strip() for name in names if str(name).strip())
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that cannot mean what the operator wanted (a silent default would be worse)."""
        if not 0 <= self.budget_reserve_share < 1:
            raise ValueError("budget_reserve_share must be in [0, 1)")
        if self.approval_timeout_hours <= 0:
            raise ValueError("approval_timeout_hours must be positive")
        if self.auto_approve_max_units < 0 or self.auto_approve_max_monthly_cost < 0:
            raise ValueError("auto_approve_max_units and auto_approve_max_monthly_cost must not be negative")
        if self.close_poll_minutes <= 0:
            raise ValueError("close_poll_minutes must be positive")
        if not 1 <= self.close_deadline_day <= 28 or not 1 <= self.audit_posting_day <= 28:
            raise ValueError("close_deadline_day and audit_posting_day must be days 1-28 of a month")
        if self.audit_tolerance < 0 or self.audit_alert_threshold < 0:
            raise ValueError("audit_tolerance and audit_alert_threshold must not be negative")
        PricePolicy.parse(self.price_policy)  # refuses anything but keep, bss or markup:<percent>
        if self.approver_role.strip().lower() not in APPROVER_ROLES:
            raise ValueError(f"approver_role must be one of {', '.join(APPROVER_ROLES)}, not {self.approver_role!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SyncSettings:
        """`BILLING_SYNC_<FIELD>` environment variables override the defaults (numbers parsed)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            raw = environ.get(f"BILLING_SYNC_{name.upper()}")
            if raw is None or raw.strip() == "" or name == "period_types":
                continue  # unset or empty (a deployment passes every setting, empty for the default)
            kind = str(spec.type)
            if kind == "bool":
                values[name] = _flag(raw)
            elif "int" in kind and "str" not in kind:
                values[name] = int(raw)
            elif "float" in kind:
                values[name] = float(raw)
            else:
                values[name] = raw
        return cls.from_mapping(values)

    @property
    def default_price_policy(self) -> PricePolicy:
        """The price policy of every customer without an override of its own."""
        return PricePolicy.parse(self.price_policy)

    def period_type(self, billing_period: str) -> int:
        try:
            return int(self.period_types[billing_period])
        except KeyError as error:
            raise ValueError(f"no Autotask periodType configured for billing period {billing_period!r}") from error

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["effective_date_policy"] = str(self.effective_date_policy)
        values["approval_policy"] = str(self.approval_policy)
        values["period_types"] = {str(key): value for key, value in self.period_types.items()}
        values["approvers"] = list(self.approvers)
        return values


def _flag(raw: str) -> bool:
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a yes/no setting: {raw!r}")

"""The brief's field mapping, as functions: billing cycle -> commitment term, effective-date policy.

BSS `billingCycle` is the commitment (the Autotask contract term); `billingPlan.billingPeriod` is how
often it is billed (Services.periodType, configured in `SyncSettings.period_types`).
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta

from include.models import BillingCycle, BillingMonth
from include.sync_settings import EffectiveDatePolicy

COMMITMENT_MONTHS: dict[str, int] = {
    BillingCycle.MONTHLY: 1,
    BillingCycle.ANNUAL: 12,
    BillingCycle.BIENNIAL: 24,
    BillingCycle.TRIENNIAL: 36,
}


def commitment_months(billing_cycle: str) -> int:
    try:
        return COMMITMENT_MONTHS[billing_cycle]
    except KeyError as error:
        raise ValueError(f"unknown billing cycle {billing_cycle!r}") from error


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return day.replace(year=year, month=month + 1, day=min(day.day, calendar.monthrange(year, month + 1)[1]))


def month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def contract_term_months(billing_cycle: str, minimum_months: int = 1) -> int:
    """Months an Autotask contract term runs: the commitment, at least `minimum_months` (a month-to-month
    subscription would otherwise need a contract write every month, against a 10,000-calls-an-hour budget)."""
    return max(commitment_months(billing_cycle), minimum_months)


def commitment_term(billing_cycle: str, start: date, minimum_months: int = 1) -> tuple[date, date]:
    """(startDate, endDate) of a new contract, counted as the BSS counts a term: it ends at the end of the
    month holding the term's last day (annual from 2026-10-01 ends 2027-09-30; from 2026-10-18, 2027-10-31)."""
    end = month_end(add_months(start, contract_term_months(billing_cycle, minimum_months)) - timedelta(days=1))
    return start, end


def renewed_end_date(current_end: date, billing_cycle: str, covering: date, minimum_months: int = 1) -> date:
    """The contract end after renewing term by term from `current_end` until it covers `covering`."""
    months = contract_term_months(billing_cycle, minimum_months)
    end = current_end
    while end < covering:
        end = month_end(add_months(end + timedelta(days=1), months - 1))
    return end


def autotask_effective_date(bss_date: date, policy: EffectiveDatePolicy) -> date:
    """The date an adjustment is posted at for a BSS change realised on `bss_date`.

    Periods are billing months (the run's unit of work); a date already on a period start stays put.
    """
    if policy is EffectiveDatePolicy.CHANGE_DATE or bss_date.day == 1:
        return bss_date
    month = BillingMonth.of(bss_date)
    if policy is EffectiveDatePolicy.PERIOD_START:
        return month.first_day
    return month.next().first_day

"""The approval and load settings: one home (SyncSettings), read from `BILLING_SYNC_*`, nonsense refused."""

from __future__ import annotations

import pytest

from include.sync_settings import ApprovalPolicy, SyncSettings


def test_the_defaults_ask_a_person_wait_seven_days_and_write_for_real() -> None:
    settings = SyncSettings()
    assert settings.approval_policy is ApprovalPolicy.MANUAL
    assert settings.approval_timeout_hours == 168
    assert settings.dry_run is False


def test_the_environment_sets_policy_limits_timeout_dry_run_and_budget_reserve() -> None:
    settings = SyncSettings.from_env(
        {
            "BILLING_SYNC_APPROVAL_POLICY": "auto_if_clean",
            "BILLING_SYNC_AUTO_APPROVE_MAX_UNITS": "25",
            "BILLING_SYNC_AUTO_APPROVE_MAX_MONTHLY_COST": "499.99",
            "BILLING_SYNC_APPROVAL_TIMEOUT_HOURS": "48",
            "BILLING_SYNC_DRY_RUN": "yes",
            "BILLING_SYNC_BUDGET_RESERVE_SHARE": "0.35",
        }
    )
    assert settings.approval_policy is ApprovalPolicy.AUTO_IF_CLEAN
    assert (settings.auto_approve_max_units, settings.auto_approve_max_monthly_cost) == (25, 499.99)
    assert settings.approval_timeout_hours == 48 and settings.dry_run is True
    assert settings.budget_reserve_share == 0.35
    assert settings.as_dict()["approval_policy"] == "auto_if_clean"
    assert SyncSettings.from_env({"BILLING_SYNC_DRY_RUN": "0"}).dry_run is False


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("APPROVAL_POLICY", "always", "always"),
        ("DRY_RUN", "maybe", "yes/no"),
        ("APPROVAL_TIMEOUT_HOURS", "0", "approval_timeout_hours"),
        ("AUTO_APPROVE_MAX_UNITS", "-1", "must not be negative"),
        ("BUDGET_RESERVE_SHARE", "1", "budget_reserve_share"),
    ],
)
def test_a_setting_that_cannot_mean_what_was_wanted_is_refused(name: str, value: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SyncSettings.from_env({f"BILLING_SYNC_{name}": value})

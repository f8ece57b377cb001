"""The brief's field mapping (commitment terms, effective-date policy, period types) and name normalisation."""

from __future__ import annotations

from datetime import date

import pytest

from include.field_mapping import autotask_effective_date, commitment_term, renewed_end_date
from include.names import normalise_name
from include.sync_settings import EffectiveDatePolicy, SyncSettings


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Contoso Ltd", "CONTOSO LIMITED"),
        ("Müller GmbH", "Muller G.m.b.H."),
        ("Fabrikam Inc", "Fabrikam, Inc."),
        ("O'Brien & Sons Ltd", "OBrien and Sons Limited"),
        ("Acme S.p.A.", "acme spa"),
        ("Ångström S.L.", "Angstrom SL"),
    ],
)
def test_same_customer_spelled_differently_normalises_equal(left, right):
    assert normalise_name(left) == normalise_name(right) != ""


def test_different_customers_stay_different_and_a_lone_legal_word_is_kept():
    assert normalise_name("Northwind Trading Ltd") != normalise_name("Northwind Traders Ltd")
    assert normalise_name("Company") == "company"


def test_commitment_term_and_renewal_follow_the_billing_cycle():
    assert commitment_term("Annual", date(2026, 10, 1)) == (date(2026, 10, 1), date(2027, 9, 30))
    assert commitment_term("Monthly", date(2026, 10, 7)) == (date(2026, 10, 7), date(2026, 11, 30))
    assert commitment_term("Monthly", date(2026, 10, 1), minimum_months=12)[1] == date(2027, 9, 30)
    assert renewed_end_date(date(2026, 9, 30), "Annual", date(2026, 10, 1)) == date(2027, 9, 30)
    assert renewed_end_date(date(2026, 9, 30), "Biennial", date(2026, 10, 15)) == date(2028, 9, 30)
    assert renewed_end_date(date(2026, 12, 31), "Annual", date(2026, 10, 15)) == date(2026, 12, 31)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (EffectiveDatePolicy.CHANGE_DATE, date(2026, 10, 18)),
        (EffectiveDatePolicy.PERIOD_START, date(2026, 10, 1)),
        (EffectiveDatePolicy.NEXT_PERIOD_START, date(2026, 11, 1)),
    ],
)
def test_effective_date_policy(policy, expected):
    assert autotask_effective_date(date(2026, 10, 18), policy) == expected
    assert autotask_effective_date(date(2026, 10, 1), policy) == date(2026, 10, 1)


def test_settings_from_params_and_environment():
    settings = SyncSettings.from_mapping({"effective_date_policy": "next_period_start", "owner_resource_id": 7})
    assert settings.effective_date_policy is EffectiveDatePolicy.NEXT_PERIOD_START
    assert settings.period_type("Quarterly") == 3 and settings.period_type("Annually") == 5
    with pytest.raises(ValueError, match="unknown sync settings"):
        SyncSettings.from_mapping({"owner_resource": 7})
    from_env = SyncSettings.from_env(
        {"BILLING_SYNC_BILLING_CODE_ID": "29682801", "BILLING_SYNC_EFFECTIVE_DATE_POLICY": "period_start"}
    )
    assert from_env.billing_code_id == 29682801
    assert from_env.effective_date_policy is EffectiveDatePolicy.PERIOD_START
    assert SyncSettings().as_dict()["period_types"]["Monthly"] == 2

"""The brief's field mapping (commitment terms, effective-date policy, period types) and the two name keys:
the exact name (automatic links) and the loose name (candidates for a person), with the scores of candidates."""

from __future__ import annotations

from datetime import date

import pytest

from include.field_mapping import autotask_effective_date, commitment_term, renewed_end_date
from include.names import compare_names, exact_name, legal_form, loose_name, normalise_name
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
def test_same_customer_spelled_differently_is_a_candidate_but_never_the_same_exact_name(left, right):
    # the loose key finds the candidate ...
    assert loose_name(left) == loose_name(right) != ""
    # ... but only the exact name links, so each of these waits for a person
    assert exact_name(left) != exact_name(right)
    assert 95 <= compare_names(left, right).score < 100


def test_different_customers_stay_different_and_a_lone_legal_word_is_kept():
    assert loose_name("Northwind Trading Ltd") != loose_name("Northwind Traders Ltd")
    assert loose_name("Company") == "company"
    # the old name of the loose key still works for callers outside mapping
    assert normalise_name("Müller GmbH") == loose_name("Müller GmbH") == "muller"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        # NFC (one code point é) and NFD (e + combining acute) spellings of one name
        ("Caf\u00e9 de l'Horloge SARL", "Cafe\u0301 de l'Horloge SARL"),
        ("  Müller   &  Söhne\tGmbH ", "müller & söhne gmbh"),
        ("KOWALSKI BÄCKEREI SARL", "Kowalski\u00a0Bäckerei SARL"),
        ("Straße Holding AG", "STRASSE HOLDING AG"),
    ],
)
def test_exact_name_ignores_only_unicode_form_case_and_whitespace(left, right):
    assert exact_name(left) == exact_name(right)
    assert compare_names(left, right).score == 100


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Kowalski Bäckerei SARL", "Kowalski Bäckerei ApS"),
        ("Müller & Söhne GmbH", "Muller & Sohne GmbH"),
        ("Fabrikam, Inc.", "Fabrikam Inc"),
        ("Contoso Ltd", "Contoso"),
    ],
)
def test_exact_name_keeps_legal_form_accents_and_punctuation(left, right):
    assert exact_name(left) != exact_name(right)


def test_an_accent_only_difference_scores_high_and_says_so():
    comparison = compare_names("Müller & Söhne GmbH", "Muller & Sohne GmbH")
    assert comparison.score >= 95
    assert "accents" in comparison.reason


def test_a_different_legal_form_scores_clearly_lower_and_names_both_forms():
    comparison = compare_names("Kowalski Bäckerei SARL", "Kowalski Bäckerei ApS")
    accents_only = compare_names("Kowalski Bäckerei SARL", "Kowalski Backerei SARL")
    assert 80 <= comparison.score <= accents_only.score - 10
    assert '"SARL" vs "ApS"' in comparison.reason and "different legal entity" in comparison.reason
    # a legal form written differently is the same form, not a different one
    assert "legal form differs" not in compare_names("Contoso Ltd", "Contoso Limited").reason
    assert "GmbH & Co. KG" in compare_names("Acme GmbH & Co. KG", "Acme GmbH").reason


def test_a_typo_ranks_below_accents_and_punctuation():
    typo = compare_names("Northwind Trading Ltd", "Northwind Traders Ltd")
    assert 80 <= typo.score < compare_names("Fabrikam, Inc.", "Fabrikam Inc").score
    assert "similar name" in typo.reason
    # a typo and a different legal form together fall below the default threshold of 80
    assert compare_names("Kowalsky Bäckerei SARL", "Kowalski Bäckerei ApS").score < 80


def test_names_with_different_numbers_score_below_the_default_threshold():
    numbered = compare_names("Woodgrove Amsterdam B.V. (2)", "Woodgrove Amsterdam B.V. (4)")
    assert numbered.score < 80 and 'numbers differ: "2" vs "4"' in numbered.reason


def test_legal_form_is_read_as_the_name_writes_it():
    assert legal_form("Muller G.m.b.H.") == "G.m.b.H."
    assert legal_form("Acme GmbH & Co. KG") == "GmbH & Co. KG"
    assert legal_form("Fabrikam, Inc.") == "Inc."
    assert legal_form("Company") == ""
    assert legal_form("Company Ltd") == "Ltd"


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

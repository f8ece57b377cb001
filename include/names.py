"""Normalised names: what "the same name" means when linking BSS records to Autotask records."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Legal-form words that say nothing about who the customer is. Compared after accents and punctuation are
# gone, so "S.A." is "sa" and "GmbH & Co. KG" is "gmbh co kg".
LEGAL_SUFFIXES = frozenset(
    {
        "ltd",
        "limited",
        "plc",
        "llp",
        "llc",
        "inc",
        "incorporated",
        "corp",
        "corporation",
        "co",
        "company",
        "gmbh",
        "ag",
        "kg",
        "ug",
        "mbh",
        "sa",
        "sas",
        "sarl",
        "sl",
        "slu",
        "spa",
        "srl",
        "bv",
        "nv",
        "oy",
        "ab",
        "as",
        "aps",
        "dac",
        "teoranta",
        "ae",
        "epe",
        "ike",
        "αε",
        "επε",
        "ικε",
        "pty",
        "group",
        "holdings",
    }
)
_NON_ALPHANUMERIC = re.compile(r"[^0-9a-z]+")
# Dotted abbreviations ("S.A.", "B.V.", "S.r.l.") become one token before punctuation turns into spaces.
_DOTTED = re.compile(r"\b(?:[^\W\d_]\.){1,3}[^\W\d_]?\.?(?=\s|$)")
_APOSTROPHES = re.compile(r"['’`´]")
# The common case, where the steps above change nothing but case and separators.
_SIMPLE = re.compile(r"[A-Za-z0-9 -]+")
_SIMPLE_SEPARATORS = re.compile(r"[ -]+")


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


@lru_cache(maxsize=524_288)
def normalise_name(name: str | None) -> str:
    """Lower case, no accents, no punctuation, no legal suffixes, single spaces ("" for nothing left).

    Greek/Cyrillic letters are kept (lower-cased, unaccented): transliteration would invent matches.
    """
    if not name:
        return ""
    if _SIMPLE.fullmatch(name):
        # letters, digits, spaces and hyphens only: nothing to strip but the separators
        tokens = [token for token in _SIMPLE_SEPARATORS.split(name.lower()) if token]
        return _without_legal_suffixes(tokens)
    text = name.casefold() if name.isascii() else _strip_accents(name).casefold()
    text = _APOSTROPHES.sub("", text).replace("&", " and ")
    text = _DOTTED.sub(lambda match: match.group(0).replace(".", ""), text)
    tokens = [token for token in re.split(r"[^\w]+", text) if token and token != "_"]
    tokens = [_NON_ALPHANUMERIC.sub("", token) if token.isascii() else token for token in tokens]
    tokens = [token for token in tokens if token]
    return _without_legal_suffixes(tokens)


def _without_legal_suffixes(tokens: list[str]) -> str:
    # drop legal forms only at the end, so "Company Shop" keeps its first word
    while len(tokens) > 1 and (tokens[-1] in LEGAL_SUFFIXES or tokens[-1] == "and"):
        tokens.pop()
    return " ".join(tokens)

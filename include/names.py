"""Names: what "the same name" means when linking BSS records to Autotask records.

Two keys, two jobs. The exact key (`exact_name`) decides automatic links: Unicode NFC, case-folded, whitespace
collapsed, and nothing else, so a legal form, an accent or a comma still tells two customers apart ("Kowalski
Bäckerei SARL" is not "Kowalski Bäckerei ApS"). The loose key (`loose_name`: accents folded, punctuation and
trailing legal forms stripped) only finds candidates for a person to review; `compare_names` scores such a
candidate and says, in words, how it differs.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz import fuzz

# Legal-form words at the end of a name. The loose key drops them to find candidates; `compare_names` then
# compares them, because a different legal form usually is a different legal entity. Compared after accents
# and punctuation are gone, so "S.A." is "sa" and "GmbH & Co. KG" is "gmbh co kg".
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


# Spellings of one legal form ("Ltd" and "Limited" are the same form).
_LEGAL_FORM_SPELLINGS = {"limited": "ltd", "incorporated": "inc", "corporation": "corp", "company": "co"}
# Scores of the differences a person can act on, strongest first. Typos score their fuzzy ratio, capped below
# these, so an accent-only twin always ranks above a misspelling.
ACCENTS_ONLY_SCORE = 98.0
SPELLING_ONLY_SCORE = 96.0
SIMILAR_NAME_CAP = 94.0
LEGAL_FORM_ON_ONE_SIDE_PENALTY = 6.0
LEGAL_FORM_DIFFERS_PENALTY = 15.0
NUMBERS_DIFFER_PENALTY = 15.0


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


@lru_cache(maxsize=524_288)
def exact_name(name: str | None) -> str:
    """The key of an automatic name link: NFC, case-folded, runs of whitespace as one space, stripped.

    Legal form, accents and punctuation are kept: "Müller GmbH" and "Muller GmbH" are different exact names.
    """
    if not name:
        return ""
    # NFC again after case folding: folding can leave a decomposed sequence ("İ" folds to "i" + dot above)
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
    return " ".join(folded.split())


@lru_cache(maxsize=524_288)
def loose_name(name: str | None) -> str:
    """Lower case, no accents, no punctuation, no legal suffixes, single spaces ("" for nothing left).

    For finding and scoring candidates only, never for a link. Greek/Cyrillic letters are kept (lower-cased,
    unaccented): transliteration would invent matches.
    """
    return " ".join(_loose_parts(name)[0])


# The old name of the loose key, for callers outside mapping.
normalise_name = loose_name


@lru_cache(maxsize=524_288)
def _loose_parts(name: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The loose tokens of a name, split into the name itself and its trailing legal form."""
    if not name:
        return (), ()
    if _SIMPLE.fullmatch(name):
        # letters, digits, spaces and hyphens only: nothing to strip but the separators
        return _split_legal_form([token for token in _SIMPLE_SEPARATORS.split(name.lower()) if token])
    text = name.casefold() if name.isascii() else _strip_accents(name).casefold()
    text = _APOSTROPHES.sub("", text).replace("&", " and ")
    text = _DOTTED.sub(lambda match: match.group(0).replace(".", ""), text)
    tokens = [token for token in re.split(r"[^\w]+", text) if token and token != "_"]
    tokens = [_NON_ALPHANUMERIC.sub("", token) if token.isascii() else token for token in tokens]
    return _split_legal_form([token for token in tokens if token])


def _split_legal_form(tokens: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # legal forms only at the end, so "Company Shop" keeps its first word and a lone "Company" stays a name
    end = len(tokens)
    while end > 1 and (tokens[end - 1] in LEGAL_SUFFIXES or tokens[end - 1] == "and"):
        end -= 1
    return tuple(tokens[:end]), tuple(tokens[end:])


def _legal_form_key(form: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_LEGAL_FORM_SPELLINGS.get(token, token) for token in form if token != "and")


def legal_form(name: str | None) -> str:
    """The legal form at the end of a name as the name writes it ("SARL", "G.m.b.H.", "GmbH & Co. KG"), or ""."""
    _, form = _loose_parts(name)
    if not form or not name:
        return ""
    words = name.split()
    taken = 0
    # the trailing words made only of legal-form words (or "&"), never the first word
    while taken < len(words) - 1:
        core, word_form = _loose_parts(words[-1 - taken])
        if not all(token in LEGAL_SUFFIXES or token == "and" for token in core + word_form):
            break
        taken += 1
    return " ".join(words[len(words) - taken :]) if taken else " ".join(form)


@dataclass(frozen=True)
class NameComparison:
    """How close two names are (0-100) and, in words a person can act on, how they differ."""

    score: float
    reason: str


def _numbers(tokens: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(token for token in tokens if token.isdigit()))


def _similarity(left_loose: str, right_loose: str) -> float:
    """The fuzzy ratio of two loose names, word order ignored (rapidfuzz token sort ratio)."""
    return float(fuzz.token_sort_ratio(left_loose, right_loose))


def compare_names(name: str, other: str) -> NameComparison:
    """Score `other` as a candidate for `name`.

    100 only for the same exact name. Accents only: 98. Punctuation or the spelling of the same legal form
    ("Inc." / "Inc", "Ltd" / "Limited"): 96. Otherwise the fuzzy ratio of the names without their legal forms
    (100 when equal, at most 94 when not), less 6 for a legal form on one side only, less 15 for a different
    legal form (usually a different legal entity: "Kowalski Bäckerei SARL" vs "Kowalski Bäckerei ApS" scores
    85) and less 15 when the numbers in the names differ.
    """
    if exact_name(name) == exact_name(other):
        return NameComparison(100.0, "exact name")
    if exact_name(_strip_accents(name)) == exact_name(_strip_accents(other)):
        return NameComparison(ACCENTS_ONLY_SCORE, "same name apart from accents")
    core, form = _loose_parts(name)
    other_core, other_form = _loose_parts(other)
    form_key, other_form_key = _legal_form_key(form), _legal_form_key(other_form)
    if core == other_core and form_key == other_form_key:
        return NameComparison(
            SPELLING_ONLY_SCORE, "same name apart from accents, punctuation or how the legal form is written"
        )
    if "".join(core) == "".join(other_core) and form_key == other_form_key:
        return NameComparison(SPELLING_ONLY_SCORE, "same name apart from spacing")
    if core == other_core:
        score, reasons = 100.0, ["same name"]
    else:
        ratio = _similarity(" ".join(core), " ".join(other_core))
        score, reasons = min(ratio, SIMILAR_NAME_CAP), [f"similar name ({ratio:.0f}% alike)"]
    if form_key != other_form_key and form_key and other_form_key:
        score -= LEGAL_FORM_DIFFERS_PENALTY
        reasons.append(
            f'but the legal form differs: "{legal_form(name)}" vs "{legal_form(other)}"'
            " (usually a different legal entity)"
        )
    elif form_key != other_form_key:
        score -= LEGAL_FORM_ON_ONE_SIDE_PENALTY
        reasons.append(f'but the legal form "{legal_form(name) or legal_form(other)}" is on one side only')
    numbers, other_numbers = _numbers(core), _numbers(other_core)
    if numbers != other_numbers:
        # "Woodgrove Amsterdam (2)" and "(4)" are two customers however alike the rest reads
        score -= NUMBERS_DIFFER_PENALTY
        shown = [f'"{" ".join(found)}"' if found else "none" for found in (numbers, other_numbers)]
        reasons.append(f"and the numbers differ: {shown[0]} vs {shown[1]}")
    return NameComparison(round(max(score, 0.0), 2), ", ".join(reasons))


# Begins the detail of a new customer's link whose only look-alikes in Autotask are other legal entities
# (`include.mapping`), which flags the create of its company (`include.reconcile`).
LOOK_ALIKES_NOTE = "new company proposed; Autotask has look-alikes that are other legal entities:"
# Below this fuzzy ratio two words are different words, not one word misspelt ("sanchez" / "schafer": 57;
# "northwnd" / "northwind": 94).
DIFFERENT_WORD_RATIO = 75.0


def other_entity(name: str, other: str) -> str | None:
    """Why `other`, a look-alike of `name`, is evidently another legal entity, in words; None when a person must
    decide (the same name apart from accents, spacing, punctuation or how the same legal form is written; a typo;
    a legal form on one side only).

    Another entity: both names carry a legal form and the forms differ ("Brennan Café Oy" / "Brennan Café Ltd"), or
    each name has a word the other has nothing close to (not a misspelling, not another form of the same word) — its
    distinctive word ("Sánchez Medical Centre Ltd" / "Schäfer Medical Centre Limited"; "Northwind Trading Ltd" /
    "Northwind Traders Ltd" still waits)."""
    if exact_name(_strip_accents(name)) == exact_name(_strip_accents(other)):
        return None
    core, form = _loose_parts(name)
    other_core, other_form = _loose_parts(other)
    form_key, other_form_key = _legal_form_key(form), _legal_form_key(other_form)
    if form_key and other_form_key and form_key != other_form_key:
        return f'the legal form differs: "{legal_form(name)}" vs "{legal_form(other)}"'
    if core == other_core or "".join(core) == "".join(other_core):
        return None  # the same words, or the same letters spaced otherwise
    own = [token for token in core if token not in other_core]
    theirs = [token for token in other_core if token not in core]
    if not own or not theirs:
        return None  # a word more on one side only: it may be the same customer written longer
    lonely = [token for token in own if not any(_same_word(token, candidate) for candidate in theirs)]
    lonely_theirs = [token for token in theirs if not any(_same_word(token, candidate) for candidate in own)]
    if lonely and lonely_theirs:
        return f'the distinctive word differs: "{_word_of(name, lonely[0])}" vs "{_word_of(other, lonely_theirs[0])}"'
    return None


def _same_word(word: str, other: str) -> bool:
    """Whether two words may be one word, misspelt or in another form: alike (fuzzy ratio at least
    `DIFFERENT_WORD_RATIO`: "northwnd" / "northwind") or with a common stem of 4 letters or more ("trading" /
    "traders"). "sanchez" / "schafer" are two words."""
    if fuzz.ratio(word, other) >= DIFFERENT_WORD_RATIO:
        return True
    stem = 0
    for left, right in zip(word, other, strict=False):
        if left != right:
            break
        stem += 1
    return stem >= min(4, len(word), len(other))


def _word_of(name: str, token: str) -> str:
    """The word of `name` as written whose loose form is `token` (the token itself when none is)."""
    return next((word for word in name.split() if loose_name(word) == token), token)

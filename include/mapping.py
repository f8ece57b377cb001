"""Step 3: link BSS accounts, subscriptions and products to Autotask companies, contracts and services,
once, and remember the links across months.

Billing the wrong customer is the worst thing this product can do, so only three things link on their own:
a remembered link (a manual one always wins and auto-linking never replaces a stored link); an external key
(Company UDF/field = BSS account id, `Contracts.contractNumber` = subscription id, `Services.sku` = product
sku); and an exact name (`include.names.exact_name`: legal form, accents and punctuation kept) that exactly
one active Autotask record carries. Everything looser (accents folded, a different legal form, typos,
punctuation) and every exact name several records share becomes a scored suggestion with a reason, applied
only when a person confirms it. A remembered link made by the old loose-name rule is demoted to a suggestion.

Contracts: names only mean something among the contracts of the account's linked company; a contract whose
`contractNumber` is another subscription's id is never linked nor suggested by name (reconciliation plans the
subscription its own contract). A remembered or keyed contract of a company other than the account's is kept
but flagged `other_company`, with a sentence naming both companies; when the account has no linked company,
the contract's company becomes a suggestion for the account instead.

A stored link whose Autotask record is gone or inactive is kept but flagged, so the plan holds its actions for
review instead of writing to the wrong record. Every link made, demoted or (un)flagged writes a
`mapping_link_events` row: the audit trail.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from rapidfuzz import fuzz, process
from sqlalchemy.engine import Connection

from include.extract import ensure_run_reads_own_lines
from include.models import BillingMonth
from include.names import LOOK_ALIKES_NOTE, compare_names, exact_name, loose_name, other_entity
from include.plan import PlanScope, sql_in
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse, sql, utcnow

log = logging.getLogger(__name__)


class LinkKind(StrEnum):
    COMPANY = "company"  # BSS account id -> Companies.id
    CONTRACT = "contract"  # BSS subscription id -> Contracts.id
    SERVICE = "service"  # BSS product id -> Services.id


class LinkMethod(StrEnum):
    REMEMBERED = "remembered"
    KEY = "key"
    NAME = "name"
    CONFIRMED_SUGGESTION = "confirmed_suggestion"
    MANUAL = "manual"
    CREATED = "created"


class LinkFlag(StrEnum):
    TARGET_MISSING = "target_missing"
    TARGET_INACTIVE = "target_inactive"
    # a subscription's remembered or keyed contract belongs to another company than its account's
    OTHER_COMPANY = "other_company"


class LinkEvent(StrEnum):
    """What happened to a remembered link other than being made (the `method` of its event row)."""

    FLAGGED = "flagged"
    FLAG_CLEARED = "flag_cleared"
    # an old link made by the loose-name rule, taken back to a suggestion
    DEMOTED = "demoted"


UNLINKED = "unlinked"
# Suggestions that are evidence rather than name likeness rank with this score: the company owning the
# subscription's keyed or remembered contract.
CONTRACT_OWNER_SCORE = 90.0
# How the review and the audit trail call a source and a target of each kind.
_SOURCE_NOUN = {"company": "account", "contract": "subscription", "service": "product"}
_TARGET_PLURAL = {"company": "companies", "contract": "contracts", "service": "services"}


class SuggestionStatus(StrEnum):
    OPEN = "open"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    STALE = "stale"


@dataclass(frozen=True)
class Target:
    """An Autotask record a source can link to, as the snapshot holds it."""

    id: int
    name: str
    active: bool
    key: str | None = None
    # contracts only: the company that owns it
    company_id: int | None = None


@dataclass(frozen=True)
class Source:
    """A BSS record of the month that needs a link."""

    key: str
    name: str
    external_key: str | None = None
    # subscriptions only: the account (for contracts of the linked company) and the product name
    account_id: str | None = None
    alternative_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suggestion:
    """A candidate for a person to confirm or reject, with why it was offered."""

    target_id: int
    score: float
    target_name: str
    reason: str


@dataclass(frozen=True)
class Resolution:
    kind: LinkKind
    source_key: str
    target_id: int | None
    resolution: str
    link_method: str | None = None
    flag: LinkFlag | None = None
    suggestions: tuple[Suggestion, ...] = ()
    # why the link is flagged, in words a reviewer can act on
    detail: str | None = None
    # how a new automatic link was made, for its audit event
    note: str | None = None


@dataclass
class MappingSummary:
    run_id: str
    month: str
    sources: dict[str, int] = field(default_factory=dict)
    resolutions: dict[str, dict[str, int]] = field(default_factory=dict)
    new_links: int = 0
    flagged: int = 0
    open_suggestions: int = 0
    demoted_links: int = 0
    events: int = 0

    def count(self, kind: str, resolution: str) -> int:
        return self.resolutions.get(kind, {}).get(resolution, 0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Month:
    """What linking a month reads: its sources, the run's Autotask snapshot, and what people decided."""

    sources: Mapping[LinkKind, Sequence[Source]]
    source_names: Mapping[LinkKind, Mapping[str, str]]
    targets: Mapping[LinkKind, Mapping[int, Target]]
    stored: Mapping[tuple[str, str], dict]
    rejected: set[tuple[str, str, int]]
    # every BSS subscription id the warehouse knows: a contract numbered with one belongs to that subscription
    subscription_ids: frozenset[str]


# -- public entry points ---------------------------------------------------------------------------------


def link_month(
    warehouse: Warehouse,
    month: str,
    run_id: str,
    settings: SyncSettings | None = None,
    scope: PlanScope | None = None,
) -> MappingSummary:
    """Resolve every account, subscription and product of the month against the run's snapshot.

    Stores the per-run resolution in `month_links`, new links in `mapping_links`, candidates in
    `mapping_suggestions`, and an audit row per link made, demoted or (un)flagged in `mapping_link_events`.
    Re-running replaces the run's resolution; stored links are only added to (or demoted, see the module).
    With `scope` (a review decision's), only the scope's accounts, their subscriptions and the scope's products are
    resolved again and only their `month_links` rows replaced (its caller, a review decision, checked that the month
    holds the run's own lines, under the month's hold).
    """
    if scope is None:
        ensure_run_reads_own_lines(warehouse, month, run_id)
    settings = settings or SyncSettings()
    billing_month = BillingMonth.parse(month).key
    linking = _read_month(warehouse, billing_month, run_id, scope)
    demoted = _links_made_by_loose_names(linking)
    trusted = {key: link for key, link in linking.stored.items() if key not in demoted}
    # an account linked to a company before (a link since demoted, changed or removed) is no new customer
    known_accounts = {source for kind, source in demoted if kind == str(LinkKind.COMPANY)} | {
        row[0]
        for row in _rows(
            warehouse, "SELECT DISTINCT source_key FROM mapping_link_events WHERE kind = :kind", {"kind": "company"}
        )
    }
    company_results = _resolve(LinkKind.COMPANY, linking, trusted, settings, known_sources=known_accounts)
    company_of_account = {result.source_key: result.target_id for result in company_results}
    if scope is not None:  # the contracts of the companies the scope's accounts resolved to
        companies = {company for company in company_of_account.values() if company is not None}
        more = _contract_targets(warehouse, run_id, (set(), set(), companies))
        numbers = _numbers_of(more) - _numbers_of(linking.targets[LinkKind.CONTRACT])
        linking = replace(
            linking,
            targets={**linking.targets, LinkKind.CONTRACT: {**linking.targets[LinkKind.CONTRACT], **more}},
            subscription_ids=linking.subscription_ids | _subscription_ids(warehouse, numbers),
        )
    # names only mean something among the contracts of the customer's own company, and never pick a contract
    # numbered with another subscription's id
    named_contracts: dict[int, dict[int, Target]] = defaultdict(dict)
    for contract in linking.targets[LinkKind.CONTRACT].values():
        if contract.key not in linking.subscription_ids:
            named_contracts[contract.company_id or 0][contract.id] = contract
    contract_results = _resolve(
        LinkKind.CONTRACT,
        linking,
        trusted,
        settings,
        name_scopes=(lambda source: company_of_account.get(source.account_id), named_contracts),
    )
    contract_results = _flag_contracts_of_other_companies(contract_results, company_of_account, linking)
    company_results = _suggest_owners_of_linked_contracts(company_results, contract_results, linking)
    service_results = _resolve(
        LinkKind.SERVICE,
        linking,
        trusted,
        settings,
        target_key=lambda target: (target.key or "").strip().casefold() or None,
    )

    results = [*company_results, *contract_results, *service_results]
    summary = MappingSummary(
        run_id=run_id,
        month=billing_month,
        sources={str(kind): len(sources) for kind, sources in linking.sources.items()},
    )
    with warehouse.begin() as conn:
        _store(conn, warehouse, billing_month, run_id, results, linking, demoted, settings, summary, scope)
    for result in results:
        by_kind = summary.resolutions.setdefault(str(result.kind), {})
        by_kind[result.resolution] = by_kind.get(result.resolution, 0) + 1
    summary.flagged = sum(1 for result in results if result.flag)
    log.info("mapping %s for %s: %s", run_id, billing_month, summary.as_dict())
    return summary


def set_manual_link(
    warehouse: Warehouse, kind: str, source_key: str, target_id: int, by: str, note: str | None = None
) -> None:
    """A person's link: always wins, and auto-linking never replaces it."""
    _write_link(warehouse, LinkKind(kind), source_key, int(target_id), LinkMethod.MANUAL, by, note, force=True)


def confirm_suggestion(warehouse: Warehouse, kind: str, source_key: str, target_id: int, by: str) -> None:
    """Apply a suggestion a person confirmed; the source's other open suggestions become stale."""
    kind = LinkKind(kind)
    rows = warehouse.query(
        "SELECT score, reason FROM mapping_suggestions"
        " WHERE kind = :kind AND source_key = :source AND target_id = :target",
        {"kind": str(kind), "source": source_key, "target": int(target_id)},
    )
    if not rows:
        raise LookupError(f"no suggestion {kind}:{source_key} -> {target_id}")
    reason = f": {rows[0]['reason']}" if rows[0]["reason"] else ""
    note = f"suggestion score {float(rows[0]['score']):.1f}{reason}"
    _write_link(
        warehouse,
        kind,
        source_key,
        int(target_id),
        LinkMethod.CONFIRMED_SUGGESTION,
        by,
        note,
        force=True,
        decided=(SuggestionStatus.CONFIRMED, int(target_id)),
    )


def reject_suggestion(warehouse: Warehouse, kind: str, source_key: str, target_id: int, by: str) -> None:
    """A rejected candidate is not suggested again for that source."""
    with warehouse.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE mapping_suggestions SET status = :status, decided_by = :by, decided_at = :at"
                " WHERE kind = :kind AND source_key = :source AND target_id = :target"
            ),
            {
                "status": str(SuggestionStatus.REJECTED),
                "by": by,
                "at": utcnow(),
                "kind": str(LinkKind(kind)),
                "source": source_key,
                "target": int(target_id),
            },
        )


def record_created_link(warehouse: Warehouse, kind: str, source_key: str, target_id: int, by: str) -> bool:
    """Remember the record the loader created for a source. A manual link in the meantime is kept.

    Returns whether the link was written.
    """
    return _write_link(warehouse, LinkKind(kind), source_key, int(target_id), LinkMethod.CREATED, by, None, force=False)


def stored_links(warehouse: Warehouse, kind: str | None = None) -> list[dict]:
    """The remembered links (for the review UI and tests)."""
    if kind is None:
        return warehouse.query("SELECT * FROM mapping_links ORDER BY kind, source_key")
    return warehouse.query(
        "SELECT * FROM mapping_links WHERE kind = :kind ORDER BY source_key", {"kind": str(LinkKind(kind))}
    )


# -- resolution ------------------------------------------------------------------------------------------


def _read_month(warehouse: Warehouse, month: str, run_id: str, scope: PlanScope | None = None) -> _Month:
    params = {"month": month}
    snapshot = {"run_id": run_id}

    def month_rows(name: str, column: str, keys: frozenset[str] | None) -> Sequence[sa.Row]:
        if keys is None:
            return _rows(warehouse, sql(name), params)
        condition, keys_params = sql_in(column, keys, "key")
        return _rows(warehouse, f"SELECT * FROM ({sql(name)}) month_rows WHERE {condition}", {**params, **keys_params})

    sources = {
        LinkKind.COMPANY: [
            Source(row.account_id, row.account_name, row.account_id)
            for row in month_rows("month_accounts", "account_id", scope and scope.accounts)
        ],
        # a contract may also carry the subscription id as its name
        LinkKind.CONTRACT: [
            Source(row.subscription_id, row.product_name, row.subscription_id, row.account_id, (row.subscription_id,))
            for row in month_rows("month_subscriptions", "account_id", scope and scope.accounts)
        ],
        LinkKind.SERVICE: [
            Source(row.product_id, row.product_name, (row.product_sku or "").strip().casefold() or None)
            for row in month_rows("month_products", "product_id", scope and scope.products)
        ],
    }
    targets = {
        LinkKind.COMPANY: {
            row.company_id: Target(row.company_id, row.company_name, bool(row.is_active), row.external_key)
            for row in _rows(
                warehouse,
                "SELECT company_id, company_name, is_active, external_key FROM at_companies WHERE run_id = :run_id",
                snapshot,
            )
        },
        LinkKind.CONTRACT: {},  # below: all of them, or a scope's (`_contract_targets`)
        LinkKind.SERVICE: {
            row.service_id: Target(row.service_id, row.service_name, bool(row.is_active), row.sku)
            for row in _rows(
                warehouse,
                "SELECT service_id, service_name, is_active, sku FROM at_services WHERE run_id = :run_id",
                snapshot,
            )
        },
    }
    stored = _stored_links(warehouse, None if scope is None else sources)
    if scope is None:
        targets[LinkKind.CONTRACT] = _contract_targets(warehouse, run_id)
        subscription_ids = _subscription_ids(warehouse)
    else:
        # the contracts the scope's subscriptions are remembered with or numbered for; those of the companies its
        # accounts resolve to are added once they are known (`link_month`)
        remembered = {int(link["target_id"]) for (kind, _), link in stored.items() if kind == str(LinkKind.CONTRACT)}
        numbers = {source.key for source in sources[LinkKind.CONTRACT]}
        targets[LinkKind.CONTRACT] = _contract_targets(warehouse, run_id, (remembered, numbers, set()))
        subscription_ids = _subscription_ids(warehouse, _numbers_of(targets[LinkKind.CONTRACT]))
    return _Month(
        sources=sources,
        source_names={kind: {source.key: source.name for source in rows} for kind, rows in sources.items()},
        targets=targets,
        stored=stored,
        rejected=_rejected_suggestions(warehouse),
        subscription_ids=subscription_ids,
    )


def _subscription_ids(warehouse: Warehouse, among: set[str] | None = None) -> frozenset[str]:
    """Every BSS subscription id the warehouse knows (a contract numbered with one belongs to that subscription);
    `among`: only which of these contract numbers are such ids (all a scope needs to know)."""
    statement = (
        "SELECT DISTINCT subscription_id FROM charge_lines{where} UNION"
        " SELECT source_key FROM mapping_links WHERE kind = 'contract'{also}"
    )
    if among is None:
        return frozenset(row.subscription_id for row in _rows(warehouse, statement.format(where="", also=""), {}))
    found: set[str] = set()
    numbers = sorted(among)
    for start in range(0, len(numbers), 500):
        lines, params = sql_in("subscription_id", numbers[start : start + 500], "num")
        links, _ = sql_in("source_key", numbers[start : start + 500], "num")
        query = statement.format(where=f" WHERE {lines}", also=f" AND {links}")
        found |= {row.subscription_id for row in _rows(warehouse, query, params)}
    return frozenset(found)


def _numbers_of(contracts: Mapping[int, Target]) -> set[str]:
    return {contract.key for contract in contracts.values() if contract.key}


def _contract_targets(
    warehouse: Warehouse, run_id: str, only: tuple[set[int], set[str], set[int]] | None = None
) -> dict[int, Target]:
    """The run's snapshot contracts: all, or (`only`: ids, contract numbers, company ids) those a scope can link."""
    statement = (
        "SELECT contract_id, contract_name, contract_number, status, company_id FROM at_contracts"
        " WHERE run_id = :run_id"
    )
    params: dict[str, Any] = {"run_id": run_id}
    if only is not None:
        ids, numbers, companies = only
        by_id, id_params = sql_in("contract_id", ids, "cid")
        by_number, number_params = sql_in("contract_number", numbers, "num")
        by_company, company_params = sql_in("company_id", companies, "co")
        statement += f" AND ({by_id} OR {by_number} OR {by_company})"
        params = {**params, **id_params, **number_params, **company_params}
    return {
        row.contract_id: Target(
            row.contract_id, row.contract_name, row.status != 0, row.contract_number, row.company_id
        )
        for row in _rows(warehouse, statement, params)
    }


def _links_made_by_loose_names(linking: _Month) -> dict[tuple[str, str], str]:
    """Remembered automatic name links of the month's sources that today's exact-name rule would not make, with
    why: they were made by the old loose rule (accents folded, legal forms stripped) and are not trusted."""
    demoted = {}
    for kind, sources in linking.sources.items():
        for source in sources:
            link = linking.stored.get((str(kind), source.key))
            if link is None or link["method"] != LinkMethod.NAME:
                continue
            target = linking.targets[kind].get(int(link["target_id"]))
            source_name = link["source_name"] or source.name
            target_name = link["target_name"] or (target.name if target else None)
            source_names = {exact_name(source_name), exact_name(source.key)}
            label = f"{_SOURCE_NOUN[str(kind)]} {source.key}"
            if target_name is None or exact_name(target_name) not in source_names:
                named = f'{kind} {link["target_id"]} "{target_name}"' if target_name else f"{kind} {link['target_id']}"
                demoted[(str(kind), source.key)] = (
                    f'made by the old loose-name rule: {label} "{source_name}" is not exactly named like'
                    f" {named}; now a suggestion for a person"
                )
            elif _numbered_for_another_subscription(kind, target, source, linking.subscription_ids):
                demoted[(str(kind), source.key)] = (
                    f"made by name, but contract {target.id} is numbered with another subscription"
                    f" ({target.key}); {label} gets its own contract"
                )
    return demoted


def _numbered_for_another_subscription(
    kind: LinkKind, target: Target | None, source: Source, subscription_ids: frozenset[str]
) -> bool:
    return (
        kind is LinkKind.CONTRACT and target is not None and target.key in subscription_ids and target.key != source.key
    )


def _resolve(
    kind: LinkKind,
    linking: _Month,
    stored: Mapping[tuple[str, str], dict],
    settings: SyncSettings,
    target_key: Callable[[Target], str | None] | None = None,
    name_scopes: tuple[Callable[[Source], Any], Mapping[Any, Mapping[int, Target]]] | None = None,
    known_sources: Collection[str] = frozenset(),
) -> list[Resolution]:
    """Link each source by its remembered link, else its key, else a unique exact name; else suggest. A new
    customer (an account never linked before, not in `known_sources`) whose only look-alikes are other legal
    entities is proposed as a new company (`_other_entities`)."""
    targets = linking.targets[kind]
    target_key = target_key or (lambda target: target.key)
    by_key: dict[str, list[Target]] = defaultdict(list)
    for target in targets.values():
        value = target_key(target)
        if value:
            by_key[value].append(target)
    global_index: _NameIndex | None = None
    scoped_indexes: dict[Any, _NameIndex] = {}

    results = []
    for source in linking.sources[kind]:
        link = stored.get((str(kind), source.key))
        if link is not None:
            results.append(_remembered(kind, source, link, targets.get(int(link["target_id"]))))
            continue
        key = source.external_key
        keyed = by_key.get(key, []) if key else []
        if len(keyed) == 1:
            target = keyed[0]
            flag = None if target.active else LinkFlag.TARGET_INACTIVE
            results.append(
                Resolution(
                    kind,
                    source.key,
                    target.id,
                    str(LinkMethod.KEY),
                    str(LinkMethod.KEY),
                    flag,
                    detail=_flag_detail(kind, source, target.id, target.name, LinkMethod.KEY, flag),
                    note=f'key "{key}" on {kind} {target.id} "{target.name}"',
                )
            )
            continue
        if name_scopes is not None:
            scope_of, scoped_targets = name_scopes
            scope_key = scope_of(source)
            if scope_key not in scoped_indexes:
                scope = scoped_targets.get(scope_key, {}) if scope_key is not None else {}
                scoped_indexes[scope_key] = _NameIndex.of(scope.values())
            index = scoped_indexes[scope_key]
        else:
            # built only when some source gets this far (most link by a remembered link or a key)
            global_index = global_index or _NameIndex.of(targets.values())
            index = global_index
        exact = index.exact_matches(source)
        named = [target for target in exact if (str(kind), source.key, target.id) not in linking.rejected]
        if len(exact) == 1 and len(named) == 1:
            target = named[0]
            results.append(
                Resolution(
                    kind,
                    source.key,
                    target.id,
                    str(LinkMethod.NAME),
                    str(LinkMethod.NAME),
                    note=f'exact name "{target.name}" (only {kind} with it)',
                )
            )
            continue
        # shared keys or exact names, and everything looser: a person picks, we never guess
        suggestions = _suggest(kind, source, index, keyed, exact, linking.rejected, settings)
        detail = None
        if kind is LinkKind.COMPANY and suggestions and not keyed and not exact and source.key not in known_sources:
            suggestions, detail = _other_entities(source, suggestions)
        results.append(Resolution(kind, source.key, None, UNLINKED, suggestions=suggestions, detail=detail))
    return results


def _other_entities(source: Source, suggestions: tuple[Suggestion, ...]) -> tuple[tuple[Suggestion, ...], str | None]:
    """A new customer is not held because another company looks like it: when every candidate is evidently another
    legal entity (another legal form, another distinctive word: `include.names.other_entity`), the look-alikes are
    named in the link's detail and the account counts no suggestion that waits (`waiting_suggestions`), so the plan
    proposes creating its company, flagged with that detail; the look-alikes stay offered on the review page, to
    confirm if a person knows better. Any candidate a person must judge (accents, spacing, a typo) holds the account
    as before."""
    reasons = [other_entity(source.name, suggestion.target_name) for suggestion in suggestions]
    if not all(reasons):
        return suggestions, None
    named = "; ".join(
        f'"{suggestion.target_name}" (company {suggestion.target_id}: {reason})'
        for suggestion, reason in zip(suggestions, reasons, strict=True)
    )
    return suggestions, f"{LOOK_ALIKES_NOTE} {named}"


def proposes_new_company(result: Resolution) -> bool:
    """An unlinked account whose only look-alikes are other legal entities: its company is proposed new."""
    return result.target_id is None and bool(result.detail) and str(result.detail).startswith(LOOK_ALIKES_NOTE)


def waiting_suggestions(result: Resolution) -> int:
    """How many of the result's suggestions hold its lines for a person (none for a proposed new company)."""
    return 0 if proposes_new_company(result) else len(result.suggestions)


def _remembered(kind: LinkKind, source: Source, link: Mapping[str, Any], target: Target | None) -> Resolution:
    target_id = int(link["target_id"])
    flag = None if target is None or target.active else LinkFlag.TARGET_INACTIVE
    flag = LinkFlag.TARGET_MISSING if target is None else flag
    resolution = LinkMethod.MANUAL if link["method"] == LinkMethod.MANUAL else LinkMethod.REMEMBERED
    target_name = target.name if target is not None else link["target_name"]
    detail = _flag_detail(kind, source, target_id, target_name, link["method"], flag)
    return Resolution(kind, source.key, target_id, str(resolution), link["method"], flag, detail=detail)


def _flag_detail(
    kind: LinkKind, source: Source, target_id: int, target_name: str | None, method: str, flag: LinkFlag | None
) -> str | None:
    if flag is None:
        return None
    named = f'{kind} {target_id} "{target_name}"' if target_name else f"{kind} {target_id}"
    state = "no longer exists in Autotask" if flag is LinkFlag.TARGET_MISSING else "is inactive in Autotask"
    return (
        f'{named} {state}; {_SOURCE_NOUN[str(kind)]} {source.key} "{source.name}" is linked to it ({method}):'
        f" link it to another {kind} or reactivate this one"
    )


def _flag_contracts_of_other_companies(
    results: Sequence[Resolution], company_of_account: Mapping[str, int | None], linking: _Month
) -> list[Resolution]:
    """Flag `other_company` on a subscription whose remembered or keyed contract belongs to a company other
    than its account's linked company (a subscription that moved to another customer). The link is kept, so
    reconciliation can move the units; a name link never crosses companies (names are scoped)."""
    contracts = linking.targets[LinkKind.CONTRACT]
    companies = linking.targets[LinkKind.COMPANY]
    account_of = {source.key: source.account_id for source in linking.sources[LinkKind.CONTRACT]}
    flagged = []
    for result in results:
        contract = contracts.get(result.target_id) if result.target_id is not None else None
        account_id = account_of.get(result.source_key)
        account_company = company_of_account.get(account_id) if account_id else None
        if (
            contract is None
            or account_company is None
            or contract.company_id == account_company
            or result.flag is LinkFlag.TARGET_MISSING
        ):
            flagged.append(result)
            continue
        account_name = linking.source_names[LinkKind.COMPANY].get(account_id, "")
        detail = (
            f'contract {contract.id} "{contract.name}" belongs to {_company_label(companies, contract.company_id)};'
            f' account {account_id} "{account_name}" is linked to {_company_label(companies, account_company)}'
        )
        if result.flag is LinkFlag.TARGET_INACTIVE:
            detail += f"; contract {contract.id} is also inactive"
        flagged.append(replace(result, flag=LinkFlag.OTHER_COMPANY, detail=detail))
    return flagged


def _company_label(companies: Mapping[int, Target], company_id: int | None) -> str:
    company = companies.get(company_id) if company_id is not None else None
    if company is None:
        return f"a company no longer in Autotask (company {company_id})"
    return f"{company.name} (company {company.id})"


def _suggest_owners_of_linked_contracts(
    company_results: Sequence[Resolution], contract_results: Sequence[Resolution], linking: _Month
) -> list[Resolution]:
    """An account with no linked company whose subscription's contract is remembered or keyed: the company
    owning that contract is a candidate for the account (unless a person rejected it)."""
    contracts = linking.targets[LinkKind.CONTRACT]
    account_of = {source.key: source.account_id for source in linking.sources[LinkKind.CONTRACT]}
    owners: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for result in contract_results:
        contract = contracts.get(result.target_id) if result.target_id is not None else None
        if contract is None or contract.company_id is None:
            continue
        how = "keyed" if result.link_method == LinkMethod.KEY else "linked"
        owners[account_of[result.source_key]][contract.company_id].append(
            f"owns contract {contract.id} {how} to {result.source_key}"
        )
    companies = linking.targets[LinkKind.COMPANY]
    updated = []
    for result in company_results:
        evidence = owners.get(result.source_key)
        if result.target_id is not None or not evidence:
            updated.append(result)
            continue
        suggestions = {suggestion.target_id: suggestion for suggestion in result.suggestions}
        for company_id, reasons in evidence.items():
            if (str(LinkKind.COMPANY), result.source_key, company_id) in linking.rejected:
                continue
            company = companies.get(company_id)
            if company is None:  # the snapshot does not hold it: nothing a person could confirm
                continue
            reason = "; ".join(reasons[:2])
            if len(reasons) > 2:
                reason += f"; and {_counted(len(reasons) - 2, 'more contract', 'more contracts')} of this account"
            reason += "" if company.active else "; the company is inactive in Autotask"
            if company_id in suggestions:
                known = suggestions[company_id]
                suggestions[company_id] = replace(
                    known, score=max(known.score, CONTRACT_OWNER_SCORE), reason=f"{known.reason}; {reason}"
                )
            else:
                suggestions[company_id] = Suggestion(company_id, CONTRACT_OWNER_SCORE, company.name, reason)
        ranked = tuple(sorted(suggestions.values(), key=lambda item: (-item.score, item.target_id)))
        # a contract of the account held by a company is evidence: the account waits for a person again
        detail = None if proposes_new_company(result) else result.detail
        updated.append(replace(result, suggestions=ranked, detail=detail))
    return updated


@dataclass
class _NameIndex:
    """Active targets by exact name (for links) and their loose names side by side (for rapidfuzz).

    An inactive record is no candidate for a new link. `sorted_names` are the loose names with their tokens
    sorted (built on first use): `fuzz.ratio` on them is `fuzz.token_sort_ratio` on the names, without sorting
    every candidate's tokens again for every query.
    """

    by_exact_name: dict[str, list[Target]]
    targets: list[Target]
    names: list[str]
    _sorted_names: list[str] | None = None
    # loose names without spaces: "Data Bridge" finds "DataBridge", which the fuzzy search scores low
    by_squashed: dict[str, list[Target]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, targets: Iterable[Target]) -> _NameIndex:
        index = cls(defaultdict(list), [], [])
        for target in targets:
            if not target.active:
                continue
            exact = exact_name(target.name)
            if exact:
                index.by_exact_name[exact].append(target)
            loose = loose_name(target.name)
            if loose:
                index.targets.append(target)
                index.names.append(loose)
                index.by_squashed[loose.replace(" ", "")].append(target)
        return index

    @property
    def sorted_names(self) -> list[str]:
        if self._sorted_names is None:
            self._sorted_names = [_sorted_tokens(name) for name in self.names]
        return self._sorted_names

    def exact_matches(self, source: Source) -> list[Target]:
        names = {exact_name(source.name), *(exact_name(name) for name in source.alternative_names)}
        found = {target.id: target for name in names if name for target in self.by_exact_name.get(name, [])}
        return sorted(found.values(), key=lambda target: target.id)


def _suggest(
    kind: LinkKind,
    source: Source,
    index: _NameIndex,
    keyed: Sequence[Target],
    exact: Sequence[Target],
    rejected: set[tuple[str, str, int]],
    settings: SyncSettings,
) -> tuple[Suggestion, ...]:
    """Candidates for a person, best first. Every record sharing the source's key or exact name is listed (a
    person must see all of them to choose); looser candidates fill up to `suggestion_limit`, each scored by
    `compare_names` at or above `suggestion_min_score`."""
    plural = _TARGET_PLURAL[str(kind)]
    shared: dict[int, Suggestion] = {}
    for target in keyed:
        reason = f'{_counted(len(keyed), str(kind), plural)} carry the key "{source.external_key}"'
        shared[target.id] = Suggestion(target.id, 100.0, target.name, reason)
    one_name = len({exact_name(target.name) for target in exact}) == 1
    shared_how = "share this exact name" if one_name else f"carry its exact name or the {_SOURCE_NOUN[str(kind)]} id"
    for target in exact:
        reason = f"{_counted(len(exact), str(kind), plural)} {shared_how}"
        shared.setdefault(target.id, Suggestion(target.id, 100.0, target.name, reason))
    looser: dict[int, Suggestion] = {}
    query = loose_name(source.name)
    for target in index.by_squashed.get(query.replace(" ", ""), []) if query else []:
        if target.id not in shared:
            comparison = compare_names(source.name, target.name)
            if comparison.score >= settings.suggestion_min_score:
                looser[target.id] = Suggestion(target.id, comparison.score, target.name, comparison.reason)
    if query and index.names:
        matches = process.extract(
            _sorted_tokens(query),
            index.sorted_names,
            scorer=fuzz.ratio,
            # the final score ranks differently (accents, legal forms): look further than the limit
            limit=settings.suggestion_limit * 10 + len(shared),
            score_cutoff=settings.suggestion_min_score,
        )
        for _, _, position in matches:
            target = index.targets[position]
            if target.id in shared or target.id in looser:
                continue
            comparison = compare_names(source.name, target.name)
            if comparison.score >= settings.suggestion_min_score:
                looser[target.id] = Suggestion(target.id, comparison.score, target.name, comparison.reason)

    def ranked(found: Iterable[Suggestion]) -> list[Suggestion]:
        open_ones = [item for item in found if (str(kind), source.key, item.target_id) not in rejected]
        return sorted(open_ones, key=lambda item: (-item.score, item.target_id))

    listed = ranked(shared.values())
    return tuple(listed + ranked(looser.values())[: max(settings.suggestion_limit - len(listed), 0)])


def _counted(count: int, singular: str, plural: str) -> str:
    """ "1 company", "2 companies": counts in text a person reads."""
    return f"{count} {singular if count == 1 else plural}"


def _sorted_tokens(name: str) -> str:
    return " ".join(sorted(name.split()))


# -- storage ---------------------------------------------------------------------------------------------


def _rows(warehouse: Warehouse, statement: str, params: Mapping[str, Any]) -> Sequence[sa.Row]:
    """A read query's rows as SQLAlchemy rows (attribute access; no dict per row, unlike `Warehouse.query`)."""
    with warehouse.engine.connect() as conn:
        return conn.execute(sa.text(statement), dict(params)).all()


def _stored_links(
    warehouse: Warehouse, sources: Mapping[LinkKind, Sequence[Source]] | None = None
) -> dict[tuple[str, str], dict]:
    """The remembered links (of these sources only, when given)."""
    if sources is None:
        return {(row["kind"], row["source_key"]): row for row in warehouse.query("SELECT * FROM mapping_links")}
    found: dict[tuple[str, str], dict] = {}
    for kind, of_kind in sources.items():
        keys = [source.key for source in of_kind]
        for start in range(0, len(keys), 500):
            condition, params = sql_in("source_key", keys[start : start + 500], "key")
            for row in warehouse.query(
                f"SELECT * FROM mapping_links WHERE kind = :kind AND {condition}", {"kind": str(kind), **params}
            ):
                found[(row["kind"], row["source_key"])] = row
    return found


def _rejected_suggestions(warehouse: Warehouse) -> set[tuple[str, str, int]]:
    rows = warehouse.query(
        "SELECT kind, source_key, target_id FROM mapping_suggestions WHERE status = :status",
        {"status": str(SuggestionStatus.REJECTED)},
    )
    return {(row["kind"], row["source_key"], int(row["target_id"])) for row in rows}


def _store(
    conn: Connection,
    warehouse: Warehouse,
    month: str,
    run_id: str,
    results: Sequence[Resolution],
    linking: _Month,
    demoted: Mapping[tuple[str, str], str],
    settings: SyncSettings,
    summary: MappingSummary,
    scope: PlanScope | None = None,
) -> None:
    """Write the run's resolution (of the scope's sources only, with a scope), the remembered links it changes with
    their audit events, and suggestions."""
    now = utcnow()
    month_links = warehouse.table("month_links")
    if scope is None:
        conn.execute(month_links.delete().where(month_links.c.run_id == run_id))
    else:
        for kind, of_kind in linking.sources.items():
            keys = [source.key for source in of_kind]
            for start in range(0, len(keys), 500):
                conn.execute(
                    month_links.delete().where(
                        month_links.c.run_id == run_id,
                        month_links.c.kind == str(kind),
                        month_links.c.source_key.in_(keys[start : start + 500]),
                    )
                )
    warehouse.insert(
        conn,
        "month_links",
        [
            {
                "run_id": run_id,
                "month": month,
                "kind": str(result.kind),
                "source_key": result.source_key,
                "target_id": result.target_id,
                "resolution": result.resolution,
                "link_method": result.link_method,
                "flag": str(result.flag) if result.flag else None,
                "suggestions": waiting_suggestions(result),
                "detail": result.detail,
            }
            for result in results
        ],
    )
    summary.new_links, summary.events = _store_links(conn, warehouse, month, results, linking, demoted, settings, now)
    summary.demoted_links = len(demoted)
    # every link the month used is still in use
    conn.execute(
        sa.text(
            "UPDATE mapping_links SET last_month = :month WHERE EXISTS (SELECT 1 FROM month_links m"
            " WHERE m.run_id = :run_id AND m.kind = mapping_links.kind AND m.source_key = mapping_links.source_key"
            " AND m.target_id = mapping_links.target_id) AND (last_month IS NULL OR last_month < :month)"
        ),
        {"month": month, "run_id": run_id},
    )
    _store_suggestions(conn, warehouse, month, run_id, results, linking, now)
    suggestions = warehouse.table("mapping_suggestions")
    summary.open_suggestions = conn.execute(
        sa.select(sa.func.count()).select_from(suggestions).where(suggestions.c.status == "open")
    ).scalar_one()


def _store_links(
    conn: Connection,
    warehouse: Warehouse,
    month: str,
    results: Sequence[Resolution],
    linking: _Month,
    demoted: Mapping[tuple[str, str], str],
    settings: SyncSettings,
    now: Any,
) -> tuple[int, int]:
    """Demote, add and (un)flag remembered links, each with its `mapping_link_events` row.

    Returns how many links were added and how many events written.
    """
    by = settings.linked_by
    events = [
        _event(
            kind,
            source_key,
            int(linking.stored[(kind, source_key)]["target_id"]),
            None,
            LinkEvent.DEMOTED,
            by,
            now,
            why,
        )
        for (kind, source_key), why in demoted.items()
    ]
    if demoted:
        conn.execute(
            sa.text("DELETE FROM mapping_links WHERE kind = :kind AND source_key = :source"),
            [{"kind": kind, "source": source_key} for kind, source_key in demoted],
        )
    new_links = []
    flag_changes = []
    for result in results:
        kind, source_key = str(result.kind), result.source_key
        stored_link = None if (kind, source_key) in demoted else linking.stored.get((kind, source_key))
        flag = str(result.flag) if result.flag else None
        if result.target_id is not None and stored_link is None:
            target = linking.targets[result.kind].get(result.target_id)
            new_links.append(
                {
                    "kind": kind,
                    "source_key": source_key,
                    "target_id": result.target_id,
                    "method": result.link_method,
                    "linked_by": by,
                    "linked_at": now,
                    "source_name": linking.source_names[result.kind].get(source_key),
                    "target_name": target.name if target else None,
                    "first_month": month,
                    "last_month": month,
                    "flag": flag,
                    "flagged_at": now if flag else None,
                }
            )
            note = f"{result.note}; flagged {flag}: {result.detail}" if flag else result.note
            events.append(_event(kind, source_key, None, result.target_id, str(result.link_method), by, now, note))
        elif stored_link is not None and (stored_link["flag"] or None) != flag:
            flag_changes.append({"kind": kind, "source": source_key, "flag": flag, "at": now if flag else None})
            if flag:
                event, note = LinkEvent.FLAGGED, f"flagged {flag}: {result.detail}"
            else:
                event, note = LinkEvent.FLAG_CLEARED, f"flag {stored_link['flag']} cleared"
            events.append(_event(kind, source_key, result.target_id, result.target_id, event, by, now, note))
    warehouse.insert(conn, "mapping_links", new_links, ignore_conflicts=True)
    if flag_changes:
        conn.execute(
            sa.text(
                "UPDATE mapping_links SET flag = :flag, flagged_at = :at WHERE kind = :kind AND source_key = :source"
            ),
            flag_changes,
        )
    warehouse.insert(conn, "mapping_link_events", events, ignore_conflicts=True)
    return len(new_links), len(events)


def _store_suggestions(
    conn: Connection,
    warehouse: Warehouse,
    month: str,
    run_id: str,
    results: Sequence[Resolution],
    linking: _Month,
    now: Any,
) -> None:
    """Fresh candidates are (re)opened with their score and reason; a rejected or confirmed one never reopens."""
    rows = [
        {
            "kind": str(result.kind),
            "source_key": result.source_key,
            "target_id": suggestion.target_id,
            "score": suggestion.score,
            "source_name": linking.source_names[result.kind].get(result.source_key),
            "target_name": suggestion.target_name,
            "reason": suggestion.reason,
            "month": month,
            "run_id": run_id,
            "status": str(SuggestionStatus.OPEN),
            "created_at": now,
        }
        for result in results
        for suggestion in result.suggestions
    ]
    if rows:
        conn.execute(
            sa.text(
                "UPDATE mapping_suggestions SET score = :score, reason = :reason, month = :month, run_id = :run_id"
                " WHERE kind = :kind AND source_key = :source_key AND target_id = :target_id AND status = 'open'"
            ),
            rows,
        )
        warehouse.insert(conn, "mapping_suggestions", rows, ignore_conflicts=True)
    # The run's month_links rows are exactly `results`: set-based statements instead of one per source. Open
    # suggestions go stale when their source is now linked, or when this run no longer offers them (an old
    # run's candidate that today's rules drop, e.g. a contract numbered for another subscription).
    conn.execute(
        sa.text(
            "UPDATE mapping_suggestions SET status = 'stale' WHERE status = 'open' AND EXISTS (SELECT 1 FROM"
            " month_links m WHERE m.run_id = :run_id AND m.kind = mapping_suggestions.kind"
            " AND m.source_key = mapping_suggestions.source_key"
            " AND (m.target_id IS NOT NULL OR mapping_suggestions.run_id <> :run_id))"
        ),
        {"run_id": run_id},
    )


def _write_link(
    warehouse: Warehouse,
    kind: LinkKind,
    source_key: str,
    target_id: int,
    method: LinkMethod,
    by: str,
    note: str | None,
    force: bool,
    decided: tuple[SuggestionStatus, int] | None = None,
) -> bool:
    now = utcnow()
    links = warehouse.table("mapping_links")
    with warehouse.begin() as conn:
        existing = (
            conn.execute(sa.select(links).where(links.c.kind == str(kind), links.c.source_key == source_key))
            .mappings()
            .first()
        )
        if existing is not None and not force and existing["method"] == LinkMethod.MANUAL:
            return False
        if existing is None:
            warehouse.insert(
                conn,
                "mapping_links",
                [
                    {
                        "kind": str(kind),
                        "source_key": source_key,
                        "target_id": target_id,
                        "method": str(method),
                        "linked_by": by,
                        "linked_at": now,
                        "source_name": None,
                        "target_name": None,
                        "first_month": None,
                        "last_month": None,
                        "flag": None,
                        "flagged_at": None,
                    }
                ],
            )
        else:
            conn.execute(
                links.update()
                .where(links.c.kind == str(kind), links.c.source_key == source_key)
                .values(
                    target_id=target_id,
                    method=str(method),
                    linked_by=by,
                    linked_at=now,
                    flag=None,
                    flagged_at=None,
                    target_name=None if existing["target_id"] != target_id else existing["target_name"],
                )
            )
        warehouse.insert(
            conn,
            "mapping_link_events",
            [
                _event(
                    str(kind),
                    source_key,
                    existing["target_id"] if existing is not None else None,
                    target_id,
                    str(method),
                    by,
                    now,
                    note,
                )
            ],
        )
        suggestion_params = {"kind": str(kind), "source": source_key, "by": by, "at": now}
        if decided is not None:
            conn.execute(
                sa.text(
                    "UPDATE mapping_suggestions SET status = :status, decided_by = :by, decided_at = :at"
                    " WHERE kind = :kind AND source_key = :source AND target_id = :target"
                ),
                {**suggestion_params, "status": str(decided[0]), "target": decided[1]},
            )
        conn.execute(
            sa.text(
                "UPDATE mapping_suggestions SET status = 'stale' WHERE kind = :kind AND source_key = :source"
                " AND status = 'open'"
            ),
            {"kind": str(kind), "source": source_key},
        )
    return True


def _event(
    kind: str, source_key: str, old: int | None, new: int | None, method: str, by: str, at: Any, note: str | None
) -> dict:
    """One `mapping_link_events` row: who changed which link, when, from what to what, how and why."""
    digest = hashlib.sha256(f"{kind}|{source_key}|{old}|{new}|{method}|{by}|{at.isoformat()}".encode())
    return {
        "event_id": digest.hexdigest()[:40],
        "kind": kind,
        "source_key": source_key,
        "old_target_id": old,
        "new_target_id": new,
        "method": method,
        "changed_by": by,
        "changed_at": at,
        "note": note,
    }

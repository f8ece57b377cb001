"""Step 3: link BSS accounts, subscriptions and products to Autotask companies, contracts and services,
once, and remember the links across months.

Order on every source of the month: a remembered link (a manual one always wins and auto-linking never
replaces a stored link); an external key (Company UDF/field = BSS account id, `Contracts.contractNumber`
= subscription id, `Services.sku` = product sku); an exact match on normalised names. What is left gets
fuzzy candidates stored as suggestions with a score, applied only when a person confirms one.
A stored link whose Autotask record is gone or inactive is kept but flagged, so the plan holds its actions
for review instead of writing to the wrong record.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from rapidfuzz import fuzz, process
from sqlalchemy.engine import Connection

from include.models import BillingMonth
from include.names import normalise_name
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


UNLINKED = "unlinked"


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
class Resolution:
    kind: LinkKind
    source_key: str
    target_id: int | None
    resolution: str
    link_method: str | None = None
    flag: LinkFlag | None = None
    suggestions: tuple[tuple[int, float, str], ...] = ()


@dataclass
class MappingSummary:
    run_id: str
    month: str
    sources: dict[str, int] = field(default_factory=dict)
    resolutions: dict[str, dict[str, int]] = field(default_factory=dict)
    new_links: int = 0
    flagged: int = 0
    open_suggestions: int = 0

    def count(self, kind: str, resolution: str) -> int:
        return self.resolutions.get(kind, {}).get(resolution, 0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- public entry points ---------------------------------------------------------------------------------


def link_month(warehouse: Warehouse, month: str, run_id: str, settings: SyncSettings | None = None) -> MappingSummary:
    """Resolve every account, subscription and product of the month against the run's snapshot.

    Stores the per-run resolution in `month_links`, new links in `mapping_links`, fuzzy candidates in
    `mapping_suggestions`. Re-running replaces the run's resolution; stored links are only added to.
    """
    settings = settings or SyncSettings()
    billing_month = BillingMonth.parse(month).key
    params = {"month": billing_month}
    accounts = _rows(warehouse, sql("month_accounts"), params)
    subscriptions = _rows(warehouse, sql("month_subscriptions"), params)
    products = _rows(warehouse, sql("month_products"), params)
    snapshot = {"run_id": run_id}
    companies = {
        row.company_id: Target(row.company_id, row.company_name, bool(row.is_active), row.external_key)
        for row in _rows(
            warehouse,
            "SELECT company_id, company_name, is_active, external_key FROM at_companies WHERE run_id = :run_id",
            snapshot,
        )
    }
    contracts = {
        row.contract_id: Target(
            row.contract_id, row.contract_name, row.status != 0, row.contract_number, row.company_id
        )
        for row in _rows(
            warehouse,
            "SELECT contract_id, contract_name, contract_number, status, company_id FROM at_contracts"
            " WHERE run_id = :run_id",
            snapshot,
        )
    }
    services = {
        row.service_id: Target(row.service_id, row.service_name, bool(row.is_active), row.sku)
        for row in _rows(
            warehouse,
            "SELECT service_id, service_name, is_active, sku FROM at_services WHERE run_id = :run_id",
            snapshot,
        )
    }
    stored = _stored_links(warehouse)
    rejected = _rejected_suggestions(warehouse)

    company_sources = [Source(row.account_id, row.account_name, row.account_id) for row in accounts]
    company_results = _resolve(
        LinkKind.COMPANY,
        company_sources,
        companies,
        stored,
        rejected,
        settings,
        key_of=lambda source: source.external_key,
    )
    company_of_account = {result.source_key: result.target_id for result in company_results}

    contracts_by_company: dict[int, dict[int, Target]] = defaultdict(dict)
    for contract in contracts.values():
        contracts_by_company[contract.company_id or 0][contract.id] = contract
    contract_sources = [
        Source(row.subscription_id, row.product_name, row.subscription_id, row.account_id, (row.subscription_id,))
        for row in subscriptions
    ]
    contract_results = _resolve(
        LinkKind.CONTRACT,
        contract_sources,
        contracts,
        stored,
        rejected,
        settings,
        key_of=lambda source: source.external_key,
        # names only mean something among the contracts of the customer's own company
        name_scopes=(lambda source: company_of_account.get(source.account_id), contracts_by_company),
    )
    service_sources = [
        Source(row.product_id, row.product_name, (row.product_sku or "").strip().casefold() or None) for row in products
    ]
    service_results = _resolve(
        LinkKind.SERVICE,
        service_sources,
        services,
        stored,
        rejected,
        settings,
        key_of=lambda source: source.external_key,
        target_key=lambda target: (target.key or "").strip().casefold() or None,
    )

    results = [*company_results, *contract_results, *service_results]
    names = {
        LinkKind.COMPANY: ({s.key: s.name for s in company_sources}, companies),
        LinkKind.CONTRACT: ({s.key: s.name for s in contract_sources}, contracts),
        LinkKind.SERVICE: ({s.key: s.name for s in service_sources}, services),
    }
    summary = MappingSummary(
        run_id=run_id,
        month=billing_month,
        sources={"company": len(company_sources), "contract": len(contract_sources), "service": len(service_sources)},
    )
    with warehouse.begin() as conn:
        _store(conn, warehouse, billing_month, run_id, results, stored, names, settings, summary)
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
        "SELECT score FROM mapping_suggestions WHERE kind = :kind AND source_key = :source AND target_id = :target",
        {"kind": str(kind), "source": source_key, "target": int(target_id)},
    )
    if not rows:
        raise LookupError(f"no suggestion {kind}:{source_key} -> {target_id}")
    note = f"suggestion score {float(rows[0]['score']):.1f}"
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


def _resolve(
    kind: LinkKind,
    sources: Sequence[Source],
    targets: Mapping[int, Target],
    stored: Mapping[tuple[str, str], dict],
    rejected: set[tuple[str, str, int]],
    settings: SyncSettings,
    key_of: Any,
    target_key: Any = None,
    name_scopes: tuple[Any, Mapping[Any, Mapping[int, Target]]] | None = None,
) -> list[Resolution]:
    target_key = target_key or (lambda target: target.key)
    by_key: dict[str, list[Target]] = defaultdict(list)
    for target in targets.values():
        value = target_key(target)
        if value:
            by_key[value].append(target)
    global_index: tuple[dict[str, list[Target]], _Candidates] | None = None
    scoped_indexes: dict[Any, tuple[dict[str, list[Target]], _Candidates]] = {}

    results = []
    for source in sources:
        link = stored.get((str(kind), source.key))
        if link is not None:
            target = targets.get(int(link["target_id"]))
            flag = None if target is None or target.active else LinkFlag.TARGET_INACTIVE
            flag = LinkFlag.TARGET_MISSING if target is None else flag
            resolution = LinkMethod.MANUAL if link["method"] == LinkMethod.MANUAL else LinkMethod.REMEMBERED
            results.append(Resolution(kind, source.key, int(link["target_id"]), str(resolution), link["method"], flag))
            continue
        key = key_of(source)
        keyed = by_key.get(key, []) if key else []
        if len(keyed) == 1:
            target = keyed[0]
            flag = None if target.active else LinkFlag.TARGET_INACTIVE
            results.append(Resolution(kind, source.key, target.id, str(LinkMethod.KEY), str(LinkMethod.KEY), flag))
            continue
        if name_scopes is not None:
            scope_of, scoped_targets = name_scopes
            scope_key = scope_of(source)
            if scope_key not in scoped_indexes:
                scope = scoped_targets.get(scope_key, {}) if scope_key is not None else {}
                scoped_indexes[scope_key] = _index_by_name(scope.values())
            by_name, candidates = scoped_indexes[scope_key]
        else:
            # built only when some source gets this far (most link by a remembered link or a key)
            global_index = global_index or _index_by_name(targets.values())
            by_name, candidates = global_index
        names = {normalise_name(source.name), *(normalise_name(name) for name in source.alternative_names)}
        named = {target.id: target for name in names if name for target in by_name.get(name, [])}
        if len(named) == 1:
            target = next(iter(named.values()))
            results.append(Resolution(kind, source.key, target.id, str(LinkMethod.NAME), str(LinkMethod.NAME)))
            continue
        # ambiguous keys or names are candidates too: a person picks, we never guess
        suggestions = _suggest(kind, source, candidates, keyed, named.values(), rejected, settings)
        results.append(Resolution(kind, source.key, None, UNLINKED, suggestions=suggestions))
    return results


@dataclass
class _Candidates:
    """Active targets and their normalised names, side by side, for rapidfuzz. `sorted_names` are the names
    with their tokens sorted (built on first use): `fuzz.ratio` on them is `fuzz.token_sort_ratio` on the
    names, without sorting every candidate's tokens again for every query."""

    targets: list[Target]
    names: list[str]
    _sorted_names: list[str] | None = None

    @property
    def sorted_names(self) -> list[str]:
        if self._sorted_names is None:
            self._sorted_names = [_sorted_tokens(name) for name in self.names]
        return self._sorted_names


def _index_by_name(targets: Iterable[Target]) -> tuple[dict[str, list[Target]], _Candidates]:
    """Active targets by normalised name (an inactive record is no candidate for a new link)."""
    index: dict[str, list[Target]] = defaultdict(list)
    candidates = _Candidates([], [])
    for target in targets:
        if target.active:
            name = normalise_name(target.name)
            if name:
                index[name].append(target)
                candidates.targets.append(target)
                candidates.names.append(name)
    return index, candidates


def _suggest(
    kind: LinkKind,
    source: Source,
    candidates: _Candidates,
    keyed: Iterable[Target],
    named: Iterable[Target],
    rejected: set[tuple[str, str, int]],
    settings: SyncSettings,
) -> tuple[tuple[int, float, str], ...]:
    found: dict[int, tuple[int, float, str]] = {}
    for target in [*keyed, *named]:
        found[target.id] = (target.id, 100.0, target.name)
    query = normalise_name(source.name)
    if query and candidates.names:
        matches = process.extract(
            _sorted_tokens(query),
            candidates.sorted_names,
            scorer=fuzz.ratio,
            limit=settings.suggestion_limit + len(found),
            score_cutoff=settings.suggestion_min_score,
        )
        for _, score, index in matches:
            target = candidates.targets[index]
            found.setdefault(target.id, (target.id, round(float(score), 2), target.name))
    ranked = sorted(found.values(), key=lambda item: (-item[1], item[0]))
    ranked = [item for item in ranked if (str(kind), source.key, item[0]) not in rejected]
    return tuple(ranked[: settings.suggestion_limit])


def _sorted_tokens(name: str) -> str:
    return " ".join(sorted(name.split()))


# -- storage ---------------------------------------------------------------------------------------------


def _rows(warehouse: Warehouse, statement: str, params: Mapping[str, Any]) -> Sequence[sa.Row]:
    """A read query's rows as SQLAlchemy rows (attribute access; no dict per row, unlike `Warehouse.query`)."""
    with warehouse.engine.connect() as conn:
        return conn.execute(sa.text(statement), dict(params)).all()


def _stored_links(warehouse: Warehouse) -> dict[tuple[str, str], dict]:
    return {(row["kind"], row["source_key"]): row for row in warehouse.query("SELECT * FROM mapping_links")}


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
    stored: Mapping[tuple[str, str], dict],
    names: Mapping[LinkKind, tuple[Mapping[str, str], Mapping[int, Target]]],
    settings: SyncSettings,
    summary: MappingSummary,
) -> None:
    now = utcnow()
    month_links = warehouse.table("month_links")
    conn.execute(month_links.delete().where(month_links.c.run_id == run_id))
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
                "suggestions": len(result.suggestions),
            }
            for result in results
        ],
    )

    new_links = []
    flag_changes = []
    for result in results:
        source_names, targets = names[result.kind]
        stored_link = stored.get((str(result.kind), result.source_key))
        if result.target_id is not None and stored_link is None:
            target = targets.get(result.target_id)
            new_links.append(
                {
                    "kind": str(result.kind),
                    "source_key": result.source_key,
                    "target_id": result.target_id,
                    "method": result.link_method,
                    "linked_by": settings.linked_by,
                    "linked_at": now,
                    "source_name": source_names.get(result.source_key),
                    "target_name": target.name if target else None,
                    "first_month": month,
                    "last_month": month,
                    "flag": str(result.flag) if result.flag else None,
                    "flagged_at": now if result.flag else None,
                }
            )
        elif stored_link is not None and (stored_link["flag"] or None) != (str(result.flag) if result.flag else None):
            flag_changes.append(
                {
                    "kind": str(result.kind),
                    "source": result.source_key,
                    "flag": str(result.flag) if result.flag else None,
                    "at": now if result.flag else None,
                }
            )
    # an auto-link's who/when/how is on its row; mapping_link_events records the changes people make
    warehouse.insert(conn, "mapping_links", new_links, ignore_conflicts=True)
    if flag_changes:
        conn.execute(
            sa.text(
                "UPDATE mapping_links SET flag = :flag, flagged_at = :at WHERE kind = :kind AND source_key = :source"
            ),
            flag_changes,
        )
    # every link the month used is still in use
    conn.execute(
        sa.text(
            "UPDATE mapping_links SET last_month = :month WHERE EXISTS (SELECT 1 FROM month_links m"
            " WHERE m.run_id = :run_id AND m.kind = mapping_links.kind AND m.source_key = mapping_links.source_key"
            " AND m.target_id = mapping_links.target_id) AND (last_month IS NULL OR last_month < :month)"
        ),
        {"month": month, "run_id": run_id},
    )

    # suggestions: fresh candidates are (re)opened; those of sources now linked go stale
    suggestion_rows = []
    for result in results:
        source_names, _ = names[result.kind]
        for target_id, score, target_name in result.suggestions:
            suggestion_rows.append(
                {
                    "kind": str(result.kind),
                    "source_key": result.source_key,
                    "target_id": target_id,
                    "score": score,
                    "source_name": source_names.get(result.source_key),
                    "target_name": target_name,
                    "month": month,
                    "run_id": run_id,
                    "status": str(SuggestionStatus.OPEN),
                    "created_at": now,
                }
            )
    suggestions = warehouse.table("mapping_suggestions")
    if suggestion_rows:
        # refresh the score of open ones; never reopen a rejected or confirmed suggestion
        conn.execute(
            sa.text(
                "UPDATE mapping_suggestions SET score = :score, month = :month, run_id = :run_id"
                " WHERE kind = :kind AND source_key = :source_key AND target_id = :target_id AND status = 'open'"
            ),
            suggestion_rows,
        )
        warehouse.insert(conn, "mapping_suggestions", suggestion_rows, ignore_conflicts=True)
    # the run's month_links rows are exactly `results`: one set-based statement instead of one per linked source
    conn.execute(
        sa.text(
            "UPDATE mapping_suggestions SET status = 'stale' WHERE status = 'open' AND EXISTS (SELECT 1 FROM"
            " month_links m WHERE m.run_id = :run_id AND m.kind = mapping_suggestions.kind"
            " AND m.source_key = mapping_suggestions.source_key AND m.target_id IS NOT NULL)"
        ),
        {"run_id": run_id},
    )
    summary.new_links = len(new_links)
    summary.open_suggestions = conn.execute(
        sa.select(sa.func.count()).select_from(suggestions).where(suggestions.c.status == "open")
    ).scalar_one()


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
    kind: str, source_key: str, old: int | None, new: int, method: str, by: str, at: Any, note: str | None
) -> dict:
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

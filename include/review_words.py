"""The words and numbers of the review page, the approval form and the run report: plain, one phrase per thing.

Numbers of units and scores are written as a person writes them ("2 units", "668", "96 %"), never as the
warehouse stores them ("2.0000", "668.0", "96.0000"); days as "2 Oct 2027"; a decision of the audit trail as a
sentence about the line or the link it changed, never as JSON or a hash. Money is not written here (the money
columns have their own rules).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

DECISION_LABELS = {
    "exclude": "Excluded the line",
    "include": "Included the line again",
    "approve_line": "Approved the flagged line",
    "unapprove_line": "Took back the line approval",
    "confirm_suggestion": "Confirmed the suggestion",
    "reject_suggestion": "Rejected the suggestion",
    "link": "Linked by hand",
    "create": "Create in Autotask",
}
_STATUS_WORDS = {"needs-mapping": "needs mapping"}


def plain_number(value: Any) -> str:
    """2.0000 → "2", 668.0 → "668", 1.50 → "1.5", -3 → "-3"; an empty value → ""."""
    if value is None or value == "":
        return ""
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return str(value)
    if not number.is_finite():
        return str(value)
    if number == 0:
        return "0"
    if number == number.to_integral_value():
        return f"{number.quantize(Decimal(1)):f}"
    return f"{number.normalize():f}"


def units_text(count: Any) -> str:
    """ "1 unit", "2 units", "1.5 units"."""
    text = plain_number(abs(Decimal(str(count))))
    return f"{text} unit" if text == "1" else f"{text} units"


def score_text(score: Any) -> str:
    """A suggestion's score (0–100) as a person reads it: "96 %"."""
    try:
        return f"{plain_number(Decimal(str(score)).quantize(Decimal(1)))} %"
    except (InvalidOperation, ValueError):
        return str(score)


def day_text(day: date | None) -> str:
    """ "2 Oct 2027"."""
    return f"{day.day} {day:%b %Y}" if day is not None else "?"


def utc_iso(moment: Any) -> str | None:
    """A stored moment (naive UTC in the warehouse) as ISO 8601 with its zone, for the browser to show locally."""
    if moment is None:
        return None
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return moment
    if isinstance(moment, datetime):
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="seconds")
    return str(moment)


def describe_decisions(
    decisions: Sequence[dict[str, Any]],
    lines: Mapping[str, Mapping[str, Any]],
    names: Mapping[tuple[str, str], str],
    targets: Mapping[tuple[str, int], str | None],
) -> list[dict[str, Any]]:
    """Each audit row with `label` (what was decided), `what` (the line or the link, named) and `outcome` (what it
    changed), in words; `decided_at_utc` in ISO 8601 with its zone. `lines`: the grid lines by action id; `names`:
    BSS names by (kind, source key); `targets`: Autotask names by (kind, target id)."""
    described = []
    for decision in decisions:
        before, after = decision.get("before") or {}, decision.get("after") or {}
        if decision.get("action_id"):
            line = lines.get(str(decision["action_id"]))
            what = _line_words(line) if line else "a line planned again since"
            outcome = _status_change(before, after)
        else:
            kind, key = str(decision.get("kind") or ""), str(decision.get("source_key") or "")
            noun = {"company": "account", "contract": "subscription", "service": "product"}.get(kind, kind)
            name = names.get((kind, key))
            what = f"BSS {noun} {name} ({key})" if name and name != key else f"BSS {noun} {key}"
            outcome = _link_change(kind, decision, after, targets)
        described.append(
            {
                **decision,
                "label": DECISION_LABELS.get(str(decision.get("decision")), str(decision.get("decision"))),
                "what": what,
                "outcome": outcome,
                "decided_at_utc": utc_iso(decision.get("decided_at")),
            }
        )
    return described


def _line_words(line: Mapping[str, Any]) -> str:
    parts = [line.get("customer"), line.get("product") or line.get("subscription"), line.get("change")]
    return " · ".join(str(part) for part in parts if part)


def _status_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    was, now = before.get("status"), after.get("status")
    words = []
    if was and now and was != now:
        words.append(f"{_STATUS_WORDS.get(was, was)} → {_STATUS_WORDS.get(now, now)}")
    if after.get("line_approved_by") and not before.get("line_approved_by"):
        words.append(f"approved by {after['line_approved_by']}")
    if before.get("line_approved_by") and not after.get("line_approved_by"):
        words.append(f"approval of {before['line_approved_by']} taken back")
    if after.get("excluded_with"):
        words.append("with the line it depends on")
    return "; ".join(words) or "no change"


def _link_change(
    kind: str, decision: Mapping[str, Any], after: Mapping[str, Any], targets: Mapping[tuple[str, int], str | None]
) -> str:
    noun = {"company": "company", "contract": "contract", "service": "service"}.get(kind, kind)
    target_id = decision.get("target_id") if decision.get("target_id") is not None else after.get("target_id")
    if decision.get("decision") == "reject_suggestion":
        name = targets.get((kind, int(target_id))) if target_id is not None else None
        return f"not {noun} {name or target_id}" + (f" ({target_id})" if name else "")
    if target_id is not None:
        name = targets.get((kind, int(target_id)))
        linked = f"linked to {noun} {name} ({target_id})" if name else f"linked to {noun} {target_id}"
    else:
        linked = f"a new {noun} is created in Autotask"
    plan = after.get("plan") or {}
    if plan.get("actions"):
        by_status = ", ".join(
            f"{count} {_STATUS_WORDS.get(status, status)}" for status, count in (plan.get("by_status") or {}).items()
        )
        lines = plan["actions"]
        linked += f"; {lines} line{'s' if lines != 1 else ''} planned again" + (f" ({by_status})" if by_status else "")
    return linked

"""Per-phase ledger: line items (role, category, bytes, note) that add up to a phase's total.

A phase is resident memory plus the largest of its sequential activities (a scoring phase runs the
reference, reward and critic forwards one after another: only the largest one's transients count).

Items are plain tuples on the hot path; the report is plain dicts, validated into pydantic models once,
in one pass of pydantic-core (faster than building each line item as a model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


CATEGORIES = ("parameter", "buffer", "gradient", "optstate", "activation", "temp", "kv_cache", "logits", "other")


class Item(NamedTuple):
    role: str
    category: str
    bytes: int
    note: str = ""


def line_item(item: Item, prefix: str = "") -> dict:
    """A ``LineItem`` as a dict."""
    note = f"{prefix}: {item.note}" if prefix and item.note else prefix or item.note
    return {"role": item.role, "category": item.category, "bytes": item.bytes, "note": note}


@dataclass(slots=True)
class Activity:
    """One step of a phase (a generation, a forward, a training step) and the transient bytes it adds."""

    name: str
    items: list[Item] = field(default_factory=list)

    def add(self, role: str, category: str, n_bytes: int, note: str = "") -> None:
        if n_bytes > 0:
            self.items.append(Item(role, category, int(n_bytes), note))

    @property
    def total(self) -> int:
        return sum(item.bytes for item in self.items)


def phase_report(phase: str, resident: list[Item], activities: list[Activity], extra: list[Item],
                 group: str | None = None) -> dict:
    """A ``PhaseReport`` as a dict: resident items, plus the phase's own buffers and its largest activity."""
    largest = max(activities, key=lambda act: act.total, default=Activity("idle"))
    sums = dict.fromkeys(CATEGORIES, 0)
    resident_bytes = 0
    for item in resident:
        sums[item.category] += item.bytes
        resident_bytes += item.bytes
    items = [line_item(item) for item in extra] + [line_item(item, largest.name) for item in largest.items]
    for item in items:
        sums[item["category"]] += item["bytes"]
    return {"phase": phase, "total_bytes": sum(sums.values()), "breakdown": sums, "resident_bytes": resident_bytes,
            "activity": largest.name, "items": items, "group": group}

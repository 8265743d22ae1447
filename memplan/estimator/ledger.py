"""Per-phase ledger: line items (role, category, bytes, note) that add up to a phase's total.

A phase is resident memory plus the largest of its sequential activities (a scoring phase runs the
reference, reward and critic forwards one after another: only the largest one's transients count).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memplan.report import Breakdown, LineItem, PhaseReport

CATEGORIES = ("parameter", "buffer", "gradient", "optstate", "activation", "temp", "kv_cache", "logits", "other")


@dataclass(slots=True)
class Activity:
    """One step of a phase (a generation, a forward, a training step) and the transient bytes it adds."""

    name: str
    items: list[LineItem] = field(default_factory=list)

    def add(self, role: str, category: str, n_bytes: int, note: str = "") -> None:
        if n_bytes > 0:
            self.items.append(LineItem(role=role, category=category, bytes=int(n_bytes), note=note))

    @property
    def total(self) -> int:
        return sum(item.bytes for item in self.items)


def phase_report(phase: str, resident: list[LineItem], activities: list[Activity]) -> PhaseReport:
    """Resident items plus the largest activity's items; the breakdown is computed from the items."""
    largest = max(activities, key=lambda act: act.total, default=Activity("idle"))
    items = resident + [
        LineItem(role=item.role, category=item.category, bytes=item.bytes,
                 note=f"{largest.name}: {item.note}" if item.note else largest.name)
        for item in largest.items
    ]
    sums = dict.fromkeys(CATEGORIES, 0)
    for item in items:
        sums[item.category] += item.bytes
    return PhaseReport(phase=phase, total_bytes=sum(sums.values()), breakdown=Breakdown(**sums), items=items)

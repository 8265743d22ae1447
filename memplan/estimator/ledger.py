"""Per-phase ledger: line items (role, category, bytes, note) that add up to a phase's total.

A phase is resident memory plus the largest of its sequential activities (a scoring phase runs the
reference, reward and critic forwards one after another: only the largest one's transients count).

Items are plain tuples on the hot path. A phase's result is its ``PhaseReport``, built once without
re-validation (``memplan.report.trusted``) and immutable: the estimator caches the whole report per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from typing import NamedTuple

from memplan.report import Breakdown, LineItem, PhaseReport, trusted

CATEGORIES = ("parameter", "buffer", "gradient", "optstate", "activation", "temp", "kv_cache", "logits", "other")


class Item(NamedTuple):
    role: str
    category: str
    bytes: int
    note: str = ""


_bytes = itemgetter(2)  # Item.bytes


@lru_cache(maxsize=8192)
def line_item(item: Item, prefix: str = "") -> LineItem:
    """The ``LineItem`` of an item; ``prefix`` (the activity's name) leads its note. Cached: the same items
    of the same activities recur across the requests of a sweep or a plan (every ``Item`` holds an int)."""
    role, category, n_bytes, note = item
    note = f"{prefix}: {note}" if prefix and note else prefix or note
    return _line_item(role, category, n_bytes, note)


@lru_cache(maxsize=4096, typed=True)
def _line_item(role: str, category: str, n_bytes: int, note: str) -> LineItem:
    """LineItems are immutable: equal ones are shared between reports (runtime costs, weights and optimizer
    states recur across the requests of a sweep or a plan)."""
    return trusted(LineItem, {"role": role, "category": category, "bytes": n_bytes, "note": note})


@dataclass(slots=True)
class Activity:
    """One step of a phase (a generation, a forward, a training step) and the transient bytes it adds.

    ``items``: ``Item``s or plain ``(role, category, bytes, note)`` tuples of int bytes, never negative;
    zero-byte ones are kept (recipes list their terms whatever their size) and left out of the report.
    ``shared``: items other parts of the run keep alive during it (the hybrid engine's workspace, gradients
    kept between steps, another model's unsharded layers), listed after its own items. Often one tuple shared
    by every activity of a recipe: added once per phase instead of once per activity."""

    name: str
    items: list[Item] = field(default_factory=list)
    shared: tuple[Item, ...] = ()

    def add(self, role: str, category: str, n_bytes: int, note: str = "") -> None:
        """Append a term computed as a difference or a product of floats: dropped unless positive, made int."""
        if n_bytes > 0:
            self.items.append((role, category, int(n_bytes), note))

    @property
    def role(self) -> str | None:
        """Whose step this is: the role of its first item holding bytes (own, else shared); None when none."""
        for item in self.items:
            if item[2]:
                return item[0]
        for item in self.shared:
            if item[2]:
                return item[0]
        return None

    @property
    def total(self) -> int:
        return sum(map(_bytes, self.items)) + sum(map(_bytes, self.shared))


class Resident(NamedTuple):
    """Items present in every phase on a group of GPUs, their line items and their sums by category."""

    items: tuple[Item, ...]
    line_items: tuple[LineItem, ...]
    sums: dict[str, int]
    """Bytes by category (read-only by convention: shared by every phase of the group)."""
    total: int
    fixed: int
    """The runtime's bytes among them (role 'runtime': CUDA contexts, cuBLAS workspaces, NCCL buffers)."""


def resident(items: list[Item], line_items: list[LineItem]) -> Resident:
    """Sum resident ``items`` (with their already built ``line_items``) once for all phases."""
    sums = dict.fromkeys(CATEGORIES, 0)
    fixed = 0
    for item in items:
        sums[item.category] += item.bytes
        if item.role == "runtime":
            fixed += item.bytes
    return Resident(tuple(items), tuple(line_items), sums, sum(sums.values()), fixed)


def keep_alive(recipe: dict[str, list[Activity]], items: tuple[Item, ...], gpus: tuple[str, ...] | None) -> None:
    """Give ``items`` (kept across steps by a role) to every activity of ``recipe`` as shared items; under split
    placement (``gpus``: the roles on that role's GPUs) only to the activities there (those roles', and those
    holding nothing of their own)."""
    for activities in recipe.values():
        for act in activities:
            if gpus is not None and act.role is not None and act.role not in gpus:
                continue
            act.shared += items


_IDLE = Activity("idle")


def largest_activity(activities: list[Activity]) -> tuple[Activity, int]:
    """The activity with the most transient bytes (the first of equals) and its bytes; an idle one, 0, if none."""
    largest, largest_total = _IDLE, 0
    for act in activities:
        t = sum(map(_bytes, act.items))  # act.total, inline: this loop runs for every phase and GPU group
        if act.shared:
            t += sum(map(_bytes, act.shared))
        if t > largest_total or largest is _IDLE:
            largest, largest_total = act, t
    return largest, largest_total


def phase_report(phase: str, res: Resident, activities: list[Activity], extra: list[Item],
                 group: str | None = None, largest: Activity | None = None, tokens: str = "") -> PhaseReport:
    """Resident items, plus the phase's own buffers and its largest activity (``largest_activity``, unless
    given); ``tokens`` says which tokens per GPU the phase assumed (``tokens.phase_tokens``)."""
    if largest is None:
        largest = largest_activity(activities)[0]
    sums = dict(res.sums)
    items = []
    for item in extra:
        sums[item[1]] += item[2]
        items.append(line_item(item))
    name = largest.name
    for own in (largest.items, largest.shared):
        for item in own:
            if item[2]:
                sums[item[1]] += item[2]
                items.append(line_item(item, name))
    return trusted(PhaseReport, {"phase": phase, "total_bytes": sum(sums.values()),
                                 "breakdown": trusted(Breakdown, sums), "resident_bytes": res.total,
                                 "activity": name, "items": tuple(items), "group": group, "tokens": tokens})

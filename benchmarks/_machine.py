"""The "Machine:" line every benchmark writes beside its figures (imported by the scripts of this folder)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown CPU"


def machine(load_average: bool = False) -> str:
    """CPU count and model, Python, OS; the 1-minute load average too (timing benchmarks: a busy machine
    reads slower)."""
    text = f"{os.cpu_count()} CPUs ({cpu_name()}), Python {platform.python_version()}, {platform.system()}"
    if load_average and hasattr(os, "getloadavg"):
        text += f", load average {os.getloadavg()[0]:.1f} at start"
    return text

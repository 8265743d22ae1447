"""Suite-wide settings for running the tests in parallel.

pyproject.toml's ``addopts`` runs the suite on two pytest-xdist workers (``-n 2``, CI's machine has two cores), a
test file at a time per worker (``--dist loadfile``): the traced tests of a file share their traces through
module-level caches (``functools.cache`` in tests/test_accuracy.py, tests/test_sharded.py,
tests/test_trace_packing.py), which two workers would each trace again. ``-n 0`` runs in one process.

Each worker keeps to one torch thread: the traces are single-threaded Python (fake tensors), and the few real CPU
tensor runs would otherwise start as many threads as the machine has cores in each worker, two workers fighting
over two cores (torch's intra-op pool reads ``OMP_NUM_THREADS`` when it is first used:
https://pytorch.org/docs/stable/notes/cpu_threading_torchscript_inference.html).
"""

from __future__ import annotations

import os
import sys


def pytest_configure(config) -> None:  # noqa: ANN001 (pytest's hook signature)
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch = sys.modules.get("torch")  # imported already (a plugin): set it directly; otherwise the variable does
    if torch is not None:
        torch.set_num_threads(1)

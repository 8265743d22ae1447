"""Whether memplan may read this machine's files: launch files given by path, a model given as a path to its
config.json. The library and the CLI may (the user's own files); the service may not (``no_disk``), whatever a
request holds: over HTTP a model is a catalog name or an inline architecture, and a launch file is its text.

A context variable, so it holds for one request's thread and for nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ALLOWED: ContextVar[bool] = ContextVar("memplan_disk", default=True)


def allowed() -> bool:
    """True unless inside ``no_disk()``."""
    return _ALLOWED.get()


@contextmanager
def no_disk() -> Iterator[None]:
    """Within this block no reader or catalog look-up touches a file: paths are only names."""
    token = _ALLOWED.set(False)
    try:
        yield
    finally:
        _ALLOWED.reset(token)

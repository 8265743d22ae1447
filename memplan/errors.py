"""Errors memplan raises on purpose.

Hierarchy::

    MemplanError                    every error memplan raises on purpose
    ├── InputError                  bad user input: names the field, the value and what is allowed
    │   ├── UnknownModelError       a model name not in the catalog (and not a config path)
    │   └── UnknownGPUError         a GPU name not in the catalog
    └── EnvironmentProblem          the machine lacks something: an optional extra, a GPU, NVML

The CLI maps ``InputError`` and ``EnvironmentProblem`` to exit code 2; the API maps ``InputError`` to 422.
"""

from __future__ import annotations


class MemplanError(Exception):
    """Base of every error memplan raises on purpose."""


class InputError(MemplanError, ValueError):
    """Bad input. ``field`` names the request field (or CLI option) to change."""

    def __init__(self, field: str, message: str, value: object = None) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}: {message}")


class UnknownModelError(InputError):
    """A model name that is neither in the catalog nor a readable config.json."""


class UnknownGPUError(InputError):
    """A GPU name that is not in the catalog."""


class EnvironmentProblem(MemplanError):
    """The machine lacks something memplan needs for this command (an extra, a GPU, NVML)."""

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


MAX_MESSAGE = 1_000  # characters of an error message: its head and its tail (the allowed range) survive
MAX_SHOWN = 80  # characters of a user's value quoted in a message


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters with the length said: errors never echo
    unbounded input (a 60 KB model name) and never carry a lone surrogate (``repr`` escapes it)."""
    text = repr(value) if len(str(value)) <= 4 * limit else repr(str(value)[: 4 * limit])
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(str(value)):,} characters)"


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` at most ``limit`` characters: the middle elided, since the tail says what is allowed."""
    if len(message) <= limit:
        return message
    tail = limit // 3
    return f"{message[: limit - tail - 3]} … {message[-tail:]}"


class InputError(MemplanError, ValueError):
    """Bad input. ``field`` names the request field (or CLI option) to change; ``value`` is what was given.

    The message is bounded (``MAX_MESSAGE``), whatever the caller quoted into it."""

    def __init__(self, field: str, message: str, value: object = None) -> None:
        self.field = field
        self.value = value
        super().__init__(bounded(f"{field}: {message}"))


class UnknownModelError(InputError):
    """A model name that is neither in the catalog nor a readable config.json."""


class UnknownGPUError(InputError):
    """A GPU name that is not in the catalog."""


class EnvironmentProblem(MemplanError):
    """The machine lacks something memplan needs for this command (an extra, a GPU, NVML)."""

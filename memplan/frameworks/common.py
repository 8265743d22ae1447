"""What the framework readers share: catalog names for their model paths, checked integers, script files, and
``Settings``, a launch file's settings over its framework's defaults.

Each reader (``verl``, ``trl``) names its own error field (``InputError(field, ...)``) and keeps its notes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memplan import disk
from memplan.errors import InputError, shown

MAX_SCRIPT_BYTES = 1 << 20
_TUNE = re.compile(r"-(?:Instruct|instruct|Chat|chat|it)(?:-hf)?(?:-\d+)?$")
_UNSET = object()


def catalog_model(path: Any, key: str, field: str, notes: list[str]) -> str:
    """A catalog name or local path for a framework's model path: a local folder as is (outside ``disk.no_disk``:
    the service never looks at its own disk, nor says whether a path exists); a hub id ('org/name') or a path's
    folder name from the catalog, an unknown chat/instruct tune as its base (noted)."""
    if not isinstance(path, str) or not path or "$" in path:
        raise InputError(field, f"{key} is not set (or uses an unset variable): pass --model", path)
    from memplan.catalog import catalog_name

    local = Path(path).expanduser()
    try:
        if disk.allowed() and local.exists():
            return str(local)
    except OSError:  # not a path any file system takes
        pass
    hub_id = path.count("/") == 1 and not path.startswith((".", "~", "/"))
    name = path if hub_id else local.name
    for candidate in dict.fromkeys((name, _TUNE.sub("", name))):
        found = catalog_name(candidate)  # the catalog only: a folder's name is no file to read
        if found is None:
            continue
        if candidate == name and _TUNE.search(name) and not _TUNE.search(found):  # listed as its base's alias
            notes.append(f"{key}={path}: estimated with the catalog's {found}, whose architecture this"
                         " chat/instruct tune shares in every memory-relevant field (config.json copies compared:"
                         " the entry's alias_notes)")
            return found  # the name `--model` takes too
        if candidate != path:
            notes.append(f"{key}={path}: estimated with the catalog's {found}"
                         + (" (the architecture of its chat/instruct tune)" if candidate != name else "")
                         + "; pass --model with its config.json to be exact")
        return candidate
    return path  # the estimate names it as an unknown model


def typed(text: str) -> Any:
    """A command-line or override value typed as the frameworks' parsers take it: bools, None (null, none, ~),
    ints, floats, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def integer(value: Any, key: str, field: str, low: int = 1) -> int:
    """An integer setting of at least ``low``; anything else is an ``InputError`` naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(field, f"{key} must be an integer ≥ {low}, got {value!r}", value)
    return value


def is_file(text: str) -> bool:
    if not disk.allowed():
        return False
    try:
        return Path(text).expanduser().is_file()
    except OSError:  # not a path any file system takes (too long, ...): the text itself
        return False


def read_text(source: str | Path, field: str) -> str:
    """A launch file's text (at most ``MAX_SCRIPT_BYTES``), as an ``InputError`` naming ``field`` when unreadable."""
    if not disk.allowed():
        raise InputError(field, "give the launch file's text: files are not read here", shown(str(source)))
    path = Path(str(source)).expanduser()
    try:
        if path.stat().st_size > MAX_SCRIPT_BYTES:
            raise InputError(field, f"{str(path)!r} is over {MAX_SCRIPT_BYTES // 1024} KiB: not a launch file",
                             str(path))
        return path.read_text()
    except OSError as exc:
        raise InputError(field, f"cannot read {str(path)!r}: {exc.strerror}", str(path)) from None
    except UnicodeDecodeError:
        raise InputError(field, f"{str(path)!r} is not text", str(path)) from None


def boolean(value: Any, key: str, field: str) -> bool:
    """A true/false setting (a YAML or command-line bool, or its text); anything else names the key."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InputError(field, f"{key} must be true or false, got {value!r}", value)


def number(value: Any, key: str, field: str, low: float, high: float) -> float:
    """A number in [low, high]; anything else (nan included) names the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InputError(field, f"{key} must be a number in [{low}, {high}], got {value!r}", value)
    return float(value)


def command_arguments(text: str, field: str) -> dict[str, Any]:
    """``--key value``, ``--key=value`` and bare ``--flag`` (true) of a launch command, later ones winning;
    '-' in keys read as '_' (dots kept: OpenRLHF's ``--actor.model_name_or_path``)."""
    try:
        words = shlex.split(text.replace("\\\r\n", " ").replace("\\\n", " "), comments=True)
    except ValueError as exc:
        raise InputError(field, f"cannot split the command: {exc}", text.strip()[:80]) from None
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("--") or len(word) == 2:
            continue
        key, eq, value = word[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            out[key] = typed(value)
        elif i < len(words) and not words[i].startswith("--"):
            out[key] = typed(words[i])
            i += 1
        else:
            out[key] = True
    return out


def launch_text(source: Any, marker: str, field: str) -> str:
    """A launch script's text: ``source`` itself when it holds ``marker`` (an override's '=', an argument's '--')
    and is no file's path, else the file's text."""
    text = str(source)
    return read_text(text, field) if marker not in text or is_file(text) else text


@dataclass(frozen=True, slots=True)
class Settings:
    """A launch file's settings over its framework's defaults, each read and checked under the reader's error
    field: ``get`` a value, ``num`` an integer, ``flag`` a bool, ``number`` a number in a range. A bad value's
    error names the framework's own key (``data.max_len must be an integer ≥ 2, got 'x'``)."""

    given: Mapping[str, Any]
    """The launch file's settings (a reader's ``read``), by the framework's key."""
    defaults: Mapping[str, Any]
    """The framework's defaults for the keys the reader reads (its ``DEFAULTS``)."""
    field: str
    """The request field an ``InputError`` names (the reader's ``FIELD``: 'verl', 'openrlhf', ...)."""

    def get(self, key: str, default: Any = _UNSET) -> Any:
        """The setting as given, else ``default`` when one is passed, else the framework's default (None where
        it has none)."""
        if key in self.given:
            return self.given[key]
        return self.defaults.get(key) if default is _UNSET else default

    def num(self, key: str, low: int = 1) -> int:
        """The setting as an integer of at least ``low`` (``integer``)."""
        return integer(self.get(key), key, self.field, low)

    def flag(self, key: str) -> bool:
        """The setting as true or false (``boolean``)."""
        return boolean(self.get(key), key, self.field)

    def number(self, key: str, low: float, high: float) -> float:
        """The setting as a number in [low, high] (``number``)."""
        return number(self.get(key), key, self.field, low, high)

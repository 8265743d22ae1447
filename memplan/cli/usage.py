"""Usage errors in memplan's one shape: ``error: --flag: message; allowed: …`` on stderr, exit code 2.

memplan's own errors (``InputError``, a pydantic ``ValidationError``) get that line from ``options.cli_errors``.
The rest come from parsing the command line before any memplan code runs — a value typer cannot convert
(``--algo foo``, ``--gen-len nan``), a directory where a file goes, an option without its value, an unknown
option or command, a stray argument — and typer would draw each in a box. ``Group`` (the app's command
class) catches them where the command line is parsed and prints the same one line instead.

typer ≥ 0.20 vendors click as ``typer._click``; earlier versions use click itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from typer.core import TyperGroup

try:  # typer's own copy of click (typer ≥ 0.20), else click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from memplan.cli.options import allowed as field_allowed


def _flag(param: Any) -> str:
    """The option as the user types it: its longest ``--name``."""
    opts = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
    return max(opts, key=len) if opts else str(getattr(param, "name", "value"))


def _choices(param: Any) -> list[Any]:
    choices = getattr(getattr(param, "type", None), "choices", None)  # click.Choice
    if choices:
        return list(choices)
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)  # typer ≥ 0.20
    return list(get_args(annotation)) if get_origin(annotation) is Literal else []


def param_allowed(param: Any) -> str:
    """What the option takes: a request field's bounds or choices, the option's own range or choices, a file."""
    name = getattr(param, "name", "") or ""
    if text := field_allowed(name):
        return text
    if choices := _choices(param):
        return " | ".join(map(str, choices))
    low = getattr(param, "min", None)
    high = getattr(param, "max", None)
    if low is None and high is None:  # click.IntRange
        kind = getattr(param, "type", None)
        low, high = getattr(kind, "min", None), getattr(kind, "max", None)
    if low is not None or high is not None:
        return f"{'' if low is None else f'{low} ≤ '}x{'' if high is None else f' ≤ {high}'}"
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    kind = annotation.__name__ if isinstance(annotation, type) else type(getattr(param, "type", None)).__name__
    return {"Path": "a text file", "int": "an integer", "float": "a number", "INT": "an integer",
            "FLOAT": "a number"}.get(kind, "")


_PLAIN = [  # a converter's words → plain ones; {value}: what was typed (when found), else None keeps group 1
    (r"^(?:Value error, )?'(.*)' is not one of .*", "{value} is not one of the choices"),
    (r"^Input should be a valid integer.*", "{value} is not an integer"),
    (r"^Input should be a valid number.*", "{value} is not a number"),
    (r"^Input should be a valid boolean.*", "{value} is not a boolean"),
    (r"^Value error, (.*)", None),
]


def _tidy(message: str, value: str | None = None) -> str:
    """A converter's message in plain words, without its final full stop."""
    message = message.strip()
    for pattern, words in _PLAIN:
        if match := re.match(pattern, message):
            if words is None:
                message = match.group(1)
            else:
                shown = repr(value) if value is not None else repr(match.group(1)) if match.groups() else "the value"
                message = words.replace("{value}", shown)
            break
    return message[:-1] if message.endswith(".") else message


def _typed(flag: str, args: list[str]) -> str | None:
    """The value the user gave ``flag`` in ``args`` ('--gen-len nan' or '--gen-len=nan'), if it is there."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def describe(exc: Exception, command: str = "memplan", args: list[str] | None = None) -> str:
    """The one line (without ``error: ``) for a usage error from the command-line parser; ``args``: the
    command's arguments, where the offending value is looked up."""
    param = getattr(exc, "param", None)
    message = str(getattr(exc, "message", "") or exc)
    if isinstance(exc, click_exceptions.BadParameter) and param is not None:
        what = _flag(param)
        text = _tidy(message, _typed(what, args or []))
        if isinstance(exc, click_exceptions.MissingParameter):
            text = "missing"
        rng = param_allowed(param)
        return f"{what}: {text}" + (f"; allowed: {rng}" if rng else "")
    if isinstance(exc, click_exceptions.NoSuchOption):
        options = sorted(getattr(exc, "possibilities", None) or ())
        hint = f" (did you mean {' or '.join(options)}?)" if options else ""
        return f"{exc.option_name}: no such option{hint}; allowed: the options `{command} --help` lists"
    if isinstance(exc, click_exceptions.BadOptionUsage):
        name = exc.option_name
        if "requires an argument" in message:
            return f"{name}: needs a value (--option value or --option=value)"
        if "does not take a value" in message:
            return f"{name}: a switch takes no value; allowed: {name} or --no-{name.removeprefix('--')}"
        return f"{name}: {_tidy(message)}"
    if match := re.match(r"No such command '(.*?)'\.?(?: Did you mean '(.*?)'\?)?", message):
        hint = f" (did you mean {match.group(2)}?)" if match.group(2) else ""
        return f"{match.group(1)}: no such command{hint}; allowed: the commands `memplan --help` lists"
    if match := re.match(r"Got unexpected extra argument(?:s|\(s\))? \((.*)\)", message):
        return (f"{match.group(1)}: unexpected argument(s): {command} takes options only, each value after its "
                f"--option; allowed: the options `{command} --help` lists")
    return _tidy(message)


@contextlib.contextmanager
def usage_errors(command: str = "memplan", args: list[str] | None = None) -> Iterator[None]:
    """A usage error → its one line on stderr and exit code 2 (``memplan`` alone still prints the help)."""
    try:
        yield
    except click_exceptions.NoArgsIsHelpError:
        raise
    except click_exceptions.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        path = getattr(ctx, "command_path", None) or command
        print(f"error: {describe(exc, path, args)}", file=sys.stderr)
        raise typer.Exit(2) from None


HELP_WIDTH = 140
"""Columns of ``--help`` in a file or pipe, where typer would assume 80 and cut option names ('--gradient-c…')."""


def _help_width() -> None:
    """``--help`` into a file or pipe at ``HELP_WIDTH`` columns, unless ``TERMINAL_WIDTH`` says otherwise (typer
    reads that once, into ``rich_utils.MAX_WIDTH``); a terminal keeps its own width."""
    from typer import rich_utils

    if not os.environ.get("TERMINAL_WIDTH") and not sys.stdout.isatty():
        rich_utils.MAX_WIDTH = HELP_WIDTH
    elif not os.environ.get("TERMINAL_WIDTH"):
        rich_utils.MAX_WIDTH = None


class Group(TyperGroup):
    """The ``memplan`` group: usage errors of the group or of any command in memplan's one-line shape."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        _help_width()
        with usage_errors(info_name or "memplan", list(args)):
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        args = [*(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []), *ctx.args]
        with usage_errors(ctx.command_path, args):
            return super().invoke(ctx)


def _print_version(value: bool) -> None:
    if value:
        import memplan

        print(f"memplan {memplan.__version__}")
        raise typer.Exit()


def version_option(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print memplan's version and exit")] = False,
) -> None:
    """The group's callback: ``memplan --version``."""

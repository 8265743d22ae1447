"""The ``memplan`` command line (typer + rich, the ``[cli]`` extra).

``main()`` is the console-script entry point. typer and rich are imported only here, lazily, so that
``import memplan`` stays light; without them ``main()`` prints the install hint and exits 2.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the ``memplan`` command line."""
    try:
        from memplan.cli.app import app
    except ImportError as exc:  # typer or rich missing
        if exc.name not in ("typer", "rich", "click"):
            raise
        print(
            "The memplan command line needs typer and rich, which are not installed.\n"
            "Install them with: pip install 'memplan[cli]'",
            file=sys.stderr,
        )
        sys.exit(2)
    app()


__all__ = ["main"]

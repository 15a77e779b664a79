"""How a command ends on bad input: one ``error: ...`` line on stderr and exit status 2, never a traceback.

    def main(argv=None) -> int:
        return run_command(run, parse_args(argv))

(`timm-isomax demo` uses it; the older commands spell the same out in their own ``main``.)
"""
import sys
from typing import Any, Callable

__all__ = ["run_command"]


def run_command(run: Callable[[Any], None], args: Any) -> int:
    """``run(args)``; 0 when it returns, 2 with its one-line message for a ``ValueError`` / ``OSError``."""
    try:
        run(args)
    except (ValueError, OSError) as error:  # the library's bad-input errors are one line each
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

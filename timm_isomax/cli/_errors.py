"""How every command ends: the library's errors become one line on stderr and an exit code, never a traceback.

The library raises builtins that name the cause and what to do next (``ValueError`` for bad input or settings,
``OSError`` and its subclasses for files and the Hub: ``FileNotFoundError``, ``FileExistsError``,
``PermissionError``, ``ConnectionError``; ``FloatingPointError`` for a training run that diverged). Any other
exception is a bug, and keeps its traceback.
"""
import sys
from typing import Callable, Optional

__all__ = ["USER_ERRORS", "USAGE_ERROR", "INTERRUPTED", "exit_code", "fail"]

USER_ERRORS = (ValueError, OSError, FloatingPointError)
USAGE_ERROR = 2  # argparse's code too
INTERRUPTED = 130  # the shell's code for SIGINT


def fail(message: str) -> int:
    """Print ``error: message`` to stderr; returns :data:`USAGE_ERROR` for the command to return."""
    print(f"error: {message}", file=sys.stderr)
    return USAGE_ERROR


def exit_code(action: Callable[[], Optional[int]], interrupted: Optional[str] = None) -> int:
    """Run a command's work: its own exit code (None: 0), ``2`` with one line for :data:`USER_ERRORS`, ``130``
    on Ctrl-C (with ``interrupted``, e.g. how to continue, as a line of its own)."""
    try:
        code = action()
    except KeyboardInterrupt:
        if interrupted:
            print(f"interrupted: {interrupted}", file=sys.stderr)
        return INTERRUPTED
    except USER_ERRORS as error:
        return fail(str(error))
    return 0 if code is None else code

"""Files written whole or not at all: the one helper every module that saves something uses."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

__all__ = ["atomic_write", "write_json"]


def atomic_write(path: Union[str, Path], write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    A reader never sees half a file, and an interrupted run leaves the previous file in place.

    Example:
        >>> atomic_write(Path("out/config.json"), lambda tmp: Path(tmp).write_text("{}"))
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        # mkstemp's file is private (0600); the target gets what a plain open() would give it under the
        # umask, so a shared model folder stays readable by others
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Union[str, Path], value: Any, indent: int = 1) -> None:
    """``value`` as JSON (and a final newline) in ``path``, written atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=indent) + "\n"))

"""Files written whole or not at all: the one helper every module that saves something uses."""
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

__all__ = ["atomic_write", "write_json", "content_key", "cached_tensors"]


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


def content_key(description: Dict[str, Any]) -> str:
    """A short hash of ``description`` (JSON, keys sorted): the file name of a cache entry, which changes whenever
    anything the cached tensors depend on changes.

    Example:
        >>> content_key({"data": "3f2a...", "size": [32, 32]})
        'c1b0...'
    """
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]


def cached_tensors(path: Optional[Path], compute: Callable[[], Dict[str, Any]],
                   metadata: Optional[Dict[str, str]] = None) -> Tuple[Dict[str, Any], bool]:
    """``(tensors, loaded)``: the safetensors file ``path`` where it exists, else ``compute()``, saved there
    atomically (``path`` None: computed, kept nowhere). The one load-or-compute step of the tensor caches (a frozen
    backbone's features, decoded images).

    Example:
        >>> tensors, loaded = cached_tensors(Path("cache/ab12.safetensors"), lambda: {"x": torch.zeros(2)})
    """
    import safetensors.torch  # here, not at the top: the package's light modules import this one

    if path is not None and Path(path).exists():
        return safetensors.torch.load_file(str(path)), True
    tensors = {name: value.contiguous() for name, value in compute().items()}
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))
    return tensors, False

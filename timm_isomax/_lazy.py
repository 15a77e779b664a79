"""Package namespaces that load their submodules on first use (PEP 562).

``timm_isomax.hub``, ``.data``, ``.ood`` and ``.benchmark`` export the names of their modules, as the single modules
they once were did. Importing each submodule eagerly would tie the packages into one knot at import time (the card
reads the feature bank of ``ood``; ``ood`` reads models, which download through ``hub``) and make ``import timm_isomax``
pay for ``datasets`` and the trainer. So a package declares its exports as data, and each is imported when first read.
"""
import importlib
import sys
from typing import Callable, Dict, List, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Dict[str, str]) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``exports`` map each public name to its submodule.

    Example (a package's ``__init__.py``)::

        _EXPORTS = {"save_pretrained": "folder", "push_to_hub": "publish"}
        __all__ = list(_EXPORTS)
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
    """
    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # read once: later reads are plain attribute reads
        return value

    def __dir__() -> List[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__

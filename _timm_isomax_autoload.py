"""Registers timm-isomax's architectures right after ``import timm``, so that a fresh interpreter which only
does ``import timm`` can create ``<arch>_isomaxplus`` / ``<arch>_isomax`` models and load ``hf-hub:`` /
``local-dir:`` IsoMax models (timm has no plugin discovery; its maintainers say a model's module has to be
imported).

Installed by the wheel's ``timm_isomax-autoload.pth``, which Python runs at start-up. It only puts a finder
on ``sys.meta_path``: it never imports torch or timm itself, so start-up costs what reading this file costs.
When timm is imported, the finder lets timm's own loader run, then imports ``timm_isomax``; a failure
there is a warning, never a broken ``import timm``. ``TIMM_ISOMAX_NO_AUTOLOAD=1`` turns it off.
"""
import os  # already imported by site: free; importlib.abc would cost ~20 ms at every start-up
import sys

ENV_OFF = "TIMM_ISOMAX_NO_AUTOLOAD"


class _RegisterAfterTimm:
    """A meta-path finder (duck-typed: no importlib imports at start-up) that finds nothing itself: it asks the
    finders after it for ``timm`` and wraps that spec's loader so that ``timm_isomax`` is imported after it."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        run_timm = spec.loader.exec_module

        def exec_module(module):
            run_timm(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)  # once is enough
            try:
                import importlib

                importlib.import_module("timm_isomax")
            except Exception as error:  # never break ``import timm`` for the user
                import warnings

                warnings.warn(f"timm-isomax could not register its models after `import timm` ({type(error).__name__}: "
                              f"{error}); `import timm_isomax` shows the full error. Set {ENV_OFF}=1 to skip this.")

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if os.environ.get(ENV_OFF, "").strip() not in ("", "0") or "timm" in sys.modules:
        return
    if not any(isinstance(finder, _RegisterAfterTimm) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimm())


install()

"""Import paths of modules that moved into subpackages keep working, as the same module objects.

``import timm_isomax.heads`` (or ``from timm_isomax.hub_config import ...``) returns
:mod:`timm_isomax.layers.heads` itself, so private names, monkeypatching and old pickles all resolve as before.
One table instead of a file per old name keeps the package's folder tree the architecture; timm keeps its old
paths the same way, with re-exporting shims.
"""
import importlib
import importlib.abc
import importlib.util
import sys

PACKAGE = __name__.rpartition(".")[0]

# old module under timm_isomax -> where it lives now
MOVED_MODULES = {
    "heads": "layers.heads", "losses": "layers.losses", "scores": "layers.scores", "fpr": "layers.fpr",
    "model": "models.classifier", "registry": "models.registry", "conversion": "models.conversion",
    "checkpoints": "models.checkpoints", "cifar_resnet": "models.cifar_resnet", "cifar_airnet": "models.cifar_airnet",
    "engine": "models.inference",
    "metrics": "ood.metrics", "calibration": "ood.calibration", "evaluation": "ood.evaluation", "plots": "ood.plots",
    "feature_scores": "ood.feature_scores", "posthoc": "ood.posthoc", "detectors": "ood.detectors",
    "selection": "ood.selection",
    "views": "data.views",
    "hub_config": "hub.config", "provenance": "hub.provenance",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``timm_isomax.<old name>`` after the normal finders found no file there."""

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent != PACKAGE or name not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a placeholder module; exec_module swaps in the real one

    def exec_module(self, module) -> None:
        # the import system hands out (and binds on the parent package) whatever sys.modules holds afterwards
        old_name = module.__name__.rpartition(".")[2]
        sys.modules[module.__name__] = importlib.import_module(f"{PACKAGE}.{MOVED_MODULES[old_name]}")


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once. It answers only for the old names, which have no file
    any more, so it shadows nothing; first, so that no other finder (an editable install's mapping of the
    package folder, a stale copy) can answer for them with something else."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())

"""timm-isomax: IsoMax, IsoMax+ and DisMax out-of-distribution detection for every timm architecture.

``import timm_isomax`` registers ``<arch>_isomaxplus``, ``<arch>_isomax`` and ``<arch>_dismax`` for every timm
classification architecture in timm's own registry::

    import timm, timm_isomax
    model = timm.create_model("resnet50_isomaxplus", num_classes=10)
    logits = model(images)                                   # -|s| * ||f^ - p^_c||
    loss = timm_isomax.IsoMaxPlusLoss()(logits, targets)     # entropic scale 10
    ood_score = timm_isomax.scores.mds(logits)               # higher = more in-distribution
    dismax = timm.create_model("resnet50_dismax", num_classes=10)  # score: timm_isomax.scores.mmles

timm has no plugin discovery: the import must come before ``timm.create_model`` (also for ``hf-hub:``
names of IsoMax models).
"""
from . import _moved

_moved.install()  # the module paths from before the subpackages (timm_isomax.heads, .hub_config, ...)

from .models import cifar_resnet  # noqa: F401  registers cifar_resnet20..1202 in timm (before the IsoMax variants below)
from .models import cifar_airnet  # noqa: F401  registers cifar_airnet and cifar_airnet_small, likewise
from .layers import fpr, scores
from .models.checkpoints import KEY_MAPS, load_checkpoint_into, read_state_dict, remap_keys
from .models.conversion import ConversionReport, convert_softmax_model
from .layers.heads import DisMaxHead, IsoMaxHead, IsoMaxPlusHead, euclidean_distances
from .layers.losses import DisMaxLoss, IsoMaxLoss, IsoMaxPlusLoss
from .ood.calibration import calibrate_temperature, expected_calibration_error, fit_temperature
from .ood.metrics import auroc, ood_metrics, ood_metrics_table, roc_curve
from .ood.deploy import Prediction, fit_ood_threshold, fit_threshold, is_ood, ood_scores, predict
from .models.classifier import HEAD_TYPES, IsoMaxClassifier
from .hub import HubConfig, load_hub_config, packaged_hub_configs, push_to_hub, weights_sha256
from .models.factory import create_model
from .models.registry import (
    base_architecture,
    is_classification_architecture,
    list_isomax_models,
    register_all,
    register_hub_config,
    register_isomax_variants,
)

__version__ = "0.1.0"

__all__ = [
    "IsoMaxPlusHead",
    "IsoMaxHead",
    "IsoMaxPlusLoss",
    "IsoMaxLoss",
    "DisMaxHead",
    "DisMaxLoss",
    "fpr",
    "IsoMaxClassifier",
    "HEAD_TYPES",
    "scores",
    "convert_softmax_model",
    "ConversionReport",
    "load_checkpoint_into",
    "read_state_dict",
    "remap_keys",
    "KEY_MAPS",
    "auroc",
    "ood_metrics",
    "ood_metrics_table",
    "roc_curve",
    "fit_threshold",
    "fit_ood_threshold",
    "is_ood",
    "predict",
    "ood_scores",
    "Prediction",
    "calibrate_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "euclidean_distances",
    "create_model",
    "register_isomax_variants",
    "register_all",
    "register_hub_config",
    "list_isomax_models",
    "base_architecture",
    "is_classification_architecture",
    "push_to_hub",
    "HubConfig",
    "load_hub_config",
    "packaged_hub_configs",
    "weights_sha256",
]

register_all()

"""Out-of-distribution detection around a model: scores by name (:mod:`.detectors`, :mod:`.feature_scores`,
:mod:`.posthoc`), choosing one on validation (:mod:`.selection`), metrics (:mod:`.metrics`), thresholds and
deployment (:mod:`.deploy`), temperature calibration (:mod:`.calibration`), evaluation (:mod:`.evaluation`) and
plots (:mod:`.plots`).

``timm_isomax.ood`` was the deployment module before it became this package; its names stay here.
"""
from .._lazy import lazy_exports

# public name -> the module of this package that defines it, imported when the name is first read
_EXPORTS = {
    "fit_threshold": "deploy", "fit_ood_threshold": "deploy", "ood_scores": "deploy", "is_ood": "deploy",
    "predict": "deploy", "Prediction": "deploy", "Images": "deploy", "recorded_ood_config": "deploy",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

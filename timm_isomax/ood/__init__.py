"""Out-of-distribution detection around a model: scores by name (:mod:`.detectors`, :mod:`.feature_scores`,
:mod:`.posthoc`), choosing one on validation (:mod:`.selection`), metrics (:mod:`.metrics`), thresholds and
deployment (:mod:`.deploy`), temperature calibration (:mod:`.calibration`), evaluation (:mod:`.evaluation`) and
plots (:mod:`.plots`).

``timm_isomax.ood`` was the deployment module before it became this package; its names stay here.
"""
from .deploy import Images, Prediction, fit_ood_threshold, fit_threshold, is_ood, ood_scores, predict

__all__ = ["fit_threshold", "fit_ood_threshold", "ood_scores", "is_ood", "predict", "Prediction", "Images"]

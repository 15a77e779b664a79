"""Deployment: fit an OOD threshold on ID validation data, then flag and classify new images.

A score (higher = more in-distribution) at or above the threshold is in-distribution; below it is OOD.
The threshold is fitted so that at least ``tpr`` (default 95%) of the ID validation images are accepted,
the operating point of the FPR@95 metrics. On IsoMax models it is stored in ``model.ood_config``, which
``timm_isomax.hub.save_pretrained`` writes to config.json and ``timm.create_model("local-dir:...")``
restores::

    fit_ood_threshold(model, id_val_loader, fitted_on="mnist:train[-5000:]")
    save_pretrained(model, "out/mnist_isomaxplus")
    model = timm.create_model("local-dir:out/mnist_isomaxplus", pretrained=True)
    flags = is_ood(model, images)                     # bool tensor, True = OOD
    for p in predict(model, [Image.open("x.png")]):   # PIL images are preprocessed with the model's config
        print(p.label, p.score, p.is_ood)

Fit the threshold *after* any temperature calibration: the temperature changes the scores.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .detectors import FEATURE_SCORES, Scorer, model_parts, needs_features, score_problem
from .feature_scores import feature_bank_of, model_folder
from .metrics import TPR_LEVEL, ArrayLike, as_score_array, min_count
from .score_summary import summarize_scores
from ..layers.scores import get_score

__all__ = ["fit_threshold", "fit_ood_threshold", "recorded_ood_config", "ood_scores", "is_ood", "predict", "Prediction"]

Images = Union[torch.Tensor, Image.Image, Sequence[Image.Image]]


def fit_threshold(id_val_scores: ArrayLike, tpr: float = TPR_LEVEL) -> float:
    """The largest threshold that accepts (score >= threshold) at least ``tpr`` of ``id_val_scores``.

    It is the ``k``-th highest score, ``k`` the smallest count with ``k / n >= tpr``: the threshold of
    the first ROC point with TPR >= ``tpr`` (the FPR@95 operating point). Ties: every score equal to
    the threshold is accepted, so where the ``k``-th score is tied the accepted share exceeds ``tpr``.

    Example:
        >>> fit_threshold([5.0, 4.0, 3.0, 2.0, 1.0], tpr=0.6)   # accepts 5, 4, 3
        3.0
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr is the share of ID inputs to accept, in (0, 1]; got {tpr!r}.")
    scores = as_score_array(id_val_scores, "id_val_scores")
    n = scores.size
    k = min_count(n, tpr)  # the ROC operating point's own comparison, k / n >= tpr
    return float(np.partition(scores, n - k)[n - k])  # the k-th highest score, without a full sort


RECORDED_KEYS = ("score", "threshold", "tpr", "fitted_on", "id_scores")


def recorded_ood_config(model: nn.Module) -> Tuple[dict, str]:
    """``(record, where)``: the OOD score and threshold (with ``tpr``, ``fitted_on``, ``id_scores``) that ``model``
    records, and where it keeps them.

    An IsoMax model keeps them in its ``ood_config`` (config.json), and only there: one without a threshold has
    none (a temperature calibration clears it, since it changes the scores). A run of ``timm-isomax finetune
    --head softmax`` writes a plain timm folder, so its validation-chosen score and threshold live in the run's
    ``training/evaluation.json`` beside the weights; that file is read for a plain model loaded from such a
    folder (``local-dir:``). ``where`` is empty where no threshold is recorded (an IsoMax model's ``ood_config``
    still names its score), and the record too for a plain model without such a file.

    Example:
        >>> model = timm.create_model("local-dir:out/cifar_softmax", pretrained=True)
        >>> recorded_ood_config(model)
        ({'score': 'vim', 'threshold': -3.47, ...}, "its run's training/evaluation.json")
    """
    if hasattr(model, "ood_config"):
        config = dict(model.ood_config or {})
        return config, "config.json (ood_config)" if config.get("threshold") is not None else ""
    evaluation_file = _run_evaluation_file(model)
    if evaluation_file is not None:
        cached = model.__dict__.get("_run_evaluation")
        if cached is None or cached[0] != evaluation_file:
            try:
                evaluation = json.loads(evaluation_file.read_text())
            except ValueError as error:
                raise ValueError(f"cannot read {evaluation_file} ({error}): restore it from the run, or pass score= "
                                 f"and threshold=.") from None
            if not isinstance(evaluation, dict):
                raise ValueError(f"{evaluation_file} holds {type(evaluation).__name__}, not a run's evaluation: "
                                 f"restore it from the run, or pass score= and threshold=.")
            cached = (evaluation_file, {key: evaluation.get(key) for key in RECORDED_KEYS})
            model.__dict__["_run_evaluation"] = cached  # read once per model: predict() is called per image
        if cached[1].get("threshold") is not None:
            return dict(cached[1]), f"its run's {evaluation_file.parent.name}/{evaluation_file.name}"
    return {}, ""


def _run_evaluation_file(model: nn.Module) -> Optional[Path]:
    """The ``training/evaluation.json`` beside the folder ``model`` was loaded from, if there is one."""
    from ..train.state import EVALUATION_NAME, TRAINING_DIR  # here: the trainer imports this module

    folder = model_folder(model)
    path = folder / TRAINING_DIR / EVALUATION_NAME if folder is not None else None
    return path if path is not None and path.is_file() else None


def _config_of(model: nn.Module) -> dict:
    return recorded_ood_config(model)[0]


def _score_name(model: nn.Module, score: Optional[str]) -> str:
    name = score or _config_of(model).get("score")
    if name is None:
        raise ValueError(f"{type(model).__name__} records no OOD score (no ood_config, and no training/evaluation.json "
                         f"of a timm-isomax run beside its weights): pass score=..., e.g. 'msp'.")
    problem = score_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def _model_scores(model: nn.Module, batches, name: str, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scores, logits)`` of ``model`` over ``batches`` (image tensors): the logits alone for a logit score, else
    the pre-logit features too, with the model's feature bank where the score reads one (:func:`feature_bank_of`)."""
    model.eval()
    if not needs_features(name):
        with torch.no_grad():
            logits = torch.cat([model(images.to(device)).float().cpu() for images in batches])
        return get_score(name)(logits), logits
    features_of, head = model_parts(model)
    bank = feature_bank_of(model) if name not in FEATURE_SCORES else None
    with torch.no_grad():
        features = torch.cat([features_of(images.to(device)).float().cpu() for images in batches])
        logits = head(features.to(device)).float().cpu()
    return _scorer(model, head, bank).score(name, features, logits), logits


def _scorer(model: nn.Module, head: nn.Module, bank) -> Scorer:
    # kept on the model: a post-hoc detector is fitted on the bank once (Mahalanobis on a 4,500-row bank: 0.13 s per
    # one-image call when refitted, 0.006 s for a logit score), and fitted again only when the head's weights
    # (which ViM, ReAct and ASH read) or the bank change
    key = (id(head), id(bank), tuple(parameter._version for parameter in head.parameters()))
    cached = model.__dict__.get("_ood_scorer")
    if cached is None or cached[0] != key:
        cached = (key, Scorer(head, bank))
        model.__dict__["_ood_scorer"] = cached
    return cached[1]


def fit_ood_threshold(model: nn.Module, loader: torch.utils.data.DataLoader, tpr: float = TPR_LEVEL,
                      score: Optional[str] = None, fitted_on: Optional[str] = None,
                      device: Union[str, torch.device] = "cpu") -> float:
    """Fit the OOD threshold of an IsoMax model on an ID validation loader and store it in
    ``model.ood_config`` (with ``tpr``, ``score``, ``fitted_on``, a note of the data used, and ``id_scores``, the
    percentiles of those validation scores: what ``timm-isomax demo`` draws the threshold against).

    Example:
        >>> threshold = fit_ood_threshold(model, id_val_loader, fitted_on="mnist:train[55000:]")
        >>> model.ood_config["threshold"] == threshold
        True
    """
    if not hasattr(model, "update_ood_config"):
        raise ValueError(f"{type(model).__name__} has no ood_config to store a threshold in (not an IsoMax model): "
                         f"use fit_threshold(scores) and pass threshold= to is_ood / predict.")
    name = _score_name(model, score)
    scores, _ = _model_scores(model, (images for images, _ in loader), name, torch.device(device))
    threshold = fit_threshold(scores, tpr)
    # the summary of the scores this threshold was fitted on replaces any earlier one (e.g. the training run's)
    model.update_ood_config(score=name, threshold=threshold, tpr=tpr, fitted_on=fitted_on,
                            id_scores=summarize_scores(scores, name, threshold))
    return threshold


def _batch(model: nn.Module, images: Images) -> torch.Tensor:
    if isinstance(images, Image.Image):
        images = [images]
    if not isinstance(images, torch.Tensor):
        from ..data import model_transform  # here, not at import: it pulls in `datasets` (~0.5 s)

        transform, mode = model_transform(model)
        images = torch.stack([transform(image.convert(mode)) for image in images])
    elif images.ndim == 3:
        images = images.unsqueeze(0)
    return images


def _scores_and_logits(model: nn.Module, images: Images, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return _model_scores(model, [_batch(model, images)], name, next(model.parameters()).device)


def _threshold(model: nn.Module, name: str, threshold: Optional[float]) -> float:
    config = _config_of(model)
    if threshold is None:
        if config.get("threshold") is None:
            raise ValueError("no OOD threshold: fit one with fit_ood_threshold(model, id_val_loader) or pass threshold=.")
        if name != config.get("score"):
            raise ValueError(f"the stored threshold is for score {config.get('score')!r}, not {name!r}: pass threshold=.")
        threshold = config["threshold"]
    return float(threshold)


def ood_scores(model: nn.Module, images: Images, score: Optional[str] = None) -> torch.Tensor:
    """The OOD score (higher = more ID; the model's own unless ``score`` is given) of each image.

    ``images``: a preprocessed batch (N, C, H, W) or one image (C, H, W), or PIL images, which are
    preprocessed with the model's timm data config. Puts the model in eval mode. Feature scores (e.g. ``knn50``,
    ``norm_cosine``) read the pre-logit features, and KNN and the post-hoc detectors the model's feature bank.
    """
    return _scores_and_logits(model, images, _score_name(model, score))[0]


def is_ood(model: nn.Module, images: Images, threshold: Optional[float] = None, score: Optional[str] = None) -> torch.Tensor:
    """A bool tensor, True where an image is OOD (its score is below the threshold).

    ``threshold`` / ``score`` default to ``model.ood_config`` (see :func:`fit_ood_threshold`).

    Example:
        >>> is_ood(model, batch)          # batch: (N, C, H, W), preprocessed
        tensor([False, True, ...])
    """
    name = _score_name(model, score)
    threshold = _threshold(model, name, threshold)
    return _scores_and_logits(model, images, name)[0] < threshold


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image: class index (and name, where known), score, OOD flag."""

    index: int
    label: Optional[str]
    score: float
    is_ood: bool


def predict(model: nn.Module, images: Images, threshold: Optional[float] = None, score: Optional[str] = None,
            label_names: Optional[Sequence[str]] = None) -> List[Prediction]:
    """Class, class name, OOD score and OOD flag of each image.

    Class names come from ``label_names`` or the model's ``pretrained_cfg["label_names"]`` (saved by
    ``save_pretrained(..., label_names=...)``); ``None`` where unknown.

    Example:
        >>> [p.label for p in predict(model, pil_images) if not p.is_ood]
        ['7', '2']
    """
    name = _score_name(model, score)
    threshold = _threshold(model, name, threshold)
    scores, logits = _scores_and_logits(model, images, name)
    names = label_names if label_names is not None else getattr(model, "pretrained_cfg", {}).get("label_names")
    indices = logits.argmax(dim=1).tolist()
    return [Prediction(index=i, label=str(names[i]) if names is not None and i < len(names) else None,
                       score=float(s), is_ood=bool(s < threshold)) for i, s in zip(indices, scores.tolist())]

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
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import engine
from .metrics import TPR_LEVEL, ArrayLike, as_score_array, min_count
from .scores import get_score

__all__ = ["fit_threshold", "fit_ood_threshold", "ood_scores", "is_ood", "predict", "Prediction"]

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


def _config_of(model: nn.Module) -> dict:
    return dict(getattr(model, "ood_config", None) or {})


def _score_name(model: nn.Module, score: Optional[str]) -> str:
    name = score or _config_of(model).get("score")
    if name is None:
        raise ValueError(f"{type(model).__name__} has no ood_config (not an IsoMax model): pass score=..., e.g. 'msp'.")
    get_score(name)  # validates the name
    return name


def fit_ood_threshold(model: nn.Module, loader: torch.utils.data.DataLoader, tpr: float = TPR_LEVEL,
                      score: Optional[str] = None, fitted_on: Optional[str] = None,
                      device: Union[str, torch.device] = "cpu") -> float:
    """Fit the OOD threshold of an IsoMax model on an ID validation loader and store it in
    ``model.ood_config`` (with ``tpr``, ``score`` and ``fitted_on``, a note of the data used).

    Example:
        >>> threshold = fit_ood_threshold(model, id_val_loader, fitted_on="mnist:train[55000:]")
        >>> model.ood_config["threshold"] == threshold
        True
    """
    if not hasattr(model, "update_ood_config"):
        raise ValueError(f"{type(model).__name__} has no ood_config to store a threshold in (not an IsoMax model): "
                         f"use fit_threshold(scores) and pass threshold= to is_ood / predict.")
    name = _score_name(model, score)
    logits, _ = engine.predict(model, loader, torch.device(device))
    threshold = fit_threshold(get_score(name)(logits), tpr)
    model.update_ood_config(score=name, threshold=threshold, tpr=tpr, fitted_on=fitted_on)
    return threshold


def _logits(model: nn.Module, images: Images) -> torch.Tensor:
    if isinstance(images, Image.Image):
        images = [images]
    if not isinstance(images, torch.Tensor):
        from .data import model_transform  # here, not at import: it pulls in `datasets` (~0.5 s)

        transform, mode = model_transform(model)
        images = torch.stack([transform(image.convert(mode)) for image in images])
    elif images.ndim == 3:
        images = images.unsqueeze(0)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        return model(images.to(device)).float().cpu()


def _scores_and_threshold(model: nn.Module, logits: torch.Tensor, score: Optional[str],
                          threshold: Optional[float]) -> Tuple[torch.Tensor, float]:
    config = _config_of(model)
    name = _score_name(model, score)
    if threshold is None:
        if config.get("threshold") is None:
            raise ValueError("no OOD threshold: fit one with fit_ood_threshold(model, id_val_loader) or pass threshold=.")
        if name != config.get("score"):
            raise ValueError(f"the stored threshold is for score {config.get('score')!r}, not {name!r}: pass threshold=.")
        threshold = config["threshold"]
    return get_score(name)(logits), float(threshold)


def ood_scores(model: nn.Module, images: Images, score: Optional[str] = None) -> torch.Tensor:
    """The OOD score (higher = more ID; the model's own unless ``score`` is given) of each image.

    ``images``: a preprocessed batch (N, C, H, W) or one image (C, H, W), or PIL images, which are
    preprocessed with the model's timm data config. Puts the model in eval mode.
    """
    return get_score(_score_name(model, score))(_logits(model, images))


def is_ood(model: nn.Module, images: Images, threshold: Optional[float] = None, score: Optional[str] = None) -> torch.Tensor:
    """A bool tensor, True where an image is OOD (its score is below the threshold).

    ``threshold`` / ``score`` default to ``model.ood_config`` (see :func:`fit_ood_threshold`).

    Example:
        >>> is_ood(model, batch)          # batch: (N, C, H, W), preprocessed
        tensor([False, True, ...])
    """
    scores, threshold = _scores_and_threshold(model, _logits(model, images), score, threshold)
    return scores < threshold


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
    logits = _logits(model, images)
    scores, threshold = _scores_and_threshold(model, logits, score, threshold)
    names = label_names if label_names is not None else getattr(model, "pretrained_cfg", {}).get("label_names")
    indices = logits.argmax(dim=1).tolist()
    return [Prediction(index=i, label=str(names[i]) if names is not None and i < len(names) else None,
                       score=float(s), is_ood=bool(s < threshold)) for i, s in zip(indices, scores.tolist())]

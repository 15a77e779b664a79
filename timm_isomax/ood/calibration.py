"""Temperature calibration of IsoMax / IsoMax+ models (Guo et al., 2017) and the expected calibration error.

The heads divide their logits by a temperature buffer ``model.head.temperature`` (saved with the
weights). :func:`calibrate_temperature` fits it on a validation split by minimising the negative
log-likelihood (NLL) and writes it into the buffer::

    result = calibrate_temperature(model, val_loader)
    print(result.temperature, result.ece_before, result.ece_after)
    save_pretrained(model, "out/calibrated")   # the temperature travels with the weights

Calibrate *before* fitting an OOD threshold: the temperature changes the scores a threshold compares.
(The MDS of IsoMax+ only scales with it, so its AUROC does not change; the entropic score's does.)
"""
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.inference import predict_logits

__all__ = ["expected_calibration_error", "negative_log_likelihood", "fit_temperature", "calibrate_temperature",
           "CalibrationResult"]

# Search range of the temperature: far wider than any sensible value, but keeps it finite and positive.
_LOG_T_BOUNDS = (np.log(1e-3), np.log(1e3))


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"need logits (N, C) and labels (N,) with N >= 1, got {tuple(logits.shape)} and {tuple(labels.shape)}.")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1]}); calibration needs labelled data.")


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean NLL (cross-entropy) of ``softmax(logits / temperature)``, in float64."""
    _check(logits, labels)
    return F.cross_entropy(logits.double() / temperature, labels.long()).item()


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE: ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over ``n_bins`` equal-width confidence bins
    ``(i / n_bins, (i + 1) / n_bins]``, confidence = the maximum softmax probability (float64).

    Example:
        >>> expected_calibration_error(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        0.4251307503260613
    """
    _check(logits, labels)
    probs = torch.softmax(logits.double(), dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels.long()).double()
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()
    gap = torch.bincount(bins, weights=correct - confidence, minlength=n_bins)  # sum of (acc - conf) per bin
    # |mean gap| * n_b / N = |sum of gaps| / N per bin
    return (gap.abs().sum() / count.sum()).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, current_temperature: float = 1.0) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(raw_logits / T)``.

    ``logits`` are what the model returned while its temperature was ``current_temperature``, i.e.
    ``raw_logits / current_temperature``; the returned ``T`` is absolute (write it into the buffer
    as is). Minimised over ``log T`` with L-BFGS in float64, bounded to [1e-3, 1e3].

    Example:
        >>> T = fit_temperature(val_logits, val_labels, current_temperature=float(model.head.temperature))
    """
    _check(logits, labels)
    raw = logits.detach().double() * current_temperature
    targets = labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(raw / log_t.clamp(*_LOG_T_BOUNDS).exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(*_LOG_T_BOUNDS).exp())


@dataclass(frozen=True)
class CalibrationResult:
    """The fitted temperature and the validation NLL / ECE before and after it."""

    temperature_before: float
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float


def calibrate_temperature(model: nn.Module, loader: torch.utils.data.DataLoader, n_bins: int = 15,
                          device: Union[str, torch.device] = "cpu") -> CalibrationResult:
    """Fit the temperature of an IsoMax model on a labelled validation loader (NLL) and write it into
    ``model.head.temperature``; returns the NLL and ECE before and after.

    Raises if the model has already a fitted OOD threshold (the scores it was fitted on would change):
    calibrate first, then :func:`timm_isomax.ood.fit_ood_threshold`.
    """
    buffer = getattr(getattr(model, "head", None), "temperature", None)
    if not isinstance(buffer, torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no temperature buffer (model.head.temperature): calibrate an "
                         f"IsoMax model, or use fit_temperature(logits, labels) and divide the logits yourself.")
    if getattr(model, "ood_config", {}).get("threshold") is not None:
        raise ValueError("the model has a fitted OOD threshold, which the temperature would invalidate: calibrate "
                         "first, then fit the threshold (or clear it with model.update_ood_config(threshold=None)).")
    logits, labels = predict_logits(model, loader, torch.device(device))
    before = float(buffer)
    with torch.no_grad():
        buffer.fill_(fit_temperature(logits, labels, current_temperature=before))
    temperature = float(buffer)  # as stored (the buffer's dtype, usually float32)
    calibrated = logits.double() * (before / temperature)  # the logits at the new temperature, without a rerun
    return CalibrationResult(
        temperature_before=before,
        temperature=temperature,
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(calibrated, labels),
        ece_before=expected_calibration_error(logits, labels, n_bins),
        ece_after=expected_calibration_error(calibrated, labels, n_bins),
    )

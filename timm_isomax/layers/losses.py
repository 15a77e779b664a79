"""The entropic loss of IsoMax, IsoMax+ and DisMax: cross-entropy on ``entropic_scale * logits`` (DisMax
optionally with fractional probability regularisation, :mod:`timm_isomax.layers.fpr`).

The reference implementation takes softmax, then log: it returns inf as soon as one probability
underflows (seen at a learned distance scale of 20). ``F.cross_entropy`` on the scaled logits is the
same value computed with log-sum-exp, so it stays finite, and it takes label smoothing and soft
(mixup / cutmix) targets for free.

The entropic scale (10 in both papers) is part of the loss, not of the model: logits and OOD scores at
inference are computed without it. Plain ``nn.CrossEntropyLoss`` on an IsoMax+ model silently trains
with scale 1, which is why these losses exist as named classes.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .fpr import fpr_batch_problem, plain_rows

__all__ = ["IsoMaxLoss", "IsoMaxPlusLoss", "DisMaxLoss", "NonFiniteLossError"]


class NonFiniteLossError(ValueError, FloatingPointError):
    """The loss came out NaN or inf (a ``ValueError`` about the inputs, and a ``FloatingPointError``):
    training loops catch it to stop cleanly, keeping their last good checkpoint."""

_REDUCTIONS = ("mean", "sum", "none")


def _check_logits_and_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Validate shapes and dtypes; return the targets in the form ``F.cross_entropy`` takes."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        got = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a float tensor of shape (batch, num_classes), got {got}.")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}.")
    batch, num_classes = logits.shape
    if targets.ndim == 1:
        if targets.is_floating_point() or targets.dtype == torch.bool or targets.is_complex():
            raise ValueError(
                f"targets of shape (batch,) must hold integer class indices, got {targets.dtype}; "
                f"use targets.long(), or pass soft targets of shape ({batch}, {num_classes})."
            )
        if targets.shape[0] != batch:
            raise ValueError(f"targets has {targets.shape[0]} entries for a batch of {batch} logits.")
        # A range check costs nothing on CPU; on accelerators it would force a host sync every step.
        if targets.device.type == "cpu" and batch and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(
                f"class indices must lie in [0, {num_classes - 1}], got values in "
                f"[{int(targets.min())}, {int(targets.max())}]; check the dataset's labels and num_classes."
            )
        return targets.long()
    if targets.ndim == 2:
        if not targets.is_floating_point():
            raise ValueError(f"soft targets of shape (batch, num_classes) must be float, got {targets.dtype}.")
        if tuple(targets.shape) != (batch, num_classes):
            raise ValueError(
                f"soft targets must have the logits' shape {(batch, num_classes)}, got {tuple(targets.shape)}."
            )
        return targets.float()
    raise ValueError(
        f"targets must be class indices (batch,) or soft targets (batch, num_classes), got shape "
        f"{tuple(targets.shape)}."
    )


def _check_finite_loss(loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
    """One-line ``ValueError`` for a NaN/inf loss: NaN or inf features, weights or targets upstream.

    Checked on CPU tensors only, like the target range: on an accelerator the check would force a host
    sync every step (fine-tuning checks the running loss every 20 steps instead). The loss is already
    reduced (or (B,) values), so the check is one pass over it; the logits and targets are inspected only
    to word the message, once the loss is known to be bad.
    """
    if loss.device.type != "cpu" or bool(torch.isfinite(loss).all()):
        return
    raise NonFiniteLossError(f"the loss is not finite: {_non_finite_cause(logits, targets)}; check the input data for NaN/inf, "
                     f"lower the learning rate, or disable AMP.")


def _non_finite_cause(logits: torch.Tensor, targets: torch.Tensor) -> str:
    bad_rows = int((~torch.isfinite(logits.detach())).any(dim=1).sum())
    if bad_rows:
        return f"{bad_rows} of {logits.shape[0]} rows of logits contain NaN/inf, so the model's features or weights do"
    if targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
        return "the soft targets contain NaN/inf"
    return "the logits are finite but the loss overflowed (logits too large)"


class IsoMaxLoss(nn.Module):
    """Entropic loss of IsoMax: ``cross_entropy(entropic_scale * logits, targets)``.

    Args:
        entropic_scale: the papers' E, 10 by default; used in training only.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Targets are class indices (B,) or soft targets (B, C), e.g. from timm's Mixup.

    Example:
        >>> loss_fn = IsoMaxLoss()
        >>> loss = loss_fn(torch.randn(4, 10), torch.tensor([0, 3, 9, 1]))
    """

    def __init__(self, entropic_scale: float = 10.0, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        if not (isinstance(entropic_scale, (int, float)) and math.isfinite(entropic_scale) and entropic_scale > 0):
            raise ValueError(f"entropic_scale must be a finite number > 0, got {entropic_scale!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
        self.entropic_scale = float(entropic_scale)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = _check_logits_and_targets(logits, targets)
        loss = F.cross_entropy(
            self.entropic_scale * logits.float(),
            targets,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )
        _check_finite_loss(loss, logits, targets)
        return loss

    def extra_repr(self) -> str:
        return f"entropic_scale={self.entropic_scale}, label_smoothing={self.label_smoothing}"


class IsoMaxPlusLoss(IsoMaxLoss):
    """Entropic loss of IsoMax+ (the same formula as :class:`IsoMaxLoss`, applied to IsoMax+ logits).

    Example:
        >>> import timm, timm_isomax
        >>> model = timm.create_model("resnet18_isomaxplus", num_classes=10)
        >>> loss = timm_isomax.IsoMaxPlusLoss()(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2]))
    """


class DisMaxLoss(IsoMaxLoss):
    """Loss of DisMax (Macedo, Zanchettin & Ludermir, 2022): ``cross_entropy(entropic_scale * logits, targets)``,
    the formula of :class:`IsoMaxLoss`, applied to :class:`~timm_isomax.DisMaxHead` logits.

    With ``fpr=True`` (fractional probability regularisation) the batch must come from
    :func:`timm_isomax.layers.fpr.fractional_probability_batch`: the first ``B // 2`` rows are plain images, scored with
    the cross-entropy above (``label_smoothing`` applies here), the rest are quadrant images, scored with
    ``KL(targets || softmax(entropic_scale * logits))``; the loss is the mean of the two parts (reduction
    ``"mean"`` only), as in the reference ``DisMaxLossSecondPart``.

    Example:
        >>> from timm_isomax.layers.fpr import fractional_probability_batch
        >>> images, targets = fractional_probability_batch(images, labels, num_classes=10)
        >>> loss = DisMaxLoss(fpr=True)(model(images), targets)
    """

    def __init__(self, entropic_scale: float = 10.0, label_smoothing: float = 0.0, reduction: str = "mean",
                 fpr: bool = False):
        super().__init__(entropic_scale, label_smoothing, reduction)
        if fpr and reduction != "mean":
            raise ValueError(f"DisMaxLoss(fpr=True) is the mean of two batch means (plain and quadrant images), "
                             f"so reduction must be 'mean', got {reduction!r}.")
        self.fpr = bool(fpr)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.fpr:
            return super().forward(logits, targets)
        targets = _check_logits_and_targets(logits, targets)
        if targets.ndim != 2:
            raise ValueError("DisMaxLoss(fpr=True) takes the soft targets (batch, num_classes) of "
                             "timm_isomax.fpr.fractional_probability_batch, got class indices: build the batch with "
                             "it first (the trainer does, with --dismax-fpr), or use DisMaxLoss().")
        problem = fpr_batch_problem(logits.shape[0])
        if problem:
            raise ValueError(problem)
        half = plain_rows(logits.shape[0])
        scaled = self.entropic_scale * logits.float()
        plain = F.cross_entropy(scaled[:half], targets[:half], label_smoothing=self.label_smoothing)
        fractional = F.kl_div(F.log_softmax(scaled[half:], dim=1), targets[half:], reduction="batchmean")
        loss = (plain + fractional) / 2
        _check_finite_loss(loss, logits, targets)
        return loss

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fpr={self.fpr}"

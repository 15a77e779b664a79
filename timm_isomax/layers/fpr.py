"""Fractional probability regularisation (FPR), the DisMax paper's batch augmentation (Macedo et al., 2022).

The second half of each training batch is rebuilt: each of its images keeps its own top-left quadrant and takes
the bottom-left, top-right and bottom-right quadrants from the 1st, 2nd and 3rd image before it (cyclically,
within that half), and its target is 0.25 on each of the four source labels (summed where labels repeat). The
first half stays as it is. :class:`timm_isomax.DisMaxLoss` with ``fpr=True`` scores the first half with the
entropic cross-entropy and the second with a KL term, and returns their mean::

    images, targets = fractional_probability_batch(images, labels, num_classes=10)
    loss = DisMaxLoss(fpr=True)(model(images), targets)

As in the reference implementation (dlmacedo/distinction-maximization-loss, ``DisMaxLossSecondPart.preprocess``),
except that the batch is not shuffled again first: the trainer's sampler already draws it in random order, and
not drawing keeps an interrupted run's random streams as they were. Soft targets (mixup / cutmix, applied first)
combine the same way: a quadrant image's target is the mean of its four sources' targets.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["QUADRANT_SOURCES", "MIN_FPR_BATCH", "plain_rows", "fpr_batch_problem", "fractional_probability_batch",
           "FractionalProbability"]

# Images a quadrant image is made of (its own and three others).
QUADRANT_SOURCES = 4
# The smallest batch whose second half (batch - batch // 2 images) holds four different source images.
MIN_FPR_BATCH = 2 * QUADRANT_SOURCES - 1


def plain_rows(batch_size: int) -> int:
    """How many leading rows of an FPR batch are left as they are; the other rows are quadrant images.

    Example:
        >>> plain_rows(64)
        32
    """
    return batch_size // 2


def fpr_batch_problem(batch_size: int) -> Optional[str]:
    """What stops a batch of ``batch_size`` images from carrying FPR, or None."""
    if batch_size < MIN_FPR_BATCH:
        return (f"fractional probability regularisation builds each image of the second half of a batch from "
                f"{QUADRANT_SOURCES} different images of that half, which needs a batch of at least {MIN_FPR_BATCH}, "
                f"got {batch_size}: raise the batch size (per process, under DDP), or drop --dismax-fpr.")
    return None


def _soft_targets(targets: torch.Tensor, batch: int, num_classes: Optional[int]) -> torch.Tensor:
    if targets.ndim == 1 and not targets.is_floating_point():
        if num_classes is None:
            raise ValueError("class-index targets need num_classes to become distributions; pass num_classes=C.")
        return F.one_hot(targets.long(), num_classes).float()
    if targets.ndim == 2 and targets.is_floating_point() and targets.shape[0] == batch:
        if num_classes is not None and targets.shape[1] != num_classes:
            raise ValueError(f"soft targets have {targets.shape[1]} classes, num_classes says {num_classes}.")
        return targets.float()
    raise ValueError(f"targets must be class indices ({batch},) or soft targets ({batch}, num_classes), got "
                     f"{tuple(targets.shape)} {targets.dtype}.")


def fractional_probability_batch(images: torch.Tensor, targets: torch.Tensor,
                                 num_classes: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The FPR version of a batch: ``(images, soft targets (B, C))``, the last ``B - B // 2`` rows rebuilt from
    quadrants (see the module docstring); ``images`` is not modified.

    Args:
        images: (B, C, H, W), H and W >= 2.
        targets: class indices (B,) (then ``num_classes`` is needed) or soft targets (B, num_classes).
        num_classes: the class count of index targets.

    Example:
        >>> images, targets = fractional_probability_batch(torch.randn(8, 3, 32, 32), torch.arange(8), 10)
        >>> targets[4]   # the quadrant image of rows 4, 7, 6, 5
        tensor([0.0000, 0.0000, 0.0000, 0.0000, 0.2500, 0.2500, 0.2500, 0.2500, 0.0000, 0.0000])
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or min(images.shape[2:]) < 2:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"fractional probability regularisation cuts images into quadrants: it needs a batch of "
                         f"images (B, C, H, W) with H, W >= 2, got {got} (cached features cannot carry it).")
    batch, _, height, width = images.shape
    problem = fpr_batch_problem(batch)
    if problem:
        raise ValueError(problem)
    soft = _soft_targets(targets, batch, num_classes)
    half, top, left = plain_rows(batch), height // 2, width // 2
    mixed = images.clone()
    quadrants = mixed[half:]  # a view: writing into it writes the batch
    # (rows, columns, how many images back its source is): the reference's layout, top-left kept
    for rows, columns, shift in ((slice(top, None), slice(None, left), 1), (slice(None, top), slice(left, None), 2),
                                 (slice(top, None), slice(left, None), 3)):
        quadrants[:, :, rows, columns] = torch.roll(images[half:, :, rows, columns], shift, 0)
    quadrant_targets = sum(torch.roll(soft[half:], shift, 0) for shift in range(QUADRANT_SOURCES)) / QUADRANT_SOURCES
    return mixed, torch.cat([soft[:half], quadrant_targets])


class FractionalProbability:
    """:func:`fractional_probability_batch` as a batch transform ``(images, targets) -> (images, targets)``
    for ``num_classes`` classes, like timm's ``Mixup`` (and applied after it)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return fractional_probability_batch(images, targets, self.num_classes)

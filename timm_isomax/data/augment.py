"""Augmentation of whole batches of image tensors, on the tensors' own device (a GPU where the data lives there):
shifts with padding (the CIFAR pad-and-crop, or airbench's reflected translate) and horizontal flips, one draw per
image, and the test-time views (flips and shifts) whose logits an evaluation averages.

Each augmented image is one gather of source pixels, so a batch costs one indexing operation whatever its size.
"""
from typing import List, Optional, Tuple

import torch

__all__ = ["PAD_MODES", "FLIPS", "TTA_LEVELS", "crop_flip", "draw_crop_flip", "tta_views"]

# What a shift brings in at the border: zeros (torchvision's RandomCrop(padding=p): black pixels before
# normalisation) or the image reflected (airbench's translate).
PAD_MODES = ("zeros", "reflect")
# How training flips are drawn: per image and batch (random), or airbench's alternating flips (a seeded flip per
# image, all of them inverted every other epoch: each image is seen both ways in every two epochs).
FLIPS = ("random", "alternating")
# Test-time augmentation of the final evaluation, airbench's levels: none; the mean of the image and its mirror;
# that, averaged half and half with the mirrored pair of each of two 1-pixel diagonal shifts (reflected borders).
TTA_LEVELS = ("none", "flip", "flip-translate")


def _source_index(length: int, shift: torch.Tensor, pad_mode: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    # (B, length) source positions of each output position, and where they fall inside the image (zeros mode)
    index = torch.arange(length, device=shift.device) + shift[:, None]
    if pad_mode == "reflect":
        index = index.abs()
        return torch.where(index > length - 1, 2 * (length - 1) - index, index), None
    inside = (index >= 0) & (index < length)
    return index.clamp(0, length - 1), inside


def crop_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad_mode: str = "zeros") -> torch.Tensor:
    """``images`` (B, C, H, W, any dtype) shifted and flipped: output pixel (y, x) of image b is source pixel
    (y + shifts[b, 0], x + shifts[b, 1]), then the image is mirrored left-right where ``flips[b]``. Pixels from
    outside the image are zero (``pad_mode="zeros"``: a pad-and-crop with padding >= the largest shift) or reflected
    (``"reflect"``). Exactly what torchvision's pad, crop at (p + dy, p + dx), then ``hflip`` give.

    Example:
        >>> shifts, flips = draw_crop_flip(len(batch), padding=4, generator=torch.Generator().manual_seed(0))
        >>> augmented = crop_flip(batch, shifts.to(batch.device), flips.to(batch.device))
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}.")
    count, _, height, width = images.shape
    rows, rows_inside = _source_index(height, shifts[:, 0], pad_mode)
    cols, cols_inside = _source_index(width, shifts[:, 1], pad_mode)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # the flip reads the cropped row backwards
    picked = images.permute(0, 2, 3, 1)[torch.arange(count, device=images.device)[:, None, None], rows[:, :, None],
                                        cols[:, None, :]]  # (B, H, W, C)
    if pad_mode == "zeros":
        cols_inside = torch.where(flips[:, None], cols_inside.flip(1), cols_inside)
        inside = rows_inside[:, :, None] & cols_inside[:, None, :]
        picked = picked * inside[..., None].to(picked.dtype)
    return picked.permute(0, 3, 1, 2).contiguous()


def draw_crop_flip(count: int, padding: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(shifts, flips)`` for ``count`` images: shifts uniform in [-padding, padding] per axis (a pad-and-crop's
    offsets), each image flipped with probability 1/2; drawn on the CPU from ``generator``, so a run draws the same
    augmentation on any device."""
    shifts = torch.randint(-padding, padding + 1, (count, 2), generator=generator)
    return shifts, torch.rand(count, generator=generator) < 0.5


def tta_views(images: torch.Tensor, level: str) -> List[Tuple[float, torch.Tensor]]:
    """``(weight, view)`` pairs whose weighted logits sum to airbench's test-time augmentation at ``level``
    (:data:`TTA_LEVELS`); the weights sum to 1. ``images`` are normalised (B, C, H, W).

    Example:
        >>> logits = sum(weight * model(view) for weight, view in tta_views(images, "flip-translate"))
    """
    if level not in TTA_LEVELS:
        raise ValueError(f"tta must be one of {', '.join(TTA_LEVELS)}, got {level!r}.")
    if level == "none":
        return [(1.0, images)]
    mirrored = [(0.5, images), (0.5, images.flip(-1))]
    if level == "flip":
        return mirrored
    count = len(images)
    views = [(weight / 2, view) for weight, view in mirrored]
    for shift in (-1, 1):  # one pixel up-left, one down-right, borders reflected
        shifts = torch.full((count, 2), shift, device=images.device)
        for flip in (False, True):
            flips = torch.full((count,), flip, device=images.device)
            views.append((0.125, crop_flip(images, shifts, flips, "reflect")))
    return views

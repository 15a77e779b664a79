"""Airbench's whitened first layer: the first convolution of a model set from the statistics of the training
images' patches of its kernel size, so that its outputs start decorrelated (each filter an eigenvector of the patch
covariance, scaled by one over the square root of its eigenvalue, once as is and once negated).

Where the convolution has fewer than twice as many filters as a patch has values, the leading eigenvectors (largest
variance) fill it; further filters keep their initialisation.
"""
from typing import Tuple

import torch
from torch import nn

__all__ = ["first_conv", "patch_whitening", "whiten_first_conv", "WHITENING_EPS"]

# Added to the eigenvalues before the square root (airbench's value): bounds the gain of near-constant directions.
WHITENING_EPS = 5e-4
# Images per chunk of the covariance sum (bounds the memory of unfolded patches).
_CHUNK = 256


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's first convolution, as its ``pretrained_cfg["first_conv"]`` names it; one line if there is none."""
    name = getattr(model, "pretrained_cfg", {}).get("first_conv")
    module = model.get_submodule(name) if isinstance(name, str) else None
    if not isinstance(module, nn.Conv2d) or module.groups != 1:
        raise ValueError(f"{type(model).__name__} names no ungrouped first convolution in pretrained_cfg['first_conv'] "
                         f"(got {name!r}); --whiten-stem needs one: train it with --whiten-stem none.")
    return module


@torch.no_grad()
def patch_whitening(images: torch.Tensor, kernel_size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(eigenvalues, eigenvectors)`` of the (uncentred) covariance of every ``kernel_size`` patch of ``images``
    (N, C, H, W, normalised), largest first; eigenvectors as filters (D, C, kh, kw), D = C * kh * kw."""
    channels, (height, width) = images.shape[1], kernel_size
    size = channels * height * width
    covariance, count = torch.zeros(size, size, dtype=torch.float64), 0
    for chunk in images.split(_CHUNK):
        patches = chunk.double().unfold(2, height, 1).unfold(3, width, 1)  # N, C, H', W', kh, kw
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, size)
        covariance += patches.T @ patches
        count += len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance / count)
    return eigenvalues.flip(0).float(), eigenvectors.T.flip(0).reshape(size, channels, height, width).float()


@torch.no_grad()
def whiten_first_conv(model: nn.Module, images: torch.Tensor, eps: float = WHITENING_EPS) -> nn.Conv2d:
    """Set ``model``'s first convolution from the patch whitening of ``images`` (normalised training images, e.g.
    5,000 of them); returns the convolution. Its bias, if any, is zeroed.

    Example:
        >>> conv = whiten_first_conv(model, train_images[:5000])
        >>> conv.weight.requires_grad_(False)  # airbench keeps it frozen
    """
    conv = first_conv(model)
    eigenvalues, eigenvectors = patch_whitening(images.to(conv.weight.device), conv.kernel_size)
    scaled = eigenvectors / torch.sqrt(eigenvalues.clamp(min=0) + eps).view(-1, 1, 1, 1)
    count = min(conv.out_channels // 2, len(scaled))
    conv.weight[:count] = scaled[:count].to(conv.weight)
    conv.weight[count:2 * count] = -scaled[:count].to(conv.weight)
    if conv.bias is not None:
        conv.bias.zero_()
    return conv

"""Inference over a loader and the AMP dtype, shared by the trainer and the evaluation. (The one training loop is
:mod:`timm_isomax.train.loop`; side-by-side timing is :mod:`timm_isomax.benchmark.timing`.)"""
from typing import Tuple

import torch
from torch import nn

__all__ = ["predict_logits", "amp_dtype"]


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype for ``device``: float16 on CUDA (with grad scaling), bfloat16 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device = torch.device("cpu"),
    amp: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) in float32 and labels (N,) for every batch of ``loader``, on the CPU."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
            all_logits.append(model(images.to(device, non_blocking=True)).float().cpu())
        all_labels.append(torch.as_tensor(labels))
    return torch.cat(all_logits), torch.cat(all_labels)

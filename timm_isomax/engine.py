"""Minimal training and inference loops shared by the demo, experiments and tests."""
from typing import Callable, Optional, Tuple

import torch
from torch import nn

__all__ = ["train_epoch", "predict", "amp_dtype"]


def train_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    device: torch.device = torch.device("cpu"),
) -> float:
    """One pass over ``loader``; returns the mean loss (one host sync, at the end)."""
    model.train()
    total = torch.zeros((), device=device)
    steps = 0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach()
        steps += 1
    return (total / max(steps, 1)).item()


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype for ``device``: float16 on CUDA (with grad scaling), bfloat16 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


@torch.no_grad()
def predict(
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

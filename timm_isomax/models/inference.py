"""Inference over a loader, the AMP dtype, and side-by-side timing, shared by the trainer, evaluation,
benchmarks and tests. (The one training loop is :mod:`timm_isomax.train.loop`.)"""
import statistics
import time
from typing import Callable, Dict, Mapping, Tuple

import torch
from torch import nn

__all__ = ["predict", "amp_dtype", "time_call", "interleaved_medians"]


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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> float:
    """Seconds one call of ``fn`` takes, with the device's queued work finished before and after."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(calls: Mapping[str, Callable[[], object]], rounds: int, warmup_rounds: int = 1,
                        device: torch.device = torch.device("cpu")) -> Dict[str, float]:
    """Median seconds per call of each of ``calls``, run in turn within each round.

    Interleaving makes the ratios between the calls hold on a busy or throttling machine: a slow period
    slows every contender of that round alike. The warm-up rounds (allocator, caches, autotuning) are
    not counted.

    Example:
        >>> medians = interleaved_medians({"linear": lambda: linear(x), "isomax+": lambda: head(x)}, rounds=7)
        >>> medians["isomax+"] / medians["linear"]
    """
    times = {name: [] for name in calls}
    for round_index in range(warmup_rounds + rounds):
        for name, fn in calls.items():
            elapsed = time_call(fn, device)
            if round_index >= warmup_rounds:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}

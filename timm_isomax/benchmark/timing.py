"""Side-by-side timing: median seconds of several calls interleaved round by round, inference throughput, and the
hardware a number was measured on. The benchmark, the scripts in ``scripts/`` and docs/performance.md use it."""
import functools
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Mapping

import torch
from torch import nn

__all__ = ["time_call", "interleaved_medians", "inference_throughput", "hardware_description"]


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


def hardware_description(device: torch.device) -> str:
    """The CPU model (or GPU name), thread count and torch version, for the record of a run."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}"


def inference_throughput(models: Mapping[str, nn.Module], images: torch.Tensor, rounds: int = 5,
                         device: torch.device = torch.device("cpu")) -> Dict[str, float]:
    """Images per second of each model's eval-mode forward on the batch ``images``, timed interleaved."""
    images = images.to(device)
    for model in models.values():
        model.eval().to(device)

    def forward(model):
        with torch.no_grad():
            model(images)

    medians = interleaved_medians({name: functools.partial(forward, model) for name, model in models.items()},
                                  rounds, device=device)
    return {name: len(images) / seconds for name, seconds in medians.items()}

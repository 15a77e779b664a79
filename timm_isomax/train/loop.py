"""The training loop: one epoch (or the rest of an interrupted one) of any head, on images or cached features."""
import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm  # imported here, not in the epoch: its first import would be timed as training

from ..models.inference import amp_dtype
from ..layers.losses import NonFiniteLossError
from .config import TrainConfig
from .runtime import Runtime, StopRequest

__all__ = ["EpochProgress", "train_epoch", "finite_mean"]

# What to do about a diverged run. Not "fix it, then --resume": a resume keeps the run's own settings (a changed
# lr is refused), so it helps only where the cause lay outside them.
DIVERGED_ADVICE = ("the last good checkpoint is kept. Start a new run with a lower --lr (or without --amp) in "
                   "another --output; --resume keeps this run's settings (a changed one is refused), so it helps only "
                   "where the cause lay elsewhere.")


@dataclass
class EpochProgress:
    """Where training is within one epoch: steps done (also those before a resume) and their summed loss."""

    epoch: int
    steps: int
    loss_sum: float
    global_step: int


def train_epoch(train_model: nn.Module, loader, loss_fn, optimizer, scheduler, scaler, batch_transform,
                runtime: Runtime, cfg: TrainConfig, progress: EpochProgress, stop: StopRequest, save_mid_epoch,
                frozen: Sequence[nn.Module] = (), description: str = "") -> float:
    """Train the rest of one epoch (``progress`` says where it starts and is advanced); returns the epoch's
    mean loss. ``batch_transform`` (or None) maps each ``(images, targets)`` batch first. Every
    ``cfg.checkpoint_every`` steps, and when a stop is requested, the loss is checked and
    ``save_mid_epoch(epoch, global_step, steps, loss_sum)`` writes a checkpoint. ``loader`` gives images (or
    a frozen backbone's cached features, when ``train_model`` is the head alone); ``frozen`` modules stay in
    eval mode (their batch-norm statistics stay as loaded)."""
    train_model.train()
    for module in frozen:
        module.eval()
    epoch, start_steps = progress.epoch, progress.steps
    total_loss = torch.full((), progress.loss_sum, device=runtime.device)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}" + description,
               disable=not (cfg.progress and runtime.is_main), unit="batch", leave=False)
    start = time.perf_counter()
    for images, targets in bar:
        images = images.to(runtime.device, non_blocking=True)
        targets = targets.to(runtime.device, non_blocking=True)
        if cfg.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        if batch_transform is not None:  # mixup / cutmix, DisMax's FPR: on the device, after augmentation
            images, targets = batch_transform(images, targets)
        try:
            with torch.autocast(runtime.device.type, dtype=amp_dtype(runtime.device), enabled=cfg.amp):
                loss = loss_fn(train_model(images), targets)
        except NonFiniteLossError as error:  # found by the loss itself (CPU tensors): same stop as below
            raise FloatingPointError(f"the training loss became non-finite in epoch {epoch + 1} (step "
                                     f"{progress.steps + 1}): {str(error).rstrip('.')}; {DIVERGED_ADVICE}") from None
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        progress.global_step += 1
        scheduler.step_update(num_updates=progress.global_step)
        total_loss += loss.detach()
        progress.steps += 1
        steps = progress.steps
        if steps % 20 == 0:  # a host sync only every 20 steps
            mean_loss = finite_mean(total_loss, steps, epoch)
            rate = (steps - start_steps) * images.shape[0] / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
        if stop.requested or (cfg.checkpoint_every and steps % cfg.checkpoint_every == 0):
            finite_mean(total_loss, steps, epoch)  # never save the state of a diverged run
            save_mid_epoch(epoch, progress.global_step, steps, total_loss.item())
            if stop.requested:
                raise KeyboardInterrupt
    return finite_mean(total_loss, progress.steps, epoch)


def finite_mean(total_loss: torch.Tensor, steps: int, epoch: int) -> float:
    # A NaN/inf loss poisons the running sum, so checking it at the sync points catches every bad step
    # before the epoch's checkpoint is written: the last good checkpoint stays on disk.
    mean = (total_loss / max(steps, 1)).item()
    if not math.isfinite(mean):
        raise FloatingPointError(f"the training loss became {mean} in epoch {epoch + 1} (by step {steps}); "
                                 f"{DIVERGED_ADVICE}")
    return mean

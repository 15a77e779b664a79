"""Fine-tune any SoftMax timm model as an IsoMax+ model on a ``datasets`` image dataset.

:func:`finetune` is the library behind ``scripts/finetune.py``:

1. the start model: a timm name with tag, ``hf-hub:`` / ``local-dir:`` name, or an architecture plus a
   checkpoint file (with a key map for foreign layouts); SoftMax models are converted
   (:func:`timm_isomax.convert_softmax_model`: prototypes from the classifier, or class means of the
   training data when the class count differs);
2. optional head-only epochs, then all layers, with timm's optimizer and scheduler factories, label
   smoothing and mixup/cutmix (soft targets), AMP;
3. per epoch: validation accuracy, the OOD score's statistics and, given OOD sets, AUROC; a JSON-lines log;
   at the end, the deployment threshold that accepts 95% of the validation images, saved in config.json;
   a checkpoint written atomically, from which ``resume=True`` continues exactly (every epoch reseeds all
   random number generators from (seed, epoch), so a resumed run equals an uninterrupted one);
4. the result: a Hub-ready folder (config.json + model.safetensors) that
   ``timm.create_model("local-dir:OUTPUT", pretrained=True)`` loads.

Runs on several GPUs or nodes under ``torchrun`` (DDP; gloo on CPU).

Layout of ``output``: ``config.json``, ``model.safetensors`` (the model), ``training/checkpoint.pt``,
``training/log.jsonl``, ``training/config.json`` (the run's settings), ``training/lock`` (held while a run
writes the folder: a second run on the same output is refused).
"""
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import timm.optim
import timm.scheduler
import torch
import torch.distributed as dist
from torch import nn

from .conversion import ConversionReport, class_mean_prototypes, convert_softmax_model, load_softmax_model
from .data import dataset_for_model, find_columns, load_image_dataset, model_data_config, model_in_chans
from .engine import amp_dtype, predict
from .hub import _atomic_write, save_pretrained
from .losses import IsoMaxLoss, IsoMaxPlusLoss
from .metrics import TPR_LEVEL, auroc
from .model import IsoMaxClassifier
from .ood import fit_ood_threshold, fit_threshold
from .registry import base_architecture, closest_models_hint
from .scores import get_score

__all__ = ["FinetuneConfig", "finetune", "build_start_model", "CHECKPOINT_NAME", "LOG_NAME"]

_logger = logging.getLogger(__name__)

TRAINING_DIR = "training"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
LOCK_NAME = "lock"
# Class-mean prototypes use at most this many training images (eval transform).
CLASS_MEAN_IMAGES = 5000


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run; ``scripts/finetune.py`` maps its flags onto these fields."""

    model: str
    dataset: str
    output: str
    checkpoint: Optional[str] = None
    key_map: Optional[str] = None
    from_scratch: bool = False
    head_type: str = "isomaxplus"
    train_split: str = "train"
    val_split: Optional[str] = None
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    ood_datasets: Sequence[str] = ()
    ood_split: str = "test"
    epochs: int = 5
    head_epochs: int = 0
    batch_size: int = 64
    opt: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sched: str = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    entropic_scale: float = 10.0
    img_size: Optional[int] = None
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    no_aug: bool = False
    amp: bool = False
    channels_last: bool = False
    seed: int = 0
    workers: int = 2
    train_limit: Optional[int] = None
    val_limit: Optional[int] = None
    resume: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        if self.head_type not in ("isomaxplus", "isomax"):
            raise ValueError(f"head_type must be 'isomaxplus' or 'isomax', got {self.head_type!r}.")
        if self.epochs < 1 or not 0 <= self.head_epochs <= self.epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= head_epochs <= epochs, got {self.epochs}, {self.head_epochs}.")
        if self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need batch_size >= 1 and lr > 0, got {self.batch_size}, {self.lr}.")

    def to_json(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --- distributed ----------------------------------------------------------------------------------
@dataclass
class _Runtime:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def _setup_runtime(device: str) -> _Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return _Runtime(rank, world_size, torch.device("cuda", local_rank))
    return _Runtime(rank, world_size, torch.device("cpu" if device == "auto" else device))


def _seed_everything(seed: int) -> None:
    # Reseeded at every epoch from (seed, epoch): a run resumed at an epoch boundary draws the same
    # random numbers (shuffling, augmentation, mixup, dropout) as an uninterrupted one.
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- start model ----------------------------------------------------------------------------------
def build_start_model(cfg: FinetuneConfig, num_classes: int, train_split) -> IsoMaxClassifier:
    """The IsoMax model fine-tuning starts from; ``model.conversion`` says how its head was initialised."""
    source, name = timm.models.parse_model_name(cfg.model)
    arch = timm.models.get_arch_name(name)

    def class_mean_batches(model: nn.Module):
        subset = dataset_for_model(model, train_split, limit=CLASS_MEAN_IMAGES, image_column=cfg.image_column,
                                   label_column=cfg.label_column)
        return torch.utils.data.DataLoader(subset, batch_size=cfg.batch_size, num_workers=cfg.workers)

    head_type = cfg.head_type
    if source is None and arch.endswith(("_isomaxplus", "_isomax")):
        base_arch, head_type = base_architecture(arch)  # start from the base's SoftMax weights, same tag
        name, arch = name.replace(arch, base_arch, 1), base_arch
    if source is None and not timm.is_model(arch):
        raise ValueError(f"unknown model {cfg.model!r}. {closest_models_hint(arch)}")
    if cfg.from_scratch:
        model = timm.create_model(f"{arch}_{head_type}", num_classes=num_classes)
        model.conversion = ConversionReport("fresh", "trained from scratch (from_scratch=True)")
        return model
    start = load_softmax_model(cfg.model if source else name, cfg.checkpoint, cfg.key_map)
    if isinstance(start, IsoMaxClassifier):  # a saved IsoMax model (local-dir:/hf-hub:)
        if start.num_classes != num_classes:
            start.reset_classifier(num_classes)
            with torch.no_grad():
                start.head.prototypes.copy_(class_mean_prototypes(
                    start.backbone, class_mean_batches(start), num_classes, start.head_type == "isomaxplus"))
            start.conversion = ConversionReport("class_means", "new class count: prototypes = class means")
        else:
            start.conversion = ConversionReport("loaded", "IsoMax model loaded as saved")
        return start
    data = class_mean_batches(start) if start.num_classes != num_classes or head_type != "isomaxplus" else None
    return convert_softmax_model(start, num_classes, head_type=head_type, data=data)


# --- evaluation -----------------------------------------------------------------------------------
def _evaluate(model: IsoMaxClassifier, val_loader, ood_loaders: Dict[str, Any], runtime: _Runtime,
              amp: bool) -> Tuple[Dict, torch.Tensor]:
    """The epoch's validation record, and the validation OOD scores (for the deployment threshold)."""
    score = get_score(model.ood_config["score"])
    val_logits, val_labels = predict(model, val_loader, runtime.device, amp)
    val_scores = score(val_logits).double()
    result = {"val_accuracy": (val_logits.argmax(1) == val_labels).double().mean().item(),
              "val_score_mean": val_scores.mean().item(), "val_score_std": val_scores.std().item()}
    for name, loader in ood_loaders.items():
        result[f"auroc/{name}"] = auroc(val_scores, score(predict(model, loader, runtime.device, amp)[0]))
    return result, val_scores


# --- the run --------------------------------------------------------------------------------------
def _resolve_val_split(cfg: FinetuneConfig, splits) -> str:
    if cfg.val_split:
        return cfg.val_split
    for candidate in ("validation", "val", "test"):
        if candidate in splits:
            return candidate
    raise ValueError(f"dataset {cfg.dataset!r} has no validation split among {sorted(splits)}; pass val_split.")


def _save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    _atomic_write(path, lambda tmp: torch.save(state, tmp))


@dataclass
class _LabelledData:
    train: Any
    val: Any
    val_split_name: str
    image_column: str
    label_column: str
    num_classes: int
    label_names: Optional[List[str]]


def _load_labelled_data(cfg: FinetuneConfig) -> _LabelledData:
    splits = load_image_dataset(cfg.dataset)
    if cfg.train_split not in splits:
        raise ValueError(f"dataset {cfg.dataset!r} has no split {cfg.train_split!r}; its splits are {sorted(splits)}.")
    val_split_name = _resolve_val_split(cfg, splits)
    train, val = splits[cfg.train_split], splits[val_split_name]
    image_column, label_column = find_columns(train, cfg.image_column, cfg.label_column)
    if label_column is None:
        raise ValueError(f"dataset {cfg.dataset!r} has no label column (ClassLabel, 'label' or 'labels'); "
                         f"fine-tuning needs labels: pass label_column (--label-column).")
    label_feature = train.features[label_column]
    num_classes = getattr(label_feature, "num_classes", None) or int(max(train[label_column])) + 1
    label_names = list(getattr(label_feature, "names", [])) or None
    if cfg.train_limit:
        train = train.select(range(min(cfg.train_limit, len(train))))
    return _LabelledData(train, val, val_split_name, image_column, label_column, num_classes, label_names)


def _resumed_model(state: Dict[str, Any], num_classes: int) -> IsoMaxClassifier:
    # The checkpoint names the IsoMax architecture and its preprocessing: rebuild it without the start
    # model's weights or conversion, which the checkpoint's weights replace anyway.
    model = timm.create_model(state["architecture"], num_classes=num_classes)
    model.pretrained_cfg = model.default_cfg = dict(state["pretrained_cfg"])
    model.conversion = ConversionReport("resumed", f"weights of epoch {state['epoch']} from the run's checkpoint")
    return model


def _optimization(cfg: FinetuneConfig, model: IsoMaxClassifier, updates_per_epoch: int, num_classes: int,
                  runtime: _Runtime):
    """Optimizer, scheduler, loss, mixup (or None) and grad scaler, from timm's factories."""
    optimizer = timm.optim.create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                               momentum=cfg.momentum)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    loss_cls = IsoMaxPlusLoss if model.head_type == "isomaxplus" else IsoMaxLoss
    mixup = (timm.data.Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                             num_classes=num_classes) if cfg.mixup > 0 or cfg.cutmix > 0 else None)
    # with mixup the targets carry the smoothing already
    loss_fn = loss_cls(entropic_scale=cfg.entropic_scale, label_smoothing=0.0 if mixup else cfg.smoothing)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and runtime.device.type == "cuda")
    return optimizer, scheduler, loss_fn, mixup, scaler


def finetune(cfg: FinetuneConfig) -> Path:
    """Run the fine-tuning described by ``cfg``; returns the output folder (a Hub-ready model folder).

    Example:
        >>> finetune(FinetuneConfig(model="cifar_resnet20", checkpoint="resnet20-12fca82f.th",
        ...                         key_map="akamaster-cifar-resnet", dataset="../shared/data/cifar10",
        ...                         output="out/cifar_resnet20_isomaxplus", epochs=3))
    """
    runtime = _setup_runtime(cfg.device)
    output = Path(cfg.output)
    with _output_lock(output / TRAINING_DIR, runtime.is_main):
        return _run(cfg, runtime, output)


@contextlib.contextmanager
def _output_lock(training_dir: Path, enabled: bool):
    """Hold an exclusive lock on ``training_dir`` for the run: a second run on the same output folder is
    refused instead of interleaving checkpoints. flock is released by the kernel when the process ends,
    also on SIGKILL, so a killed run never leaves a stale lock behind."""
    if not enabled:  # DDP: rank 0 holds the lock for the whole run
        yield
        return
    training_dir.mkdir(parents=True, exist_ok=True)
    with open(training_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FileExistsError(f"{training_dir.parent} is in use by another fine-tuning run ({holder}); wait for it "
                                  f"to finish or choose another output folder.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cfg: FinetuneConfig, runtime: _Runtime, output: Path) -> Path:
    training_dir = output / TRAINING_DIR
    checkpoint_path = training_dir / CHECKPOINT_NAME
    if checkpoint_path.exists() and not cfg.resume:
        raise FileExistsError(f"{output} already holds a run (its checkpoint {checkpoint_path}); pass resume=True "
                              f"(--resume) to continue it, or choose another output folder.")
    _seed_everything(cfg.seed)
    data = _load_labelled_data(cfg)
    resume_state = (torch.load(checkpoint_path, map_location="cpu", weights_only=True)
                    if cfg.resume and checkpoint_path.exists() else None)
    # checkpoints older than the "architecture" entry rebuild the start model, then load over it
    model = (_resumed_model(resume_state, data.num_classes) if resume_state and "architecture" in resume_state
             else build_start_model(cfg, data.num_classes, data.train)).to(runtime.device)
    if runtime.is_main:
        print(f"start model: {model.pretrained_cfg.get('architecture')} ({model.conversion.method}: "
              f"{model.conversion.reason}); {data.num_classes} classes, {len(data.train)} training images")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_config = {"input_size": (model_in_chans(model), cfg.img_size, cfg.img_size)} if cfg.img_size else {}
    columns = dict(image_column=data.image_column, label_column=data.label_column, data_config=data_config)
    augmentation = {} if cfg.no_aug else dict(is_training=True, scale=tuple(cfg.crop_scale))
    train_set = dataset_for_model(model, data.train, **augmentation, **columns)
    val_set = dataset_for_model(model, data.val, limit=cfg.val_limit, **columns)
    ood_sets = {source.rstrip("/").split("/")[-1]: dataset_for_model(model, source, split=cfg.ood_split,
                                                                     limit=cfg.val_limit, data_config=data_config)
                for source in cfg.ood_datasets}

    sampler = (torch.utils.data.distributed.DistributedSampler(train_set, runtime.world_size, runtime.rank,
                                                               shuffle=True, seed=cfg.seed, drop_last=True)
               if runtime.world_size > 1 else None)
    loader_kwargs = dict(batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=runtime.device.type == "cuda",
                         persistent_workers=False)
    val_loader = torch.utils.data.DataLoader(val_set, shuffle=False, **loader_kwargs)
    ood_loaders = {name: torch.utils.data.DataLoader(dataset, shuffle=False, **loader_kwargs)
                   for name, dataset in ood_sets.items()}
    updates_per_epoch = (len(sampler) if sampler else len(train_set)) // cfg.batch_size
    if updates_per_epoch < 1:
        raise ValueError(f"{len(train_set)} training images make no full batch of {cfg.batch_size}; lower batch_size.")
    optimizer, scheduler, loss_fn, mixup, scaler = _optimization(cfg, model, updates_per_epoch, data.num_classes, runtime)

    start_epoch, global_step = 0, 0
    if resume_state:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        start_epoch, global_step = resume_state["epoch"], resume_state["global_step"]
        if runtime.is_main:
            print(f"resumed from {checkpoint_path} after epoch {start_epoch}")
    if runtime.is_main:
        training_dir.mkdir(parents=True, exist_ok=True)
        (training_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))

    train_model, stage, val_scores = model, None, None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            _seed_everything(cfg.seed * 1000 + epoch)
            head_only = epoch < cfg.head_epochs
            if stage != head_only:  # (re)wrap for DDP whenever the set of trained parameters changes
                stage = head_only
                model.backbone.requires_grad_(not head_only)
                train_model = (nn.parallel.DistributedDataParallel(model, device_ids=[runtime.device.index] if
                                                                   runtime.device.type == "cuda" else None)
                               if runtime.world_size > 1 else model)
            if sampler:
                sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                train_set, sampler=sampler, shuffle=sampler is None, drop_last=True,
                generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch), **loader_kwargs)
            start = time.perf_counter()
            train_loss, global_step = _train_epoch(train_model, model, loader, loss_fn, optimizer, scheduler, scaler,
                                                   mixup, runtime, cfg, epoch, global_step, head_only)
            scheduler.step(epoch + 1)
            seconds = time.perf_counter() - start
            if runtime.is_main:
                evaluation, val_scores = _evaluate(model, val_loader, ood_loaders, runtime, cfg.amp)
                record = dict(epoch=epoch + 1, stage="head" if head_only else "all", train_loss=train_loss,
                              lr=optimizer.param_groups[0]["lr"], seconds=seconds,
                              images_per_second=updates_per_epoch * cfg.batch_size * runtime.world_size / seconds,
                              distance_scale=model.head.distance_scale.abs().item()
                              if hasattr(model.head, "distance_scale") else None, **evaluation)
                with open(training_dir / LOG_NAME, "a") as log:
                    log.write(json.dumps(record) + "\n")
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
                _save_checkpoint(checkpoint_path, dict(
                    model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(), epoch=epoch + 1, global_step=global_step, config=cfg.to_json(),
                    architecture=model.pretrained_cfg["architecture"], pretrained_cfg=dict(model.pretrained_cfg)))
            runtime.barrier()
    except KeyboardInterrupt:
        if runtime.is_main:
            print(f"interrupted: the last completed epoch is saved in {checkpoint_path}; continue with --resume.")
        raise
    if runtime.is_main:
        # the deployment threshold: accepts 95% of the validation images (stored in config.json)
        fitted_on = f"{cfg.dataset}:{data.val_split_name}" + (f"[:{cfg.val_limit}]" if cfg.val_limit else "")
        if val_scores is None:  # resumed after the last epoch: score the validation set once more
            fit_ood_threshold(model, val_loader, tpr=TPR_LEVEL, fitted_on=fitted_on, device=runtime.device)
        else:
            model.update_ood_config(threshold=fit_threshold(val_scores, TPR_LEVEL), tpr=TPR_LEVEL, fitted_on=fitted_on)
        save_pretrained(model, output, label_names=data.label_names, data_config=_export_data_config(model, data_config))
        print(f"saved the model to {output} (timm.create_model('local-dir:{output}', pretrained=True))")
    runtime.barrier()
    return output


def _export_data_config(model: nn.Module, overrides: Dict[str, Any]) -> Dict[str, Any]:
    # the preprocessing the model was fine-tuned with: its own, with the image size override if any
    config = model_data_config(model, overrides)
    return {k: config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")}


def _train_epoch(train_model, model, loader, loss_fn, optimizer, scheduler, scaler, mixup, runtime: _Runtime,
                 cfg: FinetuneConfig, epoch: int, global_step: int, head_only: bool) -> Tuple[float, int]:
    from tqdm.auto import tqdm

    train_model.train()
    if head_only:
        model.backbone.eval()  # frozen backbone: its batch-norm statistics stay as loaded
    total_loss = torch.zeros((), device=runtime.device)
    steps = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}" + (" (head)" if head_only else ""),
               disable=not (cfg.progress and runtime.is_main), unit="batch", leave=False)
    start = time.perf_counter()
    for images, targets in bar:
        images = images.to(runtime.device, non_blocking=True)
        targets = targets.to(runtime.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with torch.autocast(runtime.device.type, dtype=amp_dtype(runtime.device), enabled=cfg.amp):
            loss = loss_fn(train_model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        global_step += 1
        scheduler.step_update(num_updates=global_step)
        total_loss += loss.detach()
        steps += 1
        if steps % 20 == 0:  # a host sync only every 20 steps
            mean_loss = _finite_mean(total_loss, steps, epoch)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{steps * images.shape[0] / (time.perf_counter() - start):.0f}")
    return _finite_mean(total_loss, steps, epoch), global_step


def _finite_mean(total_loss: torch.Tensor, steps: int, epoch: int) -> float:
    # A NaN/inf loss poisons the running sum, so checking it at the sync points catches every bad step
    # before the epoch's checkpoint is written: the last good checkpoint stays on disk.
    mean = (total_loss / max(steps, 1)).item()
    if not math.isfinite(mean):
        raise FloatingPointError(f"the training loss became {mean} in epoch {epoch + 1} (by step {steps}); the last "
                                 f"good checkpoint is kept. Lower the learning rate or disable AMP, then --resume.")
    return mean

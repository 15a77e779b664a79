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
   a checkpoint written atomically at every epoch end (and every ``checkpoint_every`` steps), from which
   ``resume=True`` continues exactly: every epoch reseeds the random number generators from (seed, epoch),
   each training image's augmentation has its own seed (seed, epoch, index), and mid-epoch checkpoints
   carry the generators' states, so a resumed run ends with the same weights as an uninterrupted one;
   SIGINT or SIGTERM finishes the current step, saves a checkpoint and stops (a second signal stops at once);
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
import itertools
import json
import logging
import math
import os
import random
import signal
import threading
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
from tqdm.auto import tqdm  # imported here, not in the epoch: its first import would be timed as training

from .conversion import ConversionReport, class_mean_prototypes, convert_softmax_model, load_softmax_model
from .data import (check_labels, dataset_for_model, drop_undecodable_images, find_columns, load_image_dataset,
                   model_data_config, model_in_chans)
from .engine import amp_dtype, predict
from .hub import _atomic_write, save_pretrained
from .losses import IsoMaxLoss, IsoMaxPlusLoss, NonFiniteLossError
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
    checkpoint_every: int = 0
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
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: at epoch ends only), got {self.checkpoint_every}.")

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


def _rng_states() -> Dict[str, Any]:
    """The main process's generator states, in types that ``torch.load(weights_only=True)`` reads back."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = dict(python=random.getstate(), numpy=(name, keys.tolist(), position, has_gauss, cached),
                  torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _PerImageSeeds(torch.utils.data.Dataset):
    """Each training image is augmented from its own seed (run seed, epoch, index), whichever worker loads
    it and in whatever order: a run resumed in the middle of an epoch skips the images already trained on
    and augments the rest exactly as the uninterrupted run did. The caller's generator states are restored
    after each image, so loading in the main process (workers=0) leaves its random streams alone."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image_seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + index) % 2**63
        if torch.utils.data.get_worker_info() is not None:
            # a loader worker: nothing else draws from its generators, so no state to keep (saving and
            # restoring numpy's costs ~60 us per image, more than the seeding, on cores the model needs)
            self._seed(image_seed)
            return self.dataset[index]
        saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        self._seed(image_seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])

    @staticmethod
    def _seed(image_seed: int) -> None:
        random.seed(image_seed)
        np.random.seed(image_seed % 2**32)
        torch.default_generator.manual_seed(image_seed)  # not torch.manual_seed: that would reseed CUDA too


class _SkipFirst(torch.utils.data.Sampler):
    """``sampler`` without its first ``skip`` indices (never loaded): the rest of an interrupted epoch."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class _StopRequest:
    """SIGINT / SIGTERM while training: the current step finishes, a checkpoint is saved, then training
    stops with KeyboardInterrupt. A second signal stops at once (the checkpoint on disk stays whole: it is
    written atomically). Only in single-process runs from the main thread; under DDP the signals keep
    their default behaviour (the last checkpoint stays)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "_StopRequest":
        if self.enabled:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              f"(send it again to stop at once)", flush=True)


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
    """The training and validation splits, checked before any training starts: both non-empty, labels
    present and in range, undecodable images dropped with a warning giving their count (see
    :func:`timm_isomax.data.drop_undecodable_images`). Every problem is a one-line ``ValueError``."""
    splits = load_image_dataset(cfg.dataset)
    if cfg.train_split not in splits:
        raise ValueError(f"dataset {cfg.dataset!r} has no split {cfg.train_split!r}; its splits are {sorted(splits)}.")
    val_split_name = _resolve_val_split(cfg, splits)
    if val_split_name not in splits:
        raise ValueError(f"dataset {cfg.dataset!r} has no split {val_split_name!r}; its splits are {sorted(splits)}.")
    train, val = splits[cfg.train_split], splits[val_split_name]
    image_column, label_column = find_columns(train, cfg.image_column, cfg.label_column)
    if label_column is None:
        raise ValueError(f"dataset {cfg.dataset!r} has no label column (ClassLabel, 'label' or 'labels'); "
                         f"fine-tuning needs labels: pass label_column (--label-column).")
    find_columns(val, image_column, label_column)  # the validation split needs the same columns
    if cfg.train_limit:
        train = train.select(range(min(cfg.train_limit, len(train))))
    if cfg.val_limit:  # only these rows are evaluated: only they need checking
        val = val.select(range(min(cfg.val_limit, len(val))))
    for name, split in ((cfg.train_split, train), (val_split_name, val)):
        if len(split) == 0:
            raise ValueError(f"split {name!r} of dataset {cfg.dataset!r} is empty; choose another split or dataset.")
    label_feature = train.features[label_column]
    num_classes = getattr(label_feature, "num_classes", None) or _count_classes(train[label_column])
    label_names = list(getattr(label_feature, "names", [])) or None
    train, _ = drop_undecodable_images(train, image_column, name=f"split {cfg.train_split!r} of {cfg.dataset!r}")
    val, _ = drop_undecodable_images(val, image_column, name=f"split {val_split_name!r} of {cfg.dataset!r}")
    for name, split in ((cfg.train_split, train), (val_split_name, val)):
        check_labels(split, label_column, num_classes, name=f"split {name!r} of {cfg.dataset!r}")
    return _LabelledData(train, val, val_split_name, image_column, label_column, num_classes, label_names)


def _count_classes(labels: List[Any]) -> int:
    """The class count of an integer label column without ClassLabel names: its largest label + 1."""
    present = [y for y in labels if y is not None]
    return int(max(present)) + 1 if present else 1  # no labels at all: check_labels says so


# entries of a training checkpoint that resuming reads, and their types; mid-epoch checkpoints add _MID_EPOCH_ENTRIES
_RESUME_ENTRIES = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int, "global_step": int}
_MID_EPOCH_ENTRIES = {"step_in_epoch": int, "epoch_loss_sum": float, "rng": dict}


def _read_resume_state(path: Path) -> Dict[str, Any]:
    """The run's checkpoint, checked before anything is built from it; a damaged one is a one-line
    ``ValueError`` saying how to recover (the file is written atomically, so this means outside damage)."""
    advice = f"delete {path} to start the run over, or restore it from a backup"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for damaged files
        raise ValueError(f"cannot read the checkpoint {path} ({type(error).__name__}: "
                         f"{(str(error).splitlines() or [''])[0]}); {advice}.") from None
    problem = _resume_state_problem(state)
    if problem:
        raise ValueError(f"the checkpoint {path} is damaged: {problem}; {advice}.")
    return state


def _resume_state_problem(state: Any) -> Optional[str]:
    if not isinstance(state, dict):
        return f"it holds {type(state).__name__}, not a dict"
    for key, kind in _RESUME_ENTRIES.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            return f"entry {key!r} must be {'an integer >= 0' if kind is int else 'a dict'}, got {type(value).__name__}"
    if state.get("step_in_epoch", 0) != 0:
        for key, kind in _MID_EPOCH_ENTRIES.items():
            value = state.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
                return f"mid-epoch entry {key!r} must be {kind.__name__}, got {type(value).__name__}"
    if "architecture" in state:
        if not isinstance(state["architecture"], str) or not isinstance(state.get("pretrained_cfg"), dict):
            return "entries 'architecture' (a string) and 'pretrained_cfg' (a dict) have the wrong types"
        try:
            base_architecture(state["architecture"])
        except ValueError as error:
            return str(error).rstrip(".")
    return None


def _resumed_model(state: Dict[str, Any], num_classes: int) -> IsoMaxClassifier:
    # The checkpoint names the IsoMax architecture and its preprocessing: rebuild it without the start
    # model's weights or conversion, which the checkpoint's weights replace anyway.
    model = timm.create_model(state["architecture"], num_classes=num_classes)
    model.pretrained_cfg = model.default_cfg = dict(state["pretrained_cfg"])
    model.conversion = ConversionReport("resumed", f"weights of epoch {state['epoch']} from the run's checkpoint")
    return model


def _load_resumed_weights(model: nn.Module, state_dict: Dict[str, Any], path: Path) -> None:
    """Load the checkpoint's weights; a mismatch (another architecture or class count) is one line, not
    torch's multi-line key listing."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fit {model.pretrained_cfg.get('architecture')} with "
                         f"{model.num_classes} classes ({' '.join(str(error).split())[:300]}); resume with the "
                         f"run's own dataset and settings, or choose another output folder.") from None


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
    resume_state = _read_resume_state(checkpoint_path) if cfg.resume and checkpoint_path.exists() else None
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
    train_set = _PerImageSeeds(dataset_for_model(model, data.train, **augmentation, **columns), cfg.seed)
    val_set = dataset_for_model(model, data.val, **columns)  # val_limit applied by _load_labelled_data
    ood_sets = {source.rstrip("/").split("/")[-1]: dataset_for_model(model, source, split=cfg.ood_split,
                                                                     limit=cfg.val_limit, data_config=data_config,
                                                                     skip_undecodable=True)
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

    start_epoch, global_step, start_step = 0, 0, 0
    if resume_state:
        _load_resumed_weights(model, resume_state["model"], checkpoint_path)
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        start_epoch, global_step = resume_state["epoch"], resume_state["global_step"]
        start_step = resume_state.get("step_in_epoch", 0)
        if runtime.is_main:
            print(f"resumed from {checkpoint_path} after epoch {start_epoch}"
                  + (f", step {start_step} of epoch {start_epoch + 1}" if start_step else ""))
    if runtime.is_main:
        training_dir.mkdir(parents=True, exist_ok=True)
        (training_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
        _truncate_log(training_dir / LOG_NAME, start_epoch)

    def training_state(epoch: int, step: int, step_in_epoch: int = 0, epoch_loss_sum: float = 0.0) -> Dict[str, Any]:
        state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     scaler=scaler.state_dict(), epoch=epoch, global_step=step, config=cfg.to_json(),
                     architecture=model.pretrained_cfg["architecture"], pretrained_cfg=dict(model.pretrained_cfg))
        if step_in_epoch:
            state.update(step_in_epoch=step_in_epoch, epoch_loss_sum=epoch_loss_sum, rng=_rng_states())
        return state

    def save_mid_epoch(epoch: int, step: int, step_in_epoch: int, epoch_loss_sum: float) -> None:
        if runtime.is_main:
            _save_checkpoint(checkpoint_path, training_state(epoch, step, step_in_epoch, epoch_loss_sum))

    train_model, stage, val_scores = model, None, None
    stop = _StopRequest(enabled=runtime.world_size == 1)
    try:
        with stop:
            for epoch in range(start_epoch, cfg.epochs):
                epoch_seed = cfg.seed * 1000 + epoch  # every random stream of the epoch starts from it
                _seed_everything(epoch_seed)
                skip_steps = start_step if epoch == start_epoch else 0
                if skip_steps:  # the generators as they were when the mid-epoch checkpoint was written
                    _set_rng_states(resume_state["rng"])
                head_only = epoch < cfg.head_epochs
                if stage != head_only:  # (re)wrap for DDP whenever the set of trained parameters changes
                    stage = head_only
                    model.backbone.requires_grad_(not head_only)
                    train_model = (nn.parallel.DistributedDataParallel(model, device_ids=[runtime.device.index] if
                                                                       runtime.device.type == "cuda" else None)
                                   if runtime.world_size > 1 else model)
                train_set.epoch = epoch
                generator = torch.Generator().manual_seed(epoch_seed)
                if sampler:
                    sampler.set_epoch(epoch)
                epoch_sampler = (sampler if sampler is not None
                                 else torch.utils.data.RandomSampler(train_set, generator=generator))
                if skip_steps:
                    epoch_sampler = _SkipFirst(epoch_sampler, skip_steps * cfg.batch_size)
                loader = torch.utils.data.DataLoader(train_set, sampler=epoch_sampler, drop_last=True,
                                                     generator=generator, **loader_kwargs)
                start = time.perf_counter()
                epoch_progress = _EpochProgress(epoch, skip_steps, resume_state.get("epoch_loss_sum", 0.0)
                                                if skip_steps else 0.0, global_step)
                train_loss = _train_epoch(train_model, model, loader, loss_fn, optimizer, scheduler, scaler, mixup,
                                          runtime, cfg, epoch_progress, head_only, stop, save_mid_epoch)
                global_step = epoch_progress.global_step
                scheduler.step(epoch + 1)
                seconds = time.perf_counter() - start
                if runtime.is_main:
                    evaluation, val_scores = _evaluate(model, val_loader, ood_loaders, runtime, cfg.amp)
                    trained_images = (updates_per_epoch - skip_steps) * cfg.batch_size * runtime.world_size
                    record = dict(epoch=epoch + 1, stage="head" if head_only else "all", train_loss=train_loss,
                                  lr=optimizer.param_groups[0]["lr"], seconds=seconds,
                                  images_per_second=trained_images / seconds,
                                  distance_scale=model.head.distance_scale.abs().item()
                                  if hasattr(model.head, "distance_scale") else None, **evaluation)
                    # checkpoint first, then the log line: a kill between them loses a log line, never an epoch
                    _save_checkpoint(checkpoint_path, training_state(epoch + 1, global_step))
                    with open(training_dir / LOG_NAME, "a") as log:
                        log.write(json.dumps(record) + "\n")
                    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
                runtime.barrier()
                if stop.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if runtime.is_main:
            print(f"interrupted: progress is saved in {checkpoint_path}; continue with --resume.", flush=True)
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


@dataclass
class _EpochProgress:
    """Where training is within one epoch: steps done (also those before a resume) and their summed loss."""

    epoch: int
    steps: int
    loss_sum: float
    global_step: int


def _train_epoch(train_model, model, loader, loss_fn, optimizer, scheduler, scaler, mixup, runtime: _Runtime,
                 cfg: FinetuneConfig, progress: _EpochProgress, head_only: bool, stop: _StopRequest,
                 save_mid_epoch) -> float:
    """Train the rest of one epoch (``progress`` says where it starts and is advanced); returns the epoch's
    mean loss. Every ``cfg.checkpoint_every`` steps, and when a stop is requested, the loss is checked and
    ``save_mid_epoch(epoch, global_step, steps, loss_sum)`` writes a checkpoint."""
    train_model.train()
    if head_only:
        model.backbone.eval()  # frozen backbone: its batch-norm statistics stay as loaded
    epoch, start_steps = progress.epoch, progress.steps
    total_loss = torch.full((), progress.loss_sum, device=runtime.device)
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
        try:
            with torch.autocast(runtime.device.type, dtype=amp_dtype(runtime.device), enabled=cfg.amp):
                loss = loss_fn(train_model(images), targets)
        except NonFiniteLossError as error:  # found by the loss itself (CPU tensors): same stop as below
            raise FloatingPointError(f"the training loss became non-finite in epoch {epoch + 1} (step "
                                     f"{progress.steps + 1}): {str(error).rstrip('.')}; the last good checkpoint "
                                     f"is kept; after fixing it, --resume.") from None
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
            mean_loss = _finite_mean(total_loss, steps, epoch)
            rate = (steps - start_steps) * images.shape[0] / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
        if stop.requested or (cfg.checkpoint_every and steps % cfg.checkpoint_every == 0):
            _finite_mean(total_loss, steps, epoch)  # never save the state of a diverged run
            save_mid_epoch(epoch, progress.global_step, steps, total_loss.item())
            if stop.requested:
                raise KeyboardInterrupt
    return _finite_mean(total_loss, progress.steps, epoch)


def _truncate_log(path: Path, completed_epochs: int) -> None:
    """Keep only the log lines of the epochs the checkpoint holds: a resumed run rewrites the others."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("epoch", 0) <= completed_epochs]
    if len(kept) != len(lines):
        _atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))


def _finite_mean(total_loss: torch.Tensor, steps: int, epoch: int) -> float:
    # A NaN/inf loss poisons the running sum, so checking it at the sync points catches every bad step
    # before the epoch's checkpoint is written: the last good checkpoint stays on disk.
    mean = (total_loss / max(steps, 1)).item()
    if not math.isfinite(mean):
        raise FloatingPointError(f"the training loss became {mean} in epoch {epoch + 1} (by step {steps}); the last "
                                 f"good checkpoint is kept. Lower the learning rate or disable AMP, then --resume.")
    return mean

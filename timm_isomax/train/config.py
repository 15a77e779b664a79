"""Every setting of a training run, checked when the config is made (before any data or model loads)."""
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from ..data import AUGMENTATIONS, DEFAULT_VAL_FRACTION, FLIPS, PAD_MODES, TTA_LEVELS, subset_problem, val_fraction_problem
from ..ood.detectors import FEATURE_SCORES, LOGIT_SCORES, needs_features, score_problem
from ..ood.feature_scores import DEFAULT_BANK_LIMIT
from ..layers.fpr import fpr_batch_problem
from ..models.classifier import DEFAULT_OOD_SCORES, HEAD_TYPES, head_type_of_name

__all__ = ["TrainConfig", "HEADS", "DEFAULT_SCORES", "HEAD_SCORES", "ENTROPIC_SCALE", "WHITEN_STEM"]

# What the trainer can train: the plain timm model (linear classifier + cross-entropy) and every head kind.
HEADS = ("softmax", *HEAD_TYPES)
# The OOD score each head is monitored with and its deployment threshold fitted on, unless ``score`` says.
DEFAULT_SCORES: Dict[str, str] = {"softmax": "msp", **DEFAULT_OOD_SCORES}
# The logit scores of each head (the final evaluation adds the feature scores: timm_isomax.ood.detectors).
HEAD_SCORES: Dict[str, Tuple[str, ...]] = LOGIT_SCORES
# Settings added after runs were recorded: left out of to_json() at their default, so the records of older runs
# (compared key by key on --resume) stay the same records.
_ADDED_LATER: Dict[str, Any] = {"dismax_fpr": False, "test_split": None, "ood_val_datasets": (), "ood_val_split": "val",
                                "feature_bank": True, "bank_limit": DEFAULT_BANK_LIMIT, "data_on_device": False,
                                "decoded_cache": None, "flip": "random", "pad_mode": "zeros", "whiten_stem": "none",
                                "tta": "none"}
# How the first convolution starts: as built, or airbench's patch whitening (from training-patch statistics), then
# trained or frozen.
WHITEN_STEM = ("none", "init", "frozen")
# The IsoMax losses' entropic scale (cross-entropy on ``10 * logits``), both papers' value.
ENTROPIC_SCALE = 10.0


def _optimizer_problem(name: str) -> Optional[str]:
    import difflib

    import timm.optim

    known = timm.optim.list_optimizers()
    base = name.lower()
    base = base[len("lookahead_"):] if base.startswith("lookahead_") else base  # timm's Lookahead wrapper
    if base in known:
        return None
    close = difflib.get_close_matches(base, known, n=3)
    return (f"unknown optimizer {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
            + " (timm.optim.list_optimizers() lists them).")


# The names timm's scheduler factory may take (it keeps no list): each is asked of the installed timm before
# it is offered as a suggestion.
_SCHEDULER_NAMES = ("cosine", "tanh", "step", "multistep", "poly", "constant", "wsd", "rsqrt")


def _scheduler_error(name: str, epochs: int, warmup_epochs: int, min_lr: float) -> Optional[str]:
    """What timm's scheduler factory says to ``name`` for a run like this one (stepped per update, as the trainer
    steps it), or None; a throwaway optimizer stands in for the model's."""
    import timm.scheduler
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    try:
        timm.scheduler.create_scheduler_v2(optimizer, sched=name, num_epochs=epochs, warmup_epochs=warmup_epochs,
                                           min_lr=min_lr, step_on_epochs=False, updates_per_epoch=1)
    except Exception as error:  # timm raises ValueError for unknown names, AssertionError for plateau, ...
        return (str(error).splitlines() or [type(error).__name__])[0].rstrip(".")
    return None


def _scheduler_problem(name: str, epochs: int, warmup_epochs: int, min_lr: float) -> Optional[str]:
    import difflib

    error = _scheduler_error(name, epochs, warmup_epochs, min_lr)
    if error is None:
        return None
    if not error.startswith("Unknown scheduler"):
        return f"--sched {name} cannot drive this run (timm: {error}); the trainer steps the schedule every update."
    known = [n for n in _SCHEDULER_NAMES if _scheduler_error(n, 10, 0, 0.0) is None]
    close = difflib.get_close_matches(name.lower(), known, n=3)
    return (f"unknown scheduler {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
            + f" (the trainer can use timm's {', '.join(known)}).")


@dataclass
class TrainConfig:
    """Every setting of a run; the ``timm-isomax finetune`` flags map onto these fields.

    ``head``: ``softmax`` trains the plain timm model with cross-entropy (its output folder is a plain timm
    folder); ``isomax`` / ``isomaxplus`` / ``dismax`` convert the start model and train with the entropic loss
    (a ``model`` named ``<arch>_<head>`` picks its head itself: :attr:`effective_head`).
    ``dismax_fpr``: DisMax's fractional probability regularisation (:mod:`timm_isomax.layers.fpr`): the second half
    of every training batch becomes quadrant images of four images each, with fractional targets.
    ``freeze_backbone``: only the head trains, on features the frozen backbone computes once
    (``feature_cache``: a folder that keeps them between runs; default: in memory for this run).
    ``augmentation``: ``rrc`` (timm's random-resized crop and flip, ``crop_scale``), ``crop-flip`` (pad by
    ``crop_padding``, random crop, flip: the CIFAR recipe) or ``none``.
    ``ood_eval_every``: epochs between OOD AUROCs in the log (0: only the final evaluation, which always runs
    when ``ood_datasets`` are given and writes every score's metrics to ``training/evaluation.json``).
    ``score``: the OOD score of the threshold and of an IsoMax model's ``ood_config``; None: the one with the best
    mean AUROC of the ID validation images against the OOD validation sets (jigsaw puzzles of them, and
    ``ood_val_datasets`` read from ``ood_val_split``), among every score of the head (:mod:`timm_isomax.train.final`).
    ``test_split``: the ID split the final evaluation reports against ``ood_datasets`` (None: the validation split).
    ``data_on_device``: every split is decoded once into a uint8 tensor (``decoded_cache``: a folder that keeps it
    between runs) on the run's device, and training batches are augmented there as tensors (``crop-flip`` or
    ``none``; ``pad_mode`` zeros or reflect, ``flip`` random or alternating) instead of decoding JPEG every epoch.
    ``whiten_stem``: ``init`` / ``frozen`` start the first convolution from the whitening of its kernel-sized patches
    of the training images (airbench), ``frozen`` keeps it fixed. ``tta``: the final evaluation adds a ``tta`` record with
    the test-time augmented logits (flips, shifts); the main numbers stay without it.
    ``feature_bank``: save the training features beside the model (``feature_bank.safetensors``, at most
    ``bank_limit`` rows) for KNN and the post-hoc detectors.
    ``train_limit`` / ``val_limit`` (the latter also for the OOD sets): ``subset`` picks the rows, a
    class-balanced sample seeded by ``seed`` or the first rows. Without ``val_split`` and without a
    ``validation`` / ``val`` split, ``val_fraction`` of each class of the training split is held out.
    """

    model: str
    dataset: str
    output: str
    checkpoint: Optional[str] = None
    key_map: Optional[str] = None
    from_scratch: bool = False
    head: str = "isomaxplus"
    in_chans: Optional[int] = None
    train_split: str = "train"
    val_split: Optional[str] = None
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    ood_datasets: Sequence[str] = ()
    ood_split: str = "test"
    test_split: Optional[str] = None
    ood_val_datasets: Sequence[str] = ()
    ood_val_split: str = "val"
    score: Optional[str] = None
    epochs: int = 5
    head_epochs: int = 0
    freeze_backbone: bool = False
    feature_cache: Optional[str] = None
    batch_size: int = 64
    opt: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    head_weight_decay: Optional[float] = None
    sched: str = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    entropic_scale: Optional[float] = None
    dismax_fpr: bool = False
    img_size: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    interpolation: Optional[str] = None
    augmentation: str = "rrc"
    data_on_device: bool = False
    decoded_cache: Optional[str] = None
    flip: str = "random"
    pad_mode: str = "zeros"
    whiten_stem: str = "none"
    tta: str = "none"
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    crop_padding: int = 4
    amp: bool = False
    channels_last: bool = False
    seed: int = 0
    workers: int = 2
    train_limit: Optional[int] = None
    val_limit: Optional[int] = None
    subset: str = "balanced"
    val_fraction: float = DEFAULT_VAL_FRACTION
    ood_eval_every: int = 1
    feature_bank: bool = True
    bank_limit: int = DEFAULT_BANK_LIMIT
    checkpoint_every: int = 0
    resume: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        problem = self._problem()
        if problem:
            raise ValueError(problem)
        for name in ("crop_scale", "mean", "std"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("ood_datasets", "ood_val_datasets"):
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, str) else tuple(value))

    def _problem(self) -> Optional[str]:  # noqa: C901 (one flat list of checks reads best)
        if self.head not in HEADS:
            return f"head must be one of {', '.join(HEADS)}, got {self.head!r}."
        if self.epochs < 1 or not 0 <= self.head_epochs <= self.epochs:
            return f"need epochs >= 1 and 0 <= head_epochs <= epochs, got {self.epochs}, {self.head_epochs}."
        if self.batch_size < 1 or not self.lr > 0:
            return f"need batch_size >= 1 and lr > 0, got {self.batch_size}, {self.lr}."
        if self.checkpoint_every < 0 or self.ood_eval_every < 0:
            return "checkpoint_every and ood_eval_every must be >= 0 (0: at epoch ends only / at the end only)."
        if self.img_size is not None and self.img_size < 1:
            return f"img_size must be a positive number of pixels, got {self.img_size} (leave it out for the model's own)."
        if not math.isfinite(self.lr):
            return f"lr must be a finite number, got {self.lr}."
        if self.workers < 0:
            return f"workers must be >= 0 (0 loads the data in the main process), got {self.workers}."
        if self.train_limit is not None and 0 < self.train_limit < self.batch_size:
            return (f"train_limit {self.train_limit} makes no full batch of {self.batch_size} (the trainer drops "
                    f"incomplete batches); raise --train-limit or lower --batch-size.")
        optimizer_problem = _optimizer_problem(self.opt) or _scheduler_problem(self.sched, self.epochs,
                                                                               self.warmup_epochs, self.min_lr)
        if optimizer_problem:
            return optimizer_problem
        if self.augmentation not in AUGMENTATIONS:
            return f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}."
        data_problem = (self._decoded_problem() or subset_problem(self.subset)
                        or val_fraction_problem(self.val_fraction))
        if data_problem:
            return data_problem
        for name in ("train_limit", "val_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                return f"{name} must be a positive number of images, got {getattr(self, name)} (leave it out for all)."
        if self.in_chans is not None and self.in_chans not in (1, 3):
            return f"in_chans must be 1 (grey) or 3 (RGB), got {self.in_chans}."
        normalisation_problem = self._normalisation_problem()
        if normalisation_problem:
            return normalisation_problem
        if self.score is not None and score_problem(self.score):
            return score_problem(self.score)
        if self.bank_limit < 1:
            return f"bank_limit must be a positive number of training rows, got {self.bank_limit}."
        if self.score is not None and not self.feature_bank and needs_features(self.score) \
                and self.score not in FEATURE_SCORES:  # knn<k> and the post-hoc detectors read the bank
            return (f"--score {self.score} reads the feature bank of training features, which --no-feature-bank "
                    f"leaves out: drop --no-feature-bank, or pick a score without one.")
        if self.test_split is not None and self.test_split in (self.train_split, self.val_split):
            return (f"test_split {self.test_split!r} is also the {'training' if self.test_split == self.train_split else 'validation'} "
                    f"split: the test split must stay out of training and selection; name another split.")
        if self.head == "softmax":
            if self.entropic_scale is not None:
                return ("the entropic scale belongs to the IsoMax losses; --head softmax trains with plain "
                        "cross-entropy: drop --entropic-scale, or pick --head isomaxplus.")
            if self.score == "mds":
                return ("mds is the IsoMax+ score (its minimum distance); for a SoftMax model the same formula is "
                        "--score max_logit.")
        elif self.entropic_scale is not None and not self.entropic_scale > 0:
            return f"entropic_scale must be > 0, got {self.entropic_scale}."
        if self.dismax_fpr:
            if self.effective_head != "dismax":
                return (f"--dismax-fpr is DisMax's regularisation (its loss takes the quadrant images' fractional "
                        f"targets); the head is {self.effective_head}: add --head dismax, or drop --dismax-fpr.")
            if self.freeze_backbone:
                return ("--dismax-fpr builds images from quadrants of four images, which cached features cannot "
                        "carry: drop --freeze-backbone or --dismax-fpr.")
            batch_problem = fpr_batch_problem(self.batch_size)
            if batch_problem:
                return batch_problem
        if self.freeze_backbone:
            if self.augmentation != "none":
                return ("--freeze-backbone trains the head on features computed once, which augmentation would make "
                        "stale: add --no-aug (--augmentation none).")
            if self.mixup > 0 or self.cutmix > 0:
                return "--freeze-backbone trains on cached features; mixup and cutmix act on images: drop them."
            if self.head_epochs:
                return "--freeze-backbone trains only the head in every epoch; drop --head-epochs."
        elif self.feature_cache is not None:
            return "feature_cache holds a frozen backbone's features: it needs --freeze-backbone."
        if self.from_scratch and (self.checkpoint or self.freeze_backbone):
            return "--from-scratch starts from random weights: drop --checkpoint / --freeze-backbone."
        return None

    def _decoded_problem(self) -> Optional[str]:
        for name, value, choices in (("flip", self.flip, FLIPS), ("pad_mode", self.pad_mode, PAD_MODES),
                                     ("whiten_stem", self.whiten_stem, WHITEN_STEM), ("tta", self.tta, TTA_LEVELS)):
            if value not in choices:
                return f"{name} must be one of {', '.join(choices)}, got {value!r}."
        if self.whiten_stem != "none" and self.freeze_backbone:
            return "--whiten-stem sets the first convolution, which --freeze-backbone keeps as loaded: drop one of them."
        if not self.data_on_device:
            if self.decoded_cache is not None or self.flip != "random" or self.pad_mode != "zeros":
                return ("--decoded-cache, --flip alternating and --pad-mode reflect belong to the decoded tensors of "
                        "--data-on-device: add --data-on-device.")
            return None
        if self.augmentation == "rrc":
            return ("--data-on-device augments batched tensors with crop-flip or none; timm's random-resized crop "
                    "works on PIL images: add --augmentation crop-flip (or --no-aug).")
        if self.freeze_backbone:
            return "--freeze-backbone trains on cached features, not images: drop --data-on-device."
        if self.pad_mode == "reflect" and self.crop_padding >= (self.img_size or 32):
            return f"--pad-mode reflect needs --crop-padding smaller than the image, got {self.crop_padding}."
        return None

    def _normalisation_problem(self) -> Optional[str]:
        # timm's transforms assert on a channel mismatch and torchvision's Normalize divides by std: both fail
        # late, after the data and model load, with a bare AssertionError or a long traceback
        chans = self.in_chans or 3  # a model's own input is RGB unless --in-chans says otherwise
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            shown = " ".join(f"{v:g}" for v in values)
            if len(values) not in (1, chans):
                expected = "1 value (--in-chans 1)" if chans == 1 else f"1 value (for every channel) or {chans}, one per input channel"
                return (f"--{name} needs {expected}, got {len(values)} ({shown})"
                        + ("." if self.in_chans else "; for a grey model add --in-chans 1."))
            if not all(math.isfinite(v) for v in values) or (name == "std" and not all(v > 0 for v in values)):
                return f"--{name} values must be finite" + (" and > 0 (each channel is divided by its std)" if name == "std"
                                                            else "") + f", got {shown}."
        return None

    @property
    def effective_head(self) -> str:
        """The head trained: the one a registry name ``<arch>_<head>[.tag]`` in ``model`` names, else ``head``.

        Example:
            >>> TrainConfig(model="resnet10t_dismax", dataset="d", output="o").effective_head
            'dismax'
        """
        # hf-hub: / local-dir: models carry their head in their own config
        named = None if ":" in self.model else head_type_of_name(self.model)
        return named or self.head

    @property
    def ood_score(self) -> str:
        """The logit score the per-epoch log reports: ``score`` where it is a logit score, else the head's own (a
        feature score reads the pre-logits and the feature bank, which the final evaluation scores and records)."""
        return self.score if self.score and not needs_features(self.score) else DEFAULT_SCORES[self.effective_head]

    @property
    def loss_entropic_scale(self) -> float:
        return ENTROPIC_SCALE if self.entropic_scale is None else self.entropic_scale

    def to_json(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if not (k in _ADDED_LATER and v == _ADDED_LATER[k])}

"""What a run optimises and how: loss per head, timm's optimizer and scheduler factories, batch transforms (mixup,
DisMax's fractional probability regularisation), AMP scaling."""
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import timm
import timm.optim
import timm.scheduler
import torch
from torch import nn

from ..layers.fpr import FractionalProbability
from ..layers.losses import DisMaxLoss, IsoMaxLoss, IsoMaxPlusLoss
from .config import TrainConfig

__all__ = ["make_loss", "make_optimization", "classifier_of", "BatchTransform"]

_ISOMAX_LOSSES = {"isomaxplus": IsoMaxPlusLoss, "isomax": IsoMaxLoss, "dismax": DisMaxLoss}
# (images, targets) -> (images, targets), applied to every training batch before the forward pass
BatchTransform = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def classifier_of(model: nn.Module) -> nn.Module:
    """The module holding the class-specific parameters: the IsoMax head, or the SoftMax classifier."""
    head = getattr(model, "head", None) if hasattr(model, "head_type") else None
    return head if head is not None else model.get_classifier()


def make_loss(head: str, cfg: TrainConfig, soft_targets: bool) -> nn.Module:
    """Cross-entropy for ``softmax``; the entropic loss (cross-entropy on ``scale * logits``) for the IsoMax
    and DisMax heads (DisMax's with ``cfg.dismax_fpr``). With soft (mixup) targets the smoothing is already in
    the targets."""
    smoothing = 0.0 if soft_targets else cfg.smoothing
    if head == "softmax":
        return nn.CrossEntropyLoss(label_smoothing=smoothing)
    if cfg.dismax_fpr and head != "dismax":  # the config checks the head it is told; a saved start model has its own
        raise ValueError(f"--dismax-fpr needs a DisMax head, but the start model has a {head} head: start from a "
                         f"DisMax model or a SoftMax checkpoint with --head dismax, or drop --dismax-fpr.")
    extra = {"fpr": True} if cfg.dismax_fpr else {}
    return _ISOMAX_LOSSES[head](entropic_scale=cfg.loss_entropic_scale, label_smoothing=smoothing, **extra)


def _chain(transforms: List[BatchTransform]) -> Optional[BatchTransform]:
    if not transforms:
        return None

    def chained(images: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        for transform in transforms:
            images, targets = transform(images, targets)
        return images, targets
    return chained


def _parameter_groups(module: nn.Module, classifier: nn.Module, cfg: TrainConfig) -> Union[nn.Module, List[Dict]]:
    # timm's own grouping (no decay on biases and norms), with the classifier's parameters (prototypes and
    # distance scale included) in a group of their own where head_weight_decay says so
    if cfg.head_weight_decay is None:
        return module
    no_decay = module.no_weight_decay() if hasattr(module, "no_weight_decay") else ()
    groups = timm.optim.param_groups_weight_decay(module, cfg.weight_decay, no_weight_decay_list=no_decay)
    head_ids = {id(p) for p in classifier.parameters()}
    kept = [dict(g, params=[p for p in g["params"] if id(p) not in head_ids]) for g in groups]
    head_group = {"params": [p for p in classifier.parameters() if p.requires_grad], "weight_decay": cfg.head_weight_decay}
    return [g for g in kept if g["params"]] + [head_group]


def make_optimization(cfg: TrainConfig, module: nn.Module, classifier: nn.Module, head: str, updates_per_epoch: int,
                      num_classes: int, device: torch.device) -> Dict[str, Any]:
    """Optimizer, scheduler, loss, the batch transform (or None) and grad scaler for training ``module`` (the
    whole model, or the head alone on cached features), from timm's factories. The batch transform is mixup /
    cutmix, then DisMax's FPR: quadrants of mixed images carry the mean of their sources' mixed targets (FPR
    first would let mixup's flipped pairs blend plain and quadrant rows, whose losses differ)."""
    optimizer = timm.optim.create_optimizer_v2(_parameter_groups(module, classifier, cfg), opt=cfg.opt, lr=cfg.lr,
                                               weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    mixup = (timm.data.Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                             num_classes=num_classes) if cfg.mixup > 0 or cfg.cutmix > 0 else None)
    loss_fn = make_loss(head, cfg, soft_targets=mixup is not None)
    transforms = [mixup] if mixup is not None else []
    if cfg.dismax_fpr:
        transforms.append(FractionalProbability(num_classes))
    return dict(optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, batch_transform=_chain(transforms),
                scaler=torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda"))

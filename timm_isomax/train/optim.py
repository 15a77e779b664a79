"""What a run optimises and how: loss per head, timm's optimizer and scheduler factories, mixup, AMP scaling."""
from typing import Any, Dict, List, Union

import timm
import timm.optim
import timm.scheduler
import torch
from torch import nn

from ..losses import IsoMaxLoss, IsoMaxPlusLoss
from .config import TrainConfig

__all__ = ["make_loss", "make_optimization", "classifier_of"]

_ISOMAX_LOSSES = {"isomaxplus": IsoMaxPlusLoss, "isomax": IsoMaxLoss}


def classifier_of(model: nn.Module) -> nn.Module:
    """The module holding the class-specific parameters: the IsoMax head, or the SoftMax classifier."""
    head = getattr(model, "head", None) if hasattr(model, "head_type") else None
    return head if head is not None else model.get_classifier()


def make_loss(head: str, cfg: TrainConfig, soft_targets: bool) -> nn.Module:
    """Cross-entropy for ``softmax``; the entropic loss (cross-entropy on ``scale * logits``) for the IsoMax
    heads. With soft (mixup) targets the smoothing is already in the targets."""
    smoothing = 0.0 if soft_targets else cfg.smoothing
    if head == "softmax":
        return nn.CrossEntropyLoss(label_smoothing=smoothing)
    return _ISOMAX_LOSSES[head](entropic_scale=cfg.loss_entropic_scale, label_smoothing=smoothing)


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
    """Optimizer, scheduler, loss, mixup (or None) and grad scaler for training ``module`` (the whole model,
    or the head alone on cached features), from timm's factories."""
    optimizer = timm.optim.create_optimizer_v2(_parameter_groups(module, classifier, cfg), opt=cfg.opt, lr=cfg.lr,
                                               weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    mixup = (timm.data.Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                             num_classes=num_classes) if cfg.mixup > 0 or cfg.cutmix > 0 else None)
    return dict(optimizer=optimizer, scheduler=scheduler, loss_fn=make_loss(head, cfg, soft_targets=mixup is not None),
                mixup=mixup, scaler=torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda"))

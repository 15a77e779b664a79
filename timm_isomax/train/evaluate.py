"""What a run measures: per epoch, validation accuracy, the OOD score's statistics and AUROC per OOD set;
at the end, every score of the head on every OOD set with all of :func:`~timm_isomax.ood.metrics.ood_metrics`."""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..models.inference import predict_logits
from ..ood.metrics import auroc, ood_metrics
from ..layers.scores import get_score

__all__ = ["EvalLoaders", "Logits", "evaluate_epoch", "final_evaluation"]


@dataclass
class EvalLoaders:
    """The module that maps a loader's inputs to logits (the model, or the head on cached features), with
    the validation loader and one loader per OOD set."""

    module: nn.Module
    val: torch.utils.data.DataLoader
    ood: Dict[str, torch.utils.data.DataLoader] = field(default_factory=dict)


@dataclass
class Logits:
    val: torch.Tensor
    val_labels: torch.Tensor
    ood: Dict[str, torch.Tensor]


def evaluate_epoch(loaders: EvalLoaders, score_name: str, device: torch.device, amp: bool,
                   with_ood: bool) -> "tuple[Dict, Logits]":
    """The epoch's log record and the logits it was computed from (OOD sets only ``with_ood``)."""
    score = get_score(score_name)
    val_logits, val_labels = predict_logits(loaders.module, loaders.val, device, amp)
    ood_logits = {name: predict_logits(loaders.module, loader, device, amp)[0]
                  for name, loader in loaders.ood.items()} if with_ood else {}
    val_scores = score(val_logits).double()
    record = {"val_accuracy": (val_logits.argmax(1) == val_labels).double().mean().item(),
              "val_score_mean": val_scores.mean().item(), "val_score_std": val_scores.std().item()}
    for name, logits in ood_logits.items():
        record[f"auroc/{name}"] = auroc(val_scores, score(logits))
    return record, Logits(val_logits, val_labels, ood_logits)


def final_evaluation(logits: Logits, score_names: Sequence[str], head: str,
                     throughput: Optional[float] = None) -> Dict:
    """Accuracy on the validation set and, per score and OOD set, every OOD metric (ID positive):
    ``result["metrics"][score][ood]["auroc"]``."""
    result = {"head": head, "accuracy": (logits.val.argmax(1) == logits.val_labels).double().mean().item(),
              "val_images": len(logits.val), "ood_images": {name: len(v) for name, v in logits.ood.items()},
              "metrics": {}}
    for score_name in score_names:
        score = get_score(score_name)
        id_scores = score(logits.val)
        result["metrics"][score_name] = {name: ood_metrics(id_scores, score(ood)) for name, ood in logits.ood.items()}
    return result

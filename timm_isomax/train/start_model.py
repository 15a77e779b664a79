"""The model a run starts from: a SoftMax checkpoint kept as it is (``head="softmax"``) or converted to an
IsoMax head, a saved IsoMax model, or random weights."""
from typing import Any, Dict

import timm
import torch
from torch import nn

from ..models.conversion import (ConversionReport, class_mean_prototypes, convert_softmax_model, load_softmax_model,
                          uses_unit_vectors)
from ..data import dataset_for_model, model_in_chans
from ..models.classifier import IsoMaxClassifier
from ..models.factory import closest_models_hint
from ..models.registry import base_architecture
from .config import TrainConfig

__all__ = ["build_start_model", "model_kwargs", "data_config_overrides"]

# Class-mean prototypes use at most this many training images (eval transform).
CLASS_MEAN_IMAGES = 5000


def model_kwargs(cfg: TrainConfig) -> Dict[str, Any]:
    """Construction arguments the config adds to the architecture's (recorded in checkpoints)."""
    return {"in_chans": cfg.in_chans} if cfg.in_chans is not None else {}


def data_config_overrides(cfg: TrainConfig, model: nn.Module) -> Dict[str, Any]:
    """The preprocessing the config sets over the model's own data config (size, mean, std, interpolation)."""
    overrides: Dict[str, Any] = {}
    if cfg.img_size:
        overrides["input_size"] = (model_in_chans(model), cfg.img_size, cfg.img_size)
    for key in ("mean", "std", "interpolation"):
        if getattr(cfg, key) is not None:
            overrides[key] = getattr(cfg, key)
    return overrides


def build_start_model(cfg: TrainConfig, num_classes: int, train_split) -> nn.Module:
    """The model training starts from; ``model.conversion`` says how its head was initialised.

    ``cfg.model`` naming ``<arch>_isomaxplus`` / ``<arch>_isomax`` / ``<arch>_dismax`` picks that head (from the
    base's SoftMax weights under the same tag); with ``head="softmax"`` such a name is refused.
    """
    source, name = timm.models.parse_model_name(cfg.model)
    arch = timm.models.get_arch_name(name)
    head = cfg.effective_head
    if source is None and arch.endswith(f"_{head}"):  # a registered <arch>_<head> name
        base_arch, _ = base_architecture(arch)
        if cfg.head == "softmax":
            raise ValueError(f"--model {cfg.model!r} names an IsoMax architecture but --head is softmax: name the "
                             f"base architecture ({base_arch}) for a SoftMax run.")
        name, arch = name.replace(arch, base_arch, 1), base_arch
    if source is None and not timm.is_model(arch):
        raise ValueError(f"unknown model {cfg.model!r}. {closest_models_hint(arch)}")
    kwargs = model_kwargs(cfg)

    def class_mean_batches(model: nn.Module):
        # the run's own preprocessing: features at another image size would give other class means
        subset = dataset_for_model(model, train_split, limit=CLASS_MEAN_IMAGES, image_column=cfg.image_column,
                                   label_column=cfg.label_column, data_config=data_config_overrides(cfg, model))
        return torch.utils.data.DataLoader(subset, batch_size=cfg.batch_size, num_workers=cfg.workers)

    if cfg.from_scratch:
        model = timm.create_model(arch if head == "softmax" else f"{arch}_{head}", num_classes=num_classes, **kwargs)
        model.conversion = ConversionReport("fresh", "trained from scratch (from_scratch=True)")
        return model
    start = load_softmax_model(cfg.model if source else name, cfg.checkpoint, cfg.key_map, **kwargs)
    if isinstance(start, IsoMaxClassifier):  # a saved IsoMax model (local-dir:/hf-hub:)
        if head == "softmax":
            raise ValueError(f"{cfg.model} is an IsoMax model ({start.head_type}); --head softmax needs a SoftMax "
                             f"start model.")
        if start.head_type != head:  # the loss, scores and threshold follow --head: they must be the model's own
            raise ValueError(f"{cfg.model} holds the {start.head_type} head but --head is {head}: pass --head "
                             f"{start.head_type} to fine-tune it, or start from a SoftMax model to convert it to {head}.")
        if start.num_classes != num_classes:
            start.reset_classifier(num_classes)
            with torch.no_grad():
                start.head.prototypes.copy_(class_mean_prototypes(
                    start.backbone, class_mean_batches(start), num_classes, uses_unit_vectors(start.head_type)))
            start.conversion = ConversionReport("class_means", "new class count: prototypes = class means")
        else:
            start.conversion = ConversionReport("loaded", "IsoMax model loaded as saved")
        return start
    if head == "softmax":
        if start.num_classes != num_classes:
            start.reset_classifier(num_classes)
            start.conversion = ConversionReport("new_classifier", f"new class count: a fresh {num_classes}-class "
                                                                  f"linear classifier")
        else:
            start.conversion = ConversionReport("loaded", "SoftMax model loaded as saved")
        return start
    data = class_mean_batches(start) if start.num_classes != num_classes or not uses_unit_vectors(head) else None
    return convert_softmax_model(start, num_classes, head_type=head, data=data, copy=False)

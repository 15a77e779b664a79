"""Frozen-backbone training: the backbone's pre-logit features are computed once and cached, so every
head-only epoch costs a pass of the head over a tensor instead of a forward pass of the network.

A cache file is keyed by everything the features depend on: the backbone's weights (a hash of its
tensors), the preprocessing (the transform's description), and the dataset rows (a digest of their content,
:func:`timm_isomax.data.content_fingerprint`, and their count). Other weights, another image size or other
rows give another key, never stale features; a copy of the same data finds the same entries.
"""
import hashlib
from pathlib import Path
from typing import Callable, Optional, Tuple

import datasets
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.images import content_fingerprint
from ..ood.detectors import model_parts
from ..models.inference import amp_dtype
from .._io import cached_tensors, content_key
from ..models.classifier import IsoMaxClassifier

__all__ = ["frozen_parts", "backbone_fingerprint", "FeatureCache", "compute_features"]

Extractor = Callable[[torch.Tensor], torch.Tensor]


def frozen_parts(model: nn.Module) -> Tuple[Extractor, nn.Module]:
    """``(features_of, head)`` of ``model``, with ``model(x) == head(features_of(x))``
    (:func:`timm_isomax.ood.detectors.model_parts`); a model whose logits are not one module on its pre-logits is a
    one-line ``ValueError``: a frozen backbone needs a head that is one module on cached features."""
    try:
        return model_parts(model)
    except ValueError as error:
        raise ValueError(f"--freeze-backbone needs a model whose logits are one linear layer on its pre-logits; "
                         f"{error}. Train it without --freeze-backbone (or --head-epochs).") from None


def backbone_fingerprint(model: nn.Module, head: nn.Module) -> str:
    """A hash of ``model``'s parameters and buffers outside ``head`` (names, shapes, dtypes, values), named as
    in the base model: a SoftMax model and its IsoMax conversion share their backbone, so its features too."""
    digest = hashlib.sha256()
    head_ids = {id(p) for p in head.parameters()}
    source = model.backbone if isinstance(model, IsoMaxClassifier) else model
    for name, tensor in source.state_dict(keep_vars=True).items():
        if id(tensor) in head_ids:
            continue
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:16]


@torch.no_grad()
def compute_features(features_of: Extractor, model: nn.Module, dataset: torch.utils.data.Dataset, batch_size: int,
                     device: torch.device, amp: bool = False, workers: int = 0, progress: bool = False,
                     description: str = "features") -> Tuple[torch.Tensor, torch.Tensor]:
    """The features (N, D) in float32 and labels (N,) of ``dataset``, ``model`` in eval mode."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    all_features, all_labels = [], []
    for images, labels in tqdm(loader, desc=description, disable=not progress, unit="batch", leave=False):
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
            all_features.append(features_of(images.to(device, non_blocking=True)).float().cpu())
        all_labels.append(torch.as_tensor(labels))
    return torch.cat(all_features), torch.cat(all_labels)


class FeatureCache:
    """Features of a frozen backbone, per dataset, in memory and, given ``folder``, on disk between runs.

    Example:
        >>> features_of, head = frozen_parts(model)
        >>> cache = FeatureCache("outputs/feature_cache", model, device)
        >>> train_features, train_labels = cache.get(train_set, "train", batch_size=256)
    """

    def __init__(self, folder: Optional[str], model: nn.Module, device: torch.device, amp: bool = False,
                 workers: int = 0, progress: bool = False):
        self.folder = Path(folder) if folder else None
        self.features_of, head = frozen_parts(model)
        self.model, self.device = model, device
        self.amp, self.workers, self.progress = amp, workers, progress
        self.fingerprint = backbone_fingerprint(model, head)
        self.computed, self.loaded = 0, 0  # how many sets were computed / read from disk (for the log)

    def key(self, dataset) -> str:
        rows = getattr(dataset, "dataset", None)
        description = dict(backbone=self.fingerprint, amp=self.amp, transform=repr(getattr(dataset, "transform", None)),
                           mode=getattr(dataset, "mode", None), rows=len(dataset),
                           data=content_fingerprint(rows) if isinstance(rows, datasets.Dataset) else repr(rows))
        return content_key(description)

    def get(self, dataset, name: str, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        def compute():
            features, labels = compute_features(self.features_of, self.model, dataset, batch_size, self.device,
                                                self.amp, self.workers, self.progress, f"features of {name}")
            return {"features": features, "labels": labels.long()}

        path = self.folder / f"{self.key(dataset)}.safetensors" if self.folder else None
        tensors, loaded = cached_tensors(path, compute, metadata={"set": name})
        self.loaded, self.computed = self.loaded + loaded, self.computed + (not loaded)
        return tensors["features"], tensors["labels"]

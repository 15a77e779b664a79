"""OOD scores that read the pre-logit features ``f`` (and the head's class vectors) besides the logits.

Every score follows the convention of :mod:`timm_isomax.layers.scores`: higher = more in-distribution, float64.

* :func:`feature_norm`: ``||f||``. On the CIFAR-10 runs it alone gives AUROC 99 against the far OOD sets
  (docs/benchmarks.md, "Where the features lie"), and IsoMax+ / DisMax logits divide it out.
* :func:`norm_cosine`: ``||f|| * max_c cos(f, v_c)``, the unit-prototype logit on the *unnormalised* feature,
  T2FNorm's idea (Regmi et al., CVPRW 2024: train on normalised features, score on the raw ones). ``v_c`` are
  the head's class vectors: the prototypes of IsoMax+ and DisMax (which train on the sphere: this puts the
  norm back), the prototypes of IsoMax (its logits ``-||f - p_c||`` already see the norm, but inverted where
  the prototypes stay small: the cosine reads the direction alone), or a linear classifier's rows (SoftMax).
* :func:`knn`: the ``k``-th largest cosine similarity of ``f`` to a :class:`FeatureBank` of training features
  (Sun et al., ICML 2022, "Out-of-Distribution Detection with Deep Nearest Neighbors"; k = 50 with the whole
  CIFAR-10 train split there and in OpenOOD v1.5).
"""
import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

from .._io import atomic_write

__all__ = ["feature_norm", "norm_cosine", "knn", "FeatureBank", "FEATURE_BANK_NAME", "DEFAULT_BANK_LIMIT"]

# The bank's file in a model folder, beside model.safetensors.
FEATURE_BANK_NAME = "feature_bank.safetensors"
# At most this many training rows go into a bank (a class-balanced seeded sample beyond it): the whole
# CIFAR-10 train split fits; for ImageNet-sized sets it is about 4% (Sun et al. use 1% for ImageNet).
DEFAULT_BANK_LIMIT = 50_000
# Query rows per similarity block: (block x bank) float32 similarities stay near 200 MB for a 50,000-row bank.
_BLOCK_ROWS = 1024


def _check_features(features: torch.Tensor, what: str = "features") -> None:
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or not features.is_floating_point():
        got = f"shape {tuple(features.shape)}, {features.dtype}" if isinstance(features, torch.Tensor) else type(features)
        raise ValueError(f"{what} must be float pre-logit features of shape (batch, width), got {got}; pass "
                         f"model.forward_head(model.forward_features(x), pre_logits=True).")


def feature_norm(features: torch.Tensor) -> torch.Tensor:
    """The L2 norm ``||f||`` of each pre-logit feature, float64.

    Example:
        >>> feature_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor([5., 1.], dtype=torch.float64)
    """
    _check_features(features)
    return features.double().norm(dim=1)


def norm_cosine(features: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
    """``||f|| * max_c cos(f, v_c)`` = ``max_c <f, v_c / ||v_c||>``, float64: the largest logit of a unit-prototype
    head read on the unnormalised feature (see the module docstring for which ``v_c`` each head gives).

    Example:
        >>> norm_cosine(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([4.], dtype=torch.float64)
    """
    _check_features(features)
    _check_features(class_vectors, "class_vectors")
    if class_vectors.shape[1] != features.shape[1]:
        raise ValueError(f"class_vectors have width {class_vectors.shape[1]}, the features {features.shape[1]}: "
                         f"pass the head that reads these features.")
    unit_vectors = F.normalize(class_vectors.double(), dim=1)
    return (features.double() @ unit_vectors.T).max(dim=1).values


class FeatureBank:
    """Pre-logit features of training images, kept beside a model: KNN's neighbours, and the fit of the post-hoc
    detectors (:mod:`timm_isomax.ood.posthoc`).

    ``features`` (N, D) float32 as the backbone gives them (KNN normalises them), ``labels`` (N,), and where they
    came from (``source``, e.g. ``"cifar10:train[held out 0.1, seed 0]"``).

    Example:
        >>> bank = FeatureBank.build(train_features, train_labels, source="cifar10:train")
        >>> bank.save("outputs/run")                 # outputs/run/feature_bank.safetensors
        >>> scores = knn(test_features, FeatureBank.load("outputs/run"), k=50)
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, source: str = "", total_rows: Optional[int] = None):
        _check_features(features, "bank features")
        if labels.shape != (len(features),):
            raise ValueError(f"a feature bank needs one label per row: {len(features)} rows, labels {tuple(labels.shape)}.")
        self.features = features.float().contiguous()
        self.labels = labels.long().contiguous()
        self.source = source
        self.total_rows = len(features) if total_rows is None else total_rows  # rows it was sampled from
        self._unit: Optional[torch.Tensor] = None

    @classmethod
    def build(cls, features: torch.Tensor, labels: torch.Tensor, source: str = "",
              limit: Optional[int] = DEFAULT_BANK_LIMIT, seed: int = 0) -> "FeatureBank":
        """A bank of every row, or of ``limit`` rows (a seeded sample with the classes in proportion) when there
        are more."""
        _check_features(features, "bank features")
        if limit is not None and len(features) > limit:
            # a stratified sample: each class keeps its share (rounded), seeded
            rng = np.random.default_rng(seed)
            labels_np = labels.cpu().numpy()
            keep = []
            for label in np.unique(labels_np):
                rows = np.flatnonzero(labels_np == label)
                keep.extend(rng.permutation(rows)[:max(1, round(limit * len(rows) / len(labels_np)))].tolist())
            index = torch.as_tensor(sorted(keep)[:limit])
            return cls(features[index], labels[index], source, total_rows=len(features))
        return cls(features, labels, source)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size() + self.labels.numel() * self.labels.element_size()

    def describe(self) -> Dict[str, Any]:
        """What a card or an evaluation records about the bank."""
        return dict(rows=len(self), width=self.features.shape[1], total_rows=self.total_rows, source=self.source,
                    megabytes=round(self.nbytes / 1e6, 1), file=FEATURE_BANK_NAME)

    def unit_features(self) -> torch.Tensor:
        if self._unit is None:
            self._unit = F.normalize(self.features, dim=1)
        return self._unit

    def save(self, folder: Union[str, Path]) -> Path:
        """Write ``<folder>/feature_bank.safetensors`` (atomically); returns its path."""
        path = Path(folder) / FEATURE_BANK_NAME
        metadata = {"source": self.source, "total_rows": str(self.total_rows), "format": "timm-isomax feature bank 1"}
        tensors = {"features": self.features, "labels": self.labels}
        atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))
        return path

    @classmethod
    def load(cls, folder_or_file: Union[str, Path]) -> "FeatureBank":
        """Read a bank written by :meth:`save` (a model folder, or the file itself)."""
        path = Path(folder_or_file)
        path = path / FEATURE_BANK_NAME if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no feature bank at {path}; a run of `timm-isomax finetune` writes one beside "
                                    f"its model (or build one with FeatureBank.build and save it).")
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = safetensors.torch.load_file(str(path))
        if set(tensors) != {"features", "labels"}:
            raise ValueError(f"{path} is not a feature bank (tensors {sorted(tensors)}, expected features and labels).")
        return cls(tensors["features"], tensors["labels"], metadata.get("source", ""),
                   int(metadata.get("total_rows", len(tensors["features"]))))

    def kth_similarities(self, features: torch.Tensor, ks: "tuple[int, ...]") -> Dict[int, torch.Tensor]:
        """For each ``k`` in ``ks``: the ``k``-th largest cosine similarity of each row of ``features`` to the bank,
        float64 (one top-k pass for all of them)."""
        _check_features(features)
        if features.shape[1] != self.features.shape[1]:
            raise ValueError(f"the bank holds features of width {self.features.shape[1]}, the query {features.shape[1]}: "
                             f"it belongs to another model.")
        largest = max(ks)
        if not 1 <= min(ks) or largest > len(self):
            raise ValueError(f"k must be between 1 and the bank's {len(self)} rows, got {sorted(ks)}.")
        bank = self.unit_features()
        queries = F.normalize(features.float(), dim=1)
        top = torch.cat([torch.topk(block @ bank.T, largest, dim=1).values for block in queries.split(_BLOCK_ROWS)])
        return {k: top[:, k - 1].double() for k in ks}

    def __repr__(self) -> str:
        return f"FeatureBank({json.dumps(self.describe())})"


def knn(features: torch.Tensor, bank: FeatureBank, k: int = 50) -> torch.Tensor:
    """KNN score: the ``k``-th largest cosine similarity of each (normalised) feature to the bank's normalised
    training features, float64 (Sun et al. 2022 use minus the k-th smallest distance, which ranks alike:
    ``||a - b||^2 = 2 - 2 cos`` for unit vectors).

    Example:
        >>> bank = FeatureBank(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        >>> knn(torch.tensor([[2.0, 0.0]]), bank, k=2)
        tensor([0.], dtype=torch.float64)
    """
    return bank.kth_similarities(features, (k,))[k]


def model_folder(model: torch.nn.Module) -> Optional[Path]:
    """The local folder ``model``'s weights were loaded from (``pretrained_cfg["file"]``), or None: what is
    saved beside the weights (the feature bank, a trainer run's ``training/``) is found there."""
    file = (getattr(model, "pretrained_cfg", None) or {}).get("file")
    if not file:
        return None
    return Path(file) if Path(file).is_dir() else Path(file).parent  # local-dir: names the folder itself


def feature_bank_of(model: torch.nn.Module) -> Optional[FeatureBank]:
    """The feature bank saved beside ``model``'s weights, or None: ``model.feature_bank`` if set; else the
    ``feature_bank.safetensors`` of the folder (``local-dir:``) or Hub repo (``hf-hub:``, downloaded on first use) the
    model was loaded from. Read once, then kept on the model.

    Example:
        >>> model = timm.create_model("local-dir:outputs/run", pretrained=True)
        >>> feature_bank_of(model).describe()["rows"]
        45000
    """
    if getattr(model, "feature_bank", None) is not None:
        return model.feature_bank
    cfg = getattr(model, "pretrained_cfg", None) or {}
    bank = None
    folder = model_folder(model)
    if folder is not None and (folder / FEATURE_BANK_NAME).is_file():
        bank = FeatureBank.load(folder)
    elif cfg.get("hf_hub_id"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        repo, _, revision = cfg["hf_hub_id"].partition("@")
        try:
            bank = FeatureBank.load(hf_hub_download(repo, FEATURE_BANK_NAME, revision=revision or None))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            bank = None  # a repo without a bank, or one not in the cache while offline
    model.feature_bank = bank
    return bank

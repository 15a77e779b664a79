"""Every OOD score of a model by name, computed from one pass of its pre-logit features and logits.

Three families, one convention (higher = more in-distribution, float64):

* logit scores (:mod:`timm_isomax.layers.scores`: ``mds``, ``entropic``, ``energy``, ``msp``, ...): the logits alone;
* feature scores (:mod:`timm_isomax.ood.feature_scores`): ``feature_norm``, ``norm_cosine`` (the head's class vectors
  on the raw feature), and ``knn<k>`` (e.g. ``knn50``: the k-th nearest training feature of a
  :class:`~timm_isomax.ood.feature_scores.FeatureBank`);
* post-hoc detectors fitted on the bank (:mod:`timm_isomax.ood.posthoc`, from pytorch-ood): ``mahalanobis`` for every
  head, ``vim``, ``react`` and ``ash`` for a linear (SoftMax) classifier.

:func:`candidate_scores` lists what a head can be scored with, given features and a bank; a
:class:`Scorer` computes any of them::

    outputs = model_outputs(features_of, head, loader, device)
    scorer = Scorer(head, bank)
    scores = scorer.score("knn50", outputs.features, outputs.logits)
"""
import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.classifier import IsoMaxClassifier
from ..models.conversion import linear_classifier
from ..models.inference import amp_dtype
from .feature_scores import FeatureBank, feature_norm, knn, norm_cosine
from ..layers.score_names import (FEATURE_SCORES, KNN_KS, LINEAR_ONLY_SCORES, LOGIT_SCORES, POSTHOC_SCORES, knn_k,
                                  is_score_name, needs_features, score_problem)
from ..layers.scores import SCORES, get_score

__all__ = ["LOGIT_SCORES", "FEATURE_SCORES", "KNN_KS", "POSTHOC_SCORES", "LINEAR_ONLY_SCORES", "Outputs",
           "PreLogits", "model_parts", "model_outputs", "candidate_scores", "is_score_name", "needs_features", "score_problem",
           "Scorer"]

@dataclass
class Outputs:
    """A model's outputs on one set: pre-logit ``features`` (N, D) (None where the logits are not one head on
    them), ``logits`` (N, C) in float32, and ``labels`` (N,)."""

    features: Optional[torch.Tensor]
    logits: torch.Tensor
    labels: torch.Tensor


class PreLogits(nn.Module):
    """``model``'s pre-logit features, as a module: whoever runs it in eval mode runs ``model``'s BatchNorm and
    dropout in eval mode too (a bare function of the model would leave them as they were)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


def model_parts(model: nn.Module) -> Tuple[PreLogits, nn.Module]:
    """``(features_of, head)`` of ``model``, with ``model(x) == head(features_of(x))``: the pre-logits and the IsoMax
    head, or the pre-logits and a linear classifier (checked to be the whole head on the loaded weights). Else a
    one-line ``ValueError`` saying why (e.g. a head that does more than one linear layer)."""
    features_of = PreLogits(model)
    if isinstance(model, IsoMaxClassifier):
        return features_of, model.head
    classifier = model.get_classifier()
    linear, reason = linear_classifier(model)
    if linear is None or not isinstance(classifier, nn.Linear):
        raise ValueError(f"{type(model).__name__}'s logits are not one linear layer on its pre-logits ({reason})")
    return features_of, classifier


@torch.no_grad()
def model_outputs(features_of, head: nn.Module, loader: torch.utils.data.DataLoader,
                  device: torch.device = torch.device("cpu"), amp: bool = False, progress: bool = False,
                  description: str = "outputs", keep_features: bool = True) -> Outputs:
    """Features and logits of every batch of ``loader``: ``features_of(images)`` (None: the inputs are features
    already, e.g. a frozen backbone's cache), then ``head(features)``. Both run in eval mode (BatchNorm on its
    running statistics, whatever mode the model was left in) and get their own modes back afterwards.
    ``keep_features=False``: only the logits (``head`` is then the whole model, ``features_of`` None)."""
    with _eval_mode(*[part for part in (features_of, head) if isinstance(part, nn.Module)]):
        all_features, all_logits, all_labels = [], [], []
        for inputs, labels in tqdm(loader, desc=description, disable=not progress, unit="batch", leave=False):
            inputs = inputs.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
                features = inputs if features_of is None else features_of(inputs)
                logits = head(features)
            if keep_features:
                all_features.append(features.float().cpu())
            all_logits.append(logits.float().cpu())
            all_labels.append(torch.as_tensor(labels))
    return Outputs(torch.cat(all_features) if keep_features else None, torch.cat(all_logits), torch.cat(all_labels))


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module):
    # every submodule's own training flag is put back: a model in training keeps training where it was
    modes = [(module, module.training) for part in modules for module in part.modules()]
    try:
        for part in modules:
            part.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


def _posthoc_installed() -> bool:
    try:
        import pytorch_ood  # noqa: F401  (an extra: `pip install 'timm-isomax[posthoc]'`)
    except ImportError:
        return False
    return True


def candidate_scores(head: str, with_features: bool = True, with_bank: bool = False,
                     with_posthoc: Optional[bool] = None) -> Tuple[str, ...]:
    """Every score ``head`` (``softmax``, ``isomax``, ``isomaxplus``, ``dismax``) can be read with: its logit scores;
    with features, the feature scores; with a bank, KNN for each of :data:`KNN_KS` and (where pytorch-ood is
    installed, or ``with_posthoc``) the post-hoc detectors that fit the head.

    Example:
        >>> candidate_scores("isomaxplus", with_bank=True, with_posthoc=False)
        ('mds', 'entropic', 'energy', 'msp', 'norm_cosine', 'feature_norm', 'knn10', 'knn50', 'knn200')
    """
    names = list(LOGIT_SCORES[head])
    if with_features:
        names += FEATURE_SCORES
        if with_bank:
            names += [f"knn{k}" for k in KNN_KS]
            if _posthoc_installed() if with_posthoc is None else with_posthoc:
                names += [n for n in POSTHOC_SCORES if head == "softmax" or n not in LINEAR_ONLY_SCORES]
    return tuple(names)


def _class_vectors(head: nn.Module) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    # (vectors, bias): the prototypes of an IsoMax head, the rows and bias of a linear classifier
    if hasattr(head, "prototypes"):
        return head.prototypes.detach().float().cpu(), None
    if isinstance(head, nn.Linear):
        bias = head.bias.detach().float().cpu() if head.bias is not None else None
        return head.weight.detach().float().cpu(), bias
    return None, None


class Scorer:
    """Computes any score of :func:`candidate_scores` for the model whose classifier is ``head``.

    ``bank``: the training features KNN and the post-hoc detectors read (fitted once, on first use).

    Example:
        >>> scorer = Scorer(model.get_classifier(), FeatureBank.load("outputs/run"))
        >>> scorer.score("norm_cosine", outputs.features, outputs.logits)
    """

    def __init__(self, head: nn.Module, bank: Optional[FeatureBank] = None):
        self.class_vectors, self.bias = _class_vectors(head)
        self.bank = bank
        self._fitted: Dict[str, object] = {}

    def _needs(self, name: str, features: Optional[torch.Tensor], bank: bool = False) -> None:
        if features is None:
            raise ValueError(f"score {name!r} reads the pre-logit features, which this model's logits are not one "
                             f"head on; use a logit score ({', '.join(sorted(SCORES))}).")
        if bank and self.bank is None:
            raise ValueError(f"score {name!r} needs a feature bank of training features "
                             f"(feature_bank.safetensors beside the model, written by `timm-isomax finetune`); "
                             f"pass bank=FeatureBank.load(folder), or pick a score without one.")

    def _posthoc(self, name: str):
        if name not in self._fitted:
            from .posthoc import fit_posthoc

            linear = name in LINEAR_ONLY_SCORES
            if linear and (self.class_vectors is None or self.bias is None):
                raise ValueError(f"{name} reads a linear classifier's weight and bias; this head has none "
                                 f"(use mahalanobis, knn<k> or norm_cosine).")
            weight, bias = (self.class_vectors, self.bias) if linear else (None, None)
            self._fitted[name] = fit_posthoc(name, self.bank.features, self.bank.labels, weight, bias)
        return self._fitted[name]

    def score(self, name: str, features: Optional[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """The score ``name`` of each row, float64 (higher = more in-distribution)."""
        if name in SCORES:
            return get_score(name)(logits).double()
        if name == "feature_norm":
            self._needs(name, features)
            return feature_norm(features)
        if name == "norm_cosine":
            self._needs(name, features)
            if self.class_vectors is None:
                raise ValueError("norm_cosine reads the head's class vectors (prototypes or a linear layer's rows); "
                                 "this head has neither.")
            return norm_cosine(features, self.class_vectors)
        k = knn_k(name)
        if k is not None:
            self._needs(name, features, bank=True)
            return knn(features, self.bank, k)
        if name in POSTHOC_SCORES:
            self._needs(name, features, bank=True)
            return self._posthoc(name).score(features).double()
        raise ValueError(score_problem(name))

    def fitting(self, names: Sequence[str], features: Optional[torch.Tensor],
                logits: torch.Tensor) -> Tuple[List[str], Dict[str, str]]:
        """``(usable, left_out)``: the ``names`` this scorer can compute on these outputs, and why each other one cannot
        (e.g. Mahalanobis on a bank with fewer rows than feature width plus classes). Fits the post-hoc detectors."""
        usable, left_out = [], {}
        for name in names:
            try:
                self.score(name, features[:2] if features is not None else None, logits[:2])
                usable.append(name)
            except ValueError as error:
                left_out[name] = str(error)
        return usable, left_out

    def scores(self, names: Sequence[str], features: Optional[torch.Tensor], logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Several scores at once (KNN's neighbours found once for every k)."""
        ks = tuple(k for k in map(knn_k, names) if k is not None)
        neighbours = {}
        if ks:
            self._needs(f"knn{ks[0]}", features, bank=True)
            neighbours = {f"knn{k}": v for k, v in self.bank.kth_similarities(features, ks).items()}
        return {name: neighbours[name] if name in neighbours else self.score(name, features, logits) for name in names}

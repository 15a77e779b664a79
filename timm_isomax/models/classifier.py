"""IsoMaxClassifier: any headless timm backbone + one IsoMax / IsoMax+ / DisMax head on its pre-logits.

Why a wrapper rather than swapping each family's classifier in place: the pre-logits
(``forward_head(x, pre_logits=True)``) are 2-D with width ``head_hidden_size`` in every timm
classification architecture, whereas classifiers come in 1x1 convs, tuples of distilled heads and a
dozen container types. One wrapper therefore covers every architecture with one code path. The cost is
a ``backbone.`` prefix on backbone parameter names, which this class hides from timm's tooling by
re-rooting ``group_matcher`` and ``no_weight_decay``.
"""
import re
from typing import Any, Callable, Dict, Optional, Set, Union

import torch
from torch import nn

from .. import _timm_compat
from ..layers.score_names import is_score_name, score_problem
from ..ood.score_summary import is_finite_number, summary_problem
from ..layers.heads import DisMaxHead, IsoMaxHead, IsoMaxPlusHead

__all__ = ["IsoMaxClassifier", "HEAD_TYPES", "DEFAULT_OOD_SCORES", "HEAD_TITLES", "head_type_of_name",
           "isomax_layer_names", "ood_config_problem"]

# Every head kind, by the suffix of its registered names (<arch>_<kind>); the registry, the trainer and the
# conversion read their lists of kinds from here.
HEAD_TYPES: Dict[str, type] = {"isomaxplus": IsoMaxPlusHead, "isomax": IsoMaxHead, "dismax": DisMaxHead}
# The OOD score each head is designed for (the papers' choice).
DEFAULT_OOD_SCORES: Dict[str, str] = {"isomaxplus": "mds", "isomax": "entropic", "dismax": "mmles"}
# How the papers write each head's name (cards, tables).
HEAD_TITLES: Dict[str, str] = {"isomaxplus": "IsoMax+", "isomax": "IsoMax", "dismax": "DisMax"}

BACKBONE_PREFIX = "backbone."
# id_scores: the chosen score on the ID validation images, as percentiles (timm_isomax.ood.score_summary)
OOD_CONFIG_KEYS = ("score", "threshold", "tpr", "fitted_on", "id_scores")

# A '^' anchor: not escaped and not the negation inside a character class.
_ANCHOR = re.compile(r"(?<![\\\[])\^")


def head_type_of_name(model_name: str) -> Optional[str]:
    """The head kind an IsoMax model name ``<arch>_<kind>[.tag]`` ends with, or None for any other name.

    Read from the name alone (nothing needs to be registered yet), so configs can be checked before timm
    knows the architecture; :func:`timm_isomax.models.registry.base_architecture` is the registry's answer.

    Example:
        >>> head_type_of_name("resnet50_dismax.in1k"), head_type_of_name("resnet50")
        ('dismax', None)
    """
    arch = model_name.split(".", 1)[0]
    return next((kind for kind in HEAD_TYPES if arch.endswith("_" + kind)), None)


def ood_config_problem(ood_config: Any) -> Optional[str]:
    """What is wrong with an ``ood_config`` (e.g. read from a saved config.json), or None.

    ``score``: a score name (:func:`timm_isomax.layers.score_names.is_score_name`); ``threshold``: a finite number or None;
    ``tpr``: a number in (0, 1] or None; ``fitted_on``: a string or None; ``id_scores``: a percentile summary
    (:func:`timm_isomax.ood.score_summary.summary_problem`) or None.
    """
    if not isinstance(ood_config, dict):
        return f"ood_config must be an object with keys {list(OOD_CONFIG_KEYS)}, got {type(ood_config).__name__}"
    unknown = sorted(str(k) for k in set(ood_config) - set(OOD_CONFIG_KEYS))
    if unknown:
        return f"unknown ood_config keys {unknown}; allowed: {', '.join(OOD_CONFIG_KEYS)}"
    score, threshold, tpr = ood_config.get("score"), ood_config.get("threshold"), ood_config.get("tpr")
    if "score" in ood_config and not is_score_name(score):
        return f"ood_config {score_problem(score) if isinstance(score, str) else f'score must be a name, got {score!r}'}"
    if threshold is not None and not is_finite_number(threshold):
        return f"ood_config threshold must be a finite number or null, got {threshold!r}"
    if tpr is not None and not (is_finite_number(tpr) and 0 < tpr <= 1):
        return f"ood_config tpr must be a number in (0, 1] or null, got {tpr!r}"
    if ood_config.get("fitted_on") is not None and not isinstance(ood_config["fitted_on"], str):
        return f"ood_config fitted_on must be a string or null, got {ood_config['fitted_on']!r}"
    if ood_config.get("id_scores") is not None:
        problem = summary_problem(ood_config["id_scores"])
        return f"ood_config {problem}" if problem else None
    return None


def isomax_layer_names(first_conv: _timm_compat.LayerNames) -> Dict[str, Any]:
    """Pretrained-cfg layer names of an IsoMax model whose backbone had ``first_conv``: the stem under the
    wrapper's prefix, the head as classifier."""
    return dict(first_conv=_timm_compat.prefix_layer_names(first_conv, BACKBONE_PREFIX), classifier="head")


def _reroot_regex(pattern: str, prefix: str) -> str:
    # timm matches group regexes with re.match, which anchors at the start of the name already, so the
    # '^' anchors are redundant there; removing them lets the whole expression sit behind the prefix.
    return re.escape(prefix) + "(?:" + _ANCHOR.sub("", pattern) + ")"


def reroot_group_matcher(matcher: Union[Dict[str, Any], Callable], prefix: str = BACKBONE_PREFIX):
    """Rewrite a timm ``group_matcher`` so it matches the same parameters under ``prefix``."""
    if callable(matcher):
        def rerooted(name: str):
            return matcher(name[len(prefix):]) if name.startswith(prefix) else (float("inf"),)
        return rerooted
    rerooted = {}
    for group, spec in matcher.items():
        if isinstance(spec, str):
            rerooted[group] = _reroot_regex(spec, prefix)
        else:
            rerooted[group] = [
                (_reroot_regex(sub[0], prefix), sub[1]) if isinstance(sub, (tuple, list)) else _reroot_regex(sub, prefix)
                for sub in spec
            ]
    return rerooted


class IsoMaxClassifier(nn.Module):
    """A timm backbone whose classifier is an IsoMax+ (or IsoMax, or DisMax) head.

    Keeps the timm model API: ``forward_features``, ``forward_head(x, pre_logits=...)``,
    ``get_classifier``, ``reset_classifier``, ``set_grad_checkpointing``, ``group_matcher``,
    ``no_weight_decay``, ``num_features``, ``head_hidden_size``, ``pretrained_cfg``.

    Usually built through the registry (``timm.create_model("resnet50_isomaxplus", num_classes=10)``);
    build one directly to wrap a backbone of your own.

    Args:
        backbone: a timm model created with ``num_classes=0``.
        num_classes: number of classes (>= 1).
        head_type: a key of :data:`HEAD_TYPES`: ``"isomaxplus"``, ``"isomax"`` or ``"dismax"``.
        distance_mode: ``"matmul"`` (default) or ``"cdist"`` (exact reference form).
        ood_config: how this model flags OOD inputs: ``score`` (default: :data:`DEFAULT_OOD_SCORES`, ``"mds"``
            for IsoMax+, ``"entropic"`` for IsoMax, ``"mmles"`` for DisMax) and ``threshold`` (a score below it
            is OOD; ``None`` until fitted).
            Recorded in the model's construction arguments, so it is saved in config.json and restored
            by ``timm.create_model("local-dir:...")`` / ``hf-hub:``.

    Example:
        >>> import timm
        >>> model = IsoMaxClassifier(timm.create_model("resnet18", num_classes=0), num_classes=10)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head_type: str = "isomaxplus",
                 distance_mode: str = "matmul", ood_config: Optional[Dict[str, Any]] = None):
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {sorted(HEAD_TYPES)}, got {head_type!r}.")
        if not hasattr(backbone, "forward_head"):
            raise ValueError(
                f"{type(backbone).__name__} has no forward_head(x, pre_logits=True): it is not a timm "
                f"classification backbone, so it has no pre-logits for an IsoMax head."
            )
        self.backbone = backbone
        self.head_type = head_type
        self.num_features = backbone.num_features
        self.head_hidden_size = _pre_logits_width(backbone)
        self._make_head(num_classes, distance_mode)
        _timm_compat.copy_traits(backbone, self, prefix=BACKBONE_PREFIX)
        if hasattr(backbone, "feature_info"):
            self.feature_info = backbone.feature_info
        self.pretrained_cfg: Dict[str, Any] = {}
        self.default_cfg = self.pretrained_cfg
        self.ood_config: Dict[str, Any] = dict(score=DEFAULT_OOD_SCORES[head_type], threshold=None)
        if ood_config is not None and not isinstance(ood_config, dict):
            raise ValueError(f"ood_config must be a dict with keys {list(OOD_CONFIG_KEYS)} or None, got "
                             f"{type(ood_config).__name__}.")
        self.update_ood_config(**(ood_config or {}))

    def update_ood_config(self, **values: Any) -> Dict[str, Any]:
        """Update ``ood_config`` (e.g. a fitted threshold) and record it for saving; returns it.

        Raises a one-line ``ValueError`` for unknown keys or wrong values (see :func:`ood_config_problem`).
        """
        problem = ood_config_problem(values)
        if problem:
            raise ValueError(f"{problem}.")
        self.ood_config.update(values)
        _timm_compat.record_model_arg(self, "ood_config", dict(self.ood_config))
        return self.ood_config

    def _make_head(self, num_classes: int, distance_mode: str) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(
                f"an _{self.head_type} model needs num_classes >= 1 (its head holds one prototype per class), "
                f"got {num_classes!r}; for features only, use forward_head(x, pre_logits=True), "
                f"features_only=True, or the base architecture."
            )
        self.num_classes = num_classes
        self.head = HEAD_TYPES[self.head_type](self.head_hidden_size, num_classes, distance_mode=distance_mode)

    @property
    def in_chans(self) -> Optional[int]:
        return getattr(self.backbone, "in_chans", None)

    # --- timm model API -------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = self.backbone.forward_head(x, pre_logits=True)
        return features if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` classes (and optionally re-pool)."""
        if global_pool is not None:
            self.backbone.reset_classifier(0, global_pool)
            self.head_hidden_size = _pre_logits_width(self.backbone)
        self._make_head(num_classes, self.head.distance_mode)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """The backbone's parameter groups, under this model's names; the head joins the last group."""
        return reroot_group_matcher(self.backbone.group_matcher(coarse=coarse))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        backbone_names = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {BACKBONE_PREFIX + name for name in backbone_names}

    def forward_intermediates(self, *args, **kwargs):
        """The backbone's ``forward_intermediates`` (raises if the backbone has none)."""
        if not hasattr(self.backbone, "forward_intermediates"):
            raise NotImplementedError(f"{type(self.backbone).__name__} has no forward_intermediates.")
        return self.backbone.forward_intermediates(*args, **kwargs)


def _pre_logits_width(backbone: nn.Module) -> int:
    # head_hidden_size is the width of forward_head(x, pre_logits=True) in every timm classification
    # architecture (1,364 of 1,364 measured); num_features equals it in only 1,245 of them.
    width = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"cannot tell the pre-logits width of {type(backbone).__name__}.")
    return width

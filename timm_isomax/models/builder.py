"""Building an ``<arch>_isomaxplus`` / ``_isomax`` / ``_dismax`` model for its timm entrypoint: a fresh head on the
base architecture, the base's SoftMax weights (a mirrored tag, loaded by timm's own path), or a whole saved IsoMax
model (a published tag, ``hf-hub:``, ``local-dir:``, a ``file=`` overlay), checked key by key.
"""
import contextlib
import dataclasses
import functools
from typing import Any, Dict, Optional, Set

import timm
import torch
from timm.models import load_pretrained, resolve_pretrained_cfg

from .._timm_compat import PretrainedCfg
from ..hub import check_model_folder, hub_downloads
from .classifier import BACKBONE_PREFIX, IsoMaxClassifier
from .conversion import ConversionReport, convert_softmax_model
from .weights import PUBLISHED_TAGS, WEIGHT_SOURCE_KEYS

__all__ = ["build_isomax_model", "base_pretrained_cfg"]


def build_isomax_model(
    variant: str,
    base_arch: str,
    head_type: str,
    pretrained: bool = False,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
    cache_dir: Any = None,
    distance_mode: str = "matmul",
    ood_config: Optional[Dict[str, Any]] = None,
    **kwargs: Any,
) -> torch.nn.Module:
    if isinstance(pretrained_cfg, dict) and pretrained_cfg.get("source") == "local-dir":
        # timm.create_model("local-dir:...") comes here unchecked; saved in_chans are merged into kwargs,
        # so only another value is the caller's explicit request
        requested_chans = kwargs.get("in_chans")
        explicit_chans = requested_chans if requested_chans != (kwargs.get("pretrained_model_args") or {}).get("in_chans") else None
        check_model_folder(pretrained_cfg["file"], in_chans=explicit_chans)
    # arguments of the wrapper rather than of the backbone
    wrapper_kwargs = dict(head_type=head_type, distance_mode=distance_mode, ood_config=ood_config)
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    # A tag (or no cfg) resolves to a mirrored cfg of the base architecture: its weights are the base's
    # SoftMax weights and load through timm's path for the base. Anything else (a cfg given whole by
    # hf-hub:/local-dir:, or an overlay with its own file/url) is read and judged by its keys.
    hub_config = PUBLISHED_TAGS.get(f"{variant}.{cfg.tag}")
    isomax_tag = hub_config is not None
    # A cfg given whole (a local-dir: folder, an hf-hub: repo) or an overlay with a file/url brings its own
    # weights, whatever its tag says: a reproduction saved under a shipped config's tag is no unpublished tag.
    own_weights = not (pretrained_cfg is None or isinstance(pretrained_cfg, str)) or any(
        (pretrained_cfg_overlay or {}).get(k) for k in WEIGHT_SOURCE_KEYS
    )
    if pretrained and isomax_tag and not hub_config.is_published and not own_weights:
        raise FileNotFoundError(
            f"{hub_config.name} has no published weights yet: its hub config ({hub_config.path}) records no push to "
            f"{hub_config.repo_id}. Train them with `timm-isomax reproduce {hub_config.path}` and load "
            f"timm.create_model('local-dir:{hub_config.source_checkpoint}', pretrained=True), or pass pretrained=False.")
    registry_weights = not own_weights and not isomax_tag
    features_only = kwargs.pop("features_only", False)
    feature_kwargs = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls") if k in kwargs}

    if not pretrained or registry_weights:
        # a published IsoMax tag does not exist for the base: build the base with its default cfg
        base_source = dict(pretrained_cfg=None if isomax_tag else cfg.tag, pretrained_cfg_overlay=pretrained_cfg_overlay,
                           cache_dir=cache_dir)
        if features_only:
            kwargs.pop("num_classes", None)
            return timm.create_model(base_arch, pretrained=pretrained, features_only=True,
                                     **base_source, **feature_kwargs, **kwargs)
        num_classes = _resolve_num_classes(variant, kwargs.pop("num_classes", None), cfg)
        if pretrained:
            model = _from_softmax_weights(base_arch, num_classes, cfg.num_classes, wrapper_kwargs, **base_source, **kwargs)
        else:
            model = _build_from_saved_args(base_arch, num_classes, wrapper_kwargs, kwargs.get("pretrained_model_args"),
                                           dict(kwargs, **base_source))
    else:
        model = _load_saved_weights(variant, base_arch, cfg, wrapper_kwargs, cache_dir, kwargs)
        if features_only:
            kwargs.pop("num_classes", None)
            backbone_cfg = dataclasses.replace(base_pretrained_cfg(base_arch), state_dict=model.backbone.state_dict())
            return timm.create_model(base_arch, pretrained=True, pretrained_cfg=backbone_cfg, features_only=True,
                                     **feature_kwargs, **kwargs)
    model.pretrained_cfg = model.default_cfg = cfg.to_dict()
    return model


def base_pretrained_cfg(base_arch: str) -> PretrainedCfg:
    return timm.models.get_pretrained_cfg(base_arch) or PretrainedCfg(architecture=base_arch)


def _resolve_num_classes(variant: str, num_classes: Optional[int], cfg: PretrainedCfg) -> int:
    if num_classes is None:
        num_classes = cfg.num_classes
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            f"{variant} needs num_classes >= 1 (its head holds one prototype per class), got {num_classes!r}; "
            f"pass num_classes=K, or use the base architecture for a headless feature extractor."
        )
    return num_classes


class _SoftMaxStateDict(Exception):
    """Raised by the checkpoint filter to hand a SoftMax (base architecture) state dict back."""

    def __init__(self, state_dict: Dict[str, torch.Tensor]):
        super().__init__("SoftMax checkpoint")
        self.state_dict = state_dict


def _load_saved_weights(variant: str, base_arch: str, cfg: PretrainedCfg, wrapper_kwargs: Dict[str, Any],
                        cache_dir: Any, kwargs: Dict[str, Any]) -> IsoMaxClassifier:
    """Build ``variant`` with the weights ``cfg`` locates, read by timm's loaders.

    An IsoMax checkpoint loads whole, checked key by key. A SoftMax checkpoint of the base architecture
    loads into the backbone through timm's path for the base (its checkpoint filter included); the head
    starts fresh.
    """
    num_classes = _resolve_num_classes(variant, kwargs.pop("num_classes", None), cfg)
    saved_args = kwargs.get("pretrained_model_args") or {}
    model = _build_from_saved_args(base_arch, num_classes, wrapper_kwargs, saved_args, kwargs)
    model.pretrained_cfg = model.default_cfg = cfg.to_dict()
    # the class counts the weights' own config declares: asking for one of them is no request for a new head
    declared_classes = {c for c in (cfg.num_classes, saved_args.get("num_classes")) if c is not None}
    downloads = (hub_downloads(cfg.hf_hub_id.split("@")[0], f"{variant}.{cfg.tag}" if cfg.tag else variant)
                 if cfg.hf_hub_id and not (cfg.file or cfg.state_dict) else contextlib.nullcontext())
    try:
        with downloads:
            load_pretrained(model, pretrained_cfg=cfg.to_dict(), num_classes=num_classes,
                            in_chans=kwargs.get("in_chans", 3),
                            filter_fn=functools.partial(_isomax_checkpoint_filter, declared_classes=declared_classes),
                            strict=True, cache_dir=cache_dir)
    except _SoftMaxStateDict as softmax:
        backbone_cfg = dataclasses.replace(base_pretrained_cfg(base_arch), state_dict=softmax.state_dict)
        source_classes = _softmax_class_count(softmax.state_dict, backbone_cfg)
        model = _from_softmax_weights(base_arch, num_classes, source_classes, wrapper_kwargs,
                                      pretrained_cfg=backbone_cfg, **kwargs)
    return model


def _build_from_saved_args(base_arch: str, num_classes: int, wrapper_kwargs: Dict[str, Any],
                           saved_args: Optional[Dict[str, Any]], kwargs: Dict[str, Any]) -> IsoMaxClassifier:
    """The IsoMax model to load saved weights into. Arguments that come from a saved config.json
    (``saved_args``) are untrusted: a build failure caused by them is a one-line ``ValueError``."""
    try:
        backbone = timm.create_model(base_arch, pretrained=False, num_classes=0, **kwargs)
        return IsoMaxClassifier(backbone, num_classes, **wrapper_kwargs)
    except Exception as error:  # timm model classes raise TypeError, AssertionError, ... for bad arguments
        if not saved_args:
            raise
        reason = (str(error).splitlines() or [""])[0]
        raise ValueError(f"cannot build {base_arch} from the saved model_args {sorted(saved_args)} "
                         f"({type(error).__name__}: {reason}); fix model_args in config.json or re-export the model.") from error


def _softmax_class_count(state_dict: Dict[str, torch.Tensor], cfg: PretrainedCfg) -> Optional[int]:
    classifier = cfg.classifier if isinstance(cfg.classifier, str) else None
    weight = state_dict.get(f"{classifier}.weight") if classifier else None
    return int(weight.shape[0]) if weight is not None else None


def _from_softmax_weights(base_arch: str, num_classes: int, source_classes: Optional[int],
                          wrapper_kwargs: Dict[str, Any], **create_kwargs: Any) -> IsoMaxClassifier:
    """Load SoftMax weights of ``base_arch`` through timm's path for it; convert its classifier into
    prototypes when the class count is the source's, else start a fresh head on the pretrained backbone."""
    if num_classes == source_classes:
        softmax = timm.create_model(base_arch, pretrained=True, num_classes=num_classes, **create_kwargs)
        return convert_softmax_model(softmax, num_classes, copy=False, **wrapper_kwargs)
    backbone = timm.create_model(base_arch, pretrained=True, num_classes=0, **create_kwargs)
    model = IsoMaxClassifier(backbone, num_classes, **wrapper_kwargs)
    model.conversion = ConversionReport("fresh", f"fresh head: {num_classes} classes asked, the weights have {source_classes}")
    return model


def _isomax_checkpoint_filter(state_dict: Dict[str, torch.Tensor], model: IsoMaxClassifier,
                              declared_classes: Set[int] = frozenset()):
    """Check a checkpoint against an IsoMax model key by key; drop the head if the caller asked for another
    class count. ``declared_classes``: the counts the checkpoint's own config declares; a model built with
    one of them whose checkpoint holds another count has a damaged config, and is refused rather than
    given a silently re-initialised head."""
    if not any(k.startswith(BACKBONE_PREFIX) or k.startswith("head.") for k in state_dict):
        raise _SoftMaxStateDict(state_dict)
    state_dict = dict(state_dict)
    expected = model.state_dict()
    prototypes = state_dict.get("head.prototypes")
    if prototypes is not None and prototypes.shape[0] != model.num_classes and model.num_classes in declared_classes:
        raise ValueError(f"the checkpoint's config declares {model.num_classes} classes but its head holds "
                         f"{prototypes.shape[0]} prototypes; fix num_classes in its config.json, or pass "
                         f"num_classes={prototypes.shape[0]}.")
    if prototypes is not None and prototypes.shape[0] != model.num_classes:
        # Another class count asked for: keep the backbone, start a fresh head (timm's num_classes
        # semantics), and say so on the model.
        model.conversion = ConversionReport("fresh", f"fresh head: {model.num_classes} classes asked, the "
                                                     f"checkpoint has {prototypes.shape[0]}")
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
        expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match {model.pretrained_cfg.get('architecture') or 'the model'}: "
            f"{len(missing)} missing keys (first: {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(first: {unexpected[:3]}); is it a checkpoint of another architecture?"
        )
    return state_dict

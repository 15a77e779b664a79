"""Registers ``<arch>_isomaxplus``, ``<arch>_isomax`` and ``<arch>_dismax`` (one name per key of
:data:`timm_isomax.model.HEAD_TYPES`) in timm's own registry, for every timm classification architecture,
with the base architecture's pretrained tags mirrored.

After ``import timm_isomax``::

    timm.create_model("resnet50_isomaxplus", num_classes=10)                   # fresh model
    timm.create_model("resnet50_isomaxplus.a1_in1k", pretrained=True, num_classes=10)
    #   -> backbone weights of resnet50.a1_in1k, loaded by timm's own path; fresh IsoMax+ head
    timm.create_model("local-dir:path/to/isomax_model", pretrained=True)       # a saved IsoMax model

Where the weights come from decides how they load:

* a mirrored tag of the base architecture (``resnet50_isomaxplus.a1_in1k``): SoftMax weights of the base,
  loaded into the backbone by timm exactly as ``timm.create_model("resnet50.a1_in1k")`` would
  (custom loaders, checkpoint filters and ``in_chans`` adaptation included);
* a published tag declared by a hub config (``resnet10t_isomaxplus.mnist``, see ``hub_configs/``), or any
  other source (``hf-hub:``, ``local-dir:``, a ``pretrained_cfg`` dict or ``file=`` overlay): a whole IsoMax
  model checkpoint (``backbone.*`` and ``head.*`` keys), checked key by key; hub tags download from their
  Hub repo through the Hugging Face cache.
"""
import contextlib
import dataclasses
import difflib
import functools
import warnings
from collections import deque
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Set, Tuple

import timm
import torch
from timm.models import get_arch_pretrained_cfgs, load_pretrained, register_model, resolve_pretrained_cfg

from . import isomax_models
from .._timm_compat import DefaultCfg, PretrainedCfg
from .conversion import ConversionReport, convert_softmax_model
from ..hub.folder import IMPORT_HINT, check_model_folder, hub_downloads, timm_weight_downloads
from ..hub.config import HubConfig, packaged_hub_configs
from .classifier import BACKBONE_PREFIX, HEAD_TYPES, IsoMaxClassifier, isomax_layer_names

__all__ = [
    "register_isomax_variants",
    "register_all",
    "list_isomax_models",
    "base_architecture",
    "is_classification_architecture",
    "create_model",
    "closest_models_hint",
    "register_hub_config",
    "ENCODER_ONLY_SUFFIX",
]

# timm's encoder-only archs (deepseek_vit_412m_enc, gemma4_vit_*_enc, qwen3_vit_*_enc, mobilenetv5_300m_enc)
# output tokens and have no classifier or pre-logits; all 7 in timm 1.0.31 carry this suffix.
ENCODER_ONLY_SUFFIX = "_enc"

# isomax architecture name -> (base architecture, head type)
_VARIANTS: Dict[str, Tuple[str, str]] = {}
# "<isomax arch>.<tag>" -> hub config, for the tags of IsoMax weights: loaded whole, never as base SoftMax weights
_HUB_CONFIGS: Dict[str, HubConfig] = {}


def _suffix(head_type: str) -> str:
    return "_" + head_type


def base_architecture(model_name: str) -> Tuple[str, str]:
    """Split a registered IsoMax model name into (base architecture, head type).

    Example:
        >>> base_architecture("resnet50_isomaxplus.a1_in1k")
        ('resnet50', 'isomaxplus')
    """
    arch = timm.models.get_arch_name(model_name)
    try:
        return _VARIANTS[arch]
    except KeyError:
        raise ValueError(f"{arch!r} is not a registered IsoMax architecture. {closest_models_hint(arch)}") from None


def is_classification_architecture(arch: str) -> bool:
    """Whether ``arch`` is a timm architecture that can carry an IsoMax head (has pre-logits)."""
    return timm.is_model(arch) and arch not in _VARIANTS and not arch.endswith(ENCODER_ONLY_SUFFIX)


def _mirror_pretrained_cfg(cfg: PretrainedCfg) -> PretrainedCfg:
    # The mirrored cfg describes the IsoMax model: layer names under the wrapper's prefix, the head as
    # classifier. Weight location and num_classes stay the source's (they say what the weights are).
    return dataclasses.replace(cfg, **isomax_layer_names(cfg.first_conv))


def _mirrored_default_cfg(base_cfgs: Dict[str, PretrainedCfg]) -> DefaultCfg:
    # base_cfgs: get_arch_pretrained_cfgs(base_arch), a deep copy timm makes per call (the bulk of
    # `import timm_isomax`), so it is read once per architecture; each variant's cfgs are new objects
    tags: List[str] = []
    cfgs: Dict[str, PretrainedCfg] = {}
    for name, cfg in base_cfgs.items():
        tag = timm.models.split_model_name_tag(name)[1]
        tags.append(tag)
        cfgs[tag] = _mirror_pretrained_cfg(cfg)
    if not tags:  # an arch registered without any cfg still needs one to build
        tags, cfgs = [""], {"": PretrainedCfg()}
    return DefaultCfg(tags=deque(tags), cfgs=cfgs, is_pretrained=any(c.has_weights for c in cfgs.values()))


def _hub_pretrained_cfg(config: HubConfig, base_arch: str) -> PretrainedCfg:
    # The published model's own cfg: its Hub repo pinned to the pushed commit, class count and preprocessing.
    # An unpublished config has no weight source: timm does not list it as pretrained, and asking for its
    # weights gets a one-line answer instead of a minute of retries against a repo that does not exist.
    first_conv = _base_pretrained_cfg(base_arch).first_conv
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in (config.data_config or {}).items()}
    labels = dict(num_classes=len(config.label_names), label_names=tuple(config.label_names)) if config.label_names else {}
    return PretrainedCfg(hf_hub_id=config.hf_hub_id if config.is_published else None, license=config.license,
                         architecture=config.architecture,
                         tag=config.tag, origin_url=f"https://huggingface.co/{config.repo_id}",
                         paper_ids="arXiv:2105.14399", **labels, **data, **isomax_layer_names(first_conv))


@functools.lru_cache(maxsize=None)
def _hub_configs_by_arch() -> Dict[str, Tuple[HubConfig, ...]]:
    grouped: Dict[str, List[HubConfig]] = {}
    for config in packaged_hub_configs():
        grouped.setdefault(config.architecture, []).append(config)
    return {arch: tuple(configs) for arch, configs in grouped.items()}


def _add_hub_tag(config: HubConfig, base_arch: str, default_cfg: DefaultCfg) -> None:
    # Hub tags are appended: the untagged name keeps the base's default tag. Added before register_model,
    # which copies the DefaultCfg into timm's lookup tables.
    if config.tag not in default_cfg.cfgs:
        default_cfg.tags.append(config.tag)
    default_cfg.cfgs[config.tag] = _hub_pretrained_cfg(config, base_arch)
    default_cfg.is_pretrained = default_cfg.is_pretrained or config.is_published
    _HUB_CONFIGS[config.name] = config


def register_hub_config(config: HubConfig) -> str:
    """Register the tag of a hub config that is not shipped in the package (your own published model);
    returns ``<architecture>.<tag>``. Packaged hub configs register on import.

    Example:
        >>> register_hub_config(load_hub_config("my_configs/resnet50_isomaxplus.pets.json"))
        'resnet50_isomaxplus.pets'
        >>> model = timm.create_model("resnet50_isomaxplus.pets", pretrained=True)
    """
    if config.architecture not in _VARIANTS:
        raise ValueError(f"{config.path or config.name}: unknown IsoMax architecture {config.architecture!r}. "
                         f"{closest_models_hint(config.architecture)}")
    base_arch, head_type = _VARIANTS[config.architecture]
    _add_hub_tag(config, base_arch, isomax_models.default_cfgs[config.architecture])
    with warnings.catch_warnings():  # timm warns that the name is registered again: that is the point
        warnings.simplefilter("ignore")
        register_model(_make_entrypoint(config.architecture, base_arch, head_type))
    return config.name


def _make_entrypoint(name: str, base_arch: str, head_type: str) -> Callable[..., torch.nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        return _create_isomax_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = isomax_models.__name__
    entrypoint.__doc__ = f"{base_arch} backbone with an {head_type} head (timm_isomax)."
    return entrypoint


def register_isomax_variants(base_arch: str, head_types: Iterable[str] = tuple(HEAD_TYPES)) -> List[str]:
    """Register ``<base_arch>_<head_type>`` in timm's registry and return the names.

    ``import timm_isomax`` does this for every timm classification architecture; call it yourself for
    architectures registered later (your own ``@register_model`` functions). Registering twice is a no-op.

    Example:
        >>> register_isomax_variants("resnet18")
        ['resnet18_isomaxplus', 'resnet18_isomax', 'resnet18_dismax']
    """
    if not timm.is_model(base_arch):
        raise ValueError(f"unknown timm architecture {base_arch!r}. {closest_models_hint(base_arch, include_isomax=False)}")
    if not is_classification_architecture(base_arch):
        raise ValueError(
            f"{base_arch!r} has no classifier and no pre-logits (an encoder-only or IsoMax architecture), "
            f"so it cannot carry an IsoMax head."
        )
    names, base_cfgs = [], None
    for head_type in head_types:
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head type must be one of {sorted(HEAD_TYPES)}, got {head_type!r}.")
        name = base_arch + _suffix(head_type)
        names.append(name)
        if name in _VARIANTS:
            continue
        if base_cfgs is None:
            base_cfgs = get_arch_pretrained_cfgs(base_arch)
        default_cfg = _mirrored_default_cfg(base_cfgs)
        for config in _hub_configs_by_arch().get(name, ()):
            _add_hub_tag(config, base_arch, default_cfg)
        isomax_models.default_cfgs[name] = default_cfg
        _VARIANTS[name] = (base_arch, head_type)
        register_model(_make_entrypoint(name, base_arch, head_type))
    return names


def register_all() -> int:
    """Register every head variant of every timm classification architecture; returns how many names exist."""
    for arch in timm.list_models():
        if is_classification_architecture(arch):
            register_isomax_variants(arch)
    unknown = sorted(set(_hub_configs_by_arch()) - set(_VARIANTS))
    if unknown:
        # a warning, not an error: one stale hub config must not make `import timm_isomax` fail
        warnings.warn(f"hub_configs/ declare weights for {unknown}, which this timm has no architecture for; "
                      f"their tags are not registered (fix those hub configs, or the installed timm).")
    return len(_VARIANTS)


def list_isomax_models(filter: str = "", head_type: Optional[str] = None) -> List[str]:
    """Registered IsoMax architecture names, optionally filtered (fnmatch) and by head type."""
    names = timm.list_models(filter or "*", module=isomax_models.__name__.split(".")[-1])
    return [n for n in names if head_type is None or _VARIANTS.get(n, ("", ""))[1] == head_type]


def closest_models_hint(name: str, include_isomax: bool = True) -> str:
    """A sentence naming the registered models closest to ``name`` (for error messages)."""
    arch = timm.models.get_arch_name(name)
    pool = timm.list_models() if include_isomax else [n for n in timm.list_models() if n not in _VARIANTS]
    close = difflib.get_close_matches(arch, pool, n=3, cutoff=0.6)
    hint = f"Closest matches: {', '.join(close)}." if close else "See timm.list_models('*_isomaxplus')."
    return hint


def create_model(model_name: str, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model`` with a one-line error naming the closest architectures for unknown names.

    Example:
        >>> model = create_model("resnet18_isomaxplus", num_classes=10)
    """
    source, model_id = timm.models.parse_model_name(model_name)
    if source is None and not timm.is_model(timm.models.get_arch_name(model_id)):
        raise ValueError(f"unknown model {model_name!r}. {closest_models_hint(model_id)}")
    if source == "local-dir":
        # untrusted files: validated before timm parses them (timm's parser fails with KeyError/TypeError)
        check_model_folder(model_id, in_chans=kwargs.get("in_chans"))
    try:
        if source == "hf-hub":
            with hub_downloads(model_id.split("@")[0], model_name):
                return timm.create_model(model_name, **kwargs)
        with _registry_downloads(model_name, kwargs) if source is None else contextlib.nullcontext():
            return timm.create_model(model_name, **kwargs)
    except (RuntimeError, TypeError, AssertionError, KeyError, AttributeError, IndexError) as error:
        if source is None and not isinstance(error, RuntimeError):
            raise  # the caller's own arguments: Python's usual errors
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        if str(error).startswith("Unknown model"):
            # an hf-hub:/local-dir: config naming an architecture timm does not know (yet)
            raise ValueError(f"{first_line} (from {model_name!r}): {IMPORT_HINT}; an architecture registered after "
                             f"that import needs timm_isomax.register_isomax_variants('<base arch>').") from None
        if source is None:
            raise
        # e.g. torch's multi-line "Error(s) in loading state_dict" (weights of another architecture), or a
        # timm model class refusing saved arguments
        raise ValueError(f"could not load {model_name!r} ({type(error).__name__}: {first_line}); check that "
                         f"config.json's 'architecture' and 'model_args' describe the saved weights, or re-export the "
                         f"model.") from error


def _registry_downloads(model_name: str, kwargs: Dict[str, Any]) -> ContextManager[None]:
    # the Hub weights of a registry name's tag (resnet18.a1_in1k, resnet18_isomaxplus.a1_in1k): one line where
    # they cannot be had. Not for weights the caller gives, nor for published IsoMax tags, whose loader wraps
    # its own download.
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if not kwargs.get("pretrained") or kwargs.get("pretrained_cfg") is not None or any(overlay.get(k) for k in _WEIGHT_SOURCE_KEYS):
        return contextlib.nullcontext()
    try:
        tag = timm.models.get_pretrained_cfg(model_name).tag
    except (RuntimeError, AttributeError):  # an unknown tag, or no cfg: timm.create_model says so itself
        return contextlib.nullcontext()
    if f"{timm.models.get_arch_name(model_name)}.{tag}" in _HUB_CONFIGS:
        return contextlib.nullcontext()
    return timm_weight_downloads(model_name)


# --- building -------------------------------------------------------------------------------------
# pretrained_cfg fields that say where weights are; an overlay that sets one replaces the registry source.
_WEIGHT_SOURCE_KEYS = ("file", "url", "hf_hub_id", "state_dict")


def _create_isomax_model(
    variant: str,
    pretrained: bool = False,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
    cache_dir: Any = None,
    distance_mode: str = "matmul",
    ood_config: Optional[Dict[str, Any]] = None,
    **kwargs: Any,
) -> torch.nn.Module:
    base_arch, head_type = _VARIANTS[variant]
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
    hub_config = _HUB_CONFIGS.get(f"{variant}.{cfg.tag}")
    isomax_tag = hub_config is not None
    # A cfg given whole (a local-dir: folder, an hf-hub: repo) or an overlay with a file/url brings its own
    # weights, whatever its tag says: a reproduction saved under a shipped config's tag is no unpublished tag.
    own_weights = not (pretrained_cfg is None or isinstance(pretrained_cfg, str)) or any(
        (pretrained_cfg_overlay or {}).get(k) for k in _WEIGHT_SOURCE_KEYS
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
        model = _load_saved_weights(variant, cfg, wrapper_kwargs, cache_dir, kwargs)
        if features_only:
            kwargs.pop("num_classes", None)
            backbone_cfg = dataclasses.replace(_base_pretrained_cfg(base_arch), state_dict=model.backbone.state_dict())
            return timm.create_model(base_arch, pretrained=True, pretrained_cfg=backbone_cfg, features_only=True,
                                     **feature_kwargs, **kwargs)
    model.pretrained_cfg = model.default_cfg = cfg.to_dict()
    return model


def _base_pretrained_cfg(base_arch: str) -> PretrainedCfg:
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


def _load_saved_weights(variant: str, cfg: PretrainedCfg, wrapper_kwargs: Dict[str, Any], cache_dir: Any,
                        kwargs: Dict[str, Any]) -> IsoMaxClassifier:
    """Build ``variant`` with the weights ``cfg`` locates, read by timm's loaders.

    An IsoMax checkpoint loads whole, checked key by key. A SoftMax checkpoint of the base architecture
    loads into the backbone through timm's path for the base (its checkpoint filter included); the head
    starts fresh.
    """
    base_arch = _VARIANTS[variant][0]
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
        backbone_cfg = dataclasses.replace(_base_pretrained_cfg(base_arch), state_dict=softmax.state_dict)
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

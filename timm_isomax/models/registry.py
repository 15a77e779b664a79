"""Registers ``<arch>_isomaxplus``, ``<arch>_isomax`` and ``<arch>_dismax`` (one name per key of
:data:`timm_isomax.models.classifier.HEAD_TYPES`) in timm's own registry, for every timm classification architecture,
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
import dataclasses
import functools
import warnings
from collections import deque
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import timm
import torch
from timm.models import get_arch_pretrained_cfgs, register_model

from .._timm_compat import DefaultCfg, PretrainedCfg
from ..hub import HubConfig, packaged_hub_configs
from . import isomax_models
from .builder import base_pretrained_cfg, build_isomax_model
from .classifier import HEAD_TYPES, isomax_layer_names
from .factory import closest_models_hint, create_model  # noqa: F401  (create_model: the old path timm_isomax.models.registry.create_model)
from .weights import PUBLISHED_TAGS

__all__ = ["ENCODER_ONLY_SUFFIX", "base_architecture", "is_classification_architecture", "register_hub_config",
           "register_isomax_variants", "register_all", "list_isomax_models"]


# timm's encoder-only archs (deepseek_vit_412m_enc, gemma4_vit_*_enc, qwen3_vit_*_enc, mobilenetv5_300m_enc)
# output tokens and have no classifier or pre-logits; all 7 in timm 1.0.31 carry this suffix.
ENCODER_ONLY_SUFFIX = "_enc"


# isomax architecture name -> (base architecture, head type)
_VARIANTS: Dict[str, Tuple[str, str]] = {}





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
    first_conv = base_pretrained_cfg(base_arch).first_conv
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
    PUBLISHED_TAGS[config.name] = config


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
        return build_isomax_model(name, base_arch, head_type, pretrained=pretrained, **kwargs)

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

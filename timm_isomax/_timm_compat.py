"""Every use of timm internals lives here, so a timm release that moves them breaks one small file.

Tested with the timm range pinned in pyproject.toml.
"""
from typing import Any, Optional, Tuple, Union

from torch import nn
from timm.models._pretrained import DefaultCfg, PretrainedCfg  # noqa: F401  (re-exported for the registry)

__all__ = ["DefaultCfg", "PretrainedCfg", "prefix_layer_names", "copy_traits"]

LayerNames = Optional[Union[str, Tuple[str, ...]]]


def prefix_layer_names(names: LayerNames, prefix: str) -> LayerNames:
    """Prefix a pretrained-cfg layer name or tuple of names (``first_conv``, ``classifier``)."""
    if names is None:
        return None
    if isinstance(names, str):
        return prefix + names
    return tuple(prefix + n for n in names)


def copy_traits(source: nn.Module, target: nn.Module, prefix: str) -> None:
    """Give ``target`` the input traits timm recorded on ``source`` (timm >= 1.0.31 keeps them in
    ``model._traits``), with layer names re-rooted under ``prefix``. timm reads them to adapt input
    convolutions and to report the model's input size."""
    traits: dict[str, Any] = dict(getattr(source, "_traits", {}))
    if "first_conv" in traits:
        traits["first_conv"] = prefix_layer_names(traits["first_conv"], prefix)
    target._traits = traits

"""Every use of timm internals lives here, so a timm release that moves them breaks one small file.

Tested with the timm range pinned in pyproject.toml.
"""
from typing import Any, Optional, Tuple, Union

from torch import nn
from timm.models._pretrained import DefaultCfg, PretrainedCfg  # noqa: F401  (re-exported for the registry)

__all__ = ["DefaultCfg", "PretrainedCfg", "prefix_layer_names", "copy_traits", "record_model_arg", "save_timm_config",
           "model_input_size"]

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


def save_timm_config(model: nn.Module, path: str, extra: Optional[dict] = None, data_config: Optional[dict] = None) -> None:
    """Write timm's ``config.json`` for ``model`` (timm's own writer, not re-exported by ``timm.models``),
    with ``extra`` keys at the top level: ``pretrained_cfg`` accepts only PretrainedCfg fields."""
    import json

    from timm.models._hub import save_config_for_hf

    save_config_for_hf(model, path, model_config=dict(extra or {}), data_config=data_config)
    # The class count lives in the top-level num_classes (what timm reads); a second copy in model_args
    # makes transformers' TimmWrapper pass num_classes twice ("got multiple values for keyword argument").
    with open(path) as handle:
        config = json.load(handle)
    model_args = config.get("model_args") or {}
    if model_args.get("num_classes") == config.get("num_classes"):
        model_args.pop("num_classes", None)
        with open(path, "w") as handle:
            json.dump(config, handle, indent=2)


def record_model_arg(model: nn.Module, name: str, value: Any) -> None:
    """Record a construction argument changed after construction, so timm's config export saves it
    (timm keeps them in ``model._model_args``; ``timm.create_model`` fills it after the entrypoint)."""
    model._model_args = dict(getattr(model, "_model_args", {}), **{name: value})


def model_input_size(model: nn.Module) -> Tuple[int, int, int]:
    """(C, H, W) the model takes now: its traits (e.g. ``img_size=64``), else its pretrained cfg."""
    from timm.models._input import get_model_input_config

    return tuple(get_model_input_config(model)["input_size"])

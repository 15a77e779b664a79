"""Creating models with errors that say what to do: :func:`create_model` (``timm.create_model`` with one-line
errors for unknown names, unreadable folders and downloads that cannot be had) and the names closest to an unknown one.
"""
import contextlib
import difflib
from typing import Any, ContextManager, Dict

import timm
import torch

from ..hub import IMPORT_HINT, check_model_folder, hub_downloads, timm_weight_downloads
from . import isomax_models
from .weights import PUBLISHED_TAGS, WEIGHT_SOURCE_KEYS

__all__ = ["closest_models_hint", "create_model"]


def closest_models_hint(name: str, include_isomax: bool = True) -> str:
    """A sentence naming the registered models closest to ``name`` (for error messages)."""
    arch = timm.models.get_arch_name(name)
    isomax = set(timm.list_models(module=isomax_models.__name__.rpartition(".")[2]))  # every registered variant
    pool = timm.list_models() if include_isomax else [n for n in timm.list_models() if n not in isomax]
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
    if not kwargs.get("pretrained") or kwargs.get("pretrained_cfg") is not None or any(overlay.get(k) for k in WEIGHT_SOURCE_KEYS):
        return contextlib.nullcontext()
    try:
        tag = timm.models.get_pretrained_cfg(model_name).tag
    except (RuntimeError, AttributeError):  # an unknown tag, or no cfg: timm.create_model says so itself
        return contextlib.nullcontext()
    if f"{timm.models.get_arch_name(model_name)}.{tag}" in PUBLISHED_TAGS:
        return contextlib.nullcontext()
    return timm_weight_downloads(model_name)




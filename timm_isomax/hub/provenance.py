"""Provenance: what produced a model folder, and whether a folder holds the model a hub config measured.

Every folder :func:`timm_isomax.hub.save_pretrained` writes records the SHA-256 of its weights in
config.json (``provenance.weights_sha256``, a top-level key timm ignores); the trainer adds the run's settings and the identity
of the data it trained on. ``timm-isomax reproduce`` records the hash of the folder it measured beside the
numbers in the hub config (``metrics.weights_sha256``), and ``timm-isomax push`` refuses a folder that is
not that one (:func:`folder_mismatch`), so a card can never describe other weights::

    >>> from timm_isomax.provenance import weights_sha256, folder_mismatch
    >>> weights_sha256("outputs/resnet10t_isomaxplus.mnist/model.safetensors")
    '3f1c...'
    >>> folder_mismatch("outputs/resnet10t_isomaxplus.mnist", load_hub_config("hub_configs/resnet10t_isomaxplus.mnist.json"))
    None

The hash covers the tensors (names, dtypes, shapes, bytes), not the file: re-exporting the same weights
(another safetensors header, another tag) keeps it.
"""
import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union

import safetensors
import torch

if TYPE_CHECKING:
    from .config import HubConfig

__all__ = ["weights_sha256", "recorded_provenance", "folder_mismatch", "check_folder_matches", "PROVENANCE_KEY",
           "DATA_CONFIG_KEYS"]

# Top-level key of the provenance record in config.json.
PROVENANCE_KEY = "provenance"
# The preprocessing a hub config records (and a pushed folder must match).
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _tensor_digest(digest: "hashlib._Hash", name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{name}\0{str(tensor.dtype)}\0{tuple(tensor.shape)}\0".encode())
    # raw bytes of any dtype (bfloat16 included, which numpy cannot hold)
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_sha256(source: Union[str, Path, Mapping[str, torch.Tensor]]) -> str:
    """SHA-256 (hex) of a state dict, or of the tensors in a ``model.safetensors`` file, in name order."""
    digest = hashlib.sha256()
    if isinstance(source, Mapping):
        for name in sorted(source):
            _tensor_digest(digest, name, source[name])
        return digest.hexdigest()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a model folder holds model.safetensors (save_pretrained writes it).")
    with safetensors.safe_open(str(path), framework="pt") as weights:
        for name in sorted(weights.keys()):
            _tensor_digest(digest, name, weights.get_tensor(name))
    return digest.hexdigest()


def recorded_provenance(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The provenance record of a model folder's config.json (empty for folders written before it existed)."""
    record = config.get(PROVENANCE_KEY)
    return dict(record) if isinstance(record, dict) else {}


def _same(a: Any, b: Any) -> bool:
    # JSON turns tuples into lists and may round floats: compare the values, not their containers
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def folder_mismatch(folder: Union[str, Path], config: "HubConfig") -> Optional[str]:
    """The first way the model in ``folder`` differs from what ``config`` measured, or None if it is that model.

    Checked in this order: the weights file against the hash its own config.json recorded (changed after
    saving?), the architecture, the weights against the hub config's ``metrics.weights_sha256``, the label
    names, the data config. A hub config measured before hashes were recorded has no hash: that is a
    difference too (nothing says which weights its numbers describe).
    """
    from .folder import WEIGHTS_NAME, read_config

    folder = Path(folder)
    saved = read_config(folder)
    actual = weights_sha256(folder / WEIGHTS_NAME)
    own = recorded_provenance(saved).get("weights_sha256")
    if own and own != actual:
        return (f"{folder / WEIGHTS_NAME} is not the file its config.json was saved with (SHA-256 {actual[:12]}..., "
                f"recorded {own[:12]}...)")
    if saved.get("architecture") != config.architecture:
        return f"{folder} holds a {saved.get('architecture')} model, the hub config describes {config.architecture}"
    measured = (config.metrics or {}).get("weights_sha256")
    if not measured:
        return (f"{config.path or config.name} records no weights hash, so nothing says which weights its numbers "
                f"describe; run `timm-isomax reproduce --evaluate-only {config.path or 'HUB_CONFIG'}` on this folder")
    if measured != actual:
        return (f"the weights in {folder} (SHA-256 {actual[:12]}...) are not the ones {config.name}'s numbers were "
                f"measured on ({measured[:12]}...); push the folder reproduce measured, or re-measure this one with "
                f"`timm-isomax reproduce --evaluate-only`")
    if config.label_names is not None and not _same(saved.get("label_names"), config.label_names):
        return f"{folder} has label names {saved.get('label_names')}, the hub config {config.label_names}"
    pretrained_cfg = saved.get("pretrained_cfg", {})
    for key, value in (config.data_config or {}).items():
        if not _same(pretrained_cfg.get(key), value):
            return f"{folder} has {key} {pretrained_cfg.get(key)!r}, the hub config's data config {value!r}"
    return None


def check_folder_matches(folder: Union[str, Path], config: "HubConfig") -> None:
    """Raise a one-line ``ValueError`` naming the first difference :func:`folder_mismatch` finds."""
    problem = folder_mismatch(folder, config)
    if problem:
        raise ValueError(f"refusing to publish: {problem}.")

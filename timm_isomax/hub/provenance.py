"""Provenance: what produced a model folder, and whether a folder holds the model a hub config measured.

Every folder :func:`timm_isomax.hub.save_pretrained` writes records the SHA-256 of its weights in
config.json (``provenance.weights_sha256``, a top-level key timm ignores); the trainer adds the run's settings and the identity
of the data it trained on. ``timm-isomax reproduce`` records the hash of the folder it measured beside the
numbers in the hub config (``metrics.weights_sha256``), and ``timm-isomax push`` refuses a folder that is
not that one (``folder_mismatch``), so a card can never describe other weights::

    >>> from timm_isomax.hub import weights_sha256, folder_mismatch
    >>> weights_sha256("outputs/resnet10t_isomaxplus.mnist/model.safetensors")
    '3f1c...'
    >>> folder_mismatch("outputs/resnet10t_isomaxplus.mnist", load_hub_config("hub_configs/resnet10t_isomaxplus.mnist.json"))
    None

(:func:`~timm_isomax.hub.publish.folder_mismatch` lives with the push that refuses such folders.)

The hash covers the tensors (names, dtypes, shapes, bytes), not the file: re-exporting the same weights
(another safetensors header, another tag) keeps it.
"""
import hashlib
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import safetensors
import torch

__all__ = ["weights_sha256", "recorded_provenance", "PROVENANCE_KEY",
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

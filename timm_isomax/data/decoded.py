"""Images decoded once: a split's pixels as one uint8 tensor (N, C, H, W) at the model's input size, kept in memory
and, given a folder, on disk between runs, so that an epoch indexes a tensor instead of decoding every JPEG again.

A cache file is keyed by what the pixels depend on: the rows (a digest of their content and their count), the
image column, the PIL mode, the size and the resize interpolation; other rows or another size give another file,
never stale pixels. :class:`DecodedImages` normalises batches with the model's data config on their own device.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import datasets
import numpy as np
import torch
from PIL import Image

from .._io import cached_tensors, content_key
from .columns import find_columns
from .images import content_fingerprint, convert_image
from .transforms import model_data_config

__all__ = ["DecodedImages", "DecodedCache", "decode_rows", "decoded_for_model"]

# rows decoded per slice of the dataset (bounds the memory of PIL images held at once)
_DECODE_BATCH = 1000


@dataclass
class DecodedImages:
    """Decoded images (uint8, N x C x H x W), their labels (int64, -1 where none) and the normalisation of the
    model they are for; ``normalize`` turns a uint8 batch into the model's input, bit for bit what
    ``ToTensor()`` then ``Normalize(mean, std)`` give for the same pixels.

    Example:
        >>> decoded = decoded_for_model(model, splits.val, DecodedCache("outputs/decoded_cache")).to("cuda")
        >>> logits = model(decoded.normalize(decoded.images[:256]))
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device) -> "DecodedImages":
        return DecodedImages(*(t.to(device) for t in (self.images, self.labels, self.mean, self.std)))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        # the same operations as torchvision's ToTensor (divide by 255) and Normalize (subtract, then divide)
        return images.float().div(255).sub_(self.mean.view(-1, 1, 1)).div_(self.std.view(-1, 1, 1))

    def batches(self, batch_size: int) -> "DecodedBatchesInOrder":
        """The images in row order, normalised, ``batch_size`` at a time (the last batch may be smaller)."""
        return DecodedBatchesInOrder(self, batch_size)


class DecodedBatchesInOrder:
    """``(images, labels)`` batches of :class:`DecodedImages` in row order: what an evaluation loader gives."""

    def __init__(self, decoded: DecodedImages, batch_size: int):
        self.decoded, self.batch_size = decoded, batch_size

    def __len__(self) -> int:
        return -(-len(self.decoded) // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.decoded), self.batch_size):
            end = start + self.batch_size
            yield self.decoded.normalize(self.decoded.images[start:end]), self.decoded.labels[start:end]


def _resample(interpolation: str) -> int:
    try:
        return Image.Resampling[interpolation.upper()]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of "
                         f"{', '.join(m.name.lower() for m in Image.Resampling)}.") from None


def decode_rows(rows: datasets.Dataset, image_column: str, label_column: Optional[str], mode: str,
                size: Sequence[int], interpolation: str = "bilinear") -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: every image of ``rows`` converted to ``mode`` (:func:`convert_image`), resized to
    ``size`` (H, W) where it differs (as torchvision's ``Resize((H, W))`` does it), as uint8 (N, C, H, W); labels
    int64, -1 where there is none. An undecodable row is a one-line ``ValueError`` naming it."""
    height, width = size
    resample = _resample(interpolation)
    images = np.empty((len(rows), height, width, 1 if mode == "L" else 3), dtype=np.uint8)
    labels = np.full(len(rows), -1, dtype=np.int64)
    columns = [image_column] + ([label_column] if label_column else [])
    for start in range(0, len(rows), _DECODE_BATCH):
        try:
            chunk = rows.select_columns(columns)[start:start + _DECODE_BATCH]
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"rows {start}-{start + _DECODE_BATCH - 1}: an image in column {image_column!r} cannot "
                             f"be decoded ({type(error).__name__}); drop undecodable rows first "
                             f"(timm_isomax.data.drop_undecodable_images).") from None
        for offset, image in enumerate(chunk[image_column]):
            if image is None:
                raise ValueError(f"row {start + offset} has no image in column {image_column!r}; drop it first.")
            image = convert_image(image, mode)
            if image.size != (width, height):
                image = image.resize((width, height), resample)
            images[start + offset] = np.asarray(image).reshape(height, width, -1)
        if label_column:
            labels[start:start + len(chunk[label_column])] = [-1 if v is None else int(v) for v in chunk[label_column]]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


class DecodedCache:
    """Decoded splits, in memory and, given ``folder``, on disk between runs (one safetensors file per key).

    Example:
        >>> cache = DecodedCache("outputs/decoded_cache")
        >>> images, labels = cache.get(splits.train, "image", "label", "RGB", (32, 32))
    """

    def __init__(self, folder: Optional[str] = None):
        self.folder = Path(folder) if folder else None
        self.decoded, self.loaded = 0, 0  # how many sets were decoded / read from disk (for the log)

    @staticmethod
    def key(rows: datasets.Dataset, image_column: str, mode: str, size: Sequence[int], interpolation: str) -> str:
        description = dict(kind="decoded images", data=content_fingerprint(rows), rows=len(rows),
                           column=image_column, mode=mode, size=list(size), interpolation=interpolation)
        return content_key(description)

    def get(self, rows: datasets.Dataset, image_column: str, label_column: Optional[str], mode: str,
            size: Sequence[int], interpolation: str = "bilinear") -> Tuple[torch.Tensor, torch.Tensor]:
        def decode() -> Dict[str, torch.Tensor]:
            images, labels = decode_rows(rows, image_column, label_column, mode, size, interpolation)
            return {"images": images, "labels": labels}

        # the key reads every encoded image (content_fingerprint): only a cache on disk needs it
        path = (self.folder / f"images-{self.key(rows, image_column, mode, size, interpolation)}.safetensors"
                if self.folder else None)
        tensors, loaded = cached_tensors(path, decode, metadata={"rows": str(len(rows))})
        self.loaded, self.decoded = self.loaded + loaded, self.decoded + (not loaded)
        return tensors["images"], tensors["labels"]


def decoded_for_model(model: torch.nn.Module, rows: datasets.Dataset, cache: Optional[DecodedCache] = None,
                      data_config: Optional[Dict] = None, image_column: Optional[str] = None,
                      label_column: Optional[str] = None) -> DecodedImages:
    """``rows`` decoded at ``model``'s input size and mode, with its normalisation (:func:`model_data_config` with
    ``data_config`` overrides), through ``cache`` (default: decoded now, kept nowhere)."""
    config = model_data_config(model, data_config)
    chans, height, width = config["input_size"]
    if chans not in (1, 3):
        raise ValueError(f"the model takes {chans} input channels; only 1 (grey) and 3 (RGB) image models are supported.")
    image_column, label_column = find_columns(rows, image_column, label_column)
    images, labels = (cache or DecodedCache()).get(rows, image_column, label_column, "L" if chans == 1 else "RGB",
                                                   (height, width), config["interpolation"])
    return DecodedImages(images, labels, torch.tensor(config["mean"], dtype=torch.float32),
                         torch.tensor(config["std"], dtype=torch.float32))

"""Images as a model consumes them: PIL modes (grey, RGB, 16-bit, alpha), rows that do not decode, content digests
(the overlap check between ID and OOD sets, the key of the caches), and :class:`ImageDataset`, the torch dataset over
a split.
"""
import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import datasets
import numpy as np
import torch
from PIL import Image

from .columns import check_column, find_columns

__all__ = ["convert_image", "undecodable_rows", "image_digests", "content_fingerprint", "drop_undecodable_images",
           "ImageDataset", "materialize"]


# 16-bit and 32-bit single-channel modes: PIL's convert("L") clips them at 255 instead of rescaling
_WIDE_GREY_MODES = ("I", "F")


# modes whose transparency is composited onto a white background (what an image viewer shows)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


# rows scanned per batch by undecodable_rows (bounds the memory of undecoded image bytes)
_SCAN_BATCH = 1000


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """An 8-bit "L" image from a 16-bit ("I;16*"), 32-bit integer ("I") or float ("F") one, rescaled.

    "I;16*" and "I" images with values above 255 are taken as 16-bit (0..65535, e.g. 16-bit PNGs); "F"
    images with values in [0, 1] are scaled by 255; everything is clipped to the 8-bit range.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.size and values.max() > 255):
        values = values / 257.0  # 65535 -> 255
    elif image.mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")


def convert_image(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in PIL ``mode`` ("RGB" or "L"), converting what ``Image.convert`` gets wrong:

    * 16-bit / 32-bit grey ("I;16", "I", "F") is rescaled to 8 bits, not clipped at 255 (see
      :func:`_to_8bit_grey`);
    * transparency (RGBA, LA, PA, palette images with a transparent colour) is composited onto white
      instead of dropped (dropping it exposes whatever colour transparent pixels happen to store);
    * CMYK, "1", YCbCr, LAB, HSV, ... go through RGB (PIL has no direct LAB -> L conversion).
    """
    if image.mode == mode:
        return image
    if image.mode.startswith("I;16") or image.mode in _WIDE_GREY_MODES:
        image = _to_8bit_grey(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES or (image.mode in ("L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return image.convert(mode)


def _decode_problem(value: Any) -> Optional[str]:
    """Why an undecoded ``datasets.Image`` value (``{"bytes", "path"}``) cannot be decoded, or None."""
    if value is None or (value.get("bytes") is None and not value.get("path")):
        return "no image"
    try:
        with Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]) as image:
            image.draft(image.mode, (1, 1))  # JPEG: decode at 1/8 scale (still reads every byte); no-op otherwise
            image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    return None


def undecodable_rows(dataset: datasets.Dataset, image_column: str) -> Dict[int, str]:
    """``{row: reason}`` for every row of ``image_column`` that PIL cannot decode (or that has no image).

    Reads each image once, without keeping it (undecoded bytes, ``_SCAN_BATCH`` rows at a time).
    """
    check_column(dataset, image_column, "image")
    raw = dataset.cast_column(image_column, datasets.Image(decode=False)).select_columns([image_column])
    problems: Dict[int, str] = {}
    for start in range(0, len(raw), _SCAN_BATCH):
        for offset, value in enumerate(raw[start:start + _SCAN_BATCH][image_column]):
            problem = _decode_problem(value)
            if problem:
                problems[start + offset] = problem
    return problems


def _encoded_image(value: Any) -> Optional[bytes]:
    """The encoded file of an undecoded ``datasets.Image`` value: its bytes, or the file at its path (image
    folders keep only paths); None where neither is at hand."""
    if value is None:
        return None
    if value.get("bytes") is not None:
        return value["bytes"]
    path = value.get("path")
    return Path(path).read_bytes() if path and Path(path).is_file() else None


def image_digests(dataset: datasets.Dataset, image_column: str) -> Set[str]:
    """SHA-1 digests of the images of ``image_column``, to find the images two sets share.

    Hashes each image's content: its encoded bytes, the file at its path where the dataset keeps only paths
    (an image folder), or its decoded pixels where neither can be read; rows without an image are left out.
    """
    check_column(dataset, image_column, "image")
    raw = dataset.cast_column(image_column, datasets.Image(decode=False)).select_columns([image_column])
    digests: Set[str] = set()
    for start in range(0, len(raw), _SCAN_BATCH):
        for offset, value in enumerate(raw[start:start + _SCAN_BATCH][image_column]):
            content = _encoded_image(value)
            if content is None and value is not None and value.get("path"):
                # a path datasets resolves itself (e.g. inside an archive): the pixels are what is compared
                try:
                    pixels = np.asarray(dataset[start + offset][image_column])
                except Exception:  # an undecodable image cannot be compared; the loaders name those
                    continue
                content = f"{pixels.shape}{pixels.dtype}".encode() + pixels.tobytes()
            if content is not None:
                digests.add(hashlib.sha1(content).hexdigest())
    return digests


def content_fingerprint(dataset: datasets.Dataset) -> str:
    """A SHA-256 of ``dataset``'s rows, in order: each image's encoded file and every other column's values.

    The caches of decoded images and frozen-backbone features are keyed by it. ``datasets``' own ``_fingerprint``
    follows a local file's modification time, so a fresh copy or checkout of the same data got a new one, and
    every cached entry was decoded or computed again; this digest depends on the content only. Reading the
    encoded bytes costs a small share of decoding them.

    Example:
        >>> content_fingerprint(load_image_dataset("../shared/data/mnist", split="test"))[:12]
        '4c1d...'
    """
    image_columns = sorted(name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image))
    raw = dataset.with_format(None)  # plain Python values: a torch or numpy format would print tensors in short
    for name in image_columns:
        raw = raw.cast_column(name, datasets.Image(decode=False))
    digest = hashlib.sha256(json.dumps([len(dataset), sorted(dataset.column_names), image_columns]).encode())
    for start in range(0, len(raw), _SCAN_BATCH):
        batch = raw[start:start + _SCAN_BATCH]
        for name in sorted(batch):
            if name not in image_columns:
                digest.update(json.dumps(batch[name], default=str).encode())
                continue
            for value in batch[name]:
                # an image known only by a path datasets resolves itself (inside an archive) is keyed by that path
                content = _encoded_image(value) or json.dumps(value and value.get("path")).encode()
                digest.update(len(content).to_bytes(8, "little") + content)
    return digest.hexdigest()


def drop_undecodable_images(dataset: datasets.Dataset, image_column: str, name: str = "the dataset"
                            ) -> Tuple[datasets.Dataset, List[int]]:
    """``dataset`` without its undecodable images, and the dropped row indices.

    A warning says how many rows were dropped and why the first one failed; all rows undecodable is a
    one-line ``ValueError`` (there is nothing to train or evaluate on).
    """
    problems = undecodable_rows(dataset, image_column)
    if not problems:
        return dataset, []
    first = min(problems)
    if len(problems) == len(dataset):
        raise ValueError(f"{name}: none of its {len(dataset)} images can be decoded (row {first}: {problems[first]}); "
                         f"check that column {image_column!r} holds image files.")
    warnings.warn(f"{name}: skipped {len(problems)} of {len(dataset)} images that cannot be decoded (first: row {first}, "
                  f"{problems[first]}).", stacklevel=2)
    bad = set(problems)
    return dataset.select([i for i in range(len(dataset)) if i not in bad]), sorted(problems)


class ImageDataset(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` of images as ``(tensor, label)`` pairs for a timm model.

    Images are converted to ``mode`` (``"RGB"`` or ``"L"``, from the model's input channels) by
    :func:`convert_image` (16-bit grey rescaled, transparency composited onto white, CMYK / palette /
    1-bit converted), then ``transform`` (e.g. ``timm.data.create_transform``) is applied. Rows without a
    label give -1.

    Undecodable images (truncated or corrupt files, rows without an image): with
    ``skip_undecodable=True`` every image is decoded once here and the bad rows are dropped, with a
    warning giving their count (``skipped_rows`` lists them); otherwise reading a bad row raises a
    one-line ``ValueError`` naming the row.

    Args:
        dataset: the Hugging Face dataset.
        transform: PIL image -> tensor.
        mode: PIL mode the model takes.
        image_column / label_column: detected by :func:`find_columns` unless given.
        skip_undecodable: check every image up front and drop the ones that cannot be decoded.
    """

    def __init__(self, dataset: datasets.Dataset, transform: Callable, mode: str = "RGB",
                 image_column: Optional[str] = None, label_column: Optional[str] = None,
                 skip_undecodable: bool = False):
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}.")
        self.image_column, self.label_column = find_columns(dataset, image_column, label_column)
        self.skipped_rows: List[int] = []
        if skip_undecodable:
            dataset, self.skipped_rows = drop_undecodable_images(dataset, self.image_column)
        self.dataset = dataset
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        try:
            row = self.dataset[index]  # decodes the image
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"row {index}: the image in column {self.image_column!r} cannot be decoded "
                             f"({type(error).__name__}: {(str(error).splitlines() or [''])[0]}); remove the row, or "
                             f"pass skip_undecodable=True to skip such rows.") from None
        image = row[self.image_column]
        if image is None:
            raise ValueError(f"row {index} has no image in column {self.image_column!r}; remove the row, or pass "
                             f"skip_undecodable=True to skip such rows.")
        label = row[self.label_column] if self.label_column is not None else -1
        return self.transform(convert_image(image, self.mode)), -1 if label is None else int(label)


def materialize(dataset: torch.utils.data.Dataset, batch_size: int = 256) -> torch.utils.data.TensorDataset:
    """Run a (deterministic) dataset once and keep the tensors in memory: small sets, repeated epochs.

    An empty dataset is a one-line ``ValueError`` (there is nothing to stack).
    """
    if len(dataset) == 0:
        raise ValueError("cannot materialize an empty dataset (0 rows); check the split, limit and filters.")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    images: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    for x, y in loader:
        images.append(x)
        labels.append(torch.as_tensor(y))
    return torch.utils.data.TensorDataset(torch.cat(images), torch.cat(labels))

"""Image datasets through Hugging Face ``datasets``, as timm models consume them.

:func:`load_image_dataset` takes what users have: a Hub dataset id, a Parquet file, a folder of
``<split>.parquet`` files (the layout of ``../shared/data``), a folder saved with ``save_to_disk``, an
image folder; or ``"sklearn-digits"``, scikit-learn's bundled 8x8 handwritten digits, real data that
``pip`` installs, so everything here runs on a machine without network or shared data.
"""
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import datasets
import numpy as np
import torch
from PIL import Image

from .views import is_view, load_view

__all__ = [
    "SKLEARN_DIGITS",
    "load_image_dataset",
    "find_columns",
    "select_classes",
    "check_labels",
    "convert_image",
    "undecodable_rows",
    "image_digests",
    "drop_undecodable_images",
    "ImageDataset",
    "materialize",
    "model_in_chans",
    "model_data_config",
    "model_transform",
    "dataset_for_model",
    "LabelledSplits",
    "load_labelled_splits",
    "sample_rows",
    "load_sample",
    "column_values",
    "class_count",
    "SUBSETS",
    "pad_crop_flip_transform",
    "AUGMENTATIONS",
]

SKLEARN_DIGITS = "sklearn-digits"


def _sklearn_digits(seed: int = 0, test_fraction: float = 0.3) -> datasets.DatasetDict:
    from sklearn.datasets import load_digits  # an optional extra: only this source needs it

    digits = load_digits()
    # 8x8 images with 17 grey levels (0..16) -> 8-bit greyscale PIL images.
    images = [Image.fromarray((img * 255.0 / 16.0).round().astype(np.uint8), mode="L") for img in digits.images]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    split = full.train_test_split(test_size=test_fraction, seed=seed, stratify_by_column="label")
    return datasets.DatasetDict(train=split["train"], test=split["test"])


def _parquet_files(path: Path) -> List[Path]:
    return [path] if path.is_file() else sorted(path.glob("*.parquet"))


def _is_image_folder(path: Path) -> bool:
    """Whether a local dataset path is read as an image folder (no Parquet files, no ``save_to_disk`` folder)."""
    return path.is_dir() and not _parquet_files(path) and not (
        (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists())


def _empty_parquet(path: Path) -> Optional[Path]:
    """The first Parquet file of a local dataset path that holds 0 rows (``datasets`` fails on it with
    "corresponds to no data" or a DatasetGenerationError), or None."""
    import pyarrow.parquet as pq

    for file in _parquet_files(path):
        try:
            if pq.read_metadata(str(file)).num_rows == 0:
                return file
        except Exception:  # a damaged file: the reader names it below
            continue
    return None


def _load_local(path: Path, cache_dir: Optional[str]) -> datasets.DatasetDict:
    if path.is_file():
        return datasets.load_dataset("parquet", data_files={path.stem: str(path)}, cache_dir=cache_dir)
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
    parquet_files = _parquet_files(path)
    if parquet_files:
        return datasets.load_dataset("parquet", data_files={p.stem: str(p) for p in parquet_files}, cache_dir=cache_dir)
    return datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)


def load_image_dataset(
    source: str, split: Optional[str] = None, cache_dir: Optional[str] = None
) -> Union[datasets.Dataset, datasets.DatasetDict]:
    """Load an image classification dataset; one split if ``split`` is given, else all of them.

    Args:
        source: ``"sklearn-digits"``, a local path (Parquet file, folder of ``<split>.parquet``,
            ``save_to_disk`` folder, image folder, a view file: :mod:`timm_isomax.views`) or a Hugging Face
            Hub dataset id.
        split: the split to return (``"train"``, ``"test"``, ...).
        cache_dir: where ``datasets`` keeps its cache.

    Example:
        >>> test = load_image_dataset("../shared/data/mnist", split="test")
        >>> test.features["label"].names[:3]
        ['0', '1', '2']
    """
    if source == SKLEARN_DIGITS:
        splits = _sklearn_digits()
    elif is_view(source):  # a JSON view of another dataset (timm_isomax.views)
        splits = load_view(source)
    elif Path(source).exists():
        if Path(source).is_file() and Path(source).suffix != ".parquet":
            raise ValueError(f"{source}: a dataset file must be Parquet (.parquet); for images use their folder.")
        empty = _empty_parquet(Path(source))
        if empty is not None:
            raise ValueError(f"{empty} has 0 rows: there are no images in it; fill it, or point at a file or folder "
                             f"with data.")
        try:
            splits = _load_local(Path(source), cache_dir)
        except Exception as error:  # datasets' readers raise IndexError, ArrowInvalid, ValueError ... on damaged or empty files
            raise ValueError(f"could not read the dataset at {source!r} ({type(error).__name__}: "
                             f"{(str(error).splitlines() or [''])[0]}); check that it holds Parquet files, a "
                             f"save_to_disk folder or an image folder, and that they are complete.") from None
    else:
        try:
            splits = datasets.load_dataset(source, cache_dir=cache_dir)
        except Exception as error:  # datasets raises many types; the user needs one sentence
            raise ValueError(
                f"could not load dataset {source!r}: it is not a local path, and loading it as a Hugging Face "
                f"Hub id failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
                f"Check the path, or the id and your network / HF_HUB_OFFLINE setting."
            ) from None
    splits = datasets.DatasetDict({name: _images_from_structs(split_) for name, split_ in splits.items()})
    if split is None:
        return splits
    if split not in splits:
        raise ValueError(f"dataset {source!r} has no split {split!r}; its splits are {sorted(splits)}.")
    return splits[split]


def _is_image_struct(feature: Any) -> bool:
    # what plain pyarrow writes for an image (no Hugging Face feature metadata): a {bytes, path} struct
    return isinstance(feature, dict) and set(feature) == {"bytes", "path"} and getattr(
        feature["bytes"], "dtype", None) in ("binary", "large_binary")


def _images_from_structs(dataset: datasets.Dataset) -> datasets.Dataset:
    for name, feature in dataset.features.items():
        if _is_image_struct(feature):
            dataset = dataset.cast_column(name, datasets.Image())
    return dataset


def _column_types(dataset: datasets.Dataset) -> str:
    return ", ".join(f"{name}: {_feature_name(f)}" for name, f in dataset.features.items())


def find_columns(
    dataset: datasets.Dataset, image_column: Optional[str] = None, label_column: Optional[str] = None
) -> Tuple[str, Optional[str]]:
    """The image column and the label column (``None`` where the dataset has no labels).

    Detected from the features (``datasets.Image`` / ``datasets.ClassLabel``, else an integer column
    named ``label`` or ``labels``) unless given. A given column must have the right type: an image column
    is a ``datasets.Image`` feature, a label column a ``ClassLabel`` or integer one; anything else is a
    one-line ``ValueError`` saying how to cast it.
    """
    _require_split(dataset)
    features = dataset.features
    if image_column is not None:
        _check_column(dataset, image_column, "image")
    if label_column is not None:
        _check_column(dataset, label_column, "label")
    if image_column is None:
        image_columns = [name for name, f in features.items() if isinstance(f, datasets.Image)]
        if not image_columns:
            raise ValueError(f"no image column (a datasets.Image feature) among the columns ({_column_types(dataset)}); "
                             f"pass image_column (--image-column) naming one, cast to datasets.Image().")
        image_column = image_columns[0]
    if label_column is None:
        class_labels = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
        named = [n for n in ("label", "labels") if n in features and _is_label_feature(features[n])]
        label_column = (class_labels or named or [None])[0]
    return image_column, label_column


def _require_split(dataset: Any) -> None:
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"expected a datasets.Dataset (one split), got {type(dataset).__name__}; pick a split, "
                         f"e.g. load_image_dataset(source, split='train').")


def _check_column(dataset: datasets.Dataset, column: str, kind: str) -> None:
    """One-line ``ValueError`` unless ``column`` exists and holds ``kind`` ("image" or "label") values."""
    features = dataset.features
    if column not in features:
        raise ValueError(f"no {kind} column {column!r}; the dataset's columns are {list(features)}.")
    feature = features[column]
    if kind == "image" and not isinstance(feature, datasets.Image):
        raise ValueError(f"column {column!r} holds {_feature_name(feature)}, not images; pass the image column, or "
                         f"cast it with dataset.cast_column({column!r}, datasets.Image()).")
    if kind == "label" and not _is_label_feature(feature):
        raise ValueError(f"column {column!r} holds {_feature_name(feature)}, not integer class labels; pass another "
                         f"label column, or encode it with dataset.class_encode_column({column!r}).")


def _is_label_feature(feature: Any) -> bool:
    return isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")))


def _feature_name(feature: Any) -> str:
    return f"{type(feature).__name__}({feature.dtype})" if isinstance(feature, datasets.Value) else type(feature).__name__


def select_classes(dataset: datasets.Dataset, classes: Sequence[int], label_column: str = "label") -> datasets.Dataset:
    """The rows whose label is in ``classes`` (e.g. for held-out-class OOD protocols).

    Rows without a label (None) are never selected. A missing or non-integer label column, or classes
    that are not integers, are one-line ``ValueError``s.
    """
    _require_split(dataset)
    _check_column(dataset, label_column, "label")
    if isinstance(classes, (str, bytes)) or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool)
                                                    for c in classes):
        raise ValueError(f"classes must be a sequence of integer class indices, got {classes!r}.")
    wanted = set(int(c) for c in classes)
    labels = column_values(dataset, label_column)
    return dataset.select([i for i, y in enumerate(labels) if y in wanted])


def check_labels(dataset: datasets.Dataset, label_column: str, num_classes: int, name: str = "the dataset") -> None:
    """Raise a one-line ``ValueError`` unless every row of ``label_column`` is a class index in
    ``[0, num_classes)``: missing (None) and negative labels, and labels past the class count, would
    otherwise fail in the middle of training (or, on a GPU, as a device-side assertion)."""
    _require_split(dataset)
    _check_column(dataset, label_column, "label")
    labels = column_values(dataset, label_column)
    bad = [i for i, y in enumerate(labels) if y is None or not 0 <= y < num_classes]
    if bad:
        raise ValueError(f"{name}: {len(bad)} of {len(labels)} rows have a label outside [0, {num_classes - 1}] or no "
                         f"label (first: row {bad[0]}, label {labels[bad[0]]!r}); drop or fix those rows, or check "
                         f"that the label column and class count are right.")


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
    _check_column(dataset, image_column, "image")
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
    _check_column(dataset, image_column, "image")
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


def model_in_chans(model: torch.nn.Module) -> int:
    """The number of input channels ``model`` takes (its ``in_chans``, else its first convolution)."""
    import timm

    chans = getattr(model, "in_chans", None)
    if isinstance(chans, int):
        return chans
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if isinstance(first_conv, str):
        weight = getattr(model.get_submodule(first_conv), "weight", None)
        if weight is not None and weight.ndim >= 2:
            return int(weight.shape[1])
    return int(timm.data.resolve_data_config({}, model=model)["input_size"][0])


def _match_channels(values: Sequence[float], chans: int) -> Tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == chans:
        return values
    # a grey config for an RGB model repeats; an RGB config for a grey model averages the channels
    return values * chans if len(values) == 1 else (float(np.mean(values)),) * chans


def model_data_config(model: torch.nn.Module, overrides: Optional[Dict] = None) -> Dict:
    """The model's timm data config (``timm.data.resolve_data_config``) with ``overrides``, its channel count
    made to match the model's input channels (a model created with ``in_chans=1`` may keep an RGB
    pretrained config)."""
    import timm

    config = dict(timm.data.resolve_data_config(dict(overrides or {}), model=model))
    chans = model_in_chans(model)
    if config["input_size"][0] != chans:
        config["input_size"] = (chans, *config["input_size"][1:])
    config["mean"] = _match_channels(config["mean"], chans)
    config["std"] = _match_channels(config["std"], chans)
    return config


def model_transform(model: torch.nn.Module, is_training: bool = False, data_config: Optional[Dict] = None,
                    **transform_kwargs) -> Tuple[Callable, str]:
    """``(transform, PIL mode)`` for ``model``: timm's transform of :func:`model_data_config`, and ``"L"``
    for 1-channel models, ``"RGB"`` for 3-channel ones (images are converted to it)."""
    import timm

    config = model_data_config(model, data_config)
    chans = config["input_size"][0]
    if chans not in (1, 3):
        raise ValueError(f"the model takes {chans} input channels; only 1 (grey) and 3 (RGB) image models are supported.")
    transform = timm.data.create_transform(**config, is_training=is_training, **transform_kwargs)
    return transform, "L" if chans == 1 else "RGB"


def dataset_for_model(model: torch.nn.Module, source: Union[str, datasets.Dataset], split: Optional[str] = None,
                      is_training: bool = False, limit: Optional[int] = None, image_column: Optional[str] = None,
                      label_column: Optional[str] = None, data_config: Optional[Dict] = None,
                      skip_undecodable: bool = False, **transform_kwargs) -> ImageDataset:
    """An :class:`ImageDataset` preprocessed the way ``model`` expects (its timm data config).

    Args:
        model: a timm model; its resolved data config gives size, interpolation, crop and normalisation.
        source: a loaded ``datasets.Dataset`` or anything :func:`load_image_dataset` takes.
        split: the split, when ``source`` is not already one.
        is_training: timm's training transform (augmentation) instead of the eval transform.
        limit: keep the first ``limit`` rows.
        data_config: data-config keys to override (e.g. ``{"input_size": (3, 32, 32)}``).
        skip_undecodable: decode every image once and drop the rows that fail, with a warning giving
            their count (see :class:`ImageDataset`); otherwise a bad row raises when it is read.
        transform_kwargs: further ``timm.data.create_transform`` arguments (e.g. ``scale``, ``hflip``).

    Example:
        >>> test = dataset_for_model(model, "../shared/data/imagenet_sample", split="test")
    """
    dataset = source if isinstance(source, datasets.Dataset) else load_image_dataset(source, split=split)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    transform, mode = model_transform(model, is_training, data_config, **transform_kwargs)
    return ImageDataset(dataset, transform, mode=mode, image_column=image_column, label_column=label_column,
                        skip_undecodable=skip_undecodable)


@dataclass
class LabelledSplits:
    """A training and a validation split, checked and ready to train on (see :func:`load_labelled_splits`).

    ``fitted_on``: where the validation rows come from, as recorded with a fitted threshold;
    ``selection``: how the rows were chosen, in words (the trainer prints it).

    ``for_model`` turns them (and OOD sets) into the torch datasets a model consumes, with its own
    preprocessing: the data concern stays here, the trainer only asks once.
    """

    source: str
    train: datasets.Dataset
    val: datasets.Dataset
    train_split: str
    val_split: str
    image_column: str
    label_column: str
    num_classes: int
    label_names: Optional[List[str]]
    fitted_on: str = ""
    selection: str = ""
    val_is_test: str = ""

    def identity(self) -> Dict[str, Any]:
        """What these splits are, as a trained model's provenance records it: the source, each split's name,
        row count and the ``datasets`` fingerprint of its selected rows (another selection, another value);
        ``val_is_test`` where validation is (or shares images with) the test split."""
        return dict(source=self.source, selection=self.selection, **{f"{role}_{key}": value for role, split, name in
                                           (("train", self.train, self.train_split), ("val", self.val, self.val_split))
                                           for key, value in (("split", name), ("rows", len(split)),
                                                              ("fingerprint", getattr(split, "_fingerprint", None)))},
                    **({"val_is_test": self.val_is_test} if self.val_is_test else {}))

    def for_model(self, model: torch.nn.Module, train_transform: Optional[Dict[str, Any]] = None,
                  data_config: Optional[Dict] = None) -> Tuple["ImageDataset", "ImageDataset"]:
        """``(train, val)`` as :class:`ImageDataset` s preprocessed for ``model``; ``train_transform`` (None:
        the evaluation transform) holds :func:`model_transform` arguments for the training split."""
        columns = dict(image_column=self.image_column, label_column=self.label_column)
        train = _dataset_with_transform(model, self.train, train_transform, data_config, columns)
        return train, dataset_for_model(model, self.val, data_config=data_config, **columns)


# Training augmentations by name: what ``train_transform["augmentation"]`` may say.
AUGMENTATIONS = ("rrc", "crop-flip", "none")


def _dataset_with_transform(model, split, train_transform, data_config, columns) -> "ImageDataset":
    options = dict(train_transform or {"augmentation": "none"})
    augmentation = options.pop("augmentation", "rrc")
    if augmentation == "none":
        return dataset_for_model(model, split, data_config=data_config, **columns)
    if augmentation == "rrc":  # timm's training transform: random-resized crop, flip, colour jitter off by default
        return dataset_for_model(model, split, is_training=True, data_config=data_config, **columns, **options)
    if augmentation == "crop-flip":  # the CIFAR recipe: pad, random crop back to size, horizontal flip
        transform, mode = pad_crop_flip_transform(model, data_config, padding=options.get("padding", 4))
        return ImageDataset(split, transform, mode=mode, **columns)
    raise ValueError(f"unknown augmentation {augmentation!r}; choose one of {', '.join(AUGMENTATIONS)}.")


def pad_crop_flip_transform(model: torch.nn.Module, data_config: Optional[Dict] = None,
                            padding: int = 4) -> Tuple[Callable, str]:
    """The CIFAR training augmentation for ``model``: resize to its input size, zero-pad by ``padding``,
    random crop back, random horizontal flip, then its normalisation. ``(transform, PIL mode)``."""
    from torchvision import transforms

    config = model_data_config(model, data_config)
    chans, height, width = config["input_size"]
    if chans not in (1, 3):
        raise ValueError(f"the model takes {chans} input channels; only 1 (grey) and 3 (RGB) image models are supported.")
    transform = transforms.Compose([
        transforms.Resize((height, width), interpolation=transforms.InterpolationMode(config["interpolation"])),
        transforms.RandomCrop((height, width), padding=padding),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(config["mean"], config["std"]),
    ])
    return transform, "L" if chans == 1 else "RGB"


# How a limit picks its rows: a seeded class-balanced sample (the default), or the first rows (what runs
# made before the sample existed used; protocols that compare with them say "first").
SUBSETS = ("balanced", "first")
# The share of the training split held out as validation when a dataset has no validation split.
DEFAULT_VAL_FRACTION = 0.1


def subset_problem(subset: str) -> Optional[str]:
    """What is wrong with a subset name, or None (the one check behind TrainConfig and the loaders)."""
    return None if subset in SUBSETS else f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}."


def val_fraction_problem(fraction: float) -> Optional[str]:
    """What is wrong with a held-out validation share, or None."""
    return (None if 0 < fraction < 1 else
            f"val_fraction must be between 0 and 1 (the share of the training split held out), got {fraction}.")


def column_values(dataset: datasets.Dataset, column: str) -> List[Any]:
    """Every value of one column of ``dataset`` as a list, read in one Arrow pass.

    ``dataset[column]`` is a lazy ``Column`` in datasets >= 4 whose items are read one row at a time
    (50,000 labels of CIFAR-10: minutes instead of milliseconds); selecting the column first and slicing
    reads it whole, on every datasets version we allow.

    Example:
        >>> column_values(mnist_train, "label")[:3]
        [5, 0, 4]
    """
    return dataset.select_columns([column])[:][column]


def class_count(split: datasets.Dataset, label_column: str) -> int:
    """The class count of ``split``: its ClassLabel's, else (integer labels) the largest label + 1."""
    return getattr(split.features[label_column], "num_classes", None) or _count_classes(column_values(split, label_column))


def _class_interleaved(labels: Sequence[Any], seed: int) -> List[int]:
    # every row, in an order that takes one row of each class in turn (rows of a class in seeded random
    # order): any prefix is as class-balanced as the class sizes allow
    order = np.random.default_rng(seed).permutation(len(labels))
    seen: Dict[Any, int] = {}
    ranks = np.empty(len(labels), dtype=np.int64)
    for position, index in enumerate(order):
        label = labels[index]
        ranks[position] = seen.get(label, 0)
        seen[label] = ranks[position] + 1
    return [int(order[i]) for i in np.lexsort((np.arange(len(order)), ranks))]


def sample_rows(dataset: datasets.Dataset, count: Optional[int], seed: int = 0, label_column: Optional[str] = None,
                how: str = "balanced") -> datasets.Dataset:
    """``count`` rows of ``dataset`` (all of them if ``count`` is None or not smaller), in dataset order.

    ``how="balanced"``: a seeded sample with as many rows of each class of ``label_column`` as the class
    sizes allow (without a label column: a seeded uniform sample); ``"first"``: the first ``count`` rows,
    which for a dataset sorted by class (an image folder) are a few classes only.

    Example:
        >>> sample_rows(mnist_train, 1000, seed=0, label_column="label")  # 100 images of each digit
    """
    problem = subset_problem(how)
    if problem:
        raise ValueError(problem)
    if count is None or count >= len(dataset):
        return dataset
    if how == "first":
        return dataset.select(range(count))
    labels = column_values(dataset, label_column) if label_column else [0] * len(dataset)
    return dataset.select(sorted(_class_interleaved(labels, seed)[:count]))


def load_sample(source: str, split: str = "test", limit: Optional[int] = None, seed: int = 0,
                subset: str = "balanced") -> datasets.Dataset:
    """``split`` of ``source`` (anything :func:`load_image_dataset` takes), cut to ``limit`` rows by
    :func:`sample_rows` (class-balanced where it has labels, uniform where it has none, or the first rows):
    how an evaluation set, or a run's OOD set, is picked. No images or no rows is a one-line ``ValueError``.

    Example:
        >>> ood = load_sample("../shared/data/notmnist", "test", limit=500)
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}.")
    dataset = load_image_dataset(source, split=split)
    try:
        _, label_column = find_columns(dataset)
    except ValueError as error:
        raise ValueError(f"dataset {source!r} ({split}) has no images to evaluate: {error}") from None
    if len(dataset) == 0:
        raise ValueError(f"dataset {source!r} ({split}) is empty.")
    return sample_rows(dataset, limit, seed, label_column, subset)


def _held_out(dataset: datasets.Dataset, label_column: str, fraction: float,
              seed: int) -> Tuple[datasets.Dataset, datasets.Dataset]:
    # (rest, held out): ``fraction`` of each class, seeded, so validation has every class in proportion
    labels = column_values(dataset, label_column)
    rng = np.random.default_rng(seed)
    by_class: Dict[Any, List[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    held = []
    for label in sorted(by_class, key=repr):
        rows = by_class[label]
        take = int(round(fraction * len(rows))) if len(rows) > 1 else 0
        held.extend(int(i) for i in rng.permutation(rows)[:take])
    held_set = set(held)
    return (dataset.select([i for i in range(len(dataset)) if i not in held_set]), dataset.select(sorted(held)))


# the split that holds a dataset's test data, by the name datasets and the Hub give it
TEST_SPLIT = "test"


def _val_is_test(all_splits: datasets.DatasetDict, val_split: str, image_column: str) -> str:
    """Why the validation split is the test data (in words), or "": it is the split named test, or it holds
    the same images as the test split (a validation file copied from the test file). Images are compared only
    where the two have as many rows: a copy has, and a real validation split is rarely that size."""
    if val_split == TEST_SPLIT:
        return f"validation is the {TEST_SPLIT!r} split"
    test = all_splits.get(TEST_SPLIT)
    if test is None or len(test) != len(all_splits[val_split]) or image_column not in test.features:
        return ""
    shared = len(image_digests(all_splits[val_split], image_column) & image_digests(test, image_column))
    return f"validation split {val_split!r} holds {shared} of the {len(test)} images of the {TEST_SPLIT!r} split" if shared else ""


def load_labelled_splits(source: str, train_split: str = "train", val_split: Optional[str] = None,
                         image_column: Optional[str] = None, label_column: Optional[str] = None,
                         train_limit: Optional[int] = None, val_limit: Optional[int] = None,
                         subset: str = "balanced", seed: int = 0,
                         val_fraction: float = DEFAULT_VAL_FRACTION) -> LabelledSplits:
    """The training and validation splits of ``source``, checked before any training starts.

    Both must exist and be non-empty, with an image column and class labels in range (the class count is
    the ClassLabel's, else the largest label + 1); undecodable images are dropped with a warning giving
    their count (:func:`drop_undecodable_images`). ``val_split`` defaults to ``validation`` or ``val``;
    a dataset with neither gets a seeded, class-stratified ``val_fraction`` of its training split held out
    as validation, so that monitoring and the deployment threshold never touch its test split (pass
    ``val_split="test"`` to choose the test split yourself). Limits take :func:`sample_rows` of each split
    (``subset``: class-balanced and seeded by ``seed``, or the first rows). Every problem is a one-line
    ``ValueError``.

    Example:
        >>> splits = load_labelled_splits("../shared/data/cifar10", train_limit=5000, val_limit=1000)
        >>> splits.num_classes, splits.val_split, splits.label_names[0]
        (10, 'train', 'airplane')
        >>> print(splits.selection)
        train: 5000 of 45000 rows, class-balanced (seed 0); validation: 1000 of 5000 rows held out of 'train' ...
    """
    problem = subset_problem(subset) or val_fraction_problem(val_fraction)
    if problem:  # before anything loads
        raise ValueError(problem)
    all_splits = load_image_dataset(source)
    val_split = val_split or next((name for name in ("validation", "val") if name in all_splits), None)
    for name in (train_split, val_split):
        if name is not None and name not in all_splits:
            raise ValueError(f"dataset {source!r} has no split {name!r}; its splits are {sorted(all_splits)}.")
    train = all_splits[train_split]
    image_column, label_column = find_columns(train, image_column, label_column)
    if label_column is None:
        for name in ("label", "labels"):
            if name in train.features:  # a label column of the wrong type: say so, not "no label column"
                _check_column(train, name, "label")
        if _is_image_folder(Path(source)):  # datasets labels an image folder by its sub-folders only
            raise ValueError(f"{source} is an image folder whose images are not in class sub-folders: training needs "
                             f"one sub-folder per class, two or more ({source}/<class>/<image>, or "
                             f"{source}/<split>/<class>/<image>).")
        raise ValueError(f"dataset {source!r} has no label column (ClassLabel, 'label' or 'labels'; its columns: "
                         f"{_column_types(train)}); "
                         f"training needs labels: pass label_column (--label-column).")
    held_out = val_split is None or val_split == train_split
    if held_out:
        val_split = train_split
        if len(train) < 2:
            raise ValueError(f"split {train_split!r} of dataset {source!r} has {len(train)} row(s): too few to hold "
                             f"out validation; pass val_split (--val-split).")
        train, val = _held_out(train, label_column, val_fraction, seed)
    else:
        val = all_splits[val_split]
        find_columns(val, image_column, label_column)  # the validation split needs the same columns
    val_is_test = "" if held_out else _val_is_test(all_splits, val_split, image_column)
    if val_is_test:
        # allowed (a recipe may choose it, as the papers' CIFAR runs do), but never silently: the threshold and
        # the epoch-by-epoch monitoring then see the data the final numbers are measured on
        warnings.warn(f"{source!r}: {val_is_test}, so the deployment threshold and the monitoring see the test data "
                      f"and numbers measured on it are not held out; give a validation split of its own, or leave "
                      f"--val-split out to hold out a share of {train_split!r}. Recorded in the model's provenance.",
                      stacklevel=2)
    train_rows, val_rows = len(train), len(val)
    # the classes the whole training split has (a limit may leave some out: that is warned about below)
    present = {y for y in column_values(train, label_column) if y is not None}
    train = sample_rows(train, train_limit, seed, label_column, subset)
    val = sample_rows(val, val_limit, seed, label_column, subset)  # only these rows are evaluated: only they are checked
    for name, split in ((train_split, train), (val_split, val)):
        if len(split) == 0:
            raise ValueError(f"split {name!r} of dataset {source!r} is empty; choose another split or dataset.")
    num_classes = class_count(train, label_column)
    label_names = list(getattr(train.features[label_column], "names", [])) or None
    missing = [c for c in range(num_classes) if c not in present]
    if label_names is None and missing:
        # plain integer labels count classes up to the largest: a gap ({0..8, 15}) is classes that never train
        shown = ", ".join(str(c) for c in missing[:8]) + (", ..." if len(missing) > 8 else "")
        warnings.warn(f"{source!r}: its labels are plain integers (no ClassLabel) up to {num_classes - 1}, so the model "
                      f"gets {num_classes} classes, but {len(missing)} of them never occur in split {train_split!r} "
                      f"({shown}) and would never train; remap the labels to 0..{len(present) - 1} "
                      f"(dataset.class_encode_column({label_column!r}) does), or cast the column to a ClassLabel "
                      f"naming every class if the empty ones are meant.", stacklevel=2)
    if subset == "first" and len(train) < train_rows:
        present = len({y for y in column_values(train, label_column) if y is not None})
        if present < num_classes:  # e.g. an image folder, whose rows come sorted by class
            warnings.warn(f"train_limit {train_limit} keeps the first {len(train)} rows of {source!r}, which hold only "
                          f"{present} of its {num_classes} classes (are its rows sorted by class?); use the "
                          f"class-balanced subset, or raise the limit.", stacklevel=2)
    how = "class-balanced (seed {})".format(seed) if subset == "balanced" else "the first rows"
    held = f" held out of {train_split!r} ({val_fraction:g} of each class, seed {seed})" if held_out else f" of {val_split!r}"
    selection = (f"train: {len(train)} of {train_rows} rows" + (f", {how}" if len(train) < train_rows else "")
                 + f"; validation: {len(val)} of {val_rows} rows{held}" + (f", {how}" if len(val) < val_rows else ""))
    limit_note = (f"[:{len(val)}]" if subset == "first" else f"[{len(val)} class-balanced, seed {seed}]") if len(val) < val_rows else ""
    fitted_on = f"{source}:{val_split}" + (f"[held out {val_fraction:g}, seed {seed}]" if held_out else "") + limit_note
    train, _ = drop_undecodable_images(train, image_column, name=f"split {train_split!r} of {source!r}")
    val, _ = drop_undecodable_images(val, image_column, name=f"split {val_split!r} of {source!r}")
    for name, split in ((train_split, train), (val_split, val)):
        check_labels(split, label_column, num_classes, name=f"split {name!r} of {source!r}")
    return LabelledSplits(source, train, val, train_split, val_split, image_column, label_column, num_classes,
                          label_names, fitted_on, selection, val_is_test)


def _count_classes(labels: List[Any]) -> int:
    """The class count of an integer label column without ClassLabel names: its largest label + 1."""
    present = [y for y in labels if y is not None]
    return int(max(present)) + 1 if present else 1  # no labels at all: check_labels says so

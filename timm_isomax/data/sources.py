"""Where image datasets come from: a Hub dataset id, a Parquet file, a folder of ``<split>.parquet`` files (the
layout of ``../shared/data``), a ``save_to_disk`` folder, an image folder, a view file (:mod:`.views`), or
``"sklearn-digits"``, scikit-learn's bundled 8x8 handwritten digits: real data that ``pip`` installs, so everything
runs on a machine without network or shared data. Also the name a source goes by in records and tables.
"""
from pathlib import Path
from typing import Any, List, Optional, Union

import datasets
import numpy as np
from PIL import Image

from .views import cut_view, is_view, read_view

__all__ = ["SKLEARN_DIGITS", "is_image_folder", "load_image_dataset", "load_view", "dataset_name"]


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


def is_image_folder(path: Path) -> bool:
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
            ``save_to_disk`` folder, image folder, a view file: :mod:`timm_isomax.data.views`) or a Hugging Face
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
    elif is_view(source):  # a JSON view of another dataset (timm_isomax.data.views)
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


def dataset_name(source: str) -> str:
    """The name a dataset source goes by in every record and table: its last path component, without ``.parquet`` or
    a view's ``.json`` (a Hub id ``org/name`` gives ``name``).

    Example:
        >>> dataset_name("benchmarks/views/tinyimagenet32_near.json"), dataset_name("../shared/data/mnist/")
        ('tinyimagenet32_near', 'mnist')
    """
    name = Path(source.rstrip("/")).name
    for suffix in (".parquet", ".json"):
        name = name.removesuffix(suffix)
    return name or source


def load_view(path: Union[str, Path]) -> datasets.DatasetDict:
    """The parts of the view file ``path`` (:mod:`timm_isomax.data.views`) as splits.

    Example:
        >>> near = load_view("benchmarks/views/tinyimagenet32_near.json")
        >>> sorted(near), len(near["val"]) + len(near["test"])
        (['test', 'val'], 8650)
    """
    view = read_view(path)
    return cut_view(view, load_image_dataset(view["source"]), where=str(path))

"""Image datasets through Hugging Face ``datasets``, as timm models consume them.

:func:`load_image_dataset` takes what users have: a Hub dataset id, a Parquet file, a folder of
``<split>.parquet`` files (the layout of ``../shared/data``), a folder saved with ``save_to_disk``, an
image folder; or ``"sklearn-digits"``, scikit-learn's bundled 8x8 handwritten digits, real data that
``pip`` installs, so everything here runs on a machine without network or shared data.
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import torch
from PIL import Image

__all__ = [
    "SKLEARN_DIGITS",
    "load_image_dataset",
    "find_columns",
    "select_classes",
    "ImageDataset",
    "materialize",
    "model_in_chans",
    "model_data_config",
    "model_transform",
    "dataset_for_model",
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


def _load_local(path: Path, cache_dir: Optional[str]) -> datasets.DatasetDict:
    if path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"{path}: a dataset file must be Parquet (.parquet); for images use their folder.")
        return datasets.load_dataset("parquet", data_files={path.stem: str(path)}, cache_dir=cache_dir)
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
    parquet_files = sorted(path.glob("*.parquet"))
    if parquet_files:
        return datasets.load_dataset("parquet", data_files={p.stem: str(p) for p in parquet_files}, cache_dir=cache_dir)
    return datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)


def load_image_dataset(
    source: str, split: Optional[str] = None, cache_dir: Optional[str] = None
) -> Union[datasets.Dataset, datasets.DatasetDict]:
    """Load an image classification dataset; one split if ``split`` is given, else all of them.

    Args:
        source: ``"sklearn-digits"``, a local path (Parquet file, folder of ``<split>.parquet``,
            ``save_to_disk`` folder, image folder) or a Hugging Face Hub dataset id.
        split: the split to return (``"train"``, ``"test"``, ...).
        cache_dir: where ``datasets`` keeps its cache.

    Example:
        >>> test = load_image_dataset("../shared/data/mnist", split="test")
        >>> test.features["label"].names[:3]
        ['0', '1', '2']
    """
    if source == SKLEARN_DIGITS:
        splits = _sklearn_digits()
    elif Path(source).exists():
        splits = _load_local(Path(source), cache_dir)
    else:
        try:
            splits = datasets.load_dataset(source, cache_dir=cache_dir)
        except Exception as error:  # datasets raises many types; the user needs one sentence
            raise ValueError(
                f"could not load dataset {source!r}: it is not a local path, and loading it as a Hugging Face "
                f"Hub id failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
                f"Check the path, or the id and your network / HF_HUB_OFFLINE setting."
            ) from None
    if split is None:
        return splits
    if split not in splits:
        raise ValueError(f"dataset {source!r} has no split {split!r}; its splits are {sorted(splits)}.")
    return splits[split]


def find_columns(
    dataset: datasets.Dataset, image_column: Optional[str] = None, label_column: Optional[str] = None
) -> Tuple[str, Optional[str]]:
    """The image column and the label column (``None`` where the dataset has no labels).

    Detected from the features (``datasets.Image`` / ``datasets.ClassLabel``, else an integer column
    named ``label`` or ``labels``) unless given.
    """
    features = dataset.features
    for given, kind in ((image_column, "image"), (label_column, "label")):
        if given is not None and given not in features:
            raise ValueError(f"no {kind} column {given!r}; the dataset's columns are {list(features)}.")
    if image_column is None:
        image_columns = [name for name, f in features.items() if isinstance(f, datasets.Image)]
        if not image_columns:
            raise ValueError(f"no image column found among {list(features)}; pass image_column=...")
        image_column = image_columns[0]
    if label_column is None:
        class_labels = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
        named = [n for n in ("label", "labels") if n in features and getattr(features[n], "dtype", "").startswith("int")]
        label_column = (class_labels or named or [None])[0]
    return image_column, label_column


def select_classes(dataset: datasets.Dataset, classes: Sequence[int], label_column: str = "label") -> datasets.Dataset:
    """The rows whose label is in ``classes`` (e.g. for held-out-class OOD protocols)."""
    wanted = set(int(c) for c in classes)
    labels = dataset[label_column]
    return dataset.select([i for i, y in enumerate(labels) if y in wanted])


class ImageDataset(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` of images as ``(tensor, label)`` pairs for a timm model.

    Images are converted to ``mode`` (``"RGB"`` or ``"L"``, from the model's input channels), then
    ``transform`` (e.g. ``timm.data.create_transform``) is applied. Rows without a label give -1.

    Args:
        dataset: the Hugging Face dataset.
        transform: PIL image -> tensor.
        mode: PIL mode the model takes.
        image_column / label_column: detected by :func:`find_columns` unless given.
    """

    def __init__(self, dataset: datasets.Dataset, transform: Callable, mode: str = "RGB",
                 image_column: Optional[str] = None, label_column: Optional[str] = None):
        self.dataset = dataset
        self.transform = transform
        self.mode = mode
        self.image_column, self.label_column = find_columns(dataset, image_column, label_column)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        row = self.dataset[index]
        image = row[self.image_column].convert(self.mode)
        label = row[self.label_column] if self.label_column is not None else -1
        return self.transform(image), -1 if label is None else int(label)


def materialize(dataset: torch.utils.data.Dataset, batch_size: int = 256) -> torch.utils.data.TensorDataset:
    """Run a (deterministic) dataset once and keep the tensors in memory: small sets, repeated epochs."""
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
                      **transform_kwargs) -> ImageDataset:
    """An :class:`ImageDataset` preprocessed the way ``model`` expects (its timm data config).

    Args:
        model: a timm model; its resolved data config gives size, interpolation, crop and normalisation.
        source: a loaded ``datasets.Dataset`` or anything :func:`load_image_dataset` takes.
        split: the split, when ``source`` is not already one.
        is_training: timm's training transform (augmentation) instead of the eval transform.
        limit: keep the first ``limit`` rows.
        data_config: data-config keys to override (e.g. ``{"input_size": (3, 32, 32)}``).
        transform_kwargs: further ``timm.data.create_transform`` arguments (e.g. ``scale``, ``hflip``).

    Example:
        >>> test = dataset_for_model(model, "../shared/data/imagenet_sample", split="test")
    """
    dataset = source if isinstance(source, datasets.Dataset) else load_image_dataset(source, split=split)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    transform, mode = model_transform(model, is_training, data_config, **transform_kwargs)
    return ImageDataset(dataset, transform, mode=mode, image_column=image_column, label_column=label_column)

"""A split's columns: which holds the images and which the labels (found or given, type-checked), the label values
and their classes.
"""
from typing import Any, List, Optional, Sequence, Tuple

import datasets
import numpy as np

__all__ = ["column_types", "find_columns", "check_column", "select_classes", "check_labels", "column_values",
           "class_count", "count_classes"]


def column_types(dataset: datasets.Dataset) -> str:
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
        check_column(dataset, image_column, "image")
    if label_column is not None:
        check_column(dataset, label_column, "label")
    if image_column is None:
        image_columns = [name for name, f in features.items() if isinstance(f, datasets.Image)]
        if not image_columns:
            raise ValueError(f"no image column (a datasets.Image feature) among the columns ({column_types(dataset)}); "
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


def check_column(dataset: datasets.Dataset, column: str, kind: str) -> None:
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
    check_column(dataset, label_column, "label")
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
    check_column(dataset, label_column, "label")
    labels = column_values(dataset, label_column)
    bad = [i for i, y in enumerate(labels) if y is None or not 0 <= y < num_classes]
    if bad:
        raise ValueError(f"{name}: {len(bad)} of {len(labels)} rows have a label outside [0, {num_classes - 1}] or no "
                         f"label (first: row {bad[0]}, label {labels[bad[0]]!r}); drop or fix those rows, or check "
                         f"that the label column and class count are right.")


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
    return getattr(split.features[label_column], "num_classes", None) or count_classes(column_values(split, label_column))


def count_classes(labels: List[Any]) -> int:
    """The class count of an integer label column without ClassLabel names: its largest label + 1."""
    present = [y for y in labels if y is not None]
    return int(max(present)) + 1 if present else 1  # no labels at all: check_labels says so

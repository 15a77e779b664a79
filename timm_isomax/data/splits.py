"""Which rows: seeded class-balanced samples, validation held out of the training split (never the test split unless
named), and the checked training / validation pair a run trains on (:class:`LabelledSplits`).
"""
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import datasets
import numpy as np
import torch

from .columns import check_column, check_labels, class_count, column_types, column_values, find_columns
from .images import ImageDataset, drop_undecodable_images, image_digests
from .sources import is_image_folder, load_image_dataset
from .transforms import augmented_dataset, dataset_for_model

__all__ = ["LabelledSplits", "SUBSETS", "DEFAULT_VAL_FRACTION", "subset_problem", "val_fraction_problem",
           "sample_rows", "load_sample", "TEST_SPLIT", "load_labelled_splits"]


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
        train = augmented_dataset(model, self.train, train_transform, data_config, columns)
        return train, dataset_for_model(model, self.val, data_config=data_config, **columns)


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
                check_column(train, name, "label")
        if is_image_folder(Path(source)):  # datasets labels an image folder by its sub-folders only
            raise ValueError(f"{source} is an image folder whose images are not in class sub-folders: training needs "
                             f"one sub-folder per class, two or more ({source}/<class>/<image>, or "
                             f"{source}/<split>/<class>/<image>).")
        raise ValueError(f"dataset {source!r} has no label column (ClassLabel, 'label' or 'labels'; its columns: "
                         f"{column_types(train)}); "
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

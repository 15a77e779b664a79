"""Dataset views: a JSON file that names a split of a dataset, the classes to drop from it, and how to cut what
remains into disjoint parts (e.g. an OOD validation part and an OOD test part), optionally with other splits of the
dataset passed through unchanged (``keep_splits``, e.g. the training split of an ID dataset whose test split is cut
into validation and test halves). A view is a dataset source like any other:
:func:`timm_isomax.data.load_image_dataset` returns its parts (and kept splits) as splits
(:func:`timm_isomax.data.load_view`).

The view file (paths relative to the file itself)::

    {"source": "../../../shared/data/tinyimagenet32", "split": "val",
     "drop": {"n02123045": "tabby, tabby cat (CIFAR-10 cat)", ...},
     "parts": {"val": 0.5, "test": 0.5}, "seed": 0, "keep_splits": [], "description": "..."}

Each kept class is cut by image into the parts, in the given shares, by a seeded permutation: the parts are
disjoint, and each holds every kept class.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Union

import datasets
import numpy as np

from .columns import column_values, find_columns

__all__ = ["is_view", "read_view", "cut_view", "VIEW_KEYS"]

VIEW_KEYS = ("source", "split", "drop", "parts", "seed", "keep_splits", "description")


def is_view(source: Union[str, Path]) -> bool:
    """Whether ``source`` names a view file (an existing ``.json`` file)."""
    path = Path(source)
    return path.suffix == ".json" and path.is_file()


def _problem(view: object) -> str:
    if not isinstance(view, dict):
        return "must hold a JSON object"
    unknown, missing = set(view) - set(VIEW_KEYS), {"source", "split", "parts"} - set(view)
    if unknown or missing:
        return f"unknown keys {sorted(unknown)}, missing keys {sorted(missing)} (keys: {', '.join(VIEW_KEYS)})"
    parts = view["parts"]
    if (not isinstance(parts, dict) or not parts or any(not isinstance(v, (int, float)) or v <= 0 for v in parts.values())
            or abs(sum(parts.values()) - 1) > 1e-9):
        return f"'parts' must map part names to positive shares that add up to 1, got {parts!r}"
    if not isinstance(view.get("drop", {}), dict):
        return "'drop' must map the class names to drop to why they are dropped"
    kept = view.get("keep_splits", [])
    if not isinstance(kept, list) or set(kept) & set(parts) or view["split"] in kept:
        return f"'keep_splits' must list other splits of the source than the cut one and the parts' names, got {kept!r}"
    return ""


def read_view(path: Union[str, Path]) -> Dict[str, Any]:
    """The checked view file ``path``, its ``source`` resolved against the file's folder."""
    path = Path(path)
    view = json.loads(path.read_text())
    problem = _problem(view)
    if problem:
        raise ValueError(f"{path}: {problem}; fix the view file.")
    return dict(view, source=str((path.parent / view["source"]).resolve()))


def cut_view(view: Dict[str, Any], splits: datasets.DatasetDict, where: str = "the view") -> datasets.DatasetDict:
    """The parts (and kept splits) of ``view`` (as :func:`read_view` returns it), cut from ``splits``, the loaded
    splits of its source. :func:`timm_isomax.data.load_view` does both steps."""
    source = view["source"]
    missing = [name for name in (view["split"], *view.get("keep_splits", [])) if name not in splits]
    if missing:
        raise ValueError(f"{where}: {source} has no split {', '.join(map(repr, missing))}; its splits are {sorted(splits)}.")
    rows = splits[view["split"]]
    _, label_column = find_columns(rows)
    names = list(getattr(rows.features[label_column], "names", []) or [])
    unknown = sorted(set(view.get("drop", {})) - set(names))
    if unknown:
        raise ValueError(f"{where}: 'drop' names classes that {source} ({view['split']}) does not have: "
                         f"{', '.join(unknown[:5])}; its class names are its ClassLabel's.")
    dropped = {names.index(name) for name in view.get("drop", {})}
    by_class: Dict[int, List[int]] = {}
    for index, label in enumerate(column_values(rows, label_column)):
        if label not in dropped:
            by_class.setdefault(label, []).append(index)
    rng = np.random.default_rng(int(view.get("seed", 0)))
    parts: Dict[str, List[int]] = {name: [] for name in view["parts"]}
    shares = list(view["parts"].items())
    for label in sorted(by_class):
        order = rng.permutation(by_class[label])
        start = 0
        for position, (name, share) in enumerate(shares):
            stop = len(order) if position == len(shares) - 1 else start + int(round(share * len(order)))
            parts[name].extend(int(i) for i in order[start:stop])
            start = stop
    cut = {name: rows.select(sorted(indices)) for name, indices in parts.items()}
    return datasets.DatasetDict({**{name: splits[name] for name in view.get("keep_splits", [])}, **cut})

"""A benchmark protocol: one JSON file per protocol (``benchmarks/protocols/<name>.json``), read and checked
whole before anything trains, and the trainer's settings of each of its (head, seed) runs."""
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..data import dataset_name
from ..train import HEADS, TrainConfig

__all__ = ["BenchmarkProtocol", "load_protocol", "smoke_version", "train_config", "missing_inputs", "heads_problem",
           "VIEWS_FOLDER"]

# TrainConfig fields a protocol may not set: the benchmark sets them per run.
_RUN_FIELDS = {"head", "seed", "dataset", "ood_datasets", "output", "resume", "val_split", "progress", "test_split",
               "ood_val_datasets"}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - _RUN_FIELDS
# TrainConfig fields a protocol may set for one head only: none of them changes the recipe the heads share.
_HEAD_ONLY_FIELDS = {"dismax_fpr", "entropic_scale", "score"}


@dataclass(frozen=True)
class BenchmarkProtocol:
    """One ID-vs-OOD benchmark; dataset entries are folder names under the data root (or Hub ids)."""

    name: str
    id_dataset: str
    ood_datasets: Tuple[str, ...]
    train: Dict[str, Any]
    test_split: str = "test"
    ood_val_datasets: Tuple[str, ...] = ()
    ood_groups: Dict[str, List[str]] = field(default_factory=dict)
    heads: Tuple[str, ...] = HEADS
    seeds: Tuple[int, ...] = (0, 1, 2)
    source_row: bool = False
    head_settings: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    smoke: Dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> Dict[str, Any]:
        """The definition a run is made under: everything but the seeds (a run is one seed), ``smoke`` and
        the prose."""
        data = dataclasses.asdict(self)
        for key in ("seeds", "smoke", "description"):
            data.pop(key)
        for key in ("source_row", "head_settings", "ood_val_datasets"):  # added later: definitions without them stay the same
            if not data[key]:
                data.pop(key)
        return json.loads(json.dumps(data))  # tuples as lists, as read back from a file


def _protocol_error(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}; fix the protocol JSON file.")


def _protocol_from_dict(data: Any, where: str) -> BenchmarkProtocol:
    if not isinstance(data, dict):
        raise _protocol_error(where, "must hold a JSON object")
    known = {f.name for f in dataclasses.fields(BenchmarkProtocol)}
    unknown, missing = set(data) - known, {"name", "id_dataset", "ood_datasets", "train"} - set(data)
    if unknown or missing:
        raise _protocol_error(where, f"unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    train_settings = data["train"]
    if not isinstance(train_settings, dict) or set(train_settings) - _TRAIN_FIELDS or "model" not in train_settings:
        raise _protocol_error(where, f"'train' must be an object with 'model' and keys among {sorted(_TRAIN_FIELDS)} "
                                     f"(got {sorted(set(train_settings) - _TRAIN_FIELDS) if isinstance(train_settings, dict) else train_settings!r})")
    heads = tuple(data.get("heads", BenchmarkProtocol.heads))
    if set(heads) - set(HEADS):
        raise _protocol_error(where, f"'heads' must be among {list(HEADS)}")
    ood = tuple(data["ood_datasets"])
    ood_val = tuple(data.get("ood_val_datasets", ()))
    # a view (.json) gives disjoint validation and test parts; any other set would choose and report on the same images
    shared = sorted(entry for entry in set(ood_val) & set(ood) if not entry.endswith(".json"))
    if shared:
        raise _protocol_error(where, f"'ood_val_datasets' {shared} are also test sets; the sets that choose a score "
                                     f"must not be the ones that report it (a view file gives disjoint parts)")
    head_settings = data.get("head_settings", {})
    if not isinstance(head_settings, dict) or any(
            head not in heads or not isinstance(extra, dict) or set(extra) - _HEAD_ONLY_FIELDS
            for head, extra in head_settings.items()):
        raise _protocol_error(where, f"'head_settings' must map heads of 'heads' to objects with keys among "
                                     f"{sorted(_HEAD_ONLY_FIELDS)} (the recipe itself is shared, under 'train'), "
                                     f"got {head_settings!r}")
    groups = data.get("ood_groups", {})
    names = {dataset_name(entry) for entry in ood}
    if not isinstance(groups, dict) or any(set(sets) - names for sets in groups.values()):
        raise _protocol_error(where, f"'ood_groups' must map group names to lists of the protocol's OOD set names "
                                     f"({', '.join(sorted(names))})")
    values = dict(data, heads=heads, ood_datasets=ood, ood_val_datasets=ood_val,
                  seeds=tuple(int(s) for s in data.get("seeds", BenchmarkProtocol.seeds)))
    protocol = BenchmarkProtocol(**values)
    try:  # every head's settings are checked now, not after the first head has trained
        for head in heads:
            train_config(protocol, head, 0, None, Path("."), None)
    except (TypeError, ValueError) as error:
        raise _protocol_error(where, f"'train' is not a valid setting for every head ({error})") from None
    return protocol


def load_protocol(path: Union[str, Path]) -> BenchmarkProtocol:
    """Read a protocol JSON file (see the module docstring for its keys)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no protocol file {path}; the shipped ones are in benchmarks/protocols/.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _protocol_error(str(path), f"not valid JSON ({error})") from None
    return _protocol_from_dict(data, str(path))


def smoke_version(protocol: BenchmarkProtocol) -> BenchmarkProtocol:
    """The protocol shrunk by its ``smoke`` overrides (fewer images and epochs, one seed): same code path."""
    overrides = copy.deepcopy(dict(protocol.smoke))
    train_settings = dict(protocol.train, **overrides.pop("train", {}))
    overrides.setdefault("seeds", protocol.seeds[:1])
    return dataclasses.replace(protocol, name=protocol.name + "-smoke", train=train_settings,
                               seeds=tuple(overrides.pop("seeds")), **overrides)


# Dataset views (JSON files, timm_isomax.data.views) that protocols name, e.g. the clean near-OOD set of CIFAR-10.
VIEWS_FOLDER = Path(__file__).resolve().parents[2] / "benchmarks" / "views"


def _dataset_path(entry: str, data_root: Optional[Union[str, Path]]) -> str:
    if entry.endswith(".json"):  # a view, kept beside the protocols in a checkout
        view = VIEWS_FOLDER / entry
        if not view.is_file():
            return entry
        # relative to the folder it runs in (the repository root) where it can be, as the shared data's paths
        # are: a run's recorded settings then name the same view in another clone (another machine, CI)
        here = Path.cwd().resolve()
        return str(view.relative_to(here)) if view.is_relative_to(here) else str(view)
    local = Path(data_root) / entry if data_root is not None else None
    return str(local) if local is not None and local.exists() else entry


def _checkpoint_path(entry: Optional[str], data_root: Optional[Union[str, Path]]) -> Optional[str]:
    if entry is None or entry.startswith("pypi:") or Path(entry).is_absolute():
        return entry
    return _dataset_path(entry, data_root)


def train_config(protocol: BenchmarkProtocol, head: str, seed: int, data_root, runs: Path,
                 feature_cache: Optional[Path]) -> TrainConfig:
    """The trainer's settings for one (head, seed) run of ``protocol``."""
    settings = dict(protocol.train, **protocol.head_settings.get(head, {}))
    settings["checkpoint"] = _checkpoint_path(settings.get("checkpoint"), data_root)
    if settings.get("freeze_backbone") and feature_cache is not None:
        settings.setdefault("feature_cache", str(feature_cache))
    if settings.get("data_on_device") and feature_cache is not None:  # decoded images: tensors cached by key too
        settings.setdefault("decoded_cache", str(feature_cache))
    settings.setdefault("ood_eval_every", 0)  # a benchmark measures OOD once, at the end
    # validation is held out of the training split (TrainConfig's val_fraction): thresholds and the choice of score
    # read it and the OOD validation sets; the test split and the OOD test sets give the final numbers only
    return TrainConfig(**settings, head=head, seed=seed, dataset=_dataset_path(protocol.id_dataset, data_root),
                       test_split=protocol.test_split, output=str(runs / protocol.name / f"seed{seed}" / head),
                       ood_datasets=[_dataset_path(d, data_root) for d in protocol.ood_datasets],
                       ood_val_datasets=[_dataset_path(d, data_root) for d in protocol.ood_val_datasets],
                       resume=True, progress=False)


def missing_inputs(protocol: BenchmarkProtocol, data_root: Optional[Union[str, Path]]) -> List[str]:
    """The protocol's datasets and checkpoint file that are not where it says (nothing loads them)."""
    missing = [d for d in (protocol.id_dataset, *protocol.ood_datasets, *protocol.ood_val_datasets)
               if not Path(_dataset_path(d, data_root)).exists()]
    checkpoint = _checkpoint_path(protocol.train.get("checkpoint"), data_root)
    if checkpoint and not checkpoint.startswith("pypi:") and not Path(checkpoint).exists():
        missing.append(checkpoint)
    return missing


def heads_problem(protocol: BenchmarkProtocol, heads: Sequence[str]) -> Optional[str]:
    """What is wrong with training only ``heads`` of ``protocol`` (heads it does not have), or ``None``."""
    unknown = [head for head in heads if head not in protocol.heads]
    if not unknown:
        return None
    return (f"protocol {protocol.name!r} has no head {', '.join(map(repr, unknown))} (its heads: "
            f"{', '.join(protocol.heads)}); pass some of those.")

"""SoftMax vs IsoMax vs IsoMax+ vs DisMax trained alike by the product's own trainer, over several seeds.

A protocol is data: one JSON file per protocol (``benchmarks/protocols/<name>.json``) names the ID and OOD
datasets (folders under a data root), optional OOD groups (OpenOOD's ``near`` / ``far``), the heads, the
seeds, and under ``train`` the :class:`~timm_isomax.train.TrainConfig` settings every head shares (start
model, checkpoint, recipe, preprocessing); ``head_settings`` adds settings that exist for one head only (e.g.
``{"dismax": {"dismax_fpr": true}}``: DisMax with its fractional probability regularisation, as in its paper);
``smoke`` overrides shrink it to seconds for the test suite::

    {"name": "mnist", "id_dataset": "mnist", "ood_datasets": ["fashion_mnist", "notmnist"],
     "heads": ["softmax", "isomax", "isomaxplus"], "seeds": [0, 1, 2],
     "train": {"model": "resnet10t", "from_scratch": true, "in_chans": 1, "img_size": 32, "train_limit": 20000,
               "epochs": 3, "batch_size": 64, "lr": 0.05},
     "smoke": {"train": {"train_limit": 1000, "val_limit": 500, "epochs": 1}}}

Each (seed, head) is one run of :func:`timm_isomax.train.train` into ``<runs>/<protocol>/seed<k>/<head>``:
it checkpoints as any run does, so an interrupted benchmark resumes in the middle of a run, with the same
command. Validation is held out of the training split; the run's final evaluation chooses its OOD score on it
against the OOD validation sets (jigsaw puzzles of the validation images, and the protocol's
``ood_val_datasets``), never on the test sets (:mod:`timm_isomax.train.final`). When a run ends, its final
evaluation (accuracy on the ID test split; every score of its head on every OOD test set, all metrics; the
chosen score and the validation AUROCs behind it) joins ``<results>/<protocol>/seed<k>.json``, written at once; when every head of a seed is done,
their inference throughput is timed side by side. :func:`summarize` gives mean and standard deviation
over seeds, also of the near / far means; :func:`markdown_table` renders them.

Example:
    >>> protocol = load_protocol("benchmarks/protocols/mnist.json")
    >>> runs = run_protocol(protocol, data_root="../shared/data", output="benchmarks/results")
    >>> print(markdown_table(summarize(runs)))
"""
import contextlib
import copy
import dataclasses
import fcntl
import functools
import json
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..ood.detectors import KNN_KS
from ..models.inference import interleaved_medians
from ..ood.metrics import METRIC_NAMES
from ..models.classifier import HEAD_TITLES
from ..train import EVALUATION_NAME, HEADS, LOG_NAME, TRAINING_DIR, TrainConfig, train
from ..data.views import dataset_name
from ..train.state import write_json

__all__ = ["BenchmarkProtocol", "load_protocol", "smoke_version", "heads_problem", "missing_inputs", "run_protocol", "load_runs", "summarize",
           "markdown_table", "headline_table", "validated_headline_table", "test_validated_headline_table", "CHOSEN", "result_tables", "fill_result_tables", "SCORE_LABELS", "TABLE_METRICS",
           "inference_throughput", "hardware_description"]

_HEAD_LABELS = {"source": "Source (no fine-tune)", "softmax": "SoftMax", **HEAD_TITLES}
_SCORE_LABELS = {"msp": "MSP", "max_logit": "max logit", "energy": "energy", "entropic": "entropic", "mds": "MDS",
                 "mmls": "MMLS", "mmles": "MMLES", "norm_cosine": "norm x cosine", "feature_norm": "feature norm",
                 "mahalanobis": "Mahalanobis", "vim": "ViM", "react": "ReAct", "ash": "ASH",
                 **{f"knn{k}": f"KNN k={k}" for k in KNN_KS}}
# How each (head, score) pair is named in tables and plots.
SCORE_LABELS: Dict[Tuple[str, str], str] = {(head, score): f"{_HEAD_LABELS[head]}, {label}"
                                            for head in _HEAD_LABELS for score, label in _SCORE_LABELS.items()}
# The metrics of the full per-protocol table, in column order (FPR@95 and TNR@95 take ID as positive).
TABLE_METRICS = ("auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out")
_METRIC_HEADERS = {"auroc": "AUROC", "tnr_at_95_tpr": "TNR@95", "fpr_at_95_tpr": "FPR@95", "aupr_in": "AUPR-in",
                   "aupr_out": "AUPR-out", "detection_accuracy": "DTACC"}
# Lower is better for these (bold marks the lowest mean).
_LOWER_IS_BETTER = {"fpr_at_95_tpr", "fpr95_ood_positive"}
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
            _train_config(protocol, head, 0, None, Path("."), None)
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


# Dataset views (JSON files, timm_isomax.views) that protocols name, e.g. the clean near-OOD set of CIFAR-10.
VIEWS_FOLDER = Path(__file__).resolve().parents[2] / "benchmarks" / "views"


def _dataset_path(entry: str, data_root: Optional[Union[str, Path]]) -> str:
    if entry.endswith(".json"):  # a view, kept beside the protocols in a checkout
        return str(VIEWS_FOLDER / entry) if (VIEWS_FOLDER / entry).is_file() else entry
    local = Path(data_root) / entry if data_root is not None else None
    return str(local) if local is not None and local.exists() else entry


def _checkpoint_path(entry: Optional[str], data_root: Optional[Union[str, Path]]) -> Optional[str]:
    if entry is None or entry.startswith("pypi:") or Path(entry).is_absolute():
        return entry
    return _dataset_path(entry, data_root)


def _train_config(protocol: BenchmarkProtocol, head: str, seed: int, data_root, runs: Path,
                  feature_cache: Optional[Path]) -> TrainConfig:
    """The trainer's settings for one (head, seed) run of ``protocol``."""
    settings = dict(protocol.train, **protocol.head_settings.get(head, {}))
    settings["checkpoint"] = _checkpoint_path(settings.get("checkpoint"), data_root)
    if settings.get("freeze_backbone") and feature_cache is not None:
        settings.setdefault("feature_cache", str(feature_cache))
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


def hardware_description(device: torch.device) -> str:
    """The CPU model (or GPU name), thread count and torch version, for the record of a run."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}"


def inference_throughput(models: Mapping[str, nn.Module], images: torch.Tensor, rounds: int = 5,
                         device: torch.device = torch.device("cpu")) -> Dict[str, float]:
    """Images per second of each model's eval-mode forward on the batch ``images``, timed interleaved."""
    images = images.to(device)
    for model in models.values():
        model.eval().to(device)

    def forward(model):
        with torch.no_grad():
            model(images)

    medians = interleaved_medians({name: functools.partial(forward, model) for name, model in models.items()},
                                  rounds, device=device)
    return {name: len(images) / seconds for name, seconds in medians.items()}


def _seed_file(output: Path, protocol: BenchmarkProtocol, seed: int) -> Path:
    return output / protocol.name / f"seed{seed}.json"


def _extends(recorded: Any, definition: Dict[str, Any]) -> bool:
    """Whether ``definition`` is the ``recorded`` protocol definition, or it with heads added (and settings for
    the added heads only): the finished rows were trained exactly as the definition says, so they stay."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("heads"), list):
        return False
    recorded, definition = dict(recorded), dict(definition)
    recorded_heads, heads = recorded.pop("heads"), definition.pop("heads")
    added = set(heads) - set(recorded_heads)
    recorded_settings = recorded.pop("head_settings", {})
    settings = {head: extra for head, extra in definition.pop("head_settings", {}).items() if head not in added}
    return set(recorded_heads) <= set(heads) and settings == recorded_settings and recorded == definition


def _read_seed_file(path: Path, protocol: BenchmarkProtocol) -> Optional[Dict]:
    # a protocol that gained a head (e.g. DisMax) adds its rows to the finished seeds; any other change of
    # the definition would mix results of two recipes in one table, so it is refused
    if not path.exists():
        return None
    run = json.loads(path.read_text())
    if not _extends(run.get("protocol"), protocol.to_json()):
        raise ValueError(f"{path} holds results of a different definition of protocol {protocol.name!r} (adding "
                         f"heads is the only change a finished seed takes); move that folder away or pass another "
                         f"--output.")
    run["protocol"] = protocol.to_json()
    return run


def _training_log(folder: Path) -> List[Dict[str, Any]]:
    """The run's per-epoch log lines; none before its first epoch."""
    path = folder / TRAINING_DIR / LOG_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _row(cfg: TrainConfig) -> Dict[str, Any]:
    """The finished run's result row: its final evaluation plus what the log says about training."""
    folder = Path(cfg.output)
    evaluation = json.loads((folder / TRAINING_DIR / EVALUATION_NAME).read_text())
    log = _training_log(folder)
    config = json.loads((folder / "config.json").read_text())
    row = dict(evaluation, arch=config["architecture"], train_seconds=sum(r["seconds"] for r in log),
               final_loss=log[-1]["train_loss"], epochs=len(log))
    if log[-1].get("distance_scale") is not None:  # IsoMax+: the learned |s|, a diagnostic
        row["distance_scale"] = log[-1]["distance_scale"]
    return row


def _source_row(protocol: BenchmarkProtocol, data_root, output: Path, device: torch.device) -> Dict[str, Any]:
    """The start checkpoint itself, not fine-tuned, scored with the SoftMax scores on the same test and OOD
    sets (computed once per protocol, kept in ``<output>/<protocol>/source.json``)."""
    from ..models.conversion import load_softmax_model
    from ..ood.evaluation import evaluate_model, load_eval_set
    from ..train.config import HEAD_SCORES

    path = output / protocol.name / "source.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg = _train_config(protocol, "softmax", 0, data_root, Path("."), None)
    model = load_softmax_model(cfg.model, cfg.checkpoint, cfg.key_map).eval()
    limit = cfg.val_limit
    # the rows the fine-tuned runs are evaluated on (the same limit, the same choice of rows)
    evaluation = evaluate_model(model, load_eval_set(cfg.dataset, protocol.test_split, limit, subset=cfg.subset),
                                [load_eval_set(d, cfg.ood_split, limit, subset=cfg.subset) for d in cfg.ood_datasets],
                                list(HEAD_SCORES["softmax"]), device=device)
    metrics = {score: {name: values for name, values in per_set.items() if name != "mean"}
               for score, per_set in evaluation.metrics.items()}
    row = dict(head="source", arch=evaluation.architecture, accuracy=evaluation.accuracy, metrics=metrics,
               checkpoint=protocol.train.get("checkpoint"))
    _write(path, row)
    return row


def _measure_throughput(run: Dict, protocol: BenchmarkProtocol, configs: Dict[str, TrainConfig], rounds: int,
                        device: torch.device) -> Dict[str, float]:
    """Inference images per second of each trained head of the seed, timed side by side."""
    import timm

    from ..data.datasets import class_count, dataset_for_model, find_columns, load_image_dataset
    from ..train.start_model import data_config_overrides, model_kwargs

    arch = {row["head"]: row["arch"] for row in run["rows"]}
    models, num_classes = {}, None
    for head, cfg in configs.items():
        if (Path(cfg.output) / "config.json").is_file():
            models[head] = timm.create_model(f"local-dir:{cfg.output}", pretrained=True)
        else:
            # the run folder is gone (trained in an earlier session, its outputs/ not kept): inference speed
            # depends on the architecture, not on the weights, so an untrained model of it is timed
            if num_classes is None:  # every head of the protocol trains on the same ID dataset
                test_rows = load_image_dataset(cfg.dataset, split=protocol.test_split)
                num_classes = class_count(test_rows, find_columns(test_rows)[1])
            models[head] = timm.create_model(arch[head], num_classes=num_classes, **model_kwargs(cfg))
    first = next(iter(models.values()))
    test = dataset_for_model(first, configs[protocol.heads[0]].dataset, split=protocol.test_split, limit=256,
                             data_config=data_config_overrides(configs[protocol.heads[0]], first))
    batch = torch.stack([test[i][0] for i in range(len(test))])
    return inference_throughput(models, batch, rounds, device)


def heads_problem(protocol: BenchmarkProtocol, heads: Sequence[str]) -> Optional[str]:
    """What is wrong with training only ``heads`` of ``protocol`` (heads it does not have), or ``None``."""
    unknown = [head for head in heads if head not in protocol.heads]
    if not unknown:
        return None
    return (f"protocol {protocol.name!r} has no head {', '.join(map(repr, unknown))} (its heads: "
            f"{', '.join(protocol.heads)}); pass some of those.")


def run_protocol(protocol: BenchmarkProtocol, data_root: Optional[Union[str, Path]] = None,
                 output: Union[str, Path] = "benchmarks/results", runs: Union[str, Path] = "outputs/benchmark_runs",
                 feature_cache: Optional[Union[str, Path]] = "outputs/feature_cache",
                 device: Union[str, torch.device] = "cpu", throughput_rounds: int = 5,
                 log: Callable[[str], None] = print, heads: Optional[Sequence[str]] = None) -> List[Dict]:
    """Train and evaluate every head of ``protocol`` (or only ``heads``, some of them) for each of its seeds;
    one run dict per seed.

    Finished heads are read back from ``<output>/<protocol>/seed<k>.json`` (the file must hold the same
    protocol); an unfinished run continues from its checkpoint in ``runs``. Benchmarks of other heads of the
    same seeds may run at the same time (e.g. ``heads=["dismax"]`` beside the others on a second core): each
    adds its rows to the seed file under a lock.
    """
    device = torch.device(device)
    output, runs = Path(output), Path(runs)
    heads = tuple(protocol.heads if heads is None else heads)
    problem = heads_problem(protocol, heads)
    if problem:
        raise ValueError(problem)
    missing = missing_inputs(protocol, data_root)
    if missing:
        raise FileNotFoundError(f"protocol {protocol.name!r}: {', '.join(missing)} not found (data root "
                                f"{data_root}); pass --data-root or fix the protocol file.")
    results = []
    for seed in protocol.seeds:
        path = _seed_file(output, protocol, seed)
        run = _update_seed_file(path, protocol, seed)
        if protocol.source_row and not any(row["head"] == "source" for row in run["rows"]):
            source = _source_row(protocol, data_root, output, device)
            run = _update_seed_file(path, protocol, seed, lambda run: _add_row(run, source))
        configs = {head: _train_config(protocol, head, seed, data_root, runs,
                                       Path(feature_cache) if feature_cache else None) for head in protocol.heads}
        for head in heads:
            if any(row["head"] == head for row in run["rows"]):
                continue
            cfg = configs[head]
            # a run resumed from an earlier session's checkpoint: this process only sees its own part, so the
            # epochs logged before count too (a partial epoch lost at a stop, and start-up, are not counted)
            earlier_seconds = sum(entry["seconds"] for entry in _training_log(Path(cfg.output)))
            start = time.perf_counter()
            log(f"{protocol.name} seed {seed}: training {head} into {cfg.output}")
            train(dataclasses.replace(cfg, device=str(device)))
            row = _row(cfg)
            # a seed file gathers runs of several sessions (a head added later), on whatever CPU each had: each
            # row names its own; the run's ``hardware`` is the latest, where the heads' throughput is timed
            row.update(wall_seconds=earlier_seconds + time.perf_counter() - start, hardware=hardware_description(device))
            run = _update_seed_file(path, protocol, seed, lambda run: _add_row(run, row))
            log(f"{protocol.name} seed {seed} {head}: accuracy {100 * row['accuracy']:.2f}% "
                f"({row['train_seconds']:.0f} s of training)")
        run = _update_seed_file(path, protocol, seed)
        trained = {row["head"] for row in run["rows"]} - {"source"}
        # timed side by side once every head of the seed is there (whichever benchmark adds the last one)
        if (throughput_rounds > 0 and trained == set(protocol.heads)
                and not all("throughput" in row for row in run["rows"] if row["head"] != "source")):
            rates = _measure_throughput(run, protocol, configs, throughput_rounds, device)
            run = _update_seed_file(path, protocol, seed, lambda run: _set_throughput(run, rates))
        results.append(run)
    return results


@contextlib.contextmanager
def _locked(folder: Path):
    # an exclusive flock on the folder itself (no lock file to commit), released at exit or process death
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _update_seed_file(path: Path, protocol: BenchmarkProtocol, seed: int,
                      change: Optional[Callable[[Dict], None]] = None) -> Dict:
    """The seed file's run as it is now (a new one if there is none), after ``change`` if given, which is
    then written: read, change and write under a lock, so that benchmarks of other heads of the same seed
    never overwrite each other's rows."""
    with _locked(path.parent):
        run = _read_seed_file(path, protocol) or dict(protocol=protocol.to_json(), seed=seed, rows=[])
        if change is not None:
            change(run)
            order = ("source", *protocol.heads)
            run["rows"].sort(key=lambda row: order.index(row["head"]))
            _write(path, run)
    return run


def _add_row(run: Dict, row: Dict) -> None:
    if not any(existing["head"] == row["head"] for existing in run["rows"]):
        run["rows"].append(row)
    if row["head"] != "source":
        run.update(hardware=row["hardware"], id_dataset=run["protocol"]["id_dataset"],
                   ood_datasets=list(run["protocol"]["ood_datasets"]))


def _set_throughput(run: Dict, rates: Dict[str, float]) -> None:
    for row in run["rows"]:
        if row["head"] in rates:
            row["throughput"] = rates[row["head"]]


def _write(path: Path, run: Dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, run)


def load_runs(folder: Union[str, Path]) -> List[Dict]:
    """Every ``seed*.json`` run in ``folder`` (one protocol's folder) or in its subfolders (an output folder
    of several protocols); deeper folders (e.g. ``ablations/<protocol>/``) are other outputs."""
    paths = sorted([*Path(folder).glob("seed*.json"), *Path(folder).glob("*/seed*.json")])
    if not paths:
        raise FileNotFoundError(f"no benchmark runs (seed*.json) under {folder}; run the benchmark first.")
    return [json.loads(path.read_text()) for path in paths]


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _with_group_means(metrics: Dict[str, Dict[str, float]], groups: Dict[str, List[str]]) -> Dict[str, Dict[str, float]]:
    # OpenOOD's near / far: the plain mean of the group's OOD sets, per metric, within one run
    out = dict(metrics)
    for group, sets in groups.items():
        out[f"{group} mean"] = {m: statistics.fmean(metrics[s][m] for s in sets) for m in metrics[sets[0]]}
    return out


def summarize(runs: Sequence[Dict]) -> List[Dict]:
    """Mean and sample standard deviation over seeds, per protocol and (head, score).

    Each entry: ``protocol``, ``head``, ``score``, ``label``, ``seeds``, ``accuracy``, ``throughput``
    (inference img/s), ``throughput_ratio`` (over the SoftMax model's, measured side by side in each seed's
    run), ``metrics[ood][metric]`` (also ``"<group> mean"`` for the protocol's OOD groups), plus the
    head's training seconds and ``hardware`` (the machines its runs trained on, sorted). Every statistic is
    ``{"mean", "std", "n"}``. Heads are summarised over the seeds that have them.
    """
    by_protocol: Dict[str, List[Dict]] = {}
    for run in runs:
        by_protocol.setdefault(run["protocol"]["name"], []).append(run)
    summary = []
    for name, protocol_runs in by_protocol.items():
        protocol_runs = sorted(protocol_runs, key=lambda run: run["seed"])
        definition = protocol_runs[0]["protocol"]
        groups = definition.get("ood_groups", {})
        for head in ("source", *definition["heads"]):
            pairs = [(run, row) for run in protocol_runs for row in run["rows"] if row["head"] == head]
            if not pairs:
                continue
            ratios = []
            for run, row in pairs:
                base = next((r for r in run["rows"] if r["head"] == "softmax"), None)
                if base is not None and "throughput" in row and "throughput" in base:
                    ratios.append(row["throughput"] / base["throughput"])
            rows = [row for _, row in pairs]
            oods = list(rows[0]["metrics"][next(iter(rows[0]["metrics"]))])
            columns = oods + [f"{group} mean" for group in groups]
            for score in rows[0]["metrics"]:
                per_run = [_with_group_means(row["metrics"][score], groups) for row in rows]
                summary.append(dict(
                    protocol=name, head=head, score=score, arch=rows[0]["arch"],
                    label=SCORE_LABELS.get((head, score), f"{head}, {score}"),
                    seeds=[run["seed"] for run, _ in pairs], id_dataset=definition["id_dataset"],
                    ood_datasets=oods, columns=columns, train=definition["train"],
                    head_settings=definition.get("head_settings", {}),
                    hardware=sorted({row.get("hardware") or run.get("hardware", "") for run, row in pairs}),
                    seconds=sum(row.get("train_seconds", 0.0) for row in rows),
                    wall_seconds=sum(row.get("wall_seconds", 0.0) for row in rows),
                    accuracy=_mean_std([row["accuracy"] for row in rows]),
                    throughput=_mean_std([row["throughput"] for row in rows if "throughput" in row]) if ratios else None,
                    throughput_ratio=_mean_std(ratios) if ratios else None,
                    distance_scale=_mean_std([row["distance_scale"] for row in rows])
                    if all("distance_scale" in row for row in rows) else None,
                    metrics={column: {metric: _mean_std([metrics[column][metric] for metrics in per_run])
                                      for metric in METRIC_NAMES if metric in per_run[0][column]}
                             for column in columns}))
            if all("selection" in row for row in rows):  # runs that chose their score on validation (issue 29)
                chosen = dict(summary[-1], score=CHOSEN, choices=[row["score"] for row in rows],
                              label=f"{_HEAD_LABELS.get(head, head)}, validation-chosen ({_choices_text(rows)})")
                per_run = [_with_group_means(row["metrics"][row["score"]], groups) for row in rows]
                chosen["metrics"] = {column: {metric: _mean_std([metrics[column][metric] for metrics in per_run])
                                              for metric in METRIC_NAMES if metric in per_run[0][column]}
                                     for column in columns}
                summary.append(chosen)
    return summary


# The summary entry of a head read with the score each of its runs chose on validation.
CHOSEN = "chosen"


def _choices_text(rows: Sequence[Dict]) -> str:
    # "knn50 x2, mds" : the validation's choice in each seed, most frequent first
    counts: Dict[str, int] = {}
    for row in rows:
        counts[row["score"]] = counts.get(row["score"], 0) + 1
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _percent(stat: Dict[str, float], best: bool = False) -> str:
    text = f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"
    return f"**{text}**" if best else text


def _recipe_line(entry: Dict) -> str:
    settings = entry["train"]
    start = ("from scratch" if settings.get("from_scratch") else
             f"from {Path(settings['checkpoint']).name if settings.get('checkpoint') else 'pretrained ' + settings['model']}")
    parts = [settings["model"], start, "frozen backbone" if settings.get("freeze_backbone") else None,
             f"{settings.get('epochs', 5)} epochs", f"batch {settings.get('batch_size', 64)}",
             f"{settings.get('opt', 'sgd')} lr {settings.get('lr', 0.01)}", f"{settings.get('sched', 'cosine')}",
             f"{settings['warmup_epochs']} warm-up epoch(s)" if settings.get("warmup_epochs") else None,
             f"weight decay {settings['weight_decay']}" if "weight_decay" in settings else None,
             f"augmentation {settings.get('augmentation', 'rrc')}",
             "bf16/fp16 autocast" if settings.get("amp") else None,
             "channels_last" if settings.get("channels_last") else None,
             f"{settings['img_size']} px" if settings.get("img_size") else None,
             (f"{'first' if settings.get('subset', 'balanced') == 'first' else 'a class-balanced sample of'} "
              f"{settings['train_limit']} training images") if settings.get("train_limit") else None]
    parts += [f"{_HEAD_LABELS.get(head, head)} with " + ", ".join(f"{key}={value}" for key, value in extra.items())
              for head, extra in entry.get("head_settings", {}).items() if extra]
    return ", ".join(p for p in parts if p)


def _hardware_line(entries: Sequence[Dict]) -> str:
    # where the heads trained: one machine, or each machine with the heads that ran on it
    heads_by_machine: Dict[str, List[str]] = {}
    for entry in entries:
        for machine in entry["hardware"]:
            heads_by_machine.setdefault(machine, []).append(_HEAD_LABELS.get(entry["head"], entry["head"]))
    if len(heads_by_machine) == 1:
        return next(iter(heads_by_machine))
    return "; ".join(f"{machine} ({', '.join(heads)})" for machine, heads in heads_by_machine.items())


def _start_line(entry: Dict) -> str:
    # what a protocol trains, in a few words: "cifar10, cifar_resnet20 fine-tuned from resnet20-12fca82f.th, 4 epochs"
    # (the epochs tell apart two protocols on the same start, e.g. CIFAR-10 from scratch for 2 and 15 epochs)
    settings = entry["train"]
    if settings.get("from_scratch"):
        how = "from scratch"
    else:
        start = Path(settings["checkpoint"]).name if settings.get("checkpoint") else "pretrained"
        how = f"frozen backbone ({start})" if settings.get("freeze_backbone") else f"fine-tuned from {start}"
    return f"{dataset_name(entry['id_dataset'])}, {settings['model']} {how}, {settings.get('epochs', 5)} epochs"


# The other isotropic heads beside IsoMax+ in the README's table, each read with the score it is designed for.
_HEADLINE_COMPANIONS = (("isomax", "entropic"), ("dismax", "mmles"))


def _companion_cells(entry: Optional[Dict], gap: str, column: str, top: float) -> str:
    # accuracy and AUROC of one companion head (bold where it is the row's best), or why they are missing
    if entry is None:
        return f" | {gap} | {gap}"
    auroc = entry["metrics"][column]["auroc"]
    return f" | {_percent(entry['accuracy'])} | {_percent(auroc, auroc['mean'] == top)}"


# The heads of the validated headline, SoftMax first: each read with its validation-chosen score.
_VALIDATED_HEADS = ("softmax", "isomaxplus", "isomax", "dismax")


def _columns_of(entry: Dict, every_set: bool) -> List[str]:
    if every_set:
        return entry["columns"]
    return [column for column in entry["columns"] if column.endswith(" mean")] or entry["ood_datasets"]


def validated_headline_table(runs: Sequence[Dict], protocol: Optional[str] = None, every_set: bool = False,
                             oracle: bool = False) -> str:
    """The headline of runs that chose their OOD score on validation (issue 29): per protocol and OOD column, each
    head's accuracy and the test AUROC of the score its runs chose on validation (the choices in brackets), and each
    isotropic head's difference to SoftMax's (mean over the seeds both have). ``oracle``: instead, each head with the
    score that is best on that test column (chosen on the test sets: an oracle no user has, shown for reference)."""
    runs = [run for run in runs if protocol is None or run["protocol"]["name"] == protocol]
    summary = summarize(runs)
    kind = "oracle score (best on this test column)" if oracle else "validation-chosen score"
    titles = "".join(f" | {_HEAD_LABELS[h]} acc | {_HEAD_LABELS[h]} AUROC" + ("" if h == "softmax" else " | - SoftMax")
                     for h in _VALIDATED_HEADS)
    lines = [f"| protocol | seeds | OOD{titles} |", "|---|---|---|" + "---|---|" + "---|---|---|" * (len(_VALIDATED_HEADS) - 1)]
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        entries = [e for e in summary if e["protocol"] == name]
        by_head = {head: [e for e in entries if e["head"] == head] for head in _VALIDATED_HEADS}
        reference = next((e for e in by_head["softmax"] if e["score"] == CHOSEN), None)
        if reference is None:
            continue
        for column in _columns_of(reference, every_set):
            picked = {}
            for head, head_entries in by_head.items():
                if oracle:
                    candidates = [e for e in head_entries if e["score"] != CHOSEN]
                    picked[head] = max(candidates, key=lambda e: e["metrics"][column]["auroc"]["mean"]) if candidates else None
                else:
                    picked[head] = next((e for e in head_entries if e["score"] == CHOSEN), None)
            top = max(e["metrics"][column]["auroc"]["mean"] for e in picked.values() if e is not None)
            base = picked["softmax"]["metrics"][column]["auroc"]["mean"]
            cells = []
            for head, entry in picked.items():
                if entry is None:
                    cells += ["not run", "not run"] + ([] if head == "softmax" else [""])
                    continue
                value = entry["metrics"][column]["auroc"]
                how = entry["label"].split(", ", 1)[1] if oracle else _choices_text_of(entry)
                cells += [_percent(entry["accuracy"]), f"{_percent(value, value['mean'] == top)} ({how})"]
                if head != "softmax":
                    cells.append(f"{100 * (value['mean'] - base):+.2f}")
            seeds = len(reference["seeds"])
            lines.append(f"| {_start_line(reference)} | {seeds} | {column} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nAUROC % (ID positive), mean ± std over seeds, each head with its {kind}."


def _choices_text_of(entry: Dict) -> str:
    return entry["label"].split("validation-chosen (", 1)[1].rstrip(")")


def headline_table(runs: Sequence[Dict], protocol: Optional[str] = None, every_set: bool = False) -> str:
    """The README's results table: :func:`validated_headline_table` for runs that chose their score on
    validation, else (runs made before) :func:`test_validated_headline_table`."""
    if runs and all("selection" in row for run in runs for row in run["rows"] if row["head"] != "source"):
        return validated_headline_table(runs, protocol, every_set)
    return test_validated_headline_table(runs, protocol, every_set)


def test_validated_headline_table(runs: Sequence[Dict], protocol: Optional[str] = None, every_set: bool = False) -> str:
    """The README's results table from the runs (:func:`load_runs`): per protocol and OOD column (the group
    means where the protocol has groups, else each OOD set; ``every_set``: each OOD set and the group means),
    SoftMax and IsoMax+ accuracy, the best SoftMax score's AUROC and IsoMax+'s MDS AUROC (mean ± std over the
    seeds that have both heads) and their difference, then IsoMax's accuracy and entropic AUROC and DisMax's
    accuracy and MMLES AUROC where they ran on the same seeds; the best AUROC bold. ``protocol``: that one
    only."""
    runs = [run for run in runs if protocol is None or run["protocol"]["name"] == protocol]
    paired = [run for run in runs if {"softmax", "isomaxplus"} <= {row["head"] for row in run["rows"]}]
    summary = summarize(paired) if paired else []
    companion_titles = "".join(f" | {_HEAD_LABELS[head]} acc | {_HEAD_LABELS[head]} {_SCORE_LABELS[score]} AUROC"
                         for head, score in _HEADLINE_COMPANIONS)
    lines = [f"| protocol | seeds | OOD | SoftMax acc | IsoMax+ acc | best SoftMax AUROC | IsoMax+ MDS AUROC | MDS - best"
             f"{companion_titles} |", "|---|---|---|---|---|---|---|---|" + "---|---|" * len(_HEADLINE_COMPANIONS)]
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        entries = {(e["head"], e["score"]): e for e in summary if e["protocol"] == name}
        softmax = [e for (head, _), e in entries.items() if head == "softmax"]
        mds = entries.get(("isomaxplus", "mds"))
        if not softmax or mds is None:
            continue
        if every_set:
            columns = mds["columns"]
        else:  # the group means, or each set where the protocol has no groups
            columns = [column for column in mds["columns"] if column.endswith(" mean")] or mds["ood_datasets"]
        seeds = len(set(softmax[0]["seeds"]) & set(mds["seeds"]))
        # (entry, why it is missing): a head on other seeds than the two compared is left out, its seed count
        # shown, not mixed in
        companions = []
        for entry in (entries.get(pair) for pair in _HEADLINE_COMPANIONS):
            if entry is None:
                companions.append((None, "not run"))
            elif set(entry["seeds"]) != set(mds["seeds"]):
                companions.append((None, f"{len(set(entry['seeds']) & set(mds['seeds']))} of {seeds} seeds"))
            else:
                companions.append((entry, ""))
        for column in columns:
            best = max(softmax, key=lambda e: e["metrics"][column]["auroc"]["mean"])
            ours, theirs = mds["metrics"][column]["auroc"], best["metrics"][column]["auroc"]
            top = max([ours["mean"], theirs["mean"]]
                      + [e["metrics"][column]["auroc"]["mean"] for e, _ in companions if e is not None])
            cells = "".join(_companion_cells(e, gap, column, top) for e, gap in companions)
            lines.append(f"| {_start_line(mds)} | {seeds} | {column} | {_percent(softmax[0]['accuracy'])} | "
                         f"{_percent(mds['accuracy'])} | {_percent(theirs, theirs['mean'] == top)} "
                         f"({_SCORE_LABELS[best['score']]}) | {_percent(ours, ours['mean'] == top)} | "
                         f"{100 * (ours['mean'] - theirs['mean']):+.2f}{cells} |")
    return "\n".join(lines)


def markdown_table(summary: Sequence[Dict], metrics: Sequence[str] = ("auroc",),
                   protocol: Optional[str] = None) -> str:
    """A Markdown table per protocol: ID accuracy, the chosen metrics per OOD set and group mean, and the
    throughput ratio, mean ± std over seeds in %; the best mean per column is bold."""
    blocks = []
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        if protocol is not None and name != protocol:
            continue
        entries = [entry for entry in summary if entry["protocol"] == name]
        columns = [(ood, metric) for ood in entries[0]["columns"] for metric in metrics]
        header = (["model, score", "ID acc %"] + [f"{_METRIC_HEADERS[m]} {ood} %" for ood, m in columns]
                  + ["inference img/s (x SoftMax)"])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best_accuracy = max(e["accuracy"]["mean"] for e in entries)
        pick = {m: (min if m in _LOWER_IS_BETTER else max) for _, m in columns}
        best = {(ood, m): pick[m](e["metrics"][ood][m]["mean"] for e in entries) for ood, m in columns}
        for entry in entries:
            ratio = entry["throughput_ratio"]
            cells = [entry["label"], _percent(entry["accuracy"], entry["accuracy"]["mean"] == best_accuracy)]
            cells += [_percent(entry["metrics"][ood][m], entry["metrics"][ood][m]["mean"] == best[(ood, m)])
                      for ood, m in columns]
            cells.append(f"{entry['throughput']['mean']:.0f} ({ratio['mean']:.2f}x)" if ratio else "")
            lines.append("| " + " | ".join(cells) + " |")
        first = entries[0]
        seeds = sorted({seed for e in entries for seed in e["seeds"]})
        per_head = {e["head"]: e for e in entries}.values()  # one entry per head
        seconds, wall = sum(e["seconds"] for e in per_head), sum(e.get("wall_seconds", 0.0) for e in per_head)
        lines.append(f"\n{name}: ID {dataset_name(first['id_dataset'])}; {_recipe_line(first)}; seeds {', '.join(map(str, seeds))}; "
                     f"{_hardware_line(per_head)}; {seconds / 60:.0f} min of training epochs, {wall / 60:.0f} min of runs "
                     f"(start model, features, evaluation included) in all.")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def result_tables(runs: Sequence[Dict]) -> Dict[str, str]:
    """The tables a document may quote, by name, made from the runs (:func:`load_runs`): ``"headline"``
    (:func:`headline_table`) and, per protocol, its AUROC table with its recipe line (:func:`markdown_table`)
    and ``"<protocol>.per_set"``, its headline rows for each OOD set and group mean."""
    summary = summarize(runs)
    tables = {"headline": headline_table(runs)}
    validated = all("selection" in row for run in runs for row in run["rows"] if row["head"] != "source")
    if validated:
        tables["headline.oracle"] = validated_headline_table(runs, oracle=True)
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        tables[name] = markdown_table(summary, protocol=name)
        tables[f"{name}.per_set"] = headline_table(runs, protocol=name, every_set=True)
        if validated:
            tables[f"{name}.oracle"] = validated_headline_table(runs, protocol=name, every_set=True, oracle=True)
    return tables


# A quoted table in a Markdown document: "<!-- results: NAME -->", the table, "<!-- results: end -->".
_QUOTED_TABLE = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<table>.*?)(<!-- results: end -->)", re.S)


def fill_result_tables(text: str, tables: Mapping[str, str], where: str = "the document") -> str:
    """``text`` with every quoted table replaced by ``tables[name]``, so that a document's numbers can only
    come from the runs (``scripts/sync_docs.py`` writes them, a test checks them).

    Example:
        >>> fill_result_tables(readme, result_tables(load_runs("benchmarks/results")))
    """
    unknown = sorted({m["name"] for m in _QUOTED_TABLE.finditer(text)} - set(tables))
    if unknown:
        raise ValueError(f"{where} quotes {', '.join(unknown)}, which the runs have no table for; "
                         f"the names are 'headline' and the protocols with runs ({', '.join(sorted(tables))}).")
    if text.count("<!-- results: ") != 2 * len(_QUOTED_TABLE.findall(text)):
        raise ValueError(f"{where} has a '<!-- results: NAME -->' marker without its '<!-- results: end -->'.")
    return _QUOTED_TABLE.sub(lambda m: f"{m[1]}{tables[m['name']].strip()}\n{m[4]}", text)

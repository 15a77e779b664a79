"""Running a protocol: each (seed, head) is one resumable run of the product's trainer; finished results join
``<results>/<protocol>/seed<k>.json`` under a lock, so benchmarks of other heads of the same seed may run at the
same time."""
import contextlib
import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import timm
import torch

from .._io import write_json
from ..data import class_count, dataset_for_model, find_columns, load_image_dataset
from ..models.conversion import load_softmax_model
from ..ood.evaluation import evaluate_model, load_eval_set
from ..train import EVALUATION_NAME, LOG_NAME, TRAINING_DIR, TrainConfig, train
from ..train.config import HEAD_SCORES
from ..train.start_model import data_config_overrides, model_kwargs
from .protocol import BenchmarkProtocol, heads_problem, missing_inputs, train_config
from .timing import hardware_description, inference_throughput

__all__ = ["run_protocol", "load_runs", "result_row", "measure_throughput"]


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


def result_row(cfg: TrainConfig) -> Dict[str, Any]:
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
    path = output / protocol.name / "source.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg = train_config(protocol, "softmax", 0, data_root, Path("."), None)
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


def measure_throughput(run: Dict, protocol: BenchmarkProtocol, configs: Dict[str, TrainConfig], rounds: int,
                       device: torch.device) -> Dict[str, float]:
    """Inference images per second of each trained head of the seed, timed side by side."""
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
        configs = {head: train_config(protocol, head, seed, data_root, runs,
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
            row = result_row(cfg)
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
            rates = measure_throughput(run, protocol, configs, throughput_rounds, device)
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

"""The papers' comparison as a benchmark: SoftMax vs IsoMax vs IsoMax+ trained alike, over several seeds.

A protocol is data: one JSON file per protocol (``benchmarks/protocols/<name>.json``) names the ID and OOD
datasets (folders under a data root), the architecture, input size, data limits, the recipe shared by every
head, the seeds, and a ``smoke`` override that shrinks it to seconds for the test suite::

    {"name": "mnist", "id_dataset": "mnist", "ood_datasets": ["fashion_mnist", "notmnist"],
     "arch": "resnet10t", "img_size": 32, "train_limit": 20000,
     "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.05}, "seeds": [0, 1, 2],
     "smoke": {"train_limit": 1000, "test_limit": 500, "recipe": {"epochs": 1}}}

:func:`run_protocol` trains every head once per seed (:func:`~.experiment.compare_heads`) and writes one
JSON file per seed as soon as that seed is done, so an interrupted benchmark resumes at the first missing
seed. :func:`summarize` reduces the seed files to mean and standard deviation over seeds, and
:func:`markdown_table` renders them.

Example:
    >>> protocol = load_protocol("benchmarks/protocols/mnist.json")
    >>> runs = run_protocol(protocol, data_root="../shared/data", output="benchmarks/results")
    >>> print(markdown_table(summarize(runs)))
"""
import dataclasses
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .experiment import HEAD_KINDS, Recipe, build_protocol, compare_heads
from .metrics import METRIC_NAMES

__all__ = ["BenchmarkProtocol", "load_protocol", "smoke_version", "run_protocol", "load_runs", "summarize",
           "markdown_table", "SCORE_LABELS", "TABLE_METRICS"]

# How each (head, score) pair is named in tables and plots.
SCORE_LABELS: Dict[Tuple[str, str], str] = {
    ("softmax", "msp"): "SoftMax, MSP",
    ("softmax", "max_logit"): "SoftMax, max logit",
    ("softmax", "energy"): "SoftMax, energy",
    ("softmax", "entropic"): "SoftMax, entropic",
    ("isomax", "entropic"): "IsoMax, entropic",
    ("isomaxplus", "mds"): "IsoMax+, MDS",
}
# The metrics of the full per-protocol table (all ID positive), in column order.
TABLE_METRICS = ("auroc", "tnr_at_95_tpr", "aupr_in", "aupr_out", "detection_accuracy")
_METRIC_HEADERS = {"auroc": "AUROC", "tnr_at_95_tpr": "TNR@95", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out",
                   "detection_accuracy": "DTACC"}
_RECIPE_FIELDS = {f.name for f in dataclasses.fields(Recipe)} - {"seed"}


@dataclass(frozen=True)
class BenchmarkProtocol:
    """One ID-vs-OOD benchmark; dataset entries are folder names under the data root (or Hub ids)."""

    name: str
    id_dataset: str
    ood_datasets: Tuple[str, ...]
    arch: str
    recipe: Recipe
    img_size: int = 32
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    ood_split: str = "test"
    heads: Tuple[str, ...] = ("softmax", "isomax", "isomaxplus")
    seeds: Tuple[int, ...] = (0, 1, 2)
    description: str = ""
    smoke: Dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> Dict[str, Any]:
        """The definition a run is made under: everything but the seeds (a run is one seed) and ``smoke``."""
        data = dataclasses.asdict(self)
        data["recipe"].pop("seed")
        # unset optional recipe fields are left out: runs saved before such a field existed stay valid
        data["recipe"] = {key: value for key, value in data["recipe"].items() if value is not None}
        for key in ("seeds", "smoke"):
            data.pop(key)
        return data


def _protocol_error(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}; fix the protocol JSON file.")


def _protocol_from_dict(data: Any, where: str) -> BenchmarkProtocol:
    if not isinstance(data, dict):
        raise _protocol_error(where, "must hold a JSON object")
    known = {f.name for f in dataclasses.fields(BenchmarkProtocol)}
    unknown, missing = set(data) - known, {"name", "id_dataset", "ood_datasets", "arch", "recipe"} - set(data)
    if unknown or missing:
        raise _protocol_error(where, f"unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    recipe = data["recipe"]
    if not isinstance(recipe, dict) or set(recipe) - _RECIPE_FIELDS:
        raise _protocol_error(where, f"'recipe' must be an object with keys among {sorted(_RECIPE_FIELDS)}")
    heads = tuple(data.get("heads", BenchmarkProtocol.heads))
    if set(heads) - set(HEAD_KINDS):
        raise _protocol_error(where, f"'heads' must be among {sorted(HEAD_KINDS)}")
    values = dict(data, recipe=Recipe(**recipe), heads=heads, ood_datasets=tuple(data["ood_datasets"]),
                  seeds=tuple(int(s) for s in data.get("seeds", BenchmarkProtocol.seeds)))
    return BenchmarkProtocol(**values)


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
    overrides = dict(protocol.smoke)
    recipe = dataclasses.replace(protocol.recipe, **overrides.pop("recipe", {}))
    overrides.setdefault("seeds", protocol.seeds[:1])
    return dataclasses.replace(protocol, name=protocol.name + "-smoke", recipe=recipe,
                               seeds=tuple(overrides.pop("seeds")), **overrides)


def _dataset_path(entry: str, data_root: Optional[Union[str, Path]]) -> str:
    local = Path(data_root) / entry if data_root is not None else None
    return str(local) if local is not None and local.exists() else entry


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


def _seed_file(output: Path, protocol: BenchmarkProtocol, seed: int) -> Path:
    return output / protocol.name / f"seed{seed}.json"


def _finished_run(path: Path, protocol: BenchmarkProtocol) -> Optional[Dict]:
    if not path.exists():
        return None
    run = json.loads(path.read_text())
    if run.get("protocol") != json.loads(json.dumps(protocol.to_json())):
        raise ValueError(f"{path} holds results of a different definition of protocol {protocol.name!r}; "
                         f"move that folder away or pass another --output.")
    return run


def run_protocol(protocol: BenchmarkProtocol, data_root: Optional[Union[str, Path]] = None,
                 output: Optional[Union[str, Path]] = None, device: Union[str, torch.device] = "cpu",
                 throughput_rounds: int = 5, log: Callable[[str], None] = print) -> List[Dict]:
    """Train and evaluate every head of ``protocol`` for each of its seeds; one run dict per seed.

    With ``output``, each seed's run is written to ``<output>/<protocol>/seed<k>.json`` when it finishes and
    seeds already there are read back instead of retrained (the file must hold the same protocol).
    """
    from .hub import _atomic_write

    device = torch.device(device)
    output = Path(output) if output is not None else None
    runs, pending = [], []
    for seed in protocol.seeds:
        finished = _finished_run(_seed_file(output, protocol, seed), protocol) if output is not None else None
        (runs.append(finished) if finished is not None else pending.append(seed))
    if not pending:
        return runs
    start = time.perf_counter()
    data = build_protocol(_dataset_path(protocol.id_dataset, data_root),
                          [_dataset_path(d, data_root) for d in protocol.ood_datasets], img_size=protocol.img_size,
                          ood_split=protocol.ood_split, train_limit=protocol.train_limit, test_limit=protocol.test_limit)
    log(f"{protocol.name}: {len(data.train_set)} train / {len(data.id_test)} test images, OOD "
        + ", ".join(f"{name} ({len(d)})" for name, d in data.ood_sets.items())
        + f"; data ready in {time.perf_counter() - start:.0f} s")
    for seed in pending:
        start = time.perf_counter()
        recipe = dataclasses.replace(protocol.recipe, seed=seed)
        rows = compare_heads(protocol.arch, data.num_classes, data.train_set, data.id_test, data.ood_sets, recipe,
                             heads=protocol.heads, device=device, throughput_rounds=throughput_rounds,
                             in_chans=data.in_chans)
        run = dict(protocol=protocol.to_json(), seed=seed, hardware=hardware_description(device),
                   seconds=time.perf_counter() - start, id_dataset=data.name, ood_datasets=list(data.ood_sets),
                   rows=rows)
        log(f"{protocol.name} seed {seed}: " + ", ".join(
            f"{row['head']} acc {100 * row['accuracy']:.2f}%" for row in rows) + f" ({run['seconds']:.0f} s)")
        if output is not None:
            path = _seed_file(output, protocol, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(run, indent=1)))
        runs.append(run)
    return sorted(runs, key=lambda run: run["seed"])


def load_runs(folder: Union[str, Path]) -> List[Dict]:
    """Every ``seed*.json`` run in ``folder`` (one protocol's folder) or in its subfolders (an output folder
    of several protocols); deeper folders (e.g. ``ablations/<protocol>/``) are other outputs."""
    paths = sorted([*Path(folder).glob("seed*.json"), *Path(folder).glob("*/seed*.json")])
    if not paths:
        raise FileNotFoundError(f"no benchmark runs (seed*.json) under {folder}; run scripts/benchmark_ood.py first.")
    return [json.loads(path.read_text()) for path in paths]


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(runs: Sequence[Dict]) -> List[Dict]:
    """Mean and sample standard deviation over seeds, per protocol and (head, score).

    Each entry: ``protocol``, ``head``, ``score``, ``label``, ``seeds``, ``accuracy``, ``throughput``
    (inference img/s), ``throughput_ratio`` (over the SoftMax model's, measured side by side in each seed's
    run), ``metrics[ood][metric]``,
    plus the protocol's hardware and total seconds. Every statistic is ``{"mean", "std", "n"}``.
    """
    by_protocol: Dict[str, List[Dict]] = {}
    for run in runs:
        by_protocol.setdefault(run["protocol"]["name"], []).append(run)
    summary = []
    for name, protocol_runs in by_protocol.items():
        protocol_runs = sorted(protocol_runs, key=lambda run: run["seed"])
        first = protocol_runs[0]
        for head_index, head_row in enumerate(first["rows"]):
            rows = [run["rows"][head_index] for run in protocol_runs]
            baselines = [next((r for r in run["rows"] if r["head"] == "softmax"), None) for run in protocol_runs]
            ratios = [row["throughput"] / base["throughput"] for row, base in zip(rows, baselines)
                      if base is not None and "throughput" in row]
            for score in head_row["metrics"]:
                summary.append(dict(
                    protocol=name, head=head_row["head"], score=score, arch=head_row["arch"],
                    label=SCORE_LABELS.get((head_row["head"], score), f"{head_row['head']}, {score}"),
                    seeds=[run["seed"] for run in protocol_runs], id_dataset=first["id_dataset"],
                    ood_datasets=first["ood_datasets"], recipe=first["protocol"]["recipe"],
                    hardware=first["hardware"], seconds=sum(run["seconds"] for run in protocol_runs),
                    accuracy=_mean_std([row["accuracy"] for row in rows]),
                    throughput=_mean_std([row["throughput"] for row in rows]) if ratios else None,
                    throughput_ratio=_mean_std(ratios) if ratios else None,
                    metrics={ood: {metric: _mean_std([row["metrics"][score][ood][metric] for row in rows])
                                   for metric in METRIC_NAMES}
                             for ood in first["ood_datasets"]}))
    return summary


def _percent(stat: Dict[str, float], best: bool = False) -> str:
    text = f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"
    return f"**{text}**" if best else text


def markdown_table(summary: Sequence[Dict], metrics: Sequence[str] = ("auroc", "tnr_at_95_tpr"),
                   protocol: Optional[str] = None) -> str:
    """A Markdown table per protocol: ID accuracy, the chosen metrics per OOD set and throughput ratio,
    mean ± std over seeds in %; the best mean per column is bold."""
    blocks = []
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        if protocol is not None and name != protocol:
            continue
        entries = [entry for entry in summary if entry["protocol"] == name]
        oods = entries[0]["ood_datasets"]
        columns = [(ood, metric) for ood in oods for metric in metrics]
        header = (["model, score", "ID acc %"] + [f"{_METRIC_HEADERS[m]} {ood} %" for ood, m in columns]
                  + ["inference img/s (x SoftMax)"])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best_accuracy = max(e["accuracy"]["mean"] for e in entries)
        best = {(ood, m): max(e["metrics"][ood][m]["mean"] for e in entries) for ood, m in columns}
        for entry in entries:
            ratio = entry["throughput_ratio"]
            cells = [entry["label"], _percent(entry["accuracy"], entry["accuracy"]["mean"] == best_accuracy)]
            cells += [_percent(entry["metrics"][ood][m], entry["metrics"][ood][m]["mean"] == best[(ood, m)])
                      for ood, m in columns]
            cells.append(f"{entry['throughput']['mean']:.0f} ({ratio['mean']:.2f}x)" if ratio else "")
            lines.append("| " + " | ".join(cells) + " |")
        first = entries[0]
        recipe = first["recipe"]
        lines.append(f"\n{name}: ID {first['id_dataset']}, {first['arch'].split('_isomax')[0]}, "
                     f"{recipe['epochs']} epochs, batch {recipe['batch_size']}, lr {recipe['lr']}, seeds "
                     f"{', '.join(map(str, first['seeds']))}; {first['hardware']}; "
                     f"{first['seconds'] / 60:.0f} min in all.")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)

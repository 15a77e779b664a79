"""Hub configs: one JSON file per published model, the single source of truth for its Hub repo.

A hub config records where the model goes (``repo_id``), what it is (``architecture`` + ``tag``, so that
``timm.create_model("<architecture>.<tag>", pretrained=True)`` loads it from the Hub after
``import timm_isomax``), how it was made (the exact ``timm-isomax finetune`` argument list, the dataset and
OOD sets) and what it measures (``metrics``, filled in by ``timm-isomax reproduce``).

The files live in the top-level ``hub_configs/`` folder, installed as the data package
``timm_isomax.hub_configs``::

    >>> from timm_isomax.hub.config import packaged_hub_configs, load_hub_config
    >>> [c.name for c in packaged_hub_configs()]
    ['resnet10t_isomaxplus.mnist', ...]
    >>> cfg = load_hub_config("hub_configs/resnet10t_isomaxplus.mnist.json")
    >>> cfg.repo_id
    'timm-isomax/resnet10t_isomaxplus.mnist'
"""
import dataclasses
import functools
import importlib.resources
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .._io import write_json
from ..models.classifier import HEAD_TYPES, head_type_of_name

__all__ = ["HubConfig", "load_hub_config", "write_hub_config", "packaged_hub_configs", "metric_differences",
           "HUB_CONFIG_PACKAGE", "SAME_WEIGHTS_TOLERANCE", "RETRAINED_TOLERANCE"]

HUB_CONFIG_PACKAGE = "timm_isomax.hub_configs"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class HubConfig:
    """One published model. ``metrics`` is None until ``timm-isomax reproduce`` (or a person) measures it.

    ``dataset``: ``{"name", "path", "train_split", "eval_split"}`` (+ optional ``"hub_id"``, the Hub dataset id
    the card's metadata names); ``ood_datasets``: ``[{"name", "path", "split"}, ...]`` (+ optional ``"hub_id"``); ``finetune_args``: the ``timm-isomax finetune``
    arguments, ``--output`` being ``source_checkpoint``; ``evaluation``: ``{"limit", "batch_size"}``;
    ``published``: ``{"revision", "weights_sha256"}``, written by ``timm-isomax push`` once the weights are on
    the Hub. ``seeds``: train the recipe once per seed and publish the one chosen on validation
    (:func:`timm_isomax.train.reproduce.publish_seed_choice`; ``metrics["seed_choice"]`` records the choice and
    the seed mean, and ``finetune_args`` the chosen ``--seed``). Only a published config registers its tag with timm's pretrained weights (pinned to that
    revision); until then ``timm.create_model(name, pretrained=True)`` says the weights are not published.
    """

    repo_id: str
    architecture: str
    tag: str
    source_checkpoint: str
    dataset: Dict[str, Any]
    ood_datasets: List[Dict[str, Any]]
    finetune_args: List[str]
    license: str
    evaluation: Dict[str, Any] = field(default_factory=dict)
    label_names: Optional[List[str]] = None
    data_config: Optional[Dict[str, Any]] = None
    metrics: Optional[Dict[str, Any]] = None
    published: Optional[Dict[str, Any]] = None
    description: str = ""
    seeds: Optional[List[int]] = None
    path: Optional[Path] = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The timm name of the published weights, ``<architecture>.<tag>``."""
        return f"{self.architecture}.{self.tag}"

    @property
    def is_published(self) -> bool:
        return bool(self.published)

    @property
    def hf_hub_id(self) -> str:
        """``ORG/NAME@revision`` of the pushed commit (timm's revision syntax), or ``ORG/NAME`` if none was recorded."""
        revision = (self.published or {}).get("revision")
        return f"{self.repo_id}@{revision}" if revision else self.repo_id

    @property
    def head_type(self) -> str:
        """``isomaxplus``, ``isomax`` or ``dismax``: the suffix of :attr:`architecture`."""
        return head_type_of_name(self.architecture)

    def to_json(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "path"}


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{where}: {message}; fix the hub config JSON file.")


def _validate(data: Any, where: str) -> HubConfig:
    _require(isinstance(data, dict), where, "must hold a JSON object")
    known = {f.name for f in dataclasses.fields(HubConfig)} - {"path"}
    unknown = sorted(set(data) - known)
    _require(not unknown, where, f"unknown field(s) {unknown}; known: {sorted(known)}")
    required = [f.name for f in dataclasses.fields(HubConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    _require(not missing, where, f"missing field(s) {missing}")
    for key in ("repo_id", "architecture", "tag", "source_checkpoint", "license"):
        _require(isinstance(data[key], str) and data[key], where, f"{key!r} must be a non-empty string")
    _require(bool(_REPO_ID.match(data["repo_id"])), where, f"repo_id must be 'ORG/NAME', got {data['repo_id']!r}")
    _require(head_type_of_name(data["architecture"]) is not None and "." not in data["architecture"], where,
             f"architecture must be an IsoMax name {' or '.join(repr('<arch>_' + k) for k in HEAD_TYPES)}, "
             f"got {data['architecture']!r}")
    _require("." not in data["tag"], where, f"tag must not contain '.', got {data['tag']!r}")
    for key in ("name", "path", "train_split", "eval_split"):
        _require(isinstance(data["dataset"], dict) and isinstance(data["dataset"].get(key), str), where,
                 f"dataset.{key} must be a string")
    _require(isinstance(data["ood_datasets"], list) and all(
        isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("name", "path", "split"))
        for d in data["ood_datasets"]), where, "ood_datasets must be a list of {name, path, split}")
    for i, entry in enumerate([data["dataset"], *data["ood_datasets"]]):
        # the card's model-index names the data by its Hub dataset id
        _require(entry.get("hub_id") is None or (isinstance(entry["hub_id"], str) and bool(_REPO_ID.match(entry["hub_id"]))),
                 where, f"{'dataset' if i == 0 else f'ood_datasets[{i - 1}]'}.hub_id must be a Hub dataset id 'ORG/NAME'")
    args = data["finetune_args"]
    _require(isinstance(args, list) and all(isinstance(a, str) for a in args), where,
             "finetune_args must be a list of strings (the `timm-isomax finetune` argument list)")
    _require(_flag_value(args, "--output") == data["source_checkpoint"], where,
             "finetune_args must contain '--output SOURCE_CHECKPOINT' (the folder reproduce.py trains into)")
    labels = data.get("label_names")
    _require(labels is None or (isinstance(labels, list) and all(isinstance(n, str) for n in labels)), where,
             "label_names must be a list of strings or null")
    published = data.get("published")
    _require(published is None or (isinstance(published, dict) and isinstance(published.get("weights_sha256"), str)
                                   and isinstance(published.get("revision"), (str, type(None)))), where,
             "published must be null or {\"revision\": COMMIT, \"weights_sha256\": HASH} (timm-isomax push writes it)")
    for key in ("data_config", "metrics", "evaluation"):
        _require(data.get(key) is None or isinstance(data[key], dict), where, f"{key} must be an object or null")
    seeds = data.get("seeds")
    _require(seeds is None or (isinstance(seeds, list) and seeds
                               and all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)
                               and len(set(seeds)) == len(seeds)),
             where, "seeds must be null or a non-empty list of distinct integers (the recipe's --seed values)")
    choice = (data.get("metrics") or {}).get("seed_choice")
    _require(choice is None or isinstance(choice, dict), where, "metrics.seed_choice must be an object (timm-isomax "
             "reproduce writes it)")
    if choice is not None:
        recipe_seed = _flag_value(args, "--seed")
        _require(recipe_seed == str(choice.get("seed")), where, f"finetune_args train --seed {recipe_seed} but "
                 f"metrics.seed_choice published seed {choice.get('seed')}; run `timm-isomax reproduce` again")
    return HubConfig(**{**data, "evaluation": data.get("evaluation") or {}})


def _flag_value(args: List[str], flag: str) -> Optional[str]:
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def load_hub_config(path: Union[str, Path]) -> HubConfig:
    """Read and validate one hub config; every problem is a one-line ``ValueError`` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"{path} not found: pass a file from hub_configs/ (e.g. hub_configs/NAME.json).") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid UTF-8 JSON ({error}); fix the hub config JSON file.") from None
    config = _validate(data, str(path))
    config.path = path
    return config


def write_hub_config(config: HubConfig, path: Optional[Union[str, Path]] = None) -> Path:
    """Write ``config`` (validated first) to ``path`` (default: where it was read from), atomically."""
    path = Path(path or config.path or "")
    if not path.name:
        raise ValueError("write_hub_config needs a path for a config that was not read from a file.")
    data = config.to_json()
    _validate(data, str(path))
    write_json(path, data, indent=2)
    packaged_hub_configs.cache_clear()
    return path


@functools.lru_cache(maxsize=None)
def _packaged() -> Tuple[HubConfig, ...]:
    folder = importlib.resources.files(HUB_CONFIG_PACKAGE)
    configs = [load_hub_config(Path(str(entry))) for entry in sorted(folder.iterdir(), key=lambda e: e.name)
               if entry.name.endswith(".json")]
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"hub configs declare {duplicates} more than once; give each file its own architecture.tag.")
    return tuple(configs)


def packaged_hub_configs() -> List[HubConfig]:
    """The hub configs shipped in the package (``hub_configs/*.json``), sorted by file name."""
    return list(_packaged())


packaged_hub_configs.cache_clear = _packaged.cache_clear  # type: ignore[attr-defined]


# How far a re-measured number may be from the recorded one (``timm-isomax reproduce --check``), in percentage
# points for accuracy and the OOD metrics, in % of the value for the threshold. The same weights must give the
# same numbers (the evaluation is deterministic; the margin only absorbs float summation order). Retrained
# weights differ by training noise where CPU training is not bit-reproducible (other thread counts, CPUs).
SAME_WEIGHTS_TOLERANCE = 0.01
RETRAINED_TOLERANCE = 1.0


def metric_differences(recorded: Dict[str, Any], measured: Dict[str, Any], tolerance: float) -> List[Tuple[str, Any, Any, bool]]:
    """Every number a hub config records, beside its re-measured value: ``(name, recorded, measured, within)``.

    ``within`` is whether the two agree: equal for image counts and the score, within ``tolerance`` points
    for accuracy and each OOD metric of each set, within ``tolerance`` % of the value for the threshold.

    Example:
        >>> [row for row in metric_differences(config.metrics, remeasured, RETRAINED_TOLERANCE) if not row[3]]
        [('ood.notmnist.fpr_at_95_tpr', 0.1018, 0.1312, False)]
    """
    rows: List[Tuple[str, Any, Any, bool]] = []

    def points(name: str, old: Any, new: Any) -> None:
        rows.append((name, old, new, new is not None and abs(100 * (new - old)) <= tolerance + 1e-12))

    for key in ("score", "id_images", "ood_images"):
        rows.append((key, recorded.get(key), measured.get(key), recorded.get(key) == measured.get(key)))
    points("accuracy", recorded["accuracy"], measured.get("accuracy"))
    for ood_set, row in recorded.get("ood", {}).items():
        for metric, old in row.items():
            points(f"ood.{ood_set}.{metric}", old, measured.get("ood", {}).get(ood_set, {}).get(metric))
    old, new = recorded.get("threshold"), measured.get("threshold")
    if old is not None:
        rows.append(("threshold", old, new, new is not None and abs(new - old) <= abs(old) * tolerance / 100 + 1e-12))
    return rows

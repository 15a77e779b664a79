"""Hub-format model folders: ``config.json`` (timm's format) + ``model.safetensors`` (never pickle).

A folder written by :func:`save_pretrained` loads back with
``timm.create_model("local-dir:FOLDER", pretrained=True)`` (with the wheel installed, timm-isomax registers
itself when timm is imported; from a source checkout, ``import timm_isomax`` first), and the same files on
the Hugging Face Hub load with ``hf-hub:ORG/NAME``.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import safetensors.torch
import torch

from .. import _timm_compat
from .._io import atomic_write
from ..ood.feature_scores import FEATURE_BANK_NAME, FeatureBank
from ..models.classifier import HEAD_TITLES, IsoMaxClassifier, ood_config_problem
from .provenance import PROVENANCE_KEY, check_folder_matches, recorded_provenance, weights_sha256

if TYPE_CHECKING:  # hub_config imports this module
    from huggingface_hub import EvalResult, HfApi, ModelInfo

    from .config import HubConfig

__all__ = [
    "save_pretrained",
    "output_folder_problem",
    "read_config",
    "validate_model_config",
    "check_model_folder",
    "hub_downloads",
    "render_model_card",
    "model_card_eval_results",
    "write_model_card",
    "prepare_repo_folder",
    "push_to_hub",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "ISOMAX_CONFIG_KEY",
    "IMPORT_HINT",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
# timm has no plugin discovery: without this import, timm does not know the IsoMax architecture names.
IMPORT_HINT = ("IsoMax models need timm-isomax: `pip install timm-isomax` (its wheel registers the <arch>_isomaxplus / "
               "<arch>_isomax architectures with timm when timm is imported; from a source checkout, or with "
               "TIMM_ISOMAX_NO_AUTOLOAD=1, `import timm_isomax` before timm.create_model)")
# Top-level key of config.json holding timm-isomax metadata (head type, OOD score, threshold, ...).
ISOMAX_CONFIG_KEY = "isomax"


def _hub_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host opens within ``timeout`` seconds (name lookup included).

    Where it does not (no network, a server that is down), huggingface_hub would retry for ~25 s before
    giving up. Behind a proxy the route is the proxy's: assume reachable and let huggingface_hub try.
    """
    import socket
    import urllib.request
    from urllib.parse import urlparse

    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    if urllib.request.getproxies().get(parsed.scheme) and not urllib.request.proxy_bypass(host):
        return True
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except (OSError, UnicodeError):  # unknown host, refused, unreachable network, timeout
        return False
    return True


def _transport_errors() -> Tuple[type, ...]:
    # the HTTP library under huggingface_hub changed between releases (requests, httpx, httpx2): its
    # connection-level errors, whichever is installed
    import importlib

    found = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _hub_failure(error: BaseException) -> Optional[Tuple[Optional[int], str]]:
    """``(HTTP status or None for a broken connection, one-line cause)`` of a failed Hub request; None if
    ``error`` is no HTTP failure."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError) and error.response is not None:
        response = error.response
        status = response.status_code
        reason = getattr(response, "reason_phrase", None) or getattr(response, "reason", "") or ""
        message = (error.server_message or "").strip().splitlines()
        return status, f"the Hub answered {status} {reason}".rstrip() + (f": {message[0].rstrip('.')}" if message else "")
    if isinstance(error, _transport_errors()):
        first = str(error).strip().splitlines()
        what = "could not connect" if "connect" in type(error).__name__.lower() else "the connection broke"
        return None, f"{what} ({type(error).__name__}{': ' + first[0] if first else ''})"
    return None


@contextlib.contextmanager
def hub_downloads(repo_id: str, what: str, todo: Optional[str] = None) -> Iterator[None]:
    """Downloads of ``repo_id`` from the Hugging Face Hub (``what``: the model they are for), made predictable.

    Where the Hub (``HF_ENDPOINT``) cannot even be connected to, downloads run in offline mode for this
    block, so a cached copy loads at once and a missing one fails at once, instead of after
    huggingface_hub's retries (~25 s). Any failure to get the files (no such repo, revision or file, refused
    access, a server error, a connection that broke and stayed broken) is one ``FileNotFoundError`` line
    naming the repo, the cause and what to do. A broken download leaves only huggingface_hub's
    ``.incomplete`` blob, which the next try resumes; nothing half-written is ever loaded.

    Example:
        >>> with hub_downloads("timm-isomax/resnet10t_isomaxplus.mnist", "resnet10t_isomaxplus.mnist"):
        ...     model = timm.create_model("hf-hub:timm-isomax/resnet10t_isomaxplus.mnist", pretrained=True)
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)

    offline_before = constants.HF_HUB_OFFLINE
    unreachable = not offline_before and not _hub_reachable(constants.ENDPOINT)
    if unreachable:
        constants.HF_HUB_OFFLINE = True  # read by huggingface_hub at each call; restored below
    todo = todo or (f"load a local copy with timm.create_model('local-dir:PATH', pretrained=True), or rebuild it "
                    f"with `timm-isomax reproduce HUB_CONFIG`")
    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        failure = _hub_failure(error.__cause__) if error.__cause__ is not None else None
        why = (f"the Hub ({constants.ENDPOINT}) is unreachable from here" if unreachable else
               "HF_HUB_OFFLINE is set" if offline_before else
               f"the download failed ({failure[1]})" if failure else "the download failed")
        raise FileNotFoundError(f"{what}: {repo_id} is not in the local Hugging Face cache and {why}; connect and retry, "
                                f"{todo}.") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{what}: the Hub has no repo {repo_id} (or it is private: log in with `hf auth login` "
                                f"or set HF_TOKEN); check the name, or {todo}.") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{what}: {repo_id} has no such revision (the commit, branch or tag after '@'); check "
                                f"it against the repo's history, or drop it to load the latest commit.") from None
    except EntryNotFoundError as error:
        raise FileNotFoundError(f"{what}: {repo_id} lacks a file the model needs ({str(error).splitlines()[0]}); it is "
                                f"not a timm model repo (config.json + model.safetensors).") from None
    except Exception as error:
        failure = _hub_failure(error)
        if failure is None:
            raise
        status, cause = failure
        then = ("log in with `hf auth login` or set HF_TOKEN to a token that may read it" if status in (401, 403) else
                "retry: a broken download resumes where it stopped" if status is None or status >= 500 or status == 429
                else f"check the repo, or {todo}")
        raise FileNotFoundError(f"{what}: downloading {repo_id} from {constants.ENDPOINT} failed: {cause}; {then}.") from None
    finally:
        constants.HF_HUB_OFFLINE = offline_before


def timm_weight_downloads(model_name: str) -> ContextManager[None]:
    """:func:`hub_downloads` for the weights timm downloads for a registry name (``resnet18.a1_in1k``, or an
    IsoMax name mirroring it) from the Hub: one line at once where they cannot be had, instead of
    huggingface_hub's retries (~50 s) and a message that names no repo. Other names: a no-op context."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError:  # an unknown tag: timm.create_model says so itself
        cfg = None
    if cfg is None or not cfg.hf_hub_id or cfg.file or cfg.state_dict:
        return contextlib.nullcontext()
    return hub_downloads(cfg.hf_hub_id.split("@")[0], model_name,
                         todo="give the weights as a file (finetune --checkpoint FILE, or "
                              "pretrained_cfg_overlay=dict(file=PATH)), or train with --from-scratch")


def save_pretrained(
    model: torch.nn.Module,
    folder: Union[str, Path],
    label_names: Optional[Sequence[str]] = None,
    isomax_metadata: Optional[Dict[str, Any]] = None,
    data_config: Optional[Dict[str, Any]] = None,
    tag: Optional[str] = None,
    provenance: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write ``model`` as a Hub-format folder and return its path.

    Args:
        model: a timm model (IsoMax or SoftMax), as built by ``timm.create_model``.
        folder: created if missing; existing config/weights files are replaced atomically.
        label_names: class names, index order.
        isomax_metadata: extra entries for the top-level ``"isomax"`` block of config.json (e.g. a
            deployment threshold); head type and default OOD score are filled in for IsoMax models.
        data_config: preprocessing to record (timm data config keys), if not the model's own.
        tag: the pretrained tag of these weights (e.g. ``"cifar10"``); the source's tag is never kept.
        provenance: what produced the weights (the trainer passes its settings and data identity), recorded
            in config.json as ``provenance`` beside the SHA-256 of the weights, which is always recorded
            (:mod:`timm_isomax.provenance`).

    Example:
        >>> model = timm.create_model("resnet18_isomaxplus", num_classes=10)
        >>> folder = save_pretrained(model, "out/resnet18_isomaxplus.demo")
        >>> same = timm.create_model(f"local-dir:{folder}", pretrained=True)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f"{len(label_names)} label names for a model with {model.num_classes} classes.")
    extra: Dict[str, Any] = {"pretrained_cfg": {"tag": tag}}
    if label_names is not None:
        extra["label_names"] = list(label_names)
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if isinstance(model, IsoMaxClassifier):
        extra[ISOMAX_CONFIG_KEY] = dict(head_type=model.head_type, **model.ood_config, **(isomax_metadata or {}))
    elif isomax_metadata:
        extra[ISOMAX_CONFIG_KEY] = dict(isomax_metadata)
    # top level, not in the "isomax" block: a SoftMax folder stays a plain timm folder with one extra record
    extra[PROVENANCE_KEY] = dict(provenance or {}, weights_sha256=weights_sha256(state_dict))
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: safetensors.torch.save_file(state_dict, tmp, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, lambda tmp: _timm_compat.save_timm_config(model, tmp, extra, data_config))
    return folder


def output_folder_problem(folder: Union[str, Path], flag: str = "--output") -> Optional[str]:
    """Why ``folder`` cannot be written as an output folder (a file, under a file, not writable), or None:
    asked before a run or an evaluation starts, so its end never fails on the place it writes to."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{flag} {folder} is a file, not a folder; name a new or existing folder."
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{flag} {folder} cannot be made: {existing} is a file; name a folder elsewhere."
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag} {folder}: {existing} is not writable (permission denied); name a folder you can write to."
    return None


def read_config(folder: Union[str, Path]) -> Dict[str, Any]:
    """The parsed and validated ``config.json`` of a model folder (see :func:`validate_model_config`).

    Raises ``FileNotFoundError`` for a missing file and a one-line ``ValueError`` for a file that is not
    UTF-8 JSON or whose fields have the wrong types.
    """
    path = Path(folder) / CONFIG_NAME
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{path} not found: not a model folder written by save_pretrained / timm.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"{path} is not valid UTF-8 JSON ({reason}); the folder is damaged, re-export the model.") from None
    return validate_model_config(data, str(path))


def _is_count(value: Any) -> bool:
    # bool is an int subclass: True must not pass as one class
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# pretrained_cfg fields that must be (C, H, W) sizes of integers >= 1
_SIZE_FIELDS = ("input_size", "test_input_size", "min_input_size")


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a PretrainedCfg field annotation (JSON arrays stand for tuples)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if origin is Union:
        return any(_matches(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return (len(value) == len(args) or len(args) == 1) and all(_matches(v, a) for v, a in zip(value, args * len(value)))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # typing.Any


def _pretrained_cfg_problem(pretrained_cfg: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the ``pretrained_cfg`` block of a config.json, or None: unknown fields, and values
    whose type is not the field's (timm reads them deep inside its loaders)."""
    fields = {f.name: f.type for f in dataclasses.fields(_timm_compat.PretrainedCfg)}
    unknown = sorted(str(k) for k in set(pretrained_cfg) - set(fields))
    if unknown:
        return f"unknown fields {unknown[:5]} (not timm PretrainedCfg fields)"
    for key, value in pretrained_cfg.items():
        if not _matches(value, fields[key]):
            return f"{key} has the wrong type: {value!r}"
    for key in _SIZE_FIELDS:
        value = pretrained_cfg.get(key)
        if value is not None and not all(_is_count(v) for v in value):
            return f"{key} must be [channels, height, width] (integers >= 1), got {value!r}"
    if "num_classes" in pretrained_cfg and not _is_count(pretrained_cfg["num_classes"]):
        return f"num_classes must be an integer >= 1, got {pretrained_cfg['num_classes']!r}"
    return None


# top-level keys of timm's legacy config.json layout that are not pretrained cfg fields
_LEGACY_TOP_LEVEL = ("architecture", "num_features", "labels", "label_names", "label_descriptions", PROVENANCE_KEY)


def _config_problem(config: Any) -> Optional[str]:
    """What is wrong with a parsed config.json, or None. Checks what timm and this package read from it."""
    if not isinstance(config, dict):
        return f"must hold a JSON object, got {type(config).__name__}"
    if not (isinstance(config.get("architecture"), str) and config["architecture"]):
        return "'architecture' must be a non-empty string (a timm model name)"
    for key in ("pretrained_cfg", "model_args", ISOMAX_CONFIG_KEY):
        if key in config and not isinstance(config[key], dict):
            return f"{key!r} must be a JSON object, got {type(config[key]).__name__}"
    # timm's legacy layout has no "pretrained_cfg" block: the top level is the pretrained cfg
    legacy = {k: v for k, v in config.items() if k not in _LEGACY_TOP_LEVEL}
    problem = _pretrained_cfg_problem(config["pretrained_cfg"] if "pretrained_cfg" in config else legacy)
    if problem:
        return f"pretrained_cfg: {problem}"
    model_args = config.get("model_args", {})
    if "num_classes" in config and not _is_count(config["num_classes"]):  # timm copies it, null included
        return f"num_classes must be an integer >= 1, got {config['num_classes']!r}"
    for where, value in (("model_args.num_classes", model_args.get("num_classes")),
                         ("model_args.in_chans", model_args.get("in_chans"))):
        if value is not None and not _is_count(value):
            return f"{where} must be an integer >= 1, got {value!r}"
    labels = config.get("label_names")
    if labels is not None:
        if not (isinstance(labels, list) and all(isinstance(name, str) for name in labels)):
            return "'label_names' must be a list of strings"
        num_classes = model_args.get("num_classes", config.get("num_classes"))
        if num_classes is not None and len(labels) != num_classes:
            return f"{len(labels)} label_names for {num_classes} classes"
    if model_args.get("ood_config") is not None:
        problem = ood_config_problem(model_args["ood_config"])
        if problem:
            return f"model_args: {problem}"
    return None


def validate_model_config(config: Any, where: str = CONFIG_NAME) -> Dict[str, Any]:
    """Return ``config`` (a parsed config.json) if its fields have the types timm and timm-isomax read;
    else raise a one-line ``ValueError`` naming the field. ``where`` names the file in the message."""
    problem = _config_problem(config)
    if problem:
        raise ValueError(f"{where}: {problem}; fix config.json or re-export the model with save_pretrained.")
    return config


def _weight_shapes(path: Path, names: Sequence[str]) -> Dict[str, Tuple[int, ...]]:
    """Shapes of the named tensors in a safetensors file, read from its header only (no tensor data)."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as weights:
            keys = set(weights.keys())
            return {name: tuple(weights.get_slice(name).get_shape()) for name in names if name in keys}
    except Exception as error:  # safetensors raises its own error types for damaged headers
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a readable safetensors file ({reason}); re-export the model.") from None


def check_model_folder(folder: Union[str, Path], in_chans: Optional[int] = None) -> Dict[str, Any]:
    """Validate a saved IsoMax model folder before anything is built from it; returns its config.

    Beyond :func:`read_config`, the class count and input channels that config.json declares are checked
    against the shapes in ``model.safetensors`` (its header only): a config that disagrees with its weights
    would otherwise build a head of the wrong size (silently re-initialised), a huge one, or a silently
    adapted stem. ``in_chans``: channels the caller asks for explicitly (timm adapts the stem to them), in
    which case the saved channel count is not checked.
    """
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    first_conv = config.get("pretrained_cfg", {}).get("first_conv")
    conv_weight = f"{first_conv}.weight" if isinstance(first_conv, str) else None
    if not weights.is_file():
        return config
    shapes = _weight_shapes(weights, [n for n in ("head.prototypes", conv_weight) if n])
    model_args = config.get("model_args", {})
    if "head.prototypes" in shapes:
        saved_classes = shapes["head.prototypes"][0]
        for where, value in (("num_classes", config.get("num_classes")), ("model_args.num_classes", model_args.get("num_classes"))):
            if value is not None and value != saved_classes:
                raise ValueError(f"{folder / CONFIG_NAME}: {where} is {value} but {WEIGHTS_NAME} holds {saved_classes} class "
                                 f"prototypes; set it to {saved_classes} in config.json or re-export the model.")
    # timm builds 3 input channels unless model_args say otherwise
    saved_chans = model_args.get("in_chans", 3)
    if (in_chans is None and conv_weight in shapes and len(shapes[conv_weight]) == 4
            and saved_chans != shapes[conv_weight][1]):
        raise ValueError(f"{folder / CONFIG_NAME}: model_args.in_chans is {saved_chans}"
                         f"{'' if 'in_chans' in model_args else ' (not recorded: timm default)'} but {conv_weight} in "
                         f"{WEIGHTS_NAME} takes {shapes[conv_weight][1]} channels; fix in_chans in config.json or "
                         f"re-export the model.")
    return config


# --- publishing -----------------------------------------------------------------------------------
_CARD_TAGS = ("image-classification", "timm", "out-of-distribution-detection", "isomax")
# (metric key, column title) in the card's results table; the conventions are spelled out below it
_CARD_COLUMNS = (("auroc", "AUROC"), ("fpr_at_95_tpr", "FPR@95 (ID+)"), ("tnr_at_95_tpr", "TNR@95 (ID+)"),
                 ("fpr95_ood_positive", "FPR95 (OOD+)"), ("aupr_in", "AUPR-In"), ("aupr_out", "AUPR-Out"),
                 ("detection_accuracy", "DTACC"))
_CITATIONS = """```bibtex
@article{macedo2021entropic,
  title   = {Entropic Out-of-Distribution Detection},
  author  = {Macedo, David and Ren, Tsang Ing and Zanchettin, Cleber and Oliveira, Adriano L. I. and Ludermir, Teresa},
  journal = {IEEE Transactions on Neural Networks and Learning Systems},
  year    = {2021}
}
@article{macedo2021enhanced,
  title   = {Enhanced Isotropy Maximization Loss: Seamless and High-Performance Out-of-Distribution Detection
             Simply Replacing the SoftMax Loss},
  author  = {Macedo, David and Ludermir, Teresa},
  journal = {arXiv preprint arXiv:2105.14399},
  year    = {2021}
}
```"""
# the third paper, cited on the cards of DisMax models
_DISMAX_CITATION = """```bibtex
@article{macedo2022distinction,
  title   = {Distinction Maximization Loss: Efficiently Improving Out-of-Distribution Detection and Uncertainty
             Estimation by Replacing the Loss and Calibrating},
  author  = {Macedo, David and Zanchettin, Cleber and Ludermir, Teresa},
  journal = {arXiv preprint arXiv:2205.05874},
  year    = {2022}
}
```"""
# what the card says a head's logits are (the OOD score comes from the same forward pass)
_HEAD_DESCRIPTIONS = {
    "isomaxplus": "its logits are negative distances between unit features and unit class prototypes, scaled by a "
                  "learned distance scale",
    "isomax": "its logits are negative Euclidean distances between the features and class prototypes",
    "dismax": "its logits are negative distances between unit features and unit class prototypes plus each image's "
              "mean distance to all prototypes, scaled by a learned distance scale",
}


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _points(value: float) -> float:
    # the model-index values: percent, rounded as the card's table prints them
    return round(100 * value, 2)


# model-index metric (type, name): types the Hub knows (hf.co/metrics) where there is one; the name states the
# convention, since FPR@95 differs between papers (timm_isomax.evaluation.CONVENTIONS)
_INDEX_ACCURACY = ("accuracy", "Top-1 accuracy (%)")
_INDEX_OOD_METRICS = (("auroc", "roc_auc", "AUROC (%), ID positive"),
                      ("fpr_at_95_tpr", "fpr_at_95_tpr", "FPR@95 (%), ID positive: OOD accepted when 95% of ID is accepted"))


def model_card_eval_results(config: "HubConfig") -> List["EvalResult"]:
    """The measured numbers of ``config`` as huggingface_hub ``EvalResult``s: what the card's ``model-index``
    holds and the Hub shows as evaluation results. Values in % (as in the card's table): the ID test split's
    accuracy, then for each OOD set its AUROC and FPR@95 (ID positive) with the config's OOD score. Empty
    until ``timm-isomax reproduce`` has measured the model.

    Example:
        >>> results = model_card_eval_results(load_hub_config("hub_configs/resnet10t_isomaxplus.mnist.json"))
        >>> [(r.dataset_type, r.metric_type) for r in results][:3]
        [('ylecun/mnist', 'accuracy'), ('zalando-datasets/fashion_mnist', 'roc_auc'), ('zalando-datasets/fashion_mnist', 'fpr_at_95_tpr')]
    """
    from huggingface_hub import EvalResult

    metrics = config.metrics or {}
    if metrics.get("accuracy") is None:
        return []
    dataset = config.dataset
    results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type=dataset.get("hub_id") or dataset["name"], dataset_name=dataset["name"],
                          dataset_split=dataset["eval_split"], metric_type=_INDEX_ACCURACY[0],
                          metric_name=_INDEX_ACCURACY[1], metric_value=_points(metrics["accuracy"]))]
    score = metrics.get("score", "?")
    for ood in config.ood_datasets:
        row = metrics.get("ood", {}).get(ood["name"], {})
        for key, metric_type, metric_name in _INDEX_OOD_METRICS:
            if row.get(key) is not None:
                results.append(EvalResult(
                    task_type="image-classification",
                    task_name=f"Out-of-distribution detection ({score} score, in-distribution: {dataset['name']})",
                    dataset_type=ood.get("hub_id") or ood["name"],
                    dataset_name=f"{ood['name']} {ood['split']} (OOD) vs {dataset['name']} {dataset['eval_split']} (ID)",
                    dataset_split=ood["split"], metric_type=metric_type, metric_name=metric_name,
                    metric_value=_points(row[key])))
    return results


def _card_front_matter(config: "HubConfig") -> str:
    # huggingface_hub's own writer: the metadata is exactly what its parser (and the Hub) reads back
    from huggingface_hub import ModelCardData

    results = model_card_eval_results(config)
    data = ModelCardData(library_name="timm", license=config.license, pipeline_tag="image-classification",
                         tags=[*_CARD_TAGS, config.head_type], datasets=[config.dataset.get("hub_id") or config.dataset["name"]],
                         metrics=["accuracy", "roc_auc"], model_name=config.name if results else None,
                         eval_results=results or None)
    return data.to_yaml()


def _snippet_prediction(has_threshold: bool) -> List[str]:
    # is_ood needs the deployment threshold in config.json; a card of weights without one must not print a
    # snippet that raises "no OOD threshold" for everyone who copies it
    if has_threshold:
        return ["for p in timm_isomax.predict(model, [image]):",
                "    print(p.label, p.score, p.is_ood)  # score: higher = more in-distribution; is_ood: score < threshold"]
    return ["print(timm_isomax.ood_scores(model, [image]))  # higher = more in-distribution",
            "# these weights carry no OOD threshold: fit one on ID data with timm_isomax.fit_ood_threshold(model, loader)"]


def render_model_card(config: "HubConfig", model_folder: Optional[Union[str, Path]] = None) -> str:
    """The model card (README.md with YAML front matter) of a published model, from its hub config.

    The front matter carries ``model-index`` (:func:`model_card_eval_results`) once the config is measured;
    the usage snippet runs as printed once the repo is on the Hub (``tests/test_hub_http.py`` runs it).
    ``model_folder``: the measured model's folder, whose run record says how its OOD score was chosen and whose
    feature bank the card describes.

    Example:
        >>> card = render_model_card(load_hub_config("hub_configs/resnet10t_isomaxplus.mnist.json"))
    """
    metrics = config.metrics or {}
    lines = ["---", _card_front_matter(config), "---", "",
             f"# {config.name}", "", config.description or f"{config.architecture} trained on {config.dataset['name']}.",
             "", f"Head: {HEAD_TITLES[config.head_type]}; {_HEAD_DESCRIPTIONS[config.head_type]}, so the same "
             "forward pass gives the class and an out-of-distribution (OOD) score, with no extra training or "
             "post-processing.", "",
             "## Usage", "", f"{IMPORT_HINT}; without it timm raises `Unknown model ({config.architecture})`.", "",
             "```python", "import timm", "", "import timm_isomax  # registers the IsoMax architectures with timm (the wheel also does on `import timm`)", "",
             f'model = timm.create_model("hf-hub:{config.repo_id}", pretrained=True).eval()',
             f'# or, where the installed timm-isomax ships its hub config: timm.create_model("{config.name}", pretrained=True)',
             "", "from PIL import Image", "image = Image.open(\"example.png\")  # your image; preprocessed with the model's data config",
             *_snippet_prediction(metrics.get("threshold") is not None), "```", ""]
    if metrics:
        lines += [f"## Results ({config.dataset['name']} test split as in-distribution)", "",
                  f"Accuracy on {config.dataset['name']} ({config.dataset['eval_split']}, {metrics.get('id_images')} images): "
                  f"**{_percent(metrics.get('accuracy'))}%**. OOD score: `{metrics.get('score')}`. All values in %; "
                  "accuracy, AUROC and FPR@95 are also in this card's `model-index` metadata (the Hub's evaluation results).", "",
                  "| OOD set | images | " + " | ".join(title for _, title in _CARD_COLUMNS) + " |",
                  "|---|---:|" + "---:|" * len(_CARD_COLUMNS)]
        for name, row in metrics.get("ood", {}).items():
            images = metrics.get("ood_images", {}).get(name, "")
            lines.append(f"| {name} | {images} | " + " | ".join(_percent(row.get(k)) for k, _ in _CARD_COLUMNS) + " |")
        lines += ["", "Conventions:", *(f"- {k}: {v}" for k, v in metrics.get("conventions", {}).items()),
                  "- mean: macro mean over the OOD sets", ""]
        if metrics.get("threshold") is not None:
            lines += [f"Deployment threshold (config.json `isomax.threshold`): {metrics['threshold']:.6g}, accepting "
                      f"{_percent(metrics.get('threshold_tpr'))}% of {metrics.get('threshold_fitted_on')}.", ""]
        lines += _score_and_bank_lines(model_folder)
        if metrics.get("temperature") not in (None, 1.0):
            lines += [f"Calibration temperature: {metrics['temperature']:.4g}.", ""]
        lines += [f"Measured with `{metrics.get('command')}`.", ""]
    validation = _validation_is_test(config)
    lines += ["## Training", "", "Reproduce (from a checkout of timm-isomax, the data under `../shared/data`):", "",
              "```bash", "timm-isomax finetune " + " ".join(config.finetune_args), "```", "",
              *([f"Validation data: {validation}, so the deployment threshold and the monitoring during training saw "
                 f"the test data: the test-split numbers above are not held out.", ""] if validation else []),
              "## Citation", "", _CITATIONS, *([_DISMAX_CITATION] if config.head_type == "dismax" else []), ""]
    return "\n".join(lines)


def _validation_is_test(config: "HubConfig") -> Optional[str]:
    """Why the run validated on the test data (as the trainer recorded it, or as the recipe's --val-split says),
    or None."""
    recorded = (config.metrics or {}).get("validation_is_test")
    if recorded:
        return recorded
    args = list(config.finetune_args)
    named = args[args.index("--val-split") + 1] if "--val-split" in args[:-1] else None
    return f"validation is the {named!r} split (--val-split {named})" if named == config.dataset["eval_split"] else None


def write_model_card(config: "HubConfig", folder: Union[str, Path], model_folder: Optional[Union[str, Path]] = None) -> Path:
    """Write :func:`render_model_card` as ``folder/README.md`` (atomically); returns its path."""
    path = Path(folder) / CARD_NAME
    atomic_write(path, lambda tmp: Path(tmp).write_text(render_model_card(config, model_folder)))
    return path


def _score_and_bank_lines(model_folder: Optional[Union[str, Path]]) -> List[str]:
    # how the model's OOD score was chosen (its run's validation AUROCs), and the feature bank that travels with it
    if model_folder is None:
        return []
    lines = []
    evaluation_path = Path(model_folder) / "training" / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else {}
    selection = evaluation.get("selection")
    if selection:
        ranked = sorted(selection["aurocs"].items(), key=lambda item: -item[1]["mean"])[:5]
        how = ("set by `--score`" if evaluation.get("chosen_by", "").startswith("setting") else
               f"chosen on validation data only: the {selection['criterion']} ({', '.join(selection['sets'])})")
        lines += [f"OOD score `{evaluation['score']}`, {how}. Validation AUROC (mean over those sets), the best five: "
                  + ", ".join(f"`{name}` {_percent(values['mean'])}" for name, values in ranked) + ".", ""]
    if (Path(model_folder) / FEATURE_BANK_NAME).is_file():
        bank = FeatureBank.load(model_folder).describe()
        lines += [f"Feature bank: `{FEATURE_BANK_NAME}`, {bank['rows']} training features of width {bank['width']} "
                  f"({bank['megabytes']} MB; from {bank['source']}), read by the `knn<k>` scores and the post-hoc "
                  "detectors (`timm_isomax.feature_scores.feature_bank_of(model)` downloads it on first use).", ""]
    return lines


def _check_publishable(folder: Union[str, Path], config: "HubConfig") -> None:
    # the card may only describe the weights its numbers were measured on: no override
    if not config.metrics:
        raise ValueError(f"{config.name} has no measured metrics; run `timm-isomax reproduce {config.path}` first.")
    check_folder_matches(folder, config)


def prepare_repo_folder(folder: Union[str, Path], config: "HubConfig", out: Union[str, Path]) -> List[Path]:
    """Write exactly what goes to the Hub into ``out``: config.json, model.safetensors, README.md.

    The model in ``folder`` (a ``save_pretrained`` / fine-tuning output) is re-exported, so the repo
    holds only the Hub files (no training state), the hub config's tag and the usage hint. Refuses a folder
    that is not the model the hub config measured (as :func:`push_to_hub` does).
    """
    _check_publishable(folder, config)
    return _write_repo_folder(folder, config, out)


def _write_repo_folder(folder: Union[str, Path], config: "HubConfig", out: Union[str, Path]) -> List[Path]:
    # prepare_repo_folder without the check: push_to_hub checks once, before contacting the Hub
    import timm  # the local-dir: loader

    saved = read_config(folder)
    model = timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True)
    out = Path(out)
    # what produced the weights travels with them; the hash is recomputed (and equal: same tensors)
    provenance = {k: v for k, v in recorded_provenance(saved).items() if k != "weights_sha256"}
    save_pretrained(model, out, label_names=config.label_names or saved.get("label_names"),
                    isomax_metadata={"usage": IMPORT_HINT}, data_config=config.data_config, tag=config.tag,
                    provenance=provenance)
    files = [out / CONFIG_NAME, out / WEIGHTS_NAME]
    if (Path(folder) / FEATURE_BANK_NAME).is_file():  # KNN's neighbours and the post-hoc fits travel with the weights
        shutil.copyfile(Path(folder) / FEATURE_BANK_NAME, out / FEATURE_BANK_NAME)
        files.append(out / FEATURE_BANK_NAME)
    write_model_card(config, out, model_folder=folder)
    return [*files, out / CARD_NAME]


# what a push writes; the Hub's own initial commit adds .gitattributes, which is no content of anyone's
_REPO_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
_HUB_OWN_FILES = frozenset({".gitattributes"})


def _git_blob_sha1(content: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _differences(info: "ModelInfo", staged: Dict[str, Path]) -> Tuple[List[str], List[str]]:
    """(files of this push the repo holds with other content, files the repo holds that this push does not write)."""
    import hashlib

    remote = {s.rfilename: s for s in info.siblings or [] if s.rfilename not in _HUB_OWN_FILES}
    changed = []
    for name, path in staged.items():
        sibling = remote.get(name)
        if sibling is None:
            continue
        content = path.read_bytes()
        # an LFS file is known by the SHA-256 of its content, any other by its git blob id
        same = (sibling.lfs.sha256 == hashlib.sha256(content).hexdigest() if sibling.lfs is not None
                else sibling.blob_id == _git_blob_sha1(content))
        if not same:
            changed.append(name)
    return changed, sorted(set(remote) - set(staged))


# what to do after a failed push, by HTTP status (None: the connection failed or broke)
_PUSH_ADVICE = {
    None: "check the network and HF_ENDPOINT, then run the same push again (it sees what, if anything, landed)",
    401: "log in with `hf auth login`, set HF_TOKEN or pass --token-file with a token that has write access",
    403: "push under a namespace your token may write to (repo_id in the hub config), or ask the namespace's "
         "owners for write access",
    404: "check repo_id in the hub config and that your token can see the repo",
    409: "run the same push again: it checks what the repo holds now",
    412: "the repo changed while pushing; run the same push again: it checks what the repo holds now",
}
_PUSH_ERRORS = {None: ConnectionError, 401: PermissionError, 403: PermissionError, 404: FileNotFoundError,
                409: FileExistsError, 412: FileExistsError}


@contextlib.contextmanager
def _push_failures(config: "HubConfig", endpoint: str) -> Iterator[None]:
    # every way the Hub can fail a push, as one line naming the cause and what to do next
    try:
        yield
    except Exception as error:
        failure = _hub_failure(error)
        if failure is None:
            if isinstance(error, ValueError) and "\n" in str(error):  # e.g. the Hub's verdict on the card's metadata
                raise ValueError(f"pushing {config.name} to {config.repo_id} failed: "
                                 + "; ".join(line.strip(" -") for line in str(error).splitlines() if line.strip())) from None
            raise
        status, cause = failure
        server_side = status is not None and (status >= 500 or status == 429)
        advice = "retry later" if server_side else _PUSH_ADVICE.get(status, "see the Hub's answer")
        error_type = ConnectionError if server_side else _PUSH_ERRORS.get(status, ValueError)
        landed = ("nothing was committed unless the broken request was the commit itself" if status is None
                  else "nothing was committed")
        raise error_type(f"pushing {config.name} to {config.repo_id} on {endpoint} failed: {cause}; {landed}; "
                         f"{advice}.") from None


@contextlib.contextmanager
def _lfs_uploads() -> Iterator[None]:
    """Uploads in this block go through the Hub's plain LFS protocol, even where ``hf-xet`` is installed
    (huggingface_hub then prefers Xet by itself): LFS is the path tested end to end against the Hub protocol
    (tests/test_hub_http.py), the Hub takes it for every repo, and three files of a small model gain nothing
    from Xet's chunk deduplication."""
    from huggingface_hub import constants

    before = constants.HF_HUB_DISABLE_XET  # read by huggingface_hub at each upload; restored below
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = before


def push_to_hub(
    folder: Union[str, Path],
    hub_config: Union["HubConfig", str, Path],
    token: Optional[str] = None,
    private: bool = False,
    dry_run: bool = False,
    force: bool = False,
    dry_run_dir: Optional[Union[str, Path]] = None,
    api: Optional["HfApi"] = None,
) -> str:
    """Publish the model in ``folder`` as ``hub_config.repo_id``; returns the repo URL (or the dry-run folder).

    One commit on the Hub's ``main`` holding config.json, model.safetensors (LFS) and README.md, made on top of
    the commit that was checked (``parent_commit``), so nothing pushed by someone else in between is overwritten.

    Refuses (``ValueError``, before contacting the Hub) a folder that is not the model the hub config
    measured: other weights (SHA-256), architecture, label names or data config; ``force`` never overrides
    that. Refuses (``FileExistsError``) a repo that holds other content (another version of these files, or
    files that are not this model's) unless ``force``, which overwrites the three files and keeps the others.
    A repo that already holds exactly these files (a second push, or a retry after a push whose answer was
    lost) gets no new commit. After the push, the hub config (its file, when it was read from one) records
    ``published``: the commit and the weights' hash, which is what registers its tag as pretrained weights;
    before that nothing is written locally. Failures are one line (``ConnectionError``: unreachable, a broken
    connection, 5xx; ``PermissionError``: 401/403; ``FileNotFoundError``: 404; ``FileExistsError``: 409/412,
    or other content without ``force``); running the same push again is always safe.

    ``dry_run`` writes exactly what would be uploaded into ``dry_run_dir`` and contacts nobody. The token
    goes to ``HfApi`` only (default: HF_TOKEN or the saved login); it is never printed or written. ``api``:
    an ``HfApi`` of your own (another ``endpoint``, headers); by default one for ``HF_ENDPOINT``.

    Example:
        >>> push_to_hub("outputs/resnet10t_isomaxplus.mnist", "hub_configs/resnet10t_isomaxplus.mnist.json",
        ...             dry_run=True, dry_run_dir="outputs/hub_dry_run")
    """
    from huggingface_hub import CommitOperationAdd

    from .config import load_hub_config, write_hub_config

    config = hub_config if not isinstance(hub_config, (str, Path)) else load_hub_config(hub_config)
    if dry_run:
        if dry_run_dir is None:
            raise ValueError("dry_run needs dry_run_dir: the folder to write the repo content into.")
        prepare_repo_folder(folder, config, dry_run_dir)
        return str(dry_run_dir)
    _check_publishable(folder, config)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging, _lfs_uploads():
        staged = {path.name: path for path in _write_repo_folder(folder, config, staging)}
        with _push_failures(config, api.endpoint):
            repo_url = api.create_repo(config.repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.model_info(config.repo_id, files_metadata=True)
            changed, others = _differences(info, staged)
            held = {s.rfilename for s in info.siblings or []}
            if (changed or others) and not force:
                what = "; ".join(part for part in (
                    f"other versions of {changed}" if changed else "",
                    f"files that are not part of this model: {others}" if others else "") if part)
                raise FileExistsError(f"{config.repo_id} already holds {what}; pass force=True (--force) to overwrite "
                                      f"{list(_REPO_FILES)}{' (the other files stay)' if others else ''}.")
            if changed or not set(staged) <= held:
                commit = api.create_commit(
                    config.repo_id, repo_type="model", parent_commit=info.sha,
                    operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                                for name, path in staged.items()],
                    commit_message=f"Upload {config.name} (timm-isomax)",
                    commit_description=f"Weights SHA-256 (tensors): {config.metrics['weights_sha256']}; measured with "
                                       f"`{config.metrics.get('command')}`.")
                revision = commit.oid
            else:  # already there, byte for byte: its commit is the published one
                revision = info.sha
    # the record that makes the tag loadable (pinned to this commit) once the hub config ships
    config.published = dict(revision=revision, weights_sha256=config.metrics["weights_sha256"])
    if config.path is not None:
        write_hub_config(config)
    return str(repo_url)

"""A run's files on disk and the state it resumes from.

Layout of an output folder: ``config.json`` + ``model.safetensors`` (the model, written at the end),
``training/checkpoint.pt`` (the resumable state, atomic), ``training/log.jsonl`` (one line per epoch),
``training/config.json`` (the run's settings), ``training/evaluation.json`` (the final OOD evaluation),
``training/lock`` (held while a run writes the folder, removed when it ends).
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch
from torch import nn

from ..models.conversion import ConversionReport
from .._io import atomic_write

__all__ = ["check_resumed_settings", "changed_settings", "describe_changes", "TRAINING_DIR", "CHECKPOINT_NAME", "LOG_NAME", "LOCK_NAME", "EVALUATION_NAME", "read_resume_state",
           "resume_state_problem", "save_checkpoint", "resumed_model", "load_resumed_weights", "restore_log"]

TRAINING_DIR = "training"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
LOCK_NAME = "lock"
EVALUATION_NAME = "evaluation.json"

# entries of a training checkpoint that resuming reads, and their types; mid-epoch checkpoints add _MID_EPOCH_ENTRIES
_RESUME_ENTRIES = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int, "global_step": int}
_MID_EPOCH_ENTRIES = {"step_in_epoch": int, "epoch_loss_sum": float, "rng": dict}


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


# Settings a resumed run may change: where and how visibly it runs, not what it trains (``output``: the same
# folder, named by another path, e.g. relative instead of absolute, or moved; ``feature_cache`` and
# ``decoded_cache``: where features and decoded images are kept, keyed by what they depend on, so never stale).
RESUMABLE_CHANGES = ("resume", "progress", "workers", "device", "checkpoint_every", "output", "feature_cache",
                     "decoded_cache")
SETTINGS_NAME = "config.json"


# Settings that name files or folders: the same data named by another path (relative instead of absolute, or
# through a link) trains the same run, so these compare by the place they resolve to where both exist.
PATH_SETTINGS = ("dataset", "ood_datasets", "ood_val_datasets", "checkpoint")


def _same_place(saved: Any, new: Any) -> bool:
    if isinstance(saved, list) and isinstance(new, list):
        return len(saved) == len(new) and all(_same_place(a, b) for a, b in zip(saved, new))
    if saved == new:
        return True
    if not (isinstance(saved, str) and isinstance(new, str)):
        return False
    # a hub id or pypi: entry never exists as a path here, so it only ever matches itself
    return Path(saved).exists() and Path(new).exists() and Path(saved).resolve() == Path(new).resolve()


def changed_settings(saved: Dict[str, Any], settings: Dict[str, Any]) -> List[str]:
    """The names of the settings (``TrainConfig.to_json()`` form) in which two runs train differently:
    every one but :data:`RESUMABLE_CHANGES`, sorted; :data:`PATH_SETTINGS` differ only where they name
    other places."""
    return sorted(k for k in set(saved) | set(settings) if k not in RESUMABLE_CHANGES and saved.get(k) != settings.get(k)
                  and not (k in PATH_SETTINGS and _same_place(saved.get(k), settings.get(k))))


def describe_changes(saved: Dict[str, Any], settings: Dict[str, Any], shown: int = 4,
                     pair: str = "{saved!r} -> {new!r}") -> str:
    """The :func:`changed_settings` of two runs for a one-line error, e.g. ``"epochs: 1 -> 2, lr: 0.01 -> 0.5"``
    (the first ``shown`` of them, then ``...``); ``""`` when they train alike. ``pair`` formats one change
    from ``saved`` and ``new``."""
    changed = changed_settings(saved, settings)
    parts = [f"{key}: " + pair.format(saved=saved.get(key), new=settings.get(key)) for key in changed[:shown]]
    return ", ".join(parts + (["..."] if len(changed) > shown else []))


def check_resumed_settings(training_dir: Path, settings: Dict[str, Any]) -> None:
    """Refuse to resume a run with other settings than it was made with (another dataset, learning rate,
    epoch count, ...): the checkpoint would silently continue under a mix of both, and the record of what
    the model was trained on would be lost. A one-line ``ValueError`` names the differences."""
    path = training_dir / SETTINGS_NAME
    if not path.exists():
        return  # checkpoints of runs older than this record
    saved = json.loads(path.read_text())
    changes = describe_changes(saved, settings)
    if not changes:
        return
    if not (training_dir.parent / "config.json").is_file():
        # interrupted before its model was saved: there is no model folder yet for a new run to start from
        raise ValueError(f"{training_dir.parent} holds a run made with other settings ({changes}), not finished yet; "
                         f"resume it with its own settings (see {path}) and train it further once it has finished, or "
                         f"start over with the new settings in another --output.")
    raise ValueError(f"{training_dir.parent} holds a run made with other settings ({changes}); resume it "
                     f"with its own settings (see {path}), "
                     f"or train it further in a new run that starts from it (--model local-dir:"
                     f"{training_dir.parent} --output NEW: its provenance keeps both runs' settings).")


def read_resume_state(path: Path) -> Dict[str, Any]:
    """The run's checkpoint, checked before anything is built from it; a damaged one is a one-line
    ``ValueError`` saying how to recover (the file is written atomically, so this means outside damage)."""
    advice = f"delete {path} to start the run over, or restore it from a backup"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for damaged files
        raise ValueError(f"cannot read the checkpoint {path} ({type(error).__name__}: "
                         f"{(str(error).splitlines() or [''])[0]}); {advice}.") from None
    problem = resume_state_problem(state)
    if problem:
        raise ValueError(f"the checkpoint {path} is damaged: {problem}; {advice}.")
    return state


def resume_state_problem(state: Any) -> Optional[str]:
    if not isinstance(state, dict):
        return f"it holds {type(state).__name__}, not a dict"
    for key, kind in _RESUME_ENTRIES.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            return f"entry {key!r} must be {'an integer >= 0' if kind is int else 'a dict'}, got {type(value).__name__}"
    if state.get("step_in_epoch", 0) != 0:
        for key, kind in _MID_EPOCH_ENTRIES.items():
            value = state.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
                return f"mid-epoch entry {key!r} must be {kind.__name__}, got {type(value).__name__}"
    if "log" in state and not _is_log(state["log"]):
        return "entry 'log' must be a list of the epochs' log lines (JSON objects)"
    if "architecture" in state:
        if not isinstance(state["architecture"], str) or not isinstance(state.get("pretrained_cfg"), dict):
            return "entries 'architecture' (a string) and 'pretrained_cfg' (a dict) have the wrong types"
        if not timm.is_model(state["architecture"]):
            return f"it names the architecture {state['architecture']!r}, which this timm / timm-isomax does not know"
        if not isinstance(state.get("model_kwargs", {}), dict):
            return "entry 'model_kwargs' must be a dict"
    return None


def _is_log(value: Any) -> bool:
    if not isinstance(value, list) or not all(isinstance(record, dict) for record in value):
        return False
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def resumed_model(state: Dict[str, Any], num_classes: int) -> nn.Module:
    """The run's model rebuilt from the architecture and preprocessing its checkpoint names (the start
    model's weights and conversion are not needed: the checkpoint's weights replace them)."""
    model = timm.create_model(state["architecture"], num_classes=num_classes, **state.get("model_kwargs", {}))
    model.pretrained_cfg = model.default_cfg = dict(state["pretrained_cfg"])
    model.conversion = ConversionReport("resumed", f"weights of epoch {state['epoch']} from the run's checkpoint")
    return model


def load_resumed_weights(model: nn.Module, state_dict: Dict[str, Any], path: Path) -> None:
    """Load the checkpoint's weights; a mismatch (another architecture or class count) is one line, not
    torch's multi-line key listing."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fit {model.pretrained_cfg.get('architecture')} with "
                         f"{model.num_classes} classes ({' '.join(str(error).split())[:300]}); resume with the "
                         f"run's own dataset and settings, or choose another output folder.") from None


def restore_log(path: Path, state: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The log lines of the epochs the checkpoint holds, written back to ``path`` and returned.

    A checkpoint carries its epochs' log lines (``log``), so a kill between the checkpoint and the log
    write loses nothing: the resumed run writes the line again. A checkpoint of an older version has no
    ``log``; then the file's own lines of those epochs are kept and the others cut."""
    written = path.read_text() if path.exists() else None
    if state is not None and "log" in state:
        records = [dict(record) for record in state["log"]]
    else:
        completed_epochs = state["epoch"] if state else 0
        records = [json.loads(line) for line in (written or "").splitlines() if line.strip()]
        records = [record for record in records if record.get("epoch", 0) <= completed_epochs]
    text = "".join(json.dumps(record) + "\n" for record in records)
    if text != (written or ""):  # so a new run without lines writes no empty log
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return records

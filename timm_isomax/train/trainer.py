"""The trainer: one run, from the start model to a Hub-ready output folder. It strings the concerns of this
package together (data, start model, cached features, optimisation, the loop, evaluation, checkpoints)."""
import json
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data import DecodedCache, dataset_for_model, decoded_for_model, load_labelled_splits, load_sample, model_data_config
from ..hub.folder import WEIGHTS_NAME, output_folder_problem, read_config, save_pretrained
from ..hub.provenance import DATA_CONFIG_KEYS, recorded_provenance, weights_sha256
from ..ood.metrics import TPR_LEVEL
from ..ood.selection import margin_note
from ..models.classifier import IsoMaxClassifier
from ..models.whitening import first_conv, whiten_first_conv
from .batches import DecodedTrainBatches
from .config import TrainConfig
from .evaluate import EvalLoaders, evaluate_epoch
from .features import FeatureCache
from ..data import dataset_name
from .._io import write_json
from .final import FinalSets, final_evaluation
from .loop import EpochProgress, train_epoch
from .optim import classifier_of, make_optimization
from .rng import PerImageSeeds, SkipFirst, epoch_seed, rng_states, seed_everything, set_rng_states
from .runtime import Runtime, StopRequest, output_lock, setup_runtime
from .start_model import build_start_model, data_config_overrides, model_kwargs
from .state import (CHECKPOINT_NAME, check_resumed_settings, EVALUATION_NAME, LOG_NAME, TRAINING_DIR, load_resumed_weights, read_resume_state,
                    resumed_model, restore_log, save_checkpoint)

__all__ = ["train"]


def train(cfg: TrainConfig) -> Path:
    """Run the training described by ``cfg``; returns the output folder (a Hub-ready model folder).

    Example:
        >>> train(TrainConfig(model="cifar_resnet20", checkpoint="resnet20-12fca82f.th", head="isomaxplus",
        ...                   key_map="akamaster-cifar-resnet", dataset="../shared/data/cifar10",
        ...                   output="out/cifar_resnet20_isomaxplus", epochs=3))
    """
    output = Path(cfg.output)
    problem = output_folder_problem(output)
    if problem:
        raise FileExistsError(problem)
    runtime = setup_runtime(cfg.device)
    with output_lock(output / TRAINING_DIR, runtime.is_main):
        return _run(cfg, runtime, output)


def _train_transform(cfg: TrainConfig) -> Dict[str, Any]:
    if cfg.augmentation == "rrc":
        return {"augmentation": "rrc", "scale": tuple(cfg.crop_scale)}
    if cfg.augmentation == "crop-flip":
        return {"augmentation": "crop-flip", "padding": cfg.crop_padding}
    return {"augmentation": "none"}


def _outside(module: nn.Module, classifier: nn.Module) -> List[nn.Module]:
    """The largest submodules of ``module`` that do not contain ``classifier`` (the backbone's parts)."""
    parts = []
    for child in module.children():
        if child is classifier:
            continue
        parts.extend(_outside(child, classifier) if any(m is classifier for m in child.modules()) else [child])
    return parts


def _set_backbone_trainable(model: nn.Module, classifier: nn.Module, trainable: bool, fixed: Sequence[int] = ()) -> None:
    # ``fixed``: ids of parameters that never train (a frozen whitened stem), whatever the stage
    head_ids = {id(p) for p in classifier.parameters()}
    for parameter in model.parameters():
        if id(parameter) in fixed:
            parameter.requires_grad_(False)
        elif id(parameter) not in head_ids:
            parameter.requires_grad_(trainable)


@dataclass
class _Run:
    """What the steps of one run share: the settings, where it runs and writes, and what each step prepared."""

    cfg: TrainConfig
    runtime: Runtime
    output: Path
    resume_state: Optional[Dict[str, Any]] = None
    splits: Any = None  # data.LabelledSplits
    model: Optional[nn.Module] = None
    head: str = ""
    classifier: Optional[nn.Module] = None
    data_config: Optional[Dict[str, Any]] = None
    train_set: Any = None
    train_module: Optional[nn.Module] = None
    eval_loaders: Optional[EvalLoaders] = None
    loader_kwargs: Dict[str, Any] = field(default_factory=dict)
    final_images: Tuple[Any, Dict[str, Any], Optional[FeatureCache]] = (None, {}, None)  # val, OOD sets, feature cache
    sampler: Any = None
    updates_per_epoch: int = 0
    log: List[Dict[str, Any]] = field(default_factory=list)  # the epochs' log lines; every checkpoint holds them
    opt: Dict[str, Any] = field(default_factory=dict)
    start: Tuple[int, int, int] = (0, 0, 0)  # epoch, global step, step within that epoch
    fixed: Tuple[int, ...] = ()  # ids of parameters that never train (a frozen whitened stem)

    @property
    def checkpoint_path(self) -> Path:
        return self.output / TRAINING_DIR / CHECKPOINT_NAME

    def say(self, message: str, **print_kwargs: Any) -> None:
        if self.runtime.is_main:
            print(message, **print_kwargs)


def _run(cfg: TrainConfig, runtime: Runtime, output: Path) -> Path:
    """One run, step by step; the order of the steps is the order of the random streams they draw from."""
    run = _Run(cfg, runtime, output)
    _check_resumable(run)
    seed_everything(cfg.seed)
    _load_data_and_start_model(run)
    _prepare_datasets(run)
    _whiten_stem(run)
    _prepare_optimization(run)
    _restore_checkpoint(run)
    _record_settings(run)
    _train_epochs(run)
    if runtime.is_main:
        val_images, ood_images, cache = run.final_images
        final_sets = FinalSets(cfg, run.model, run.splits, run.data_config, val_images, ood_images, cache, runtime.device)
        _finish(cfg, run.model, run.head, run.splits, final_sets, run.classifier, output, run.data_config)
    runtime.barrier()
    return output


def _check_resumable(run: _Run) -> None:
    """A folder with a checkpoint continues only with --resume, and only with the settings it was started with."""
    cfg, checkpoint_path = run.cfg, run.checkpoint_path
    if checkpoint_path.exists() and not cfg.resume:
        raise FileExistsError(f"{run.output} already holds a run (its checkpoint {checkpoint_path}); pass resume=True "
                              f"(--resume) to continue it, or choose another output folder.")
    if cfg.resume and checkpoint_path.exists():
        check_resumed_settings(run.output / TRAINING_DIR, cfg.to_json())
    elif cfg.resume:
        run.say(f"--resume: {run.output} holds no checkpoint yet ({checkpoint_path}); starting a new run there.")


def _load_data_and_start_model(run: _Run) -> None:
    """The checked training / validation splits, and the model to train: converted from the start checkpoint, or
    rebuilt from the run's own checkpoint when it resumes."""
    cfg, checkpoint_path = run.cfg, run.checkpoint_path
    splits = load_labelled_splits(cfg.dataset, cfg.train_split, cfg.val_split, cfg.image_column, cfg.label_column,
                                  cfg.train_limit, cfg.val_limit, cfg.subset, cfg.seed, cfg.val_fraction)
    resume_state = read_resume_state(checkpoint_path) if cfg.resume and checkpoint_path.exists() else None
    # checkpoints older than the "architecture" entry rebuild the start model, then load over it
    model = (resumed_model(resume_state, splits.num_classes) if resume_state and "architecture" in resume_state
             else build_start_model(cfg, splits.num_classes, splits.train)).to(run.runtime.device)
    run.say(f"data: {splits.selection}")
    run.say(f"start model: {model.pretrained_cfg.get('architecture')} ({model.conversion.method}: "
            f"{model.conversion.reason}); {splits.num_classes} classes, {len(splits.train)} training images")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if isinstance(model, IsoMaxClassifier) and cfg.score and model.ood_config["score"] != cfg.score:
        model.update_ood_config(score=cfg.score, threshold=None)
    run.splits, run.resume_state, run.model = splits, resume_state, model
    run.head = model.head_type if isinstance(model, IsoMaxClassifier) else "softmax"
    run.classifier = classifier_of(model)


def _prepare_datasets(run: _Run) -> None:
    """The training set, and the loaders of the per-epoch evaluation, preprocessed for the model; with a frozen
    backbone, its features computed once (or read from the cache) and only the head trained."""
    cfg, runtime, model, classifier = run.cfg, run.runtime, run.model, run.classifier
    data_config = data_config_overrides(cfg, model)
    train_set, val_set = run.splits.for_model(model, _train_transform(cfg), data_config)
    # val_limit rows of each OOD set, picked like the validation rows (class-balanced where it has labels)
    ood_sets = {dataset_name(source): dataset_for_model(
                    model, load_sample(source, cfg.ood_split, cfg.val_limit, cfg.seed, cfg.subset),
                    data_config=data_config, skip_undecodable=True)
                for source in cfg.ood_datasets}
    loader_kwargs = dict(batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=runtime.device.type == "cuda",
                         persistent_workers=False)
    # the image datasets the final evaluation scores (a frozen run's loaders below hold features instead)
    val_images, ood_images, cache = val_set, dict(ood_sets), None
    if cfg.freeze_backbone:  # the head trains on features the backbone computes once (or a cache kept)
        cache = FeatureCache(cfg.feature_cache, model, runtime.device, cfg.amp, cfg.workers,
                             cfg.progress and runtime.is_main)
        as_tensors = lambda dataset, name: torch.utils.data.TensorDataset(*cache.get(dataset, name, 256))  # noqa: E731
        train_set, val_set = as_tensors(train_set, "train"), as_tensors(val_set, "val")
        ood_sets = {name: as_tensors(dataset, name) for name, dataset in ood_sets.items()}
        loader_kwargs.update(num_workers=0, pin_memory=False)  # tensors in memory: workers would only copy them
        run.say(f"frozen backbone: features of {cache.computed} set(s) computed, {cache.loaded} read from "
                f"{cfg.feature_cache or 'memory'}")
        _set_backbone_trainable(model, classifier, False)
        train_module, eval_module = classifier, classifier
    elif cfg.data_on_device:  # decoded once (or read from the cache), indexed and augmented on the device
        train_set, val_loader = _decoded_sets(run, data_config)
        train_module, eval_module = model, model
    else:
        train_set = PerImageSeeds(train_set, cfg.seed)
        train_module, eval_module = model, model
    if not cfg.data_on_device:
        val_loader = torch.utils.data.DataLoader(val_set, shuffle=False, **loader_kwargs)
    run.eval_loaders = EvalLoaders(eval_module, val_loader, {name: torch.utils.data.DataLoader(d, shuffle=False, **loader_kwargs)
                                                             for name, d in ood_sets.items()})
    run.data_config, run.train_set, run.train_module, run.loader_kwargs = data_config, train_set, train_module, loader_kwargs
    run.final_images = (val_images, ood_images, cache)


def _decoded_sets(run: _Run, data_config: Dict[str, Any]) -> Tuple[DecodedTrainBatches, Any]:
    """``--data-on-device``: the training batches and the validation batches from images decoded once, on the
    run's device (the final evaluation still reads the images, as every run does)."""
    cfg, runtime, splits = run.cfg, run.runtime, run.splits
    cache = DecodedCache(cfg.decoded_cache)
    columns = dict(image_column=splits.image_column, label_column=splits.label_column)
    train, val = (decoded_for_model(run.model, rows, cache, data_config, **columns).to(runtime.device)
                  for rows in (splits.train, splits.val))
    augmented = cfg.augmentation == "crop-flip"
    batches = DecodedTrainBatches(train, cfg.batch_size, cfg.seed, cfg.crop_padding if augmented else 0,
                                  cfg.flip if augmented else "none", cfg.pad_mode, runtime.rank, runtime.world_size)
    run.say(f"decoded images: {cache.decoded} set(s) decoded, {cache.loaded} read from {cfg.decoded_cache or 'memory'}"
            f" ({runtime.device})")
    return batches, val.batches(cfg.batch_size)


# Training images whose patches set the whitened first layer (airbench's count).
_WHITENING_IMAGES = 5000


def _whiten_stem(run: _Run) -> None:
    """``--whiten-stem``: the first convolution from the training patches' whitening (a new run only: a resumed one
    has its weights), frozen with ``frozen`` before the optimizer is made, so that it holds no state for it."""
    cfg, splits = run.cfg, run.splits
    if cfg.whiten_stem == "none":
        return
    if run.resume_state is None:
        rows = splits.train.select(range(min(_WHITENING_IMAGES, len(splits.train))))
        decoded = decoded_for_model(run.model, rows, None, run.data_config, splits.image_column, splits.label_column)
        conv = whiten_first_conv(run.model, decoded.normalize(decoded.images))
        run.say(f"whitened first layer: {conv.out_channels} filters from the patches of {len(rows)} training images")
    if cfg.whiten_stem == "frozen":
        conv = first_conv(run.model)
        run.fixed = tuple(id(p) for p in conv.parameters())
        _set_backbone_trainable(run.model, run.classifier, True, run.fixed)


def _prepare_optimization(run: _Run) -> None:
    """The sampler (one shard per process), the updates per epoch, and the optimizer, schedule, scaler and loss."""
    cfg, runtime, train_set = run.cfg, run.runtime, run.train_set
    run.sampler = (torch.utils.data.distributed.DistributedSampler(train_set, runtime.world_size, runtime.rank,
                                                                   shuffle=True, seed=cfg.seed, drop_last=True)
                   if runtime.world_size > 1 else None)
    if isinstance(train_set, DecodedTrainBatches):
        run.sampler, run.updates_per_epoch = None, train_set.steps_per_epoch
        images = len(train_set.decoded)
    else:
        run.updates_per_epoch = (len(run.sampler) if run.sampler else len(train_set)) // cfg.batch_size
        images = len(train_set)
    if run.updates_per_epoch < 1:
        raise ValueError(f"{images} training images make no full batch of {cfg.batch_size}; lower batch_size.")
    run.opt = make_optimization(cfg, run.train_module, run.classifier, run.head, run.updates_per_epoch,
                                run.splits.num_classes, runtime.device)


def _restore_checkpoint(run: _Run) -> None:
    """A resumed run's weights, optimizer, schedule and scaler, and where in which epoch it stopped."""
    state = run.resume_state
    if not state:
        return
    load_resumed_weights(run.model, state["model"], run.checkpoint_path)
    for name in ("optimizer", "scheduler", "scaler"):
        run.opt[name].load_state_dict(state[name])
    run.start = (state["epoch"], state["global_step"], state.get("step_in_epoch", 0))
    epoch, _, step = run.start
    run.say(f"resumed from {run.checkpoint_path} after epoch {epoch}" + (f", step {step} of epoch {epoch + 1}" if step else ""))


def _record_settings(run: _Run) -> None:
    """``training/config.json`` (the settings a resume is checked against), and the log of the epochs the
    checkpoint holds."""
    if run.runtime.is_main:
        training_dir = run.output / TRAINING_DIR
        training_dir.mkdir(parents=True, exist_ok=True)
        (training_dir / "config.json").write_text(json.dumps(run.cfg.to_json(), indent=2))
        run.log = restore_log(training_dir / LOG_NAME, run.resume_state)


def _training_state(run: _Run, epoch: int, step: int, step_in_epoch: int = 0,
                    epoch_loss_sum: float = 0.0) -> Dict[str, Any]:
    """What a checkpoint holds: everything a resumed run needs to continue bit for bit."""
    model, opt = run.model, run.opt
    state = dict(model=model.state_dict(), optimizer=opt["optimizer"].state_dict(),
                 scheduler=opt["scheduler"].state_dict(), scaler=opt["scaler"].state_dict(), epoch=epoch,
                 global_step=step, config=run.cfg.to_json(), architecture=model.pretrained_cfg["architecture"],
                 pretrained_cfg=dict(model.pretrained_cfg), model_kwargs=model_kwargs(run.cfg), log=list(run.log))
    if step_in_epoch:
        state.update(step_in_epoch=step_in_epoch, epoch_loss_sum=epoch_loss_sum, rng=rng_states())
    return state


def _train_epochs(run: _Run) -> None:
    """The epochs from where the run stands: each trains, evaluates on validation (and the OOD sets every
    ``ood_eval_every`` epochs), checkpoints, then logs. A stop request (SIGINT / SIGTERM) saves and ends the run."""
    cfg, runtime, model, classifier, opt = run.cfg, run.runtime, run.model, run.classifier, run.opt
    optimizer, scheduler, scaler = opt["optimizer"], opt["scheduler"], opt["scaler"]
    checkpoint_path = run.checkpoint_path
    start_epoch, global_step, start_step = run.start

    def save_mid_epoch(epoch: int, step: int, step_in_epoch: int, epoch_loss_sum: float) -> None:
        if runtime.is_main:
            save_checkpoint(checkpoint_path, _training_state(run, epoch, step, step_in_epoch, epoch_loss_sum))

    wrapped, stage = run.train_module, None
    stop = StopRequest(enabled=runtime.world_size == 1)
    try:
        with stop:
            for epoch in range(start_epoch, cfg.epochs):
                seed = epoch_seed(cfg.seed, epoch)  # every random stream of the epoch starts from it
                seed_everything(seed)
                skip_steps = start_step if epoch == start_epoch else 0
                if skip_steps:  # the generators as they were when the mid-epoch checkpoint was written
                    set_rng_states(run.resume_state["rng"])
                head_only = cfg.freeze_backbone or epoch < cfg.head_epochs
                if stage != head_only:  # (re)wrap for DDP whenever the set of trained parameters changes
                    stage = head_only
                    wrapped = _trainable_module(run, head_only)
                loader = _epoch_loader(run, epoch, seed, skip_steps)
                progress = EpochProgress(epoch, skip_steps, run.resume_state.get("epoch_loss_sum", 0.0)
                                         if skip_steps else 0.0, global_step)
                frozen = [] if not head_only or cfg.freeze_backbone else _outside(model, classifier)
                start = time.perf_counter()
                train_loss = train_epoch(wrapped, loader, opt["loss_fn"], optimizer, scheduler, scaler,
                                         opt["batch_transform"], runtime, cfg, progress, stop, save_mid_epoch, frozen,
                                         " (head)" if head_only else "")
                global_step = progress.global_step
                scheduler.step(epoch + 1)
                seconds = time.perf_counter() - start
                if runtime.is_main:
                    _end_epoch(run, epoch, global_step, _epoch_record(run, epoch, head_only, train_loss, seconds, skip_steps))
                runtime.barrier()
                if stop.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        run.say(f"interrupted: progress is saved in {checkpoint_path}; continue with --resume.", flush=True)
        raise


def _trainable_module(run: _Run, head_only: bool) -> nn.Module:
    """The module the epoch trains, with the backbone frozen or not; wrapped for DDP across processes."""
    cfg, runtime = run.cfg, run.runtime
    if not cfg.freeze_backbone:
        _set_backbone_trainable(run.model, run.classifier, not head_only, run.fixed)
    if runtime.world_size > 1:
        return nn.parallel.DistributedDataParallel(
            run.train_module, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    return run.train_module


def _epoch_loader(run: _Run, epoch: int, seed: int, skip_steps: int) -> torch.utils.data.DataLoader:
    """The epoch's training batches: shuffled from the epoch's seed (one shard per process), without the
    ``skip_steps`` batches a resumed epoch already trained on."""
    cfg, train_set, sampler = run.cfg, run.train_set, run.sampler
    if isinstance(train_set, DecodedTrainBatches):  # its own seeded order and augmentation, batch by batch
        train_set.epoch, train_set.skip = epoch, skip_steps
        return train_set
    if isinstance(train_set, PerImageSeeds):
        train_set.epoch = epoch
    generator = torch.Generator().manual_seed(seed)
    if sampler:
        sampler.set_epoch(epoch)
    epoch_sampler = sampler if sampler is not None else torch.utils.data.RandomSampler(train_set, generator=generator)
    if skip_steps:
        epoch_sampler = SkipFirst(epoch_sampler, skip_steps * cfg.batch_size)
    return torch.utils.data.DataLoader(train_set, sampler=epoch_sampler, drop_last=True, generator=generator,
                                       **run.loader_kwargs)


def _end_epoch(run: _Run, epoch: int, global_step: int, record: Dict[str, Any]) -> None:
    """Checkpoint first, then the log line; the checkpoint holds the line too, so a kill between them loses
    nothing (a resume writes the line again)."""
    run.log.append(record)
    save_checkpoint(run.checkpoint_path, _training_state(run, epoch + 1, global_step))
    with open(run.output / TRAINING_DIR / LOG_NAME, "a") as log:
        log.write(json.dumps(record) + "\n")
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))


def _epoch_record(run: _Run, epoch: int, head_only: bool, train_loss: float, seconds: float,
                  skip_steps: int) -> Dict[str, Any]:
    """The log line of an epoch, with its evaluation (the final evaluation scores the OOD sets after the last epoch
    with every score)."""
    cfg, runtime, model = run.cfg, run.runtime, run.model
    with_ood = bool(run.eval_loaders.ood) and cfg.ood_eval_every > 0 and (epoch + 1) % cfg.ood_eval_every == 0
    evaluation, _ = evaluate_epoch(run.eval_loaders, cfg.ood_score, runtime.device, cfg.amp, with_ood)
    trained_images = (run.updates_per_epoch - skip_steps) * cfg.batch_size * runtime.world_size
    return dict(epoch=epoch + 1, stage="head" if head_only else "all", train_loss=train_loss,
                lr=run.opt["optimizer"].param_groups[0]["lr"], seconds=seconds,
                images_per_second=trained_images / seconds,
                distance_scale=model.head.distance_scale.abs().item()
                if hasattr(getattr(model, "head", None), "distance_scale") else None, **evaluation)


def _finish(cfg: TrainConfig, model: nn.Module, head: str, splits, final_sets: FinalSets, classifier: nn.Module,
            output: Path, data_config: Dict[str, Any]) -> None:
    """The final evaluation (every score; the OOD score chosen on validation unless ``score`` is set; the feature
    bank), the deployment threshold (IsoMax models: the chosen score's, accepting 95% of the validation images, saved
    in config.json), ``training/evaluation.json`` and the model folder."""
    evaluation, threshold = final_evaluation(final_sets, head, classifier, output)
    evaluation.update(threshold=threshold, tpr=TPR_LEVEL, fitted_on=splits.fitted_on, ood_split=cfg.ood_split)
    if isinstance(model, IsoMaxClassifier):
        model.update_ood_config(score=evaluation["score"], threshold=threshold, tpr=TPR_LEVEL, fitted_on=splits.fitted_on,
                                id_scores=evaluation["id_scores"])
    write_json(output / TRAINING_DIR / EVALUATION_NAME, evaluation)
    chosen = evaluation["selection"]["aurocs"].get(evaluation["score"], {})
    sureness = margin_note(evaluation["selection"]) if evaluation["chosen_by"] == "validation" else ""
    print(f"OOD score: {evaluation['score']} ({evaluation['chosen_by']}; validation AUROC "
          + ", ".join(f"{name} {100 * value:.2f}" for name, value in chosen.items()) + (f"; {sureness}" if sureness else "")
          + ")")
    if evaluation["metrics"] and any(evaluation["metrics"].values()):
        print(f"final evaluation on {evaluation['id_split']} (AUROC %, ID positive): " + ", ".join(
            f"{score} {name} {100 * values['auroc']:.2f}" for score, per_set in evaluation["metrics"].items()
            for name, values in per_set.items()) + f"; accuracy {100 * evaluation['accuracy']:.2f}%")
    save_pretrained(model, output, label_names=splits.label_names, data_config=_export_data_config(model, data_config),
                    provenance=dict(settings=cfg.to_json(), data=splits.identity(), **_started_from(cfg)))
    print(f"saved the model to {output} (timm.create_model('local-dir:{output}', pretrained=True))")


def _started_from(cfg: TrainConfig) -> Dict[str, Any]:
    # a run that continues a saved model (--model local-dir:FOLDER) keeps that model's own provenance, so a
    # chain of runs records every run's settings
    if not cfg.model.startswith("local-dir:"):
        return {}
    folder = Path(cfg.model[len("local-dir:"):])
    saved = read_config(folder)
    return {"started_from": dict(model=cfg.model, weights_sha256=weights_sha256(folder / WEIGHTS_NAME),
                                 provenance={k: v for k, v in recorded_provenance(saved).items() if k != "weights_sha256"})}


def _export_data_config(model: nn.Module, overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    # the preprocessing the model was trained with: its own, with the overrides (size, mean, std) if any
    config = model_data_config(model, overrides)
    return {k: config[k] for k in DATA_CONFIG_KEYS}

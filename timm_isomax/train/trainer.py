"""The trainer: one run, from the start model to a Hub-ready output folder. It strings the concerns of this
package together (data, start model, cached features, optimisation, the loop, evaluation, checkpoints)."""
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..data import dataset_for_model, load_labelled_splits, load_sample, model_data_config
from ..hub import WEIGHTS_NAME, output_folder_problem, read_config, save_pretrained
from ..provenance import recorded_provenance, weights_sha256
from ..metrics import TPR_LEVEL
from ..model import IsoMaxClassifier
from .config import TrainConfig
from .evaluate import EvalLoaders, evaluate_epoch
from .features import FeatureCache
from ..views import dataset_name
from .final import FinalSets, final_evaluation
from .loop import EpochProgress, train_epoch
from .optim import classifier_of, make_optimization
from .rng import PerImageSeeds, SkipFirst, epoch_seed, rng_states, seed_everything, set_rng_states
from .runtime import Runtime, StopRequest, output_lock, setup_runtime
from .start_model import build_start_model, data_config_overrides, model_kwargs
from .state import (CHECKPOINT_NAME, check_resumed_settings, EVALUATION_NAME, LOG_NAME, TRAINING_DIR, load_resumed_weights, read_resume_state,
                    resumed_model, save_checkpoint, truncate_log, write_json)

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


def _set_backbone_trainable(model: nn.Module, classifier: nn.Module, trainable: bool) -> None:
    head_ids = {id(p) for p in classifier.parameters()}
    for parameter in model.parameters():
        if id(parameter) not in head_ids:
            parameter.requires_grad_(trainable)


def _run(cfg: TrainConfig, runtime: Runtime, output: Path) -> Path:  # noqa: C901 (the run, step by step)
    training_dir = output / TRAINING_DIR
    checkpoint_path = training_dir / CHECKPOINT_NAME
    if checkpoint_path.exists() and not cfg.resume:
        raise FileExistsError(f"{output} already holds a run (its checkpoint {checkpoint_path}); pass resume=True "
                              f"(--resume) to continue it, or choose another output folder.")
    if cfg.resume and checkpoint_path.exists():
        check_resumed_settings(training_dir, cfg.to_json())
    elif cfg.resume and runtime.is_main:
        print(f"--resume: {output} holds no checkpoint yet ({checkpoint_path}); starting a new run there.")
    seed_everything(cfg.seed)
    splits = load_labelled_splits(cfg.dataset, cfg.train_split, cfg.val_split, cfg.image_column, cfg.label_column,
                                  cfg.train_limit, cfg.val_limit, cfg.subset, cfg.seed, cfg.val_fraction)
    resume_state = read_resume_state(checkpoint_path) if cfg.resume and checkpoint_path.exists() else None
    # checkpoints older than the "architecture" entry rebuild the start model, then load over it
    model = (resumed_model(resume_state, splits.num_classes) if resume_state and "architecture" in resume_state
             else build_start_model(cfg, splits.num_classes, splits.train)).to(runtime.device)
    head = model.head_type if isinstance(model, IsoMaxClassifier) else "softmax"
    if runtime.is_main:
        print(f"data: {splits.selection}")
        print(f"start model: {model.pretrained_cfg.get('architecture')} ({model.conversion.method}: "
              f"{model.conversion.reason}); {splits.num_classes} classes, {len(splits.train)} training images")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if isinstance(model, IsoMaxClassifier) and cfg.score and model.ood_config["score"] != cfg.score:
        model.update_ood_config(score=cfg.score, threshold=None)
    classifier = classifier_of(model)

    data_config = data_config_overrides(cfg, model)
    train_set, val_set = splits.for_model(model, _train_transform(cfg), data_config)
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
        if runtime.is_main:
            print(f"frozen backbone: features of {cache.computed} set(s) computed, {cache.loaded} read from "
                  f"{cfg.feature_cache or 'memory'}")
        _set_backbone_trainable(model, classifier, False)
        train_module, eval_module = classifier, classifier
    else:
        train_set = PerImageSeeds(train_set, cfg.seed)
        train_module, eval_module = model, model
    eval_loaders = EvalLoaders(eval_module, torch.utils.data.DataLoader(val_set, shuffle=False, **loader_kwargs),
                               {name: torch.utils.data.DataLoader(d, shuffle=False, **loader_kwargs)
                                for name, d in ood_sets.items()})

    sampler = (torch.utils.data.distributed.DistributedSampler(train_set, runtime.world_size, runtime.rank,
                                                               shuffle=True, seed=cfg.seed, drop_last=True)
               if runtime.world_size > 1 else None)
    updates_per_epoch = (len(sampler) if sampler else len(train_set)) // cfg.batch_size
    if updates_per_epoch < 1:
        raise ValueError(f"{len(train_set)} training images make no full batch of {cfg.batch_size}; lower batch_size.")
    opt = make_optimization(cfg, train_module, classifier, head, updates_per_epoch, splits.num_classes, runtime.device)
    optimizer, scheduler, scaler = opt["optimizer"], opt["scheduler"], opt["scaler"]

    start_epoch, global_step, start_step = 0, 0, 0
    if resume_state:
        load_resumed_weights(model, resume_state["model"], checkpoint_path)
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        start_epoch, global_step = resume_state["epoch"], resume_state["global_step"]
        start_step = resume_state.get("step_in_epoch", 0)
        if runtime.is_main:
            print(f"resumed from {checkpoint_path} after epoch {start_epoch}"
                  + (f", step {start_step} of epoch {start_epoch + 1}" if start_step else ""))
    if runtime.is_main:
        training_dir.mkdir(parents=True, exist_ok=True)
        (training_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
        truncate_log(training_dir / LOG_NAME, start_epoch)

    def training_state(epoch: int, step: int, step_in_epoch: int = 0, epoch_loss_sum: float = 0.0) -> Dict[str, Any]:
        state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     scaler=scaler.state_dict(), epoch=epoch, global_step=step, config=cfg.to_json(),
                     architecture=model.pretrained_cfg["architecture"], pretrained_cfg=dict(model.pretrained_cfg),
                     model_kwargs=model_kwargs(cfg))
        if step_in_epoch:
            state.update(step_in_epoch=step_in_epoch, epoch_loss_sum=epoch_loss_sum, rng=rng_states())
        return state

    def save_mid_epoch(epoch: int, step: int, step_in_epoch: int, epoch_loss_sum: float) -> None:
        if runtime.is_main:
            save_checkpoint(checkpoint_path, training_state(epoch, step, step_in_epoch, epoch_loss_sum))

    wrapped, stage = train_module, None
    stop = StopRequest(enabled=runtime.world_size == 1)
    try:
        with stop:
            for epoch in range(start_epoch, cfg.epochs):
                seed = epoch_seed(cfg.seed, epoch)  # every random stream of the epoch starts from it
                seed_everything(seed)
                skip_steps = start_step if epoch == start_epoch else 0
                if skip_steps:  # the generators as they were when the mid-epoch checkpoint was written
                    set_rng_states(resume_state["rng"])
                head_only = cfg.freeze_backbone or epoch < cfg.head_epochs
                if stage != head_only:  # (re)wrap for DDP whenever the set of trained parameters changes
                    stage = head_only
                    if not cfg.freeze_backbone:
                        _set_backbone_trainable(model, classifier, not head_only)
                    wrapped = (nn.parallel.DistributedDataParallel(
                        train_module, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
                        if runtime.world_size > 1 else train_module)
                if isinstance(train_set, PerImageSeeds):
                    train_set.epoch = epoch
                generator = torch.Generator().manual_seed(seed)
                if sampler:
                    sampler.set_epoch(epoch)
                epoch_sampler = (sampler if sampler is not None
                                 else torch.utils.data.RandomSampler(train_set, generator=generator))
                if skip_steps:
                    epoch_sampler = SkipFirst(epoch_sampler, skip_steps * cfg.batch_size)
                loader = torch.utils.data.DataLoader(train_set, sampler=epoch_sampler, drop_last=True,
                                                     generator=generator, **loader_kwargs)
                progress = EpochProgress(epoch, skip_steps, resume_state.get("epoch_loss_sum", 0.0)
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
                    # the final evaluation scores the OOD sets after the last epoch with every score
                    with_ood = bool(eval_loaders.ood) and cfg.ood_eval_every > 0 and (epoch + 1) % cfg.ood_eval_every == 0
                    evaluation, _ = evaluate_epoch(eval_loaders, cfg.ood_score, runtime.device, cfg.amp, with_ood)
                    trained_images = (updates_per_epoch - skip_steps) * cfg.batch_size * runtime.world_size
                    record = dict(epoch=epoch + 1, stage="head" if head_only else "all", train_loss=train_loss,
                                  lr=optimizer.param_groups[0]["lr"], seconds=seconds,
                                  images_per_second=trained_images / seconds,
                                  distance_scale=model.head.distance_scale.abs().item()
                                  if hasattr(getattr(model, "head", None), "distance_scale") else None, **evaluation)
                    # checkpoint first, then the log line: a kill between them loses a log line, never an epoch
                    save_checkpoint(checkpoint_path, training_state(epoch + 1, global_step))
                    with open(training_dir / LOG_NAME, "a") as log:
                        log.write(json.dumps(record) + "\n")
                    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
                runtime.barrier()
                if stop.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if runtime.is_main:
            print(f"interrupted: progress is saved in {checkpoint_path}; continue with --resume.", flush=True)
        raise
    if runtime.is_main:
        final_sets = FinalSets(cfg, model, splits, data_config, val_images, ood_images, cache, runtime.device)
        _finish(cfg, model, head, splits, final_sets, classifier, output, data_config)
    runtime.barrier()
    return output


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
    print(f"OOD score: {evaluation['score']} ({evaluation['chosen_by']}; validation AUROC "
          + ", ".join(f"{name} {100 * value:.2f}" for name, value in chosen.items()) + ")")
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
    return {k: config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")}

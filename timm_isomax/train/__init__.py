"""The trainer behind ``finetune`` and the benchmarks: one loop for every head (``softmax``, ``isomax``,
``isomaxplus``, ``dismax``), from a SoftMax checkpoint, a saved IsoMax model or random weights, to a Hub-ready folder.

One module per concern:

* :mod:`.config`: every setting (:class:`TrainConfig`), checked before anything loads;
* :mod:`.start_model`: the model a run starts from (kept SoftMax, converted, loaded, or fresh);
* :mod:`.features`: frozen-backbone runs, whose features are computed once and cached;
* :mod:`.batches`: training batches from images decoded once, augmented as tensors on the device;
* :mod:`.optim`: loss per head, timm's optimizer / scheduler factories, mixup and DisMax's FPR, AMP scaling;
* :mod:`.loop`: the training loop (one epoch, or the rest of an interrupted one);
* :mod:`.evaluate`: per-epoch validation and OOD AUROC, the final evaluation with every score;
* :mod:`.final`: the final evaluation (every score, the choice on validation, test-time augmentation);
* :mod:`.rng`: exact resume (per-epoch seeds, per-image augmentation seeds, generator states);
* :mod:`.state`: the output folder's files and the checkpoint a run resumes from;
* :mod:`.runtime`: one process or DDP ranks, the output folder's lock, stopping on SIGINT / SIGTERM;
* :mod:`.trainer`: :func:`train`, which strings them together.

Example:
    >>> from timm_isomax.train import TrainConfig, train
    >>> train(TrainConfig(model="resnet18.a1_in1k", head="softmax", dataset="../shared/data/cifar10",
    ...                   img_size=64, epochs=3, output="out/r18_softmax"))
"""
from .config import DEFAULT_SCORES, HEAD_SCORES, HEADS, TrainConfig
from .features import FeatureCache, frozen_parts
from .start_model import build_start_model
from .state import CHECKPOINT_NAME, EVALUATION_NAME, LOG_NAME, TRAINING_DIR, read_resume_state
from .trainer import train

__all__ = ["TrainConfig", "train", "build_start_model", "HEADS", "DEFAULT_SCORES", "HEAD_SCORES", "FeatureCache",
           "frozen_parts", "CHECKPOINT_NAME", "LOG_NAME", "TRAINING_DIR", "EVALUATION_NAME", "read_resume_state"]

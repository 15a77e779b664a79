"""Two small MNIST models (IsoMax+ and SoftMax resnet10t, 1x32x32), trained once per test session on real
data and saved as model folders, for the evaluation, threshold and calibration tests."""
import atexit
import contextlib
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator

import torch

import timm_isomax  # noqa: F401  (registers resnet10t_isomaxplus)
from timm_isomax.train import TrainConfig, train

TRAIN_IMAGES = 3000
# grey 32x32, bilinear, [-1, 1]: recorded in the folders' config.json, so evaluation reproduces it
RECIPE = dict(model="resnet10t", from_scratch=True, in_chans=1, img_size=32, mean=(0.5,), std=(0.5,),
              interpolation="bilinear", augmentation="none", train_limit=TRAIN_IMAGES, val_limit=500, epochs=1,
              batch_size=32, lr=0.05, seed=0, workers=0, progress=False)
LABEL_NAMES = [str(i) for i in range(10)]
# The head's own score, set explicitly: the trainer would otherwise choose one on validation (train/final.py), and
# the evaluation, threshold and calibration tests are about these scores.
SCORES = {"softmax": "msp", "isomaxplus": "mds"}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: the ops of a 32 px resnet10t are too small for two threads to pay, and
    on a busy 2-core machine two spinning threads are 10x slower (measured 0.1 s vs 1-2 s per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def trained_mnist_models(shared_data: Path) -> Dict[str, Path]:
    """``{"softmax": folder, "isomaxplus": folder}``, trained by the trainer on the first TRAIN_IMAGES MNIST
    training images (the same recipe for both heads, each with its own score, SCORES)."""
    root = Path(tempfile.mkdtemp(prefix="timm_isomax_mnist_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    folders = {}
    for head in ("softmax", "isomaxplus"):
        with one_thread():
            folders[head] = train(TrainConfig(**RECIPE, head=head, score=SCORES[head], dataset=str(shared_data / "mnist"),
                                              output=str(root / f"mnist_{head}")))
        _clear_threshold(folders[head] / "config.json")
    return folders


def _clear_threshold(config_path: Path) -> None:
    # the trainer fits a deployment threshold; the threshold and calibration tests start from a model without
    # one (calibrating a thresholded model is refused, by design)
    config = json.loads(config_path.read_text())
    for block in (config.get("isomax"), config.get("model_args", {}).get("ood_config")):
        if block:
            block.update(threshold=None, tpr=None, fitted_on=None)
    config_path.write_text(json.dumps(config, indent=2))

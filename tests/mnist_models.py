"""Two small MNIST models (IsoMax+ and SoftMax resnet10t, 1x32x32), trained once per test session on real
data and saved as model folders, for the evaluation, threshold and calibration tests."""
import atexit
import contextlib
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator

import timm
import torch

import timm_isomax  # noqa: F401  (registers resnet10t_isomaxplus)
from timm_isomax.experiment import HEAD_KINDS, Recipe, build_protocol, train_classifier
from timm_isomax.hub import save_pretrained

TRAIN_IMAGES = 3000
# measured (seed 0..3): IsoMax+ accuracy 0.90-0.95 on MNIST test[:500], MDS AUROC 0.88-0.93 (Fashion-MNIST)
# and 0.91-0.95 (notMNIST); seed 0: 0.942, 0.929, 0.939.
RECIPE = Recipe(epochs=1, batch_size=32, lr=0.05, seed=0)
# build_protocol's preprocessing (grey 32x32, bilinear, [-1, 1]), recorded so evaluation reproduces it
DATA_CONFIG = dict(input_size=(1, 32, 32), mean=(0.5,), std=(0.5,), crop_pct=1.0, interpolation="bilinear")
LABEL_NAMES = [str(i) for i in range(10)]


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
    """``{"softmax": folder, "isomaxplus": folder}``, trained on the first TRAIN_IMAGES MNIST training images."""
    protocol = build_protocol(str(shared_data / "mnist"), [], train_limit=TRAIN_IMAGES, test_limit=1)
    root = Path(tempfile.mkdtemp(prefix="timm_isomax_mnist_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    folders = {}
    for head in ("softmax", "isomaxplus"):
        kind = HEAD_KINDS[head]
        torch.manual_seed(RECIPE.seed)
        model = timm.create_model("resnet10t" + kind.suffix, num_classes=10, in_chans=1)
        with one_thread():
            train_classifier(model, protocol.train_set, kind.make_loss(), RECIPE)
        folders[head] = save_pretrained(model, root / f"mnist_{head}", label_names=LABEL_NAMES, data_config=DATA_CONFIG)
    return folders

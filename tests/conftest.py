import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per xdist worker (and per subprocess a test starts, which inherits the environment):
    # `-n 2` on 2 cores with torch's default of one thread per core would oversubscribe them, and spinning
    # OpenMP threads make that far slower than the sum of its parts. Set before any test module imports torch.
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

SHARED_DATA = Path(os.environ.get("TIMM_ISOMAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real datasets); tests that need it skip where it is absent."""
    if not (SHARED_DATA / "mnist" / "test.parquet").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set TIMM_ISOMAX_SHARED_DATA)")
    return SHARED_DATA


REPO = Path(__file__).resolve().parents[1]
# the command line as a user runs it: `timm-isomax finetune ...` == `python -m timm_isomax finetune ...`
FINETUNE = ["-m", "timm_isomax", "finetune"]


def weights(folder) -> Dict[str, Any]:
    """The tensors of a model folder's model.safetensors."""
    import safetensors.torch

    return safetensors.torch.load_file(str(Path(folder) / "model.safetensors"))


def cifar_resnet20_args(shared_data: Path) -> List[str]:
    """The finetune arguments of the real CIFAR-10 ResNet-20 SoftMax checkpoint on CIFAR-10 (the tests' start
    model and data); each test adds its own limits and schedule."""
    return ["--model", "cifar_resnet20",
            "--checkpoint", str(shared_data / "checkpoints/cifar10_resnet_akamaster/resnet20-12fca82f.th"),
            "--key-map", "akamaster-cifar-resnet", "--dataset", str(shared_data / "cifar10")]


def assert_one_line_error(stderr: str, message: str) -> str:
    """Check what a command printed for a refused input: one line, ``error: ...``, containing ``message``;
    returns the line."""
    line = stderr.strip()
    assert message in line, stderr[-1500:]
    assert "\n" not in line and line.startswith("error: "), stderr[-1500:]
    return line


AKAMASTER_RESNET20 = "checkpoints/cifar10_resnet_akamaster/resnet20-12fca82f.th"


def prelogit_features(model, dataset: str, split: str, limit: int):
    """(features, labels) of ``model``'s pre-logits on ``limit`` class-balanced images of a dataset split, in eval
    mode, preprocessed with the model's own data config (grey sets read as 3-channel for an RGB model)."""
    import torch

    from timm_isomax.data import dataset_for_model

    data = dataset_for_model(model, dataset, split=split, limit=limit)
    features, labels = [], []
    with torch.no_grad():
        for images, targets in torch.utils.data.DataLoader(data, batch_size=250):
            features.append(model.forward_head(model.forward_features(images), pre_logits=True))
            labels.append(targets)
    return torch.cat(features), torch.cat(labels)

"""Every user command runs end to end from the command line: convert and reproduce here (finetune, evaluate,
push and benchmark have their own test files)."""
import json
import subprocess
import sys

import pytest
import timm

from timm_isomax.cli import convert
from timm_isomax.provenance import recorded_provenance, weights_sha256

from .conftest import REPO

CLI = [sys.executable, "-m", "timm_isomax"]


def _top1(stdout: str, model: str) -> float:
    # the "  <model> (...)  top-1 NN.NN%" lines convert prints for the source and its conversion
    line = next(line for line in stdout.splitlines() if line.strip().startswith(model) and "top-1" in line)
    return float(line.split("top-1")[1].strip().rstrip("%"))


@pytest.mark.slow
@pytest.mark.parametrize("head", ["isomaxplus", "dismax"])
def test_convert_evaluates_the_source_beside_its_conversion_and_saves_it(head, shared_data, tmp_path):
    result = subprocess.run([*CLI, "convert", "--model", "cifar_resnet20", "--key-map", "akamaster-cifar-resnet",
                             "--checkpoint", str(shared_data / "checkpoints/cifar10_resnet_akamaster/resnet20-12fca82f.th"),
                             "--dataset", str(shared_data / "cifar10"), "--ood-dataset", str(shared_data / "notmnist"),
                             "--limit", "300", "--workers", "0", "--head", head, "--output", str(tmp_path / "converted")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"cifar_resnet20_{head} (zero-shot)" in result.stdout and "notmnist" in result.stdout
    # the conversion is the source's cosine classifier; the akamaster ResNet's bias and row norms are near
    # uniform, so it keeps the source's accuracy within a few images of 300
    source, converted = _top1(result.stdout, "cifar_resnet20 (SoftMax)"), _top1(result.stdout, f"cifar_resnet20_{head}")
    assert source > 70 and abs(source - converted) < 3, (source, converted)
    model = timm.create_model(f"local-dir:{tmp_path / 'converted'}", pretrained=True)
    assert model.pretrained_cfg["architecture"] == f"cifar_resnet20_{head}" and model.num_classes == 10


def test_convert_refuses_isomax_with_the_reason(capsys):
    assert convert.main(["--model", "resnet18", "--dataset", "d", "--head", "isomax"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "depend on the feature norms" in error and "finetune --head isomax" in error


@pytest.mark.slow
def test_reproduce_trains_with_the_recorded_recipe_and_records_the_numbers(tmp_path):
    config = json.loads((REPO / "hub_configs" / "resnet10t_isomaxplus.mnist.json").read_text())
    args = config["finetune_args"]
    for flag, value in (("--epochs", "2"), ("--train-limit", "1024"), ("--val-limit", "200"),
                        ("--output", str(tmp_path / "model"))):
        args[args.index(flag) + 1] = value
    args.append("--amp")  # the recipe runs with bf16 autocast on the CPU: that path, end to end
    # one seed: the seed choice has its own test (tests/test_reproduce_check.py)
    config.update(source_checkpoint=str(tmp_path / "model"), finetune_args=args, metrics=None, seeds=None,
                  evaluation=dict(limit=200, batch_size=128))
    path = tmp_path / "resnet10t_isomaxplus.mnist.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([*CLI, "reproduce", str(path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "timm-isomax finetune --model resnet10t_isomaxplus" in result.stdout
    recorded = json.loads(path.read_text())["metrics"]
    assert recorded["accuracy"] > 0.5 and set(recorded["ood"]) == {"fashion_mnist", "notmnist", "mean"}
    assert recorded["command"] == f"timm-isomax reproduce {path}"
    card = (tmp_path / "model" / "README.md").read_text()
    assert "timm-isomax finetune" in card and f"{100 * recorded['accuracy']:.2f}" in card
    # provenance: the folder says what produced it, the hub config which weights its numbers describe
    provenance = recorded_provenance(json.loads((tmp_path / "model" / "config.json").read_text()))
    assert recorded["weights_sha256"] == provenance["weights_sha256"] == weights_sha256(tmp_path / "model" / "model.safetensors")
    assert provenance["settings"]["epochs"] == 2 and provenance["settings"]["train_limit"] == 1024
    assert provenance["data"]["train_rows"] == 1024 and provenance["data"]["source"].endswith("mnist")
    assert provenance["data"]["train_fingerprint"]
    dry = subprocess.run([*CLI, "push", str(path), "--dry-run", str(tmp_path / "dry")], capture_output=True, text=True, cwd=REPO)
    assert dry.returncode == 0 and "nothing uploaded" in dry.stdout, dry.stderr[-2000:]

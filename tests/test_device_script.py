"""scripts/device_airbench.sh, the cifar10_airbench grid on a lent GPU (issue 30), tried as a device machine would
run it, on the CPU: what can be checked without a GPU. A file of its own, so that it runs beside the benchmark's
tests (pytest-xdist's --dist loadfile keeps a file on one worker)."""
import json
import os
import subprocess
import sys

from .conftest import REPO


def test_the_gpu_script_stages_the_data_in_two_parts_and_brings_back_the_finished_seeds(
        shared_data, tmp_path):
    # scripts/device_airbench.sh, run as a device machine would (a checkout without ../shared beside it, the data
    # carried in .device/part1 and part2), on the CPU and the smoke protocol: what can be tried without a GPU
    import shutil

    repo = tmp_path / "machine" / "repo"
    for part in ("scripts", "timm_isomax", "benchmarks/protocols", "benchmarks/views"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    parts = {"part1": [("cifar10", "train")], "part2": [("cifar10", "test"), ("tinyimagenet32", "val"),
                                                         ("mnist", "test"), ("fashion_mnist", "test"), ("notmnist", "test")]}
    for part, splits in parts.items():
        for name, split in splits:
            (repo / ".device" / part / name).mkdir(parents=True, exist_ok=True)
            (repo / ".device" / part / name / f"{split}.parquet").symlink_to(shared_data / name / f"{split}.parquet")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, DEVICE="cpu", OUT=str(out), DEVICE_WORK=str(tmp_path / "work"),
               GRID_ARGS="--smoke --seeds 0 --heads softmax", OMP_NUM_THREADS="1")

    def script(*args, **extra):
        return subprocess.run(["bash", "scripts/device_airbench.sh", *args], cwd=repo, capture_output=True, text=True,
                              env=dict(env, **extra))

    assert script("stage", "part2").returncode == 0
    early = script("grid")  # part1 never arrived (the machine was given back between the calls)
    assert early.returncode == 1 and "part1 is not on this machine" in early.stderr and early.stderr.count("\n") == 1
    assert script("stage", "part1").returncode == 0
    assert (tmp_path / "machine" / "shared" / "data" / "cifar10" / "train.parquet").exists()
    stopped = script("grid", GRID_SECONDS="1")  # stopped by its own limit: the call still ends well, nothing to bring
    assert stopped.returncode == 0 and not (out / "cifar10_airbench-smoke").exists(), stopped.stdout[-2000:]
    finished = script("grid")  # the next call on the warm machine runs it (a stopped run resumes: the benchmark's tests)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    run = json.loads((out / "cifar10_airbench-smoke" / "seed0.json").read_text())
    assert [row["head"] for row in run["rows"]] == ["softmax"] and 0.0 < run["rows"][0]["accuracy"] <= 1.0
    assert "cifar10_airbench-smoke seed 0 softmax: accuracy" in (out / "grid.log").read_text()

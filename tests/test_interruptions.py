"""Fine-tuning survives interruptions: SIGKILL at random points (10 times in one run) and SIGINT, then
--resume; the checkpoint on disk is always whole, at most --checkpoint-every steps are redone, and the
resumed run ends with exactly the weights of an uninterrupted run (augmentation, mixup and workers on)."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from timm_isomax.train.state import CHECKPOINT_NAME, LOG_NAME, read_resume_state as _read_resume_state
from tests.conftest import FINETUNE, REPO, cifar_resnet20_args, weights

KILLS = 10
CHECKPOINT_EVERY = 4
EPOCHS = 4
STEPS_PER_EPOCH = 1024 // 32


def finetune_args(shared_data, output, extra=()):
    # augmentation (random crops + flips), mixup and a loader worker: every random stream a resume must restore
    return [*cifar_resnet20_args(shared_data),
            "--train-limit", "1024", "--val-limit", "64", "--batch-size", "32", "--crop-scale", "0.5", "1.0",
            "--mixup", "0.2", "--workers", "1", "--epochs", str(EPOCHS), "--lr", "0.05", "--no-progress",
            "--checkpoint-every", str(CHECKPOINT_EVERY), "--output", str(output), *extra]


class Run:
    """`timm-isomax finetune` in a subprocess; ``started`` is set once it prints its start model (training next)."""

    def __init__(self, args):
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, *FINETUNE, *args], cwd=REPO, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines, self.started = [], threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("start model"):
                self.started.set()
        self.started.set()  # ended before training: let the waiter see it

    def wait_started(self):
        assert self.started.wait(300), "the run did not start training"
        return time.perf_counter()

    def wait_for_line(self, prefix, timeout=300):
        """The first output line that starts with ``prefix``, once the run has printed it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if line.startswith(prefix)), None)
            if found is not None:
                return found
            if not self.reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"the run printed no line starting {prefix!r}: " + "".join(self.lines)[-3000:])

    def finish(self, timeout=600):
        code = self.process.wait(timeout)
        self.reader.join(10)
        return code, "".join(self.lines)


def checkpoint_position(output):
    """(steps done, checkpoint state) of the run's checkpoint, read the way --resume reads it."""
    path = output / "training" / CHECKPOINT_NAME
    if not path.exists():
        return 0, None
    state = _read_resume_state(path)  # a damaged file raises here
    return state["epoch"] * STEPS_PER_EPOCH + state.get("step_in_epoch", 0), state


@pytest.fixture(scope="module")
def uninterrupted(shared_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("interrupt") / "uninterrupted"
    run = Run(finetune_args(shared_data, output))
    started = run.wait_started()
    code, text = run.finish()
    assert code == 0, text[-3000:]
    return output, time.perf_counter() - started


@pytest.mark.slow
def test_ten_random_sigkills_then_resume_end_with_the_uninterrupted_weights(uninterrupted, shared_data, tmp_path):
    expected_output, training_seconds = uninterrupted
    output = tmp_path / "killed"
    rng = random.Random(0)
    positions, kills = [0], 0
    while kills < KILLS:
        run = Run(finetune_args(shared_data, output, extra=["--resume"] if kills else []))
        run.wait_started()
        # random points of the run: in a step, between steps, while a checkpoint or the log is written
        time.sleep(rng.uniform(0.0, training_seconds / 12))
        if run.process.poll() is not None:
            break
        run.process.send_signal(signal.SIGKILL)
        run.finish()
        kills += 1
        position, state = checkpoint_position(output)
        assert position >= positions[-1], "a resumed run went back"
        assert state is None or state.get("step_in_epoch", 0) % CHECKPOINT_EVERY == 0
        positions.append(position)
    assert kills == KILLS, f"the run finished after {kills} kills; lengthen it"
    assert positions[-1] > 0, "no kill came after a checkpoint"
    code, text = Run(finetune_args(shared_data, output)).finish()  # the same command without --resume
    assert code == 2 and "pass resume=True (--resume)" in text, text[-3000:]
    code, text = Run(finetune_args(shared_data, output, extra=["--resume"])).finish()
    assert code == 0, text[-3000:]
    expected, got = weights(expected_output), weights(output)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), f"weights differ after kills at {positions}"
    log = [json.loads(line) for line in (output / "training" / LOG_NAME).read_text().splitlines()]
    expected_log = [json.loads(line) for line in (expected_output / "training" / LOG_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, EPOCHS + 1))
    assert [r["train_loss"] for r in log] == [r["train_loss"] for r in expected_log]


def _stop_mid_run(shared_data, output, stop_signal, after_epoch, resume, epoch_seconds=None):
    """Start the run (resumed if ``resume``), send ``stop_signal`` 0.4 epochs after it reports epoch
    ``after_epoch`` and check that it saved a mid-run checkpoint and stopped with code 130; returns the
    checkpoint's state and the epoch's length in seconds (read from that epoch's line unless given).
    The signal follows the run's own progress, not a share of another run's time: under a loaded CI
    machine runs speed up and slow down, and a resumed run once finished before a timed signal came."""
    extra = ["--checkpoint-every", "0", *(["--resume"] if resume else [])]  # only the signal saves mid-epoch
    before, _ = checkpoint_position(output)
    run = Run(finetune_args(shared_data, output, extra=extra))
    run.wait_started()
    line = run.wait_for_line(f"epoch={after_epoch} ")
    if epoch_seconds is None:
        epoch_seconds = float(line.split("seconds=")[1].split()[0])
    time.sleep(0.4 * epoch_seconds)
    run.process.send_signal(stop_signal)
    code, text = run.finish(timeout=120)
    assert code == 130, text[-3000:]
    assert f"{stop_signal.name}: saving a checkpoint after this step" in text
    assert "interrupted: progress is saved in" in text
    position, state = checkpoint_position(output)
    assert before < position < EPOCHS * STEPS_PER_EPOCH and not (output / "model.safetensors").exists()
    assert state.get("step_in_epoch", 0) > 0, f"the signal did not land mid-epoch: {position} steps saved"
    return state, epoch_seconds


@pytest.mark.slow
def test_sigint_then_sigterm_save_mid_epoch_and_the_resumed_run_ends_the_same(uninterrupted, shared_data, tmp_path):
    # one run stopped twice (SIGINT, then SIGTERM on its resumed run): each signal is shown to save and stop,
    # with one subprocess fewer than a run per signal (CI time)
    expected_output, _ = uninterrupted
    output = tmp_path / "interrupted"
    # SIGINT in epoch 2; the resumed run finishes epoch 2 (a part epoch: its time is not an epoch's) and
    # gets SIGTERM in epoch 3, so each signal lands mid-epoch with an epoch to spare
    _, epoch_seconds = _stop_mid_run(shared_data, output, signal.SIGINT, after_epoch=1, resume=False)
    state, _ = _stop_mid_run(shared_data, output, signal.SIGTERM, after_epoch=2, resume=True,
                             epoch_seconds=epoch_seconds)
    code, text = Run(finetune_args(shared_data, output, extra=["--resume", "--checkpoint-every", "0"])).finish()
    assert code == 0, text[-3000:]
    expected_resume = f"after epoch {state['epoch']}" + (
        f", step {state['step_in_epoch']}" if state.get("step_in_epoch") else "")
    assert expected_resume in text
    expected, got = weights(expected_output), weights(output)
    assert all(torch.equal(expected[k], got[k]) for k in expected), "weights differ after SIGINT, SIGTERM + resume"


@pytest.mark.slow
def test_a_run_stopped_after_its_last_epoch_resumes_into_the_same_final_evaluation(uninterrupted, shared_data, tmp_path):
    # a stop between the last checkpoint and its log line (CI once lost epoch 1's line to a SIGKILL there), or
    # between the log line and the saved model (e.g. during the final evaluation): the resumed run writes the
    # line back from the checkpoint and only evaluates, on a model rebuilt in training mode, and must score it
    # as the uninterrupted run did (BatchNorm on its running statistics: in training mode 82% instead of 86%)
    import shutil

    expected_output, _ = uninterrupted
    output = tmp_path / "stopped_after_training"
    shutil.copytree(expected_output, output)
    for name in ("config.json", "model.safetensors", "feature_bank.safetensors", "training/evaluation.json"):
        (output / name).unlink(missing_ok=True)
    log_path = output / "training" / LOG_NAME
    expected_log = log_path.read_text()
    log_path.write_text("".join(expected_log.splitlines(keepends=True)[:-1]))  # the last epoch's line not yet written
    code, text = Run(finetune_args(shared_data, output, extra=["--resume"])).finish()
    assert code == 0, text[-3000:]
    assert f"after epoch {EPOCHS}" in text
    expected, got = weights(expected_output), weights(output)
    assert all(torch.equal(expected[k], got[k]) for k in expected), "the evaluation changed the weights or BN statistics"
    before, after = (json.loads((folder / "training" / "evaluation.json").read_text()) for folder in (expected_output, output))
    assert after["accuracy"] == before["accuracy"] and after["val_accuracy"] == before["val_accuracy"]
    assert after["metrics"] == before["metrics"] and after["score"] == before["score"]
    assert log_path.read_text() == expected_log


def test_the_log_is_restored_from_the_checkpoint_and_an_older_checkpoint_cuts_it(tmp_path):
    from timm_isomax.train.state import restore_log

    path = tmp_path / LOG_NAME
    lines = [{"epoch": 1, "train_loss": 2.5}, {"epoch": 2, "train_loss": 1.5}, {"epoch": 3, "train_loss": 1.0}]
    path.write_text(json.dumps(lines[0]) + "\n")  # killed before epoch 2's line, after its checkpoint
    assert restore_log(path, {"epoch": 2, "log": lines[:2]}) == lines[:2]
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines[:2]
    # a checkpoint written before checkpoints held the log: the file's lines of later epochs are cut
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert restore_log(path, {"epoch": 2}) == lines[:2]
    assert path.read_text() == "".join(json.dumps(line) + "\n" for line in lines[:2])
    fresh = tmp_path / "fresh" / LOG_NAME
    assert restore_log(fresh, None) == [] and not fresh.exists()  # a new run writes no empty log

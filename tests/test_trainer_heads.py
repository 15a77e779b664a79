"""The one trainer for every head: a SoftMax run gives a plain timm folder, frozen-backbone runs train on
cached features exactly as head-only runs over the backbone do, and wrong combinations are one-line errors."""
import importlib.util
import json
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from timm_isomax.cli.finetune import main as finetune_main, parse_args as finetune_settings
from timm_isomax.provenance import recorded_provenance, weights_sha256
from timm_isomax.train import EVALUATION_NAME, TRAINING_DIR, TrainConfig, train

from .conftest import FINETUNE, REPO, assert_one_line_error, weights

POSTHOC = importlib.util.find_spec("pytorch_ood") is not None  # the post-hoc detectors' extra
DIGITS = dict(dataset="sklearn-digits", img_size=32, augmentation="none", workers=0, progress=False, batch_size=32)


@pytest.mark.slow
def test_a_softmax_run_is_a_plain_timm_folder_that_timm_loads_without_timm_isomax(tmp_path, capsys):
    output = train(TrainConfig(model="resnet10t", from_scratch=True, head="softmax", in_chans=1, epochs=1,
                               ood_datasets=["sklearn-digits"], output=str(tmp_path / "softmax"), **DIGITS))
    config = json.loads((output / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and "isomax" not in config and config["num_classes"] == 10
    evaluation = json.loads((output / TRAINING_DIR / EVALUATION_NAME).read_text())
    # every score of a linear head: its logit scores, the feature scores, KNN on the bank and (with pytorch-ood)
    # the post-hoc detectors, ViM, ReAct and ASH included
    assert evaluation["head"] == "softmax" and set(evaluation["metrics"]) == {
        "msp", "max_logit", "energy", "entropic", "norm_cosine", "feature_norm", "knn10", "knn50", "knn200",
        *(("mahalanobis", "vim", "react", "ash") if POSTHOC else ())}
    assert evaluation["unavailable_scores"] == {} and evaluation["feature_bank"]["width"] == 512
    assert (output / "feature_bank.safetensors").is_file()
    # no --score: the score with the best mean validation AUROC, its threshold fitted on the validation images
    selection = evaluation["selection"]
    assert evaluation["chosen_by"] == "validation" and set(selection["aurocs"]) == set(evaluation["metrics"])
    assert evaluation["score"] == max(selection["aurocs"], key=lambda name: selection["aurocs"][name]["mean"])
    assert evaluation["threshold"] is not None
    # how sure the choice is: the margin over the runner-up, its bootstrap spread, and the log line says it
    runner_up = selection["runner_up"]
    assert runner_up != selection["chosen"] and selection["margin"] == pytest.approx(
        selection["aurocs"][selection["chosen"]]["mean"] - selection["aurocs"][runner_up]["mean"])
    assert selection["margin"] >= 0 and selection["margin_std"] >= 0
    assert selection["decisive"] == (selection["margin"] > 2 * selection["margin_std"])
    assert f"; runner-up {runner_up} by " in capsys.readouterr().out
    probe = ("import sys, timm, torch, safetensors.torch as st\n"
             f"m = timm.create_model('local-dir:{output}', pretrained=True).eval()\n"
             "assert 'timm_isomax' not in sys.modules, 'timm_isomax was imported'\n"
             f"w = st.load_file('{output}/model.safetensors')\n"
             "assert all(torch.equal(v, w[k]) for k, v in m.state_dict().items())\n"
             "print(type(m).__name__, m.num_classes, *m.pretrained_cfg['input_size'])\n")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert loaded.returncode == 0, loaded.stderr[-1500:]
    assert loaded.stdout.split() == ["ResNet", "10", "1", "32", "32"]


@pytest.mark.slow
@pytest.mark.parametrize("head", ["softmax", "isomaxplus"])
def test_frozen_backbone_on_cached_features_trains_like_head_only_over_the_backbone(head, tmp_path):
    # a start model with trained-looking weights: one short full run, then both head-only runs start from it
    start = train(TrainConfig(model="resnet10t", from_scratch=True, head=head, epochs=1, train_limit=256, lr=0.05,
                              output=str(tmp_path / "start"), **DIGITS))
    common = dict(model=f"local-dir:{start}", head=head, epochs=2, lr=0.05, train_limit=512, **DIGITS)
    cached = train(TrainConfig(**common, freeze_backbone=True, feature_cache=str(tmp_path / "cache"),
                               output=str(tmp_path / "cached")))
    uncached = train(TrainConfig(**common, head_epochs=2, output=str(tmp_path / "uncached")))
    start_w, cached_w, uncached_w = weights(start), weights(cached), weights(uncached)
    head_keys = [k for k in cached_w if k.startswith(("fc.", "head."))]
    trained = [k for k in head_keys if not k.endswith("temperature")]  # the temperature buffer is calibration's
    assert trained and all(not torch.equal(cached_w[k], start_w[k]) for k in trained)  # the head trained
    for key in cached_w:
        if key not in head_keys:  # the backbone is untouched, batch-norm statistics included
            assert torch.equal(cached_w[key], start_w[key]), key
        torch.testing.assert_close(cached_w[key], uncached_w[key], rtol=1e-4, atol=1e-5)
    # the cache serves a second run; another image size is another key, never stale features
    again = subprocess.run([sys.executable, *FINETUNE, "--model", f"local-dir:{start}", "--head", head,
                            "--dataset", "sklearn-digits", "--img-size", "32", "--no-aug", "--workers", "0",
                            "--batch-size", "32", "--epochs", "1", "--train-limit", "512", "--freeze-backbone",
                            "--feature-cache", str(tmp_path / "cache"), "--no-progress", "--output",
                            str(tmp_path / "again")], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr[-1500:]
    assert "features of 0 set(s) computed, 2 read from" in again.stdout
    resized = train(TrainConfig(**dict(common, img_size=40, epochs=1), freeze_backbone=True,
                                feature_cache=str(tmp_path / "cache"), output=str(tmp_path / "resized")))
    # per image size: the training rows, the validation rows and the jigsaw puzzles of the validation rows (the
    # final evaluation's OOD validation set); its training rows for the bank (no augmentation) are the training key
    cached_sets = []
    for path in (tmp_path / "cache").glob("*.safetensors"):
        with safetensors.safe_open(str(path), "pt") as handle:
            cached_sets.append(handle.metadata()["set"])
    assert resized.exists() and sorted(cached_sets) == ["ood-val jigsaw", "ood-val jigsaw", "train", "train", "val", "val"]


@pytest.mark.parametrize("extra, message", [
    (["--head", "softmax", "--entropic-scale", "5"], "the entropic scale belongs to the IsoMax losses"),
    (["--head", "softmax", "--score", "mds"], "mds is the IsoMax+ score"),
    (["--freeze-backbone"], "which augmentation would make stale: add --no-aug"),
    (["--freeze-backbone", "--no-aug", "--mixup", "0.2"], "mixup and cutmix act on images"),
    (["--feature-cache", "somewhere"], "it needs --freeze-backbone"),
    (["--head", "softmax", "--model", "resnet10t_isomaxplus"], "names an IsoMax architecture but --head is softmax"),
    (["--img-size", "0"], "img_size must be a positive number of pixels, got 0"),
    (["--opt", "adamww"], "unknown optimizer 'adamww'; did you mean adamw"),
    (["--train-limit", "0"], "train_limit must be a positive number of images, got 0"),
    (["--val-fraction", "1"], "val_fraction must be between 0 and 1"),
    (["--score", "knn50", "--no-feature-bank"], "--score knn50 reads the feature bank"),  # not after the training
    (["--mean", "0.5", "0.5"], "--mean needs 1 value (for every channel) or 3, one per input channel, got 2 (0.5 0.5)"),
    (["--in-chans", "1", "--std", "0.2", "0.2", "0.2"], "--std needs 1 value (--in-chans 1), got 3 (0.2 0.2 0.2)."),
    (["--std", "0", "0", "0"], "--std values must be finite and > 0 (each channel is divided by its std), got 0 0 0"),
    (["--sched", "cosin"], "unknown scheduler 'cosin'; did you mean cosine?"),
    (["--sched", "plateau"], "--sched plateau cannot drive this run (timm: Plateau LR only supports step per epoch)"),
    (["--workers", "-1"], "workers must be >= 0"),
    (["--train-limit", "5"], "train_limit 5 makes no full batch of 64"),
    (["--lr", "inf"], "lr must be a finite number, got inf"),
])
def test_wrong_combinations_are_one_line_errors_before_anything_loads(extra, message, tmp_path, capsys):
    # in-process: the CLI's main is what `timm-isomax finetune` runs (the subprocess tests cover the entry point)
    args = ["--model", "resnet10t", "--dataset", "sklearn-digits", "--output", str(tmp_path / "out"), *extra]
    if "--model" in extra:
        args = args[2:]
    code, stderr = finetune_main(args), capsys.readouterr().err
    assert code == 2
    assert_one_line_error(stderr, message)
    assert not (tmp_path / "out").exists()  # refused before the output folder is made


def test_a_run_refused_after_taking_the_folder_leaves_no_lock_behind(tmp_path, capsys):
    # the dataset is read under the folder's lock: its refusal must not leave training/lock (or empty folders)
    code = finetune_main(["--model", "resnet10t", "--dataset", str(tmp_path / "missing"), "--output", str(tmp_path / "out")])
    assert code == 2 and "could not load dataset" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there before stays
    assert finetune_main(["--model", "resnet10t", "--dataset", str(tmp_path / "missing"), "--output", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_a_feature_score_set_by_score_is_the_models_and_the_epoch_log_keeps_a_logit_score(tmp_path):
    # --score takes the feature scores: the run records it as set (not chosen) and fits the threshold on it; the
    # per-epoch log reads logits only, so it monitors the head's own logit score (it used to fail on knn10)
    assert TrainConfig(model="resnet10t", score="knn10", output="o", **DIGITS).ood_score == "mds"
    assert TrainConfig(model="resnet10t", score="energy", output="o", **DIGITS).ood_score == "energy"
    output = train(TrainConfig(model="resnet10t", from_scratch=True, head="isomaxplus", in_chans=1, epochs=1,
                               train_limit=128, score="knn10", output=str(tmp_path / "knn"), **DIGITS))
    log = [json.loads(line) for line in (output / TRAINING_DIR / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and "val_score_mean" in log[0]
    evaluation = json.loads((output / TRAINING_DIR / EVALUATION_NAME).read_text())
    assert evaluation["score"] == "knn10" and evaluation["chosen_by"] == "setting (--score)"
    assert "knn10" in evaluation["metrics"] and "knn10" in evaluation["selection"]["aurocs"]  # still recorded
    config = json.loads((output / "config.json").read_text())
    assert config["isomax"]["score"] == "knn10" and config["isomax"]["threshold"] == evaluation["threshold"]


def test_an_output_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    code = finetune_main(["--model", "resnet10t", "--dataset", "sklearn-digits", "--output", str(tmp_path / "taken")])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "mine"
    # a folder that cannot be made under it: one line too (was a NotADirectoryError traceback)
    code = finetune_main(["--model", "resnet10t", "--dataset", "sklearn-digits", "--output", str(tmp_path / "taken" / "run")])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, f"cannot be made: {tmp_path / 'taken'} is a file")


def test_class_mean_prototypes_see_the_runs_preprocessing(shared_data, monkeypatch):
    from timm_isomax import conversion
    from timm_isomax.data import load_labelled_splits
    from timm_isomax.train import build_start_model

    seen = []
    real = conversion.class_mean_prototypes

    def spy(backbone, batches, *args, **kwargs):
        batches = list(batches)
        seen.append(tuple(batches[0][0].shape[1:]))
        return real(backbone, batches, *args, **kwargs)

    monkeypatch.setattr(conversion, "class_mean_prototypes", spy)
    cfg = TrainConfig(model="cifar_resnet20", head="isomax", img_size=40, dataset=str(shared_data / "cifar10"),
                      checkpoint=str(shared_data / "checkpoints/cifar10_resnet_akamaster/resnet20-12fca82f.th"),
                      key_map="akamaster-cifar-resnet", train_limit=64, workers=0, output="unused")
    splits = load_labelled_splits(cfg.dataset, train_limit=64, val_limit=8)
    model = build_start_model(cfg, splits.num_classes, splits.train)
    assert model.conversion.method == "class_means" and seen == [(3, 40, 40)]  # not the model's native 32 px


def test_resuming_with_other_settings_is_refused_and_keeps_the_record(tmp_path):
    base = ["--model", "resnet10t", "--from-scratch", "--head", "softmax", "--dataset", "sklearn-digits", "--img-size",
            "32", "--no-aug", "--workers", "0", "--epochs", "1", "--train-limit", "128", "--batch-size", "32",
            "--no-progress", "--output", str(tmp_path / "run")]
    first = subprocess.run([sys.executable, *FINETUNE, *base], capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr[-1500:]
    record = (tmp_path / "run" / "training" / "config.json").read_text()
    changed = subprocess.run([sys.executable, *FINETUNE, *base, "--resume", "--lr", "0.5", "--epochs", "2"],
                             capture_output=True, text=True, cwd=REPO)
    assert changed.returncode == 2 and "holds a run made with other settings (epochs: 1 -> 2, lr: 0.01 -> 0.5)" \
        in changed.stderr, changed.stderr[-1500:]
    assert changed.stderr.strip().count("\n") == 0
    assert (tmp_path / "run" / "training" / "config.json").read_text() == record  # the record is kept
    same = subprocess.run([sys.executable, *FINETUNE, *base, "--resume", "--workers", "1"], capture_output=True,
                          text=True, cwd=REPO)  # where it runs may change
    assert same.returncode == 0, same.stderr[-1500:]
    # the explicit way to train a finished run further: a new run that starts from it, with its own schedule
    assert "--model local-dir:" in changed.stderr
    further = train(TrainConfig(model=f"local-dir:{tmp_path / 'run'}", head="softmax", epochs=1, lr=0.5,
                                train_limit=128, output=str(tmp_path / "further"), **DIGITS))
    history = recorded_provenance(json.loads((further / "config.json").read_text()))
    assert history["settings"]["lr"] == 0.5 and history["started_from"]["provenance"]["settings"]["lr"] == 0.01
    assert history["started_from"]["weights_sha256"] == weights_sha256(tmp_path / "run" / "model.safetensors")


def test_validating_on_the_test_split_warns_and_is_recorded_in_the_provenance(tmp_path):
    # `finetune --val-split test`: allowed, never silent; reproduce carries the record onto the model card
    with pytest.warns(UserWarning, match="validation is the 'test' split, so the deployment threshold"):
        output = train(TrainConfig(model="resnet10t", from_scratch=True, head="softmax", epochs=1, train_limit=64,
                                   val_split="test", val_limit=32, output=str(tmp_path / "run"), **DIGITS))
    provenance = recorded_provenance(json.loads((output / "config.json").read_text()))
    assert provenance["data"]["val_is_test"] == "validation is the 'test' split"


def test_resuming_an_unfinished_run_with_other_settings_names_a_way_that_works(tmp_path, capsys):
    # an interrupted run: a checkpoint and its settings, no model folder yet (no top-level config.json)
    args = ["--model", "resnet10t", "--from-scratch", "--dataset", "sklearn-digits", "--output", str(tmp_path / "run")]
    training = tmp_path / "run" / TRAINING_DIR
    training.mkdir(parents=True)
    (training / "checkpoint.pt").write_bytes(b"not read: the settings are compared first")
    (training / "config.json").write_text(json.dumps(finetune_settings(args).to_json()))
    assert finetune_main([*args, "--resume", "--lr", "0.5"]) == 2
    error = assert_one_line_error(capsys.readouterr().err, "holds a run made with other settings (lr: 0.01 -> 0.5), not finished yet")
    assert "local-dir:" not in error and "start over with the new settings in another --output" in error


@pytest.mark.slow
def test_two_runs_side_by_side_on_different_folders_both_finish(tmp_path):
    args = ["--model", "resnet10t", "--from-scratch", "--dataset", "sklearn-digits", "--img-size", "32", "--no-aug",
            "--workers", "0", "--epochs", "1", "--train-limit", "256", "--batch-size", "32", "--no-progress", "--resume"]
    processes = [subprocess.Popen([sys.executable, *FINETUNE, *args, "--output", str(tmp_path / name)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outputs = [process.communicate(timeout=600) for process in processes]  # both run at the same time
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-1500:]
        assert "holds no checkpoint yet" in stdout and "starting a new run there" in stdout  # --resume, said plainly
    assert (tmp_path / "a" / "model.safetensors").exists() and (tmp_path / "b" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_nan_in_epoch_2_keeps_epoch_1s_checkpoint_and_resume_ends_as_an_uninterrupted_run(tmp_path, monkeypatch):
    from timm_isomax.train import trainer
    from timm_isomax.train.state import CHECKPOINT_NAME, read_resume_state

    settings = dict(model="resnet10t", from_scratch=True, head="isomaxplus", in_chans=1, epochs=2, train_limit=320,
                    val_limit=64, lr=0.05, **DIGITS)
    steps_per_epoch = 320 // DIGITS["batch_size"]
    uninterrupted = train(TrainConfig(**settings, output=str(tmp_path / "uninterrupted")))

    make_optimization = trainer.make_optimization

    def poisoned(*args, **kwargs):  # the loss turns NaN at the third step of epoch 2
        opt = make_optimization(*args, **kwargs)
        loss_fn, calls = opt["loss_fn"], [0]

        def loss(logits, targets):
            calls[0] += 1
            value = loss_fn(logits, targets)
            return value * float("nan") if calls[0] == steps_per_epoch + 3 else value
        return dict(opt, loss_fn=loss)

    monkeypatch.setattr(trainer, "make_optimization", poisoned)
    output = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match="in epoch 2.*last good checkpoint is kept.*--resume"):
        train(TrainConfig(**settings, output=str(output)))
    state = read_resume_state(output / TRAINING_DIR / CHECKPOINT_NAME)
    assert state["epoch"] == 1 and not state.get("step_in_epoch")  # epoch 1's checkpoint, not a diverged one
    assert not (output / "model.safetensors").exists()
    monkeypatch.setattr(trainer, "make_optimization", make_optimization)  # the cause lay outside the settings
    train(TrainConfig(**settings, output=str(output), resume=True))
    resumed, expected = weights(output), weights(uninterrupted)
    assert resumed.keys() == expected.keys() and all(torch.equal(resumed[k], expected[k]) for k in expected)


def test_a_saved_isomax_start_model_of_another_head_is_refused(tmp_path):
    # its loss, scores and threshold would follow --head, not the head the weights hold
    from .hub_models import saved_model

    saved_model(tmp_path / "isomaxplus")  # an IsoMax+ folder
    with pytest.raises(ValueError, match=r"holds the isomaxplus head but --head is dismax: pass --head isomaxplus") as error:
        train(TrainConfig(model=f"local-dir:{tmp_path / 'isomaxplus'}", head="dismax", epochs=1,
                          output=str(tmp_path / "run"), **DIGITS))
    assert "\n" not in str(error.value) and not (tmp_path / "run" / "model.safetensors").exists()

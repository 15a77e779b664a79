"""`timm-isomax reproduce CONFIG --check`: the recorded numbers against re-measured ones (on the weights that
get pushed, or on weights retrained from the recipe), within the stated tolerance; nothing is written."""
import dataclasses
import json
import re
from pathlib import Path

import pytest

from timm_isomax.cli import reproduce
from timm_isomax.cli.finetune import parse_args as finetune_settings
from timm_isomax.hub_config import (RETRAINED_TOLERANCE, SAME_WEIGHTS_TOLERANCE, load_hub_config, metric_differences,
                                    write_hub_config)
from timm_isomax.train.state import SETTINGS_NAME, TRAINING_DIR

from .hub_models import saved_model, measured_hub_config

ROOT = Path(__file__).resolve().parents[1]
# the small test model names its classes c0..c9, the MNIST data 0..9: evaluation says so, rightly, each time
pytestmark = pytest.mark.filterwarnings("ignore:the ID set mnist names its classes otherwise")


RECIPE = ["--model", "resnet10t_isomaxplus", "--from-scratch", "--epochs", "2", "--lr", "0.05"]


def _record_training(folder: Path, finetune_args) -> None:
    # what the trainer writes beside a model it trained: the settings of the run (here: of finetune_args)
    (folder / TRAINING_DIR).mkdir(exist_ok=True)
    (folder / TRAINING_DIR / SETTINGS_NAME).write_text(json.dumps(finetune_settings(finetune_args).to_json()))


@pytest.fixture
def measured(shared_data, tmp_path, capsys):
    """A small model folder and its hub config, measured by `reproduce --evaluate-only` on 200 real images per set."""
    saved_model(tmp_path / "model")
    config = dataclasses.replace(
        measured_hub_config(tmp_path / "model", tmp_path),
        dataset=dict(name="mnist", path=str(shared_data / "mnist"), train_split="train", eval_split="test"),
        ood_datasets=[dict(name="notmnist", path=str(shared_data / "notmnist"), split="test")],
        finetune_args=[*RECIPE, "--dataset", str(shared_data / "mnist"), "--output", str(tmp_path / "model")],
        evaluation=dict(limit=200, batch_size=100), metrics=None)
    _record_training(tmp_path / "model", config.finetune_args)
    path = write_hub_config(config)
    assert reproduce.main([str(path), "--evaluate-only"]) == 0
    capsys.readouterr()
    return load_hub_config(path)


def _check(config, capsys, *extra):
    before = config.path.read_bytes()
    code = reproduce.main([str(config.path), "--check", "--evaluate-only", *extra])
    out = capsys.readouterr()
    assert config.path.read_bytes() == before  # --check writes nothing
    return code, out.out, out.err


def test_check_passes_on_the_measured_weights_and_lists_every_number(measured, capsys):
    code, out, err = _check(measured, capsys)
    assert code == 0, out + err
    assert "the recorded ones, bit for bit" in out and f"tolerance {SAME_WEIGHTS_TOLERANCE:g} points" in out
    rows = re.findall(r"^  (ok  |DIFF) (\S+)", out, re.M)
    names = {name for _, name in rows}
    assert {"accuracy", "ood.notmnist.auroc", "ood.notmnist.fpr_at_95_tpr", "ood.mean.auroc", "threshold",
            "id_images", "ood_images", "score"} <= names
    assert all(status == "ok  " for status, _ in rows) and f"all {len(rows)} recorded numbers agree" in out


@pytest.mark.parametrize("key, shift, passes", [
    ("accuracy", 0.02, False),                    # 2 points: far outside 0.01
    ("accuracy", 0.00005, True),                  # 0.005 points: float noise, inside
    (("ood", "notmnist", "fpr_at_95_tpr"), -0.001, False),
    ("threshold", 0.5, False),
])
def test_check_fails_where_a_recorded_number_drifted(measured, capsys, key, shift, passes):
    metrics = json.loads(json.dumps(measured.metrics))
    where, last = (metrics, key) if isinstance(key, str) else (metrics[key[0]][key[1]], key[2])
    where[last] += shift
    config = load_hub_config(write_hub_config(dataclasses.replace(measured, metrics=metrics)))
    code, out, err = _check(config, capsys)
    name = key if isinstance(key, str) else ".".join(key)
    assert code == (0 if passes else 1), out + err
    line = next(line for line in out.splitlines() if line.split()[1:2] == [name])
    assert line.startswith("  ok  " if passes else "  DIFF")
    if not passes:
        assert f"differ from the re-measured ones: {name}" in out
    # a stated wider tolerance accepts the same drift
    assert _check(config, capsys, "--tolerance", "300")[0] == 0


def test_check_fails_when_the_folder_holds_other_weights(measured, capsys):
    saved_model(measured.source_checkpoint, seed=3)  # retrained, never re-measured
    code, out, err = _check(measured, capsys)
    assert code == 1 and "other than the recorded ones" in out and "push` refuses it" in out
    assert f"tolerance {RETRAINED_TOLERANCE:g} points" in out and "weights_sha256" in out.splitlines()[-1]


def test_a_folder_trained_with_another_recipe_is_never_measured_for_the_card(measured, capsys, tmp_path):
    # the folder's own record says 3 epochs, the config's recipe 2: its numbers would describe other weights
    before = measured.path.read_bytes()
    folder = Path(measured.source_checkpoint)
    _record_training(folder, [*RECIPE[:-4], "--epochs", "3", "--lr", "0.05", "--dataset", "mnist",
                              "--output", str(tmp_path / "elsewhere"), "--workers", "0"])
    for extra in ([], ["--check"]):
        assert reproduce.main([str(measured.path), "--evaluate-only", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "trained with other settings" in err, err
        assert "epochs: 3 (recipe: 2)" in err and "dataset" in err
        assert "output" not in err.split("(", 1)[1] and "workers" not in err  # where it ran may differ
    # a folder without any record of its training is not taken on trust either
    (folder / TRAINING_DIR / SETTINGS_NAME).unlink()
    assert reproduce.main([str(measured.path), "--evaluate-only"]) == 2
    assert "holds no record of how it was trained" in capsys.readouterr().err
    assert measured.path.read_bytes() == before and not (folder / "README.md").read_text().count("epochs: 3")


def test_check_elsewhere_than_beside_the_data_is_an_error_naming_the_relative_paths(measured, capsys, tmp_path,
                                                                                       monkeypatch):
    # the shipped configs name ../shared/data/...: relative to the repository root, where reproduce runs
    relative = {"mnist": "../shared/data/mnist", "notmnist": "../shared/data/notmnist"}
    config = load_hub_config(write_hub_config(dataclasses.replace(
        measured, dataset=dict(measured.dataset, path=relative["mnist"]),
        ood_datasets=[dict(measured.ood_datasets[0], path=relative["notmnist"])],
        finetune_args=[*RECIPE, "--dataset", relative["mnist"], "--output", measured.source_checkpoint])))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for extra in ([], ["--evaluate-only"]):
        code = reproduce.main([str(config.path), "--check", *extra])  # was: exit 1, "numbers differ"
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "../shared/data/mnist, ../shared/data/notmnist" in err and str(elsewhere) in err
        assert "relative to the folder reproduce runs in" in err and "run it from the repository root" in err
    assert not Path(f"{measured.source_checkpoint}.check").exists()  # nothing trained


def test_a_shipped_config_runs_by_name_with_its_data_elsewhere(shared_data, tmp_path, monkeypatch, capsys):
    # as from a pip install: no checkout around, the configs inside the package, the data wherever it is
    monkeypatch.chdir(tmp_path)
    name = "resnet10t_isomaxplus.mnist"
    assert reproduce.main([name, "--check", "--evaluate-only"]) == 2
    err = capsys.readouterr().err
    assert "names datasets that are not here: ../shared/data/mnist" in err and "pass --data-root DIR" in err, err
    assert err.count("\n") == 1
    # found under --data-root: what is missing now is the model folder (nothing to check yet)
    assert reproduce.main([name, "--check", "--evaluate-only", "--data-root", str(shared_data)]) == 2
    err = capsys.readouterr().err
    assert "outputs/resnet10t_isomaxplus.mnist holds no trained model" in err and err.count("\n") == 1, err
    assert reproduce.main(["resnet10t_isomaxplus.mnsit", "--check"]) == 2
    err = capsys.readouterr().err
    assert "neither a hub config file nor the name of a shipped one" in err and name in err


def test_data_root_moves_only_the_paths_under_the_recorded_root(measured):
    from timm_isomax.cli.reproduce import with_data_root

    config = dataclasses.replace(measured, dataset=dict(measured.dataset, path="../shared/data/mnist"),
                                 finetune_args=["--dataset", "../shared/data/mnist", "--checkpoint",
                                                "../shared/data/checkpoints/x.th", "--output", "out"])
    moved = with_data_root(config, "/data")
    assert moved.dataset["path"] == "/data/mnist" and moved.ood_datasets == config.ood_datasets  # absolute: kept
    assert moved.finetune_args == ["--dataset", "/data/mnist", "--checkpoint", "/data/checkpoints/x.th", "--output", "out"]
    assert with_data_root(config, None) is config and config.dataset["path"] == "../shared/data/mnist"


def test_check_options_are_checked(measured, capsys):
    assert reproduce.main([str(measured.path), "--tolerance", "1"]) == 2
    assert "only apply with --check" in capsys.readouterr().err
    assert reproduce.main([str(measured.path), "--check", "--tolerance", "-1"]) == 2
    assert "must be a number of points >= 0" in capsys.readouterr().err
    unmeasured = load_hub_config(write_hub_config(dataclasses.replace(measured, metrics=None)))
    assert reproduce.main([str(unmeasured.path), "--check", "--evaluate-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records no metrics to check" in err


def test_metric_differences_compares_every_recorded_number():
    recorded = dict(score="mds", id_images=10, ood_images={"a": 10}, accuracy=0.9, threshold=-2.0,
                    ood={"a": dict(auroc=0.8, fpr_at_95_tpr=0.4)})
    same = metric_differences(recorded, json.loads(json.dumps(recorded)), 0.0)
    assert [name for name, *_ in same] == ["score", "id_images", "ood_images", "accuracy", "ood.a.auroc",
                                           "ood.a.fpr_at_95_tpr", "threshold"]
    assert all(within for *_, within in same)
    drifted = dict(recorded, id_images=11, accuracy=0.905, ood={"a": dict(auroc=0.8)}, threshold=-2.03)
    verdict = {name: within for name, *_, within in metric_differences(recorded, drifted, 1.0)}
    assert verdict == {"score": True, "id_images": False, "ood_images": True, "accuracy": True, "ood.a.auroc": True,
                       "ood.a.fpr_at_95_tpr": False, "threshold": False}  # a missing number is a difference


def _tiny_config(shared_data, path: Path, model: Path, args, **changes) -> Path:
    # the shipped MNIST config with a tiny recipe into ``model``, evaluated on 200 images per set, not yet measured
    packaged = json.loads((ROOT / "hub_configs" / "resnet10t_isomaxplus.mnist.json").read_text())
    packaged.update(dict(source_checkpoint=str(model), finetune_args=args, metrics=None, published=None, seeds=None,
                         dataset=dict(packaged["dataset"], path=str(shared_data / "mnist")),
                         ood_datasets=[dict(name="notmnist", path=str(shared_data / "notmnist"), split="test")],
                         evaluation=dict(limit=200, batch_size=100)), **changes)
    path.write_text(json.dumps(packaged))
    return path


@pytest.mark.slow
def test_check_retrains_the_recipe_into_its_own_folder_and_compares(shared_data, tmp_path, capsys):
    # a tiny recipe on real data, recorded by `reproduce`, then retrained from scratch by `--check`
    model = tmp_path / "model"
    args = ["--model", "resnet10t_isomaxplus", "--from-scratch", "--dataset", str(shared_data / "mnist"),
            "--img-size", "32", "--no-aug", "--epochs", "1", "--train-limit", "256", "--val-limit", "64",
            "--batch-size", "64", "--lr", "0.05", "--ood-dataset", str(shared_data / "notmnist"), "--workers", "0",
            "--no-progress", "--output", str(model)]
    path = _tiny_config(shared_data, tmp_path / "tiny.json", model, args)
    assert reproduce.main([str(path)]) == 0
    capsys.readouterr()
    before = path.read_bytes()
    code = reproduce.main([str(path), "--check", "--check-dir", str(tmp_path / "again")])
    out = capsys.readouterr().out
    assert path.read_bytes() == before and (tmp_path / "again" / "model.safetensors").is_file()
    assert "timm-isomax finetune" in out and str(tmp_path / "again") in out
    # the same recipe on the same machine: the same weights bit for bit, so the tight tolerance applies
    assert "the recorded ones, bit for bit" in out, out
    assert code == 0, out


@pytest.mark.slow
def test_a_config_with_seeds_publishes_the_seed_chosen_on_validation_and_states_the_mean(shared_data, tmp_path, capsys):
    from timm_isomax.hub import weights_sha256

    model = tmp_path / "model"
    args = ["--model", "resnet10t_isomaxplus", "--from-scratch", "--dataset", str(shared_data / "mnist"),
            "--img-size", "32", "--no-aug", "--epochs", "1", "--train-limit", "256", "--val-limit", "64",
            "--batch-size", "64", "--lr", "0.05", "--workers", "0", "--no-progress", "--output", str(model)]
    path = _tiny_config(shared_data, tmp_path / "seeds.json", model, args, seeds=[0, 1])
    assert reproduce.main([str(path)]) == 0
    capsys.readouterr()
    config = load_hub_config(path)
    choice = config.metrics["seed_choice"]
    # the choice reads only each run's validation record: the seed with the best validation AUROC of its own score
    validation = {}
    for seed in (0, 1):
        evaluation = json.loads((tmp_path / f"model.seed{seed}" / "training" / "evaluation.json").read_text())
        validation[str(seed)] = evaluation["selection"]["aurocs"][evaluation["score"]]["mean"]
    assert choice["validation_auroc"] == validation
    assert choice["seed"] == max((0, 1), key=lambda seed: validation[str(seed)])
    seed = choice["seed"]
    # what is published is that seed's run, and its recipe says so
    assert weights_sha256(model / "model.safetensors") == weights_sha256(tmp_path / f"model.seed{seed}" / "model.safetensors")
    assert config.finetune_args[config.finetune_args.index("--seed") + 1] == str(seed)
    assert config.metrics["accuracy"] == choice["runs"][str(seed)]["accuracy"]
    runs = choice["runs"].values()
    assert choice["mean"]["accuracy"]["mean"] == pytest.approx(sum(r["accuracy"] for r in runs) / 2)
    assert choice["mean"]["ood"]["notmnist"]["auroc"]["mean"] == pytest.approx(sum(r["ood"]["notmnist"]["auroc"] for r in runs) / 2)
    card = (model / "README.md").read_text()
    assert f"Seed {seed} of 2 (0, 1), chosen by the highest validation AUROC" in card and "| mean ± std |" in card
    assert f"--seed {seed}" in card
    # a second reproduce keeps the finished seeds (nothing retrained) and records the same choice
    stamps = [(tmp_path / f"model.seed{s}" / "model.safetensors").stat().st_mtime_ns for s in (0, 1)]
    assert reproduce.main([str(path), "--evaluate-only"]) == 0
    assert [(tmp_path / f"model.seed{s}" / "model.safetensors").stat().st_mtime_ns for s in (0, 1)] == stamps
    assert load_hub_config(path).metrics == config.metrics
    # a kept seed folder that another recipe trained is refused, saying which folder to delete
    changed = json.loads(path.read_text())
    changed["finetune_args"][changed["finetune_args"].index("--lr") + 1] = "0.04"
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    assert reproduce.main([str(tmp_path / "changed.json"), "--evaluate-only"]) == 2
    err = capsys.readouterr().err
    assert "seed 0's folder holds another recipe's run" in err and f"delete {tmp_path / 'model.seed0'}" in err, err
    # --check retrains the published seed's recipe: the same weights bit for bit
    code = reproduce.main([str(path), "--check", "--check-dir", str(tmp_path / "again")])
    out = capsys.readouterr().out
    assert "the recorded ones, bit for bit" in out and code == 0, out


def test_seeds_and_the_published_seed_are_checked(measured):
    data = measured.to_json()
    for seeds in ([], [0, 0], ["1"], [True]):
        with pytest.raises(ValueError, match="seeds must be null or a non-empty list of distinct integers"):
            write_hub_config(dataclasses.replace(measured, seeds=seeds))
    choice = dict(seed=1, criterion="c", validation_auroc={}, runs={}, mean={})
    mismatch = dataclasses.replace(measured, seeds=[0, 1], metrics=dict(data["metrics"], seed_choice=choice))
    with pytest.raises(ValueError, match="finetune_args train --seed None but metrics.seed_choice published seed 1"):
        write_hub_config(mismatch)

"""The OOD benchmark (timm_isomax.benchmark, `timm-isomax benchmark`) driving the product's trainer: protocol
files, results written per finished run, mid-run resume, aggregation over seeds with near / far means, and
smoke versions of the shipped protocols on the real shared datasets."""
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors

import timm_isomax  # noqa: F401
from timm_isomax.benchmark import (TTA_SUFFIX, fill_result_tables, headline_table, load_protocol, load_runs,
                                   markdown_table, missing_inputs, result_tables, run_protocol, smoke_version, summarize,
                                   summary_json, validated_headline_table)
from timm_isomax.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = REPO / "benchmarks" / "protocols"


def _smoke(name: str, shared_data: Path, output: Path):
    protocol = smoke_version(load_protocol(PROTOCOLS / f"{name}.json"))
    (run,) = run_protocol(protocol, shared_data, output / "results", output / "runs", output / "cache",
                          throughput_rounds=2, log=lambda _: None)
    return {row["head"]: row for row in run["rows"]}, run


def _auroc(row, score, ood):
    return row["metrics"][score][ood]["auroc"]


@pytest.fixture(scope="module")
def mnist_smoke_output(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist_smoke")


@pytest.fixture(scope="module")
def mnist_smoke(shared_data, mnist_smoke_output):
    return _smoke("mnist", shared_data, mnist_smoke_output)


@pytest.mark.slow
def test_mnist_smoke_trains_every_head_through_the_trainer(mnist_smoke):
    rows, run = mnist_smoke
    assert list(rows) == ["softmax", "isomax", "isomaxplus"] and run["ood_datasets"] == ["fashion_mnist", "notmnist"]
    # every score of the head: its logit scores, the feature scores, KNN on the bank, the post-hoc detectors
    assert set(rows["softmax"]["metrics"]) == {"msp", "max_logit", "energy", "entropic", "norm_cosine", "feature_norm",
                                               "knn10", "knn50", "knn200", "mahalanobis", "vim", "react", "ash"}
    assert set(rows["isomaxplus"]["metrics"]) == {"mds", "entropic", "energy", "msp", "norm_cosine", "feature_norm",
                                                  "knn10", "knn50", "knn200", "mahalanobis"}
    for row in rows.values():
        assert row["accuracy"] >= 0.85 and row["epochs"] == 2 and row["val_images"] == 1000
        # validation is held out of the training split; the test split gives the accuracy and the OOD numbers
        assert row["id_split"] == "test" and row["test_images"] == 1000 and "held out" in row["fitted_on"]
        # the score was chosen on validation only: ID validation against jigsaw puzzles of it (no real OOD here)
        assert row["chosen_by"] == "validation" and row["selection"]["sets"] == ["jigsaw"]
        assert row["score"] == max(row["selection"]["aurocs"], key=lambda s: row["selection"]["aurocs"][s]["mean"])
        assert row["feature_bank"]["rows"] == 2000 and row["feature_bank"]["width"] == 512
        assert row["throughput"] > 0  # measured side by side; its ratio is reported, not asserted (shared machine)
    # the isotropic heads detect these far OOD sets (random scores: 0.5); which head wins is the benchmark's
    # question (3 seeds), not this test's
    for ood in run["ood_datasets"]:
        assert _auroc(rows["isomaxplus"], "mds", ood) >= 0.75 and _auroc(rows["isomax"], "entropic", ood) >= 0.75
    assert rows["isomaxplus"]["distance_scale"] > 0


@pytest.mark.slow
def test_an_interrupted_benchmark_continues_mid_run_with_the_same_command(mnist_smoke, shared_data, tmp_path):
    # the mnist protocol with two of its heads (a third would only repeat what the second shows, for CI time)
    definition = json.loads((PROTOCOLS / "mnist.json").read_text())
    two_heads = ["softmax", "isomaxplus"]
    (tmp_path / "mnist.json").write_text(json.dumps(dict(definition, heads=two_heads, head_settings={},
                                                         smoke=dict(definition["smoke"], heads=two_heads))))
    command = [sys.executable, "-m", "timm_isomax", "benchmark", "--smoke", str(tmp_path / "mnist.json"), "--data-root",
               str(shared_data), "--output", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"),
               "--throughput-rounds", "2"]
    checkpoint = tmp_path / "runs" / "mnist-smoke" / "seed0" / "softmax" / "training" / "checkpoint.pt"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # after epoch 1 of the first head: the trainer saves, then stops
    process.communicate(timeout=300)
    assert process.returncode == 130 and not (tmp_path / "results" / "mnist-smoke" / "seed0.json").exists()
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    run = json.loads((tmp_path / "results" / "mnist-smoke" / "seed0.json").read_text())
    expected = mnist_smoke[0]
    assert [row["head"] for row in run["rows"]] == ["softmax", "isomaxplus"]
    for row in run["rows"]:  # bit-exact: the same numbers as the uninterrupted benchmark
        assert row["accuracy"] == expected[row["head"]]["accuracy"]
        assert row["metrics"] == expected[row["head"]]["metrics"]


@pytest.mark.slow
def test_finetune_protocol_smoke_starts_from_the_checkpoint(shared_data, tmp_path):
    rows, run = _smoke("cifar10_finetune_resnet20", shared_data, tmp_path)
    # the protocol's entries: the near set is the test part of the clean TinyImageNet-32 view, named by its file
    assert run["ood_datasets"] == ["tinyimagenet32_near.json", "mnist", "fashion_mnist", "notmnist"]
    assert list(rows) == ["source", "softmax", "isomax", "isomaxplus"]  # the checkpoint itself is a row
    for head in ("softmax", "isomax", "isomaxplus"):
        row = rows[head]
        assert set(row["metrics"]["msp"]) == {"tinyimagenet32_near", "mnist", "fashion_mnist", "notmnist"}
        # chosen on validation: the validation half of the test split against its jigsaw puzzles and the near
        # view's validation part (never its test part); the numbers come from the test half
        assert row["chosen_by"] == "validation" and row["selection"]["sets"] == ["jigsaw", "tinyimagenet32_near"]
        assert row["score"] == max(row["selection"]["aurocs"], key=lambda s: row["selection"]["aurocs"][s]["mean"])
        assert row["id_split"] == "test" and row["val_images"] == row["test_images"] == 500
    assert rows["source"]["accuracy"] == pytest.approx(0.81, abs=0.05)  # 81.0% on all 10,000; here 500 images
    for row in rows.values():  # 1 epoch on 1,000 images from an 81% checkpoint: still a trained model
        assert row["accuracy"] >= 0.6 and row["arch"].startswith("cifar_resnet20")
    summary = summarize([run])
    softmax_msp = next(e for e in summary if (e["head"], e["score"]) == ("softmax", "msp"))
    assert summary[0]["label"] == "Source (no fine-tune), MSP" and {"near mean", "far mean"} <= set(softmax_msp["metrics"])
    far = softmax_msp["metrics"]["far mean"]["auroc"]["mean"]
    assert far == pytest.approx(sum(_auroc(rows["softmax"], "msp", o) for o in run["ood_datasets"][1:]) / 3)


@pytest.mark.slow
def test_frozen_backbone_protocol_smoke_computes_features_once(shared_data, tmp_path):
    rows, _ = _smoke("cifar10_frozen_lite0", shared_data, tmp_path)
    cached_sets = []
    for path in (tmp_path / "cache").glob("*.safetensors"):
        with safetensors.safe_open(str(path), "pt") as handle:
            cached_sets.append(handle.metadata()["set"])
    # computed by the first head, read by the others: train, val and the 4 OOD test sets; the final evaluation's
    # jigsaw puzzles of val, the near set's validation part and the ID test split (its training rows for the bank,
    # without augmentation, are the train key)
    assert sorted(cached_sets) == sorted(["train", "val", "tinyimagenet32_near", "mnist", "fashion_mnist", "notmnist",
                                          "ood-val jigsaw", "ood-val tinyimagenet32_near", "test"])
    assert list(rows) == ["softmax", "isomax", "isomaxplus", "dismax"] and "mmles" in rows["dismax"]["metrics"]
    for row in rows.values():
        assert row["accuracy"] >= 0.4  # 1,000 training images, 2 head-only epochs on ImageNet features


def _fake_run(seed, accuracy, mds_auroc, softmax_rate=100.0, isomax_rate=99.0):
    metrics = {name: 0.5 for name in METRIC_NAMES}
    return dict(protocol={"name": "p", "id_dataset": "id", "heads": ["softmax", "isomaxplus"],
                          "ood_groups": {"far": ["a", "b"]}, "train": {"model": "m", "epochs": 1, "lr": 0.1}},
                seed=seed, hardware="cpu", id_dataset="id", ood_datasets=["a", "b"], rows=[
                    dict(head="softmax", arch="m", accuracy=accuracy, throughput=softmax_rate, train_seconds=20.0,
                         metrics={"msp": {"a": dict(metrics, auroc=0.7), "b": dict(metrics, auroc=0.6)}}),
                    dict(head="isomaxplus", arch="m_isomaxplus", accuracy=accuracy, throughput=isomax_rate,
                         train_seconds=40.0, metrics={"mds": {"a": dict(metrics, auroc=mds_auroc),
                                                              "b": dict(metrics, auroc=mds_auroc - 0.2)}})])


def test_summarize_takes_mean_and_sample_std_over_seeds_and_group_means():
    summary = summarize([_fake_run(1, 0.90, 0.80), _fake_run(0, 0.92, 0.90), _fake_run(2, 0.94, 1.00)])
    msp, mds = summary
    assert (msp["label"], mds["label"]) == ("SoftMax, MSP", "IsoMax+, MDS")
    assert mds["seeds"] == [0, 1, 2] and mds["columns"] == ["a", "b", "far mean"]
    assert mds["accuracy"]["mean"] == pytest.approx(0.92) and mds["accuracy"]["std"] == pytest.approx(0.02)
    assert mds["metrics"]["a"]["auroc"]["mean"] == pytest.approx(0.9)
    assert mds["metrics"]["a"]["auroc"]["std"] == pytest.approx(0.1)
    assert mds["metrics"]["far mean"]["auroc"]["mean"] == pytest.approx(0.8)  # mean of a and b, per run
    assert mds["throughput_ratio"]["mean"] == pytest.approx(0.99)
    assert mds["seconds"] == 120.0
    table = markdown_table(summary)
    assert "| IsoMax+, MDS | **92.00 ± 2.00** | **90.00 ± 10.00** |" in table and "| 99 (0.99x) |" in table
    assert "3 min of training epochs" in table
    lower_is_better = markdown_table(summary, metrics=("fpr_at_95_tpr",))
    assert "**50.00 ± 0.00**" in lower_is_better


def test_summary_json_is_one_row_a_line_with_floats_to_six_significant_digits():
    summary = summarize([_fake_run(1, 0.90, 0.80), _fake_run(0, 0.92, 0.90), _fake_run(2, 0.94, 1.00)])
    text = summary_json(summary)
    lines = text.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == len(summary) + 2
    assert [json.loads(line.rstrip(",")) for line in lines[1:-1]] == json.loads(text)
    (msp, mds) = json.loads(text)
    assert mds["accuracy"]["mean"] == 0.92 and summary[1]["accuracy"]["mean"] != 0.92  # fmean's 0.9200000000000002
    assert mds["metrics"]["far mean"]["auroc"]["mean"] == pytest.approx(0.8, abs=5e-7)
    assert (msp["label"], mds["seeds"], mds["columns"]) == ("SoftMax, MSP", [0, 1, 2], ["a", "b", "far mean"])
    assert len(str(json.loads(summary_json([{"x": 1 / 3}]))[0]["x"])) == len("0.333333")


def test_each_row_names_the_machine_it_trained_on():
    # a head added to finished seeds in a later session trains elsewhere: the report says which heads ran where
    runs = [_fake_run(seed, 0.9, 0.8) for seed in (0, 1)]
    for run in runs:
        run["hardware"] = "cpu B"  # the file's field: the latest writer's machine
        run["rows"][0]["hardware"] = "cpu A"
    summary = summarize(runs)
    assert [entry["hardware"] for entry in summary] == [["cpu A"], ["cpu B"]]  # a row without its own: the file's
    assert "; cpu A (SoftMax); cpu B (IsoMax+); " in markdown_table(summary)
    assert "; cpu; " in markdown_table(summarize([_fake_run(0, 0.9, 0.8)]))  # one machine: named once


def test_protocol_files_load_and_shrink(shared_data):
    for path in sorted(PROTOCOLS.glob("*.json")):
        protocol = load_protocol(path)
        assert protocol.name == path.stem and len(protocol.seeds) >= (5 if protocol.train.get("freeze_backbone") else 3)
        assert protocol.heads == ("softmax", "isomax", "isomaxplus", "dismax")
        # DisMax trains with its fractional probability regularisation wherever images are trained
        frozen = protocol.train.get("freeze_backbone")
        assert protocol.head_settings == ({} if frozen else {"dismax": {"dismax_fpr": True}})
        smoke = smoke_version(protocol)
        assert smoke.seeds == protocol.seeds[:1] and smoke.train["epochs"] < protocol.train["epochs"]
        assert smoke.train["train_limit"] <= 2000 and smoke.train["model"] == protocol.train["model"]
        assert missing_inputs(protocol, shared_data) == []


def test_ablation_protocols_load_and_differ_from_their_base_in_what_they_say(shared_data):
    # an ablation is named after its base protocol (the longest protocol name it starts with)
    bases = sorted((p.stem for p in PROTOCOLS.glob("*.json")), key=len, reverse=True)
    for path in sorted((PROTOCOLS / "ablations").glob("*.json")):
        ablation = load_protocol(path)
        base = load_protocol(PROTOCOLS / f"{next(b for b in bases if path.stem.startswith(b + '_'))}.json")
        changed = {k for k in set(base.train) | set(ablation.train) if base.train.get(k) != ablation.train.get(k)}
        assert changed and changed <= {"epochs", "weight_decay", "head_weight_decay", "smoothing"}, (path.name, changed)
        assert (ablation.id_dataset, ablation.ood_datasets) == (base.id_dataset, base.ood_datasets)
        assert missing_inputs(ablation, shared_data) == []


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"name": "x"}', "missing keys"),
    ('{"name": "x", "id_dataset": "a", "ood_datasets": [], "train": {"epoch": 2}}', "'train' must be"),
    ('{"name": "x", "id_dataset": "a", "ood_datasets": [], "train": {"model": "r"}, "heads": ["linear"]}',
     "'heads' must be"),
    ('{"name": "x", "id_dataset": "a", "ood_datasets": [], "train": {"model": "r", "entropic_scale": 5}}',
     "not a valid setting for every head.*entropic scale belongs to the IsoMax losses"),
    ('{"name": "x", "id_dataset": "a", "ood_datasets": ["b"], "ood_groups": {"near": ["c"]}, "train": {"model": "r"}}',
     "'ood_groups' must map"),
])
def test_bad_protocol_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_protocol(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_missing_checkpoint_is_named_before_anything_trains(shared_data, tmp_path):
    protocol = load_protocol(PROTOCOLS / "cifar10_finetune_resnet20.json")
    broken = dataclasses.replace(protocol, train=dict(protocol.train, checkpoint="checkpoints/nowhere.th"))
    with pytest.raises(FileNotFoundError, match=r"checkpoints/nowhere.th not found") as error:
        run_protocol(broken, shared_data, tmp_path / "results", tmp_path / "runs")
    assert "\n" not in str(error.value) and not (tmp_path / "runs").exists()


def test_finished_runs_are_read_back_and_other_definitions_refused(shared_data, tmp_path, monkeypatch):
    protocol = smoke_version(load_protocol(PROTOCOLS / "mnist.json"))
    saved = _fake_run(0, 0.9, 0.9)
    saved["protocol"] = protocol.to_json()
    saved["rows"][0]["head"], saved["rows"][1]["head"] = "softmax", "isomax"
    saved["rows"].append(dict(saved["rows"][1], head="isomaxplus"))
    for row in saved["rows"]:
        row["throughput"] = 1.0
    (tmp_path / protocol.name).mkdir()
    (tmp_path / protocol.name / "seed0.json").write_text(json.dumps(saved))
    from timm_isomax.benchmark import runner
    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert run_protocol(protocol, shared_data, output=tmp_path, runs=tmp_path / "runs") == [saved]
    changed = dataclasses.replace(protocol, train=dict(protocol.train, img_size=28))
    with pytest.raises(ValueError, match="different definition"):
        run_protocol(changed, shared_data, output=tmp_path, runs=tmp_path / "runs")


def test_a_protocol_that_gains_a_head_trains_only_that_head_into_the_finished_seeds(shared_data, tmp_path,
                                                                                   monkeypatch):
    # the mnist smoke protocol as it was before DisMax joined it
    protocol = dataclasses.replace(smoke_version(load_protocol(PROTOCOLS / "mnist.json")),
                                   heads=("softmax", "isomax", "isomaxplus"), head_settings={})
    saved = _fake_run(0, 0.9, 0.9)
    saved["protocol"] = dict(protocol.to_json(), heads=["softmax", "isomaxplus"])
    (tmp_path / protocol.name).mkdir()
    (tmp_path / protocol.name / "seed0.json").write_text(json.dumps(saved))
    from timm_isomax.benchmark import runner
    trained = []
    monkeypatch.setattr(runner, "train", lambda cfg: trained.append((cfg.head, cfg.dismax_fpr)))
    monkeypatch.setattr(runner, "result_row", lambda cfg: dict(head=cfg.head, accuracy=0.5, train_seconds=1.0, metrics={}))
    grown = dataclasses.replace(protocol, heads=("softmax", "isomaxplus", "dismax"),
                                head_settings={"dismax": {"dismax_fpr": True}})
    (run,) = run_protocol(grown, shared_data, output=tmp_path, runs=tmp_path / "runs", throughput_rounds=0)
    assert trained == [("dismax", True)] and [row["head"] for row in run["rows"]] == ["softmax", "isomaxplus", "dismax"]
    written = json.loads((tmp_path / protocol.name / "seed0.json").read_text())
    assert written["protocol"] == grown.to_json() and written["rows"][:2] == saved["rows"]
    # settings of a head that already has rows, or a head taken away: other definitions, refused
    rescored = dict(grown.head_settings, isomaxplus={"score": "msp"})
    for other in (dataclasses.replace(grown, head_settings=rescored), dataclasses.replace(protocol, heads=("softmax",))):
        with pytest.raises(ValueError, match="different definition"):
            run_protocol(other, shared_data, output=tmp_path, runs=tmp_path / "runs", throughput_rounds=0)


def test_benchmarks_of_other_heads_of_the_same_seed_may_run_side_by_side(shared_data, tmp_path, monkeypatch):
    # two benchmarks (--heads) fill one seed file at the same time: each re-reads it under a lock before it
    # adds a row, so neither overwrites the other's rows with its stale copy
    import threading

    from timm_isomax.benchmark import runner
    protocol = load_protocol(PROTOCOLS / "mnist.json")  # all four heads
    protocol = dataclasses.replace(protocol, seeds=(0,))
    trained = []

    def slow_train(cfg):  # the two "runs" overlap: each ends while the other is still training
        time.sleep({"softmax": 0.1, "isomaxplus": 0.3, "isomax": 0.5, "dismax": 0.4}[cfg.head])
        trained.append(cfg.head)
    monkeypatch.setattr(runner, "train", slow_train)
    monkeypatch.setattr(runner, "result_row", lambda cfg: dict(head=cfg.head, accuracy=0.5, train_seconds=1.0, metrics={}))
    measured = []
    monkeypatch.setattr(runner, "measure_throughput",
                        lambda run, *a: measured.append(sorted(r["head"] for r in run["rows"])) or
                        {r["head"]: 1.0 for r in run["rows"]})
    threads = [threading.Thread(target=run_protocol, args=(protocol, shared_data, tmp_path, tmp_path / "runs"),
                                kwargs=dict(heads=heads, log=lambda _: None))
               for heads in (["softmax", "isomax"], ["isomaxplus", "dismax"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run = json.loads((tmp_path / protocol.name / "seed0.json").read_text())
    assert sorted(trained) == sorted(protocol.heads)
    assert [row["head"] for row in run["rows"]] == list(protocol.heads)  # every row kept, in the protocol's order
    # timed once, side by side, by whichever benchmark added the last head
    assert measured == [sorted(protocol.heads)] and all(row["throughput"] == 1.0 for row in run["rows"])
    with pytest.raises(ValueError, match=r"has no head 'source' \(its heads: softmax, isomax"):
        run_protocol(protocol, shared_data, tmp_path, tmp_path / "runs", heads=["source"])
    # the command line names a head a protocol lacks before anything trains
    cli = subprocess.run([sys.executable, "-m", "timm_isomax", "benchmark", "--smoke", "mnist", "--heads", "dismax",
                          "--output", str(tmp_path / "smoke"), "--data-root", str(shared_data)],
                         cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
    assert "protocol 'mnist-smoke' has no head 'dismax' (its heads: softmax, isomax" in cli.stderr
    assert not (tmp_path / "smoke").exists()


def test_a_run_resumed_from_an_earlier_session_counts_that_sessions_epochs_in_its_time(shared_data, tmp_path,
                                                                                      monkeypatch):
    # a run stopped by a session's end and resumed in the next: the new process times only its own part, so
    # the epochs of the log it resumes count too (else the docs' "min of runs" undercounts the grid)
    from timm_isomax.benchmark import runner
    protocol = dataclasses.replace(smoke_version(load_protocol(PROTOCOLS / "mnist.json")),
                                   heads=("softmax", "isomax"), head_settings={})
    earlier = tmp_path / "runs" / protocol.name / "seed0" / "softmax" / "training" / "log.jsonl"
    earlier.parent.mkdir(parents=True)
    earlier.write_text(json.dumps({"epoch": 1, "seconds": 1000.0}) + "\n" + json.dumps({"epoch": 2, "seconds": 500.0}))
    monkeypatch.setattr(runner, "train", lambda cfg: None)
    monkeypatch.setattr(runner, "result_row", lambda cfg: dict(head=cfg.head, accuracy=0.5, train_seconds=1.0, metrics={}))
    (run,) = run_protocol(protocol, shared_data, tmp_path / "results", tmp_path / "runs", throughput_rounds=0,
                          log=lambda _: None)
    wall = {row["head"]: row["wall_seconds"] for row in run["rows"]}
    assert 1500.0 <= wall["softmax"] < 1510.0 and 0.0 <= wall["isomax"] < 10.0


def test_a_run_folder_of_other_settings_is_refused(shared_data, tmp_path, monkeypatch):
    protocol = smoke_version(load_protocol(PROTOCOLS / "mnist.json"))
    folder = tmp_path / "runs" / protocol.name / "seed0" / "softmax" / "training"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": "resnet10t", "lr": 123.0}))
    (folder / "checkpoint.pt").write_bytes(b"")  # the trainer checks the settings before reading it
    with pytest.raises(ValueError, match="holds a run made with other settings") as error:
        run_protocol(protocol, shared_data, tmp_path / "results", tmp_path / "runs")
    assert "\n" not in str(error.value)


def test_a_protocols_view_is_recorded_relative_to_the_repository_so_its_runs_resume_in_another_clone(
        shared_data, tmp_path, monkeypatch):
    from timm_isomax.benchmark.protocol import train_config
    from timm_isomax.train.state import changed_settings

    monkeypatch.chdir(REPO)
    protocol = load_protocol(PROTOCOLS / "cifar10_airbench.json")
    config = train_config(protocol, "isomaxplus", 0, shared_data, tmp_path / "runs", None)
    view = "benchmarks/views/tinyimagenet32_near.json"
    assert config.ood_datasets[0] == view and list(config.ood_val_datasets) == [view]
    # runs recorded before this named the view by its absolute path: the same file, so they still resume
    earlier = dict(config.to_json(), ood_datasets=[str(REPO / view), *config.ood_datasets[1:]],
                   ood_val_datasets=[str(REPO / view)], dataset=str(Path(config.dataset).resolve()))
    assert changed_settings(earlier, config.to_json()) == []
    other = dict(config.to_json(), dataset=str(shared_data / "mnist"), ood_val_datasets=[str(shared_data / "mnist")])
    assert changed_settings(earlier, other) == ["dataset", "ood_val_datasets"]
    # names that are no path here (a hub id) match only themselves
    assert changed_settings(dict(earlier, dataset="uoft-cs/cifar10"), dict(earlier, dataset="cifar10")) == ["dataset"]


def test_print_commands_spells_every_run_of_every_protocol_as_the_finetune_command_that_trains_it(
        shared_data, tmp_path, capsys, monkeypatch):
    import shlex

    from timm_isomax.benchmark.protocol import train_config
    from timm_isomax.cli import benchmark as cli
    from timm_isomax.train.arguments import settings_from_args

    monkeypatch.chdir(REPO)  # the views are named relative to the repository root, as the shared data is
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    assert cli.main(["--print-commands", "--data-root", str(shared_data), "--runs", str(runs),
                     "--feature-cache", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    protocols = [load_protocol(path) for path in sorted(PROTOCOLS.glob("*.json"))]
    expected = [train_config(protocol, head, seed, str(shared_data), runs, cache)
                for protocol in protocols for seed in protocol.seeds for head in protocol.heads]
    assert len(lines) == len(expected) and not (tmp_path / "runs").exists()  # nothing ran
    for line, settings in zip(lines, expected):
        command = shlex.split(line)
        assert command[:2] == ["timm-isomax", "finetune"] and settings_from_args(command[2:]) == settings, line
    airbench = next(line for line in lines if "cifar10_airbench/seed1/dismax" in line)
    for flag in ("--data-on-device", "--whiten-stem frozen", "--opt lookahead_sgd", "--dismax-fpr", "--head dismax",
                 "--ood-val-dataset benchmarks/views/tinyimagenet32_near.json", "--seed 1", "--tta flip-translate"):
        assert f" {flag} " in airbench


@pytest.mark.slow
def test_a_benchmark_run_is_published_by_reproduce_without_retraining(mnist_smoke, mnist_smoke_output, shared_data,
                                                                      tmp_path, capsys):
    # issue 30's hub model: the recipe is the benchmark's own command, so its run folders are the seed runs
    import shutil

    from timm_isomax.benchmark.protocol import train_config
    from timm_isomax.cli import reproduce
    from timm_isomax.train.arguments import args_from_settings

    protocol = smoke_version(load_protocol(PROTOCOLS / "mnist.json"))
    run_folder = mnist_smoke_output / "runs" / protocol.name / "seed0" / "isomaxplus"
    model = tmp_path / "model"
    settings = train_config(protocol, "isomaxplus", 0, shared_data, mnist_smoke_output / "runs", None)
    recipe = args_from_settings(dataclasses.replace(settings, output=str(model)))
    shutil.copytree(run_folder, tmp_path / "model.seed0")
    config = json.loads((REPO / "hub_configs" / "resnet10t_isomaxplus.mnist.json").read_text())
    config.update(source_checkpoint=str(model), finetune_args=recipe, metrics=None, published=None, seeds=[0],
                  ood_datasets=[dict(name="notmnist", path=str(shared_data / "notmnist"), split="test")],
                  dataset=dict(config["dataset"], path=str(shared_data / "mnist")), evaluation=dict(limit=200, batch_size=100))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert reproduce.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "seed 0 chosen" in out and "timm-isomax finetune" not in out  # measured, not retrained
    assert json.loads(path.read_text())["metrics"]["seed_choice"]["seed"] == 0
    assert (model / "model.safetensors").read_bytes() == (run_folder / "model.safetensors").read_bytes()
    # a recipe other than the run's is refused, not measured onto the card
    other = dict(config, finetune_args=[*recipe[:-2], "--lr", "0.5", *recipe[-2:]])
    path.write_text(json.dumps(other))
    assert reproduce.main([str(path)]) == 2
    assert "holds another recipe's run" in capsys.readouterr().err


def test_selection_margins_reads_how_far_each_validated_choice_led_from_the_committed_runs(capsys):
    import runpy

    runpy.run_path(str(REPO / "scripts" / "selection_margins.py"), run_name="not_main")["main"](
        ["cifar10_finetune_resnet56"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 4  # header, rule, one line per head
    # IsoMax+'s choice on ResNet-56 led by hundredths of a point: entropic twice, KNN once (the README quotes it)
    assert ("| cifar10_finetune_resnet56 | isomaxplus | 0: knn50 > knn10 by 0.02; 1: entropic > mds by 0.16; "
            "2: entropic > mds by 0.03 |") in lines


def test_the_hub_heads_choice_compares_heads_on_the_validation_sets_they_share_and_needs_every_seed(tmp_path):
    import runpy
    import shutil

    script = runpy.run_path(str(REPO / "scripts" / "hub_head_choice.py"), run_name="not_main")
    resnet56 = REPO / "benchmarks" / "results" / "cifar10_finetune_resnet56"
    aurocs, sets = script["validation_aurocs"](resnet56)
    # DisMax (trained on mosaics) chose without the puzzles, so the heads meet on the real near half alone
    assert sets == ["tinyimagenet32_near"] and sorted(aurocs["dismax"]) == [0, 1, 2]
    seed1 = json.loads((resnet56 / "seed1.json").read_text())
    isomaxplus = next(row for row in seed1["rows"] if row["head"] == "isomaxplus")
    assert aurocs["isomaxplus"][1] == isomaxplus["selection"]["aurocs"][isomaxplus["score"]]["tinyimagenet32_near"]
    assert script["choose_head"](aurocs) == "dismax"  # 87.08 against 86.40 (IsoMax+) and 82.21 (IsoMax)
    # a head short of a seed is not compared on other data
    shutil.copytree(resnet56, tmp_path / "partial")
    seed2 = json.loads((tmp_path / "partial" / "seed2.json").read_text())
    seed2["rows"] = [row for row in seed2["rows"] if row["head"] != "isomax"]
    (tmp_path / "partial" / "seed2.json").write_text(json.dumps(seed2))
    with pytest.raises(ValueError, match="seeds differ or are missing"):
        script["choose_head"](script["validation_aurocs"](tmp_path / "partial")[0])


def test_every_table_the_readme_and_docs_quote_is_the_report_of_the_committed_runs():
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    results = root / "benchmarks" / "results"
    runs = load_runs(results)
    assert headline_table(runs) + "\n" == (results / "headline.md").read_text()  # rerun --report-only
    assert summary_json(summarize(runs)) == (results / "summary.json").read_text()
    spec = importlib.util.spec_from_file_location("sync_docs", root / "scripts" / "sync_docs.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    tables = sync.tables()
    quoted = {}
    for path in sync.documents():
        text = path.read_text()
        quoted[path.name] = text.count("<!-- results: ") // 2
        assert fill_result_tables(text, tables, str(path)) == text, f"run scripts/sync_docs.py: {path.name} is stale"
    assert quoted["README.md"] >= 1 and quoted["benchmarks.md"] >= 7  # the headline; the protocols' tables


def test_quoted_tables_are_replaced_and_bad_markers_refused():
    text = "intro\n<!-- results: a -->\nold\n<!-- results: end -->\nmiddle\n<!-- results: b -->\n<!-- results: end -->\n"
    assert fill_result_tables(text, {"a": "| new |\n", "b": "B"}) == (
        "intro\n<!-- results: a -->\n| new |\n<!-- results: end -->\nmiddle\n<!-- results: b -->\nB\n<!-- results: end -->\n")
    with pytest.raises(ValueError, match="quotes c, which the runs have no table for"):
        fill_result_tables("<!-- results: c -->\n<!-- results: end -->", {"a": ""}, "x.md")
    with pytest.raises(ValueError, match="without its"):
        fill_result_tables("<!-- results: a -->\nno end", {"a": ""}, "x.md")


def test_the_headline_table_adds_dismax_only_on_the_seeds_it_compares():
    def with_dismax(run, auroc):
        row = dict(run["rows"][1], head="dismax", arch="m_dismax",
                   metrics={"mmles": {ood: dict(m, auroc=auroc) for ood, m in run["rows"][1]["metrics"]["mds"].items()}})
        protocol = dict(run["protocol"], heads=["softmax", "isomaxplus", "dismax"])
        return dict(run, protocol=protocol, rows=run["rows"] + [row])
    runs = [with_dismax(_fake_run(0, 0.9, 0.8), 0.95), _fake_run(1, 0.9, 0.8)]
    far = next(line for line in headline_table(runs).splitlines() if "| far mean |" in line)
    assert far.endswith("| not run | not run | 1 of 2 seeds | 1 of 2 seeds |")  # DisMax on seed 0 only
    runs[1] = with_dismax(runs[1], 0.95)
    far = next(line for line in headline_table(runs).splitlines() if "| far mean |" in line)
    # far mean of DisMax: (0.95 + 0.95) / 2, bold as the row's best; MDS: (0.8 + 0.6) / 2
    assert far.endswith("| 70.00 ± 0.00 | +5.00 | not run | not run | 90.00 ± 0.00 | **95.00 ± 0.00** |")
    # the per-set version (what a document quotes as "<protocol>.per_set"): every OOD set, then the group mean
    per_set = headline_table(runs, protocol="p", every_set=True).splitlines()[2:]
    assert [line.split(" | ")[2] for line in per_set] == ["a", "b", "far mean"]
    assert per_set[1].split(" | ")[5:8] == ["60.00 ± 0.00 (MSP)", "60.00 ± 0.00", "+0.00"]  # b: MDS 0.8 - 0.2
    assert headline_table(runs, protocol="other").count("\n") == 1  # another protocol's runs: no rows
    assert "p.per_set" in result_tables(runs)


def test_test_time_augmented_numbers_are_rows_of_their_own_that_no_headline_picks():
    # the committed ResNet-20 runs (validated, every score), each given a tta record: its logit scores' metrics
    # raised by a known amount, as if TTA helped every score (the plain numbers must stay what they were)
    runs = [run for run in load_runs(REPO / "benchmarks" / "results" / "cifar10_finetune_resnet20")
            if all(row["head"] != "softmax" or "selection" in row for row in run["rows"])]
    runs = [run for run in runs if any(row["head"] == "softmax" for row in run["rows"])]
    plain_summary = summarize(runs)
    boosted = json.loads(json.dumps(runs))
    for run in boosted:
        for row in run["rows"]:
            metrics = {score: {ood: dict(values, auroc=min(1.0, values["auroc"] + 0.05)) for ood, values in per_set.items()}
                       for score, per_set in row["metrics"].items() if score in ("msp", "energy", "mds")}
            row["tta"] = dict(level="flip-translate", accuracy=row["accuracy"] + 0.01, metrics=metrics)
    summary = summarize(boosted)
    tta = {(e["head"], e["score"]): e for e in summary if e.get("tta")}
    plain = {(e["head"], e["score"]): e for e in plain_summary}
    assert ("softmax", "msp" + TTA_SUFFIX) in tta and ("isomaxplus", "mds" + TTA_SUFFIX) in tta
    assert all(score.removesuffix(TTA_SUFFIX) in ("msp", "energy", "mds") for _, score in tta)
    softmax_msp = tta[("softmax", "msp" + TTA_SUFFIX)]
    assert softmax_msp["label"] == "SoftMax, MSP, TTA flip-translate"
    assert softmax_msp["accuracy"]["mean"] == pytest.approx(plain[("softmax", "msp")]["accuracy"]["mean"] + 0.01)
    assert softmax_msp["metrics"]["near mean"]["auroc"]["mean"] == pytest.approx(
        min(1.0, plain[("softmax", "msp")]["metrics"]["near mean"]["auroc"]["mean"] + 0.05), abs=1e-9)
    # every plain entry is unchanged, and the headline and its oracle read only them
    assert [e for e in summary if not e.get("tta")] == plain_summary
    assert validated_headline_table(boosted) == validated_headline_table(runs)
    assert validated_headline_table(boosted, oracle=True) == validated_headline_table(runs, oracle=True)
    assert "SoftMax, MSP, TTA flip-translate" in markdown_table(summary)

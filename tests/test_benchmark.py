"""The OOD benchmark (timm_isomax.benchmark, scripts/benchmark_ood.py): protocol files, resumable seed runs,
aggregation over seeds, and the smoke version of every shipped protocol on the real shared datasets."""
import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch

import timm_isomax  # noqa: F401
from timm_isomax import benchmark
from timm_isomax.benchmark import load_protocol, markdown_table, run_protocol, smoke_version, summarize
from timm_isomax.experiment import Recipe, _parameter_groups, random_crop_flip
from timm_isomax.metrics import METRIC_NAMES

PROTOCOLS = Path(__file__).resolve().parents[1] / "benchmarks" / "protocols"


def _smoke(name: str, shared_data: Path, output: Path):
    protocol = smoke_version(load_protocol(PROTOCOLS / f"{name}.json"))
    (run,) = run_protocol(protocol, shared_data, output, throughput_rounds=2, log=lambda _: None)
    return {row["head"]: row for row in run["rows"]}, run


def _auroc(row, score, ood):
    return row["metrics"][score][ood]["auroc"]


@pytest.mark.slow
def test_mnist_smoke_isomax_heads_beat_every_softmax_score(shared_data, tmp_path):
    rows, run = _smoke("mnist", shared_data, tmp_path)
    assert run["ood_datasets"] == ["fashion_mnist", "notmnist"]
    for ood in run["ood_datasets"]:
        best_softmax = max(_auroc(rows["softmax"], score, ood) for score in ("msp", "max_logit", "energy", "entropic"))
        # 2,000 images, 2 epochs: SoftMax scores 0.31-0.66, IsoMax+ MDS 0.88-0.91, IsoMax 0.97
        assert _auroc(rows["isomaxplus"], "mds", ood) >= 0.8 > best_softmax + 0.1
        assert _auroc(rows["isomax"], "entropic", ood) >= 0.8
    for row in rows.values():
        assert row["accuracy"] >= 0.88
        assert 0.5 < row["throughput"] / rows["softmax"]["throughput"] < 2.0
        metrics = row["metrics"][next(iter(row["metrics"]))]["notmnist"]
        assert metrics["tnr_at_95_tpr"] == pytest.approx(1 - metrics["fpr_at_95_tpr"])


@pytest.mark.slow
def test_fashion_mnist_smoke(shared_data, tmp_path):
    rows, run = _smoke("fashion_mnist", shared_data, tmp_path)
    assert run["ood_datasets"] == ["mnist", "notmnist"]
    assert all(row["accuracy"] >= 0.7 for row in rows.values())
    # notMNIST is far from clothes: both isotropic heads detect it well even after 2 short epochs
    assert _auroc(rows["isomaxplus"], "mds", "notmnist") >= 0.75
    assert _auroc(rows["isomax"], "entropic", "notmnist") >= 0.85


@pytest.mark.slow
def test_cifar10_smoke_trains_with_augmentation(shared_data, tmp_path):
    rows, run = _smoke("cifar10", shared_data, tmp_path)
    assert run["protocol"]["recipe"]["crop_padding"] == 4 and run["protocol"]["recipe"]["hflip"]
    assert run["ood_datasets"] == ["tinyimagenet32"]
    for row in rows.values():
        assert row["accuracy"] >= 0.13  # 2,000 images, 2 epochs: above the 10% of chance, far from trained
        assert row["arch"].startswith("cifar_resnet20")


def _fake_run(seed, accuracy, mds_auroc, softmax_rate=100.0, isomax_rate=99.0):
    metrics = {name: 0.5 for name in METRIC_NAMES}
    return dict(protocol={"name": "p", "recipe": {"epochs": 1, "batch_size": 8, "lr": 0.1}}, seed=seed, hardware="cpu",
                seconds=60.0, id_dataset="id", ood_datasets=["ood"], rows=[
                    dict(head="softmax", arch="a", accuracy=accuracy, throughput=softmax_rate,
                         metrics={"msp": {"ood": dict(metrics, auroc=0.7)}}),
                    dict(head="isomaxplus", arch="a_isomaxplus", accuracy=accuracy, throughput=isomax_rate,
                         metrics={"mds": {"ood": dict(metrics, auroc=mds_auroc)}})])


def test_summarize_takes_mean_and_sample_std_over_seeds():
    summary = summarize([_fake_run(1, 0.90, 0.80), _fake_run(0, 0.92, 0.90), _fake_run(2, 0.94, 1.00)])
    msp, mds = summary
    assert (msp["label"], mds["label"]) == ("SoftMax, MSP", "IsoMax+, MDS")
    assert mds["seeds"] == [0, 1, 2]
    assert mds["accuracy"]["mean"] == pytest.approx(0.92) and mds["accuracy"]["std"] == pytest.approx(0.02)
    assert mds["metrics"]["ood"]["auroc"]["mean"] == pytest.approx(0.9)
    assert mds["metrics"]["ood"]["auroc"]["std"] == pytest.approx(0.1)
    assert mds["throughput_ratio"]["mean"] == pytest.approx(0.99)
    assert mds["seconds"] == 180.0
    table = markdown_table(summary)
    assert "| IsoMax+, MDS | **92.00 ± 2.00** | **90.00 ± 10.00** |" in table and "| 99 (0.99x) |" in table


def test_protocol_files_load_and_shrink():
    for path in sorted(PROTOCOLS.glob("*.json")):
        protocol = load_protocol(path)
        assert protocol.name == path.stem and len(protocol.seeds) >= 3
        assert protocol.heads == ("softmax", "isomax", "isomaxplus")
        smoke = smoke_version(protocol)
        assert smoke.seeds == protocol.seeds[:1] and smoke.recipe.epochs < protocol.recipe.epochs
        assert smoke.train_limit <= 2000 and smoke.arch == protocol.arch


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"name": "x"}', "missing keys"),
    ('{"name": "x", "id_dataset": "a", "ood_datasets": [], "arch": "r", "recipe": {"epoch": 2}}', "'recipe' must be"),
    ('{"name": "x", "id_dataset": "a", "ood_datasets": [], "arch": "r", "recipe": {}, "heads": ["linear"]}',
     "'heads' must be"),
])
def test_bad_protocol_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_protocol(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_finished_seeds_are_read_back_and_other_definitions_refused(tmp_path, monkeypatch):
    protocol = smoke_version(load_protocol(PROTOCOLS / "mnist.json"))
    saved = _fake_run(0, 0.9, 0.9)
    saved["protocol"] = protocol.to_json()
    (tmp_path / protocol.name).mkdir()
    (tmp_path / protocol.name / "seed0.json").write_text(json.dumps(saved))
    monkeypatch.setattr(benchmark, "build_protocol", lambda *a, **k: pytest.fail("a finished seed was retrained"))
    assert run_protocol(protocol, output=tmp_path) == [json.loads(json.dumps(saved))]
    changed = dataclasses.replace(protocol, img_size=28)
    with pytest.raises(ValueError, match="different definition"):
        run_protocol(changed, output=tmp_path)


def test_random_crop_flip_takes_windows_of_the_padded_image():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    unchanged = random_crop_flip(images, 0, False, torch.Generator().manual_seed(0))
    assert torch.equal(unchanged, images)
    padded = torch.nn.functional.pad(images, (2,) * 4)
    seen_offsets, seen_flips = set(), set()
    for seed in range(20):
        out = random_crop_flip(images, 2, True, torch.Generator().manual_seed(seed))
        for b in range(2):
            matches = [(t, l, flip) for t in range(5) for l in range(5) for flip in (False, True)
                       if torch.equal(out[b], (padded[b, :, t:t + 6, l:l + 6].flip(2) if flip
                                               else padded[b, :, t:t + 6, l:l + 6]))]
            assert len(matches) == 1
            seen_offsets.add(matches[0][:2])
            seen_flips.add(matches[0][2])
    assert len(seen_offsets) > 10 and seen_flips == {False, True}


def test_head_weight_decay_applies_to_the_isomax_head_only():
    model = timm.create_model("resnet10t_isomaxplus", num_classes=3)
    backbone, head = _parameter_groups(model, Recipe(head_weight_decay=0.0))
    assert {id(p) for p in head["params"]} == {id(model.head.prototypes), id(model.head.distance_scale)}
    assert head["weight_decay"] == 0.0 and "weight_decay" not in backbone
    assert len(backbone["params"]) + 2 == len(list(model.parameters()))
    assert len(_parameter_groups(model, Recipe())) == 1
    assert len(_parameter_groups(timm.create_model("resnet10t", num_classes=3), Recipe(head_weight_decay=0.0))) == 1

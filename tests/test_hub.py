"""Hub-format folders and loading without a server: local-dir:, hf-hub: through a pre-built HF cache, published
registry tags, hub configs, the model card and its model-index metadata, and what push refuses before
contacting anyone. Push and download over HTTP, against a Hub-protocol server: tests/test_hub_http.py."""
import dataclasses
import json
import shutil
import time
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch

import timm_isomax
from timm_isomax.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, push_to_hub, render_model_card
from timm_isomax.hub_config import load_hub_config, packaged_hub_configs
from timm_isomax.provenance import recorded_provenance, weights_sha256

from .hub_models import (ARCH, measured_hub_config, other_folder, other_weights, saved_model,
                         swapped_weights_file)

ROOT = Path(__file__).resolve().parents[1]
CACHED_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    return saved_model(folder), folder


def _install_in_hf_cache(cache: Path, repo_id: str, folder: Path) -> None:
    # the layout huggingface_hub's downloads leave: blobs behind snapshots/<commit>, refs/main -> commit
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = CACHED_COMMIT
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy(folder / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty HF cache with offline mode on. huggingface_hub reads both settings at import, so the
    module constants are patched as well as the environment."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_local_dir_round_trip_gives_identical_logits(saved, images):
    model, folder = saved
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_hf_hub_name_loads_through_the_offline_cache(saved, images, offline_cache):
    model, folder = saved
    _install_in_hf_cache(offline_cache, "test-org/tiny_isomaxplus", folder)
    loaded = timm.create_model("hf-hub:test-org/tiny_isomaxplus", pretrained=True).eval()
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    assert loaded.pretrained_cfg["label_names"][:2] == ["c0", "c1"] or loaded.pretrained_cfg["label_names"][:2] == ("c0", "c1")

    # another class count: the backbone is kept, the head starts fresh
    five = timm.create_model("hf-hub:test-org/tiny_isomaxplus", pretrained=True, num_classes=5).eval()
    assert five.num_classes == 5
    torch.testing.assert_close(five.backbone(images), model.backbone(images), rtol=0, atol=0)

    features = timm.create_model("hf-hub:test-org/tiny_isomaxplus", pretrained=True, features_only=True).eval()
    torch.testing.assert_close(features(images)[-1], model.backbone.forward_features(images), rtol=0, atol=0)


def test_published_tag_loads_isomax_weights_from_its_pushed_commit(tmp_path, images, offline_cache):
    model = saved_model(tmp_path / "published", tag="pushed")
    config = dataclasses.replace(measured_hub_config(tmp_path / "published", tmp_path), tag="pushed",
                                 published=dict(revision=CACHED_COMMIT, weights_sha256="0" * 64))
    _install_in_hf_cache(offline_cache, config.repo_id, tmp_path / "published")
    assert timm_isomax.register_hub_config(config) == f"{ARCH}.pushed"
    assert f"{ARCH}.pushed" in timm.list_pretrained(f"{ARCH}.*")
    loaded = timm.create_model(f"{ARCH}.pushed", pretrained=True).eval()  # not the base's SoftMax weights
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    assert loaded.pretrained_cfg["hf_hub_id"] == f"{config.repo_id}@{CACHED_COMMIT}"  # the pushed commit, pinned
    # without pretrained weights the tag still builds (the base's default cfg, not an unknown base tag)
    assert timm.create_model(f"{ARCH}.pushed").num_classes == 10
    # the mirrored base tags are untouched: the untagged name keeps the base's default tag
    assert timm.create_model(ARCH).pretrained_cfg["tag"] == timm.models.get_pretrained_cfg("resnet10t").tag


def test_an_unpublished_tag_is_not_listed_and_says_so_in_one_line_at_once(offline_cache):
    config = next(c for c in packaged_hub_configs() if c.name == f"{ARCH}.mnist")
    assert not config.is_published and config.name not in timm.list_pretrained(f"{ARCH}.*")
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="no published weights yet.*timm-isomax reproduce") as error:
        timm.create_model(config.name, pretrained=True)
    assert "\n" not in str(error.value) and config.repo_id in str(error.value)
    assert time.perf_counter() - started < 30  # no retries against a repo that does not exist (was ~47 s)
    assert timm.create_model(config.name).num_classes == len(config.label_names)  # builds without weights


@pytest.mark.parametrize("offline", [True, False])
def test_hub_weights_missing_from_the_cache_fail_at_once_in_one_line_naming_the_repo(tmp_path, monkeypatch, offline):
    # offline=False: no HF_HUB_OFFLINE, so huggingface_hub would spend ~25 s retrying an unreachable Hub
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    saved_model(tmp_path / "published", tag="elsewhere")
    config = dataclasses.replace(measured_hub_config(tmp_path / "published", tmp_path), tag="elsewhere",
                                 repo_id="test-org/never-pushed", published=dict(revision=None, weights_sha256="0" * 64))
    timm_isomax.register_hub_config(config)
    for name in (f"{ARCH}.elsewhere", "hf-hub:test-org/never-pushed"):
        started = time.perf_counter()
        with pytest.raises(FileNotFoundError, match="test-org/never-pushed") as error:
            timm_isomax.create_model(name, pretrained=True)
        assert "\n" not in str(error.value) and "local-dir:" in str(error.value)
        assert time.perf_counter() - started < 20
    assert huggingface_hub.constants.HF_HUB_OFFLINE is offline  # the switch is restored


def test_timm_weights_missing_from_the_cache_fail_at_once_in_one_line_naming_the_repo(tmp_path, monkeypatch, capsys):
    # a plain timm tag (and an IsoMax name mirroring it) downloads through timm: no ~50 s of retries either
    from timm_isomax.cli.finetune import main as finetune_main

    cache = tmp_path / "empty_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    started = time.perf_counter()
    for name in ("resnet18.a1_in1k", "resnet18_isomaxplus.a1_in1k"):
        with pytest.raises(FileNotFoundError, match=f"{name}: timm/resnet18.a1_in1k is not in the local Hugging "
                                                    f"Face cache.*--checkpoint FILE") as error:
            timm_isomax.create_model(name, pretrained=True)
        assert "\n" not in str(error.value)
    assert finetune_main(["--model", "resnet18.a1_in1k", "--dataset", "sklearn-digits", "--output", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "timm/resnet18.a1_in1k is not in the local Hugging Face cache" in error and error.count("\n") == 1
    assert time.perf_counter() - started < 30  # was 27-55 s for each
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # the switch is restored


def test_packaged_hub_configs_ship_in_the_package_and_register():
    configs = packaged_hub_configs()
    assert {c.name for c in configs} >= {f"{ARCH}.mnist", f"{ARCH}.fashion_mnist", "cifar_airnet_isomax.cifar10"}
    registered = set(timm.list_models("*_isomax*", include_tags=True))  # IsoMax and IsoMax+ names
    published = set(timm.list_pretrained())
    for config in configs:
        assert config.name in registered and (config.name in published) == config.is_published
        assert config.path.parent.name == "hub_configs"


def test_invalid_hub_config_gives_a_one_line_error(tmp_path):
    config = packaged_hub_configs()[0]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**config.to_json(), "repo_id": "no-slash"}))
    with pytest.raises(ValueError, match=r"repo_id must be 'ORG/NAME'") as error:
        load_hub_config(path)
    assert "\n" not in str(error.value)
    path.write_text(json.dumps({**config.to_json(), "extra": 1}))
    with pytest.raises(ValueError, match="unknown field"):
        load_hub_config(path)


# --- publishing -----------------------------------------------------------------------------------


def test_model_card_has_the_required_fields(saved, tmp_path):
    config = measured_hub_config(saved[1], tmp_path)
    card = render_model_card(config)
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    for line in ("library_name: timm", "license: apache-2.0", "- image-classification", "- timm",
                 "- out-of-distribution-detection", "- isomax", "- ylecun/mnist", "- accuracy", "model-index:"):
        assert line in front.splitlines()
    assert "import timm_isomax" in body and "registers" in body
    # the wheel registers the architectures on `import timm`: the card no longer calls the import needed
    assert "(needed)" not in body and "the wheel also does on `import timm`" in body
    assert "its wheel registers" in body and "from a source checkout" in body
    assert "Entropic Out-of-Distribution Detection" in body and "2105.14399" in body
    assert "| notmnist |" in body and "FPR@95 (ID+)" in body and "AUROC, ID positive" in body
    assert "print(p.label, p.score, p.is_ood)" in body  # a threshold is recorded: the snippet flags OOD images


def test_a_card_says_when_validation_was_the_test_data(saved, tmp_path):
    config = measured_hub_config(saved[1], tmp_path)
    assert "Validation data:" not in render_model_card(config)  # the recipe holds out its own validation
    named = dataclasses.replace(config, finetune_args=[*config.finetune_args, "--val-split", "test"])
    assert ("Validation data: validation is the 'test' split (--val-split test), so the deployment threshold and the "
            "monitoring during training saw the test data") in render_model_card(named)
    copied = "validation split 'validation' holds 100 of the 100 images of the 'test' split"  # the trainer's record
    recorded = dataclasses.replace(config, metrics=dict(config.metrics, validation_is_test=copied))
    assert f"Validation data: {copied}, so" in render_model_card(recorded)


def test_a_dismax_hub_config_gets_a_dismax_card_and_other_suffixes_are_refused(saved, tmp_path):
    config = measured_hub_config(saved[1], tmp_path)
    path = tmp_path / "dismax.json"
    path.write_text(json.dumps({**config.to_json(), "architecture": "resnet10t_dismax", "repo_id": "test-org/d"}))
    dismax = load_hub_config(path)
    card = render_model_card(dismax)
    assert dismax.head_type == "dismax" and "- dismax" in card.split("---\n")[1].splitlines()
    assert "Head: DisMax;" in card and "mean distance" in card and "2205.05874" in card
    assert "Head: IsoMax+;" in render_model_card(config) and "2205.05874" not in render_model_card(config)
    for wrong in ("resnet10t", "resnet10t_dismax.tag"):
        path.write_text(json.dumps({**config.to_json(), "architecture": wrong}))
        with pytest.raises(ValueError, match="architecture must be an IsoMax name '<arch>_isomaxplus' or") as error:
            load_hub_config(path)
        assert "\n" not in str(error.value)


def _expected_index(config):
    # what the card must say, straight from the hub config's measured numbers (%, 2 decimals)
    metrics = config.metrics
    expected = {(config.dataset.get("hub_id") or config.dataset["name"], "accuracy"): round(100 * metrics["accuracy"], 2)}
    for ood in config.ood_datasets:
        for key, metric_type in (("auroc", "roc_auc"), ("fpr_at_95_tpr", "fpr_at_95_tpr")):
            expected[(ood.get("hub_id") or ood["name"], metric_type)] = round(100 * metrics["ood"][ood["name"]][key], 2)
    return expected


@pytest.mark.parametrize("name", [c.name for c in packaged_hub_configs()])
def test_every_hub_config_card_carries_model_index_metrics_that_parse_back(name, tmp_path):
    from huggingface_hub import ModelCard, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from .hub_server import card_metadata_errors

    config = next(c for c in packaged_hub_configs() if c.name == name)
    assert config.metrics, f"{config.path} is not measured"
    path = tmp_path / CARD_NAME
    path.write_text(render_model_card(config))
    # huggingface_hub's three readers: the card object, the raw metadata, the model-index parser
    card = ModelCard.load(path)
    index = metadata_load(path)["model-index"]
    model_name, results = model_index_to_eval_results(index)
    assert model_name == card.data.model_name == config.name
    parsed = {(r.dataset_type, r.metric_type): r.metric_value for r in results}
    assert parsed == {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert parsed == _expected_index(config)
    assert all(r.task_type == "image-classification" and r.dataset_split for r in results)
    names = {r.metric_type: r.metric_name for r in results}
    assert "ID positive" in names["fpr_at_95_tpr"] and "95%" in names["fpr_at_95_tpr"]
    assert "ID positive" in names["roc_auc"] and "AUROC" in names["roc_auc"]
    # the OOD rows say which set was in- and which out-of-distribution, and with which score
    ood_rows = [r for r in results if r.metric_type != "accuracy"]
    assert all("(OOD)" in r.dataset_name and "(ID)" in r.dataset_name and config.metrics["score"] in r.task_name
               for r in ood_rows)
    assert card_metadata_errors(path.read_text()) == []  # the test Hub's own schema check agrees
    # the table in the body prints the same numbers
    for (_, metric_type), value in parsed.items():
        assert f"{value:.2f}" in card.text


def test_an_unmeasured_card_has_no_model_index_and_a_broken_one_is_caught(saved, tmp_path):
    from .hub_server import card_metadata_errors

    config = dataclasses.replace(measured_hub_config(saved[1], tmp_path), metrics=None)
    card = render_model_card(config)
    assert "model-index" not in card and card_metadata_errors(card) == []
    # no threshold recorded: the snippet prints scores, not is_ood (which would raise "no OOD threshold")
    assert "p.is_ood" not in card and "timm_isomax.ood_scores(model, [image])" in card and "fit_ood_threshold" in card
    # the check can fail: a metric without a value, as a hand-edited card might have it
    broken = render_model_card(measured_hub_config(saved[1], tmp_path)).replace("value: 90.0", "value: null", 1)
    assert "value: null" in broken
    assert any("value" in e for e in card_metadata_errors(broken))


def test_push_refuses_unmeasured_config(saved, tmp_path):
    config = dataclasses.replace(measured_hub_config(saved[1], tmp_path), metrics=None)
    with pytest.raises(ValueError, match="timm-isomax reproduce"):
        push_to_hub(saved[1], config, dry_run=True, dry_run_dir=tmp_path / "dry")


def test_saved_folders_record_the_hash_of_their_weights_and_a_re_export_keeps_it(saved, tmp_path):
    model, folder = saved
    recorded = recorded_provenance(json.loads((folder / CONFIG_NAME).read_text()))["weights_sha256"]
    assert recorded == weights_sha256(folder / WEIGHTS_NAME) == weights_sha256(model.state_dict())
    push_to_hub(folder, measured_hub_config(folder, tmp_path), dry_run=True, dry_run_dir=tmp_path / "dry")
    assert weights_sha256(tmp_path / "dry" / WEIGHTS_NAME) == recorded  # the tensors, not the file's header
    nudged = {k: v.clone() for k, v in model.state_dict().items()}
    nudged["head.prototypes"][0, 0] += 1e-3
    assert weights_sha256(nudged) != recorded


@pytest.mark.parametrize("name, change, message", [
    ("other_weights", other_weights, "not the ones .* were measured on"),
    ("swapped_file", swapped_weights_file, "not the file its config.json was saved with"),
    ("other_labels", lambda folder, config: config.update(label_names=[f"d{i}" for i in range(10)]), "label names"),
    ("other_size", lambda folder, config: config["pretrained_cfg"].update(input_size=[3, 64, 64]), "input_size"),
    ("other_arch", lambda folder, config: config.update(architecture="resnet18_isomaxplus"), "resnet18_isomaxplus model"),
])
def test_push_refuses_a_folder_that_is_not_the_model_the_card_describes(saved, tmp_path, name, change, message):
    # the case that wrote a Fashion-MNIST model under the MNIST card: nothing compared them. The same check
    # runs before any contact with the Hub (test_hub_http.py: not one request reaches the server)
    config = measured_hub_config(saved[1], tmp_path)
    folder = other_folder(saved, tmp_path, name, change)
    with pytest.raises(ValueError, match=f"^refusing to publish: .*{message}") as error:
        push_to_hub(folder, config, dry_run=True, dry_run_dir=tmp_path / "dry")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "dry").exists()  # refused before writing


def test_push_refuses_a_config_measured_before_hashes_were_recorded(saved, tmp_path):
    config = measured_hub_config(saved[1], tmp_path)
    config.metrics.pop("weights_sha256")
    with pytest.raises(ValueError, match="records no weights hash.*reproduce --evaluate-only"):
        push_to_hub(saved[1], config, dry_run=True, dry_run_dir=tmp_path / "dry")


def test_create_model_names_the_missing_import_for_unknown_saved_architectures(saved, tmp_path):
    folder = tmp_path / "unknown_arch"
    shutil.copytree(saved[1], folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "architecture": "myarch_isomaxplus"}))
    with pytest.raises(ValueError, match="import timm_isomax"):
        timm_isomax.create_model(f"local-dir:{folder}", pretrained=True)


def test_written_files_follow_the_umask_not_the_private_temporary_mode(tmp_path):
    import os
    import stat

    from timm_isomax._io import atomic_write

    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "shared.json", lambda tmp: Path(tmp).write_text("{}"))
        assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644  # was 0o600
        os.umask(0o077)
        atomic_write(tmp_path / "private.json", lambda tmp: Path(tmp).write_text("{}"))
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(previous)

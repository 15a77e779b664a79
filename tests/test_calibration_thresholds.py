"""Deployment thresholds, is_ood / predict, and temperature calibration (synthetic and on a real MNIST model)."""
import json
import numpy as np
import pytest
import timm
import torch

from timm_isomax.calibration import (
    calibrate_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from timm_isomax.data import ImageDataset, load_image_dataset
from timm_isomax.models.inference import predict_logits
from timm_isomax.data import model_transform
from timm_isomax.hub import read_config, save_pretrained
from timm_isomax.metrics import roc_curve
from timm_isomax.ood import fit_ood_threshold, fit_threshold, is_ood, ood_scores, predict
from timm_isomax.scores import mds

from .mnist_models import LABEL_NAMES, one_thread, trained_mnist_models


# --- fit_threshold --------------------------------------------------------------------------------
def test_fit_threshold_hand_cases_and_ties():
    assert fit_threshold([5.0, 4.0, 3.0, 2.0, 1.0], tpr=0.6) == 3.0
    assert fit_threshold(np.arange(1.0, 21.0)) == 2.0  # 19 of 20 = 95% accepted
    assert fit_threshold(np.arange(1.0, 21.0), tpr=1.0) == 1.0
    assert fit_threshold([7.0] * 10, tpr=0.5) == 7.0  # all tied: the tie is accepted whole (100% >= 50%)
    assert fit_threshold([4.0, 3.0, 3.0, 3.0, 1.0], tpr=0.5) == 3.0  # the tie at the cut: 80% accepted
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        fit_threshold([1.0, 2.0], tpr=0.0)
    with pytest.raises(ValueError, match="empty"):
        fit_threshold([])


@pytest.mark.parametrize("seed", range(6))
def test_fit_threshold_is_the_roc_operating_point(seed):
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(size=int(rng.integers(1, 500)))
    if seed % 2:
        id_scores = np.round(id_scores, 1)
    tpr_level = [0.95, 0.9, 0.5][seed % 3]
    threshold = fit_threshold(id_scores, tpr_level)
    accepted = np.mean(id_scores >= threshold)
    assert accepted >= tpr_level
    higher = id_scores[id_scores > threshold]
    assert higher.size == 0 or np.mean(id_scores >= higher.min()) < tpr_level  # the largest such threshold
    # the threshold of the first ROC point with TPR >= level, whatever the OOD scores
    _, tpr, thresholds = roc_curve(id_scores, rng.normal(size=50))
    assert threshold == thresholds[np.argmax(tpr >= tpr_level)]


# --- calibration on synthetic logits --------------------------------------------------------------
def test_ece_and_nll_hand_cases():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    confidence = torch.softmax(logits.double(), dim=1).max(dim=1).values
    # two samples in two different bins: |1 - c1| / 2 + |0 - c2| / 2
    expected = ((1 - confidence[0]) + confidence[1]).item() / 2
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-12)
    # the same confidence in one bin: gaps of opposite sign cancel inside the bin
    assert expected_calibration_error(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1])) == pytest.approx(
        abs(0.5 - torch.sigmoid(torch.tensor(1.0, dtype=torch.float64)).item()))
    assert negative_log_likelihood(logits, labels, temperature=2.0) == pytest.approx(
        torch.nn.functional.cross_entropy(logits.double() / 2, labels).item())
    with pytest.raises(ValueError, match="class indices"):
        expected_calibration_error(logits, torch.tensor([0, -1]))


def test_fit_temperature_recovers_the_temperature_of_the_labels():
    generator = torch.Generator().manual_seed(0)
    raw = 3.0 * torch.randn(20000, 10, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(raw / 2.5, dim=1), 1, generator=generator).squeeze(1)
    temperature = fit_temperature(raw, labels)
    assert temperature == pytest.approx(2.5, rel=0.03)
    # logits produced at temperature 4 are raw / 4: the fitted temperature is still absolute
    assert fit_temperature(raw / 4.0, labels, current_temperature=4.0) == pytest.approx(temperature, rel=1e-6)
    assert negative_log_likelihood(raw, labels, temperature) < negative_log_likelihood(raw, labels)


# --- on a real model ------------------------------------------------------------------------------
def _loader(model, shared_data, dataset, rows):
    transform, mode = model_transform(model)
    images = load_image_dataset(str(shared_data / dataset), split="test").select(rows)
    return torch.utils.data.DataLoader(ImageDataset(images, transform, mode=mode), batch_size=250)


@pytest.fixture(scope="module")
def models(shared_data):
    return trained_mnist_models(shared_data)


def _load(folder):
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def test_calibration_lowers_nll_and_ece_and_the_temperature_round_trips(models, shared_data, tmp_path):
    model = _load(models["isomaxplus"])
    validation = _loader(model, shared_data, "mnist", range(1000, 2000))
    held_out = _loader(model, shared_data, "mnist", range(2000, 3000))
    with one_thread():
        result = calibrate_temperature(model, validation)
        # IsoMax+ is trained with an entropic scale (10) that inference drops: its raw softmax is under-confident
        assert result.temperature_before == 1.0 and result.temperature < 0.5
        assert result.nll_after < result.nll_before and result.ece_after < result.ece_before
        assert float(model.head.temperature) == result.temperature
        # measured (seed 0): T = 0.094; validation ECE 0.735 -> 0.021, NLL 1.70 -> 0.28; held-out rows
        # (not used for fitting) ECE 0.735 -> 0.018, NLL 1.70 -> 0.25
        logits_at_1, labels = predict_logits(_load(models["isomaxplus"]), held_out)
        logits_at_t, _ = predict_logits(model, held_out)
        ece_after = expected_calibration_error(logits_at_t, labels)
        assert ece_after < 0.1 and ece_after < expected_calibration_error(logits_at_1, labels) / 3
        assert negative_log_likelihood(logits_at_t, labels) < negative_log_likelihood(logits_at_1, labels)
        # the buffer is saved with the weights and restored by local-dir
        restored = _load(save_pretrained(model, tmp_path / "calibrated", label_names=LABEL_NAMES))
        assert float(restored.head.temperature) == pytest.approx(result.temperature, rel=0, abs=0)
        torch.testing.assert_close(predict_logits(restored, held_out)[0], logits_at_t)


def test_calibration_refuses_models_it_cannot_or_should_not_change(models):
    softmax = _load(models["softmax"])
    with pytest.raises(ValueError, match="no temperature buffer"):
        calibrate_temperature(softmax, [])
    isomaxplus = _load(models["isomaxplus"])
    isomaxplus.update_ood_config(threshold=-1.0)
    with pytest.raises(ValueError, match="calibrate first, then fit the threshold"):
        calibrate_temperature(isomaxplus, [])


def test_threshold_is_fitted_stored_restored_and_flags_ood_images(models, shared_data, tmp_path):
    model = _load(models["isomaxplus"])
    validation = _loader(model, shared_data, "mnist", range(1000, 2000))
    with one_thread():
        threshold = fit_ood_threshold(model, validation, fitted_on="mnist:test[1000:2000]")
        recorded = dict(model.ood_config)
        summary = recorded.pop("id_scores")  # the validation scores the threshold was fitted on, as percentiles
        assert recorded == dict(score="mds", threshold=threshold, tpr=0.95, fitted_on="mnist:test[1000:2000]")
        assert (summary["score"], summary["threshold"], summary["images"]) == ("mds", threshold, 1000)
        assert summary["percentiles"][5] <= threshold <= summary["percentiles"][6]  # 95% of them at or above it
        folder = save_pretrained(model, tmp_path / "with_threshold", label_names=LABEL_NAMES)
        assert read_config(folder)["isomax"]["threshold"] == threshold
        restored = _load(folder)
        assert restored.ood_config["threshold"] == threshold

        id_batch = torch.cat([x for x, _ in validation])
        flags = is_ood(restored, id_batch)
        assert flags.dtype == torch.bool and 1 - flags.double().mean().item() >= 0.95  # ID accepted as fitted
        letters = torch.cat([x for x, _ in _loader(model, shared_data, "notmnist", range(500))])
        # far more letters flagged than the 5% of digits the threshold allows: measured (seed 0) 57% when the
        # models trained on the first 3000 rows, 35% on a class-balanced sample of 3000
        assert is_ood(restored, letters).double().mean().item() > 0.2

        # predict: PIL images take the model's own preprocessing, same answers as the preprocessed batch
        pil_images = [row["image"] for row in load_image_dataset(str(shared_data / "mnist"), split="test").select(range(8))]
        from_pil = predict(restored, pil_images)
        assert predict(restored, torch.empty(0, 1, 32, 32)) == []
        batch = torch.stack([model_transform(restored)[0](image.convert("L")) for image in pil_images])
        assert from_pil == predict(restored, batch)
        assert [p.label for p in from_pil] == [LABEL_NAMES[p.index] for p in from_pil]
        scores = ood_scores(restored, batch)
        torch.testing.assert_close(scores, mds(restored(batch)))
        assert [p.is_ood for p in from_pil] == (scores < threshold).tolist()
        assert predict(restored, batch, label_names=list("abcdefghij"))[0].label in list("abcdefghij")


def test_a_softmax_run_folder_deploys_with_the_score_and_threshold_its_run_chose(models, shared_data, tmp_path):
    # `finetune --head softmax` writes a plain timm folder: predict / is_ood read the run's training/evaluation.json
    import shutil

    from timm_isomax.ood import recorded_ood_config

    softmax = _load(models["softmax"])
    evaluation = json.loads((models["softmax"] / "training" / "evaluation.json").read_text())
    record, where = recorded_ood_config(softmax)
    assert where == "its run's training/evaluation.json" and record["score"] == evaluation["score"] == "msp"
    assert record["threshold"] == evaluation["threshold"] and record["id_scores"] == evaluation["id_scores"]
    images = load_image_dataset(str(shared_data / "mnist"), split="test").select(range(16))
    batch = torch.stack([model_transform(softmax)[0](row["image"].convert("L")) for row in images])
    expected = torch.softmax(softmax(batch), dim=1).amax(dim=1)
    scores = ood_scores(softmax, batch)
    torch.testing.assert_close(scores.float(), expected)
    flags = [p.is_ood for p in predict(softmax, batch)]
    assert flags == (scores < evaluation["threshold"]).tolist() == is_ood(softmax, batch).tolist()
    # an IsoMax model records them in its ood_config alone: without a threshold there (here cleared, as a
    # temperature calibration clears it) its run's evaluation.json is not read, so a stale threshold is never used
    isomaxplus = _load(models["isomaxplus"])
    assert recorded_ood_config(isomaxplus) == ({**isomaxplus.ood_config}, "")
    # `timm-isomax evaluate` lists the run's own score first (here a copy whose run chose energy)
    from timm_isomax.ood.evaluation import default_score_names

    energy_run = tmp_path / "energy_run"
    shutil.copytree(models["softmax"], energy_run)
    (energy_run / "training" / "evaluation.json").write_text(json.dumps({**evaluation, "score": "energy"}))
    names = default_score_names(_load(energy_run))
    assert names[0] == "energy" and sorted(names) == sorted(default_score_names(softmax))
    assert default_score_names(softmax)[0] == "msp"
    # a damaged evaluation.json is one line that says what to do
    damaged = tmp_path / "damaged"
    shutil.copytree(models["softmax"], damaged)
    (damaged / "training" / "evaluation.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read .*evaluation.json .*pass score= and threshold="):
        is_ood(_load(damaged), batch)


def test_ood_helpers_say_what_is_missing(models):
    isomaxplus, softmax = _load(models["isomaxplus"]), _load(models["softmax"])
    batch = torch.zeros(2, 1, 32, 32)
    with pytest.raises(ValueError, match="no OOD threshold"):
        is_ood(isomaxplus, batch)
    plain = timm.create_model("resnet10t", num_classes=10, in_chans=1).eval()  # no folder, no record
    with pytest.raises(ValueError, match="records no OOD score.*pass score="):
        is_ood(plain, batch, threshold=0.5)
    assert is_ood(softmax, batch, threshold=2.0, score="msp").all()  # msp <= 1 < 2: everything OOD
    with pytest.raises(ValueError, match="not an IsoMax model"):
        fit_ood_threshold(softmax, [])
    isomaxplus.update_ood_config(threshold=-3.0)
    with pytest.raises(ValueError, match="stored threshold is for score 'mds'"):
        is_ood(isomaxplus, batch, score="msp")

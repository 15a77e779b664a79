"""The scores that read the pre-logit features (timm_isomax.feature_scores, timm_isomax.detectors), the choice of a
score on validation (timm_isomax.selection) and the clean near-OOD view, each checked against a float64 NumPy
reference on the real features of the akamaster CIFAR-10 ResNet-20 (SoftMax, and converted to IsoMax+)."""
import json

import numpy as np
import pytest
import torch

from timm_isomax import convert_softmax_model
from timm_isomax.conversion import load_softmax_model
from timm_isomax.data import column_values, load_image_dataset
from timm_isomax.detectors import Scorer, candidate_scores, is_score_name, score_problem
from timm_isomax.feature_scores import FeatureBank, feature_norm, knn, norm_cosine
from timm_isomax.metrics import auroc
from timm_isomax.selection import JigsawImages, choose_score, jigsaw, margin_note
from timm_isomax.data import load_view

from .conftest import AKAMASTER_RESNET20, prelogit_features

BANK_SIZE, QUERIES = 600, 200
VIEW = "benchmarks/views/tinyimagenet32_near.json"


@pytest.fixture(scope="module")
def real(shared_data):
    torch.manual_seed(0)
    model = load_softmax_model("cifar_resnet20", str(shared_data / AKAMASTER_RESNET20), "akamaster-cifar-resnet").eval()
    train, train_labels = prelogit_features(model, str(shared_data / "cifar10"), "train", BANK_SIZE)
    test, _ = prelogit_features(model, str(shared_data / "cifar10"), "test", QUERIES)
    mnist, _ = prelogit_features(model, str(shared_data / "mnist"), "test", QUERIES)
    return dict(model=model, train=train, labels=train_labels, test=test, mnist=mnist)


def test_feature_norm_and_norm_cosine_match_float64_references(real):
    features, weight = real["test"], real["model"].get_classifier().weight.detach()
    f, w = features.double().numpy(), weight.double().numpy()
    np.testing.assert_allclose(feature_norm(features).numpy(), np.linalg.norm(f, axis=1), rtol=1e-12)
    cosines = (f @ w.T) / np.linalg.norm(f, axis=1, keepdims=True) / np.linalg.norm(w, axis=1)
    expected = np.linalg.norm(f, axis=1) * cosines.max(axis=1)
    np.testing.assert_allclose(norm_cosine(features, weight).numpy(), expected, rtol=1e-10)


def test_norm_cosine_is_the_isomaxplus_logit_put_back_on_the_raw_feature(real):
    # unit vectors: ||f^ - p^||^2 = 2 - 2 cos, so with logits -|s| ||f^ - p^_c||: cos = 1 - (logit / |s|)^2 / 2
    isomaxplus = convert_softmax_model(real["model"], num_classes=10).eval()
    head = isomaxplus.get_classifier()
    with torch.no_grad():
        head.distance_scale.fill_(-2.5)  # |s| is what counts
        logits = head(real["test"]).double()
    cosine = 1 - (logits / 2.5) ** 2 / 2
    expected = feature_norm(real["test"]) * cosine.max(dim=1).values
    scores = Scorer(head).score("norm_cosine", real["test"], logits.float())
    np.testing.assert_allclose(scores.numpy(), expected.numpy(), rtol=1e-4)  # the head's logits are float32


def test_knn_is_the_kth_largest_cosine_similarity_to_the_bank(real):
    bank = FeatureBank(real["train"], real["labels"])
    queries = torch.cat([real["test"], real["mnist"]])
    q, b = queries.double().numpy(), real["train"].double().numpy()
    similarities = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    ordered = -np.sort(-similarities, axis=1)
    for k in (1, 10, 50):
        np.testing.assert_allclose(knn(queries, bank, k).numpy(), ordered[:, k - 1], atol=1e-6)
    scores = Scorer(real["model"].get_classifier(), bank).scores(["knn10", "knn50"], queries, torch.zeros(len(queries), 10))
    np.testing.assert_allclose(scores["knn50"].numpy(), ordered[:, 49], atol=1e-6)
    # the features know MNIST is not CIFAR-10: Sun et al.'s score separates them on a 600-image bank already
    assert auroc(knn(real["test"], bank, 10), knn(real["mnist"], bank, 10)) > 0.9


def test_bank_round_trips_samples_by_class_and_refuses_another_width(real, tmp_path):
    bank = FeatureBank.build(real["train"], real["labels"], source="cifar10:train", limit=300, seed=0)
    # each class keeps its share of the rows (here half of each)
    expected = np.round(np.bincount(real["labels"].numpy(), minlength=10) / 2)
    assert np.array_equal(np.bincount(bank.labels.numpy(), minlength=10), expected)
    assert len(bank) == expected.sum() == 300 and bank.total_rows == BANK_SIZE
    bank.save(tmp_path)
    loaded = FeatureBank.load(tmp_path)
    assert torch.equal(loaded.features, bank.features) and torch.equal(loaded.labels, bank.labels)
    assert loaded.describe() == bank.describe() and loaded.describe()["megabytes"] == round(300 * 64 * 4 / 1e6 + 300 * 8 / 1e6, 1)
    with pytest.raises(ValueError, match="width 64.*another model"):
        knn(torch.randn(3, 32), loaded)
    with pytest.raises(FileNotFoundError, match="no feature bank"):
        FeatureBank.load(tmp_path / "missing")


def test_scores_without_what_they_read_say_what_is_missing(real):
    scorer = Scorer(real["model"].get_classifier())
    with pytest.raises(ValueError, match="needs a feature bank"):
        scorer.score("knn50", real["test"], torch.zeros(len(real["test"]), 10))
    with pytest.raises(ValueError, match="reads the pre-logit features"):
        scorer.score("norm_cosine", None, torch.zeros(3, 10))
    assert is_score_name("knn7") and not is_score_name("knn0") and not is_score_name("knn")
    assert "knn<k>" in score_problem("knnn50")
    assert candidate_scores("isomaxplus", with_bank=True, with_posthoc=False)[-3:] == ("knn10", "knn50", "knn200")
    assert "vim" in candidate_scores("softmax", with_bank=True, with_posthoc=True)
    assert "vim" not in candidate_scores("isomaxplus", with_bank=True, with_posthoc=True)


def test_jigsaw_moves_pieces_keeps_pixels_and_is_seeded(shared_data):
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(3, 32, 32)
    shuffled = jigsaw(image, grid=4, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, image)
    assert torch.equal(shuffled.flatten().sort().values, image.flatten().sort().values)
    pieces = {tuple(shuffled[:, r:r + 8, c:c + 8].flatten().tolist()) for r in range(0, 32, 8) for c in range(0, 32, 8)}
    assert pieces == {tuple(image[:, r:r + 8, c:c + 8].flatten().tolist()) for r in range(0, 32, 8) for c in range(0, 32, 8)}
    images = [(image, 3), (image + 1, 4)]
    first, again = JigsawImages(images, seed=1), JigsawImages(images, seed=1)
    assert torch.equal(first[1][0], again[1][0]) and first[1][1] == -1
    assert not torch.equal(first[0][0], JigsawImages(images, seed=2)[0][0])


def test_choose_score_takes_the_best_mean_validation_auroc_and_the_first_of_a_tie():
    id_scores = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([5.0, 6.0, 7.0]), "c": torch.tensor([5.0, 6.0, 7.0])}
    ood = {"jigsaw": {"a": torch.tensor([2.5, 0.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([0.0, 1.0])},
           "near": {"a": torch.tensor([4.0, 4.0]), "b": torch.tensor([6.5, 0.0]), "c": torch.tensor([6.5, 0.0])}}
    selection = choose_score(id_scores, ood)
    # a: jigsaw 4/6 pairs, near 0 -> 1/3; b: jigsaw 1, near 4/6 -> 5/6; c ties b: the earlier wins
    assert selection.chosen == "b"
    assert selection.aurocs["a"] == pytest.approx({"jigsaw": 4 / 6, "near": 0.0, "mean": 1 / 3})
    assert selection.aurocs["b"] == pytest.approx({"jigsaw": 1.0, "near": 4 / 6, "mean": 5 / 6})
    assert json.loads(json.dumps(selection.to_json()))["sets"] == ["jigsaw", "near"]
    # c is b: the runner-up by nothing, which no resample can change; validation cannot tell them apart
    assert (selection.runner_up, selection.margin, selection.margin_std) == ("c", 0.0, 0.0)
    record = json.loads(json.dumps(selection.to_json()))
    assert record["decisive"] is False and "validation cannot tell b from c" in margin_note(record)


def test_the_choice_says_whether_validation_can_tell_the_chosen_score_from_the_runner_up(real):
    # real scores: KNN on a ResNet-20's CIFAR-10 features, CIFAR-10 test images against MNIST
    bank = FeatureBank(real["train"], real["labels"])
    id_knn, ood_knn = knn(real["test"], bank, 10), knn(real["mnist"], bank, 10)
    half = len(ood_knn) // 2
    sets = {"a": {"knn10": ood_knn[:half], "reversed": -ood_knn[:half]},
            "b": {"knn10": ood_knn[half:], "reversed": -ood_knn[half:]}}
    clear = choose_score({"reversed": -id_knn, "knn10": id_knn}, sets)
    assert clear.chosen == "knn10" and clear.runner_up == "reversed" and clear.margin > 0.8  # AUROC about 0.95 vs 0.05
    assert 0.0 < clear.margin_std < 0.1 and clear.decisive
    assert margin_note(clear.to_json()).startswith(f"runner-up reversed by {100 * clear.margin:.2f} +- ")
    assert "cannot tell" not in margin_note(clear.to_json())
    # the spread is a paired bootstrap's, seeded: the same scores give the same record; another seed another draw
    assert choose_score({"reversed": -id_knn, "knn10": id_knn}, sets).to_json() == clear.to_json()
    other = choose_score({"reversed": -id_knn, "knn10": id_knn}, sets, seed=1).margin_std
    assert other != clear.margin_std and other == pytest.approx(clear.margin_std, rel=0.5)
    # one candidate: nothing to tell apart
    alone = choose_score({"knn10": id_knn}, sets)
    assert alone.runner_up is None and alone.decisive and margin_note(alone.to_json()) == ""


def test_clean_near_view_drops_cifar_classes_and_cuts_disjoint_parts(shared_data):
    view = json.loads(open(VIEW).read())
    parts = load_view(VIEW)
    names = parts["val"].features["label"].names
    dropped = {names.index(wnid) for wnid in view["drop"]}
    assert len(dropped) == 27 and {"n02123045", "n02099712", "n04285008", "n01641577"} <= set(view["drop"])
    val, test = parts["val"], parts["test"]
    assert len(val) == len(test) == (200 - 27) * 25
    for part in (val, test):
        labels = column_values(part, "label")
        assert not dropped & set(labels) and len(set(labels)) == 173
    raw = load_image_dataset(str(shared_data / "tinyimagenet32"), split="val")
    digest = lambda rows: {hash(row["image"].tobytes()) for row in rows}  # noqa: E731
    assert not digest(val) & digest(test)  # disjoint by image
    assert len(digest(val) | digest(test)) == len(raw) - 27 * 50
    assert load_image_dataset(VIEW, split="test")[0]["label"] == test[0]["label"]  # a view is a dataset source


def test_a_view_can_cut_an_id_test_split_into_validation_and_test_halves_and_keep_the_train_split(shared_data):
    # Protocol A's ID data: its checkpoint saw every training image, so validation comes from half the test split
    from timm_isomax.data import load_labelled_splits

    halves = load_image_dataset("benchmarks/views/cifar10_test_halves.json")
    assert sorted(halves) == ["test", "train", "val"] and len(halves["train"]) == 50_000
    assert len(halves["val"]) == len(halves["test"]) == 5_000
    for part in ("val", "test"):
        assert np.bincount(column_values(halves[part], "label")).tolist() == [500] * 10
    splits = load_labelled_splits("benchmarks/views/cifar10_test_halves.json", train_limit=10, val_limit=10)
    assert splits.val_split == "val" and splits.train_split == "train"


def test_outputs_are_computed_in_eval_mode_and_a_training_model_keeps_training(shared_data):
    # a model left in training mode (as timm builds it, or mid-training): features and logits are its eval-mode
    # ones (BatchNorm on running statistics, which stay as they were), and it is still training afterwards
    from timm_isomax.detectors import model_outputs, model_parts

    model = load_softmax_model("cifar_resnet20", str(shared_data / AKAMASTER_RESNET20), "akamaster-cifar-resnet")
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(images)
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(16)), batch_size=8)
    outputs = model_outputs(*model_parts(model), loader)
    torch.testing.assert_close(outputs.logits, expected)
    assert all(module.training for module in model.modules())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())

"""OOD metrics against scikit-learn (random, tied, degenerate inputs) and hand-computed cases per convention."""
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from timm_isomax.metrics import MEAN_ROW, METRIC_NAMES, auroc, min_count, ood_metrics, ood_metrics_table, roc_curve


def sklearn_metrics(id_scores, ood_scores):
    """Every metric from scikit-learn's curves, with the documented conventions."""
    scores = np.r_[id_scores, ood_scores].astype(np.float64)
    is_id = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    fpr, tpr, _ = skm.roc_curve(is_id, scores, drop_intermediate=False)
    fpr_ood, tpr_ood, _ = skm.roc_curve(1 - is_id, -scores, drop_intermediate=False)
    at_95 = np.argmax(tpr >= 0.95)  # first ROC point with TPR >= 95%
    return {
        "auroc": skm.roc_auc_score(is_id, scores),
        "fpr_at_95_tpr": fpr[at_95],
        "tnr_at_95_tpr": 1 - fpr[at_95],
        "fpr95_ood_positive": fpr_ood[np.argmax(tpr_ood >= 0.95)],
        "aupr_in": skm.average_precision_score(is_id, scores),
        "aupr_out": skm.average_precision_score(1 - is_id, -scores),
        "detection_accuracy": np.max(0.5 * (tpr + 1 - fpr)),
    }


def random_case(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(1, 400, size=2)
    id_scores, ood_scores = rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.5, n_ood)
    if seed % 3 == 1:  # heavy ties
        id_scores, ood_scores = np.round(id_scores), np.round(ood_scores)
    elif seed % 3 == 2:  # a few distinct values only, many identical across the sets
        id_scores, ood_scores = rng.integers(0, 3, n_id).astype(float), rng.integers(0, 2, n_ood).astype(float)
    return id_scores, ood_scores


@pytest.mark.parametrize("seed", range(30))
def test_every_metric_matches_sklearn(seed):
    id_scores, ood_scores = random_case(seed)
    ours, reference = ood_metrics(id_scores, ood_scores), sklearn_metrics(id_scores, ood_scores)
    assert list(ours) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(reference[name], abs=1e-12), name
    assert auroc(id_scores, ood_scores) == pytest.approx(reference["auroc"], abs=1e-12)


@pytest.mark.parametrize("seed", range(0, 30, 7))
def test_roc_curve_is_sklearns_without_dropped_points(seed):
    id_scores, ood_scores = random_case(seed)
    is_id = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    expected = skm.roc_curve(is_id, np.r_[id_scores, ood_scores], drop_intermediate=False)
    for ours, theirs in zip(roc_curve(id_scores, ood_scores), expected):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-15)


@pytest.mark.parametrize("id_scores, ood_scores", [
    ([1.0] * 5, [1.0] * 3),          # all equal: one threshold
    ([2.0], [1.0]),                  # one of each, separated
    ([0.0], [1.0]),                  # one of each, reversed
    ([5.0] * 20, [1.0, 2.0, 5.0]),   # ID one tie group that holds an OOD score too
    (list(range(100)), [50.0]),      # one OOD score in the middle
])
def test_degenerate_but_valid_inputs_match_sklearn(id_scores, ood_scores):
    ours, reference = ood_metrics(id_scores, ood_scores), sklearn_metrics(id_scores, ood_scores)
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(reference[name], abs=1e-12), name


def test_all_equal_scores_are_chance():
    m = ood_metrics([0.3] * 4, [0.3] * 6)
    assert (m["auroc"], m["detection_accuracy"], m["fpr_at_95_tpr"], m["fpr95_ood_positive"]) == (0.5, 0.5, 1.0, 1.0)
    assert (m["aupr_in"], m["aupr_out"]) == (0.4, 0.6)  # precision of "accept all" = share of each set


def test_hand_computed_case_per_convention():
    # ID 20 scores 1..20, OOD 4 scores. Scores >= 2 accept 19/20 = 95% of ID and OOD {2.5, 10}: FPR@95 = 2/4.
    # OOD positive: flagging scores <= 10 catches all 4 OOD (>= 95%) and the ID scores 1..10: FPR95 = 10/20;
    # the first sweep point reaching 95% of OOD is the lowest threshold that catches 10.
    id_scores = np.arange(1.0, 21.0)
    ood_scores = [0.0, 0.5, 2.5, 10.0]
    m = ood_metrics(id_scores, ood_scores)
    assert m["fpr_at_95_tpr"] == 0.5 and m["tnr_at_95_tpr"] == 0.5
    assert m["fpr95_ood_positive"] == 0.5
    # AUROC: pairs (ID > OOD) = 20 + 20 + 18 + 10.5 (the tie at 10 counts half) = 68.5 of 80
    assert m["auroc"] == 68.5 / 80
    # DTACC: threshold 3 accepts 18/20 ID and 1/4 OOD: (0.9 + 0.75) / 2
    assert m["detection_accuracy"] == pytest.approx(0.825, abs=1e-15)


def test_the_two_fpr95_conventions_give_different_numbers():
    # ID 1..20; OOD 16 x -1 and 4 x 10. ID positive: scores >= 2 accept 95% of ID and the 4 OOD at 10:
    # FPR@95 = 4/20. OOD positive: 95% of OOD needs the tie group at 10, so scores <= 10 are flagged,
    # which flags ID 1..10: FPR95 = 10/20.
    m = ood_metrics(np.arange(1.0, 21.0), np.r_[np.full(16, -1.0), np.full(4, 10.0)])
    assert (m["fpr_at_95_tpr"], m["fpr95_ood_positive"]) == (0.2, 0.5)


def test_aupr_hand_case():
    # ID [3, 2, 1, 0.5], OOD [1, 0]. ID positive, thresholds 3, 2, 1, 0.5: precisions 1, 1, 3/4, 4/5 at each
    # new ID -> AP = (1 + 1 + 0.75 + 0.8) / 4. OOD positive, thresholds 0, 1: precisions 1, 2/4 -> (1 + 0.5) / 2.
    m = ood_metrics([3.0, 2.0, 1.0, 0.5], [1.0, 0.0])
    assert m["aupr_in"] == pytest.approx(3.55 / 4, abs=1e-15)
    assert m["aupr_out"] == pytest.approx(0.75, abs=1e-15)


def test_tensor_inputs_in_float32_are_scored_in_float64():
    id_scores = torch.tensor([1.0, 1.0 + 1e-7, 2.0])
    m = ood_metrics(id_scores, torch.tensor([1.0]))
    assert m["auroc"] == pytest.approx((0.5 + 1 + 1) / 3)


@pytest.mark.parametrize("id_scores, ood_scores, message", [
    ([], [1.0], "id_scores is empty"),
    ([1.0], [], "ood_scores is empty"),
    ([1.0, float("nan")], [0.0], "non-finite"),
    ([1.0], [float("inf")], "non-finite"),
])
def test_empty_and_nan_inputs_raise_one_clear_error(id_scores, ood_scores, message):
    with pytest.raises(ValueError, match=message):
        ood_metrics(id_scores, ood_scores)


def test_table_has_a_row_per_ood_set_and_a_macro_mean():
    rng = np.random.default_rng(0)
    id_scores = rng.normal(1.0, 1.0, 200)
    sets = {"near": rng.normal(0.8, 1.0, 100), "far": rng.normal(-2.0, 1.0, 300)}
    table = ood_metrics_table(id_scores, sets)
    assert list(table) == ["near", "far", MEAN_ROW]
    assert table["far"] == ood_metrics(id_scores, sets["far"])
    for name in METRIC_NAMES:
        assert table[MEAN_ROW][name] == pytest.approx((table["near"][name] + table["far"][name]) / 2)
    with pytest.raises(ValueError, match="may not be called 'mean'"):
        ood_metrics_table(id_scores, {MEAN_ROW: sets["far"]})
    with pytest.raises(ValueError, match="no OOD score sets"):
        ood_metrics_table(id_scores, {})


def test_min_count_is_the_float_comparison_of_roc_code():
    for n in range(1, 1500):
        for rate in (0.95, 0.9, 0.5, 0.999, 1.0, 0.001):
            k = min_count(n, rate)
            assert k / n >= rate and (k == 1 or (k - 1) / n < rate), (n, rate, k)

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from timm_isomax import auroc, scores


def test_scores_follow_their_definitions_in_float64():
    logits = torch.tensor([[-1.0, -3.0, -2.0], [-0.5, -0.4, -4.0]])
    probs = torch.softmax(logits.double(), dim=1)
    torch.testing.assert_close(scores.mds(logits), torch.tensor([-1.0, -0.4]))
    torch.testing.assert_close(scores.max_logit(logits), torch.tensor([-1.0, -0.4]))
    torch.testing.assert_close(scores.msp(logits), probs.max(dim=1).values)
    torch.testing.assert_close(scores.entropic(logits), (probs * probs.log()).sum(dim=1))
    torch.testing.assert_close(scores.energy(logits), torch.log(torch.exp(logits.double()).sum(dim=1)))
    assert scores.msp(logits).dtype == torch.float64


def test_msp_separates_inputs_that_saturate_in_float32():
    logits = torch.tensor([[30.0, 0.0], [20.0, 0.0]])
    assert torch.softmax(logits, 1).max(1).values.unique().numel() == 1  # float32 ties
    assert scores.msp(logits).unique().numel() == 2


def test_get_score_names_the_choices():
    assert scores.get_score("energy") is scores.energy
    with pytest.raises(ValueError, match="choose one of"):
        scores.get_score("odin")


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_on_random_and_tied_scores(seed):
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(1.0, 1.0, 500)
    ood_scores = rng.normal(0.0, 1.0, 300)
    if seed % 2:  # heavy ties
        id_scores, ood_scores = np.round(id_scores), np.round(ood_scores)
    labels = np.r_[np.ones(500), np.zeros(300)]
    assert auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(labels, np.r_[id_scores, ood_scores]), abs=1e-12)


def test_auroc_hand_cases_and_errors():
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert auroc([0.0], [1.0]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5  # all tied: half credit
    with pytest.raises(ValueError, match="ood_scores is empty"):
        auroc([1.0], [])
    with pytest.raises(ValueError, match="non-finite"):
        auroc([1.0, float("nan")], [0.0])

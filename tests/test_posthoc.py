"""timm_isomax.posthoc: pytorch-ood's ViM / Mahalanobis / ReAct / ASH on a timm model's pre-logit features,
each checked against a float64 NumPy reference written here from its paper's formula, on the real features
of the akamaster CIFAR-10 ResNet-20 (SoftMax): fitted on CIFAR-10 train images, queried with CIFAR-10 test
images, MNIST digits and notMNIST letters (both read as 3-channel images)."""
import sys

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from timm_isomax import posthoc
from timm_isomax.conversion import load_softmax_model
from timm_isomax.metrics import auroc
from timm_isomax.posthoc import POSTHOC_DETECTORS, fit_posthoc, vim_dimension

from .conftest import AKAMASTER_RESNET20, prelogit_features

FIT_SIZE, TEST_SIZE, OOD_SIZE = 500, 300, 200


@pytest.fixture(scope="module")
def real(shared_data):
    """Pre-logit features (float32, as the model gives them) and the classifier of the ResNet-20."""
    pytest.importorskip("pytorch_ood", reason="pytorch-ood is not installed (the posthoc extra)")
    torch.manual_seed(0)
    model = load_softmax_model("cifar_resnet20", str(shared_data / AKAMASTER_RESNET20), "akamaster-cifar-resnet").eval()
    fit, fit_labels = prelogit_features(model, str(shared_data / "cifar10"), "train", FIT_SIZE)
    test, _ = prelogit_features(model, str(shared_data / "cifar10"), "test", TEST_SIZE)
    mnist, _ = prelogit_features(model, str(shared_data / "mnist"), "test", OOD_SIZE)
    notmnist, _ = prelogit_features(model, str(shared_data / "notmnist"), "test", OOD_SIZE)
    head = model.get_classifier()
    return dict(fit=fit, labels=fit_labels, test=test, mnist=mnist, notmnist=notmnist,
                queries=torch.cat([test, mnist, notmnist]),
                weight=head.weight.detach().clone(), bias=head.bias.detach().clone())


@pytest.fixture(scope="module")
def fitted(real):
    return {name: fit_posthoc(name, real["fit"], real["labels"], real["weight"], real["bias"])
            for name in POSTHOC_DETECTORS}


def _np(tensor):
    return tensor.double().numpy()


# -- the references, float64, from the papers' formulas ------------------------------------------------------

def mahalanobis_reference(fit, labels, queries):
    """-min_c (f - mu_c)^T Sigma^-1 (f - mu_c), Sigma the shared maximum-likelihood covariance."""
    means = np.stack([fit[labels == c].mean(0) for c in range(labels.max() + 1)])
    centred = fit - means[labels]
    precision = np.linalg.inv(centred.T @ centred / len(fit))
    diffs = queries[:, None, :] - means[None]  # (M, C, D)
    return -np.einsum("mcd,de,mce->mc", diffs, precision, diffs).min(1)


def vim_reference(fit, weight, bias, queries, d):
    """energy - alpha ||residual||, the residual outside the d principal directions of the fit set around
    u = -pinv(W) b, alpha = mean max-logit / mean residual norm on the fit set."""
    origin = -np.linalg.pinv(weight) @ bias
    centred = fit - origin
    values, vectors = np.linalg.eigh(centred.T @ centred / len(fit))
    residual_space = vectors[:, np.argsort(-values)[d:]]
    fit_logits = fit @ weight.T + bias
    alpha = fit_logits.max(1).mean() / np.linalg.norm(centred @ residual_space, axis=1).mean()
    residual = np.linalg.norm((queries - origin) @ residual_space, axis=1)
    return logsumexp(queries @ weight.T + bias, axis=1) - alpha * residual, alpha


def react_reference(fit, weight, bias, queries):
    """logsumexp(W min(f, c) + b), c the 90th percentile of the fit set's activations."""
    clip = np.percentile(fit.ravel(), 90)
    return logsumexp(np.minimum(queries, clip) @ weight.T + bias, axis=1), clip


def ash_b_reference(weight, bias, queries, percentile=0.90):
    """ASH-B: the k = D - round(pD) largest activations set to sum(f) / k, the rest to 0; then energy."""
    width = queries.shape[1]
    k = width - int(np.round(width * percentile))
    order = np.argsort(-queries, axis=1, kind="stable")
    shaped = np.zeros_like(queries)
    np.put_along_axis(shaped, order[:, :k], (queries.sum(1) / k)[:, None], axis=1)
    ordered = np.take_along_axis(queries, order, axis=1)
    unambiguous = ordered[:, k - 1] > ordered[:, k]  # which k are kept does not depend on tie-breaking
    return logsumexp(shaped @ weight.T + bias, axis=1), unambiguous


# -- the adapter against the references ----------------------------------------------------------------------

def test_mahalanobis_matches_the_paper_formula(real, fitted):
    detector = fitted["mahalanobis"]
    scores = detector.score(real["queries"])
    assert scores.dtype == torch.float64 and scores.shape == (len(real["queries"]),)
    expected = mahalanobis_reference(_np(real["fit"]), real["labels"].numpy(), _np(real["queries"]))
    # float64 on both sides (measured within 3e-7 relative): the only difference is pytorch-ood's 1e-6 ridge
    # on the scatter matrix
    assert detector.detector.precision.dtype == torch.float64 and torch.get_default_dtype() == torch.float32
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)


def test_vim_matches_the_paper_formula(real, fitted):
    detector = fitted["vim"]
    width = real["fit"].shape[1]
    assert width == 64 and detector.params["d"] == vim_dimension(width) == 32
    expected, alpha = vim_reference(_np(real["fit"]), _np(real["weight"]), _np(real["bias"]), _np(real["queries"]),
                                    detector.params["d"])
    # pytorch-ood's ViM computes in float32 (covariance, eigenvectors, residual norms): measured alpha 23.19
    # within 2e-7 relative, scores (-35 to 13) within 1.4e-3; a wrong d, alpha or origin is off by units
    assert detector.params["alpha"] == pytest.approx(alpha, rel=1e-5)
    scores = detector.score(real["queries"])
    assert scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), expected, rtol=0, atol=5e-4 * np.abs(expected).max())


def test_react_matches_the_paper_formula(real, fitted):
    detector = fitted["react"]
    expected, clip = react_reference(_np(real["fit"]), _np(real["weight"]), _np(real["bias"]), _np(real["queries"]))
    # the percentile is taken over the float32 features, the rest in float64: measured within 1e-8 relative
    assert detector.params["threshold"] == pytest.approx(clip, rel=1e-6)
    # the clipping must bite for the check to mean anything: measured on 71% of the queries
    assert (real["queries"] > clip).any(1).double().mean() > 0.5
    np.testing.assert_allclose(detector.score(real["queries"]).numpy(), expected, rtol=1e-6)


def test_ash_matches_the_paper_formula(real, fitted):
    detector = fitted["ash"]
    assert detector.params == {"variant": "ash-b", "percentile": 0.9}
    expected, unambiguous = ash_b_reference(_np(real["weight"]), _np(real["bias"]), _np(real["queries"]))
    assert unambiguous.mean() > 0.9  # measured: every query (its 6th and 7th largest activations differ)
    scores = detector.score(real["queries"]).numpy()
    np.testing.assert_allclose(scores[unambiguous], expected[unambiguous], rtol=1e-10)


def test_scores_separate_cifar10_from_digits_and_letters(real, fitted):
    aurocs = {name: {ood: auroc(detector.score(real["test"]).numpy(), detector.score(real[ood]).numpy())
                     for ood in ("mnist", "notmnist")} for name, detector in fitted.items()}
    # measured (these 300 CIFAR-10 test images against 200 MNIST / 200 notMNIST, fitted on 500 train images):
    #   mahalanobis 0.856 / 0.975, vim 0.961 / 0.995, react 0.905 / 0.837, ash 0.980 / 0.912.
    # Mahalanobis on this 64-wide ResNet-20 stays near 0.84-0.86 against MNIST whatever the fit size (500 to
    # 3000 train images, 1000 test / 1000 MNIST: 0.84), so it is held to 0.9 against notMNIST only.
    assert aurocs["mahalanobis"]["notmnist"] > 0.95 and aurocs["mahalanobis"]["mnist"] > 0.8, aurocs
    assert aurocs["vim"]["mnist"] > 0.9 and aurocs["vim"]["notmnist"] > 0.95, aurocs
    assert aurocs["ash"]["mnist"] > 0.9, aurocs
    # and every detector ranks CIFAR-10 above both far-OOD sets (higher = more in-distribution)
    assert all(value > 0.8 for values in aurocs.values() for value in values.values()), aurocs


def test_scoring_in_chunks_gives_the_same_scores(real, fitted, monkeypatch):
    whole = {name: detector.score(real["queries"]) for name, detector in fitted.items()}
    monkeypatch.setattr(posthoc, "SCORE_CHUNK", 37)
    for name, detector in fitted.items():
        torch.testing.assert_close(detector.score(real["queries"]), whole[name], rtol=1e-5, atol=1e-5)
        assert detector.score(real["queries"][:0]).shape == (0,)


# -- the one-line errors ---------------------------------------------------------------------------------------

def _synthetic(classes=3, n=60, width=8):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, width, generator=generator).relu(), torch.arange(n) % classes


@pytest.mark.parametrize("name", ["vim", "react", "ash"])
def test_detectors_needing_the_classifier_say_so(name):
    pytest.importorskip("pytorch_ood")
    features, labels = _synthetic()
    with pytest.raises(ValueError, match=f"^{name} needs the linear classifier's weight") as error:
        fit_posthoc(name, features, labels)
    assert "\n" not in str(error.value)


def test_bad_names_shapes_and_labels_are_refused():
    pytest.importorskip("pytorch_ood")
    features, labels = _synthetic()
    weight = torch.randn(3, 8)
    with pytest.raises(ValueError, match="unknown post-hoc detector 'odin'; choose one of vim, mahalanobis"):
        fit_posthoc("odin", features, labels)
    with pytest.raises(ValueError, match=r"weight must have shape \(C, 8\)"):
        fit_posthoc("vim", features, labels, torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        fit_posthoc("react", features, labels, weight, torch.zeros(4))
    with pytest.raises(ValueError, match=r"missing: \[1\]"):
        fit_posthoc("mahalanobis", features, labels.masked_fill(labels == 1, 0))
    with pytest.raises(ValueError, match="full-rank covariance"):
        fit_posthoc("mahalanobis", features[:9], labels[:9])
    with pytest.raises(ValueError, match="train_labels must be integer labels"):
        fit_posthoc("mahalanobis", features, labels[:-1])
    detector = fit_posthoc("ash", features, labels, weight)  # no bias: zeros
    with pytest.raises(ValueError, match=r"features must have shape \(M, 8\)"):
        detector.score(torch.randn(5, 9))


def test_without_pytorch_ood_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_ood", None)
    monkeypatch.setitem(sys.modules, "pytorch_ood.detector", None)
    features, labels = _synthetic()
    with pytest.raises(ImportError, match=r"pip install 'timm-isomax\[posthoc\]'$") as error:
        fit_posthoc("mahalanobis", features, labels)
    assert "\n" not in str(error.value)


def test_a_deployed_detector_is_fitted_once_and_again_when_the_head_changes(real, shared_data):
    # timm_isomax.ood_scores / predict on a model whose score is a post-hoc detector: fitted on the model's bank at
    # the first call and kept (a refit per call made one image 20x slower than a logit score), refitted once
    # the classifier it reads has changed (training it further), so a kept fit is never stale
    from timm_isomax import ood_scores
    from timm_isomax.data import dataset_for_model, load_sample
    from timm_isomax.detectors import Scorer, model_parts
    from timm_isomax.feature_scores import FeatureBank

    model = load_softmax_model("cifar_resnet20", str(shared_data / AKAMASTER_RESNET20), "akamaster-cifar-resnet").eval()
    model.feature_bank = FeatureBank.build(real["fit"], real["labels"], source="cifar10:train")
    test = dataset_for_model(model, load_sample(str(shared_data / "cifar10"), "test", 20))
    images = torch.stack([test[i][0] for i in range(len(test))])
    first = ood_scores(model, images, score="vim")
    kept = model.__dict__["_ood_scorer"][1]
    assert torch.equal(ood_scores(model, images, score="vim"), first) and model.__dict__["_ood_scorer"][1] is kept
    with torch.no_grad():
        model.get_classifier().weight.mul_(1.5)
    again = ood_scores(model, images, score="vim")
    assert model.__dict__["_ood_scorer"][1] is not kept and not torch.allclose(again, first)
    features_of, head = model_parts(model)
    with torch.no_grad():
        features = features_of(images)
    assert torch.allclose(again, Scorer(head, model.feature_bank).score("vim", features, head(features)))

"""Heads and losses against the papers' formulas, computed independently here in float64."""
import math

import pytest
import torch
import torch.nn.functional as F

import timm_isomax
from timm_isomax import IsoMaxHead, IsoMaxLoss, IsoMaxPlusHead, IsoMaxPlusLoss


def paper_isomaxplus_logits(features, prototypes, scale):
    # IsoMax+ paper: -|s| * || f/|f| - p/|p| ||, written out element-wise (B, C, D) in float64.
    f = features.double() / features.double().norm(dim=1, keepdim=True)
    p = prototypes.double() / prototypes.double().norm(dim=1, keepdim=True)
    return -abs(float(scale)) * ((f[:, None, :] - p[None, :, :]) ** 2).sum(-1).sqrt()


def paper_isomax_logits(features, prototypes):
    f, p = features.double(), prototypes.double()
    return -((f[:, None, :] - p[None, :, :]) ** 2).sum(-1).sqrt()


@pytest.mark.parametrize("mode", ["matmul", "cdist"])
def test_isomaxplus_head_matches_paper_formula(mode):
    torch.manual_seed(0)
    head = IsoMaxPlusHead(64, 7, distance_mode=mode)
    with torch.no_grad():
        head.distance_scale.fill_(-3.5)  # |s| is used: a negative learned scale must not flip the sign
    features = torch.randn(16, 64) * 5
    expected = paper_isomaxplus_logits(features, head.prototypes.detach(), -3.5)
    got = head(features)
    assert got.dtype == torch.float32 and got.shape == (16, 7)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert (got <= 0).all()


@pytest.mark.parametrize("mode", ["matmul", "cdist"])
def test_isomax_head_matches_paper_formula(mode):
    torch.manual_seed(1)
    head = IsoMaxHead(32, 5, distance_mode=mode)
    with torch.no_grad():
        head.prototypes.normal_()
    features = torch.randn(8, 32)
    torch.testing.assert_close(head(features).double(), paper_isomax_logits(features, head.prototypes.detach()),
                               rtol=1e-5, atol=1e-5)


def test_isomax_prototypes_start_at_origin_and_isomaxplus_at_normal():
    assert torch.count_nonzero(IsoMaxHead(16, 4).prototypes) == 0
    torch.manual_seed(0)
    p = IsoMaxPlusHead(256, 100).prototypes.detach()
    assert abs(p.mean().item()) < 0.02 and abs(p.std().item() - 1.0) < 0.02


def test_matmul_form_equals_cdist_reference_values_and_gradients():
    torch.manual_seed(2)
    features = torch.randn(32, 128, requires_grad=True)
    fast = IsoMaxPlusHead(128, 10)
    exact = IsoMaxPlusHead(128, 10, distance_mode="cdist")
    exact.load_state_dict(fast.state_dict())
    target = torch.randint(0, 10, (32,))
    loss_fn = IsoMaxPlusLoss()
    grads = []
    for head in (fast, exact):
        features.grad = None
        head.zero_grad()
        out = head(features)
        loss_fn(out, target).backward()
        grads.append((out.detach(), features.grad.clone(), head.prototypes.grad.clone(), head.distance_scale.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_head_computes_in_fp32_under_autocast():
    torch.manual_seed(3)
    head = IsoMaxPlusHead(64, 10)
    features = torch.randn(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(features.bfloat16())
    assert out.dtype == torch.float32
    reference = paper_isomaxplus_logits(features.bfloat16().float(), head.prototypes.detach(), 1.0)
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5)


def test_temperature_is_a_saved_buffer_that_divides_logits():
    head = IsoMaxPlusHead(8, 3)
    assert "temperature" in head.state_dict() and "temperature" not in dict(head.named_parameters())
    features = torch.randn(4, 8)
    before = head(features)
    head.temperature.fill_(2.0)
    torch.testing.assert_close(head(features), before / 2.0)
    clone = IsoMaxPlusHead(8, 3)
    clone.load_state_dict(head.state_dict())
    assert clone.temperature.item() == 2.0


def test_head_stays_finite_for_zero_features_and_identical_prototypes():
    head = IsoMaxPlusHead(16, 4)
    zeros = torch.zeros(2, 16, requires_grad=True)
    same = head.prototypes.detach()[:2].clone().requires_grad_(True)  # distance exactly 0 to a prototype
    for features in (zeros, same):
        out = head(features)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(features.grad).all()
        assert torch.isfinite(head.prototypes.grad).all()
    torch.testing.assert_close(head(zeros.detach()), torch.full((2, 4), -math.sqrt(2.0)))


def test_head_rejects_wrong_feature_width_with_a_hint():
    with pytest.raises(ValueError, match=r"shape \(batch, 16\), got \(2, 15\)"):
        IsoMaxPlusHead(16, 4)(torch.randn(2, 15))
    with pytest.raises(ValueError, match="num_classes >= 1"):
        IsoMaxPlusHead(16, 0)


# --- losses ---------------------------------------------------------------------------------------
def test_loss_is_cross_entropy_of_entropic_scale_times_logits():
    torch.manual_seed(4)
    logits, targets = -torch.rand(6, 5) * 3, torch.tensor([0, 1, 2, 3, 4, 0])
    expected = -torch.log_softmax(10.0 * logits.double(), dim=1)[torch.arange(6), targets].mean()
    for loss_fn in (IsoMaxPlusLoss(), IsoMaxLoss()):
        torch.testing.assert_close(loss_fn(logits, targets).double(), expected, rtol=1e-6, atol=1e-6)
    assert IsoMaxPlusLoss(entropic_scale=1.0)(logits, targets) != IsoMaxPlusLoss()(logits, targets)


def test_loss_stays_finite_where_softmax_then_log_underflows():
    # Distances of a trained model at a learned scale of 20: softmax(10 * logits) underflows to 0 for
    # the true class, and the reference form log(softmax(.)) gives inf.
    logits = -20.0 * torch.tensor([[0.05, 1.95, 1.9], [1.99, 0.01, 1.5]])
    targets = torch.tensor([1, 2])
    reference = -torch.log(torch.softmax(10.0 * logits, dim=1))[torch.arange(2), targets].mean()
    assert torch.isinf(reference)
    loss = IsoMaxPlusLoss()(logits, targets)
    assert torch.isfinite(loss) and loss.item() > 100


def test_loss_takes_soft_targets_and_label_smoothing():
    torch.manual_seed(5)
    logits = -torch.rand(4, 3)
    hard = torch.tensor([0, 2, 1, 1])
    one_hot = F.one_hot(hard, 3).float()
    torch.testing.assert_close(IsoMaxPlusLoss()(logits, one_hot), IsoMaxPlusLoss()(logits, hard))
    smoothed_targets = one_hot * 0.9 + 0.1 / 3
    torch.testing.assert_close(IsoMaxPlusLoss(label_smoothing=0.1)(logits, hard), IsoMaxPlusLoss()(logits, smoothed_targets))


@pytest.mark.parametrize("targets, message", [
    (torch.tensor([0.0, 1.0]), "integer class indices"),
    (torch.tensor([0, 1, 2]), "3 entries for a batch of 2"),
    (torch.tensor([0, 7]), r"in \[0, 2\]"),
    (torch.zeros(2, 4), r"logits' shape \(2, 3\)"),
    (torch.zeros(2, 3, dtype=torch.long), "must be float"),
    (torch.zeros(2, 3, 1), "class indices"),
])
def test_loss_rejects_bad_targets_with_a_clear_message(targets, message):
    with pytest.raises(ValueError, match=message):
        IsoMaxPlusLoss()(torch.zeros(2, 3), targets)


def test_loss_rejects_bad_settings():
    with pytest.raises(ValueError, match="entropic_scale"):
        IsoMaxPlusLoss(entropic_scale=0)
    with pytest.raises(ValueError, match="logits must be a float tensor"):
        IsoMaxPlusLoss()(torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2]))


def test_fused_head_matches_autograd_composition_and_inference_cache_follows_updates():
    torch.manual_seed(6)
    head = IsoMaxPlusHead(48, 300)
    with torch.no_grad():
        head.distance_scale.fill_(-1.7)
        head.temperature.fill_(1.3)
    features = torch.randn(20, 48, requires_grad=True)
    with torch.no_grad():
        features[0] = head.prototypes[5]  # distance 0: the floor's masked gradient
    weights = torch.randn(20, 300)
    (head(features) * weights).sum().backward()
    fused = [features.grad.clone(), head.prototypes.grad.clone(), head.distance_scale.grad.clone()]
    features.grad = None
    head.zero_grad()
    reference = -head.distance_scale.abs() * timm_isomax.euclidean_distances(
        F.normalize(features, dim=1), F.normalize(head.prototypes, dim=1), unit_norm=True) / head.temperature
    (reference * weights).sum().backward()
    # row 0 sits at distance ~0, where 1/d (~3e3 in fp32) amplifies rounding in both forms: atol 1e-5
    for got, expected in zip(fused, [features.grad, head.prototypes.grad, head.distance_scale.grad]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the cached inference path gives the same logits, before and after an update
        torch.testing.assert_close(head(features), reference.detach())
        head.prototypes.mul_(-1.0)
        torch.testing.assert_close(head(features), paper_isomaxplus_logits(features, head.prototypes, -1.7).float() / 1.3,
                                   rtol=1e-5, atol=1e-5)
        head.load_state_dict({**head.state_dict(), "prototypes": torch.randn(300, 48)})
        torch.testing.assert_close(head(features), paper_isomaxplus_logits(features, head.prototypes, -1.7).float() / 1.3,
                                   rtol=1e-5, atol=1e-5)

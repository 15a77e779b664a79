"""Heads and losses under numerical stress: extreme feature norms, a large learned distance scale, bf16
autocast and fp16 inputs (values and gradients finite, directions kept), and NaN/inf in training (a one-line
error). Complements tests/test_heads_losses.py (zero features, fp32 under autocast, underflowing softmax)."""
import pytest
import torch

from timm_isomax import DisMaxHead, DisMaxLoss, IsoMaxHead, IsoMaxLoss, IsoMaxPlusHead, IsoMaxPlusLoss, heads

HEADS = [(IsoMaxPlusHead, IsoMaxPlusLoss), (IsoMaxHead, IsoMaxLoss), (DisMaxHead, DisMaxLoss)]
MODES = ["matmul", "cdist"]


def _head(head_cls, mode, seed=0):
    torch.manual_seed(seed)
    head = head_cls(16, 4, distance_mode=mode)
    if head_cls is IsoMaxHead:
        with torch.no_grad():
            head.prototypes.normal_()  # IsoMax starts at the origin, where every distance equals |f|
    return head


def _logits_and_grads(head, loss_cls, features, dtype=None, autocast=False):
    features = features.to(dtype or features.dtype).requires_grad_(True)
    head.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = head(features)
        loss = loss_cls()(logits, torch.arange(features.shape[0]) % head.num_classes)
    loss.backward()
    return logits.detach(), loss.detach(), features.grad, head.prototypes.grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("magnitude", [1e30, 1e20, 1e-20, 1e-30])
def test_isomaxplus_keeps_the_direction_of_huge_and_tiny_features(mode, magnitude):
    # x.norm() overflows (or underflows) float32 beyond ~1e19: the features became 0 and every logit -sqrt(2)
    head = _head(IsoMaxPlusHead, mode)
    unit = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    logits, loss, grad_f, grad_p = _logits_and_grads(head, IsoMaxPlusLoss, unit * magnitude)
    expected = head(unit).detach()  # IsoMax+ depends on the direction only
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(loss) and torch.isfinite(grad_f).all() and torch.isfinite(grad_p).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("magnitude", [1e30, 1e20, 1e-30])
def test_isomax_distances_stay_finite_and_scale_with_huge_and_tiny_features(mode, magnitude):
    # |f|^2 overflowed float32 beyond ~1e19: inf - inf gave NaN distances (matmul) or inf (cdist)
    head = _head(IsoMaxHead, mode)
    features = torch.randn(3, 16, generator=torch.Generator().manual_seed(2)) * magnitude
    logits, loss, grad_f, grad_p = _logits_and_grads(head, IsoMaxLoss, features)
    reference = -torch.cdist(features.double(), head.prototypes.detach().double())
    torch.testing.assert_close(logits.double(), reference, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(loss) and torch.isfinite(grad_f).all() and torch.isfinite(grad_p).all()


def test_rescaling_changes_nothing_in_the_ordinary_range():
    # the rescaling divides by powers of two: bit-identical values where nothing over- or underflows
    head = _head(IsoMaxHead, "matmul")
    features = torch.randn(8, 16)
    squared = (features.pow(2).sum(1, keepdim=True) + head.prototypes.detach().pow(2).sum(1)
               - 2 * features @ head.prototypes.detach().t())
    torch.testing.assert_close(head(features), -squared.clamp_min(1e-12).sqrt(), rtol=1e-6, atol=1e-6)


def _count_rescaled_calls(monkeypatch):
    calls = []
    rescale = heads._rescaled_unit_rows
    monkeypatch.setattr(heads, "_rescaled_unit_rows", lambda x: calls.append(x.shape) or rescale(x))
    return calls, rescale


def test_ordinary_feature_rows_skip_the_rescaling_and_keep_its_bits(monkeypatch):
    # issue 32: dividing every row by a power of two made the forward 15% slower; on the CPU a batch whose
    # norms are all in range is normalised as it is, with the same bits as the rescaled form
    calls, rescale = _count_rescaled_calls(monkeypatch)
    generator = torch.Generator().manual_seed(4)
    batches = [torch.randn(32, 300, generator=generator) * 2.0 ** e for e in range(-30, 51, 10)]
    batches += [torch.randn(32, 300, generator=generator).clamp_min(0),  # ReLU-like: exact zeros
                torch.randn(32, 300, generator=generator) ** 5]  # heavy-tailed
    for features in batches:
        unit, norms = heads._unit_feature_rows(features)
        expected_unit, expected_norms = rescale(features)
        assert torch.equal(unit, expected_unit) and torch.equal(norms, expected_norms)
    head = IsoMaxPlusHead(300, 7)
    with torch.no_grad():
        head(batches[0])  # the inference path
    head(batches[0].requires_grad_()).sum().backward()  # the training path
    assert calls == []


@pytest.mark.parametrize("bad, has_direction", [(1e30, True), (1e-30, True), (0.0, False), (float("nan"), False)])
def test_a_batch_with_an_out_of_range_norm_is_rescaled(monkeypatch, bad, has_direction):
    calls, _ = _count_rescaled_calls(monkeypatch)
    features = torch.randn(5, 16, generator=torch.Generator().manual_seed(5))
    unit, norms = heads._unit_feature_rows(features)
    features[3] *= bad
    unit_bad, norms_bad = heads._unit_feature_rows(features)
    assert calls == [(5, 16)]
    rows = [0, 1, 2, 4]  # the other rows keep their bits
    assert torch.equal(unit_bad[rows], unit[rows]) and torch.equal(norms_bad[rows], norms[rows])
    if has_direction:
        torch.testing.assert_close(unit_bad[3], unit[3])  # and the huge or tiny one its direction


def test_the_rescaling_stays_without_a_branch_where_one_is_not_free(monkeypatch):
    # no host sync on accelerators (the meta device stands in for one); vmap's batched tensors have no values
    calls, _ = _count_rescaled_calls(monkeypatch)
    heads._unit_feature_rows(torch.empty(4, 8, device="meta"))
    assert calls == [(4, 8)]
    head = IsoMaxPlusHead(16, 4)
    features = torch.randn(2, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.vmap(head)(features), torch.stack([head(f) for f in features]))


@pytest.mark.parametrize("scale", [1e4, 1e8])
def test_a_large_learned_distance_scale_keeps_loss_and_gradients_finite(scale):
    head = _head(IsoMaxPlusHead, "matmul")
    with torch.no_grad():
        head.distance_scale.fill_(scale)
    logits, loss, grad_f, grad_p = _logits_and_grads(head, IsoMaxPlusLoss, torch.randn(6, 16))
    assert torch.isfinite(logits).all() and torch.isfinite(loss) and loss > 0
    assert torch.isfinite(grad_f).all() and torch.isfinite(grad_p).all()
    assert torch.isfinite(head.distance_scale.grad).all() and head.distance_scale.grad.item() > 0  # shrinks s


@pytest.mark.parametrize("head_cls, loss_cls", HEADS)
@pytest.mark.parametrize("dtype, autocast", [(torch.bfloat16, True), (torch.float16, False), (torch.bfloat16, False)])
def test_low_precision_inputs_give_fp32_finite_values_and_gradients(head_cls, loss_cls, dtype, autocast):
    head = _head(head_cls, "matmul")
    # 1e4 * randn: near fp16's maximum (65504). Not 1e-4 or 0 in fp16: the gradient of f / |f| is ~1/|f|, which
    # exceeds fp16's range there (a property of the formula; GradScaler then skips the step).
    magnitudes = (1.0, 1e4) if dtype == torch.float16 else (1.0, 1e4, 1e-4, 0.0)
    for magnitude in magnitudes:
        features = torch.randn(4, 16, generator=torch.Generator().manual_seed(3)) * magnitude
        logits, loss, grad_f, grad_p = _logits_and_grads(head, loss_cls, features, dtype, autocast)
        assert logits.dtype == torch.float32 and grad_f.dtype == dtype
        assert torch.isfinite(logits).all() and torch.isfinite(loss)
        assert torch.isfinite(grad_f.float()).all() and torch.isfinite(grad_p).all()


@pytest.mark.parametrize("head_cls, loss_cls", HEADS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_features_in_training_give_a_one_line_error(head_cls, loss_cls, bad):
    head = _head(head_cls, "matmul").train()
    features = torch.randn(4, 16)
    features[2, 5] = bad
    with pytest.raises(ValueError, match=r"loss is not finite: [1-4] of 4 rows of logits contain NaN/inf.*learning rate") as error:
        loss_cls()(head(features), torch.tensor([0, 1, 2, 3]))
    assert "\n" not in str(error.value)


def test_nan_soft_targets_and_overflowing_logits_are_named():
    logits = -torch.rand(2, 3)
    with pytest.raises(ValueError, match="soft targets contain NaN/inf"):
        IsoMaxPlusLoss()(logits, torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="loss overflowed"):
        IsoMaxPlusLoss(reduction="sum")(torch.tensor([[-3e38, 0.0]]), torch.tensor([0]))


def test_the_finite_check_is_cpu_only_and_leaves_finite_losses_untouched():
    # no check (no host sync) on other devices;: the meta device stands in for an accelerator
    logits = torch.empty(4, 3, device="meta")
    assert IsoMaxPlusLoss()(logits, torch.zeros(4, dtype=torch.long, device="meta")).device.type == "meta"
    logits = -torch.rand(4, 3)
    torch.testing.assert_close(IsoMaxPlusLoss(reduction="none")(logits, torch.tensor([0, 1, 2, 0])),
                               torch.nn.functional.cross_entropy(10 * logits, torch.tensor([0, 1, 2, 0]), reduction="none"))

"""DisMax (Macedo, Zanchettin & Ludermir, 2022): head, loss, fractional probability regularisation (FPR), the
MMLES / MMLS scores, the `<arch>_dismax` registry names, conversion, saving, calibration, the trainer and the
benchmark's per-head settings. Formulas are computed independently here, in float64, from the paper's reference
code (dlmacedo/distinction-maximization-loss, losses/dismax.py)."""
import importlib.util
import json
import math
import re

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

import timm_isomax
from timm_isomax import DisMaxHead, DisMaxLoss, IsoMaxClassifier, convert_softmax_model
from timm_isomax.fpr import FractionalProbability, fractional_probability_batch
from timm_isomax.scores import mmles, mmls

from .mnist_models import one_thread

POSTHOC = importlib.util.find_spec("pytorch_ood") is not None  # the post-hoc detectors' extra


def reference_dismax_logits(features, prototypes, scale, temperature=1.0):
    # d = |s| * || f/|f| - p/|p| || / sqrt(2), element-wise (B, C, D); logits = -(d + mean_c d) / T
    f = features.double() / features.double().norm(dim=1, keepdim=True)
    p = prototypes.double() / prototypes.double().norm(dim=1, keepdim=True)
    d = abs(float(scale)) * ((f[:, None, :] - p[None, :, :]) ** 2).sum(-1).sqrt() / math.sqrt(2.0)
    return -(d + d.mean(dim=1, keepdim=True)) / temperature


def reference_negative_entropy(logits):
    p = torch.softmax(logits.double(), dim=1)
    return (p * torch.log(p)).sum(dim=1)


# --- head -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["matmul", "cdist"])
def test_head_matches_the_reference_formula(mode):
    torch.manual_seed(0)
    head = DisMaxHead(64, 7, distance_mode=mode)
    with torch.no_grad():
        head.distance_scale.fill_(-3.5)  # |s|: a negative learned scale must not flip the sign
        head.temperature.fill_(1.7)
    features = torch.randn(16, 64) * 5
    got = head(features)
    assert got.dtype == torch.float32 and got.shape == (16, 7) and (got <= 0).all()
    torch.testing.assert_close(got.double(), reference_dismax_logits(features, head.prototypes.detach(), -3.5, 1.7),
                               rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the inference path (cached unit prototypes) gives the same logits
        torch.testing.assert_close(head(features), got, rtol=1e-6, atol=1e-6)


def test_initialisation_is_the_references():
    torch.manual_seed(0)
    head = DisMaxHead(256, 100)
    p = head.prototypes.detach()
    assert abs(p.mean().item()) < 0.02 and abs(p.std().item() - 1.0) < 0.02  # N(0, 1)
    assert head.distance_scale.item() == 1.0 and head.temperature.item() == 1.0
    assert "temperature" in head.state_dict() and "temperature" not in dict(head.named_parameters())  # not learned


@pytest.mark.parametrize("mode", ["matmul", "cdist"])
def test_gradients_match_float64_autograd_of_the_reference(mode):
    torch.manual_seed(1)
    head = DisMaxHead(48, 30, distance_mode=mode)
    with torch.no_grad():
        head.distance_scale.fill_(-2.3)
        head.temperature.fill_(1.3)
    features = torch.randn(20, 48, requires_grad=True)
    weights = torch.randn(20, 30)
    (head(features) * weights).sum().backward()
    f64 = features.detach().double().requires_grad_(True)
    p64 = head.prototypes.detach().double().requires_grad_(True)
    s64 = torch.tensor(-2.3, dtype=torch.float64, requires_grad=True)
    fn, pn = f64 / f64.norm(dim=1, keepdim=True), p64 / p64.norm(dim=1, keepdim=True)
    d = s64.abs() * ((fn[:, None] - pn[None]) ** 2).sum(-1).sqrt() / math.sqrt(2.0)
    (-(d + d.mean(dim=1, keepdim=True)) / 1.3 * weights.double()).sum().backward()
    for got, expected in ((features.grad, f64.grad), (head.prototypes.grad, p64.grad),
                          (head.distance_scale.grad[0], s64.grad)):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_head_computes_in_fp32_under_autocast_and_compiles_without_graph_breaks():
    torch.manual_seed(3)
    head, features = DisMaxHead(32, 5), torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(features.bfloat16())
    # fp32, as if autocast were off (bf16 would be ~1e-2 off)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, head(features.bfloat16().float()), rtol=1e-6, atol=1e-6)
    compiled = torch.compile(head, fullgraph=True)  # fullgraph=True raises on any graph break
    torch.testing.assert_close(compiled(features), head(features))


def test_onnx_export_of_the_head_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(4)
    head = DisMaxHead(24, 6).eval()
    path = tmp_path / "dismax_head.onnx"
    torch.onnx.export(head, (torch.randn(2, 24),), str(path), input_names=["features"], output_names=["logits"],
                      dynamic_axes={"features": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(path))
    features = torch.randn(5, 24)
    (logits,) = session.run(None, {"features": features.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits).double(),
                               reference_dismax_logits(features, head.prototypes.detach(), 1.0), rtol=1e-4, atol=1e-5)


# --- scores ---------------------------------------------------------------------------------------
def test_mmles_and_mmls_are_the_reference_formulas_in_float64():
    torch.manual_seed(5)
    logits = -torch.rand(9, 6) * 4
    max_plus_mean = logits.double().max(dim=1).values + logits.double().mean(dim=1)
    assert mmls(logits).dtype == mmles(logits).dtype == torch.float64
    torch.testing.assert_close(mmls(logits), max_plus_mean)
    torch.testing.assert_close(mmles(logits), max_plus_mean + reference_negative_entropy(logits))
    assert timm_isomax.scores.get_score("mmles") is mmles and timm_isomax.scores.get_score("mmls") is mmls


def test_mmles_is_higher_at_a_prototype_than_equidistant_from_all():
    # higher = more in-distribution: a feature on a prototype vs one orthogonal to every prototype
    head = DisMaxHead(8, 4)
    with torch.no_grad():
        head.prototypes.copy_(torch.eye(8)[:4])
    features = torch.stack([torch.eye(8)[0], torch.eye(8)[6]])
    on_prototype, nowhere = mmles(head(features)).tolist()
    assert on_prototype > nowhere
    # equidistant: every d = 1 / sqrt(2) * sqrt(2) = 1, so logits are all -2 and the entropy is log 4
    assert nowhere == pytest.approx(-2 - 2 - math.log(4), abs=1e-5)


# --- loss -----------------------------------------------------------------------------------------
def test_plain_loss_is_cross_entropy_of_ten_times_the_logits():
    torch.manual_seed(6)
    logits, targets = -torch.rand(6, 5) * 3, torch.tensor([0, 1, 2, 3, 4, 0])
    expected = -torch.log_softmax(10.0 * logits.double(), dim=1)[torch.arange(6), targets].mean()
    torch.testing.assert_close(DisMaxLoss()(logits, targets).double(), expected, rtol=1e-6, atol=1e-6)


def reference_fpr_loss(logits, targets, smoothing=0.0):
    # the reference DisMaxLossSecondPart with FPR: CE on the first B // 2 rows, KL(t || q) on the rest, mean of both
    half, classes = logits.shape[0] // 2, logits.shape[1]
    log_q = torch.log_softmax(10.0 * logits.double(), dim=1)
    t = targets.double()
    plain_t = t[:half] * (1 - smoothing) + smoothing / classes
    cross_entropy = -(plain_t * log_q[:half]).sum(1).mean()
    rest = t[half:]
    kl = torch.where(rest > 0, rest * (torch.log(rest) - log_q[half:]), torch.zeros_like(rest)).sum(1).mean()
    return (cross_entropy + kl) / 2


@pytest.mark.parametrize("batch, smoothing", [(8, 0.0), (9, 0.1)])
def test_fpr_loss_is_half_cross_entropy_half_kl(batch, smoothing):
    torch.manual_seed(7)
    logits = -torch.rand(batch, 10) * 2
    _, targets = fractional_probability_batch(torch.randn(batch, 3, 8, 8), torch.randint(0, 10, (batch,)), 10)
    got = DisMaxLoss(fpr=True, label_smoothing=smoothing)(logits, targets)
    torch.testing.assert_close(got.double(), reference_fpr_loss(logits, targets, smoothing), rtol=1e-6, atol=1e-6)
    # not the plain loss on the same soft targets: the second half is a KL, not a cross-entropy
    assert abs(got.item() - DisMaxLoss()(logits, targets).item()) > 1e-3


def test_fpr_loss_refuses_what_it_cannot_score():
    logits = torch.zeros(8, 10)
    with pytest.raises(ValueError, match="takes the soft targets .* of timm_isomax.fpr.fractional_probability_batch"):
        DisMaxLoss(fpr=True)(logits, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 7, got 6"):
        DisMaxLoss(fpr=True)(torch.zeros(6, 10), torch.full((6, 10), 0.1))
    with pytest.raises(ValueError, match="reduction must be 'mean'"):
        DisMaxLoss(fpr=True, reduction="none")


# --- fractional probability regularisation --------------------------------------------------------
def test_quadrant_images_and_targets_are_built_as_in_the_reference():
    torch.manual_seed(8)
    batch, height, width = 11, 5, 7  # odd sizes: the reference splits at H // 2, W // 2
    images, labels = torch.randn(batch, 2, height, width), torch.randint(0, 6, (batch,))
    original = images.clone()
    mixed, targets = fractional_probability_batch(images, labels, num_classes=6)
    assert torch.equal(images, original)  # the input batch is not modified
    half, rows, top, left = batch // 2, batch - batch // 2, height // 2, width // 2
    assert torch.equal(mixed[:half], images[:half])
    torch.testing.assert_close(targets[:half], F.one_hot(labels[:half], 6).float())
    for j in range(rows):
        sources = [half + (j - k) % rows for k in range(4)]  # itself, then 1, 2 and 3 images back in the half
        expected = torch.empty(2, height, width)
        expected[:, :top, :left] = images[sources[0], :, :top, :left]   # top-left: its own
        expected[:, top:, :left] = images[sources[1], :, top:, :left]   # bottom-left
        expected[:, :top, left:] = images[sources[2], :, :top, left:]   # top-right
        expected[:, top:, left:] = images[sources[3], :, top:, left:]   # bottom-right
        assert torch.equal(mixed[half + j], expected), j
        target = torch.zeros(6)
        for source in sources:
            target[labels[source]] += 0.25
        torch.testing.assert_close(targets[half + j], target)
    torch.testing.assert_close(targets.sum(1), torch.ones(batch))


def test_soft_targets_from_mixup_combine_linearly():
    torch.manual_seed(9)
    soft = torch.softmax(torch.randn(8, 4), dim=1)
    _, targets = FractionalProbability(4)(torch.randn(8, 3, 4, 4), soft)
    assert torch.equal(targets[:4], soft[:4])
    torch.testing.assert_close(targets[4], (soft[4] + soft[7] + soft[6] + soft[5]) / 4)


@pytest.mark.parametrize("images, targets, message", [
    (torch.randn(8, 16), torch.arange(8), r"needs a batch of images \(B, C, H, W\)"),
    (torch.randn(8, 3, 1, 8), torch.arange(8), "H, W >= 2"),
    (torch.randn(6, 3, 8, 8), torch.arange(6), "at least 7, got 6"),
    (torch.randn(8, 3, 8, 8), torch.zeros(8, 5), "soft targets have 5 classes, num_classes says 10"),
])
def test_fpr_batches_refuse_bad_input_in_one_line(images, targets, message):
    with pytest.raises(ValueError, match=message) as error:
        fractional_probability_batch(images, targets, num_classes=10)
    assert "\n" not in str(error.value)


# --- training -------------------------------------------------------------------------------------
def _patterns(n, generator):
    # 4 classes of 8x8 grey images: a bright quadrant each, plus noise
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = 0.3 * torch.randn(n, 1, 8, 8, generator=generator)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[i, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 1.0
    return images, labels


@pytest.mark.parametrize("fpr", [False, True])
def test_real_training_steps_lower_the_loss(fpr):
    generator = torch.Generator().manual_seed(10)
    torch.manual_seed(10)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 64, 16), DisMaxHead(16, 4))
    loss_fn, transform = DisMaxLoss(fpr=fpr), FractionalProbability(4)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    with one_thread():
        for _ in range(40):
            images, labels = _patterns(32, generator)
            images, targets = transform(images, labels) if fpr else (images, labels)
            loss = loss_fn(net(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    images, labels = _patterns(64, generator)
    with torch.no_grad():
        assert (net(images).argmax(1) == labels).float().mean() > 0.9


def test_mmles_ranks_training_clusters_above_random_directions():
    # a robust property of a trained head: features of the classes it learned score higher than random directions
    generator = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    means = torch.randn(5, 32, generator=generator)
    head, loss_fn = DisMaxHead(32, 5), DisMaxLoss()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)

    def cluster_samples(n):
        labels = torch.randint(0, 5, (n,), generator=generator)
        return means[labels] + 0.3 * torch.randn(n, 32, generator=generator), labels

    for _ in range(100):
        features, labels = cluster_samples(64)
        loss = loss_fn(head(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        id_scores = mmles(head(cluster_samples(500)[0]))
        ood_scores = mmles(head(torch.randn(500, 32, generator=generator)))
    assert timm_isomax.auroc(id_scores, ood_scores) > 0.95


# --- registry, timm API, conversion, saving, calibration ------------------------------------------
def test_resnet50_dismax_works_like_its_siblings():
    model = timm.create_model("resnet50_dismax", num_classes=10)
    assert isinstance(model, IsoMaxClassifier) and isinstance(model.get_classifier(), DisMaxHead)
    assert (model.head_type, model.ood_config) == ("dismax", {"score": "mmles", "threshold": None})
    assert model.pretrained_cfg["architecture"] == "resnet50_dismax" and model.head.in_features == 2048
    assert timm_isomax.base_architecture("resnet50_dismax.a1_in1k") == ("resnet50", "dismax")
    assert [n.split(".", 1)[1] for n in timm.list_pretrained("resnet50_dismax.*")] == \
        [n.split(".", 1)[1] for n in timm.list_pretrained("resnet50.*")]


def test_every_architecture_with_an_isomaxplus_name_has_a_dismax_name():
    plus = {n[:-len("_isomaxplus")] for n in timm.list_models("*_isomaxplus")}
    dismax = {n[:-len("_dismax")] for n in timm.list_models("*_dismax")}
    assert dismax == plus and len(dismax) >= 1364
    assert set(timm_isomax.list_isomax_models(head_type="dismax")) == set(timm.list_models("*_dismax"))


@pytest.mark.parametrize("arch, kwargs", [("resnet10t", {}), ("vit_tiny_patch16_224", dict(img_size=64)),
                                          ("deit_tiny_distilled_patch16_224", dict(img_size=64)), ("dla46_c", {})])
def test_sample_families_create_and_train(arch, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(arch + "_dismax", num_classes=10, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 10) and (logits <= 0).all()
    pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    expected = reference_dismax_logits(pre_logits.detach(), model.head.prototypes.detach(), 1.0)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)
    DisMaxLoss()(logits, torch.tensor([1, 7])).backward()
    assert model.head.prototypes.grad is not None and model.head.distance_scale.grad is not None


def test_conversion_predicts_like_the_cosine_classifier_and_only_that():
    torch.manual_seed(12)
    softmax = timm.create_model("resnet10t", num_classes=6).eval()
    x = torch.randn(16, 3, 64, 64)
    with torch.no_grad():
        features = softmax.forward_head(softmax.forward_features(x), pre_logits=True).double()
        source_logits = softmax(x).double()
    weight = softmax.fc.weight.detach().double()
    cosine = F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T  # computed here, independently
    model = convert_softmax_model(softmax, head_type="dismax").eval()
    assert model.conversion.method == "classifier" and model.pretrained_cfg["architecture"] == "resnet10t_dismax"
    with torch.no_grad():
        logits = model(x).double()
    distance = torch.sqrt(torch.clamp(2 - 2 * cosine, min=0)) / math.sqrt(2.0)
    torch.testing.assert_close(logits, -(distance + distance.mean(dim=1, keepdim=True)), rtol=1e-4, atol=1e-4)
    assert torch.equal(logits.argmax(1), cosine.argmax(1))
    # faithful to the predictions of the cosine classifier, not to the source's logits
    assert not torch.allclose(logits, source_logits, atol=1e-2)


def test_a_softmax_checkpoint_of_the_base_converts_through_the_registry(tmp_path):
    torch.manual_seed(13)
    softmax = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t.safetensors"
    safetensors.torch.save_file(softmax.state_dict(), str(path))
    model = timm.create_model("resnet10t_dismax", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert isinstance(model.head, DisMaxHead) and model.conversion.method == "classifier"
    torch.testing.assert_close(model.head.prototypes, softmax.fc.weight)
    other = timm.create_model("resnet10t_dismax", pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert other.conversion.method == "fresh" and other.num_classes == 3


def test_save_pretrained_round_trips_through_local_dir_with_threshold_and_calibration(tmp_path):
    from timm_isomax.calibration import calibrate_temperature
    from timm_isomax.hub import read_config, save_pretrained
    from timm_isomax.ood import fit_ood_threshold, ood_scores

    torch.manual_seed(14)
    model = timm.create_model("resnet10t_dismax", num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        model.head.distance_scale.fill_(6.0)
    images, labels = torch.randn(24, 1, 32, 32), torch.randint(0, 3, (24,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=12)
    with torch.no_grad():
        before = model(images)
    result = calibrate_temperature(model, loader)
    assert result.temperature != 1.0 and result.nll_after <= result.nll_before + 1e-9
    with torch.no_grad():  # the temperature divides every DisMax logit (the mean term included)
        torch.testing.assert_close(model(images), before / result.temperature, rtol=1e-5, atol=1e-6)
    threshold = fit_ood_threshold(model, loader, fitted_on="random")
    assert model.ood_config["score"] == "mmles"
    assert (ood_scores(model, images) >= threshold).float().mean() >= 0.95
    folder = save_pretrained(model, tmp_path / "m", label_names=["a", "b", "c"])
    assert read_config(folder)["isomax"]["head_type"] == "dismax"
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert isinstance(loaded.head, DisMaxHead) and loaded.ood_config == model.ood_config
    assert loaded.head.temperature.item() == pytest.approx(result.temperature)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


# --- trainer and benchmark ------------------------------------------------------------------------
DIGITS = dict(dataset="sklearn-digits", img_size=32, augmentation="none", workers=0, progress=False)


@pytest.mark.parametrize("extra, message", [
    (["--dismax-fpr"], "--dismax-fpr is DisMax's regularisation .* the head is isomaxplus: add --head dismax"),
    (["--head", "dismax", "--dismax-fpr", "--batch-size", "6"], "needs a batch of at least 7, got 6"),
    (["--head", "dismax", "--dismax-fpr", "--freeze-backbone", "--no-aug"], "cached features cannot carry"),
    (["--head", "softmax", "--model", "resnet10t_dismax"], "names an IsoMax architecture but --head is softmax"),
])
def test_wrong_fpr_combinations_are_one_line_errors(extra, message, tmp_path, capsys):
    from timm_isomax.cli.finetune import main as finetune_main

    args = ["--model", "resnet10t", "--dataset", "sklearn-digits", "--output", str(tmp_path / "out"), *extra]
    if "--model" in extra:
        args = args[2:]
    code, stderr = finetune_main(args), capsys.readouterr().err
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr[-1500:]
    assert re.search(message, stderr), stderr


def test_a_dismax_model_name_picks_the_head_its_score_and_fpr():
    from timm_isomax.train import TrainConfig

    cfg = TrainConfig(model="resnet10t_dismax.c3_in1k", dismax_fpr=True, output="o", **DIGITS)
    assert (cfg.effective_head, cfg.ood_score) == ("dismax", "mmles")
    # a setting added after runs were recorded stays out of the record at its default (--resume compares records)
    assert "dismax_fpr" not in TrainConfig(model="resnet10t", output="o", **DIGITS).to_json()
    assert cfg.to_json()["dismax_fpr"] is True


@pytest.mark.slow
def test_a_dismax_fpr_run_trains_evaluates_and_saves(tmp_path):
    from timm_isomax.train import EVALUATION_NAME, HEAD_SCORES, LOG_NAME, TRAINING_DIR, TrainConfig, train

    with one_thread():
        output = train(TrainConfig(model="resnet10t", from_scratch=True, head="dismax", dismax_fpr=True, in_chans=1,
                                   epochs=3, train_limit=480, val_limit=120, batch_size=32, lr=0.05, mixup=0.2,
                                   ood_datasets=["sklearn-digits"], output=str(tmp_path / "run"), **DIGITS))
    log = [json.loads(line) for line in (output / TRAINING_DIR / LOG_NAME).read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"] and log[-1]["distance_scale"] is not None
    evaluation = json.loads((output / TRAINING_DIR / EVALUATION_NAME).read_text())
    # every score of the head: its logit scores, the feature scores and KNN on the bank; Mahalanobis needs more
    # training features than the feature width (512) plus classes, more than this run's bank holds: left out, saying why
    assert evaluation["head"] == "dismax" and set(evaluation["metrics"]) == {
        *HEAD_SCORES["dismax"], "norm_cosine", "feature_norm", "knn10", "knn50", "knn200"}
    assert set(evaluation["unavailable_scores"]) == ({"mahalanobis"} if POSTHOC else set())
    assert all("more training features than feature width" in why for why in evaluation["unavailable_scores"].values())
    assert evaluation["feature_bank"]["rows"] < 512 + 10 and evaluation["feature_bank"]["width"] == 512
    # no --score: the score is the one with the best mean validation AUROC (ID validation against its jigsaw puzzles)
    selection = evaluation["selection"]
    assert evaluation["chosen_by"] == "validation" and selection["sets"] == ["jigsaw"]
    assert set(selection["aurocs"]) == set(evaluation["metrics"])
    assert evaluation["score"] == max(selection["aurocs"], key=lambda name: selection["aurocs"][name]["mean"])
    assert evaluation["accuracy"] > 0.3
    config = json.loads((output / "config.json").read_text())
    assert config["architecture"] == "resnet10t_dismax" and config["isomax"]["score"] == evaluation["score"]
    assert config["isomax"]["threshold"] == evaluation["threshold"]
    loaded = timm.create_model(f"local-dir:{output}", pretrained=True)
    assert isinstance(loaded.head, DisMaxHead)


def test_a_protocol_gives_head_settings_to_their_head_only(tmp_path):
    from timm_isomax.benchmark import load_protocol, train_config

    definition = dict(name="p", id_dataset="id", ood_datasets=["o"], heads=["softmax", "isomaxplus", "dismax"],
                      train=dict(model="resnet10t", from_scratch=True, batch_size=32),
                      head_settings={"dismax": {"dismax_fpr": True}})
    (tmp_path / "p.json").write_text(json.dumps(definition))
    protocol = load_protocol(tmp_path / "p.json")
    configs = {head: train_config(protocol, head, 0, None, tmp_path, None) for head in protocol.heads}
    assert [configs[h].dismax_fpr for h in protocol.heads] == [False, False, True]
    assert configs["dismax"].batch_size == configs["softmax"].batch_size == 32  # the shared recipe
    assert protocol.to_json()["head_settings"] == {"dismax": {"dismax_fpr": True}}
    (tmp_path / "plain.json").write_text(json.dumps(dict(definition, head_settings={})))
    assert "head_settings" not in load_protocol(tmp_path / "plain.json").to_json()  # older definitions unchanged
    (tmp_path / "bad.json").write_text(json.dumps(dict(definition, head_settings={"isomax": {"dismax_fpr": True}})))
    with pytest.raises(ValueError, match="'head_settings' must map heads of 'heads'"):
        load_protocol(tmp_path / "bad.json")
    (tmp_path / "recipe.json").write_text(json.dumps(dict(definition, head_settings={"dismax": {"lr": 0.5}})))
    with pytest.raises(ValueError, match="the recipe itself is shared"):  # one head may not get another recipe
        load_protocol(tmp_path / "recipe.json")
    wrong = dict(definition, head_settings={"isomaxplus": {"dismax_fpr": True}})
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match="not a valid setting for every head .*--dismax-fpr is DisMax's"):
        load_protocol(tmp_path / "wrong.json")


@pytest.mark.parametrize("dismax_fpr, ood_val_datasets, expected", [
    (True, ["sklearn-digits"], ["sklearn-digits"]),  # mosaic training with a real OOD validation set: no puzzles
    (False, ["sklearn-digits"], ["jigsaw", "sklearn-digits"]),
    (True, [], ["jigsaw"]),  # nothing else to choose on: the puzzles stay (and the run says what that risks)
])
def test_a_run_trained_on_mosaics_chooses_its_score_without_jigsaw_puzzles(dismax_fpr, ood_val_datasets, expected):
    from timm_isomax.train import TrainConfig
    from timm_isomax.train.final import FinalSets, jigsaw_left_out
    from timm_isomax.data import dataset_for_model, load_sample

    cfg = TrainConfig(model="resnet10t_dismax", head="dismax", dismax_fpr=dismax_fpr, in_chans=1, val_limit=20,
                      ood_val_datasets=ood_val_datasets, ood_val_split="test", output="o", **DIGITS)
    model = timm.create_model("resnet10t_dismax", num_classes=10, in_chans=1)
    data_config = dict(input_size=(1, 32, 32), mean=(0.5,), std=(0.5,), interpolation="bilinear", crop_pct=1.0)
    val_images = dataset_for_model(model, load_sample("sklearn-digits", "test", 20), data_config=data_config)
    sets = FinalSets(cfg, model, None, data_config, val_images, {}, None, torch.device("cpu")).ood_val()
    assert list(sets) == expected and jigsaw_left_out(cfg) == (expected == ["sklearn-digits"])
    assert all(len(dataset) == 20 for dataset in sets.values())


def test_the_choice_records_why_a_set_was_left_out():
    from timm_isomax.selection import choose_score

    id_scores, ood = {"msp": torch.tensor([2.0, 3.0])}, {"near": {"msp": torch.tensor([0.0, 2.5])}}
    assert choose_score(id_scores, ood).criterion.endswith("validation sets")
    noted = choose_score(id_scores, ood, note="jigsaw puzzles left out: why")
    assert noted.criterion.endswith("validation sets (jigsaw puzzles left out: why)") and noted.sets == ["near"]

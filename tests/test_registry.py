"""`import timm_isomax` registers IsoMax variants of every timm classification architecture, and they
behave as timm users expect."""
import json

import pytest
import safetensors.torch
import timm
import torch
from timm.optim import param_groups_layer_decay

import timm_isomax
from timm_isomax import IsoMaxClassifier, IsoMaxHead, IsoMaxPlusHead

ENCODER_ONLY = {"deepseek_vit_412m_enc", "gemma4_vit_167m_enc", "gemma4_vit_570m_enc", "mobilenetv5_300m_enc",
                "qwen3_vit_88m_enc", "qwen3_vit_306m_enc", "qwen3_vit_416m_enc"}

# One small member of each family with its own classifier layout; (kwargs, input size).
SAMPLE_ARCHS = {
    "resnet10t": ({}, 64),                                     # Linear fc
    "vit_tiny_patch16_224": (dict(img_size=64), 64),           # token head
    "convnext_atto": ({}, 64),                                 # NormMlpClassifierHead
    "efficientnet_b0": ({}, 64),
    "deit_tiny_distilled_patch16_224": (dict(img_size=64), 64),  # distilled: tuple of heads
    "levit_128s": (dict(img_size=64), 64),                     # tuple of NormLinear heads
    "mobilenetv3_small_050": ({}, 64),                         # conv_head before the classifier
    "dla46_c": ({}, 64),                                       # 1x1 Conv2d classifier
    "resnetv2_18": ({}, 64),                                   # 1x1 Conv2d classifier
    "repvit_m0_9": ({}, 64),                                   # RepVitClassifier container
    "efficientvit_m0": ({}, 64),                               # get_classifier() bug at num_classes=0
    "cifar_airnet_small": ({}, 32),                            # timm_isomax's own: global max pool, Linear fc
}


# the architectures timm_isomax itself registers in timm
OWN_ARCHS = {*(f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110, 1202)), "cifar_airnet", "cifar_airnet_small"}
SUFFIXES = ("_isomaxplus", "_isomax", "_dismax")  # one per head kind, written out: the test does not read the library's


def base_names():
    return [n for n in timm.list_models() if not n.endswith(SUFFIXES)]


def test_every_classification_arch_is_registered_under_every_suffix():
    bases = base_names()
    classification = [n for n in bases if n not in ENCODER_ONLY]
    assert OWN_ARCHS <= set(bases)
    if timm.__version__ == "1.0.31":  # the tested version (constraints.txt): its exact counts
        assert len(set(bases) - OWN_ARCHS) == 1371 and len(classification) == 1364 + len(OWN_ARCHS)
    else:  # another allowed timm: at least as many, every classification arch covered (asserted below)
        assert len(classification) >= 1364 + len(OWN_ARCHS)
    for suffix in SUFFIXES:
        registered = timm.list_models("*" + suffix)
        assert sorted(registered) == sorted(n + suffix for n in classification)
        assert all(timm.is_model(n) for n in registered)
    assert not any(timm.is_model(n + "_isomaxplus") for n in ENCODER_ONLY)
    assert len(timm_isomax.list_isomax_models(head_type="isomax")) == len(classification)


def test_pretrained_tags_mirror_the_base_arch():
    base_tags = timm.list_pretrained("resnet50.*")
    mirrored = timm.list_pretrained("resnet50_isomaxplus.*")
    assert [n.split(".", 1)[1] for n in mirrored] == [n.split(".", 1)[1] for n in base_tags] and len(base_tags) > 5
    cfg = timm.models.get_pretrained_cfg("resnet50_isomaxplus.a1_in1k")
    base_cfg = timm.models.get_pretrained_cfg("resnet50.a1_in1k")
    assert cfg.hf_hub_id == base_cfg.hf_hub_id == "timm/resnet50.a1_in1k"  # weights of the base
    assert (cfg.architecture, cfg.classifier, cfg.first_conv) == ("resnet50_isomaxplus", "head", "backbone.conv1")
    assert (cfg.mean, cfg.std, cfg.input_size, cfg.num_classes) == (base_cfg.mean, base_cfg.std, base_cfg.input_size, 1000)


@pytest.mark.parametrize("arch", list(SAMPLE_ARCHS))
def test_sample_families_create_and_train(arch):
    kwargs, size = SAMPLE_ARCHS[arch]
    torch.manual_seed(0)
    model = timm.create_model(arch + "_isomaxplus", num_classes=10, **kwargs)
    assert isinstance(model, IsoMaxClassifier) and isinstance(model.get_classifier(), IsoMaxPlusHead)
    x = torch.randn(2, 3, size, size)
    logits = model(x)
    assert logits.shape == (2, 10) and (logits <= 0).all()
    # forward == head(pre-logits) == head(base model with num_classes=0)
    pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pre_logits.shape == (2, model.head_hidden_size)
    model.eval()
    torch.testing.assert_close(model(x), model.head(model.backbone(x)))
    model.train()
    timm_isomax.IsoMaxPlusLoss()(model(x), torch.tensor([1, 7])).backward()
    assert model.head.prototypes.grad is not None and model.head.distance_scale.grad is not None
    # the loss reaches the backbone's first layer (some archs zero-init residual branches, so not every
    # inner weight gets a gradient at step one, with SoftMax either)
    first_name, first = next(iter(model.backbone.named_parameters()))
    assert first.grad is not None and first.grad.abs().sum() > 0, first_name


@pytest.mark.parametrize("arch", ["resnet10t", "vit_tiny_patch16_224", "convnext_atto", "levit_128s", "dla46_c"])
def test_layer_decay_groups_are_identical_to_the_base_models(arch):
    kwargs = SAMPLE_ARCHS[arch][0]
    base = timm.create_model(arch, num_classes=10, **kwargs)
    isomax = timm.create_model(arch + "_isomaxplus", num_classes=10, **kwargs)
    classifier_names = {n for n, _ in base.named_parameters()} - {n for n, _ in isomax.backbone.named_parameters()}

    def groups(model, rename):
        out = {}
        for g in param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75):
            names = {rename(n) for n, p in model.named_parameters() if any(p is q for q in g["params"])}
            out[(g["lr_scale"], g["weight_decay"])] = out.get((g["lr_scale"], g["weight_decay"]), set()) | names
        return out

    base_groups = groups(base, lambda n: "CLASSIFIER" if n in classifier_names else n)
    isomax_groups = groups(isomax, lambda n: "CLASSIFIER" if n.startswith("head.") else n.removeprefix("backbone."))
    assert base_groups == isomax_groups and len(base_groups) > 2


def test_no_weight_decay_is_rerooted():
    model = timm.create_model("vit_tiny_patch16_224_isomaxplus", num_classes=10)
    assert model.no_weight_decay() == {"backbone." + n for n in model.backbone.no_weight_decay()}
    assert "backbone.pos_embed" in model.no_weight_decay()


def test_timm_keyword_arguments_pass_through():
    x1 = torch.randn(2, 1, 64, 64)
    model = timm.create_model("resnet10t_isomaxplus", num_classes=5, in_chans=1, drop_rate=0.5, global_pool="catavgmax")
    assert model(x1).shape == (2, 5) and model.head.in_features == 2 * model.num_features
    assert model.backbone.drop_rate == 0.5
    isomax = timm.create_model("resnet10t_isomax", num_classes=3)
    assert isinstance(isomax.head, IsoMaxHead) and isomax.pretrained_cfg["architecture"] == "resnet10t_isomax"
    overlay = timm.create_model("resnet10t_isomaxplus", num_classes=3, pretrained_cfg_overlay=dict(mean=(0.1, 0.2, 0.3)))
    assert overlay.pretrained_cfg["mean"] == (0.1, 0.2, 0.3)
    assert timm.data.resolve_data_config({}, model=overlay)["mean"] == (0.1, 0.2, 0.3)
    exact = timm.create_model("resnet10t_isomaxplus", num_classes=3, distance_mode="cdist")
    assert exact.head.distance_mode == "cdist"


def test_features_only_goes_to_the_base_arch():
    torch.manual_seed(0)
    features = timm.create_model("resnet10t_isomaxplus", features_only=True, out_indices=(2, 4))
    base = timm.create_model("resnet10t", features_only=True, out_indices=(2, 4))
    assert type(features) is type(base) and features.feature_info.channels() == base.feature_info.channels()
    assert [o.shape for o in features(torch.randn(1, 3, 64, 64))] == [o.shape for o in base(torch.randn(1, 3, 64, 64))]


@pytest.mark.parametrize("name, widths, params", [("cifar_airnet_small", (32, 128, 128), 495_962),
                                                   ("cifar_airnet", (64, 256, 256), 1_978_026)])
def test_the_own_cifar_airnet_follows_the_timm_model_api(name, widths, params):
    torch.manual_seed(0)
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params and model.num_classes == 10
    assert model.pretrained_cfg["mean"] == (0.4914, 0.4822, 0.4465) and model.pretrained_cfg["classifier"] == "fc"
    features = timm.create_model(name, features_only=True)
    maps = features(torch.randn(2, 3, 32, 32))
    assert [m.shape[1:] for m in maps] == [(widths[0] // 2, 32, 32), (widths[0], 16, 16), (widths[1], 8, 8),
                                           (widths[2], 4, 4)]
    assert features.feature_info.reduction() == [1, 2, 4, 8]
    # the global max pool of the last map is the pre-logits a head gets; the gradient reaches the stem
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                               model.forward_features(x).amax(dim=(2, 3)))
    model.reset_classifier(3, global_pool="avg")
    model.train()
    model(x).sum().backward()
    assert model(x).shape == (2, 3) and model.stem[0].weight.grad.abs().sum() > 0


def test_model_api_methods():
    model = timm.create_model("vit_tiny_patch16_224_isomaxplus", num_classes=10, img_size=64)
    model.set_grad_checkpointing(True)
    assert model.backbone.grad_checkpointing
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    model.reset_classifier(4)
    assert model.num_classes == 4 and model.get_classifier().prototypes.shape == (4, model.head_hidden_size)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    assert model.num_features == model.backbone.num_features == 192
    with pytest.raises(ValueError, match="num_classes >= 1"):
        model.reset_classifier(0)


def test_backbone_weights_of_a_base_tag_load_through_timms_path(tmp_path):
    # A SoftMax checkpoint of the base arch (here: a seeded resnet10t saved to a file) given as the file
    # of a mirrored tag: the backbone gets its weights, the classifier is dropped, the head is fresh.
    torch.manual_seed(1)
    softmax = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t_softmax.safetensors"
    safetensors.torch.save_file(softmax.state_dict(), str(path))
    for name in ("resnet10t_isomaxplus.c3_in1k", "resnet10t_isomaxplus"):
        model = timm.create_model(name, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
        backbone_state = model.backbone.state_dict()
        assert backbone_state.keys() == {k for k in softmax.state_dict() if not k.startswith("fc.")}
        assert all(torch.equal(v, softmax.state_dict()[k]) for k, v in backbone_state.items())
    grey = timm.create_model("resnet10t_isomaxplus", pretrained=True, num_classes=10, in_chans=1,
                             pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(grey.backbone.conv1[0].weight, softmax.conv1[0].weight.sum(dim=1, keepdim=True))


def test_isomax_checkpoints_round_trip_by_file_and_checkpoint_path(tmp_path):
    torch.manual_seed(2)
    model = timm.create_model("resnet10t_isomaxplus", num_classes=7).eval()
    with torch.no_grad():
        model.head.distance_scale.fill_(4.0)
        model.head.temperature.fill_(1.5)
    path = tmp_path / "isomax.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    x = torch.randn(3, 3, 64, 64)
    by_file = timm.create_model("resnet10t_isomaxplus", pretrained=True, num_classes=7,
                                pretrained_cfg_overlay=dict(file=str(path))).eval()
    by_checkpoint = timm.create_model("resnet10t_isomaxplus", num_classes=7, checkpoint_path=str(path)).eval()
    torch.testing.assert_close(by_file(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(by_checkpoint(x), model(x), rtol=0, atol=0)
    # another class count keeps the backbone and starts a fresh head
    other = timm.create_model("resnet10t_isomaxplus", pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=7))
    assert other.num_classes == 3 and other.head.temperature.item() == 1.0
    torch.testing.assert_close(other.backbone.state_dict()["conv1.0.weight"], model.backbone.state_dict()["conv1.0.weight"])


def test_local_dir_and_features_only_load_an_isomax_folder(tmp_path):
    torch.manual_seed(3)
    model = timm.create_model("resnet10t_isomaxplus", num_classes=4).eval()
    safetensors.torch.save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("architecture", "num_classes")}
    (tmp_path / "config.json").write_text(json.dumps(
        dict(architecture="resnet10t_isomaxplus", num_classes=4, pretrained_cfg=pretrained_cfg)))
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    features = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, features_only=True).eval()
    reference = timm.create_model("resnet10t", features_only=True).eval()
    reference.load_state_dict({k: v for k, v in features.state_dict().items()})
    torch.testing.assert_close(features(x)[-1], model.backbone.forward_features(x))


def test_a_folder_with_its_own_weights_loads_under_a_shipped_hub_tag(tmp_path):
    # a reproduction of resnet10t_isomaxplus.mnist saved (or pushed) under the shipped config's tag brings its
    # own weights: the packaged config (no push recorded) must not refuse it
    from timm_isomax.hub import save_pretrained

    torch.manual_seed(5)
    model = timm.create_model("resnet10t_isomaxplus", num_classes=10, in_chans=1).eval()
    folder = save_pretrained(model, tmp_path / "m", tag="mnist")
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # the bare registry name still has no published weights
    with pytest.raises(FileNotFoundError, match="has no published weights yet"):
        timm.create_model("resnet10t_isomaxplus.mnist", pretrained=True)


def test_a_checkpoint_of_another_architecture_is_refused_clearly(tmp_path):
    other = timm.create_model("resnet18_isomaxplus", num_classes=4)
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(other.state_dict(), str(path))
    with pytest.raises(ValueError, match=r"does not match resnet10t_isomaxplus: \d+ missing keys .* unexpected keys"):
        timm.create_model("resnet10t_isomaxplus", pretrained=True, num_classes=4, pretrained_cfg_overlay=dict(file=str(path)))


def test_bad_names_and_class_counts_give_one_line_errors():
    with pytest.raises(ValueError, match="Closest matches: resnet50_isomaxplus"):
        timm_isomax.create_model("resnet5O_isomaxplus")
    with pytest.raises(ValueError, match="unknown timm architecture 'resnet5O'. Closest matches: resnet50"):
        timm_isomax.register_isomax_variants("resnet5O")
    with pytest.raises(ValueError, match="encoder-only"):
        timm_isomax.register_isomax_variants("qwen3_vit_88m_enc")
    with pytest.raises(ValueError, match="needs num_classes >= 1"):
        timm.create_model("resnet10t_isomaxplus", num_classes=0)
    with pytest.raises(ValueError, match="needs num_classes >= 1"):
        timm.create_model("vit_small_patch14_dinov2_isomaxplus")  # DINO's cfg has num_classes=0


def test_architectures_registered_later_can_be_added():
    from timm.models import register_model
    import tests.custom_arch as custom  # a module with default_cfgs, as timm's register_model needs

    register_model(custom.tiny_custom_resnet)
    assert timm_isomax.register_isomax_variants("tiny_custom_resnet") == ["tiny_custom_resnet_isomaxplus",
                                                                         "tiny_custom_resnet_isomax",
                                                                         "tiny_custom_resnet_dismax"]
    model = timm.create_model("tiny_custom_resnet_isomaxplus", num_classes=3)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert timm_isomax.base_architecture("tiny_custom_resnet_isomaxplus.sometag") == ("tiny_custom_resnet", "isomaxplus")


def test_save_pretrained_round_trips_weights_labels_preprocessing_and_ood_config(tmp_path):
    from timm_isomax.hub import read_config, save_pretrained

    torch.manual_seed(4)
    model = timm.create_model("resnet10t_isomaxplus.c3_in1k", num_classes=3, in_chans=1).eval()
    model.update_ood_config(threshold=-1.25, tpr=0.95)
    data_config = dict(input_size=(1, 32, 32), mean=(0.5,), std=(0.5,), crop_pct=1.0, interpolation="bilinear")
    folder = save_pretrained(model, tmp_path / "m", label_names=["a", "b", "c"], data_config=data_config, tag="demo")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no pickle
    config = read_config(folder)
    assert (config["architecture"], config["num_classes"], config["label_names"]) == ("resnet10t_isomaxplus", 3, ["a", "b", "c"])
    assert config["pretrained_cfg"]["tag"] == "demo" and "hf_hub_id" not in config["pretrained_cfg"]
    assert config["isomax"] == dict(head_type="isomaxplus", score="mds", threshold=-1.25, tpr=0.95)
    assert config["provenance"] == dict(weights_sha256=timm_isomax.weights_sha256(model.state_dict()))
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.ood_config == model.ood_config and loaded.pretrained_cfg["label_names"] == ["a", "b", "c"]
    assert timm.data.resolve_data_config({}, model=loaded)["input_size"] == (1, 32, 32)
    with pytest.raises(ValueError, match="unknown ood_config keys"):
        loaded.update_ood_config(treshold=1.0)

"""SoftMax -> IsoMax+ conversion and foreign checkpoints, on the real CIFAR-10 ResNets of ../shared/data."""
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

import timm_isomax
from timm_isomax import IsoMaxClassifier, convert_softmax_model, load_checkpoint_into
from timm_isomax.conversion import linear_classifier, load_softmax_model
from timm_isomax.data import dataset_for_model

AKAMASTER = "checkpoints/cifar10_resnet_akamaster"


@pytest.fixture(scope="module")
def resnet20(shared_data):
    return load_softmax_model("cifar_resnet20", str(shared_data / AKAMASTER / "resnet20-12fca82f.th"),
                              key_map="akamaster-cifar-resnet").eval()


@pytest.fixture(scope="module")
def cifar_batch(shared_data, resnet20):
    test = dataset_for_model(resnet20, str(shared_data / "cifar10"), split="test", limit=500)
    images, labels = next(iter(torch.utils.data.DataLoader(test, batch_size=500)))
    return images, labels


def test_akamaster_checkpoint_loads_and_keeps_its_accuracy(resnet20, cifar_batch):
    images, labels = cifar_batch
    with torch.no_grad():
        accuracy = (resnet20(images).argmax(1) == labels).float().mean().item()
    # the data README measured 81.03% on the whole 10,000-image test split with the author's own model code
    assert 0.76 <= accuracy <= 0.87
    assert resnet20.num_classes == 10  # read from the checkpoint's classifier


def test_conversion_equals_the_cosine_classifier_exactly(resnet20, cifar_batch):
    images, _ = cifar_batch
    with torch.no_grad():
        features = resnet20.forward_head(resnet20.forward_features(images), pre_logits=True).double()
        weight = resnet20.fc.weight.double()
    cosine = F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T  # computed here, independently
    model = convert_softmax_model(_copy(resnet20)).eval()
    assert model.conversion.method == "classifier"
    assert (model.pretrained_cfg["architecture"], model.pretrained_cfg["first_conv"], model.pretrained_cfg["classifier"]) \
        == ("cifar_resnet20_isomaxplus", "backbone.conv1", "head")
    with torch.no_grad():
        logits = model(images).double()
    torch.testing.assert_close(logits, -torch.sqrt(torch.clamp(2 - 2 * cosine, min=0)), rtol=1e-4, atol=1e-4)
    assert torch.equal(logits.argmax(1), cosine.argmax(1))


def test_other_class_count_uses_class_means_from_data(resnet20, cifar_batch):
    images, labels = cifar_batch
    keep = labels < 3
    batches = [(images[keep], labels[keep])]
    model = convert_softmax_model(_copy(resnet20), num_classes=3, data=batches).eval()
    assert model.conversion.method == "class_means" and "3 classes asked" in model.conversion.reason
    with torch.no_grad():
        features = F.normalize(model.forward_head(model.forward_features(images[keep]), pre_logits=True), dim=1)
    expected = torch.stack([features[labels[keep] == c].mean(0) for c in range(3)])
    torch.testing.assert_close(model.head.prototypes.detach(), expected, rtol=1e-4, atol=1e-5)
    no_data = convert_softmax_model(_copy(resnet20), num_classes=3)
    assert no_data.conversion.method == "fresh"


def test_unfaithful_heads_fall_back_and_say_why():
    torch.manual_seed(0)
    distilled = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=5, img_size=64)
    assert linear_classifier(distilled)[0] is None
    model = convert_softmax_model(distilled)
    assert model.conversion.method == "fresh" and "tuple of heads" in model.conversion.reason
    conv_head = timm.create_model("dla46_c", num_classes=5).eval()  # a 1x1 conv classifier is linear
    assert convert_softmax_model(conv_head).conversion.method == "classifier"
    with pytest.raises(ValueError, match="already has an IsoMax head"):
        convert_softmax_model(timm.create_model("resnet10t_isomaxplus", num_classes=3))


def test_pretrained_tag_with_the_source_class_count_converts(tmp_path):
    torch.manual_seed(1)
    softmax = timm.create_model("resnet10t", num_classes=1000).eval()
    path = tmp_path / "resnet10t.safetensors"
    safetensors.torch.save_file(softmax.state_dict(), str(path))
    model = timm.create_model("resnet10t_isomaxplus.c3_in1k", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert isinstance(model, IsoMaxClassifier) and model.conversion.method == "classifier"
    torch.testing.assert_close(model.head.prototypes.detach(), softmax.fc.weight.detach())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        cosine = F.normalize(softmax.forward_head(softmax.forward_features(x), pre_logits=True), dim=1) @ \
            F.normalize(softmax.fc.weight, dim=1).T
        assert torch.equal(model(x).argmax(1), cosine.argmax(1))
    fresh = timm.create_model("resnet10t_isomaxplus.c3_in1k", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert fresh.conversion.method == "fresh" and "10 classes asked" in fresh.conversion.reason


def test_foreign_keys_without_a_map_are_reported_clearly(shared_data):
    model = timm.create_model("cifar_resnet20")
    path = shared_data / AKAMASTER / "resnet20-12fca82f.th"
    with pytest.raises(ValueError, match=r"97 missing keys \['conv1.weight'.*97 unexpected keys \['module.conv1.weight'"):
        load_checkpoint_into(model, path)
    with pytest.raises(ValueError, match=r"60 unexpected keys \['layer1.3"):
        load_checkpoint_into(model, shared_data / AKAMASTER / "resnet32-d509ac18.th", "akamaster-cifar-resnet")
    with pytest.raises(ValueError, match="unknown key map 'akamster'"):
        load_checkpoint_into(model, path, "akamster")
    with pytest.raises(ValueError, match="'by_order' needs as many tensors"):
        load_checkpoint_into(model, path, "by_order")  # 97 tensors, the model has 117 with BN counters


def test_corrupt_and_unsafe_files_are_refused(tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(ValueError, match="could not read checkpoint .*truncated.safetensors"):
        timm_isomax.read_state_dict(truncated)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Payload()}, unsafe)
    with pytest.raises(ValueError, match="refused for safety"):
        timm_isomax.read_state_dict(unsafe)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_the_source_stays_a_softmax_classifier_unless_asked_to_share(resnet20, cifar_batch):
    images, _ = cifar_batch
    source = _copy(resnet20).eval()
    with torch.no_grad():
        before = source(images)
    converted = convert_softmax_model(source)
    with torch.no_grad():
        assert torch.equal(source(images), before)  # still (B, 10) logits: a side-by-side comparison is valid
    assert converted.backbone is not source
    shared = convert_softmax_model(source, copy=False)
    assert shared.backbone is source and source.num_classes == 0  # documented: the classifier is gone

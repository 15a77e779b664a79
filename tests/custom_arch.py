"""A user's own architecture, registered with timm after `import timm_isomax` (see test_registry)."""
from timm.models import build_model_with_cfg
from timm.models.resnet import BasicBlock, ResNet

default_cfgs = {"tiny_custom_resnet": {"num_classes": 1000, "first_conv": "conv1", "classifier": "fc"}}


def tiny_custom_resnet(pretrained=False, **kwargs):
    return build_model_with_cfg(ResNet, "tiny_custom_resnet", pretrained, block=BasicBlock, layers=(1, 1, 1, 1), **kwargs)

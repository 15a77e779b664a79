"""A fast CIFAR network as timm architectures: ``cifar_airnet`` (64, 256, 256 channels) and
``cifar_airnet_small`` (32, 128, 128), for training from scratch where compute is scarce (2 CPU cores).

The layout is the network of the airbench line of work (Keller Jordan's airbench94, after hlb-CIFAR10): a
3x3 stem, three blocks of conv3x3 -> max-pool 2 -> batch norm -> GELU -> conv3x3 -> batch norm -> GELU (no
residuals), a global max pool and a linear classifier. Only the network is taken: airbench's training tricks
(frozen patch-whitening stem, label smoothing, lookahead, test-time augmentation) are left out, because the
benchmarks train every head with one recipe and the IsoMax losses are defined without them. Wide 3x3 convs
suit a CPU better than a ResNet-20's 16-channel ones: ``cifar_airnet_small`` trains an epoch faster than
``cifar_resnet20`` (``scripts/benchmark_model.py --layouts`` times a step).

Registered in timm by ``import timm_isomax`` (with ``_isomaxplus`` / ``_isomax`` / ``_dismax`` variants like
every arch). No pretrained weights.
"""
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq

from ._cifar_head import PooledLinearClassifier

__all__ = ["CifarAirNet", "CIFAR_AIRNET_WIDTHS"]

# channels of the three blocks, per registered name (the stem has half the first block's)
CIFAR_AIRNET_WIDTHS = {"cifar_airnet": (64, 256, 256), "cifar_airnet_small": (32, 128, 128)}


class ConvPoolBlock(nn.Module):
    """conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU: halves the resolution."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pooling before the norm: the statistics are taken at the resolution the next conv sees
        x = F.gelu(self.bn1(self.pool(self.conv1(x))))
        return F.gelu(self.bn2(self.conv2(x)))


class CifarAirNet(PooledLinearClassifier):
    """The airbench network with the timm model API (forward_features / forward_head / reset_classifier / ...)."""

    def __init__(self, widths: Sequence[int] = (64, 256, 256), num_classes: int = 10, in_chans: int = 3,
                 global_pool: str = "max", drop_rate: float = 0.0):
        super().__init__()
        self.in_chans = in_chans
        stem_chs = widths[0] // 2
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_chs, 3, padding=1, bias=False), nn.BatchNorm2d(stem_chs),
                                  nn.GELU())
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=stem_chs, reduction=1, module="stem.2")]
        blocks, in_chs = [], stem_chs
        for index, width in enumerate(widths):
            blocks.append(ConvPoolBlock(in_chs, width))
            in_chs = width
            self.feature_info.append(dict(num_chs=width, reduction=2 ** (index + 1), module=f"blocks.{index}"))
        self.blocks = nn.Sequential(*blocks)
        self._init_classifier(in_chs, num_classes, global_pool, drop_rate)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^blocks\.(\d+)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # CIFAR-10's own channel statistics (the network has no pretrained weights to match another's)
    return dict(num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0, interpolation="bilinear",
                mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), first_conv="stem.0", classifier="fc",
                license="apache-2.0", origin_url="https://github.com/KellerJordan/cifar10-airbench", **kwargs)


default_cfgs = generate_default_cfgs({name: _cfg() for name in CIFAR_AIRNET_WIDTHS})


def _make_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> CifarAirNet:
        return build_model_with_cfg(CifarAirNet, name, pretrained, widths=CIFAR_AIRNET_WIDTHS[name],
                                    feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **kwargs)

    # timm's register_model files an entrypoint under its __name__ and reads this module's default_cfgs
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"The airbench CIFAR network, blocks of {', '.join(map(str, CIFAR_AIRNET_WIDTHS[name]))} channels."
    return entrypoint


for _name in CIFAR_AIRNET_WIDTHS:
    globals()[_name] = register_model(_make_entrypoint(_name))

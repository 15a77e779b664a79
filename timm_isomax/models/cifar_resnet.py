"""CIFAR ResNets (He et al. 2016, section 4.2) as timm architectures: ``cifar_resnet20`` ... ``cifar_resnet1202``.

3x3 stride-1 stem without max-pool, three stages of BasicBlocks (16, 32, 64 channels), option-A
(parameter-free) shortcuts, global average pooling and a linear classifier. timm has no such
architecture; the layer names follow the widely used CIFAR-10 checkpoints of akamaster/pytorch_resnet_cifar10,
so those load after the ``akamaster-cifar-resnet`` key map (``module.`` stripped, ``linear`` -> ``fc``).

Registered in timm by ``import timm_isomax`` (with ``_isomaxplus`` / ``_isomax`` variants like every arch).
"""
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq

from ._cifar_head import PooledLinearClassifier

__all__ = ["CifarResNet", "CIFAR_RESNET_DEPTHS"]

# blocks per stage for each depth (depth = 6n + 2)
CIFAR_RESNET_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}


class _ShortcutA(nn.Module):
    """Option-A shortcut: every second pixel, channels zero-padded evenly on both sides."""

    def __init__(self, pad_channels: int):
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_channels, self.pad_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        changes_shape = stride != 1 or in_chs != out_chs
        self.shortcut = _ShortcutA((out_chs - in_chs) // 2) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(PooledLinearClassifier):
    """CIFAR ResNet with the timm model API (forward_features / forward_head / reset_classifier / ...)."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_chans: int = 3, global_pool: str = "avg",
                 drop_rate: float = 0.0, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)  # a module, so timm's feature extractors run it in order
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=widths[0], reduction=1, module="act1")]
        in_chs = widths[0]
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            blocks = [BasicBlock(in_chs, width, stride)] + [BasicBlock(width, width) for _ in range(blocks_per_stage - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            in_chs = width
            self.feature_info.append(dict(num_chs=width, reduction=2 ** stage, module=f"layer{stage + 1}"))
        self._init_classifier(in_chs, num_classes, global_pool, drop_rate)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
        return x


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # Preprocessing of the akamaster trainer: 32x32 RGB in [0, 1], ImageNet mean / std.
    return dict(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, interpolation="bilinear",
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), first_conv="conv1", classifier="fc",
                license="bsd-2-clause", origin_url="https://github.com/akamaster/pytorch_resnet_cifar10", **kwargs)


default_cfgs = generate_default_cfgs({f"cifar_resnet{depth}": _cfg() for depth in CIFAR_RESNET_DEPTHS})


def _make_entrypoint(depth: int):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
        return build_model_with_cfg(CifarResNet, f"cifar_resnet{depth}", pretrained,
                                    blocks_per_stage=CIFAR_RESNET_DEPTHS[depth],
                                    feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)

    # timm's register_model files an entrypoint under its __name__ and reads this module's default_cfgs
    entrypoint.__name__ = entrypoint.__qualname__ = f"cifar_resnet{depth}"
    entrypoint.__doc__ = f"CIFAR ResNet-{depth} ({CIFAR_RESNET_DEPTHS[depth]} blocks per stage)."
    return entrypoint


for _depth in CIFAR_RESNET_DEPTHS:
    globals()[f"cifar_resnet{_depth}"] = register_model(_make_entrypoint(_depth))
